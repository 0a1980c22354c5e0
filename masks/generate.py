"""Draw the mask templates: RGBA PNG + tint PNG + anchor JSON per template, into ``masks/``.

Every template is drawn procedurally here (numpy + OpenCV: polygons, signed-distance edges,
gradients, pleat shading, procedural fabric); no picture from anywhere else is used. The drawing is
deterministic (fixed seeds, no timestamps, PNGs saved with fixed options and no metadata), so
running the generator again reproduces the committed files byte for byte::

    python -m maskkit.masks.generate            # rewrite masks/*.png, masks/*.json
    python -m maskkit.masks.generate --out /tmp/t

Canonical frame: a symmetric mean 68-point face (dlib landmarks averaged over ArcFace-aligned
112x112 crops), scaled by :data:`SCALE`. The template's anchors are
:func:`maskkit.render.anchor_points` of that face with :data:`maskkit.render.DEFAULT_FIT` (and
without the renderer's eye clearance: the canonical face's own margin); the
renderer evaluates the same function on the target face and warps piecewise-affinely over the
fixed triangulation stored in the JSON.

Files per template ``NAME``:

* ``NAME.png``: RGBA, straight alpha, colours drawn *neutral* (white-ish body) so that colour is
  applied at render time (no default tint);
* ``NAME.tint.png``: 8-bit tint weight: 255 where the render colour applies (the mask body),
  0 where the drawn colour stays (ear loops, valves, cartridges); for cloth, the pattern (255 =
  first colour, 0 = second colour);
* ``NAME.json``: ``{"format": "maskkit-mask-template", "name", "style", "variant", "texture",
  "weight", "image", "tint", "size", "scale", "anchors", "anchor_roles", "triangles", "covered"}``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, List, Tuple

import cv2
import numpy as np
from PIL import Image

from maskkit.render import DEFAULT_FIT, N_ANCHORS, N_BOUNDARY, N_INTERIOR, anchor_points
from maskkit.render.pose import MEAN_FACE_112  # noqa: F401 - the canonical face (re-exported here)

#: Template pixels per pixel of the 112x112 canonical (ArcFace-aligned) frame.
SCALE = 4.0
#: Margin (template px) around the anchors' bounding box.
MARGIN = 12


_B = slice(0, N_BOUNDARY)
_I0 = N_BOUNDARY
_R0 = N_BOUNDARY + N_INTERIOR


# --------------------------------------------------------------------------------------------
# canonical frame
# --------------------------------------------------------------------------------------------
def canonical() -> Tuple[np.ndarray, np.ndarray, Tuple[int, int]]:
    """(landmarks68, anchors, (H, W)) of the canonical frame in template pixels."""
    lm = MEAN_FACE_112 * SCALE
    anc = anchor_points(lm, DEFAULT_FIT, clear_eyes=False)
    lo = np.floor(anc.min(0)) - MARGIN
    lm = lm - lo
    anc = anc - lo
    hi = np.ceil(anc.max(0)) + MARGIN
    return lm, anc, (int(hi[1]), int(hi[0]))


def triangulate(anc: np.ndarray) -> np.ndarray:
    """Fixed Delaunay triangulation of the anchors, as sorted (T, 3) int triples."""
    from scipy.spatial import Delaunay

    tri = Delaunay(anc).simplices.astype(np.int64)
    # drop hull-filling triangles outside the ring polygon (e.g. across the eyes)
    ring = anc[_R0:].astype(np.float32)
    cen = anc[tri].mean(axis=1)
    keep = [cv2.pointPolygonTest(ring, (float(x), float(y)), False) >= 0 for x, y in cen]
    tri = tri[np.array(keep, dtype=bool)]
    tri = np.sort(tri, axis=1)
    tri = tri[np.lexsort((tri[:, 2], tri[:, 1], tri[:, 0]))]
    return tri


def catmull_rom_closed(pts: np.ndarray, n: int = 12) -> np.ndarray:
    """Closed Catmull-Rom spline through ``pts`` with ``n`` samples per segment."""
    p = np.asarray(pts, dtype=np.float64)
    out = []
    t = np.linspace(0, 1, n, endpoint=False)[:, None]
    k = len(p)
    for i in range(k):
        p0, p1, p2, p3 = p[(i - 1) % k], p[i], p[(i + 1) % k], p[(i + 2) % k]
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3))
    return np.vstack(out)


def signed_distance(curve: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """Signed distance (px, positive outside) to the closed polygon ``curve``."""
    inside = np.zeros(shape, np.uint8)
    cv2.fillPoly(inside, [np.round(curve * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    d_in = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    d_out = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5)
    return (d_out - d_in).astype(np.float32)


def edge_alpha(sd: np.ndarray, expand: float, feather: float = 2.5) -> np.ndarray:
    """Soft anti-aliased alpha from a signed distance: 0.5 at ``sd == expand``."""
    return np.clip(0.5 - (sd - expand) / (2.0 * feather), 0.0, 1.0).astype(np.float32)


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def line_layer(shape, polylines: List[np.ndarray], thickness: int) -> np.ndarray:
    """Anti-aliased alpha of thick polylines (drawn at 4x and area-downsampled)."""
    h, w = shape
    big = np.zeros((h * 4, w * 4), np.uint8)
    for pl in polylines:
        cv2.polylines(big, [np.round(pl * 4 * 16).astype(np.int32)], False, 255, thickness * 4, cv2.LINE_AA, 4)
    return cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def quad_curve(a, b, c, n=40) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * a + 2 * (1 - t) * t * b + t ** 2 * c


class Canvas:
    """Layered straight-alpha drawing: ``over`` composites (rgb, alpha, tint) layers."""

    def __init__(self, shape: Tuple[int, int]) -> None:
        self.shape = shape
        self.prem = np.zeros(shape + (3,), np.float32)
        self.a = np.zeros(shape, np.float32)
        self.tint = np.zeros(shape, np.float32)  # premultiplied

    def over(self, rgb, alpha, tint) -> None:
        alpha = np.clip(np.asarray(alpha, np.float32), 0, 1)
        rgb = np.broadcast_to(np.asarray(rgb, np.float32), self.shape + (3,))
        tint = np.broadcast_to(np.asarray(tint, np.float32), self.shape)
        inv = 1.0 - alpha
        self.prem = rgb * alpha[..., None] + self.prem * inv[..., None]
        self.tint = tint * alpha + self.tint * inv
        self.a = alpha + self.a * inv

    def images(self) -> Tuple[Image.Image, Image.Image]:
        a = self.a
        safe = np.maximum(a, 1e-6)
        rgb = np.where(a[..., None] > 0, self.prem / safe[..., None], 0.0)
        tint = np.where(a > 0, self.tint / safe, 0.0)
        a8 = np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)
        rgb8 = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
        rgb8[a8 == 0] = 0
        t8 = np.round(np.clip(tint, 0, 1) * 255).astype(np.uint8)
        t8[a8 == 0] = 0
        return Image.fromarray(np.dstack([rgb8, a8]), "RGBA"), Image.fromarray(t8, "L")


class Frame:
    """Geometry of the canonical frame shared by the style painters."""

    def __init__(self) -> None:
        self.lm, self.anc, self.shape = canonical()
        h, w = self.shape
        self.Y, self.X = np.mgrid[0:h, 0:w].astype(np.float32)
        self.boundary = self.anc[_B]
        self.curve = catmull_rom_closed(self.boundary, 10)
        self.sd = signed_distance(self.curve, self.shape)
        self.cx = float(self.lm[27, 0])
        self.halfw = float(self.lm[14, 0] - self.lm[2, 0]) / 2.0
        self.top = float(self.anc[0, 1])
        self.bottom = float(self.anc[10, 1])  # jaw-8 anchor, below the chin
        self.u = (self.X - self.cx) / self.halfw  # -1 .. 1 across the face
        body = self.sd < 0
        # per-column top and bottom of the mask -> q in [0, 1] top-to-bottom (pleats follow it)
        cols = np.where(body.any(0))[0]
        ytop = np.full(w, np.nan, np.float32)
        ybot = np.full(w, np.nan, np.float32)
        for x in cols:
            ys = np.where(body[:, x])[0]
            ytop[x], ybot[x] = ys[0], ys[-1]
        idx = np.arange(w)
        ok = ~np.isnan(ytop)
        ytop = np.interp(idx, idx[ok], ytop[ok]).astype(np.float32)
        ybot = np.interp(idx, idx[ok], ybot[ok]).astype(np.float32)
        self.q = (self.Y - ytop[None, :]) / np.maximum(ybot - ytop, 1.0)[None, :]
        self.v = (self.Y - self.top) / (self.bottom - self.top)

    def noise(self, seed: int, sigma: float, amp: float) -> np.ndarray:
        rng = np.random.default_rng(seed)
        n = rng.standard_normal(self.shape).astype(np.float32)
        n = cv2.GaussianBlur(n, (0, 0), sigma)
        n /= max(float(n.std()), 1e-6)
        return amp * n

    def straps(self) -> List[np.ndarray]:
        """Head straps: from the upper and lower corners back towards the ears and the neck."""
        out = []
        for top_i, j2, bot_i, j4 in ((17, 16, 14, 15), (3, 4, 6, 5)):
            a, b = self.anc[top_i], self.anc[bot_i]
            ear = 0.5 * (self.anc[_R0 + top_i] + self.anc[_R0 + j2])
            neck = 0.5 * (self.anc[_R0 + bot_i] + self.anc[_R0 + j4])
            out.append(quad_curve(a, 0.5 * (a + ear) + (0, -6), a + (ear - a) * 0.92, 24))
            out.append(quad_curve(b, 0.5 * (b + neck) + (0, 4), b + (neck - b) * 0.92, 24))
        return out

    def ear_loops(self, start_top: int, start_bot: int, ring_frac: float = 1.0) -> List[np.ndarray]:
        """Ear loop curves on both sides (from two boundary anchors out to the ring)."""
        loops = []
        for top_i, bot_i in ((17, 14), (3, 6)):
            a = self.anc[top_i]
            b = self.anc[bot_i]
            ear = self.anc[_R0 + top_i] * 0.55 + self.anc[_R0 + bot_i] * 0.45
            ear = a + (ear - a) * ring_frac
            loops.append(np.vstack([quad_curve(a, ear + (a - b) * 0.15, ear, 30),
                                    quad_curve(ear, ear - (a - b) * 0.35, b, 30)]))
        return loops


# --------------------------------------------------------------------------------------------
# styles
# --------------------------------------------------------------------------------------------
def draw_surgical(fr: Frame, pleats: int, seed: int) -> Canvas:
    cv = Canvas(fr.shape)
    # ear loops (white elastic, not tinted), behind the body
    loops = line_layer(fr.shape, fr.ear_loops(17, 14), 4)
    cv.over((0.93, 0.93, 0.92), loops * 0.97, 0.0)
    body = edge_alpha(fr.sd, 4.0)
    q = fr.q
    shade = np.ones(fr.shape, np.float32) * 0.95
    # curvature: the face turns away at the sides
    shade *= 0.80 + 0.20 * np.sqrt(np.clip(1 - np.clip(np.abs(fr.u), 0, 1) ** 2, 0, 1))
    # pleats in the middle band, following the per-column height
    p0, p1 = 0.26, 0.78
    band = (q - p0) / (p1 - p0) * pleats
    frac = band - np.floor(band)
    inside = (band > 0) & (band < pleats)
    prof = 1.04 - 0.16 * frac - 0.22 * np.exp(-((frac - 1.0) / 0.07) ** 2) - 0.10 * np.exp(-(frac / 0.05) ** 2)
    shade = np.where(inside, shade * prof, shade)
    # bindings: top and bottom hems, side hems, with stitch lines
    hem = (q < 0.07) | (q > 0.93)
    shade = np.where(hem, shade * 1.02, shade)
    side_hem = fr.sd > -14
    shade = np.where(side_hem & ~hem, shade * 0.97, shade)
    stitch = (np.abs(fr.sd + 11) < 1.0) & (np.sin(fr.X * 0.9 + fr.Y * 0.9) > 0)
    shade = np.where(stitch, shade * 0.9, shade)
    # nose wire ridge
    wire = np.exp(-((q - 0.035) / 0.012) ** 2) * np.exp(-(fr.u / 0.32) ** 2)
    shade *= 1.0 - 0.06 * wire
    shade *= 1.0 + fr.noise(seed, 0.8, 0.018)
    cv.over(np.clip(shade, 0, 1)[..., None] * np.array([1, 1, 1], np.float32), body, 1.0)
    return cv


def draw_n95(fr: Frame, valve: bool, seed: int) -> Canvas:
    cv = Canvas(fr.shape)
    straps = fr.straps()
    fade = smoothstep(80.0, 20.0, fr.sd)  # straps run round the head, out of sight
    cv.over((0.80, 0.78, 0.62), line_layer(fr.shape, straps, 9) * 0.95 * fade, 0.0)
    body = edge_alpha(fr.sd, 4.0)
    # dome: elliptical radius around the nose-mouth centre, lit from above-left
    c = 0.5 * (fr.lm[33] + fr.lm[57])
    ry = (fr.bottom - fr.top) * 0.62
    rx = fr.halfw * 1.05
    ex = (fr.X - c[0]) / rx
    ey = (fr.Y - c[1]) / ry
    r2 = np.clip(ex ** 2 + ey ** 2, 0, 1)
    nz = np.sqrt(1 - r2)
    L = np.array([-0.25, -0.45, 0.86])
    L = L / np.linalg.norm(L)
    lam = np.clip(ex * L[0] + ey * L[1] + nz * L[2], 0, 1)
    shade = 0.62 + 0.38 * lam
    # rim band and seam line
    rim = smoothstep(-16, -6, fr.sd)
    shade *= 1.0 - 0.08 * rim
    seam = np.exp(-((fr.sd + 9) / 1.3) ** 2)
    shade *= 1.0 - 0.10 * seam
    # non-woven texture
    shade *= 1.0 + fr.noise(seed, 1.0, 0.02)
    cv.over(np.clip(shade, 0, 1)[..., None] * np.ones(3, np.float32), body, 1.0)
    if valve:
        vc = np.array([fr.cx + 0.36 * fr.halfw, fr.lm[57, 1] - 0.02 * (fr.bottom - fr.top)])
        rr = 0.24 * fr.halfw
        dx = (fr.X - vc[0]) / rr
        dy = (fr.Y - vc[1]) / (rr * 0.9)
        d = np.sqrt(dx ** 2 + dy ** 2)
        va = np.clip((1.0 - d) * rr / 2.5, 0, 1)
        vshade = 0.55 + 0.25 * np.clip(-dy * 0.6 - dx * 0.3 + 0.4, 0, 1)
        slots = (np.abs(dy) < 0.6) & (np.sin(fr.Y * 0.55) > 0.3) & (np.abs(dx) < 0.62)
        vshade = np.where(slots, vshade * 0.55, vshade)
        rimv = np.exp(-((d - 0.86) / 0.07) ** 2)
        vshade = vshade * (1 + 0.25 * rimv)
        cv.over(np.clip(vshade, 0, 1)[..., None] * np.array([0.96, 0.97, 1.0], np.float32), va, 0.0)
    return cv


def draw_kn95(fr: Frame, seed: int) -> Canvas:
    cv = Canvas(fr.shape)
    cv.over((0.95, 0.95, 0.94), line_layer(fr.shape, fr.ear_loops(17, 14), 4) * 0.97, 0.0)
    body = edge_alpha(fr.sd, 4.0)
    u = fr.u
    # two flat panels folded along the centre seam: one side lit, the other in half-shade
    shade = np.where(u < 0, 0.98 + 0.02 * u, 0.90 - 0.06 * u).astype(np.float32)
    shade *= 0.86 + 0.14 * np.sqrt(np.clip(1 - np.clip(np.abs(u), 0, 1) ** 2, 0, 1))
    # horizontal fold across the middle (the upper flap overlaps)
    fold_y = fr.lm[33, 1] + 0.25 * (fr.lm[51, 1] - fr.lm[33, 1])
    fy = (fr.Y - fold_y) / (fr.bottom - fr.top)
    shade *= 1.0 - 0.10 * np.exp(-(fy / 0.015) ** 2) * (np.abs(u) < 0.95)
    shade *= np.where(fy < 0, 1.02, 0.98)
    # centre seam: dark line with a highlight beside it
    seam = np.exp(-(u / 0.012) ** 2)
    shade *= 1.0 - 0.22 * seam
    shade *= 1.0 + 0.06 * np.exp(-((u - 0.03) / 0.015) ** 2)
    # heat-sealed border: a band of embossed dots
    band = (fr.sd > -13) & (fr.sd < -5)
    dots = (np.sin(fr.X * 0.7) * np.sin(fr.Y * 0.7)) > 0.55
    shade = np.where(band & dots, shade * 0.88, shade)
    shade = np.where(band, shade * 0.97, shade)
    shade *= 1.0 + fr.noise(seed, 0.8, 0.018)
    cv.over(np.clip(shade, 0, 1)[..., None] * np.ones(3, np.float32), body, 1.0)
    return cv


def cloth_pattern(fr: Frame, texture: str, seed: int) -> np.ndarray:
    """Tint weight of a fabric pattern: 1 = first colour, 0 = second colour."""
    X, Y = fr.X, fr.Y
    if texture == "plain":
        return np.ones(fr.shape, np.float32)
    if texture == "checks":  # gingham: two stripe sets, their overlap darkest
        p = 34.0
        a = smoothstep(-1.5, 1.5, np.sin(2 * np.pi * X / p) * p / (2 * np.pi))
        b = smoothstep(-1.5, 1.5, np.sin(2 * np.pi * Y / p) * p / (2 * np.pi))
        return np.clip(0.5 * a + 0.5 * b, 0, 1).astype(np.float32)
    if texture == "stripes":  # diagonal stripes
        p = 30.0
        s = np.sin(2 * np.pi * (X + 0.6 * Y) / p) * p / (2 * np.pi)
        return smoothstep(-1.5, 1.5, s).astype(np.float32)
    if texture == "dots":  # polka dots of the second colour on the first
        p = 36.0
        gx = (X + 0.5 * p * (np.floor(Y / p) % 2)) % p - p / 2
        gy = Y % p - p / 2
        d = np.sqrt(gx ** 2 + gy ** 2)
        return smoothstep(6.5, 8.5, d).astype(np.float32)
    if texture == "noise":  # heathered / mottled fabric
        n = fr.noise(seed + 101, 6.0, 1.0) + 0.5 * fr.noise(seed + 102, 2.0, 1.0)
        return smoothstep(-0.9, 0.9, n).astype(np.float32)
    raise ValueError(texture)


def draw_cloth(fr: Frame, texture: str, seed: int) -> Canvas:
    cv = Canvas(fr.shape)
    loops = line_layer(fr.shape, fr.ear_loops(17, 14, 0.9), 8)
    cv.over((0.85, 0.85, 0.85), loops, 1.0)
    body = edge_alpha(fr.sd, 4.0)
    u = fr.u
    shade = 0.80 + 0.20 * np.sqrt(np.clip(1 - np.clip(np.abs(u), 0, 1) ** 2, 0, 1))
    # fitted: centre seam running nose -> chin, slight bulge over nose and mouth
    seam_x = fr.cx + 0.0 * fr.v
    seam = np.exp(-((fr.X - seam_x) / 2.2) ** 2)
    shade *= 1.0 - 0.18 * seam
    shade *= 1.0 + 0.05 * np.exp(-((fr.X - seam_x - 4) / 3.0) ** 2)
    shade *= 0.92 + 0.08 * smoothstep(1.1, 0.55, fr.v)  # under-chin fold in shade
    # hem stitching around the edge
    stitch = (np.abs(fr.sd + 9) < 1.0) & (np.sin((fr.X + fr.Y) * 0.8) > 0)
    shade = np.where(stitch, shade * 0.85, shade)
    # woven texture
    weave = 0.025 * np.sin(fr.X * 2.1) * np.sin(fr.Y * 2.1)
    shade *= 1.0 + weave + fr.noise(seed, 0.7, 0.02)
    tint = cloth_pattern(fr, texture, seed)
    cv.over(np.clip(shade, 0, 1)[..., None] * np.ones(3, np.float32), body, tint)
    return cv


def draw_gas(fr: Frame, cartridge_rgb: Tuple[float, float, float], seed: int) -> Canvas:
    cv = Canvas(fr.shape)
    # head harness straps (dark, not tinted)
    straps = fr.straps()
    fade = smoothstep(90.0, 25.0, fr.sd)
    cv.over((0.16, 0.16, 0.17), line_layer(fr.shape, straps, 14) * fade, 0.0)
    body = edge_alpha(fr.sd, 4.0)
    u = fr.u
    c = 0.5 * (fr.lm[33] + fr.lm[57])
    ex = (fr.X - c[0]) / (fr.halfw * 1.05)
    ey = (fr.Y - c[1]) / ((fr.bottom - fr.top) * 0.65)
    nz = np.sqrt(np.clip(1 - ex ** 2 - ey ** 2, 0, 1))
    lam = np.clip(-0.3 * ex - 0.45 * ey + 0.84 * nz, 0, 1)
    shade = 0.55 + 0.35 * lam
    spec = np.exp(-((u + 0.05) / 0.08) ** 2) * np.exp(-((fr.v - 0.3) / 0.2) ** 2)
    shade = shade + 0.25 * spec  # rubber sheen on the nose ridge
    rim = smoothstep(-14, -4, fr.sd)
    shade *= 1.0 - 0.15 * rim
    shade *= 1.0 + fr.noise(seed, 1.5, 0.015)
    cv.over(np.clip(shade, 0, 1)[..., None] * np.ones(3, np.float32), body, 1.0)
    # exhalation valve cover: a rounded box with slats, below the mouth
    vc = np.array([fr.cx, fr.lm[57, 1] + 0.05 * (fr.bottom - fr.top)])
    hwid, hh = 0.30 * fr.halfw, 0.12 * (fr.bottom - fr.top)
    box = np.maximum(np.abs(fr.X - vc[0]) / hwid, np.abs(fr.Y - vc[1]) / hh)
    va = np.clip((1.0 - box) * min(hwid, hh) / 2.0, 0, 1)
    vsh = 0.30 + 0.15 * np.clip(-(fr.Y - vc[1]) / hh, -1, 1)
    slats = np.sin((fr.Y - vc[1]) * 0.6) > 0.2
    vsh = np.where(slats & (box < 0.8), vsh * 0.55, vsh)
    cv.over(np.clip(vsh, 0, 1)[..., None] * np.ones(3, np.float32), va, 0.0)
    # filter cartridges: cylinders seen at an angle (ellipses) on both cheeks
    for side, jaw_i, cheek_i in ((-1, 14, _I0 + 7), (1, 6, _I0 + 8)):
        cc = 0.55 * fr.anc[jaw_i] + 0.45 * fr.anc[cheek_i]
        cc = cc + np.array([side * 0.04 * fr.halfw, -0.02 * (fr.bottom - fr.top)])
        rx, ry = 0.32 * fr.halfw, 0.19 * (fr.bottom - fr.top)
        # side wall (darker), then the face of the cartridge
        for k, (off, tone) in enumerate(((side * 0.10 * fr.halfw, 0.55), (0.0, 1.0))):
            dx = (fr.X - cc[0] - off) / (rx * (0.8 if k == 0 else 0.72))
            dy = (fr.Y - cc[1]) / ry
            d = np.sqrt(dx ** 2 + dy ** 2)
            ca = np.clip((1.0 - d) * min(rx, ry) / 2.0, 0, 1)
            ring = np.exp(-((d - 0.62) / 0.05) ** 2) + np.exp(-((d - 0.85) / 0.04) ** 2)
            light = 0.85 + 0.25 * np.clip(-dx * 0.4 * side - dy * 0.5, -1, 1)
            col = np.array(cartridge_rgb, np.float32)[None, None, :] * (tone * light * (1 - 0.25 * ring))[..., None]
            cv.over(np.clip(col, 0, 1), ca, 0.0)
    return cv


# (name, style, variant, texture, weight, painter)
def template_specs() -> List[Tuple[str, str, str, str, float, Callable[[Frame], Canvas]]]:
    return [
        ("surgical_3pleat", "surgical", "3 pleats", "plain", 1.0, lambda f: draw_surgical(f, 3, 11)),
        ("surgical_4pleat", "surgical", "4 pleats", "plain", 1.0, lambda f: draw_surgical(f, 4, 12)),
        ("n95_cup", "n95", "cup", "plain", 1.0, lambda f: draw_n95(f, False, 21)),
        ("n95_valve", "n95", "cup with valve", "plain", 0.7, lambda f: draw_n95(f, True, 22)),
        ("kn95_fold", "kn95", "folded", "plain", 1.0, lambda f: draw_kn95(f, 31)),
        ("cloth_plain", "cloth", "plain", "plain", 1.5, lambda f: draw_cloth(f, "plain", 41)),
        ("cloth_checks", "cloth", "checks", "checks", 1.0, lambda f: draw_cloth(f, "checks", 42)),
        ("cloth_stripes", "cloth", "stripes", "stripes", 1.0, lambda f: draw_cloth(f, "stripes", 43)),
        ("cloth_dots", "cloth", "dots", "dots", 1.0, lambda f: draw_cloth(f, "dots", 44)),
        ("cloth_noise", "cloth", "noise fabric", "noise", 1.0, lambda f: draw_cloth(f, "noise", 45)),
        ("gas_p100", "gas", "magenta P100 cartridges", "plain", 1.0, lambda f: draw_gas(f, (0.78, 0.30, 0.62), 51)),
        ("gas_olive", "gas", "olive cartridges", "plain", 1.0, lambda f: draw_gas(f, (0.42, 0.45, 0.30), 52)),
    ]


def _save_png(im: Image.Image, path: Path) -> None:
    # fixed options, no metadata: byte-for-byte reproducible
    im.save(path, format="PNG", optimize=False, compress_level=9)


def generate(out_dir: Path) -> List[Path]:
    """Draw every template into ``out_dir``; returns the written paths (sorted)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fr = Frame()
    tri = triangulate(fr.anc)
    ring_sd = signed_distance(fr.anc[_R0:], fr.shape)
    written = []
    roles = ["boundary"] * N_BOUNDARY + ["interior"] * N_INTERIOR + ["ring"] * N_BOUNDARY
    assert len(roles) == N_ANCHORS
    # fade everything out before the ring polygon: the warp covers only the inside of the
    # ring, so nothing may reach it (no hard clipping edges on turned heads)
    keep = edge_alpha(ring_sd, -10.0, 3.0)
    # the pixels of each triangle (the same frame for every template)
    tri_pixels = []
    for t in tri:
        poly = np.zeros(fr.shape, np.uint8)
        cv2.fillConvexPoly(poly, np.round(fr.anc[t]).astype(np.int32), 1)
        tri_pixels.append(poly > 0)
    for name, style, variant, texture, weight, paint in template_specs():
        cv = paint(fr)
        cv.prem *= keep[..., None]
        cv.a *= keep
        cv.tint *= keep
        rgba, tint = cv.images()
        a = np.asarray(rgba)[..., 3]
        # does a triangle carry any mask? (sampled at its centroid + vertices' inner points)
        covered = [bool((a[px] > 0).any()) for px in tri_pixels]
        meta = {
            "format": "maskkit-mask-template",
            "version": 1,
            "name": name,
            "style": style,
            "variant": variant,
            "texture": texture,
            "weight": weight,
            "image": f"{name}.png",
            "tint": f"{name}.tint.png",
            "size": [fr.shape[1], fr.shape[0]],
            "scale": SCALE,
            "canon_height": round(float(np.linalg.norm(fr.lm[8] - fr.lm[27])), 3),
            "fit": DEFAULT_FIT,
            "anchors": [[round(float(x), 3), round(float(y), 3)] for x, y in fr.anc],
            "anchor_roles": roles,
            "triangles": tri.tolist(),
            "covered": covered,
        }
        p_img, p_tint, p_json = out_dir / meta["image"], out_dir / meta["tint"], out_dir / f"{name}.json"
        _save_png(rgba, p_img)
        _save_png(tint, p_tint)
        p_json.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        written += [p_img, p_tint, p_json]
    return sorted(written)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder (default: masks/)")
    args = ap.parse_args(argv)
    for p in generate(args.out):
        print(p)


if __name__ == "__main__":
    main()
