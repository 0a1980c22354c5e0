"""Face verification protocol: insightface ``verification.py`` re-implemented in NumPy.

The routine follows insightface's ``recognition/arcface_torch/eval/verification.py``
(itself from facenet's ``lfw.py``):

1. each image is embedded together with its horizontal flip; the two embeddings are
   **summed**, then L2-normalised (:func:`extract_embeddings`);
2. the distance of a pair is the **squared L2** distance of the normalised embeddings
   (in ``[0, 4]``);
3. thresholds are scanned from 0 to 4 in steps of 0.01 (``np.arange(0, 4, 0.01)``);
4. ``KFold(n_splits=10, shuffle=False)`` splits the *pairs*: on each split the threshold with
   the best accuracy on the 9 training folds is applied to the held-out fold; the reported
   accuracy is the mean ± std of the 10 held-out accuracies;
5. the ROC is the per-threshold TPR/FPR on the held-out folds, averaged over folds; insightface's
   AUC is the trapezoidal area under that mean curve (``sklearn.metrics.auc``), reported here as
   ``auc_folds``;
6. VAL@FAR: on each split the threshold giving FAR = ``far_target`` on the training folds is
   found by linear interpolation of the training FAR curve over a finer grid
   (``np.arange(0, 4, 0.001)``), and the validation rate (TPR) and FAR of the held-out fold at
   that threshold are averaged over folds.

Folds (:mod:`maskkit.training.eval.folds`) are made from the pairs' order in the source file,
before any pair is dropped: insightface's contiguous folds when each holds both classes, else
stratified runs by a fixed rule; :attr:`VerificationResult.fold_rule` says which.

Deviations from insightface, all deliberate and documented:

* the fold split is written here (:func:`maskkit.training.eval.folds.kfold_splits`, identical
  to sklearn's ``KFold(shuffle=False)``: the first ``n % k`` folds get one extra pair) so the
  project does not depend on scikit-learn; the stratified rule applies only where insightface's
  folds would hold one class;
* ``auc`` is the AUC over all pairs (the Mann-Whitney rank statistic, ties counted half), which
  does not depend on folds or on the threshold grid; insightface's fold-averaged figure is
  ``auc_folds`` beside it;
* insightface interpolates the FAR curve with ``scipy.interpolate.interp1d(kind="slinear")``
  (``recognition/arcface_torch/eval/verification.py``, ``calculate_val``), which fails on recent
  SciPy when the FAR curve has repeated values ("Expect x to not have duplicates"). Here the
  curve is interpolated the way ``interp1d`` did on the SciPy versions where that code still ran
  (:func:`threshold_at_far`): between the *last* threshold of the highest FAR below the target
  and the *first* threshold of the next FAR value;
* the best-threshold search takes the first threshold with maximal training accuracy, as
  ``np.argmax`` does in insightface;
* scores that are not finite (NaN, inf: e.g. the MLS of a barely trained model) raise
  :class:`NonFiniteScores` naming how many and which pairs, instead of a bare ``ValueError``.

Scores where *higher* means more similar (cosine, mutual likelihood score) go through
:func:`evaluate_scores`, which runs the same 10-fold protocol over a threshold grid made from
the score quantiles.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from maskkit.training.eval.embeddings import Embeddings, extract_embeddings  # noqa: F401 (re-exported)
from maskkit.training.eval.folds import FOLD_RULES, assign_folds, kfold_splits, splits_from_folds  # noqa: F401 (re-exported)

#: insightface's threshold grid for squared-L2 distances of unit vectors (accuracy and ROC).
DEFAULT_THRESHOLDS = np.arange(0, 4, 0.01)
#: insightface's finer grid for VAL@FAR.
DEFAULT_VAL_THRESHOLDS = np.arange(0, 4, 0.001)


def calculate_accuracy(threshold: float, dist: np.ndarray, actual_issame: np.ndarray) -> tuple[float, float, float]:
    """TPR, FPR and accuracy of ``dist < threshold`` as the "same" prediction (insightface).

    TPR (FPR) is 0 when there are no positive (negative) pairs.
    """
    predict_issame = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict_issame, actual_issame))
    fp = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    tn = np.sum(np.logical_and(np.logical_not(predict_issame), np.logical_not(actual_issame)))
    fn = np.sum(np.logical_and(np.logical_not(predict_issame), actual_issame))
    tpr = 0.0 if (tp + fn == 0) else float(tp) / float(tp + fn)
    fpr = 0.0 if (fp + tn == 0) else float(fp) / float(fp + tn)
    acc = float(tp + tn) / dist.size
    return tpr, fpr, acc


def calculate_val_far(threshold: float, dist: np.ndarray, actual_issame: np.ndarray) -> tuple[float, float]:
    """Validation rate (TPR) and false accept rate of ``dist < threshold`` (insightface)."""
    predict_issame = np.less(dist, threshold)
    true_accept = np.sum(np.logical_and(predict_issame, actual_issame))
    false_accept = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    n_same = np.sum(actual_issame)
    n_diff = np.sum(np.logical_not(actual_issame))
    val = float(true_accept) / float(n_same) if n_same else 0.0
    far = float(false_accept) / float(n_diff) if n_diff else 0.0
    return val, far


def calculate_roc(
    thresholds: np.ndarray, dist: np.ndarray, actual_issame: np.ndarray, nrof_folds: int = 10,
    folds: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """10-fold ROC and accuracy over pair distances (lower = more similar).

    Args:
        folds: (P,) fold index per pair (:func:`assign_folds`); None: contiguous KFold.

    Returns:
        ``(tpr, fpr, accuracy, best_thresholds)``: mean held-out TPR/FPR per threshold (T,),
        held-out accuracy per fold (F,), and the threshold chosen on each fold's training part.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    dist = np.asarray(dist, dtype=np.float64)
    actual_issame = np.asarray(actual_issame, dtype=bool)
    splits = splits_from_folds(len(actual_issame), nrof_folds, folds)
    nrof_thresholds = len(thresholds)
    tprs = np.zeros((len(splits), nrof_thresholds))
    fprs = np.zeros((len(splits), nrof_thresholds))
    accuracy = np.zeros(len(splits))
    best_thresholds = np.zeros(len(splits))
    for fold_idx, (train_set, test_set) in enumerate(splits):
        acc_train = np.zeros(nrof_thresholds)
        for t_idx, threshold in enumerate(thresholds):
            _, _, acc_train[t_idx] = calculate_accuracy(threshold, dist[train_set], actual_issame[train_set])
        best_threshold_index = int(np.argmax(acc_train))
        best_thresholds[fold_idx] = thresholds[best_threshold_index]
        for t_idx, threshold in enumerate(thresholds):
            tprs[fold_idx, t_idx], fprs[fold_idx, t_idx], _ = calculate_accuracy(
                threshold, dist[test_set], actual_issame[test_set]
            )
        _, _, accuracy[fold_idx] = calculate_accuracy(
            thresholds[best_threshold_index], dist[test_set], actual_issame[test_set]
        )
    return np.mean(tprs, 0), np.mean(fprs, 0), accuracy, best_thresholds


def threshold_at_far(thresholds: np.ndarray, far_train: np.ndarray, far_target: float) -> float:
    """Threshold at which the (non-decreasing) training FAR curve reaches ``far_target``.

    Linear interpolation as insightface's ``interp1d(far_train, thresholds)`` computed it on the
    SciPy versions where it ran with repeated FAR values: with ``f_lo`` the highest FAR on the
    grid below the target and ``f_hi`` the next one, the line runs from the *last* threshold at
    ``f_lo`` to the *first* threshold at ``f_hi``. A target equal to a FAR on the grid gives the
    first threshold reaching it. 0.0 when the curve never reaches the target, as in insightface;
    the first threshold when the curve starts above it.

    Args:
        thresholds: (T,) increasing thresholds.
        far_train: (T,) FAR at each threshold, non-decreasing.
        far_target: the FAR to reach.
    """
    thresholds = np.asarray(thresholds, np.float64)
    far_train = np.asarray(far_train, np.float64)
    if np.max(far_train) < far_target:
        return 0.0
    hi = int(np.searchsorted(far_train, far_target, side="left"))  # first threshold with FAR >= target
    if far_train[hi] == far_target or hi == 0:
        return float(thresholds[hi])
    lo = hi - 1  # the last threshold of the FAR just below the target
    w = (far_target - far_train[lo]) / (far_train[hi] - far_train[lo])
    return float(thresholds[lo] + w * (thresholds[hi] - thresholds[lo]))


def calculate_val(
    thresholds: np.ndarray,
    dist: np.ndarray,
    actual_issame: np.ndarray,
    far_target: float = 1e-3,
    nrof_folds: int = 10,
    folds: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """VAL@FAR: validation rate at a target false accept rate, 10-fold.

    Args:
        folds: (P,) fold index per pair (:func:`assign_folds`); None: contiguous KFold.

    Returns:
        ``(val_mean, val_std, far_mean)`` over the held-out folds.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    dist = np.asarray(dist, dtype=np.float64)
    actual_issame = np.asarray(actual_issame, dtype=bool)
    splits = splits_from_folds(len(actual_issame), nrof_folds, folds)
    val = np.zeros(len(splits))
    far = np.zeros(len(splits))
    for fold_idx, (train_set, test_set) in enumerate(splits):
        # FAR(t) = #(negatives with d < t) / #negatives for every t at once (same values as
        # calling calculate_val_far per threshold)
        neg = np.sort(dist[train_set][~actual_issame[train_set]])
        far_train = np.searchsorted(neg, thresholds, side="left") / max(len(neg), 1)
        threshold = threshold_at_far(thresholds, far_train, far_target)
        val[fold_idx], far[fold_idx] = calculate_val_far(threshold, dist[test_set], actual_issame[test_set])
    return float(np.mean(val)), float(np.std(val)), float(np.mean(far))


def auc_trapezoid(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under a ROC curve by the trapezoidal rule (as ``sklearn.metrics.auc``).

    The points are sorted by FPR (ties by TPR) first, so the curve may come in either order.
    """
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    order = np.lexsort((tpr, fpr))
    x, y = fpr[order], tpr[order]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def auc_all_pairs(dist: np.ndarray, actual_issame: np.ndarray) -> float | None:
    """ROC AUC over all pairs: the probability that a same pair is closer than a different
    pair, ties counted half (the Mann-Whitney U statistic / (n_same * n_diff)). Independent of
    folds, pair order and threshold grid. None without both classes."""
    dist = np.asarray(dist, np.float64)
    same = np.asarray(actual_issame, bool)
    n_s, n_d = int(same.sum()), int((~same).sum())
    if n_s == 0 or n_d == 0:
        return None
    # average ranks of -dist (ascending similarity), ties share their mean rank
    _, inv, counts = np.unique(-dist, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mean_rank = ends - (counts - 1) / 2.0  # 1-based mean rank of each distinct value
    ranks = mean_rank[inv]
    u = ranks[same].sum() - n_s * (n_s + 1) / 2.0
    return float(u / (n_s * n_d))


class NonFiniteScores(ValueError):
    """Pair scores (distances, MLS) that are NaN or infinite: ``count`` of them, ``first`` the
    indices of the first few."""

    def __init__(self, what: str, count: int, total: int, first: list[int]) -> None:
        super().__init__(f"{count} of {total} {what} are not finite (NaN or inf), e.g. pair(s) "
                         f"{', '.join(map(str, first))}")
        self.count, self.total, self.first = count, total, first


@dataclass
class VerificationResult:
    """Outcome of the 10-fold verification protocol.

    Attributes:
        accuracy: mean held-out accuracy over folds (0..1).
        accuracy_std: std of the held-out accuracies.
        fold_accuracy: per-fold held-out accuracy.
        best_thresholds: threshold chosen on each fold's training part (distance units, or
            negated-score units for :func:`evaluate_scores`).
        val: mean validation rate at ``far_target``; ``val_std`` its std; ``far`` the mean FAR
            actually reached on the held-out folds.
        auc: ROC AUC over all pairs (:func:`auc_all_pairs`; None without both classes).
        tpr, fpr: the mean ROC curve, one point per threshold.
        thresholds: the threshold grid.
        n_pairs, n_same, n_diff: pair counts.
        auc_folds: insightface's figure: area under the fold-averaged ROC curve.
        fold_rule: ``"kfold"`` or ``"stratified"`` (:func:`assign_folds`), or ``"given"`` for
            folds passed in by the caller without a rule.
        fold_sizes: pairs per held-out fold (same, different).
    """

    accuracy: float
    accuracy_std: float
    fold_accuracy: list[float]
    best_thresholds: list[float]
    val: float
    val_std: float
    far: float
    far_target: float
    auc: float | None
    tpr: list[float] = field(repr=False)
    fpr: list[float] = field(repr=False)
    thresholds: list[float] = field(repr=False)
    n_pairs: int = 0
    n_same: int = 0
    n_diff: int = 0
    auc_folds: float | None = None
    fold_rule: str = "kfold"
    fold_sizes: list[list[int]] = field(default_factory=list)

    def summary(self) -> dict:
        """The headline figures (no curves), JSON-serialisable."""
        d = asdict(self)
        for k in ("tpr", "fpr", "thresholds"):
            d.pop(k)
        return d


def val_far_note(n_diff: int, far_target: float = 1e-3) -> str | None:
    """A note when VAL@FAR=``far_target`` cannot be resolved from ``n_diff`` negative pairs.

    With fewer than ``1 / far_target`` negatives the smallest non-zero FAR is already above the
    target, so the threshold sits at "no false accept" and VAL says little about that FAR.

    Returns:
        The note, or ``None`` when there are enough negative pairs.
    """
    need = int(np.ceil(1.0 / far_target - 1e-9))
    if n_diff >= need:
        return None
    smallest = f"{1.0 / n_diff:.2g}" if n_diff else "undefined"
    return (f"VAL@FAR={far_target:g} is not resolvable with {n_diff} negative pairs (smallest non-zero FAR "
            f"{smallest}; needs at least {need}): read it as VAL at zero false accepts")


def evaluate_distances(
    dist: np.ndarray,
    actual_issame: np.ndarray,
    thresholds: np.ndarray | None = None,
    nrof_folds: int = 10,
    far_target: float = 1e-3,
    val_thresholds: np.ndarray | None = None,
    folds: np.ndarray | None = None,
    fold_rule: str | None = None,
    what: str = "pair distances",
) -> VerificationResult:
    """Run the 10-fold protocol on precomputed pair distances (lower = more similar).

    Args:
        dist: (P,) pair distances.
        actual_issame: (P,) bool, True for same-identity pairs.
        thresholds: threshold grid for accuracy and ROC; default ``np.arange(0, 4, 0.01)``.
        nrof_folds: number of folds (10).
        far_target: FAR for the VAL figure (1e-3).
        val_thresholds: grid for VAL@FAR; default ``np.arange(0, 4, 0.001)`` with the default
            ``thresholds``, else ``thresholds``.
        folds: (P,) fold index per pair, made from the source's full pair list before any pair
            was dropped (``PairSet.folds``); None: :func:`assign_folds` on these pairs' order.
        fold_rule: the rule that made ``folds`` (recorded in the result).
        what: how the scores are named in a :class:`NonFiniteScores` message.

    Raises:
        NonFiniteScores: (a ``ValueError``) a distance is NaN or infinite.
    """
    dist = np.asarray(dist, dtype=np.float64)
    actual_issame = np.asarray(actual_issame, dtype=bool)
    if dist.shape != actual_issame.shape or dist.ndim != 1:
        raise ValueError(f"dist {dist.shape} and issame {actual_issame.shape} must be matching 1-D arrays")
    bad = np.flatnonzero(~np.isfinite(dist))
    if len(bad):
        raise NonFiniteScores(what, len(bad), len(dist), [int(i) for i in bad[:5]])
    if folds is None:
        folds, fold_rule = assign_folds(actual_issame, nrof_folds)
    folds = np.asarray(folds)
    if val_thresholds is None:
        val_thresholds = DEFAULT_VAL_THRESHOLDS if thresholds is None else thresholds
    thresholds = DEFAULT_THRESHOLDS if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    tpr, fpr, acc, best = calculate_roc(thresholds, dist, actual_issame, nrof_folds, folds)
    val, val_std, far = calculate_val(val_thresholds, dist, actual_issame, far_target, nrof_folds, folds)
    sizes = [[int(np.sum(actual_issame[folds == f])), int(np.sum(~actual_issame[folds == f]))] for f in np.unique(folds)]
    return VerificationResult(
        accuracy=float(np.mean(acc)),
        accuracy_std=float(np.std(acc)),
        fold_accuracy=[float(a) for a in acc],
        best_thresholds=[float(t) for t in best],
        val=val,
        val_std=val_std,
        far=far,
        far_target=far_target,
        auc=auc_all_pairs(dist, actual_issame),
        tpr=[float(v) for v in tpr],
        fpr=[float(v) for v in fpr],
        thresholds=[float(t) for t in thresholds],
        n_pairs=int(actual_issame.size),
        n_same=int(actual_issame.sum()),
        n_diff=int((~actual_issame).sum()),
        auc_folds=auc_trapezoid(fpr, tpr),
        fold_rule=fold_rule or "given",
        fold_sizes=sizes,
    )


def l2_normalize(x: np.ndarray, axis: int = 1, eps: float = 1e-12) -> np.ndarray:
    """Divide rows by their L2 norm (``sklearn.preprocessing.normalize``)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def pair_distances(embeddings1: np.ndarray, embeddings2: np.ndarray) -> np.ndarray:
    """Squared L2 distance of matching rows: ``sum((e1 - e2) ** 2, axis=1)``."""
    diff = np.asarray(embeddings1, np.float64) - np.asarray(embeddings2, np.float64)
    return np.sum(np.square(diff), axis=1)


def evaluate(
    embeddings1: np.ndarray,
    embeddings2: np.ndarray,
    actual_issame: np.ndarray,
    nrof_folds: int = 10,
    far_target: float = 1e-3,
    normalize: bool = True,
    folds: np.ndarray | None = None,
    fold_rule: str | None = None,
) -> VerificationResult:
    """insightface's ``evaluate``: squared-L2 distance of (normalised) embeddings, 10-fold.

    Args:
        embeddings1, embeddings2: (P, D) embeddings of the first and second image of each pair
            (flip-summed by the caller when wanted).
        actual_issame: (P,) bool.
        normalize: L2-normalise the rows first (insightface normalises before evaluating).
        folds, fold_rule: see :func:`evaluate_distances`.
    """
    e1, e2 = np.asarray(embeddings1), np.asarray(embeddings2)
    if e1.shape != e2.shape or e1.ndim != 2:
        raise ValueError(f"embeddings must be matching (P, D) arrays, got {e1.shape} and {e2.shape}")
    if normalize:
        e1, e2 = l2_normalize(e1), l2_normalize(e2)
    return evaluate_distances(pair_distances(e1, e2), actual_issame, None, nrof_folds, far_target,
                              folds=folds, fold_rule=fold_rule)


def score_thresholds(scores: np.ndarray, n: int = 400) -> np.ndarray:
    """A threshold grid for similarity scores, in negated-score units (``dist = -score``).

    ``n - 2`` quantiles of the negated scores (so the grid is dense where the pairs are, whatever
    the score's range or tails) plus one value below the minimum and one above the maximum, so
    the "all different" and "all same" operating points are on the curve (like 0 and 4 for
    squared-L2 distances). Sorted, unique.
    """
    d = -np.asarray(scores, dtype=np.float64)
    lo, hi = float(d.min()), float(d.max())
    pad = max(hi - lo, 1e-6) * 1e-3
    q = np.quantile(d, np.linspace(0.0, 1.0, max(n - 2, 2)))
    return np.unique(np.concatenate([[lo - pad], q, [hi + pad]]))


def evaluate_scores(
    scores: np.ndarray,
    actual_issame: np.ndarray,
    nrof_folds: int = 10,
    far_target: float = 1e-3,
    n_thresholds: int = 400,
    folds: np.ndarray | None = None,
    fold_rule: str | None = None,
    what: str = "pair scores",
) -> VerificationResult:
    """The same 10-fold protocol for a similarity score (higher = more similar).

    Used for the mutual likelihood score, whose range is not bounded like squared L2. The
    thresholds in the result are in negated-score units (``dist = -score``).

    Raises:
        NonFiniteScores: (a ``ValueError``) a score is NaN or infinite.
    """
    scores = np.asarray(scores, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise NonFiniteScores(what, len(bad), len(scores), [int(i) for i in bad[:5]])
    return evaluate_distances(-scores, actual_issame, score_thresholds(scores, n_thresholds), nrof_folds, far_target,
                              val_thresholds=score_thresholds(scores, 10 * n_thresholds), folds=folds,
                              fold_rule=fold_rule, what=what)


# --------------------------------------------------------------------------------------------
# embeddings (step 1 of the protocol)
# --------------------------------------------------------------------------------------------
