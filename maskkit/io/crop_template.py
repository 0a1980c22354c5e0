"""ArcFace crop templates: where the aligned-crop formats put the five points, and a crop of one
template size brought onto another.

An aligned face crop is a format as much as an image: its size says which template it was warped
onto. insightface's ``estimate_norm`` (deepinsight/insightface
``python-package/insightface/utils/face_align.py``, e.g. commit 01a34cd9) makes two families:

* ``S % 112 == 0`` (tested first): ``arcface_dst * S/112`` -- the 112 template scaled;
* ``S % 128 == 0``: ``arcface_dst * S/128`` plus ``8 * S/128`` in x -- at 128 the face has the
  112 template's scale, 8 px more border left and right and 16 px more at the bottom.

maskkit also knows ``112x96`` (insightface's older ``src/common/face_preprocess.py``, commit
2199039b: the 112 template shifted by -8 px in x) and, for any other square ``S``, takes the 112
template scaled by ``S/112`` (maskkit's own rule: what ``maskkit align --size S`` writes).

:func:`template_change` gives the similarity between two templates: ``template(dst) = s *
template(src) + t`` (exact: the templates are scaled and shifted copies of ``arcface_dst``), and
:func:`to_template` applies it to a crop. A 128x128 crop becomes a 112x112 one by keeping its
columns 8..119 and rows 0..111 (``s = 1``, ``t = (-8, 0)``): no resampling at all. Resizing it to
112 instead, as a plain resize does, shrinks the face by 112/128 and moves the mouth corners 11 px
up. A change is refused (:class:`TemplateRefused`) when the source crop does not cover the
target crop (a 112x96 crop lacks 8 px on each side of a 112x112 one) or when the size is no
template's (a non-square other than 112x96).

Conventions: points in pixel-centre coordinates, as ``cv2.warpAffine`` and ``estimate_norm``
use them. A scale step is a ``cv2.resize`` (``INTER_AREA`` when shrinking: no aliasing), whose
pixel grid is offset from the warp's by ``(1 - s) / 2`` target pixels (a quarter pixel at
``s = 1/2``); a shift by whole pixels is a copy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ARCFACE_DST", "arcface_template", "template_name", "says_template", "TemplateChange",
           "TemplateRefused", "template_change", "change_note", "to_template", "COVER_TOL",
           "MIN_SIDE", "MAX_SIDE"]

#: insightface ``arcface_dst`` for 112x112 crops (x, y).
ARCFACE_DST = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)

#: How far (target pixels) a converted crop may reach past the source crop's edge pixels (filled
#: by replicating the edge): half a pixel, the resampling grid's own slack.
COVER_TOL = 0.5

#: The smallest and largest crop side (pixels) maskkit writes (``align``/``synth --size``) or
#: trains on: below 16 px the five landmarks lie within a few pixels of each other; 4096 keeps
#: one crop's buffers under ~200 MB.
MIN_SIDE, MAX_SIDE = 16, 4096


def _hw(size: tuple[int, int] | int) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def arcface_template(size: tuple[int, int] | int = (112, 112)) -> np.ndarray:
    """The 5-point ArcFace template for an output size.

    Args:
        size: ``(H, W)`` or a single int for a square. Rules:

            * insightface's ``estimate_norm`` (deepinsight/insightface
              ``python-package/insightface/utils/face_align.py``, e.g. commit 01a34cd9), for a
              square ``S``: ``S % 112 == 0`` -> ``arcface_dst * S/112``, tested first, so a size
              divisible by both 112 and 128 (896, 1792, ...) takes the 112-based template;
              else ``S % 128 == 0`` -> ``arcface_dst * S/128`` plus ``8*S/128`` in x.
            * extensions beyond ``estimate_norm`` (which asserts on these sizes): ``(112, 96)``:
              x shifted by -8 (the 96-wide template of insightface's older
              ``src/common/face_preprocess.py``, commit 2199039b, of which ``arcface_dst`` is
              the +8 shift); any other square ``S``: ``arcface_dst * S/112`` (maskkit's choice).

    Returns:
        ``(5, 2)`` float32 template points (x, y).

    Raises:
        ValueError: for a non-square size other than 112x96.
    """
    h, w = _hw(size)
    dst = ARCFACE_DST.copy()
    if (h, w) == (112, 112):
        return dst
    if (h, w) == (112, 96):
        dst[:, 0] -= 8.0
        return dst
    if h != w or h <= 0:
        raise ValueError(f"unsupported aligned size {h}x{w}: use 112x112, 112x96 or a square (e.g. 128, 256)")
    if h % 112 == 0:  # before the 128 rule, as estimate_norm: 896 = 8 x 112 = 7 x 128 is 112-based
        return (dst * (h / 112.0)).astype(np.float32)
    if h % 128 == 0:
        ratio = h / 128.0
        dst = dst * ratio
        dst[:, 0] += 8.0 * ratio
        return dst.astype(np.float32)
    return (dst * (h / 112.0)).astype(np.float32)


def _params(size: tuple[int, int] | int) -> tuple[float, float]:
    """``(ratio, dx)`` of the template of ``size``: ``template = arcface_dst * ratio + (dx, 0)``
    (the rules of :func:`arcface_template`, exact in float64)."""
    h, w = _hw(size)
    if (h, w) == (112, 112):
        return 1.0, 0.0
    if (h, w) == (112, 96):
        return 1.0, -8.0
    if h != w or h <= 0:
        raise ValueError(f"unsupported aligned size {h}x{w}: use 112x112, 112x96 or a square (e.g. 128, 256)")
    if h % 112 == 0:  # before the 128 rule, as estimate_norm: 896 = 8 x 112 = 7 x 128 is 112-based
        return h / 112.0, 0.0
    if h % 128 == 0:
        return h / 128.0, 8.0 * h / 128.0
    return h / 112.0, 0.0


def template_name(size: tuple[int, int] | int) -> str:
    """Which template a crop of ``size`` is on, in words (``insightface's 128 template``...).

    Raises:
        ValueError: a size of no template (:func:`arcface_template`).
    """
    h, w = _hw(size)
    arcface_template((h, w))  # validates
    if (h, w) == (112, 112):
        return "the 112 template"
    if (h, w) == (112, 96):
        return "the 96-wide template (arcface_dst - 8 px in x)"
    if h % 112 == 0:
        return f"the 112 template at x{h // 112} (insightface estimate_norm)"
    if h % 128 == 0:
        at = "" if h == 128 else f" at x{h // 128}"
        return f"insightface's 128 template{at} (arcface_dst + 8 px in x at 128)"
    return f"no insightface template (maskkit's rule: the 112 template at x{h / 112:.3g})"


def says_template(shape: tuple[int, ...]) -> bool:
    """True when an image's size is that of an insightface template crop: ``112x96``, or a square
    ``S`` with ``S % 112 == 0`` or ``S % 128 == 0`` (``estimate_norm``'s sizes). Other sizes fit
    a template only by maskkit's own rule, so a loose photo of such a size is not taken for one."""
    h, w = int(shape[0]), int(shape[1])
    return (h, w) == (112, 96) or (h == w and h > 0 and (h % 112 == 0 or h % 128 == 0))


class TemplateRefused(ValueError):
    """A crop that cannot be brought onto the wanted template: ``reason`` is ``no_template`` (a
    size of no template) or ``other_template`` (its crop does not cover the wanted one);
    ``detail`` explains it."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class TemplateChange:
    """How crops of ``src`` ``(H, W)`` become crops of ``dst``: ``template(dst) = scale *
    template(src) + shift`` (target pixels)."""

    src: tuple[int, int]
    dst: tuple[int, int]
    scale: float
    shift: tuple[float, float]

    @property
    def kind(self) -> str:
        """``same`` (nothing to do), ``scaled`` (a resize) or ``warped`` (a shift, maybe after a resize)."""
        if self.src == self.dst:
            return "same"
        return "scaled" if self.shift == (0.0, 0.0) else "warped"

    def describe(self) -> str:
        """One line for records: which template the crops are on and what was done."""
        sh, sw = self.src
        dh, dw = self.dst
        if self.kind == "same":
            return f"{sw}x{sh} crops on {template_name(self.src)}, used as they are"
        steps = [] if self.scale == 1 else [f"resized x{self.scale:.4g}"]
        tx, ty = self.shift
        for d, axis in ((tx, "x"), (ty, "y")):
            if d:
                steps.append(f"shifted {d:+g} px in {axis}")
        if self.scale == 1:
            steps.append("not resized")
        return (f"{sw}x{sh} crops on {template_name(self.src)} brought onto the {dw}x{dh} template: "
                + ", ".join(steps))

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """The crop ``rgb`` (``src`` sized) as a ``dst`` crop on its template."""
        import cv2

        if tuple(rgb.shape[:2]) != self.src:
            raise ValueError(f"a {rgb.shape[1]}x{rgb.shape[0]} image given to a change for {self.src[1]}x{self.src[0]}")
        img = np.ascontiguousarray(rgb)
        if self.kind == "same":
            return img
        if self.scale != 1:
            size = (round(self.src[1] * self.scale), round(self.src[0] * self.scale))
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if self.scale < 1 else cv2.INTER_LINEAR)
        tx, ty = self.shift
        dh, dw = self.dst
        if float(tx).is_integer() and float(ty).is_integer():  # a copy: no resampling
            x0, y0 = -int(tx), -int(ty)
            out = img[max(0, y0):y0 + dh, max(0, x0):x0 + dw]
            if out.shape[:2] == (dh, dw):
                return np.ascontiguousarray(out)
        m = np.array([[1.0, 0.0, tx], [0.0, 1.0, ty]])
        return cv2.warpAffine(img, m, (dw, dh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def template_change(src: tuple[int, int] | int, dst: tuple[int, int] | int = (112, 112)) -> TemplateChange:
    """The change from crops of size ``src`` onto the template of size ``dst``.

    Raises:
        TemplateRefused: ``no_template`` when ``src`` (or ``dst``) is the size of no template;
            ``other_template`` when the ``src`` crop does not cover the ``dst`` crop by more than
            :data:`COVER_TOL` pixels (e.g. 112x96 -> 112x112: 8 px missing on each side).
    """
    src, dst = _hw(src), _hw(dst)
    try:
        (ra, da), (rb, db) = _params(src), _params(dst)
    except ValueError:
        bad = src if src[0] != src[1] and src != (112, 96) else dst
        raise TemplateRefused("no_template", f"{bad[1]}x{bad[0]} is the size of no ArcFace template crop "
                              "(112x96 or a square)") from None
    if src == dst:
        return TemplateChange(src, dst, 1.0, (0.0, 0.0))
    scale = rb / ra
    shift = (round(db - scale * da, 9) + 0.0, 0.0)
    # the target crop's extent, back in the (scaled) source crop: it must lie within its pixels
    sh, sw = round(src[0] * scale), round(src[1] * scale)
    lack = {"left": shift[0] - 0.0, "right": (dst[1] - 1) - (sw - 1 + shift[0]),
            "top": shift[1] - 0.0, "bottom": (dst[0] - 1) - (sh - 1 + shift[1])}
    short = {side: v for side, v in lack.items() if v > COVER_TOL}
    if short:
        where = ", ".join(f"{v:g} px on the {side}" for side, v in short.items())
        raise TemplateRefused("other_template", f"{src[1]}x{src[0]} crops on {template_name(src)} lack {where} "
                              f"of a {dst[1]}x{dst[0]} crop on {template_name(dst)}")
    return TemplateChange(src, dst, scale, shift)


def change_note(src: tuple[int, int] | int, dst: tuple[int, int] | int = (112, 112)) -> str | None:
    """What :func:`to_template` does to crops of size ``src`` for ``dst``, in words for a record
    (:meth:`TemplateChange.describe`), or None when they already have it.

    Raises:
        TemplateRefused: see :func:`template_change`.
    """
    change = template_change(src, dst)
    return None if change.kind == "same" else change.describe()


def to_template(rgb: np.ndarray, size: tuple[int, int] | int = (112, 112)) -> tuple[np.ndarray, TemplateChange]:
    """``rgb``, an aligned crop of any template size, as a crop of ``size`` on its template, and
    the change made (:func:`template_change`; ``kind == "same"`` when nothing was done).

    Raises:
        TemplateRefused: see :func:`template_change`.
    """
    change = template_change(tuple(rgb.shape[:2]), size)
    return change.apply(rgb), change
