"""Losses against closed forms, numeric integrals and the reference implementations' formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maskkit.training.config import TrainConfig
from maskkit.training.losses import (HKLD, ArcFaceLoss, DULKL, MagFaceLoss, build_criterion, gaussian_kl, h_xi,
                                     margin_logits)


def test_h_xi_at_the_paper_points():
    n = torch.tensor([5.0, 10.0, 17.5, 25.0, 40.0])
    assert torch.allclose(h_xi(n), torch.tensor([1.0, 1.0, 0.75, 0.5, 1.0]))
    # custom bounds: linear between them
    assert torch.allclose(h_xi(torch.tensor([2.0, 3.0, 4.0]), l_xi=0.2, u_xi=0.8, l_sigma=2, u_sigma=4),
                          torch.tensor([0.8, 0.5, 0.2]))


def _kl_numeric(mu: float, sigma: float, xi: float) -> float:
    """KL(N(mu, sigma^2) || N(0, xi^2)) by the trapezoid rule on a fine 1-D grid (float64)."""
    x = torch.linspace(mu - 12 * sigma, mu + 12 * sigma, 200_001, dtype=torch.float64)
    logp = -0.5 * ((x - mu) / sigma) ** 2 - math.log(sigma * math.sqrt(2 * math.pi))
    logq = -0.5 * (x / xi) ** 2 - math.log(xi * math.sqrt(2 * math.pi))
    return float(torch.trapezoid(torch.exp(logp) * (logp - logq), x))


def test_gaussian_kl_matches_numeric_integral():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 4, generator=g, dtype=torch.float64)
    sigma = torch.rand(3, 4, generator=g, dtype=torch.float64) * 1.5 + 0.2
    xi = torch.tensor([1.0, 0.5, 0.75], dtype=torch.float64)
    kl = gaussian_kl(mu.double(), (2 * sigma.log()), xi)
    for i in range(3):
        ref = sum(_kl_numeric(float(mu[i, d]), float(sigma[i, d]), float(xi[i])) for d in range(4))
        assert abs(float(kl[i]) - ref) < 1e-4 * max(1.0, abs(ref)), (i, float(kl[i]), ref)
    # mean reduction = sum / D
    assert torch.allclose(gaussian_kl(mu, 2 * sigma.log(), xi, "mean"), kl / 4, atol=1e-6)


def test_dul_kl_is_the_closed_form():
    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(5, 512, generator=g), torch.randn(5, 512, generator=g) * 0.3
    ref = (-0.5 * (1 + logvar - mu ** 2 - logvar.exp())).sum(1).mean()
    assert torch.allclose(DULKL("sum")(mu, logvar), ref, rtol=1e-5)
    assert torch.allclose(DULKL("mean")(mu, logvar), ref / 512, rtol=1e-5)


def test_hkld_uses_h_for_masked_and_one_for_unmasked():
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(4, 512, generator=g)
    # ||sigma|| = sqrt(512) * sigma_const: 22.6 (inside the band) for sigma = 1
    logvar = torch.zeros(4, 512)
    masked = torch.tensor([True, False, True, False])
    loss = HKLD()
    xi = loss.xi(logvar, masked)
    h = 0.5 + 0.5 * (25 - math.sqrt(512)) / 15
    assert torch.allclose(xi, torch.tensor([h, 1.0, h, 1.0]), atol=1e-6)
    per = gaussian_kl(mu, logvar, xi)
    assert torch.allclose(loss(mu, logvar, masked), per.mean())
    # unmasked rows are DUL's KL
    assert torch.allclose(per[1], gaussian_kl(mu[1:2], logvar[1:2], 1.0)[0])
    # all unmasked: H-KLD == DUL KL
    assert torch.allclose(loss(mu, logvar, torch.zeros(4, dtype=torch.bool)), DULKL()(mu, logvar))


def test_hkld_xi_detach_changes_only_the_gradient_path():
    mu = torch.randn(2, 512)
    lv = torch.full((2, 512), -0.2, requires_grad=True)  # ||sigma|| ~ 20.5: h has slope here
    masked = torch.tensor([True, True])
    g = {}
    for det in (True, False):
        lv.grad = None
        val = HKLD(detach_xi=det)(mu, lv, masked)
        val.backward()
        g[det] = (float(val.detach()), lv.grad.clone())
    assert g[True][0] == pytest.approx(g[False][0])
    assert not torch.allclose(g[True][1], g[False][1])
    # detached: dKL/dlogvar_d = (-1/2 + sigma_d^2 / (2 xi^2)) / N
    xi = float(h_xi(torch.exp(0.5 * lv.detach()).norm(dim=1))[0])
    expected = (-0.5 + torch.exp(lv.detach()) / (2 * xi ** 2)) / 2
    assert torch.allclose(g[True][1], expected, atol=1e-6)


# -- MagFace: the reference repo's formulas (IrvingMeng/MagFace, models/magface.py), verbatim math
def _magface_reference(x, weight, target, l_a=10, u_a=110, l_m=0.45, u_m=0.8, scale=64.0, easy_margin=False):
    x_norm = torch.norm(x, dim=1, keepdim=True).clamp(l_a, u_a)
    ada_margin = (u_m - l_m) / (u_a - l_a) * (x_norm - l_a) + l_m
    cos_m, sin_m = torch.cos(ada_margin), torch.sin(ada_margin)
    weight_norm = F.normalize(weight, dim=0)
    cos_theta = torch.mm(F.normalize(x), weight_norm).clamp(-1, 1)
    sin_theta = torch.sqrt(1.0 - torch.pow(cos_theta, 2))
    cos_theta_m = cos_theta * cos_m - sin_theta * sin_m
    if easy_margin:
        cos_theta_m = torch.where(cos_theta > 0, cos_theta_m, cos_theta)
    else:
        mm = torch.sin(math.pi - ada_margin) * ada_margin
        threshold = torch.cos(math.pi - ada_margin)
        cos_theta_m = torch.where(cos_theta > threshold, cos_theta_m, cos_theta - mm)
    cos_theta_m, cos_theta = scale * cos_theta_m, scale * cos_theta
    loss_g = torch.mean(1 / (u_a ** 2) * x_norm + 1 / x_norm)
    one_hot = torch.zeros_like(cos_theta)
    one_hot.scatter_(1, target.view(-1, 1), 1.0)
    output = one_hot * cos_theta_m + (1.0 - one_hot) * cos_theta
    tgt = cos_theta.gather(1, target.view(-1, 1)) / scale
    thr = torch.zeros_like(tgt) if easy_margin else torch.cos(math.pi - ada_margin)
    branches = {bool(b) for b in (tgt > thr).view(-1)}
    return F.cross_entropy(output, target), loss_g, branches


@pytest.mark.parametrize("easy", [False, True])
def test_magface_matches_reference_formula(easy):
    g = torch.Generator().manual_seed(3)
    n, d, c = 64, 512, 10
    # magnitudes spread over and beyond [10, 110], so the clamp and both margin branches are hit
    x = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64)) * torch.linspace(5, 130, n, dtype=torch.float64)[:, None]
    loss = MagFaceLoss(c, d, easy_margin=easy).double()
    labels = torch.randint(0, c, (n,), generator=g)
    # push some samples close to / away from their centre so cos spans (-1, 1)
    with torch.no_grad():
        x[: n // 4] = loss.weight[labels[: n // 4]] * 3000 + x[: n // 4] * 0.1
        x[n // 4: n // 2] = -loss.weight[labels[n // 4: n // 2]] * 3000 + x[n // 4: n // 2] * 0.1
    total, parts = loss(x, labels)
    ce_ref, g_ref, branches = _magface_reference(x, loss.weight.t(), labels, easy_margin=easy)
    assert branches == {True, False}  # both sides of the margin threshold are exercised
    assert torch.allclose(parts["cls"], ce_ref, rtol=1e-9, atol=1e-9)
    assert torch.allclose(parts["g"], g_ref, rtol=1e-12)
    assert torch.allclose(total, ce_ref + 35.0 * g_ref, rtol=1e-9)
    assert loss.margin(torch.tensor(10.0)) == pytest.approx(0.45)
    assert loss.margin(torch.tensor(110.0)) == pytest.approx(0.8)
    assert loss.regularizer(torch.tensor(110.0)) == pytest.approx(110 / 110 ** 2 + 1 / 110)


def test_arcface_matches_hand_formula():
    g = torch.Generator().manual_seed(4)
    n, d, c, s, m = 32, 16, 7, 64.0, 0.5
    loss = ArcFaceLoss(c, d, s, m).double()
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, c, (n,), generator=g)
    with torch.no_grad():  # some samples near their centre, some opposite (theta + m > pi branch)
        x[:8] = loss.weight[labels[:8]] * 100 + x[:8] * 0.01
        x[8:14] = -loss.weight[labels[8:14]] * 100 + x[8:14] * 0.001
    val, _ = loss(x, labels)
    xn = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    w = loss.weight.detach().numpy()
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    cos = np.clip(xn @ wn.T, -1, 1)
    total = 0.0
    branches = set()
    for i in range(n):
        theta = math.acos(cos[i, labels[i]])
        logits = s * cos[i].copy()
        if theta + m <= math.pi:
            logits[labels[i]] = s * math.cos(theta + m)
            branches.add("margin")
        else:  # insightface: cos(theta) - sin(pi - m) * m
            logits[labels[i]] = s * (cos[i, labels[i]] - math.sin(math.pi - m) * m)
            branches.add("fallback")
        total += -(logits[labels[i]] - np.log(np.exp(logits - logits.max()).sum()) - logits.max())
    assert branches == {"margin", "fallback"}
    assert float(val.detach()) == pytest.approx(total / n, rel=1e-9)


def test_margin_logits_easy_margin():
    cos = torch.tensor([[0.5, 0.1], [-0.3, 0.2]], dtype=torch.float64)
    out = margin_logits(cos, torch.tensor([0, 0]), 0.5, 1.0, easy_margin=True)
    assert out[0, 0] == pytest.approx(math.cos(math.acos(0.5) + 0.5))
    assert out[1, 0] == pytest.approx(-0.3)  # cos <= 0: unchanged
    assert out[0, 1] == pytest.approx(0.1) and out[1, 1] == pytest.approx(0.2)


@pytest.mark.parametrize("method", ["arcface", "magface", "dul", "dul-mag", "maskdul"])
def test_criterion_per_method(method):
    torch.manual_seed(5)
    cfg = TrainConfig(method=method, embedding_size=32)
    crit = build_criterion(cfg, num_classes=5)
    mu = torch.randn(6, 32) * 5
    logvar = torch.randn(6, 32) * 0.1 if cfg.uses_dul else None
    labels, masked = torch.randint(0, 5, (6,)), torch.tensor([1, 0, 1, 0, 1, 0], dtype=torch.bool)
    loss, parts = crit(mu, logvar, labels, masked)
    assert torch.isfinite(loss)
    assert ("g" in parts) == (method in ("magface", "dul-mag", "maskdul"))
    assert ("kl" in parts) == cfg.uses_dul
    if cfg.uses_dul:
        assert float(parts["sigma_m_n"]) == 3 and float(parts["sigma_u_n"]) == 3
        # loss = margin part + 0.01 * KL exactly
        margin_part = loss - 0.01 * parts["kl"]
        expect = parts["cls"] + (35.0 * parts["g"] if "g" in parts else 0.0)
        assert torch.allclose(margin_part, expect, atol=1e-4)
        kl_ref = (HKLD() if method == "maskdul" else DULKL())(mu, logvar, masked)
        assert torch.allclose(parts["kl"], kl_ref)
    else:
        # no sampling: arcface / magface classify mu itself, deterministically
        assert torch.allclose(crit(mu, None, labels, masked)[0], loss)


# ----------------------------------------------------------------------------------------------
# the paper's constants and every method's criterion against a closed form (issue 13)
# ----------------------------------------------------------------------------------------------
def test_train_config_holds_the_papers_constants():
    """MaskDUL (ICASSP 2023) and MagFace's values (MagFace: IrvingMeng/MagFace run/run.sh:
    la 10, ua 110, lm 0.45, um 0.8, lg 35, arc-scale 64; its MagLinear defaults to easy_margin)."""
    c = TrainConfig()
    assert (c.mag_la, c.mag_ua, c.mag_lm, c.mag_um, c.arc_scale, c.mag_lambda_g) == (10, 110, 0.45, 0.8, 64, 35)
    assert (c.hkl_l_xi, c.hkl_u_xi, c.hkl_l_sigma, c.hkl_u_sigma, c.kl_lambda) == (0.5, 1, 10, 25, 0.01)
    assert (c.lr, c.momentum, c.weight_decay, c.dropout, c.batch_size) == (0.05, 0.9, 5e-4, 0.4, 128)
    assert (c.milestones, c.gamma, c.epochs, c.lr_base_batch, c.warmup_epochs) == ((10, 18, 25), 0.1, 30, 128, 0)
    assert c.grad_clip == 5.0  # not in the paper: maskkit's documented guard
    assert (c.arc_margin, c.mag_easy_margin, c.arc_easy_margin) == (0.5, True, False)
    assert (c.kl_reduction, c.xi_detach, c.crop_pad, c.hflip, c.image_size) == ("sum", True, 4, True, (112, 112))


_MAG = ("magface", "dul-mag", "maskdul")


def _closed_form(method: str, easy: bool, feats, centres, labels, mu, logvar, masked) -> tuple[float, float, float]:
    """(loss, cls, kl) of one method written from the papers' formulas in float64 numpy, with the
    paper's constants as literals: ArcFace s 64, m 0.5; MagFace l_a 10, u_a 110, l_m 0.45,
    u_m 0.8, lambda_g 35; KL summed over dimensions, averaged over the batch, lambda 0.01; H-KLD
    xi = h(||sigma||) with l_xi 0.5, u_xi 1, l_sigma 10, u_sigma 25 for masked samples."""
    f = np.asarray(feats, np.float64)
    w = np.asarray(centres, np.float64)
    y = np.asarray(labels)
    cos = np.clip((f / np.linalg.norm(f, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T,
                  -1, 1)
    if method in _MAG:
        a = np.clip(np.linalg.norm(f, axis=1), 10, 110)
        m = (0.8 - 0.45) / (110 - 10) * (a - 10) + 0.45
        g = float(np.mean(a / 110 ** 2 + 1 / a))
    else:
        m, g = np.full(len(f), 0.5), 0.0
    logits = 64 * cos.copy()
    for i in range(len(f)):
        c = cos[i, y[i]]
        theta = math.acos(c)
        if easy:
            t = math.cos(theta + m[i]) if c > 0 else c
        else:
            t = math.cos(theta + m[i]) if theta + m[i] < math.pi else c - m[i] * math.sin(m[i])
        logits[i, y[i]] = 64 * t
    mx = logits.max(1)
    ce = float(np.mean(mx + np.log(np.exp(logits - mx[:, None]).sum(1)) - logits[np.arange(len(f)), y]))
    loss = ce + (35 * g if method in _MAG else 0.0)
    kl = 0.0
    if method in ("dul", "dul-mag", "maskdul"):
        mu_, sig = np.asarray(mu, np.float64), np.exp(0.5 * np.asarray(logvar, np.float64))
        n = np.linalg.norm(sig, axis=1)
        h = np.where((n >= 10) & (n <= 25), 0.5 + (1 - 0.5) * (25 - n) / (25 - 10), 1.0)
        xi = np.where(np.asarray(masked), h, 1.0) if method == "maskdul" else np.ones(len(f))
        per = (np.log(xi[:, None] / sig) + (sig ** 2 + mu_ ** 2) / (2 * xi[:, None] ** 2) - 0.5).sum(1)
        kl = float(per.mean())
        loss += 0.01 * kl
    return loss, ce, kl


def _probe(crit, d: int = 32, seed: int = 0):
    """8 features at chosen angles to their class centre (0.2 .. 3.0 rad: both sides of cos = 0 and
    of theta + m = pi) and norms 5 .. 130 (both MagFace clamps); sigma norms 14 and 22 (inside the
    H-KLD band, and 22 outside a band ending at 20) for two masked samples, 18 for an unmasked one
    (its xi must stay 1), ~0.3 elsewhere."""
    g = torch.Generator().manual_seed(seed)
    w = crit.margin_loss.weight.detach()
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    angles = torch.tensor([0.2, 0.9, 1.4, 1.75, 2.3, 2.8, 3.0, 0.5], dtype=torch.float64)
    norms = torch.tensor([5.0, 20, 40, 60, 80, 100, 120, 130], dtype=torch.float64)
    u = F.normalize(w[labels], dim=1)
    v = torch.randn(8, d, generator=g, dtype=torch.float64)
    v = F.normalize(v - (v * u).sum(1, keepdim=True) * u, dim=1)
    mu = norms[:, None] * (torch.cos(angles)[:, None] * u + torch.sin(angles)[:, None] * v)
    sig = torch.full((8, d), 0.05, dtype=torch.float64)
    sig[0], sig[2], sig[1] = 14 / math.sqrt(d), 22 / math.sqrt(d), 18 / math.sqrt(d)  # 1: unmasked, xi stays 1
    logvar = 2 * torch.log(sig) + 0.1 * torch.randn(8, d, generator=g, dtype=torch.float64)
    masked = torch.tensor([True, False, True, False, True, False, True, False])
    return mu, logvar, labels, masked


def _cfg_for(method: str, mode: str) -> tuple[TrainConfig, bool]:
    """The config of ``method`` in margin ``mode`` ("default", "easy", "hard") and the mode its
    criterion must use. The other family's key is set to the opposite value, so a criterion
    that reads the wrong key fails."""
    mag = method in _MAG
    if mode == "default":
        return TrainConfig(method=method, embedding_size=32), mag
    easy = mode == "easy"
    own, other = ("mag_easy_margin", "arc_easy_margin") if mag else ("arc_easy_margin", "mag_easy_margin")
    return TrainConfig(method=method, embedding_size=32, **{own: easy, other: not easy}), easy


@pytest.mark.parametrize("mode", ["default", "easy", "hard"])
@pytest.mark.parametrize("method", ["arcface", "magface", "dul", "dul-mag", "maskdul"])
def test_build_criterion_equals_the_closed_form(method, mode):
    """In eval mode (no sampling) the whole loss of ``build_criterion(TrainConfig(...))`` is the
    closed form of the method on mu; the probe hits every margin branch (checked)."""
    cfg, easy = _cfg_for(method, mode)
    torch.manual_seed(1)
    crit = build_criterion(cfg, num_classes=5).double().eval()
    mu, logvar, labels, masked = _probe(crit)
    lv = logvar if cfg.uses_dul else None
    loss, parts = crit(mu, lv, labels, masked)
    w = crit.margin_loss.weight.detach()
    ref, ref_cls, ref_kl = _closed_form(method, easy, mu, w, labels, mu, logvar, masked)
    # every branch is hit: cos > 0; cos <= 0 with theta + m < pi; theta + m > pi
    theta = torch.acos((F.normalize(mu) * F.normalize(w[labels])).sum(1))
    m = 0.45 + 0.35 / 100 * (mu.norm(dim=1).clamp(10, 110) - 10) if method in _MAG else torch.full_like(theta, 0.5)
    assert (theta < math.pi / 2).any() and ((theta > math.pi / 2) & (theta + m < math.pi)).any()
    assert (theta + m > math.pi).any()
    # float64 throughout except xi (h of ||sigma|| is computed in fp32): ~1e-7 relative
    assert float(loss.detach()) == pytest.approx(ref, rel=1e-6)
    assert float(parts["cls"]) == pytest.approx(ref_cls, rel=1e-9)
    if cfg.uses_dul:
        assert float(parts["kl"]) == pytest.approx(ref_kl, rel=1e-6)
    # the probe separates the modes: the other mode's closed form is far off
    other = _closed_form(method, not easy, mu, w, labels, mu, logvar, masked)[1]
    assert abs(other - ref_cls) > 1e-3 * abs(ref_cls)


@pytest.mark.parametrize("method", ["dul", "dul-mag", "maskdul"])
def test_dul_methods_classify_the_sample_in_training_and_mu_in_eval(method):
    """Training: the classification term is the margin loss of s = mu + eps * sigma, eps drawn from
    the seeded global generator (one ``randn`` of mu's shape); two calls differ. Eval: mu,
    deterministic."""
    cfg = TrainConfig(method=method, embedding_size=32)
    torch.manual_seed(2)
    crit = build_criterion(cfg, num_classes=5).double()
    mu, logvar, labels, masked = _probe(crit)
    w = crit.margin_loss.weight.detach()
    easy = method in _MAG
    torch.manual_seed(123)
    loss, parts = crit(mu, logvar, labels, masked)
    torch.manual_seed(123)
    s = mu + torch.randn(mu.shape, dtype=mu.dtype) * torch.exp(0.5 * logvar)
    ref, ref_cls, ref_kl = _closed_form(method, easy, s, w, labels, mu, logvar, masked)
    assert float(parts["cls"]) == pytest.approx(ref_cls, rel=1e-9)
    assert float(loss.detach()) == pytest.approx(ref, rel=1e-6)
    on_mu = _closed_form(method, easy, mu, w, labels, mu, logvar, masked)[1]
    assert abs(on_mu - ref_cls) > 1e-3 * abs(on_mu)  # classifying mu would be told apart
    again, _ = crit(mu, logvar, labels, masked)
    assert float(again.detach()) != float(loss.detach())  # a fresh eps each call
    crit.eval()
    e1, p1 = crit(mu, logvar, labels, masked)
    e2, _ = crit(mu, logvar, labels, masked)
    assert float(e1.detach()) == float(e2.detach()) and float(p1["cls"]) == pytest.approx(on_mu, rel=1e-9)


@pytest.mark.parametrize("method", ["arcface", "magface"])
def test_mu_only_methods_are_deterministic_in_training(method):
    crit = build_criterion(TrainConfig(method=method, embedding_size=32), num_classes=5).double()
    mu, _, labels, masked = _probe(crit)
    a, b = crit(mu, None, labels, masked)[0], crit(mu, None, labels, masked)[0]
    assert float(a.detach()) == float(b.detach())


# an old run's config.json, exactly as maskkit wrote it before the margin keys were split
_OLD_CONFIG = """{"amp": "bf16", "arc_margin": 0.5, "arc_scale": 64.0, "backbone": "r50", "batch_size": 128,
 "channels_last": true, "ckpt_every": 1000, "compile": false, "compile_mode": "default", "crop_pad": 4,
 "data": "shards/", "deterministic": false, "device": "auto", "dropout": 0.4, "easy_margin": false,
 "embedding_size": 512, "epochs": 30, "extra": {}, "gamma": 0.1, "grad_clip": 5.0, "hflip": true,
 "hkl_l_sigma": 10.0, "hkl_l_xi": 0.5, "hkl_u_sigma": 25.0, "hkl_u_xi": 1.0, "image_size": [112, 112],
 "kl_lambda": 0.01, "kl_reduction": "sum", "log_every": 50, "lr": 0.05, "lr_base_batch": 128, "mag_la": 10.0,
 "mag_lambda_g": 35.0, "mag_lm": 0.45, "mag_ua": 110.0, "mag_um": 0.8, "max_steps": null, "method": "maskdul",
 "milestones": [10, 18, 25], "momentum": 0.9, "num_workers": 4, "out": "runs/maskdul", "progress": true,
 "seed": 0, "shuffle_buffer": 2000, "split": "train", "split_point": "layer1.0", "steps_per_epoch": null,
 "tensorboard": true, "two_stream": null, "warmup_epochs": 0.0, "weight_decay": 0.0005, "width": 1.0,
 "xi_detach": true}"""


@pytest.mark.parametrize("old_easy", [False, True])
def test_old_config_keeps_its_loss(tmp_path, old_easy):
    """An old config.json's ``easy_margin`` sets both new keys: the old run keeps the loss it was
    trained with (old default False: the hard margin, although new magface runs default to easy);
    keys it lacks get their defaults."""
    path = tmp_path / "config.json"
    path.write_text(_OLD_CONFIG.replace('"easy_margin": false', f'"easy_margin": {str(old_easy).lower()}'))
    cfg = TrainConfig.load(path)
    assert (cfg.mag_easy_margin, cfg.arc_easy_margin) == (old_easy, old_easy)
    assert cfg.threads is None and cfg.method == "maskdul"
    for method in ("arcface", "maskdul"):
        c = cfg.replace(method=method, embedding_size=32)
        torch.manual_seed(1)
        crit = build_criterion(c, num_classes=5).double().eval()
        mu, logvar, labels, masked = _probe(crit)
        _, parts = crit(mu, logvar if c.uses_dul else None, labels, masked)
        ref_cls = _closed_form(method, old_easy, mu, crit.margin_loss.weight.detach(), labels, mu, logvar, masked)[1]
        assert float(parts["cls"]) == pytest.approx(ref_cls, rel=1e-9)
    # the round trip writes the new keys only
    assert "easy_margin" not in cfg.to_dict() and TrainConfig.from_json(cfg.to_json()) == cfg


def test_legacy_key_conflict_and_unknown_keys_are_errors():
    d = TrainConfig().to_dict()
    d["easy_margin"] = False  # the old name beside a new key that says otherwise (mag default True)
    with pytest.raises(ValueError, match="easy_margin=False .*conflicts with mag_easy_margin=True"):
        TrainConfig.from_dict(d)
    d["mag_easy_margin"] = False
    assert TrainConfig.from_dict(d).mag_easy_margin is False
    with pytest.raises(ValueError, match="unknown TrainConfig key 'mag_easy_marign' \\(did you mean 'mag_easy_margin'\\?\\)"):
        TrainConfig.from_dict({"mag_easy_marign": True})
