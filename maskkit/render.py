"""Fit a drawn mask template to a face and composite it: the ``mask`` stage of the pipeline.

The templates in :mod:`maskkit.masks` are drawn (by ``masks/generate.py``) in a canonical frontal
frame. Each comes with *anchors*: points that are functions of the 68 iBUG landmarks
(:func:`anchor_points`), evaluated once on a canonical mean face for the template and once on the
target face at render time. A fixed triangulation of the anchors (stored with the template) turns
the pair into a piecewise-affine warp that follows the jaw contour, the nose and the mouth, so a
turned head compresses the far side of the mask continuously, as its landmarks do.

Rendering (per face, a few hundred microseconds on a 112x112 crop):

1. validate the landmarks (NaNs, collinear points, a jaw that never crosses the lip line, a face
   outside the image) and raise :class:`CannotFit` with a reason token otherwise;
2. draw the seeded render parameters (template variant, colour, placement jitter);
3. rasterise the target triangles into a triangle-index map over the small region of interest and
   build the inverse map with one affine per triangle;
4. ``cv2.remap`` the premultiplied RGBA template from the pyramid level closest to the target
   scale (premultiplied alpha: no colour halos; soft anti-aliased alpha: no white fringes);
5. shade the mask by the face's own low-pass luminance and composite with float alpha.

Example:
    >>> renderer = MaskRenderer()                                             # doctest: +SKIP
    >>> res = renderer.render(rgb, lm68, "surgical", np.random.default_rng(0))  # doctest: +SKIP
    >>> res.image.shape, res.alpha.dtype, res.params["style"]                 # doctest: +SKIP
    ((112, 112, 3), dtype('float32'), 'surgical')

Length: one renderer; template loading, anchor fitting, the per-triangle premultiplied warp, shading and coverage are steps of a single ``render`` call that share its intermediate arrays, and the choices it draws from (palettes, textures) are checked against the templates it loaded.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "STYLES",
    "PALETTES",
    "COLOURS",
    "TEXTURES",
    "CannotFit",
    "MaskResult",
    "Template",
    "MaskRenderer",
    "render_mask",
    "anchor_points",
    "check_landmarks",
    "templates_dir",
    "DEFAULT_FIT",
    "COVER_IDX",
    "CLEAR_IDX",
    "coverage_check",
    "yaw_estimate",
]

#: The five mask styles (as in the MaskDUL paper).
STYLES: Tuple[str, ...] = ("surgical", "n95", "kn95", "cloth", "gas")

#: Named colours (RGB). Colour is applied at render time; templates are drawn neutral (no tint).
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "white": (246, 246, 244),
    "light_blue": (150, 200, 232),
    "sky_blue": (120, 178, 226),
    "green": (120, 190, 160),
    "teal": (80, 160, 165),
    "black": (38, 38, 42),
    "grey": (150, 152, 156),
    "charcoal": (78, 80, 86),
    "pink": (238, 170, 190),
    "navy": (40, 52, 96),
    "beige": (222, 204, 176),
    "red": (178, 40, 48),
    "yellow": (230, 196, 72),
    "olive": (98, 106, 66),
    "dark_green": (52, 78, 58),
    "purple": (110, 78, 150),
}

#: Per-style palettes: (colour name, weight). Every style can be white/light blue/black/green or
#: close to it; surgical masks are mostly light blue and white, as in real photos.
PALETTES: Dict[str, Tuple[Tuple[str, float], ...]] = {
    "surgical": (("light_blue", 4), ("white", 3), ("green", 1.5), ("sky_blue", 1), ("black", 1), ("pink", 0.7)),
    "n95": (("white", 5), ("black", 1.5), ("grey", 1), ("light_blue", 0.7), ("green", 0.5)),
    "kn95": (("white", 4), ("black", 2), ("grey", 1), ("pink", 0.7), ("light_blue", 0.7), ("green", 0.5)),
    "cloth": (("black", 3), ("navy", 1.5), ("grey", 1), ("white", 1), ("light_blue", 1), ("green", 1),
              ("red", 0.8), ("beige", 0.8), ("pink", 0.8), ("yellow", 0.5), ("purple", 0.5),
              ("charcoal", 1), ("teal", 0.6)),
    "gas": (("black", 4), ("charcoal", 2), ("grey", 1), ("olive", 1), ("dark_green", 1), ("green", 0.3),
            ("white", 0.3)),
}

#: The textures the templates are drawn with (``meta["texture"]``): cloth masks come in all of
#: them, the other styles are plain (``tests/test_render.py`` checks this against the templates).
TEXTURES: Tuple[str, ...] = ("plain", "checks", "dots", "noise", "stripes")

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


@dataclass
class MaskResult:
    """The output of one render.

    Attributes:
        image: the masked image, HxWx3 uint8 (a new array; the input is not modified).
        alpha: mask coverage in image coordinates, HxW float32 in [0, 1].
        params: JSON-serialisable render parameters, enough to redraw the mask:
            ``style``, ``template``, ``variant``, ``colour``, ``colour2``, ``texture``,
            ``offsets`` (fit jitter), ``yaw`` (signed estimate from the landmarks), ``seed``.
    """

    image: np.ndarray
    alpha: np.ndarray
    params: Dict[str, Any] = field(default_factory=dict)


def templates_dir() -> Path:
    """The folder with the committed templates (``maskkit.masks`` package data)."""
    import maskkit.masks as _m

    return Path(_m.__file__).resolve().parent


# --------------------------------------------------------------------------------------------
# landmarks -> anchors
# --------------------------------------------------------------------------------------------
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


def _edges_crossed(lm: np.ndarray, h: int, w: int) -> List[str]:
    """The image edges (``left``, ``top``, ``right``, ``bottom``) that the 68 points cross."""
    x, y = lm[:, 0], lm[:, 1]
    return [e for e, out in (("left", x.min() < 0), ("top", y.min() < 0), ("right", x.max() > w - 1),
                             ("bottom", y.max() > h - 1)) if out]


def yaw_estimate(lm: np.ndarray) -> float:
    """Signed head-yaw proxy in [-1, 1] from the landmarks (0 frontal; sign: which side is far)."""
    p = np.asarray(lm, dtype=np.float64)
    a = np.linalg.norm(p[30] - p[2])
    b = np.linalg.norm(p[14] - p[30])
    return float((b - a) / max(a + b, 1e-9))


# --------------------------------------------------------------------------------------------
# templates
# --------------------------------------------------------------------------------------------
@dataclass
class Template:
    """One loaded mask template (decoded once, with a premultiplied-alpha pyramid).

    Attributes:
        name: file stem, e.g. ``surgical_3pleat``.
        style: one of :data:`STYLES`.
        meta: the anchor JSON (anchors, triangles, scale, texture, variant...).
        anchors: (N_ANCHORS, 2) float64 anchor coordinates in template pixels.
        triangles: (T, 3) int anchor indices.
        levels: list of (H, W, 5) float32 arrays: premultiplied RGB in [0, 1], alpha, tint weight;
            level k is downscaled by 2**k.
        covered: (T,) bool, whether a triangle carries any mask alpha.
    """

    name: str
    style: str
    meta: Dict[str, Any]
    anchors: np.ndarray
    triangles: np.ndarray
    levels: List[np.ndarray]
    covered: np.ndarray
    area_sign: np.ndarray = field(init=False, repr=False)
    draw_order: List[int] = field(init=False, repr=False)
    canon_height: float = field(init=False)

    def __post_init__(self) -> None:
        a, b, c = (self.anchors[self.triangles[:, i]] for i in range(3))
        area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
        self.area_sign = np.sign(area)
        # triangles without mask first, mask-carrying ones last (drawn on top where they overlap)
        self.draw_order = [int(t) for t in np.argsort(self.covered, kind="stable")]
        self.canon_height = float(self.meta["canon_height"])

    @classmethod
    def load(cls, json_path: Path, n_levels: int = 5, meta: Optional[Dict[str, Any]] = None) -> "Template":
        """Load the template described by ``json_path`` (``meta``: its already parsed content)."""
        import cv2
        from PIL import Image

        if meta is None:
            meta = json.loads(Path(json_path).read_text())
        folder = Path(json_path).parent
        rgba = np.asarray(Image.open(folder / meta["image"]).convert("RGBA"), dtype=np.float32) / 255.0
        tint = np.asarray(Image.open(folder / meta["tint"]).convert("L"), dtype=np.float32) / 255.0
        a = rgba[..., 3:4]
        base = np.concatenate([rgba[..., :3] * a, a, tint[..., None] * a], axis=2)  # premultiplied
        levels = [np.ascontiguousarray(base)]
        for _ in range(1, n_levels):
            prev = levels[-1]
            h, w = prev.shape[:2]
            if min(h, w) < 16:
                break
            size = ((w + 1) // 2, (h + 1) // 2)
            four = cv2.resize(np.ascontiguousarray(prev[..., :4]), size, interpolation=cv2.INTER_AREA)
            one = cv2.resize(np.ascontiguousarray(prev[..., 4]), size, interpolation=cv2.INTER_AREA)
            levels.append(np.ascontiguousarray(np.concatenate([four, one[..., None]], axis=2)))
        return cls(
            name=meta["name"],
            style=meta["style"],
            meta=meta,
            anchors=np.asarray(meta["anchors"], dtype=np.float64),
            triangles=np.asarray(meta["triangles"], dtype=np.int64),
            levels=levels,
            covered=np.asarray(meta["covered"], dtype=bool),
        )


def _weighted_choice(rng: np.random.Generator, items: Sequence[Tuple[str, float]]) -> str:
    """Pick a name from (name, weight) pairs with one uniform draw."""
    total = 0.0
    for _, wt in items:
        total += wt
    u = rng.random() * total
    acc = 0.0
    for name, wt in items:
        acc += wt
        if u < acc:
            return name
    return items[-1][0]


class MaskRenderer:
    """Renders the five mask styles onto faces; templates are read from disk once.

    Args:
        folder: template folder (defaults to the installed ``maskkit.masks``).
        shading: strength of the face-luminance shading (0 = none, 1 = full).

    Example:
        >>> r = MaskRenderer()                                                   # doctest: +SKIP
        >>> out = r.render(rgb, lm68, "random", np.random.default_rng(7))       # doctest: +SKIP
    """

    def __init__(self, folder: Optional[Path] = None, shading: float = 1.0) -> None:
        self.folder = Path(folder) if folder is not None else templates_dir()
        self.shading = float(shading)
        self.templates: Dict[str, Template] = {}
        self._colour_cache: Dict[Tuple[str, int, str, Optional[str]], np.ndarray] = {}
        self._grids: Dict[Tuple[int, int], Tuple[np.ndarray, np.ndarray]] = {}
        self.by_style: Dict[str, List[Tuple[str, float]]] = {s: [] for s in STYLES}
        for jp in sorted(self.folder.glob("*.json")):
            meta = json.loads(jp.read_text())
            if meta.get("format") != "maskkit-mask-template":
                continue
            t = Template.load(jp, meta=meta)  # the JSON is read once
            self.templates[t.name] = t
            self.by_style[t.style].append((t.name, float(meta.get("weight", 1.0))))
        missing = [s for s in STYLES if not self.by_style[s]]
        if missing:
            raise FileNotFoundError(f"no mask templates for styles {missing} in {self.folder} (run python -m maskkit.masks.generate)")

    # ---------------------------------------------------------------------------------------
    def _templates(self, style: str, texture: Optional[str]) -> List[Tuple[str, float]]:
        return [(n, w) for n, w in self.by_style[style]
                if texture is None or self.templates[n].meta.get("texture", "plain") == texture]

    def _can(self, style: str, colour: Optional[str], texture: Optional[str]) -> bool:
        return (colour is None or colour in dict(PALETTES[style])) and bool(self._templates(style, texture))

    def choice_error(self, style: str, colour: Optional[str] = None, texture: Optional[str] = None) -> Optional[str]:
        """Why masks of ``style`` (or ``random``) cannot come in ``colour`` / ``texture`` (``None``:
        any), in one line naming what they come in; ``None`` when they can. Colours are those of the
        style's palette (:data:`PALETTES`, what ``maskkit synth`` draws from)."""
        if colour is not None and colour not in COLOURS:
            return f"unknown colour {colour!r}; choose from {', '.join(COLOURS)}"
        if texture is not None and texture not in TEXTURES:
            return f"unknown texture {texture!r}; choose from {', '.join(TEXTURES)}"
        if style == "random":
            if any(self._can(s, colour, texture) for s in STYLES):
                return None
            return (f"no mask style comes in {' '.join(x for x in (colour, texture) if x)}: "
                    + "; ".join(f"{s} in {self._offer(s)}" for s in STYLES))
        if style in STYLES and not self._can(style, colour, texture):
            return f"{style} masks come in {self._offer(style)} (the palette synth draws from)"
        return None

    def _offer(self, style: str) -> str:
        textures = sorted({self.templates[n].meta.get("texture", "plain") for n, _ in self.by_style[style]},
                          key=TEXTURES.index)
        return f"colours {', '.join(c for c, _ in PALETTES[style])} and textures {', '.join(textures)}"

    def sample_params(self, style: str, rng: np.random.Generator, colour: Optional[str] = None,
                      texture: Optional[str] = None) -> Dict[str, Any]:
        """Draw the render parameters (template variant, colours, fit jitter) for ``style``.

        Args:
            style: one of :data:`STYLES` or ``random`` (then one of those that can take ``colour``
                and ``texture``).
            rng: the face's generator.
            colour: a colour of the style's palette (:data:`PALETTES`), or ``None`` to draw one.
                The draw is made either way, so a chosen colour changes nothing else of the mask.
            texture: one of :data:`TEXTURES` (the template is drawn among those that have it), or
                ``None`` for any.

        Raises:
            ValueError: unknown style, or a colour / texture the style does not come in
                (:meth:`choice_error`).
        """
        if style == "random":
            allowed = [s for s in STYLES if self._can(s, colour, texture)] or list(STYLES)
            style = allowed[int(rng.integers(len(allowed)))]  # (all five without a choice: the draw of before)
        if style not in STYLES:
            raise ValueError(f"unknown mask style {style!r}; choose from {STYLES} or 'random'")
        why = self.choice_error(style, colour, texture)
        if why:
            raise ValueError(why)
        name = _weighted_choice(rng, self._templates(style, texture))
        tpl = self.templates[name]
        drawn = _weighted_choice(rng, PALETTES[style])
        colour = colour or drawn
        colour2 = None
        if tpl.meta.get("texture", "plain") != "plain":
            choices = [c for c in PALETTES["cloth"] if c[0] != colour]
            colour2 = "white" if rng.random() < 0.35 and colour != "white" else _weighted_choice(rng, choices)
        offsets = {k: round(float(rng.uniform(*FIT_JITTER[k])), 4) for k in ("nose", "chin", "inset", "eye_margin")}
        return {
            "style": style,
            "template": name,
            "variant": tpl.meta.get("variant", name),
            "texture": tpl.meta.get("texture", "plain"),
            "colour": colour,
            "colour2": colour2,
            "offsets": offsets,
        }

    def render(
        self,
        rgb: np.ndarray,
        landmarks68: np.ndarray,
        style: str,
        rng: Optional[np.random.Generator] = None,
        params: Optional[Dict[str, Any]] = None,
        colour: Optional[str] = None,
        texture: Optional[str] = None,
        edge: str = "refuse",
    ) -> MaskResult:
        """Draw one mask onto one face.

        Args:
            rgb: HxWx3 uint8 image (a full photo or an aligned crop); not modified.
            landmarks68: (68, 2) landmarks of the face in ``rgb`` pixels.
            style: one of :data:`STYLES` or ``"random"``.
            rng: random generator for the render parameters (ignored when ``params`` is given).
            params: previously returned ``MaskResult.params`` to redraw exactly that mask.
            colour, texture: a chosen colour / texture (:meth:`sample_params`); ``None``: drawn.
            edge: a face cut by the image edge (its eyes, nose or mouth outside the image, its jaw
                far outside): ``"refuse"`` (``CannotFit("face_outside_image")``, what ``synth``
                does) or ``"draw"``: the mask is fitted to all 68 points and its visible part is
                drawn (``params["cut_by_edge"]`` names the edges the face crosses; what ``mask``
                does, for the faces ``align`` keeps). A mask with no part inside the image is
                refused either way.

        Returns:
            :class:`MaskResult` (masked image, coverage alpha, params).

        Raises:
            CannotFit: degenerate landmarks, face outside the image, folded warp, bad input.
        """
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise CannotFit("bad_input", f"image must be HxWx3 uint8, got {getattr(rgb, 'shape', None)} {getattr(rgb, 'dtype', None)}")
        h, w = rgb.shape[:2]
        cut = None
        try:
            lm = check_landmarks(landmarks68, (h, w))
        except CannotFit as exc:
            if edge != "draw" or exc.reason != "face_outside_image":
                raise
            lm = check_landmarks(landmarks68)  # every other check still applies
            cut = _edges_crossed(lm, h, w)
        if params is None:
            if rng is None:
                rng = np.random.default_rng()
            params = self.sample_params(style, rng, colour, texture)
        else:
            params = dict(params)
            if params.get("template") not in self.templates:
                raise ValueError(f"unknown template {params.get('template')!r}")
        tpl = self.templates[params["template"]]
        dst = anchor_points(lm, params["offsets"])
        params["yaw"] = round(yaw_estimate(lm), 4)
        if cut is not None:
            params["cut_by_edge"] = cut
        img, alpha = self._warp_composite(rgb, dst, lm, tpl, params)  # (the region is clipped to the image)
        if cut is not None and float(alpha.sum()) < 1.0:
            raise CannotFit("face_outside_image", "no part of the mask lies inside the image")
        return MaskResult(image=img, alpha=alpha, params=params)

    # ---------------------------------------------------------------------------------------
    def _coloured_level(self, tpl: Template, level: int, colour: str, colour2: Optional[str]) -> np.ndarray:
        """Premultiplied RGBA level with the colour applied (cached: few colours x templates)."""
        key = (tpl.name, level, colour, colour2)
        arr = self._colour_cache.get(key)
        if arr is None:
            lv = tpl.levels[level]
            c1 = np.array(COLOURS[colour], dtype=np.float32) / 255.0
            other = np.array(COLOURS[colour2], dtype=np.float32) / 255.0 if colour2 else np.ones(3, np.float32)
            a = lv[..., 3:4]
            tw = np.clip(lv[..., 4:5] / np.maximum(a, 1e-6), 0.0, 1.0)  # straight tint weight
            rgb = lv[..., :3] * (tw * c1 + (1.0 - tw) * other)  # still premultiplied
            arr = np.ascontiguousarray(np.concatenate([rgb, a], axis=2), dtype=np.float32)
            if len(self._colour_cache) >= 512:
                self._colour_cache.pop(next(iter(self._colour_cache)))
            self._colour_cache[key] = arr
        return arr

    def _warp_composite(self, rgb, dst, lm, tpl: Template, params) -> Tuple[np.ndarray, np.ndarray]:
        import cv2

        h, w = rgb.shape[:2]
        tri = tpl.triangles
        src = tpl.anchors
        # folded warp check: triangles that carry mask and flip orientation
        da, db, dc = dst[tri[:, 0]], dst[tri[:, 1]], dst[tri[:, 2]]
        a_dst = (db[:, 0] - da[:, 0]) * (dc[:, 1] - da[:, 1]) - (db[:, 1] - da[:, 1]) * (dc[:, 0] - da[:, 0])
        flipped = (np.sign(a_dst) != tpl.area_sign) & tpl.covered
        if flipped.any():
            frac = np.abs(a_dst[flipped]).sum() / max(np.abs(a_dst[tpl.covered]).sum(), 1e-9)
            if frac > 0.04:
                raise CannotFit("folded_warp", f"{int(flipped.sum())} mask triangles fold over ({frac:.1%} of the area)")
        # region of interest
        lo = np.floor(dst.min(0)).astype(int)
        hi = np.ceil(dst.max(0)).astype(int) + 1
        x0, y0 = max(int(lo[0]), 0), max(int(lo[1]), 0)
        x1, y1 = min(int(hi[0]), w), min(int(hi[1]), h)
        if x1 - x0 < 2 or y1 - y0 < 2:
            raise CannotFit("face_outside_image", "the mask region lies outside the image")
        rw, rh = x1 - x0, y1 - y0
        # pyramid level: template pixels per target pixel in [1, 2)
        height = math.hypot(*(lm[8] - lm[27]))
        scale = tpl.canon_height / max(height, 1e-6)
        level = min(max(int(math.floor(math.log2(max(scale, 1.0)))), 0), len(tpl.levels) - 1)
        colour2 = params.get("colour2")
        if colour2 is None:  # few (template, colour) pairs: colour the level once, cached
            tex = self._coloured_level(tpl, level, params["colour"], None)
        else:  # two-colour fabrics: too many pairs to cache; colour after the warp
            tex = tpl.levels[level]
        k = 2.0 ** level
        # per-triangle inverse affine (ROI pixel -> template level pixel), flattened to 6 floats
        d = dst - (x0, y0)
        s = (src + 0.5) / k - 0.5
        D = np.empty((len(tri), 3, 3))
        D[:, :, :2] = d[tri]
        D[:, :, 2] = 1.0
        det = a_dst  # same up to sign convention; zero-area triangles are skipped
        ok = (np.abs(det) > 1e-6) & ~flipped
        A6 = np.zeros((256, 6), np.float32)
        A6[:, 4:] = -10.0  # outside every triangle: sample outside the template (alpha 0)
        A6[:len(tri)][ok] = np.linalg.solve(D[ok], s[tri[ok]]).reshape(-1, 6)
        idx = np.full((rh, rw), 255, dtype=np.uint8)
        pts = np.round(d * 16).astype(np.int32)
        for t in tpl.draw_order:
            if ok[t]:
                cv2.fillConvexPoly(idx, pts[tri[t]], int(t), lineType=cv2.LINE_8, shift=4)
        # per-pixel affine coefficients by table look-up on the triangle index (cv2.LUT is ~5x
        # faster than numpy fancy indexing); [x y 1] @ [[a0 a1] [a2 a3] [a4 a5]] = (u, v)
        Ai = [cv2.LUT(idx, np.ascontiguousarray(A6[:, c])) for c in range(6)]
        gx, gy = self._grid(rw, rh)
        mx = Ai[0] * gx
        mx += Ai[2] * gy
        mx += Ai[4]
        my = Ai[1] * gx
        my += Ai[3] * gy
        my += Ai[5]
        warped = cv2.remap(tex, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        face = rgb[y0:y1, x0:x1].astype(np.float32)
        face *= 1.0 / 255.0
        lum = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)
        # match the face's sharpness: a blurry (upscaled, out-of-focus) face gets a blurred mask.
        # Contrast-free measure: fine detail (sigma 0.7) relative to coarser detail (sigma 2)
        # under the mask; sharp faces score about 0.3-0.55, visibly blurry ones below 0.3.
        under = warped[..., 3] > 0.5
        blur = 0.0
        if params.get("blur") is not None:  # redrawing recorded params
            blur = float(params["blur"])
        elif under.sum() > 16:
            d1 = float(np.abs(lum - cv2.GaussianBlur(lum, (0, 0), 0.7))[under].mean())
            d2 = float(np.abs(lum - cv2.GaussianBlur(lum, (0, 0), 2.0))[under].mean())
            if d2 > 1e-4:
                blur = float(np.clip((0.33 - d1 / d2) / 0.1, 0.0, 1.0)) * 1.2 * max(1.0, height / 64.0)
        blur = round(blur, 3)  # the recorded value is the applied value (exact redraws)
        params["blur"] = blur
        if blur > 0.2:
            warped = cv2.GaussianBlur(warped, (0, 0), blur)
        a = warped[..., 3]
        prem = warped[..., :3]
        if colour2 is not None:
            c1 = np.array(COLOURS[params["colour"]], dtype=np.float32) / 255.0
            c2 = np.array(COLOURS[colour2], dtype=np.float32) / 255.0
            tw = np.clip(warped[..., 4] / np.maximum(a, 1e-6), 0.0, 1.0)[..., None]  # straight tint weight
            prem = prem * (c2 + tw * (c1 - c2))
        if self.shading > 0:
            # the face's own low-pass luminance, relative to its mean under the mask
            sigma = max(1.0, 0.06 * height)
            step = max(1, int(round(sigma / 2)))
            if step > 1:
                ls = cv2.resize(lum, (max(1, rw // step), max(1, rh // step)), interpolation=cv2.INTER_AREA)
                ls = cv2.GaussianBlur(ls, (0, 0), 2.0)
                ls = cv2.resize(ls, (rw, rh), interpolation=cv2.INTER_LINEAR)
            else:
                ls = cv2.GaussianBlur(lum, (0, 0), sigma)
            wsum = float(a.sum())
            mean = float(cv2.sumElems(ls * a)[0] / wsum) if wsum > 1e-3 else float(ls.mean())
            mean = max(mean, 1e-3)
            gain = float(np.clip((mean / 0.5) ** 0.35, 0.55, 1.12)) ** self.shading
            rel = np.clip(ls * (1.0 / mean), 0.45, 1.6)
            cv2.pow(rel, 0.75 * self.shading, rel)
            rel *= gain
            prem = prem * rel[..., None]
        # out = face * (1 - a) + colour * a  (prem already carries a)
        out_roi = face * (1.0 - a)[..., None]
        out_roi += prem
        np.clip(out_roi, 0.0, 1.0, out=out_roi)
        out = rgb.copy()
        out[y0:y1, x0:x1] = (out_roi * 255.0 + 0.5).astype(np.uint8)
        alpha = np.zeros((h, w), dtype=np.float32)
        alpha[y0:y1, x0:x1] = np.clip(a, 0.0, 1.0)
        return out, alpha

    def _grid(self, rw: int, rh: int) -> Tuple[np.ndarray, np.ndarray]:
        g = self._grids.get((rw, rh))
        if g is None:
            g = np.meshgrid(np.arange(rw, dtype=np.float32), np.arange(rh, dtype=np.float32))
            if len(self._grids) > 64:
                self._grids.clear()
            self._grids[(rw, rh)] = g
        return g


_DEFAULT: Optional[MaskRenderer] = None


def render_mask(
    rgb: np.ndarray,
    landmarks68: np.ndarray,
    style: str,
    rng: Optional[np.random.Generator] = None,
    renderer: Optional[MaskRenderer] = None,
) -> MaskResult:
    """Convenience wrapper: render with ``renderer`` or a lazily created process-wide one."""
    global _DEFAULT
    if renderer is None:
        if _DEFAULT is None:
            _DEFAULT = MaskRenderer()
        renderer = _DEFAULT
    return renderer.render(rgb, landmarks68, style, rng)


#: Landmarks the mask must cover (alpha >= 0.5): lower nose, mouth, chin.
COVER_IDX = tuple(range(31, 36)) + tuple(range(48, 68)) + (8,)
#: Landmarks the mask must leave clear (alpha < 0.1): the eyes.
CLEAR_IDX = tuple(range(36, 48))


def _sample(alpha: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``alpha`` at ``pts`` (NaN for points outside the image)."""
    h, w = alpha.shape
    x, y = pts[:, 0], pts[:, 1]
    inside = (x >= 0) & (y >= 0) & (x <= w - 1) & (y <= h - 1)
    xc, yc = np.clip(x, 0, w - 1), np.clip(y, 0, h - 1)
    x0 = np.clip(np.floor(xc).astype(int), 0, max(w - 2, 0))
    y0 = np.clip(np.floor(yc).astype(int), 0, max(h - 2, 0))
    fx, fy = xc - x0, yc - y0
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    v = (alpha[y0, x0] * (1 - fx) * (1 - fy) + alpha[y0, x1] * fx * (1 - fy)
         + alpha[y1, x0] * (1 - fx) * fy + alpha[y1, x1] * fx * fy)
    return np.where(inside, v, np.nan)


def coverage_check(alpha: np.ndarray, landmarks68: np.ndarray, below_chin: float = 0.02) -> Dict[str, Any]:
    """Check a mask's placement against the face's landmarks.

    Rules: alpha >= 0.5 at the lower nose (31-35), the mouth (48-67) and the chin (8), and also
    ``below_chin * |lm8 - lm27|`` below the chin (the mask extends past it); alpha < 0.1 at the
    eyes (36-47). Points outside the image are not judged (reported in ``unjudged``).

    Returns:
        ``{"ok": bool, "uncovered": [idx...], "eyes_covered": [idx...], "below_chin": bool | None,
        "unjudged": int}``.
    """
    lm = np.asarray(landmarks68, dtype=np.float64)
    cov = _sample(alpha, lm[list(COVER_IDX)])
    clr = _sample(alpha, lm[list(CLEAR_IDX)])
    down = lm[8] - lm[27]
    past = lm[8] + down * below_chin
    bc = _sample(alpha, past[None])[0]
    uncovered = [i for i, a in zip(COVER_IDX, cov) if np.isfinite(a) and a < 0.5]
    eyes = [i for i, a in zip(CLEAR_IDX, clr) if np.isfinite(a) and a >= 0.1]
    below = None if not np.isfinite(bc) else bool(bc >= 0.5)
    unjudged = int((~np.isfinite(cov)).sum() + (~np.isfinite(clr)).sum() + (below is None))
    return {"ok": not uncovered and not eyes and below is not False, "uncovered": uncovered, "eyes_covered": eyes,
            "below_chin": below, "unjudged": unjudged}
