"""Synthetic masks on evaluation faces, reproducibly: each image's mask is drawn from the run's
seed and the image's own key (:func:`image_rng`), never from its position.

:func:`apply_masks` reports every face it could not mask (the face is kept unmasked and goes
through the face branch).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class MaskOutcome:
    """Result of :func:`apply_masks`.

    Attributes:
        images: the images, masked where requested and possible (a new array).
        masked: (N,) bool, True where a mask was actually drawn (these use the masked branch).
        requested: (N,) bool, where a mask was asked for.
        styles: per image the mask style drawn, or None.
        failures: one ``{"index", "name", "reason", "detail"}`` per requested face left unmasked.
    """

    images: np.ndarray
    masked: np.ndarray
    requested: np.ndarray
    styles: list[str | None]
    failures: list[dict]

    @property
    def n_requested(self) -> int:
        return int(self.requested.sum())

    @property
    def n_masked(self) -> int:
        return int(self.masked.sum())


def image_rng(seed: int, key: int | str) -> np.random.Generator:
    """The generator of one image's synthetic mask (its style and every random draw).

    Args:
        seed: the run's mask seed.
        key: what identifies the image: an ``int`` -- its index in a ``.bin`` (or in an
            array) -- seeds ``default_rng([seed, key])``; a ``str`` -- its file name -- seeds
            from ``sha256("<seed>\\x1f" + os.fsencode(key))`` (eight 32-bit words; the UTF-8
            bytes of a valid name, the file system's bytes of one that is not).

    The same ``(seed, key)`` always draws the same mask, whatever the batching, the order of
    the images or the other images in the set.
    """
    if isinstance(key, (int, np.integer)):
        return np.random.default_rng([int(seed), int(key)])
    import hashlib

    from maskkit.util.names import name_bytes

    h = hashlib.sha256(str(int(seed)).encode("ascii") + b"\x1f" + name_bytes(key)).digest()
    return np.random.default_rng([int.from_bytes(h[i:i + 4], "little") for i in range(0, 32, 4)])


def aligned_landmarks(rgb: np.ndarray) -> np.ndarray:
    """68 landmarks on an already aligned ArcFace crop: dlib's predictor in the box that
    ``maskkit.face.detect`` uses for pre-aligned crops (``landmarks_in_box(rgb, None)``)."""
    from maskkit.face.landmarks import landmarks_in_box

    return np.asarray(landmarks_in_box(rgb, None), np.float32)


def apply_masks(
    images: np.ndarray,
    requested,
    seed: int = 0,
    style: str = "random",
    landmarks68: list | None = None,
    names: list[str] | None = None,
    renderer=None,
    progress: bool = True,
    keys: list | None = None,
) -> MaskOutcome:
    """Draw a synthetic mask on the requested faces with maskkit's renderer, reproducibly.

    Args:
        images: (N, H, W, 3) uint8 aligned faces.
        requested: (N,) bool, which faces to mask.
        seed: run seed; image ``i`` renders with :func:`image_rng` ``(seed, keys[i])``
            (``(seed, i)`` without ``keys``), so the same call reproduces the same masks
            whatever the batching.
        style: one of ``maskkit.render.STYLES`` or ``"random"`` (the renderer draws the style).
        landmarks68: per image aligned landmarks when known (from the aligner); None entries are
            found on the crop with :func:`aligned_landmarks`.
        renderer: a ``MaskRenderer`` (one is made if None; templates load once).
        keys: per image, what its mask is drawn from (:attr:`PairSet.mask_keys`,
            :attr:`ImageSet.mask_keys`: a ``.bin`` index or the file name); with keys, an image
            gets the same mask wherever it sits in ``images`` and however often it appears.

    Raises:
        ValueError: flags, keys and images differ in number, or an unknown style.

    A face that cannot be masked (no landmarks, or the renderer raises ``CannotFit``) is kept
    unmasked, reported in ``failures``, and goes through the face branch.
    """
    from maskkit.render import STYLES, CannotFit, MaskRenderer
    from maskkit.util.progress import track

    requested = np.asarray(requested, dtype=bool)
    if len(requested) != len(images):
        raise ValueError(f"{len(requested)} mask flags for {len(images)} images")
    if keys is not None and len(keys) != len(images):
        raise ValueError(f"{len(keys)} mask keys for {len(images)} images")
    if style != "random" and style not in STYLES:
        raise ValueError(f"unknown mask style {style!r}; expected 'random' or one of {STYLES}")
    renderer = renderer or MaskRenderer()
    out = np.array(images, copy=True)
    masked = np.zeros(len(images), bool)
    styles: list[str | None] = [None] * len(images)
    failures = []
    idx = np.flatnonzero(requested)
    for i in track(idx, desc="masking", unit="face", disable=not progress or len(idx) == 0):
        rng = image_rng(seed, i if keys is None else keys[i])
        name = names[i] if names else str(i)
        lm = landmarks68[i] if landmarks68 is not None and landmarks68[i] is not None else None
        if lm is None:
            try:
                lm = aligned_landmarks(out[i])
            except Exception as exc:  # noqa: BLE001 - no landmarks: kept unmasked, reported
                failures.append({"index": int(i), "name": name, "reason": "no_landmarks",
                                 "detail": f"{type(exc).__name__}: {exc}"})
                continue
        try:
            res = renderer.render(out[i], lm, style, rng)
        except CannotFit as exc:  # the renderer's only failure for bad faces; anything else is a bug
            failures.append({"index": int(i), "name": name, "reason": "cannot_fit", "detail": str(exc)})
            continue
        out[i] = res.image
        masked[i] = True
        styles[i] = str(res.params.get("style", style))
    if failures:
        log.warning("%d of %d faces could not be masked; kept unmasked (face branch)", len(failures), len(idx))
    return MaskOutcome(out, masked, requested, styles, failures)


def mask_side_flags(n_images: int, side: str) -> np.ndarray:
    """Which images of an interleaved pair list to mask: ``none``, ``one`` (the second image of
    every pair as written, the M-LFW protocol) or ``both``.

    The rule looks at each pair alone (its second image), never at the pair's position, so
    moving a pair's line in the file changes neither which of its images is masked nor (with
    :attr:`PairSet.mask_keys`) the mask drawn; swapping the two names within a line does."""
    flags = np.zeros(n_images, bool)
    if side == "one":
        flags[1::2] = True
    elif side == "both":
        flags[:] = True
    elif side != "none":
        raise ValueError(f"mask side must be none|one|both, got {side!r}")
    return flags
