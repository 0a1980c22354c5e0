"""Losses of MaskDUL and its baselines: small swappable ``nn.Module`` s.

Margin losses own their class centres, as in pytorch-metric-learning
(``loss_fn(embeddings, labels)``), so they can be swapped without touching the model:

* :class:`ArcFaceLoss` -- additive angular margin, ``s = 64``, ``m = 0.5``; the target logit is
  ``s * cos(theta + m)``, falling back to ``s * (cos theta - m sin m)`` when ``theta + m > pi``
  (insightface's original ArcFace, deepinsight/insightface ``src/train_softmax.py``, loss_type 4,
  commit 02cbf7bd: ``threshold = cos(pi - m)``, ``mm = sin(pi - m) * m``).
* :class:`MagFaceLoss` -- magnitude-aware margin ``m(a)`` and regulariser ``g(a)``:
  ``a = clamp(||f||, l_a, u_a)`` with ``[l_a, u_a] = [10, 110]``;
  ``m(a) = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m`` with ``l_m = 0.45``, ``u_m = 0.8``;
  ``g(a) = a / u_a^2 + 1 / a``; ``L = CE(s * cos(theta + m(a))) + lambda_g * mean g(a)``,
  ``lambda_g = 35``, ``s = 64`` (the formulas of the MagFace reference code), with MagFace's easy
  margin by default (see :func:`margin_logits`).
* :class:`DULKL` -- DUL's ``KL(N(mu, sigma^2) || N(0, I)) = -1/2 sum(1 + log sigma^2 - mu^2 - sigma^2)``.
* :class:`HKLD` -- MaskDUL's H-KLD: ``KL(N(mu, sigma^2) || N(0, (xi I)^2))`` with
  ``xi = h(||sigma||)`` (:func:`h_xi`) for masked samples and ``xi = 1`` for unmasked ones.

The general KL against a zero-mean isotropic prior of std ``xi`` (:func:`gaussian_kl`) is::

    KL = sum_d [ log(xi / sigma_d) + (sigma_d^2 + mu_d^2) / (2 xi^2) - 1/2 ]

which is DUL's KL at ``xi = 1``.

Design choices (config options, defaults justified):

* **KL reduction** ``"sum"`` over the 512 dimensions, then mean over the batch (DUL's reference
  code does this, and the paper's lambda = 0.01 was tuned with it). ``"mean"`` over dimensions
  divides the KL by 512, i.e. an effective lambda of ~2e-5 with the same setting.
* **xi detached** (default): ``xi = h(||sigma||)`` is read as the per-sample width of the prior,
  a target computed from the current uncertainty. Back-propagating through it would let sigma
  lower the loss by moving ``||sigma||`` along (or out of, past the jump at u_sigma) the
  band where h varies, instead of matching the prior; detaching keeps each step a KL against a
  fixed Gaussian. ``xi_detach=False`` keeps the gradient path.
* **Reading of eq. 4** (:func:`h_xi`): linear from ``u_xi`` at ``l_sigma`` down to ``l_xi`` at
  ``u_sigma`` (both ends included), ``u_xi`` outside ``[l_sigma, u_sigma]``.
* Class logits are computed in fp32 with autocast disabled.

This module imports only torch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------------------------
# margin losses
# ----------------------------------------------------------------------------------------------
def cosine_logits(embeddings: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``cos(theta)`` between rows of ``embeddings`` (N, D) and class centres ``weight`` (C, D)."""
    dt = _acc_dtype(embeddings)
    return F.linear(F.normalize(embeddings.to(dt), dim=1), F.normalize(weight.to(dt), dim=1)).clamp(-1.0, 1.0)


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32 for half/bf16/fp32 inputs, fp64 kept (reference comparisons in tests)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def margin_logits(cos: torch.Tensor, labels: torch.Tensor, margin: torch.Tensor | float, scale: float,
                  easy_margin: bool = False) -> torch.Tensor:
    """ArcFace's ``s * cos(theta_y + m)`` on the target logit, ``s * cos(theta_j)`` elsewhere.

    Args:
        cos: (N, C) cosines; labels: (N,) class indices; margin: a float (radians) or a
            per-sample (N,) tensor (MagFace's ``m(a)``); scale: ``s``.
        easy_margin: the target logit's rule where the margin does not apply.

            * False (insightface's original ArcFace, ``src/train_softmax.py`` loss_type 4; MagFace's
              ``easy_margin=False`` branch): ``cos(theta + m)`` while ``theta + m <= pi``
              (``cos theta > cos(pi - m)``), else ``cos theta - m sin m`` (written there as
              ``sin(pi - m) * m``), so the logit keeps decreasing in ``theta``.
            * True (MagFace's default, ``models/magface.py`` ``MagLinear``): ``cos(theta + m)``
              where ``cos theta > 0``, else ``cos theta`` unchanged.

    Returns:
        (N, C) logits, in the dtype of ``cos``.
    """
    labels = labels.long().view(-1, 1)
    target = cos.gather(1, labels)
    m = margin.view(-1, 1).to(cos.dtype) if torch.is_tensor(margin) else torch.full_like(target, float(margin))
    # eps keeps the gradient of sqrt finite at |cos| = 1
    sin = torch.sqrt((1.0 - target * target).clamp_min(1e-12))
    cos_m = target * torch.cos(m) - sin * torch.sin(m)
    if easy_margin:
        final = torch.where(target > 0, cos_m, target)
    else:
        final = torch.where(target > torch.cos(math.pi - m), cos_m, target - torch.sin(math.pi - m) * m)
    return cos.scatter(1, labels, final) * scale


class _CentersMixin(nn.Module):
    def __init__(self, num_classes: int, embedding_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, 0.0, 0.01)  # arcface_torch's class-centre init


class ArcFaceLoss(_CentersMixin):
    """ArcFace (additive angular margin). ``forward(emb, labels) -> (loss, parts)``.

    ``parts = {"cls": CE}``; ``loss = CE(s * [cos(theta_y + m), cos(theta_j)])``, the target
    logit falling back to ``cos theta - m sin m`` when ``theta + m > pi`` (``easy_margin=False``,
    the default, as insightface's original ArcFace) or to ``cos theta`` when ``cos theta <= 0``
    (``easy_margin=True``); see :func:`margin_logits`.
    """

    def __init__(self, num_classes: int, embedding_size: int = 512, scale: float = 64.0, margin: float = 0.5,
                 easy_margin: bool = False):
        super().__init__(num_classes, embedding_size)
        self.scale, self.margin, self.easy_margin = scale, margin, easy_margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        with _no_autocast(embeddings):
            logits = margin_logits(cosine_logits(embeddings, self.weight), labels, self.margin, self.scale,
                                   self.easy_margin)
            ce = F.cross_entropy(logits, labels.long())
        return ce, {"cls": ce.detach()}


class MagFaceLoss(_CentersMixin):
    """MagFace. ``forward(emb, labels) -> (loss, parts)`` with ``loss = CE + lambda_g * g``.

    ``parts = {"cls": CE, "g": mean g(a), "mag": mean ||f||}``. ``easy_margin`` defaults to True,
    as MagFace's code (``MagLinear(easy_margin=True)``, IrvingMeng/MagFace ``models/magface.py``,
    commit 719001a0; its trainer never passes another value).
    """

    def __init__(self, num_classes: int, embedding_size: int = 512, scale: float = 64.0, l_a: float = 10.0,
                 u_a: float = 110.0, l_m: float = 0.45, u_m: float = 0.8, lambda_g: float = 35.0,
                 easy_margin: bool = True):
        super().__init__(num_classes, embedding_size)
        self.scale, self.l_a, self.u_a, self.l_m, self.u_m = scale, l_a, u_a, l_m, u_m
        self.lambda_g, self.easy_margin = lambda_g, easy_margin

    def margin(self, a: torch.Tensor) -> torch.Tensor:
        """``m(a) = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m``."""
        return (self.u_m - self.l_m) / (self.u_a - self.l_a) * (a - self.l_a) + self.l_m

    def regularizer(self, a: torch.Tensor) -> torch.Tensor:
        """``g(a) = a / u_a^2 + 1 / a``."""
        return a / self.u_a ** 2 + 1.0 / a

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        with _no_autocast(embeddings):
            raw = embeddings.to(_acc_dtype(embeddings)).norm(dim=1)
            a = raw.clamp(self.l_a, self.u_a)
            logits = margin_logits(cosine_logits(embeddings, self.weight), labels, self.margin(a), self.scale,
                                   self.easy_margin)
            ce = F.cross_entropy(logits, labels.long())
            g = self.regularizer(a).mean()
            loss = ce + self.lambda_g * g
        return loss, {"cls": ce.detach(), "g": g.detach(), "mag": raw.mean().detach()}


# ----------------------------------------------------------------------------------------------
# KL terms
# ----------------------------------------------------------------------------------------------
def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, xi: torch.Tensor | float = 1.0,
                reduction: str = "sum") -> torch.Tensor:
    """Per-sample ``KL(N(mu, diag sigma^2) || N(0, xi^2 I))``, shape (N,).

    ``sum_d [log(xi / sigma_d) + (sigma_d^2 + mu_d^2) / (2 xi^2) - 1/2]`` (``"sum"``), or the
    mean over ``d`` (``"mean"``). ``xi`` is a float or a per-sample (N,) tensor.
    """
    dt = _acc_dtype(mu)
    mu, logvar = mu.to(dt), logvar.to(dt)
    if torch.is_tensor(xi):
        xi_t = xi.to(dt).view(-1, 1)
        per_dim = torch.log(xi_t) - 0.5 * logvar + (torch.exp(logvar) + mu * mu) / (2.0 * xi_t * xi_t) - 0.5
    else:  # a Python scalar stays on the host: no scalar tensor copied to the device (no sync)
        xi = float(xi)
        per_dim = (math.log(xi) - 0.5) - 0.5 * logvar + (torch.exp(logvar) + mu * mu) * (1.0 / (2.0 * xi * xi))
    return per_dim.sum(dim=1) if reduction == "sum" else per_dim.mean(dim=1)


def h_xi(sigma_norm: torch.Tensor, l_xi: float = 0.5, u_xi: float = 1.0, l_sigma: float = 10.0,
         u_sigma: float = 25.0) -> torch.Tensor:
    """MaskDUL eq. 4: prior std ``xi`` from ``||sigma||``.

    ``u_xi`` below ``l_sigma``; linear from ``u_xi`` at ``l_sigma`` to ``l_xi`` at ``u_sigma``
    (both included); ``u_xi`` above ``u_sigma``. Defaults: h(5) = h(10) = 1, h(17.5) = 0.75,
    h(25) = 0.5, h(40) = 1.
    """
    lin = l_xi + (u_xi - l_xi) * (u_sigma - sigma_norm) / (u_sigma - l_sigma)
    inside = (sigma_norm >= l_sigma) & (sigma_norm <= u_sigma)
    return torch.where(inside, lin, torch.full_like(lin, u_xi))


class DULKL(nn.Module):
    """DUL's KL to N(0, I), averaged over the batch. ``forward(mu, logvar) -> (N,)-mean scalar``."""

    def __init__(self, reduction: str = "sum"):
        super().__init__()
        self.reduction = reduction

    def forward(self, mu: torch.Tensor, logvar: torch.Tensor, masked: torch.Tensor | None = None) -> torch.Tensor:
        return gaussian_kl(mu, logvar, 1.0, self.reduction).mean()


class HKLD(nn.Module):
    """MaskDUL's H-KLD: masked samples use ``xi = h(||sigma||)``, unmasked ones ``xi = 1``.

    ``forward(mu, logvar, masked) -> scalar`` (mean over the batch of the per-sample KL).
    """

    def __init__(self, reduction: str = "sum", detach_xi: bool = True, l_xi: float = 0.5, u_xi: float = 1.0,
                 l_sigma: float = 10.0, u_sigma: float = 25.0):
        super().__init__()
        self.reduction, self.detach_xi = reduction, detach_xi
        self.l_xi, self.u_xi, self.l_sigma, self.u_sigma = l_xi, u_xi, l_sigma, u_sigma

    def xi(self, logvar: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        sigma_norm = torch.exp(0.5 * logvar.float()).norm(dim=1)
        if self.detach_xi:
            sigma_norm = sigma_norm.detach()
        h = h_xi(sigma_norm, self.l_xi, self.u_xi, self.l_sigma, self.u_sigma)
        return torch.where(masked.to(h.device, torch.bool).view(-1), h, torch.ones_like(h))

    def forward(self, mu: torch.Tensor, logvar: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        return gaussian_kl(mu, logvar, self.xi(logvar, masked), self.reduction).mean()


# ----------------------------------------------------------------------------------------------
# per-method criterion
# ----------------------------------------------------------------------------------------------
class Criterion(nn.Module):
    """Loss of one ``--method``: margin loss on ``mu`` (or on ``s = mu + eps sigma``) + lambda * KL.

    In training mode a method with a sigma head classifies ``s = mu + eps * sigma``, ``eps ~ N(0, I)``
    drawn from torch's global generator (``torch.randn_like(mu)``, one draw per call); in eval
    mode (``.eval()``) it classifies ``mu``, deterministically, as at test time.

    ``forward(mu, logvar, labels, masked) -> (loss, parts)``; ``parts`` holds detached scalars:
    ``cls``, ``g`` (MagFace), ``kl``, ``mag`` (mean ||f|| of the classified feature) and the mean
    ``||sigma||`` of masked / unmasked samples as ``sigma_m`` / ``sigma_u`` (sums and counts, so
    they can be reduced exactly across steps and ranks).
    """

    def __init__(self, margin_loss: nn.Module, kl: nn.Module | None = None, kl_lambda: float = 0.01):
        super().__init__()
        self.margin_loss, self.kl, self.kl_lambda = margin_loss, kl, kl_lambda

    def forward(self, mu: torch.Tensor, logvar: torch.Tensor | None, labels: torch.Tensor,
                masked: torch.Tensor) -> tuple[torch.Tensor, dict]:
        masked = masked.to(mu.device, torch.bool).view(-1)
        if logvar is not None and self.training:
            feats = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        else:
            feats = mu
        loss, parts = self.margin_loss(feats, labels)
        if "mag" not in parts:
            parts["mag"] = feats.detach().float().norm(dim=1).mean()
        if logvar is not None and self.kl is not None:
            kl = self.kl(mu, logvar, masked)
            loss = loss + self.kl_lambda * kl
            parts["kl"] = kl.detach()
            with torch.no_grad():
                sn = torch.exp(0.5 * logvar.float()).norm(dim=1)
                mf = masked.float()
                parts["sigma_m_sum"], parts["sigma_m_n"] = (sn * mf).sum(), mf.sum()
                parts["sigma_u_sum"], parts["sigma_u_n"] = (sn * (1 - mf)).sum(), (1 - mf).sum()
        return loss, parts


def build_criterion(cfg, num_classes: int) -> Criterion:
    """The :class:`Criterion` of a :class:`~maskkit.training.config.TrainConfig`: ArcFace with
    ``arc_easy_margin`` (arcface, dul) or MagFace with ``mag_easy_margin`` (magface, dul-mag,
    maskdul); DUL's KL (dul, dul-mag) or H-KLD (maskdul) weighted by ``kl_lambda``."""
    if cfg.method in ("arcface", "dul"):
        margin: nn.Module = ArcFaceLoss(num_classes, cfg.embedding_size, cfg.arc_scale, cfg.arc_margin,
                                        cfg.arc_easy_margin)
    else:
        margin = MagFaceLoss(num_classes, cfg.embedding_size, cfg.arc_scale, cfg.mag_la, cfg.mag_ua, cfg.mag_lm,
                             cfg.mag_um, cfg.mag_lambda_g, cfg.mag_easy_margin)
    kl: nn.Module | None = None
    if cfg.method in ("dul", "dul-mag"):
        kl = DULKL(cfg.kl_reduction)
    elif cfg.method == "maskdul":
        kl = HKLD(cfg.kl_reduction, cfg.xi_detach, cfg.hkl_l_xi, cfg.hkl_u_xi, cfg.hkl_l_sigma, cfg.hkl_u_sigma)
    return Criterion(margin, kl, cfg.kl_lambda)


class _no_autocast:
    """Disable autocast (if on) for the device of ``t``: logits and CE stay in fp32."""

    def __init__(self, t: torch.Tensor):
        dev = t.device.type
        self.ctx = torch.autocast(device_type=dev, enabled=False) if dev in ("cuda", "cpu") and \
            torch.is_autocast_enabled(dev) else None

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            return self.ctx.__exit__(*exc)
        return False
