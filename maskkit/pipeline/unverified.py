"""What the ``--aligned`` crop check decided, recorded per output and counted per run (issue 12 §5).

``maskkit.face.crop_check.check_aligned_crop`` keeps a crop in which a face is found but whose
points cannot be checked against the ArcFace template (``how="unverified"``): about 100 of the
2,223 real celeb-aligned crops (profiles, occlusions) have no stable fit, and they must be kept.
A crop shifted or rotated off the template can land there too (a tester's 20-25 px shifted and
35-degree rotated celeb crops: 4 of 30 became masked training samples), so ``align``, ``mask``
and ``synth`` with ``--aligned``:

* record the decision with each output: :func:`crop_record` (``crop_check`` in a shard sample's
  JSON, in a ``manifest.jsonl`` row);
* count the kept-unverified crops in the summary and the manifest, list them one line each in
  :data:`UNVERIFIED_FILE` (written like ``failures.jsonl``), and print one hint
  (:func:`unverified_hint`) so that a user can look at them before training;
* reject, as ``not_aligned``, an unverified crop whose face is turned in-plane
  (:func:`crop_failure`, :data:`UNVERIFIED_MAX_TILT`). An aligned crop is upright (the
  alignment removes the roll), profiles included, so the eye-to-mouth axis of the (unstable)
  fit in the aligned box stays near vertical.

Measured (``benchmarks/unverified_crops.py``, every celeb-aligned crop): the check keeps 99 of
the 2,223 unverified; their axis is at most 15.9 degrees off vertical, none is rejected. Every
10th celeb crop (223) shifted by 20-25 px (8 directions) or rotated by +-35 degrees: 404 of the
2,230 copies are kept unverified; the tilt rule rejects 87 of the 134 rotated ones (65%) and 6 of
the 270 shifted ones. A horizontal shift cannot be told from a profile this way (a profile's
detected box and fit sit 30-40 px off centre too); a vertical one can (the 5 points of the
detected face's fit: real crops -14.9..+9.1 px from the template's centre, 65 of the 130
vertically shifted copies beyond 20 px) but needs the detection ``check_aligned_crop`` already
made and does not return: left to the check itself.
"""
from __future__ import annotations

import numpy as np

__all__ = ["UNVERIFIED_FILE", "UNVERIFIED", "UNVERIFIED_MAX_TILT", "crop_record", "crop_failure", "axis_tilt",
           "is_unverified", "unverified_hint", "summary_value"]

#: The list of kept-unverified crops an ``--aligned`` run writes into ``--out`` (one JSON line
#: each: the input's ``src`` and the output it became); absent when there are none.
UNVERIFIED_FILE = "unverified.jsonl"

#: ``CropCheck.how`` of a crop kept without a checked fit.
UNVERIFIED = "unverified"


#: Largest in-plane tilt (degrees) of an unverified crop's eye-to-mouth axis from vertical (the
#: fit in the aligned box): celeb-aligned's 99 unverified crops reach 15.9 degrees; 35-degree
#: rotated crops kept unverified are at 14-45 (median 33).
UNVERIFIED_MAX_TILT = 25.0


def axis_tilt(landmarks68) -> float:
    """Angle (degrees, image x to the right, y down) of the eye-to-mouth axis from vertical: the
    midpoint of the 5-point eyes to the midpoint of the mouth corners. 0 for an upright face,
    positive when the mouth lies right of the eyes, +-180 upside down; ``nan`` for points that
    are not finite. ``landmarks68``: ``(68, 2)`` pixels (iBUG order)."""
    from maskkit.face.align import five_points

    p = five_points(np.asarray(landmarks68, np.float64))
    ax = (p[3] + p[4]) / 2 - (p[0] + p[1]) / 2
    return float(np.degrees(np.arctan2(ax[0], ax[1]))) if np.all(np.isfinite(ax)) else float("nan")


def crop_failure(check, max_tilt: float = UNVERIFIED_MAX_TILT) -> tuple[str, str] | None:
    """Why a checked ``--aligned`` crop (a ``maskkit.face.crop_check.CropCheck``) is not used, or ``None``.

    The check's own failure (``no_face``, ``not_aligned``); or, for a crop kept ``unverified``
    whose fitted face is turned more than ``max_tilt`` degrees in-plane (:func:`axis_tilt`),
    ``not_aligned``.

    Returns:
        ``(reason, detail)`` or ``None`` when the crop is kept.
    """
    if not check.ok:
        return check.reason or "not_aligned", check.detail
    if check.how != UNVERIFIED or check.landmarks68 is None:
        return None
    tilt = axis_tilt(check.landmarks68)
    if not np.isfinite(tilt) or abs(tilt) <= max_tilt:  # rejected only on clear evidence
        return None
    return "not_aligned", (f"face turned {tilt:+.0f} deg in-plane (its eye-to-mouth axis; an aligned crop is upright, "
                           f"limit {max_tilt:g} deg) and its points cannot be checked against the template")


def crop_record(check) -> dict:
    """The ``crop_check`` record of a kept crop (a ``maskkit.face.crop_check.CropCheck`` with ``ok``).

    Returns:
        ``{"how", "rms", "spread"}``: ``how`` is ``template`` (a stable fit in the aligned box on
        the template), ``detected`` (a detected face's checked fit on the template) or
        ``unverified`` (a face is there, its points could not be checked); ``rms`` is the RMS
        distance in pixels of a 112-wide crop of the 5 points from the ArcFace template, of the
        checked fit (for ``unverified``: of the unstable fit in the aligned box, so only a
        pointer), ``None`` when not fitted; ``spread`` the eye disagreement of the refits rotated
        by ``+-maskkit.face.crop_check.CROP_DELTA`` degrees (fraction of the eye distance).
    """
    return {"how": check.how,
            "rms": None if check.rms is None else round(float(check.rms), 2),
            "spread": None if check.spread is None else round(float(check.spread), 3)}


def is_unverified(record: dict | None) -> bool:
    """Whether a ``crop_check`` record (:func:`crop_record`) is a kept-unverified crop."""
    return bool(record) and record.get("how") == UNVERIFIED


def summary_value(n: int) -> str:
    """The summary table's ``kept unverified`` cell."""
    return f"{int(n):,} (a face is there, its points could not be checked)"


def unverified_hint(n: int, files: int, out, masked: int | None = None) -> str | None:
    """The one line printed after the summary when an ``--aligned`` run kept unverified crops.

    Args:
        n: crops kept unverified.
        files: inputs of the run.
        out: the output folder (where :data:`UNVERIFIED_FILE` lies).
        masked: how many of them got a mask (``synth``/``mask``), or ``None``.

    Returns:
        The hint, or ``None`` when ``n`` is 0.
    """
    if n <= 0:
        return None
    m = f" ({masked:,} masked)" if masked else ""
    return (f"{n:,} of {files:,} crops kept unverified{m}: a face is there, but its points could not be checked "
            f"against the ArcFace template (a profile or an occlusion, or a crop that is not aligned); they are "
            f"listed in {out}/{UNVERIFIED_FILE}: look at them before training (e.g. copy them into a folder and run "
            f"`maskkit preview FOLDER --aligned`)")
