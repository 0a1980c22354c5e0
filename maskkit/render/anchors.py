"""Landmarks -> mask anchors: the fit of a drawn template to one face's 68 iBUG landmarks.

The templates in :mod:`maskkit.masks` are drawn in a canonical frontal frame; each comes with
*anchors*, points that are functions of the 68 landmarks (:func:`anchor_points`), evaluated once
on the canonical mean face for the template and once on the target face at render time. A fixed
triangulation of the anchors turns the pair into a piecewise-affine warp that follows the jaw
contour, the nose and the mouth, so a turned head compresses the far side continuously.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import numpy as np

__all__ = ["CannotFit", "DEFAULT_FIT", "FIT_JITTER", "N_BOUNDARY", "N_INTERIOR", "N_ANCHORS", "check_landmarks",
           "anchor_points", "yaw_estimate"]

#: Default (canonical) fit parameters; templates are drawn with these, faces get jittered ones.
DEFAULT_FIT: Dict[str, float] = {"nose": 0.42, "chin": 0.06, "inset": 0.02, "eye_margin": 0.28}

#: Jitter ranges of the fit parameters (uniform), recorded in ``params["offsets"]``.
FIT_JITTER: Dict[str, Tuple[float, float]] = {
    "nose": (0.32, 0.55),  # how high on the nose bridge: fraction of the way from lm27 to lm30
    "chin": (0.03, 0.11),  # how far below the chin, in units of |lm8 - lm27|
    "inset": (0.0, 0.04),  # how far inside the jaw line the sides sit
    "eye_margin": (0.25, 0.34),  # gap between the lower eyelid and the top edge, in |lm30-lm27|
}

#: Number of boundary / interior anchors (ring anchors mirror the boundary).
N_BOUNDARY = 20
N_INTERIOR = 10
N_ANCHORS = 2 * N_BOUNDARY + N_INTERIOR

# Ring distances (in units of |lm8 - lm27|) outside each boundary anchor: small at the top
# (between mask and eyes), wide at the sides (ear loops, filter cartridges), medium at the chin.
_RING = np.array(
    [0.05, 0.05, 0.05, 0.24]  # B, UI_R, UO_R, ST_R
    + [0.26, 0.24, 0.20, 0.17, 0.14, 0.12, 0.11, 0.12, 0.14, 0.17, 0.20, 0.24, 0.26]  # J14..J2
    + [0.24, 0.05, 0.05],  # ST_L, UO_L, UI_L
    dtype=np.float64,
)
# Which side each boundary anchor belongs to (-1 image-left half, +1 image-right, 0 centre).
_SIDE = np.array([0, 1, 1, 1] + [1] * 6 + [0] + [-1] * 6 + [-1, -1, -1], dtype=np.float64)


class CannotFit(ValueError):
    """The landmarks cannot carry a mask (degenerate, outside the image, ...).

    Attributes:
        reason: short token for failure logs (``nan_landmarks``, ``collinear_landmarks``,
            ``jaw_misses_lip_line``, ``face_outside_image``, ``face_too_small``,
            ``folded_warp``, ``bad_input``).
        detail: human-readable explanation.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"cannot fit a mask: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason
        self.detail = detail


def check_landmarks(lm: np.ndarray, shape: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Validate 68 landmarks for mask fitting; return them as float64 (68, 2).

    Args:
        lm: (68, 2) landmarks in pixels (iBUG order, 0-based).
        shape: optional image (H, W); when given, the nose, eyes and mouth must lie inside it.

    Raises:
        CannotFit: with reason ``bad_input``, ``nan_landmarks``, ``collinear_landmarks``,
            ``face_too_small``, ``jaw_misses_lip_line`` or ``face_outside_image``.
    """
    try:
        p = np.asarray(lm, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CannotFit("bad_input", f"landmarks not numeric: {exc}") from None
    if p.shape != (68, 2):
        raise CannotFit("bad_input", f"landmarks must be (68, 2), got {p.shape}")
    if not np.isfinite(p).all():
        raise CannotFit("nan_landmarks", "landmarks contain NaN or inf")
    c = p - p.mean(0)
    sv = np.linalg.svd(c, compute_uv=False)
    if sv[0] < 1e-6:
        raise CannotFit("collinear_landmarks", "all landmarks coincide")
    if sv[1] / sv[0] < 0.08:
        raise CannotFit("collinear_landmarks", f"landmarks nearly collinear (spread ratio {sv[1] / sv[0]:.3f})")
    height = np.linalg.norm(p[8] - p[27])
    if height < 8.0:
        raise CannotFit("face_too_small", f"nose-bridge-to-chin distance {height:.1f}px < 8px")
    # The jaw line must cross the lip line on both sides: the line through the mouth corners
    # must hit the jaw polyline left of the mouth and right of it (MaskTheFace's IndexError).
    a, b = p[48], p[54]
    d = b - a
    nd = np.linalg.norm(d)
    if nd < 1e-6:
        raise CannotFit("collinear_landmarks", "mouth corners coincide")
    d = d / nd
    n = np.array([-d[1], d[0]])
    jaw = p[0:17]
    s = (jaw - a) @ n  # signed distance of jaw points from the lip line
    t = (jaw - a) @ d  # position along the lip line
    crossings = []
    for i in range(16):
        if s[i] == 0 or s[i] * s[i + 1] < 0:
            f = s[i] / (s[i] - s[i + 1]) if s[i] != s[i + 1] else 0.0
            crossings.append(t[i] + f * (t[i + 1] - t[i]))
    mouth_t = ((p[48:68] - a) @ d)
    if not crossings or min(crossings) > mouth_t.min() or max(crossings) < mouth_t.max():
        raise CannotFit("jaw_misses_lip_line", "the jaw line does not cross the lip line on both sides of the mouth")
    # the mouth and the nose must be on the chin side of the eyes, i.e. the face is not folded
    down = p[8] - p[27]
    if (p[30] - p[27]) @ down <= 0 or (p[57] - p[30]) @ down <= 0:
        raise CannotFit("collinear_landmarks", "nose/mouth/chin are not in top-to-bottom order")
    if shape is not None:
        h, w = int(shape[0]), int(shape[1])
        core = p[27:68]
        tol = 0.02 * height
        out = (core[:, 0] < -tol) | (core[:, 1] < -tol) | (core[:, 0] > w - 1 + tol) | (core[:, 1] > h - 1 + tol)
        if out.any():
            raise CannotFit("face_outside_image", f"{int(out.sum())} of the eye/nose/mouth landmarks lie outside the {w}x{h} image")
        jaw_out = (jaw[:, 0] < -0.25 * height) | (jaw[:, 0] > w - 1 + 0.25 * height) | (jaw[:, 1] > h - 1 + 0.25 * height)
        if jaw_out.sum() > 4:
            raise CannotFit("face_outside_image", f"{int(jaw_out.sum())} jaw landmarks lie far outside the image")
    return p


def anchor_points(lm: np.ndarray, fit: Optional[Dict[str, float]] = None) -> np.ndarray:
    """Anchor points of the mask for 68 landmarks: ``(N_ANCHORS, 2)`` float64.

    Order: 20 boundary anchors (bridge, under the right eye, right side, jaw 14..2 dropped below
    the chin near lm8, left side, under the left eye), 10 interior anchors (nose tip and wings,
    mouth corners and lip centres, cheeks, chin), then 20 ring anchors outside the boundary (they
    carry the soft edge, ear loops and cartridges; on a turned head the far-side ring shrinks with
    the visible half-width, so the far side compresses continuously).

    Args:
        lm: (68, 2) landmarks (iBUG order).
        fit: fit parameters (keys of :data:`DEFAULT_FIT`); missing keys take the defaults.
    """
    f = dict(DEFAULT_FIT)
    if fit:
        f.update(fit)
    p = np.asarray(lm, dtype=np.float64)
    down = p[8] - p[27]
    height = math.hypot(down[0], down[1])
    v = down / height
    nose_len = np.linalg.norm(p[30] - p[27])
    m = f["eye_margin"] * nose_len
    bridge = p[27] + f["nose"] * (p[30] - p[27])
    # keep the bridge point below the inner eye corners (pitched heads, short noses)
    need = (0.5 * (p[39] + p[42]) - p[27]) @ v + 0.7 * m
    have = (bridge - p[27]) @ v
    nose_v = (p[30] - p[27]) @ v
    if have < need and nose_v > 1e-6:
        bridge = p[27] + min(f["nose"] + (need - have) / nose_v, 0.8) * (p[30] - p[27])
    ui_r = p[47] + v * m
    uo_r = 0.5 * (p[46] + p[45]) + v * m
    st_r = p[15] + 0.35 * (p[14] - p[15])
    st_l = p[1] + 0.35 * (p[2] - p[1])
    uo_l = 0.5 * (p[41] + p[36]) + v * m
    ui_l = p[40] + v * m
    centre = p[30]
    jaw = p[14:1:-1].copy()  # jaw 14 .. 2
    idx = np.arange(14, 1, -1)
    jaw += (centre - jaw) * f["inset"]
    w = np.clip(1.0 - np.abs(idx - 8) / 5.0, 0.0, 1.0)
    jaw += np.outer(w, v) * (f["chin"] * height)
    boundary = np.vstack([bridge, ui_r, uo_r, st_r, jaw, st_l, uo_l, ui_l])
    interior = np.vstack([
        p[30], p[31], p[35], p[48], p[54], p[51], p[57],
        0.5 * (p[3] + p[48]), 0.5 * (p[13] + p[54]), 0.5 * (p[57] + p[8]),
    ])
    # Ring: explicit outward directions (robust on turned heads): up (-v) for the top anchors,
    # sideways (+-h) for the side-top anchors, away from the mouth centre along the jaw.
    h_ax = np.array([v[1], -v[0]])  # image-right for an upright face
    c = 0.5 * (p[30] + p[62])
    out = boundary - c
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
    out[[0, 1, 2, 17, 18, 19]] = -v
    out[3] = h_ax
    out[17] = -h_ax
    out[[4, 5]] = 0.5 * (out[[4, 5]] + h_ax)
    out[[15, 16]] = 0.5 * (out[[15, 16]] - h_ax)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
    # visible half-widths -> far side shrinks (continuous yaw)
    hw_l = np.linalg.norm(p[30] - p[2])
    hw_r = np.linalg.norm(p[14] - p[30])
    hw = 0.5 * (hw_l + hw_r) + 1e-9
    vis = np.where(_SIDE < 0, min(1.0, hw_l / hw), np.where(_SIDE > 0, min(1.0, hw_r / hw), 1.0)) ** 1.5
    ring = boundary + out * (_RING * height * np.where(_RING > 0.1, vis, 1.0))[:, None]
    return np.vstack([boundary, interior, ring])


def yaw_estimate(lm: np.ndarray) -> float:
    """Signed head-yaw proxy in [-1, 1] from the landmarks (0 frontal; sign: which side is far)."""
    p = np.asarray(lm, dtype=np.float64)
    a = np.linalg.norm(p[30] - p[2])
    b = np.linalg.norm(p[14] - p[30])
    return float((b - a) / max(a + b, 1e-9))
