"""The 10-fold verification protocol (insightface verification.py) and the MLS score."""
from __future__ import annotations

import numpy as np
import pytest

from maskkit.training.eval.uncertainty import cosine_similarity, mutual_likelihood_score, normalized_gaussian
from maskkit.training.eval.verification import (
    DEFAULT_THRESHOLDS,
    auc_trapezoid,
    calculate_accuracy,
    calculate_roc,
    calculate_val,
    calculate_val_far,
    evaluate,
    evaluate_distances,
    evaluate_scores,
    extract_embeddings,
    kfold_splits,
)


def test_kfold_splits_match_sklearn_layout():
    # sklearn KFold(10, shuffle=False) on 23 samples: folds of 3,3,3,2,2,2,2,2,2,2, contiguous.
    splits = kfold_splits(23, 10)
    sizes = [len(te) for _, te in splits]
    assert sizes == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert np.array_equal(np.concatenate([te for _, te in splits]), np.arange(23))
    for tr, te in splits:
        assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 23
    assert [list(te) for _, te in splits[:2]] == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError):
        kfold_splits(5, 10)


# Hand-worked case: 10 pairs, so every fold holds out one pair (leave-one-out).
# sorted: .205S .255S .305S .355S .505D .605S .905D 1.005D 1.205D 1.405D
HAND_DIST = np.array([0.205, 1.005, 0.305, 1.205, 0.605, 0.505, 0.255, 1.405, 0.355, 0.905])
HAND_SAME = np.array([1, 0, 1, 0, 1, 0, 1, 0, 1, 0], bool)
# Worked by hand (predict "same" when d < t; first t of maximal training accuracy):
#  out p4 (.605S): train separable, t=.36 -> .605 predicted diff: wrong
#  out p5 (.505D): train separable between .605 and .905, t=.61 -> .505 predicted same: wrong
#  out p8 (.355S): best 8/9 first reached at t=.31 -> .355 predicted diff: wrong
#  every other fold: t=.36 and the held-out pair is right.
HAND_ACC = [1, 1, 1, 1, 0, 0, 1, 1, 0, 1]
HAND_THR = [0.36, 0.36, 0.36, 0.36, 0.36, 0.61, 0.36, 0.36, 0.31, 0.36]


def test_ten_fold_hand_worked_case():
    tpr, fpr, acc, best = calculate_roc(DEFAULT_THRESHOLDS, HAND_DIST, HAND_SAME, 10)
    assert acc.tolist() == HAND_ACC
    np.testing.assert_allclose(best, HAND_THR, atol=1e-9)
    res = evaluate_distances(HAND_DIST, HAND_SAME)
    assert res.accuracy == pytest.approx(0.7)
    assert res.accuracy_std == pytest.approx(np.sqrt(0.21))
    assert (res.n_pairs, res.n_same, res.n_diff) == (10, 5, 5)
    # ROC endpoints: t=0 accepts nothing; t=3.99 accepts everything
    assert tpr[0] == 0 and fpr[0] == 0
    # each fold holds one pair so per-fold TPR (FPR) is 0 on folds without positives (negatives):
    # the mean at t=3.99 is 5/10 for both.
    assert tpr[-1] == pytest.approx(0.5) and fpr[-1] == pytest.approx(0.5)


def test_auc_trapezoid_known_curves():
    assert auc_trapezoid([0, 1], [0, 1]) == pytest.approx(0.5)
    assert auc_trapezoid([0, 0, 1], [0, 1, 1]) == pytest.approx(1.0)
    assert auc_trapezoid([1, 0.5, 0], [1, 0.5, 0]) == pytest.approx(0.5)  # any order


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_separable_embeddings_give_100_percent():
    rng = np.random.default_rng(0)
    n, d = 600, 64
    issame = np.arange(n) % 2 == 0
    a = _unit(rng.normal(size=(n, d)))
    b = np.where(issame[:, None], a + 0.01 * rng.normal(size=(n, d)), _unit(rng.normal(size=(n, d))))
    res = evaluate(a, b, issame)
    assert res.accuracy == 1.0 and res.accuracy_std == 0.0
    assert res.auc == pytest.approx(1.0, abs=1e-6)
    # the FAR curve is a step function; the threshold interpolated at FAR=1e-3 between the
    # steps 0 and 1/270 may accept one held-out negative on a fold: FAR stays below 1/30.
    assert res.val == 1.0 and res.far < 0.01


def test_random_embeddings_give_chance():
    rng = np.random.default_rng(1)
    n, d = 3000, 128
    issame = rng.random(n) < 0.5
    res = evaluate(rng.normal(size=(n, d)), rng.normal(size=(n, d)), issame)
    assert 0.44 <= res.accuracy <= 0.56, res.accuracy
    assert 0.44 <= res.auc <= 0.56, res.auc
    assert res.val < 0.05  # at FAR 1e-3 nothing useful is accepted


def test_score_protocol_equals_distance_protocol_for_cosine():
    # cosine = 1 - d/2 on unit vectors: the score protocol must reach the same accuracy.
    rng = np.random.default_rng(2)
    n, d = 400, 32
    issame = np.arange(n) % 2 == 0
    a = _unit(rng.normal(size=(n, d)))
    b = _unit(np.where(issame[:, None], a + 0.9 * rng.normal(size=(n, d)) / np.sqrt(d), rng.normal(size=(n, d))))
    r_dist = evaluate(a, b, issame)
    r_score = evaluate_scores(cosine_similarity(a, b), issame, n_thresholds=2000)
    assert 0.6 < r_dist.accuracy < 1.0  # neither trivial nor perfect
    assert r_score.accuracy == pytest.approx(r_dist.accuracy, abs=0.01)
    assert r_score.auc == pytest.approx(r_dist.auc, abs=0.01)


def test_mls_is_gaussian_log_likelihood_of_the_difference():
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(3)
    mu1, mu2 = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    s1, s2 = rng.uniform(0.2, 2, size=(5, 8)), rng.uniform(0.2, 2, size=(5, 8))
    got = mutual_likelihood_score(mu1, s1, mu2, s2)
    for i in range(5):
        want = multivariate_normal(mean=np.zeros(8), cov=np.diag(s1[i] ** 2 + s2[i] ** 2)).logpdf(mu1[i] - mu2[i])
        assert got[i] == pytest.approx(want, rel=1e-10)
    # 1-D hand case: mu 0 vs 1, sigma 1 and 1: -1/2 (1/2 + log 2) - 1/2 log(2 pi)
    one = mutual_likelihood_score([[0.0]], [[1.0]], [[1.0]], [[1.0]])[0]
    assert one == pytest.approx(-0.5 * (0.5 + np.log(2.0)) - 0.5 * np.log(2 * np.pi))
    mu_n, s_n = normalized_gaussian(np.array([[3.0, 4.0]]), np.array([[1.0, 2.0]]))
    np.testing.assert_allclose(mu_n, [[0.6, 0.8]])
    np.testing.assert_allclose(s_n, [[0.2, 0.4]])


class _LinearModel:
    """A stand-in with the InferenceModel.embed signature: mu = W x, sigma from the branch."""

    def __init__(self, d=16):
        rng = np.random.default_rng(4)
        self.w = rng.normal(size=(112 * 112 * 3, d)).astype(np.float32) / 1000
        self.calls = []

    def embed(self, images, masked):
        self.calls.append(len(images))
        x = images.reshape(len(images), -1).astype(np.float32) / 255.0
        mu = x @ self.w
        sigma = np.ones_like(mu) * (1.0 + np.asarray(masked, np.float32)[:, None])
        return mu, sigma


def test_extract_embeddings_flip_sum_and_sigma_mean():
    rng = np.random.default_rng(5)
    imgs = rng.integers(0, 256, size=(5, 112, 112, 3), dtype=np.uint8)
    masked = np.array([0, 1, 0, 1, 1], bool)
    m = _LinearModel()
    e = extract_embeddings(m, imgs, masked, batch_size=2, flip=True, progress=False)
    assert m.calls == [4, 4, 2]  # batches of 2 images + their mirrors
    raw = imgs.reshape(5, -1).astype(np.float32) / 255 @ m.w
    rawf = imgs[:, :, ::-1].reshape(5, -1).astype(np.float32) / 255 @ m.w
    want = (raw + rawf) / np.linalg.norm(raw + rawf, axis=1, keepdims=True)
    np.testing.assert_allclose(e.mu, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(e.magnitude, np.linalg.norm((raw + rawf) / 2, axis=1), rtol=1e-4)
    np.testing.assert_allclose(e.sigma[:, 0], 1.0 + masked)
    np.testing.assert_allclose(e.sigma_norm, np.sqrt(16) * (1.0 + masked), rtol=1e-6)
    e2 = extract_embeddings(m, imgs, masked, batch_size=3, flip=False, progress=False)
    np.testing.assert_allclose(e2.mu, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-4, atol=1e-5)


def test_val_at_far_note_when_negatives_are_too_few():
    from maskkit.training.eval.verification import val_far_note

    note = val_far_note(999, 1e-3)
    assert note and "not resolvable" in note and "999 negative pairs" in note and "at least 1000" in note
    assert val_far_note(1000, 1e-3) is None and val_far_note(50_000, 1e-3) is None
    assert val_far_note(50, 1e-2) and val_far_note(100, 1e-2) is None
    assert "not resolvable" in val_far_note(0, 1e-3)


def test_a_distance_equal_to_the_threshold_is_not_a_match():
    """insightface's rule ``dist < threshold`` (verification.py calculate_accuracy /
    calculate_val_far): a pair exactly at the threshold is predicted "different". Hand-worked:
    d = [0.5, 0.2, 0.5, 0.9], same = [T, T, F, F], t = 0.5 -> predicted same only for d = 0.2:
    TP 1, FN 1, FP 0, TN 2."""
    d = np.array([0.5, 0.2, 0.5, 0.9])
    same = np.array([True, True, False, False])
    assert calculate_accuracy(0.5, d, same) == (0.5, 0.0, 0.75)
    assert calculate_val_far(0.5, d, same) == (0.5, 0.0)


def test_val_at_far_counts_training_negatives_strictly_below_the_threshold():
    """VAL@FAR's training-fold FAR uses the same ``d < t`` rule as calculate_val_far. Hand-worked,
    2 contiguous folds, thresholds 0, 0.5, 1, 1.5, target FAR 0.5:
    fold A = same 0.2, 0.7; diff 0.5, 1.2.  fold B = same 0.3, 1.1; diff 0.5, 1.4.
    Training on B: FAR(t) = 0, 0, 0.5, 1 (0.5 is not < 0.5) -> t = 1.0; on A: VAL 2/2, FAR 1/2.
    Training on A: FAR(t) = 0, 0, 0.5, 1 -> t = 1.0; on B: VAL 1/2, FAR 1/2.
    Mean VAL 0.75 (std 0.25), mean FAR 0.5. Counting d <= t would pick t = 0.5: VAL 0.5, FAR 0."""
    d = np.array([0.2, 0.7, 0.5, 1.2, 0.3, 1.1, 0.5, 1.4])
    same = np.array([True, True, False, False, True, True, False, False])
    val, std, far = calculate_val(np.array([0.0, 0.5, 1.0, 1.5]), d, same, far_target=0.5, nrof_folds=2)
    assert (val, std, far) == (0.75, 0.25, 0.5)
