"""Verification folds: which held-out fold each pair belongs to (insightface protocol, step 4).

Folds are made from the pairs' order *in the source file*, before any pair is dropped (a pair
whose image fails to load keeps every later pair in its fold). When
every contiguous fold holds both same and different pairs -- the layout of insightface's
``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin`` and of LFW's ``pairs.txt`` (``10 300`` header: 10
blocks of 300 same + 300 different pairs) -- the folds are insightface's unshuffled contiguous
``KFold`` (rule ``"kfold"``). Otherwise (e.g. a file with all same pairs first) contiguous folds
would hold a single class and the figures would be meaningless (43% accuracy and AUC 0.17 on a
sorted file whose interleaved order gives 65% / 0.69), so the folds are stratified by a fixed
rule (``"stratified"``): the same pairs, in file order, are cut into 10 contiguous runs sized as
``KFold`` sizes them (the first ``n_same % 10`` runs one pair longer), the different pairs
likewise, and fold ``i`` is run ``i`` of each. No randomness: the same file always gives the same
folds. Stratifying needs at least 10 pairs of each class; with fewer, insightface's folds are
kept. The rule used is in ``VerificationResult.fold_rule`` (and the report's ``metrics.json``).

``kfold_splits`` is sklearn's ``KFold(shuffle=False)`` layout, written here so the project does
not depend on scikit-learn.
"""
from __future__ import annotations

import numpy as np


def kfold_splits(n: int, n_folds: int = 10) -> list[tuple[np.ndarray, np.ndarray]]:
    """Contiguous, unshuffled K-fold splits, identical to ``sklearn.model_selection.KFold``.

    Args:
        n: number of samples (pairs).
        n_folds: number of folds; the first ``n % n_folds`` folds hold ``n // n_folds + 1``
            samples, the others ``n // n_folds``.

    Returns:
        A list of ``(train_indices, test_indices)`` int arrays, one per fold.

    Raises:
        ValueError: if ``n_folds < 2`` or ``n < n_folds``.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if n < n_folds:
        raise ValueError(f"cannot split {n} pairs into {n_folds} folds")
    sizes = np.full(n_folds, n // n_folds, dtype=int)
    sizes[: n % n_folds] += 1
    idx = np.arange(n)
    out, start = [], 0
    for s in sizes:
        test = idx[start : start + s]
        train = np.concatenate([idx[:start], idx[start + s :]])
        out.append((train, test))
        start += s
    return out


FOLD_RULES = ("kfold", "stratified")


def _run_sizes(n: int, n_folds: int) -> np.ndarray:
    sizes = np.full(n_folds, n // n_folds, dtype=int)
    sizes[: n % n_folds] += 1
    return sizes


def assign_folds(issame: np.ndarray, n_folds: int = 10) -> tuple[np.ndarray, str]:
    """The fold of every pair, from the pairs' order (see the module docstring, "Folds").

    Args:
        issame: (P,) bool, every pair the source lists, in its order (including pairs that are
            dropped later because an image failed to load).
        n_folds: number of folds.

    Returns:
        ``(folds, rule)``: (P,) int fold index per pair, and ``"kfold"`` (insightface's contiguous
        unshuffled folds: every one holds both classes) or ``"stratified"`` (contiguous runs of
        each class, run ``i`` of the same pairs and run ``i`` of the different pairs form fold
        ``i``). A set with fewer than ``n_folds`` pairs of a class keeps ``"kfold"``.

    Raises:
        ValueError: fewer pairs than folds.
    """
    issame = np.asarray(issame, dtype=bool)
    n = len(issame)
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if n < n_folds:
        raise ValueError(f"cannot split {n} pairs into {n_folds} folds")
    folds = np.repeat(np.arange(n_folds), _run_sizes(n, n_folds))
    both = all(issame[folds == f].any() and (~issame[folds == f]).any() for f in range(n_folds))
    if both or min(int(issame.sum()), int((~issame).sum())) < n_folds:
        return folds, "kfold"  # already stratified, or too few pairs of a class to stratify
    folds = np.empty(n, dtype=int)
    for cls in (True, False):
        idx = np.flatnonzero(issame == cls)
        folds[idx] = np.repeat(np.arange(n_folds), _run_sizes(len(idx), n_folds))
    return folds, "stratified"


def splits_from_folds(n: int, n_folds: int, folds: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, test)`` index arrays: contiguous KFold when ``folds`` is None, else one split per
    fold index present in ``folds`` (a fold emptied by dropped pairs is left out)."""
    if folds is None:
        return kfold_splits(n, n_folds)
    folds = np.asarray(folds)
    if folds.shape != (n,):
        raise ValueError(f"{folds.shape} fold indices for {n} pairs")
    return [(np.flatnonzero(folds != f), np.flatnonzero(folds == f)) for f in np.unique(folds)]
