"""Masks drawn online: ``maskkit train --online-masks [--mask-ratio r]`` on an unmasked shard set.

A set made with ``maskkit synth --ratio 0`` carries every face's 68 landmarks (``landmarks68`` in
aligned pixels, ``docs/FORMAT.md``), so the DataLoader workers can draw the masks themselves
with synth's renderer (:class:`maskkit.render.MaskRenderer`, the same templates, styles and
fit checks) instead of reading a stored masked copy. Every epoch draws new masks; nothing is
written to disk.

**The epoch plan** (:func:`plan_epoch`, computed in each rank's main process before the epoch's
loader starts; a pure function of ``(seed, epoch, the set)``):

* *Counts.* Identity ``i`` with ``n_i`` samples gets ``c_i = floor(r n_i)`` masks plus one
  more in some epochs (:func:`epoch_counts`): the fractional parts ``f_i = r n_i - floor(r n_i)``
  are laid end to end on a line and identity ``i`` takes its extra mask when one of the points
  ``u_e + k`` (``k = 0, 1, ...``) falls on its stretch, ``u_e = frac(phase(seed) + e x 0.618...)``
  (a golden-ratio sequence). So ``c_i`` is ``r n_i`` when that is whole, else its floor or its
  ceiling; over the epochs each identity's share converges to ``r`` (an identity with one image
  is masked in about half the epochs at ``r = 0.5``); and the epoch's total is ``ceil`` or
  ``floor`` of ``r N``: within one of ``r`` times the set's size.
* *Which faces.* The identity's samples in an order drawn from ``(seed, epoch, label)``; the
  first ``c_i`` that can take a mask get one. A face whose landmarks cannot carry a mask
  (:func:`maskkit.render.check_landmarks`: none stored, degenerate, outside the crop) is swapped
  for the next one of its identity; when the identity runs out it is a shortfall, counted per
  epoch as in ``synth``.
* *Styles.* Masked faces take the styles in turn, in class order, continuing from a running
  offset (its start drawn from ``(seed, epoch)``): each identity gets ``c // K`` of every style
  and its ``c % K`` leftovers continue where the previous identity stopped, synth's rule
  (``pipeline/synth/seeding.py``), so over the epoch the styles' counts differ by at most 1.

**The draw** (:meth:`OnlineMasks.__call__`, in the worker that decodes the sample, before the
crop and flip augmentation): the planned style, with the render parameters (template, colour,
fit jitter) drawn from a generator seeded by ``(run seed, epoch, sample key)``
(:func:`render_seed`). The same ``(seed, epoch, key)`` always draws the same mask, whatever the
worker, rank or order; the next epoch draws another. A planned face the renderer still cannot
fit (a folded warp under the drawn jitter) stays unmasked and is counted (``mask_failed``).

A set that already holds stored masked samples is refused (:class:`SetIndex`): masks would be
drawn on masks.
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from maskkit.training.errors import TrainError

#: ``(sqrt 5 - 1) / 2``: the step of the low-discrepancy sequence that picks the extra masks.
GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
#: How to make a set online masks can use (said when a set is refused).
UNMASKED_HINT = ("make an unmasked set with `maskkit synth --src FACES --out SHARDS --ratio 0` (add --aligned "
                 "for 112x112 crops; a .rec: export it with `maskkit export-rec --only plain` first)")


def _words(*parts: Any) -> list[int]:
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return [int.from_bytes(h[i:i + 4], "little") for i in range(0, 32, 4)]


def _rng(*parts: Any) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(_words(*parts)))


def render_seed(seed: int, epoch: int, key: str) -> int:
    """The 63-bit seed of a sample's online render generator in ``epoch``."""
    h = hashlib.sha256(f"{int(seed)}\x1fonline\x1f{int(epoch)}\x1f{key}".encode("utf-8")).digest()
    return int.from_bytes(h[:8], "little") >> 1


def epoch_counts(sizes: Sequence[int], ratio: float, seed: int, epoch: int) -> np.ndarray:
    """Masks per identity in ``epoch`` (see the module docstring): ``floor(r n_i)`` or its
    ceiling, converging to ``r n_i`` over the epochs, the total within one of ``r x sum(n_i)``.

    Args:
        sizes: samples per identity (class order).
        ratio: the share ``r`` to mask, 0..1.
        seed, epoch: the run's seed and the epoch.

    Returns:
        int64 array, one count per identity.
    """
    n = np.asarray(sizes, dtype=np.int64)
    exact = float(ratio) * n.astype(np.float64)
    base = np.floor(exact + 1e-9)
    frac = np.clip(exact - base, 0.0, 1.0)
    frac[frac < 1e-9] = 0.0
    ends = np.cumsum(frac)
    starts = ends - frac
    u = (_rng(seed, "online-phase").random() + epoch * GOLDEN) % 1.0
    extra = np.maximum(np.ceil(ends - u), 0) - np.maximum(np.ceil(starts - u), 0)
    return np.minimum(base + extra, n).astype(np.int64)


def check_unmasked(root: str | Path, manifest: dict) -> None:
    """Refuse a set whose manifest counts stored masked samples (one line saying how to make one).

    Raises:
        TrainError: ``num_masked`` > 0.
    """
    if int(manifest.get("num_masked") or 0) > 0:
        raise TrainError(f"--online-masks: {root} already holds {manifest['num_masked']} stored masked samples; "
                         f"{UNMASKED_HINT}")


@dataclass
class SetIndex:
    """What the plan needs of every sample, read once from the shards' JSON members.

    Attributes:
        keys: sample keys, sorted (bytes, for :func:`numpy.searchsorted` in the workers).
        labels: each key's label.
        fit: whether its stored landmarks can carry a mask (:func:`maskkit.render.check_landmarks`).
        unfit: why the others cannot, ``{reason: count}``.
        classes: the manifest's class names.
    """

    keys: np.ndarray
    labels: np.ndarray
    fit: np.ndarray
    unfit: dict[str, int]
    classes: list[str]
    members: list[np.ndarray] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        order = np.argsort(self.labels, kind="stable")  # key order inside each identity
        bounds = np.searchsorted(self.labels[order], np.arange(len(self.classes) + 1))
        self.members = [order[bounds[i]:bounds[i + 1]] for i in range(len(self.classes))]

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(m) for m in self.members], dtype=np.int64)

    @classmethod
    def read(cls, root: str | Path, urls: Sequence[str], classes: Sequence[str], manifest: dict,
             image_size: tuple[int, int]) -> "SetIndex":
        """Read the keys, labels and landmarks of every sample (JSON members only).

        Raises:
            TrainError: the set holds stored masked samples, no sample carries landmarks, or
                its crops are not ``image_size`` (one line each, saying how to make a usable set).
        """
        from maskkit.io.shards import iter_shard
        from maskkit.render import CannotFit, check_landmarks

        check_unmasked(root, manifest)
        stored = tuple(int(x) for x in manifest.get("image_size") or image_size)
        if stored != tuple(image_size):
            raise TrainError(f"--online-masks: {root} holds {stored[0]}x{stored[1]} crops and the run trains on "
                             f"{image_size[0]}x{image_size[1]}: the stored landmarks would not fit the resized faces")
        keys, labels, fit = [], [], []
        unfit: Counter = Counter()
        for url in urls:
            for s in iter_shard(url, members={"json"}):
                meta = s.get("json") or {}
                if meta.get("masked"):
                    raise TrainError(f"--online-masks: {root} holds stored masked samples (e.g. {s['key']} in "
                                     f"{Path(url).name}); {UNMASKED_HINT}")
                keys.append(s["key"])
                labels.append(int(meta.get("label", -1)))
                lm = meta.get("landmarks68")
                ok = lm is not None
                if not ok:
                    unfit["no_landmarks"] += 1
                else:
                    try:
                        check_landmarks(np.asarray(lm, dtype=np.float64), image_size)
                    except CannotFit as exc:
                        ok = False
                        unfit[exc.reason] += 1
                fit.append(ok)
        if keys and not any(fit):
            raise TrainError(f"--online-masks: no sample of {root} carries landmarks that can take a mask "
                             f"({dict(unfit)}); {UNMASKED_HINT}")
        k = np.array(keys, dtype=bytes)
        order = np.argsort(k, kind="stable")
        lab = np.array(labels, dtype=np.int64)[order]
        valid = (lab >= 0) & (lab < len(classes))  # a bad label is the loader's to report
        return cls(keys=k[order], labels=np.where(valid, lab, len(classes)), fit=np.array(fit, bool)[order] & valid,
                   unfit=dict(unfit), classes=list(classes))


@dataclass
class EpochPlan:
    """One epoch's masks: ``style[i]`` is the style index of sorted key ``i`` (-1: no mask)."""

    epoch: int
    style: np.ndarray
    planned: np.ndarray
    masked: np.ndarray
    styles: tuple[str, ...]

    @property
    def shortfall(self) -> np.ndarray:
        return self.planned - self.masked

    def summary(self, classes: Sequence[str], ratio: float) -> dict:
        """The epoch's ``online_masks`` record for ``log.jsonl``."""
        codes = self.style[self.style >= 0]
        short = {classes[i]: int(v) for i, v in enumerate(self.shortfall) if v > 0}
        return {"event": "online_masks", "epoch": self.epoch, "samples": int(len(self.style)), "ratio": ratio,
                "target": round(ratio * len(self.style), 6), "planned": int(self.planned.sum()),
                "masked": int(self.masked.sum()), "shortfall": int(self.shortfall.sum()),
                "shortfall_by_identity": short,
                "styles": {s: int((codes == k).sum()) for k, s in enumerate(self.styles)}}


def plan_epoch(index: SetIndex, ratio: float, seed: int, epoch: int, styles: Sequence[str]) -> EpochPlan:
    """Which samples wear which style in ``epoch`` (see the module docstring)."""
    sizes = index.sizes
    planned = epoch_counts(sizes, ratio, seed, epoch)
    style = np.full(len(index.keys), -1, dtype=np.int8)
    masked = np.zeros(len(sizes), dtype=np.int64)
    k = len(styles)
    offset = int(_rng(seed, "online-style", epoch).integers(k)) if k else 0
    for label, members in enumerate(index.members):
        c = int(planned[label])
        if c == 0 or k == 0:
            continue
        order = members[_rng(seed, "online-choose", epoch, label).permutation(len(members))]
        chosen = order[index.fit[order]][:c]  # a face that cannot take a mask: the next one takes its turn
        style[chosen] = (offset + np.arange(len(chosen))) % k
        offset = (offset + len(chosen)) % k
        masked[label] = len(chosen)
    return EpochPlan(epoch=int(epoch), style=style, planned=planned, masked=masked, styles=tuple(styles))


class OnlineMasks:
    """The masker a :class:`~maskkit.training.data.ShardStream` calls for every decoded face.

    Args:
        index: the set's :class:`SetIndex`.
        ratio: the share of each identity to mask per epoch.
        seed: the run's seed.
        styles: the styles to balance (default: all of :data:`maskkit.render.STYLES`).

    :meth:`set_epoch` (main process, before the epoch's workers start) computes the plan; the
    workers (forked) then call the masker. The renderer loads its templates once, in the
    process that builds the masker: forked workers share it.
    """

    def __init__(self, index: SetIndex, ratio: float, seed: int, styles: Sequence[str] | None = None):
        from maskkit.render import STYLES, MaskRenderer

        if not 0.0 <= ratio <= 1.0:
            raise TrainError(f"--mask-ratio must be in 0..1, got {ratio}")
        styles = tuple(styles or STYLES)
        bad = [s for s in styles if s not in STYLES]
        if bad or not styles:
            raise TrainError(f"mask styles must be some of {', '.join(STYLES)}, got {list(styles)}")
        self.index, self.ratio, self.seed, self.styles = index, float(ratio), int(seed), styles
        self.plan: EpochPlan | None = None
        self.renderer = MaskRenderer()

    def set_epoch(self, epoch: int) -> EpochPlan:
        if self.plan is None or self.plan.epoch != epoch:
            self.plan = plan_epoch(self.index, self.ratio, self.seed, epoch, self.styles)
        return self.plan

    def style_of(self, key: str) -> str | None:
        """The planned style of ``key`` this epoch (None: no mask)."""
        kb = key.encode("utf-8")
        i = int(np.searchsorted(self.index.keys, kb))
        if i >= len(self.index.keys) or self.index.keys[i] != kb:
            return None
        code = int(self.plan.style[i])
        return self.styles[code] if code >= 0 else None

    def __call__(self, img: np.ndarray, meta: dict, key: str) -> tuple[np.ndarray, bool, dict | None]:
        """``(image, masked, failure)`` for one decoded face (``failure``: a planned mask the
        renderer could not fit; the face stays as it is)."""
        from maskkit.render import CannotFit

        style = self.style_of(key)
        if style is None:
            return img, False, None
        rng = np.random.default_rng(render_seed(self.seed, self.plan.epoch, key))
        try:
            res = self.renderer.render(img, np.asarray(meta["landmarks68"], dtype=np.float64), style, rng)
        except CannotFit as exc:
            return img, False, {"key": key, "style": style, "reason": exc.reason, "detail": str(exc)[:200]}
        return res.image, True, None

    def describe(self) -> str:
        bad = sum(self.index.unfit.values())
        return (f"online masks: ratio {self.ratio:g} over {len(self.index.keys)} samples, {len(self.styles)} styles"
                + (f"; {bad} face(s) cannot take a mask ({', '.join(f'{k} {v}' for k, v in sorted(self.index.unfit.items()))})"
                   if bad else ""))


def read_index(shards: Any, image_size: tuple[int, int]) -> SetIndex:
    """:meth:`SetIndex.read` of a :class:`~maskkit.training.data.ShardSet`."""
    return SetIndex.read(shards.root, shards.urls, shards.classes, shards.manifest, image_size)

