"""Mask templates and their colours: the drawn RGBA + tint images, anchors and triangulation,
loaded once per renderer into a premultiplied-alpha pyramid; styles, colours and palettes."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["STYLES", "COLOURS", "PALETTES", "TEXTURES", "Template", "templates_dir"]

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


def templates_dir() -> Path:
    """The folder with the committed templates (``maskkit.masks`` package data)."""
    import maskkit.masks as _m

    return Path(_m.__file__).resolve().parent


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
