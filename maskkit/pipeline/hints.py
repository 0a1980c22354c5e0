"""The forgotten ``--aligned`` hint of ``align``, ``mask`` and ``synth`` (issue 12 §5).

Aligning an already aligned ArcFace crop crops it a second time: the 68 points fitted in the
crop give a similarity that rescales and shifts it, and the crop is resampled (measured on 56
celeb-aligned crops through ``maskkit align``: scale 0.944-1.064, the centre moved 0.2-4.0 px,
median 0.9), and some faces that fill the frame are not found at all (4 of 60).
Without ``--aligned`` each command therefore gathers, per input, what says "this is an aligned
crop" and prints one hint in its summary when most inputs look like one:

* :func:`crop_evidence` -- per input: the size of an aligned crop
  (:func:`maskkit.face.crop_check.crop_sized`), exactly an ArcFace crop size
  (:data:`ALIGNED_SIZES`), no face found in such an input, and a found face whose 5 points
  already sit on the ArcFace template *in the input's own frame* (:func:`on_template`).
* :func:`forgotten_aligned_hint` -- the run's decision over the summed counts:
  :func:`maskkit.face.crop_check.aligned_hint` (most inputs crop-sized and some without a face)
  first; otherwise at least half of the inputs have a face on the template, also when every
  face was found.

Measured (HOG, ``--faces largest``): 60 celeb-aligned crops (3 identities x 20, 112x112): 56
faces found, their 5 points 1.6-7.8 px RMS from the template (median 4.0); 20 lfw-johns 150x150
loose crops: 15.7-17.4 px; the same resized to 112x112: 15.9-17.7 px; their central 112x112
cuts: 19.5-21.0 px. :data:`maskkit.face.crop_check.CROP_MAX_RMS` (11 px, the aligned-crop check's
own limit) separates the two with room on both sides.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = ["ALIGNED_SIZES", "EVIDENCE_KEYS", "on_template", "crop_evidence", "forgotten_aligned_hint"]

#: ``(H, W)`` of insightface's aligned crops: 112x112 (ArcFace) and 112x96 (the older template).
ALIGNED_SIZES = ((112, 112), (112, 96))

#: The per-input counts :func:`crop_evidence` returns (summed over a run, plus ``files``).
EVIDENCE_KEYS = ("crop_sized", "crop_sized_no_face", "on_template", "aligned_size")


def _template_in_frame(shape: Sequence[int]) -> np.ndarray | None:
    """The ArcFace 5 points in the pixels of an image of ``shape`` taken as an aligned crop: the
    112x112 template (or the 112x96 one for that aspect) scaled to the image; ``None`` when
    the aspect is neither (within :data:`maskkit.face.crop_check.CROP_ASPECT_TOL`)."""
    from maskkit.face.align import arcface_template
    from maskkit.face.crop_check import CROP_ASPECT_TOL

    h, w = int(shape[0]), int(shape[1])
    if h <= 0 or w <= 0:
        return None
    for th, tw in ALIGNED_SIZES:
        if abs((h / w) / (th / tw) - 1.0) <= CROP_ASPECT_TOL:
            return np.asarray(arcface_template((th, tw)), np.float64) * np.array([w / tw, h / th])
    return None


def on_template(shape: Sequence[int], lm68: np.ndarray, max_rms: float | None = None) -> bool:
    """Whether a face's 5 points already sit on the ArcFace template of the image it was found in.

    Args:
        shape: the input image's shape ``(H, W[, C])``.
        lm68: ``(68, 2)`` landmarks in that image's pixels.
        max_rms: largest RMS distance of the 5 points from the template, in pixels of a
            112-high crop (default :data:`maskkit.face.crop_check.CROP_MAX_RMS`, 11 px).

    Returns:
        ``True`` when the image has an aligned crop's aspect and the face is within ``max_rms``.
    """
    from maskkit.face.align import five_points
    from maskkit.face.crop_check import CROP_MAX_RMS

    t = _template_in_frame(shape)
    lm = np.asarray(lm68, np.float64) if lm68 is not None else None
    if t is None or lm is None or lm.shape != (68, 2) or not np.all(np.isfinite(lm)):
        return False
    rms = float(np.sqrt(((five_points(lm) - t) ** 2).sum(1).mean())) * 112.0 / int(shape[0])
    return rms <= (CROP_MAX_RMS if max_rms is None else max_rms)


def crop_evidence(shape: Sequence[int], faces_lm68: Sequence[np.ndarray], no_face: bool) -> dict[str, int]:
    """What one decoded input says about being an aligned crop (counts of 0 or 1).

    Args:
        shape: the decoded image's shape.
        faces_lm68: landmarks (image pixels) of the faces the command kept.
        no_face: the input failed ``no_face``.

    Returns:
        ``{key: 0|1}`` for :data:`EVIDENCE_KEYS`.
    """
    from maskkit.face.crop_check import crop_sized

    small = bool(crop_sized(shape))
    return {"crop_sized": int(small), "crop_sized_no_face": int(small and no_face),
            "on_template": int(any(on_template(shape, lm) for lm in faces_lm68)),
            "aligned_size": int(tuple(int(x) for x in shape[:2]) in ALIGNED_SIZES)}


def forgotten_aligned_hint(counts: Mapping[str, int]) -> str | None:
    """The hint for a run without ``--aligned`` whose inputs look like aligned crops, or ``None``.

    Args:
        counts: ``files`` (every input, read or not) and the sums of :func:`crop_evidence`.

    Returns:
        :func:`maskkit.face.crop_check.aligned_hint` when it speaks (faces missed in crop-sized
        inputs); else, when at least half of the inputs (and one or more) have a face on the
        template, a hint saying so; else ``None``.
    """
    from maskkit.face.crop_check import aligned_hint

    files = int(counts.get("files", 0))
    hint = aligned_hint(files, int(counts.get("crop_sized", 0)), int(counts.get("crop_sized_no_face", 0)))
    if hint:
        return hint
    on = int(counts.get("on_template", 0))
    if files <= 0 or on < max(1, (files + 1) // 2):
        return None
    sized = int(counts.get("aligned_size", 0))
    sizes = " or ".join(f"{h}x{w}" for h, w in ALIGNED_SIZES)
    size_note = f", and {sized:,} are exactly {sizes} (HxW), an ArcFace crop's size" if sized else ""
    return (f"{on:,} of {files:,} inputs hold a face that already sits on the ArcFace template{size_note}: "
            "these look like aligned crops, and aligning them again re-crops and resamples each one (shifted and "
            "rescaled by the landmark fit): add --aligned (the crops are then checked against the template and "
            "used as they are)")

