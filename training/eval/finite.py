"""Entries whose scores are not finite: left out of the figures, counted and named.

A diverged or broken checkpoint can give NaN or infinite μ for some images, or for all of them.
Every score that involves such an image -- the squared-L2 distance (cosine) of a pair, a probe's
similarity to a gallery template -- is then not finite, and a sort or a threshold would misplace
it without a word (NaN compares false). ``maskkit eval`` deals with it in one way for verification
(a pairs file or a ``.bin``) and for identification (:mod:`maskkit.training.eval.report`):

1. :func:`finite_rows` finds the images whose μ is not finite; the entries that use one of them
   (a pair, a gallery image, a probe) are the ones whose scores are not finite;
2. those entries are left out of the figures and every other entry stays where it was: a pair
   keeps the fold of its position in the source (:meth:`PairSet.folds
   <maskkit.training.eval.evalsets.sets.PairSet.folds>`), as a pair whose image failed to load does;
3. they are counted and named (:class:`LeftOut`): ``counts.non_finite_<kind>`` and
   ``failures.non_finite`` in ``metrics.json``, one note (the table's caption and the report's
   ``notes``) and one warning line;
4. when too few finite entries remain for the protocol (:data:`MIN_PAIRS` pairs for the 10 folds;
   one gallery image and one probe), :class:`NotScorable` carries what can still be written
   (counts, the reason, the σ and ‖μ‖ statistics); ``run_eval`` writes it and the command exits 1
   with a one-line error.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Fewest pairs the 10-fold verification protocol is run on (one per fold).
MIN_PAIRS = 10
#: Entries named in the note (all of them are listed in ``metrics.json``).
NAMED_IN_NOTE = 5


def one_sided(issame) -> str | None:
    """Why a pair set holds no verification figure, or None: every pair is a same-identity pair,
    or every pair a different-identity pair. Accuracy at a threshold, AUC, TAR@FAR and EER all
    weigh genuine pairs against impostor pairs; with one kind alone a threshold "classifies"
    everything right (accuracy 100 or a fold-chosen value) and the ROC does not exist.

    Args:
        issame: (N,) bool, one per pair (True: same identity).
    """
    s = np.asarray(issame, bool)
    n_same = int(s.sum())
    if n_same and n_same < len(s):
        return None
    kind, other = ("same-identity", "different-identity") if n_same else ("different-identity", "same-identity")
    return (f"all {len(s):,} usable pairs are {kind} pairs and none is a {other} pair: no verification figure "
            "(accuracy, AUC, TAR@FAR) exists without both kinds; use a set that holds both")


def finite_rows(x: np.ndarray) -> np.ndarray:
    """(N,) bool: rows of ``x`` (N, ...) that hold no NaN or infinity."""
    x = np.asarray(x, np.float64)
    return np.isfinite(x.reshape(len(x), -1)).all(axis=1)


@dataclass
class LeftOut:
    """Entries left out of the figures because their scores are not finite.

    Attributes:
        kind: ``"pairs"``, ``"gallery images"`` or ``"probes"`` (``counts.non_finite_<kind>``
            with spaces as ``_``).
        total: entries there were before leaving these out.
        records: one dict per entry left out: ``{"<position key>": int, <names>...,
            "reason": "non_finite_score"}``; a pair's position is its index in the source's list
            of pairs (``pair``), an image's its index in the loaded gallery / probe set.
    """

    kind: str
    total: int
    records: list[dict] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.records)

    @property
    def count_key(self) -> str:
        return "non_finite_" + self.kind.replace(" ", "_")

    def note(self) -> str:
        """One line: how many, why, and the first :data:`NAMED_IN_NOTE` by name (:func:`joint_note`)."""
        return joint_note([self]) or ""


def _label(rec: dict) -> str:
    if "pair" in rec:
        return f"pair {rec['pair']} ({rec['a']} | {rec['b']})"
    return str(rec["path"])


def left_out_pairs(bad: np.ndarray, pair_index: np.ndarray, names: list[str]) -> LeftOut:
    """The pairs flagged in ``bad`` as a :class:`LeftOut`.

    Args:
        bad: (P,) bool over the loaded pairs, True where the pair's score is not finite.
        pair_index: (P,) position of each loaded pair in the source's list.
        names: 2P image names, pair ``i`` is ``names[2i]``, ``names[2i+1]``.
    """
    recs = [{"pair": int(pair_index[p]), "a": names[2 * p], "b": names[2 * p + 1], "reason": "non_finite_score"}
            for p in np.flatnonzero(bad)]
    return LeftOut("pairs", len(bad), recs)


def left_out_images(kind: str, bad: np.ndarray, paths: list[str], identities: list[str]) -> LeftOut:
    """The images flagged in ``bad`` (gallery images or probes) as a :class:`LeftOut`."""
    recs = [{"index": int(i), "path": paths[i], "identity": identities[i], "reason": "non_finite_score"}
            for i in np.flatnonzero(bad)]
    return LeftOut(kind, len(bad), recs)


class NotScorable(ValueError):
    """Too few entries with finite scores remain for the protocol.

    Attributes:
        metrics: what can still be reported (counts, the reason in ``error``, the σ and ‖μ‖
            statistics, the entries left out); the figures are None.
        sigma_norm, magnitude, masked: per embedded image, for the branch histograms
            (``sigma_norm`` None for a model without σ).
    """

    def __init__(self, message: str, metrics: dict, sigma_norm, magnitude, masked) -> None:
        super().__init__(message)
        self.metrics, self.sigma_norm, self.magnitude, self.masked = metrics, sigma_norm, magnitude, masked


def take_embeddings(emb, keep):
    """The rows of an :class:`~maskkit.training.eval.verification.Embeddings` where ``keep`` (bool) is True."""
    from maskkit.training.eval.embeddings import Embeddings

    k = np.asarray(keep, dtype=bool)
    return Embeddings(emb.mu[k], emb.magnitude[k], None if emb.sigma is None else emb.sigma[k],
                      None if emb.sigma_unit is None else emb.sigma_unit[k], emb.masked[k])


def joint_note(parts: list[LeftOut]) -> str | None:
    """One line for every :class:`LeftOut` that is not empty: how many of each, why, and the first
    :data:`NAMED_IN_NOTE` of each by name (all of them are in ``metrics.json``); None when all are empty."""
    parts = [p for p in parts if p.count]
    if not parts:
        return None
    head = " and ".join(f"{p.count} of {p.total} {p.kind}" for p in parts)
    named = "; ".join(_label(r) for p in parts for r in p.records[:NAMED_IN_NOTE])
    more = sum(max(0, p.count - NAMED_IN_NOTE) for p in parts)
    return (f"{head} left out of the figures: their scores are not finite (the model's μ is NaN or inf for an "
            f"image: a diverged or broken checkpoint?): {named}" + (f"; {more} more in metrics.json" if more else ""))
