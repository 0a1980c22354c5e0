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
