"""Landmarks -> mask anchors: the fit of a drawn template to one face's 68 iBUG landmarks.

The templates in :mod:`maskkit.masks` are drawn in a canonical frontal frame; each comes with
*anchors*, points that are functions of the 68 landmarks (:func:`anchor_points`), evaluated once
on the canonical mean face for the template and once on the target face at render time. A fixed
triangulation of the anchors turns the pair into a piecewise-affine warp that follows the jaw
contour, the nose and the mouth, so a turned head compresses the far side continuously.

Turned heads (measured by ``benchmarks/right_mask_rate.py`` against MediaPipe's face mesh, not
against these landmarks), in the order :func:`anchor_points` applies them:

1. *envelope*: the sides enclose the bridge anchor, nose tip and wings, lips and chin by
   :data:`ENVELOPE_MARGIN` (nothing moves on a frontal face; on a near-profile the far side then
   follows the front profile: bridge, nose tip, straight down past the lips to the chin, as a real
   mask's outline does). So a near-profile's far jaw, its silhouette, may meet the lip line just
   inside the far mouth corner (by up to :data:`JAW_SHORTFALL` of the mouth width) and still
   carry a mask (was ``jaw_misses_lip_line``);
2. *far side*: from :data:`FAR_CLAMP_YAW` on (yaw of the 3-D mean head fitted by
   :func:`maskkit.render.pose.head_pose`), the far side reaches at most :data:`FAR_SLACK` past
   the head's predicted silhouette, nothing past the envelope from :data:`FAR_HIDE_YAW` on (the
   far cheek is behind the nose): a fit whose far jaw strays into the background no longer drags
   the mask there;
3. *eyes*: the top edge keeps :data:`EYE_CLEAR` (plus the recorded ``eye_margin`` jitter) below
   every eye landmark, but rests on the nose (:data:`NOSE_TIP_GAP`);
4. the top edge's anchors stay in order across the face and the cheeks' interior anchors between
   mouth corner and boundary, so the warp does not fold on the crowded far side of a profile.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, Optional, Tuple

import numpy as np

if TYPE_CHECKING:
    from .pose import HeadPose

__all__ = ["CannotFit", "DEFAULT_FIT", "FIT_JITTER", "JAW_SHORTFALL", "EYE_CLEAR", "ENVELOPE_MARGIN", "FAR_CLAMP_YAW",
           "FAR_SLACK", "FAR_HIDE_YAW", "NOSE_TIP_GAP",
           "N_BOUNDARY", "N_INTERIOR", "N_ANCHORS", "check_landmarks", "anchor_points", "yaw_estimate"]

#: Default (canonical) fit parameters; templates are drawn with these, faces get jittered ones.
DEFAULT_FIT: Dict[str, float] = {"nose": 0.42, "chin": 0.06, "inset": 0.02, "eye_margin": 0.28}

#: Jitter ranges of the fit parameters (uniform), recorded in ``params["offsets"]``.
FIT_JITTER: Dict[str, Tuple[float, float]] = {
    "nose": (0.32, 0.55),  # how high on the nose bridge: fraction of the way from lm27 to lm30
    "chin": (0.03, 0.11),  # how far below the chin, in units of |lm8 - lm27|
    "inset": (0.0, 0.04),  # how far inside the jaw line the sides sit
    "eye_margin": (0.25, 0.34),  # gap between the lower eyelid and the top edge, in |lm30-lm27|
}

#: How far inside the far mouth corner (fraction of the mouth width) a turned head's jaw may meet
#: the lip line and still carry a mask. Measured on celeb-aligned: the 9 near-profiles that failed
#: before fall short by at most 0.19; a jaw entirely beside the mouth falls short by more than 1.
JAW_SHORTFALL = 0.5
#: Gap kept between the mask's top edge and every eye landmark, in units of |lm8 - lm27| (about
#: 1.4 cm on an adult face), plus the ``eye_margin`` jitter above its lower bound. 0.10 left 15
#: of 2,223 celeb-aligned crops with an eye touched in the worst style (dlib's eyes sit up to 0.1
#: of the face height above the true lids on squinting and turned faces); 0.14 starts to bare
#: nose tips of faces looking down.
EYE_CLEAR = 0.12
#: The eye clearance never pushes the bridge anchor lower than this (units of |lm8 - lm27|) above
#: the nose tip (the mask rests on the nose), nor the rest of the top edge this far above the
#: nostrils (the warp would fold): on a face looking down or a near-profile (whose far eye dlib
#: puts on the nose) the eyes may sit closer to the nose than the clearance.
NOSE_TIP_GAP = 0.05
#: Margin by which the jaw anchors enclose the nose tip, nostrils, lips and chin, in units of
#: |lm8 - lm27| (a mask stands off the nose tip; dlib's nose tip of a profile sits inside it).
ENVELOPE_MARGIN = 0.08
#: From this yaw (degrees, :func:`maskkit.render.pose.head_pose`) on, the far side of the mask may
#: reach at most :data:`FAR_SLACK` past the 3-D mean head's silhouette (or the envelope above):
#: a landmark fit whose far jaw strays into the background no longer drags the mask there.
FAR_CLAMP_YAW = 15.0
#: How far (units of |lm8 - lm27|) past the mean head's far silhouette the far side may reach
#: at :data:`FAR_CLAMP_YAW` (faces are up to about 10 % wider than the mean head: 0.065); the
#: slack shrinks to 0 at :data:`FAR_HIDE_YAW`, where the mean head's far cheek has gone behind
#: the nose and the far side follows the front profile (the envelope) alone.
FAR_SLACK = 0.15
FAR_HIDE_YAW = 40.0

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
#: Top-edge anchors from image-left to image-right (upright face): ST_L, UO_L, UI_L, B, UI_R, UO_R, ST_R.
_TOP = (17, 18, 19, 0, 1, 2, 3)
#: Boundary anchors that belong to a side (all but the bridge and the chin); which are top-edge ones.
_SIDED = np.array([k for k in range(N_BOUNDARY) if _SIDE[k] != 0])
_SIDED_TOP = np.isin(_SIDED, _TOP)


class CannotFit(ValueError):
    """The landmarks cannot carry a mask (degenerate, outside the image, ...).

    Attributes:
        reason: short token for failure logs (``nan_landmarks``, ``collinear_landmarks``,
            ``jaw_misses_lip_line`` (the jaw does not reach round the mouth; a turned head's far
            jaw may stop :data:`JAW_SHORTFALL` inside the far corner), ``face_outside_image``,
            ``face_too_small``, ``folded_warp``, ``bad_input``).
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
    # a turned head's far jaw (its silhouette) may meet the lip line just inside the far mouth
    # corner; the renderer then closes the mask around the mouth (anchor_points' envelope)
    # (only one side, the far one: the side whose jaw lies nearer the nose tip)
    short = JAW_SHORTFALL * (mouth_t.max() - mouth_t.min())
    left_short = not crossings or min(crossings) > mouth_t.min()
    right_short = not crossings or max(crossings) < mouth_t.max()
    left_far = np.linalg.norm(p[30] - p[2]) < np.linalg.norm(p[14] - p[30])
    if (not crossings or min(crossings) > mouth_t.min() + short or max(crossings) < mouth_t.max() - short
            or (left_short and right_short) or (left_short and not left_far) or (right_short and left_far)):
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


def anchor_points(lm: np.ndarray, fit: Optional[Dict[str, float]] = None, *, clear_eyes: bool = True,
                  pose: Optional["HeadPose"] = None) -> np.ndarray:
    """Anchor points of the mask for 68 landmarks: ``(N_ANCHORS, 2)`` float64.

    Order: 20 boundary anchors (bridge, under the right eye, right side, jaw 14..2 dropped below
    the chin near lm8, left side, under the left eye), 10 interior anchors (nose tip and wings,
    mouth corners and lip centres, cheeks, chin), then 20 ring anchors outside the boundary (they
    carry the soft edge, ear loops and cartridges; on a turned head the far-side ring shrinks with
    the visible half-width, so the far side compresses continuously).

    The jaw anchors enclose the nose tip, the lips and the chin by :data:`ENVELOPE_MARGIN` (on a
    turned head the far side follows the front profile); with ``clear_eyes`` the top edge passes
    at least ``EYE_CLEAR * |lm8 - lm27|`` plus the ``eye_margin`` jitter above its lower bound
    (times |lm30 - lm27|) below every eye landmark.

    Args:
        lm: (68, 2) landmarks (iBUG order).
        fit: fit parameters (keys of :data:`DEFAULT_FIT`); missing keys take the defaults.
        clear_eyes: keep the top edge clear of the eyes (the renderer); ``False`` gives the
            anchors the templates were drawn on (``masks/generate.py``, the canonical face).
        pose: the face's :class:`~maskkit.render.pose.HeadPose` (fitted here when omitted, with
            ``clear_eyes``); from :data:`FAR_CLAMP_YAW` on, the far side may not reach more than
            :data:`FAR_SLACK` past the mean head's silhouette.
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
    h_ax = np.array([v[1], -v[0]])  # image-right for an upright face
    interior = np.vstack([
        p[30], p[31], p[35], p[48], p[54], p[51], p[57],
        0.5 * (p[3] + p[48]), 0.5 * (p[13] + p[54]), 0.5 * (p[57] + p[8]),
    ])
    limit = _enclose(boundary, p, v, h_ax, height)
    if pose is None and clear_eyes:
        from .pose import head_pose

        pose = head_pose(p)
    if pose is not None and abs(pose.yaw) >= FAR_CLAMP_YAW:
        _clamp_far_side(boundary, p, h_ax, v, height, pose, limit)
    if clear_eyes:
        gap = EYE_CLEAR * height + max(f["eye_margin"] - FIT_JITTER["eye_margin"][0], 0.0) * nose_len
        _clear_eyes(boundary, p, v, h_ax, gap)
    _order_top(boundary, h_ax, 0.01 * height)
    _place_cheeks(interior, boundary, p, v, h_ax, height)
    # Ring: explicit outward directions (robust on turned heads): up (-v) for the top anchors,
    # sideways (+-h) for the side-top anchors, away from the mouth centre along the jaw.
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
    # a far side pulled in (a head turned beyond its landmarks' far jaw) narrows its ring too
    hw_l = min(hw_l, max(float((p[30] - boundary[16]) @ h_ax), 0.0)) if pose is not None else hw_l
    hw_r = min(hw_r, max(float((boundary[4] - p[30]) @ h_ax), 0.0)) if pose is not None else hw_r
    hw = 0.5 * (hw_l + hw_r) + 1e-9
    vis = np.where(_SIDE < 0, min(1.0, hw_l / hw), np.where(_SIDE > 0, min(1.0, hw_r / hw), 1.0)) ** 1.5
    # the side rings (ear loops, cartridges) shrink with the visible half-width, but never below
    # the top's soft-edge band (0.05): a hidden far side keeps an anti-aliased edge
    ring = boundary + out * (height * np.where(_RING > 0.1, np.maximum(_RING * vis, 0.05), _RING))[:, None]
    return np.vstack([boundary, interior, ring])


def _hull_extent(U: np.ndarray, W: np.ndarray, ws, sides) -> np.ndarray:
    """For each height ``ws[i]``: the largest ``sides[i] * u`` of the polygon (U, W) on the line
    ``W == ws[i]`` (NaN where the line misses the polygon)."""
    ws = np.asarray(ws, np.float64).reshape(-1, 1)
    sides = np.asarray(sides, np.float64).reshape(-1, 1)
    W1, U1 = np.append(W[1:], W[0]), np.append(U[1:], U[0])
    dw = W1 - W
    hit = ((W - ws) * (W1 - ws) <= 0) & (dw != 0)
    f = (ws - W) / np.where(dw != 0, dw, 1.0)
    u = np.where(hit, sides * (U + f * (U1 - U)), -np.inf).max(axis=1)
    return np.where(np.isfinite(u), u, np.nan)


def _enclose(boundary: np.ndarray, p: np.ndarray, v: np.ndarray, h_ax: np.ndarray, height: float):
    """Push the side anchors (boundary 1..9 and 11..19) sideways, in place, until they enclose the
    convex hull of the bridge anchor, the nose tip and wings, the lips and the chin.

    The margin grows from 0 at the bridge anchor (where the mask rests on the nose) to
    :data:`ENVELOPE_MARGIN` at the nose tip and below. On a frontal face the sides lie far outside
    that hull and nothing moves; on a turned head the far jaw (its silhouette) runs along the nose
    and the lips, and the far side of the mask then follows the face's front profile (bridge, nose
    tip, then straight down past the lips to the chin), as a real mask's outline does.

    Returns:
        ``limit(ws, sides, top)``: the envelope's ``side * u`` at heights ``ws`` below the nose
        tip (arrays; NaN outside its height range).
    """
    c0 = p[30]
    basis = np.column_stack([h_ax, v])
    hull = _hull2d((np.vstack([boundary[0], p[30:36], p[48:68], p[7:10]]) - c0) @ basis)
    w_bridge = float((boundary[0] - c0) @ v)  # negative: the bridge is above the nose tip

    nose_u = (p[30:36] - c0) @ h_ax
    nose = np.array([np.max(-nose_u), np.max(nose_u)]) + 0.5 * ENVELOPE_MARGIN * height  # left, right

    def limit(ws: np.ndarray, sides: np.ndarray, top: np.ndarray) -> np.ndarray:
        """The envelope's ``side * u`` at heights ``ws`` (NaN: outside its height range); for
        top-edge anchors (``top``) at least past the nose's widest point: the edge drapes over it."""
        ramp = np.ones_like(ws) if w_bridge >= 0 else np.where(ws >= 0, 1.0, np.maximum(0.0, 1.0 - ws / w_bridge))
        lim = _hull_extent(hull[:, 0], hull[:, 1], ws, sides) + ENVELOPE_MARGIN * height * ramp
        return np.where(top, np.fmax(lim, nose[(sides > 0).astype(int)]), lim)

    q = (boundary[_SIDED] - c0) @ basis
    lim = limit(q[:, 1], _SIDE[_SIDED], _SIDED_TOP)
    move = _SIDE[_SIDED] * q[:, 0] < lim  # False where lim is NaN
    ks = _SIDED[move]
    boundary[ks] = c0 + (_SIDE[ks] * lim[move])[:, None] * h_ax + q[move, 1:2] * v
    return limit


def _order_top(boundary: np.ndarray, h_ax: np.ndarray, step: float) -> None:
    """Keep the top edge's anchors in order across the face, in place: from the bridge outward
    (UI, UO, ST on each side) each lies at least ``step`` further out than the one before (a
    near-profile's far eye crowds them onto the nose, which would fold the warp)."""
    for chain, side in (((0, 1, 2, 3), 1.0), ((0, 19, 18, 17), -1.0)):
        prev = side * float(boundary[chain[0]] @ h_ax)
        for k in chain[1:]:
            u = side * float(boundary[k] @ h_ax)
            if u < prev + step:
                boundary[k] += side * (prev + step - u) * h_ax
                u = prev + step
            prev = u


def _place_cheeks(interior: np.ndarray, boundary: np.ndarray, p: np.ndarray, v: np.ndarray, h_ax: np.ndarray,
                  height: float) -> None:
    """Keep each cheek's interior anchor between its side's mouth corner and nose wing (whichever
    reaches further out, plus 0.03 face heights) and the boundary (less 0.03), in place: on a
    near-profile the far cheek's landmarks crowd inside the nose, which would fold the warp."""
    c0 = p[30]
    basis = np.column_stack([h_ax, v])
    poly = (boundary - c0) @ basis
    pad = 0.03 * height
    for k, side, corner, wing in ((7, -1.0, 48, 31), (8, 1.0, 54, 35)):
        u, w = (interior[k] - c0) @ basis
        lo = max(side * float((p[corner] - c0) @ h_ax), side * float((p[wing] - c0) @ h_ax)) + pad
        hi = float(_hull_extent(poly[:, 0], poly[:, 1], [w], side)[0])
        target = side * u
        if np.isfinite(hi):
            target = min(target, hi - pad)
            target = max(target, lo) if lo <= hi - pad else 0.5 * (lo + hi)
        else:
            target = max(target, lo)
        if target != side * u:
            interior[k] = c0 + side * target * h_ax + w * v


def _hull2d(pts: np.ndarray) -> np.ndarray:
    """Convex hull (closed polygon, float64) of 2-D points."""
    import cv2

    return cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2).astype(np.float64)


def _clamp_far_side(boundary: np.ndarray, p: np.ndarray, h_ax: np.ndarray, v: np.ndarray, height: float,
                    pose: "HeadPose", envelope) -> None:
    """Pull the far side's boundary anchors, in place, back to at most :data:`FAR_SLACK` (less as
    the head turns further) past the posed mean head's silhouette, never inside ``envelope``."""
    far = 1.0 if pose.yaw > 0 else -1.0
    c0 = p[30]
    basis = np.column_stack([h_ax, v])
    head = _hull2d((pose.projected - c0) @ basis)
    slack = FAR_SLACK * height * min(max((FAR_HIDE_YAW - abs(pose.yaw)) / (FAR_HIDE_YAW - FAR_CLAMP_YAW), 0.0), 1.0)

    ks = _SIDED[_SIDE[_SIDED] == far]
    q = (boundary[ks] - c0) @ basis
    top = np.isin(ks, _TOP)
    ext = _hull_extent(head[:, 0], head[:, 1], q[:, 1], far) + slack
    cap = np.where(np.isnan(ext), np.nan, np.fmax(ext, envelope(q[:, 1], np.full(len(ks), far), top)))
    move = far * q[:, 0] > cap
    boundary[ks[move]] = c0 + (far * cap[move])[:, None] * h_ax + q[move, 1:2] * v


def _clear_eyes(boundary: np.ndarray, p: np.ndarray, v: np.ndarray, h_ax: np.ndarray, gap: float) -> None:
    """Move the top-edge anchors down (along the face's down axis), in place, until the top edge
    (the polyline ST_L .. B .. ST_R) passes at least ``gap`` pixels below every eye landmark
    (36-47) above it: both ends of a segment too close under an eye point move down by the
    shortfall (a few rounds, as moved segments meet other eye points)."""
    c0 = p[27]
    eyes = p[36:48]
    eu, ew = (eyes - c0) @ h_ax, (eyes - c0) @ v
    height = float(np.linalg.norm(p[8] - p[27]))
    top = list(_TOP)
    # lowest place for each top anchor: the bridge stays NOSE_TIP_GAP above the nose tip (the
    # mask rests on the nose), the others above the nostrils (the warp must not fold)
    floor = np.full(len(top), float(np.max((p[31:36] - c0) @ v)) - NOSE_TIP_GAP * height)
    floor[top.index(0)] = float((p[30] - c0) @ v) - NOSE_TIP_GAP * height
    for _ in range(4):
        tu, tw = (boundary[top] - c0) @ h_ax, (boundary[top] - c0) @ v
        u0, u1, w0, w1 = tu[:-1, None], tu[1:, None], tw[:-1, None], tw[1:, None]  # segments x eye points
        du = u1 - u0
        over = (np.minimum(u0, u1) <= eu) & (eu <= np.maximum(u0, u1)) & (np.abs(du) >= 1e-9)
        w = w0 + (eu - u0) / np.where(over, du, 1.0) * (w1 - w0)
        need = np.where(over, ew + gap - w, 0.0).max(axis=1)  # per segment
        need = np.maximum(need, 0.0)
        push = np.zeros(len(top))
        push[:-1] = need
        push[1:] = np.maximum(push[1:], need)
        if not (push > 1e-9).any():
            return
        room = np.maximum(floor - tw, 0.0)
        push = np.minimum(push, room)
        if not (push > 1e-9).any():
            return
        boundary[top] += push[:, None] * v


def yaw_estimate(lm: np.ndarray) -> float:
    """Signed head-yaw proxy in [-1, 1] from the landmarks (0 frontal; sign: which side is far)."""
    p = np.asarray(lm, dtype=np.float64)
    a = np.linalg.norm(p[30] - p[2])
    b = np.linalg.norm(p[14] - p[30])
    return float((b - a) / max(a + b, 1e-9))
