"""The mask renderer: seeded render parameters, the per-triangle premultiplied warp of a template
onto a face's anchors, sharpness match, shading by the face's own lighting and compositing.

Rendering (per face, a few hundred microseconds on a 112x112 crop):

1. validate the landmarks (:func:`~maskkit.render.anchors.check_landmarks`) and raise
   :class:`~maskkit.render.anchors.CannotFit` with a reason token otherwise;
2. draw the seeded render parameters (template variant, colour, placement jitter);
3. rasterise the target triangles into a triangle-index map over the small region of interest and
   build the inverse map with one affine per triangle;
4. ``cv2.remap`` the premultiplied RGBA template from the pyramid level closest to the target
   scale (premultiplied alpha: no colour halos; soft anti-aliased alpha: no white fringes);
5. shade the mask by the face's own low-pass luminance and composite with float alpha.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .anchors import FIT_JITTER, CannotFit, anchor_points, check_landmarks, yaw_estimate
from .templates import COLOURS, PALETTES, STYLES, TEXTURES, Template, _weighted_choice, templates_dir

__all__ = ["MaskResult", "MaskRenderer"]


def _is_grey(rgb: np.ndarray) -> bool:
    """Every pixel has R == G == B (a greyscale photo decoded to RGB)."""
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))


def _to_grey(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma (what Pillow's ``convert("L")`` computes) in all three channels; pixels that
    were grey keep their value."""
    y = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return np.repeat(np.clip(np.rint(y), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _edges_crossed(lm: np.ndarray, h: int, w: int) -> List[str]:
    """The image edges (``left``, ``top``, ``right``, ``bottom``) that the 68 points cross."""
    x, y = lm[:, 0], lm[:, 1]
    return [e for e, out in (("left", x.min() < 0), ("top", y.min() < 0), ("right", x.max() > w - 1),
                             ("bottom", y.max() > h - 1)) if out]


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
        if _is_grey(rgb):  # a grey photo gets a grey mask: colour would mark "masked" in a grey set
            img = _to_grey(img)
            params["grey"] = True
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
