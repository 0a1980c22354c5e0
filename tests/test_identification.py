"""Closed-set identification: templates, ranks, CMC, per-identity failures."""
from __future__ import annotations

import numpy as np
import pytest

from maskkit.training.eval.identification import build_templates, identify


def _u(*v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def test_template_is_renormalised_mean():
    mu = np.stack([_u(1, 0), _u(0, 1), _u(-1, 0)])
    t = build_templates(mu, ["b", "b", "a"])
    assert t.identities == ["a", "b"]
    np.testing.assert_allclose(t.mu[1], _u(1, 1))
    np.testing.assert_allclose(t.mu[0], _u(-1, 0))
    assert t.counts.tolist() == [1, 2]
    assert t.sigma is None and t.mu_fused is None


def test_pfe_fusion_of_template_gaussians():
    # two images of "b": sigma 1 and 2 on dim 0 -> fused var 1/(1 + 1/4) = 0.8,
    # mean (1 * 1 + 0 * 1/4) * 0.8 = 0.8 on dim 0; dim 1: (0 * 1 + 1 * 1/4) * 0.8 = 0.2
    mu = np.stack([_u(1, 0), _u(0, 1)])
    sig = np.array([[1.0, 1.0], [2.0, 2.0]])
    t = build_templates(mu, ["b", "b"], sig)
    np.testing.assert_allclose(t.sigma[0] ** 2, [0.8, 0.8])
    np.testing.assert_allclose(t.mu_fused[0], [0.8, 0.2])
    np.testing.assert_allclose(t.mu[0], _u(1, 1))  # cosine template unchanged


def test_ranks_cmc_and_failures_hand_worked():
    # three identities on the unit circle at 0, 90 and 180 degrees
    gallery = np.stack([_u(1, 0), _u(0, 1), _u(-1, 0)])
    gids = ["A", "B", "C"]
    probes = np.stack([
        _u(1, 0.1),    # A: rank 1
        _u(0.2, 1),    # B: rank 1
        _u(1, 0.2),    # C: nearest A (cos .98), then B (.196), then C (-.98): rank 3
        _u(0.9, 1),    # A: B is closer (0.74 vs 0.67): rank 2
        _u(0, -1),     # D: not in the gallery -> unknown
    ])
    pids = ["A", "B", "C", "A", "D"]
    res = identify(gallery, gids, probes, pids, probe_names=["p0", "p1", "p2", "p3", "p4"])
    assert res.ranks == [1, 1, 3, 2, 0]
    assert res.predicted[:4] == ["A", "B", "A", "B"]
    assert res.n_probes == 5 and res.n_probes_unknown == 1
    assert res.cmc == pytest.approx([0.5, 0.75, 1.0])
    assert res.rank1 == pytest.approx(0.5)
    assert res.rank5 == pytest.approx(1.0)  # fewer than 5 identities: rank-5 covers them all
    a = res.per_identity["A"]
    assert (a["probes"], a["rank1_hits"], a["n_failures"]) == (2, 1, 1)
    assert a["failures"][0]["probe"] == "p3" and a["failures"][0]["predicted"] == "B"
    assert a["failures"][0]["score_predicted"] > a["failures"][0]["score_true"]
    assert res.per_identity["C"]["failures"][0]["rank"] == 3
    assert "D" not in res.per_identity


def test_mls_identification_uses_sigma():
    # Same means, but the probe is far from both templates; the template with the larger
    # sigma explains it better under MLS while cosine prefers the nearer one.
    gallery = np.stack([_u(1, 0), _u(0, 1)])
    probe = np.stack([_u(1, 1.2)])
    s_small, s_big = np.full(2, 0.05), np.full(2, 1.0)
    cos = identify(gallery, ["A", "B"], probe, ["A"])
    assert cos.ranks == [2]
    mls = identify(gallery, ["A", "B"], probe, ["A"], score="mls",
                   gallery_sigma_unit=np.stack([s_big, s_small]), probe_sigma_unit=np.full((1, 2), 0.05))
    assert mls.ranks == [1]
    with pytest.raises(ValueError):
        identify(gallery, ["A", "B"], probe, ["A"], score="mls")


def test_random_embeddings_identify_at_chance():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(50, 64))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    p = rng.normal(size=(2000, 64))
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    res = identify(g, [f"id{i}" for i in range(50)], p, [f"id{i % 50}" for i in range(2000)])
    assert 0.0 <= res.rank1 <= 0.05  # chance is 1/50
    assert 0.05 <= res.rank5 <= 0.16  # chance is 5/50
    assert res.cmc[-1] == 1.0



def test_ties_count_in_the_probes_favour():
    """Module docstring: rank = 1 + the templates scoring strictly higher. A probe halfway between
    its own template and another one (the same cosine, to the bit) is rank 1, not 2."""
    gallery = np.stack([_u(1, 0), _u(0, 1), _u(-1, 0)])
    probes = np.stack([_u(1, 1), _u(1, 1), _u(0, -1)])  # A|B tie, A|B tie, A|C tie (cos 0; B is -1)
    sims = probes @ gallery.T
    assert sims[0, 0] == sims[0, 1] and sims[2, 0] == sims[2, 2]  # exact ties, not near ones
    res = identify(gallery, ["A", "B", "C"], probes, ["A", "B", "C"])
    assert res.ranks == [1, 1, 1]
    assert res.rank1 == 1.0
