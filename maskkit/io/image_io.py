"""Robust image decoding and JPEG encoding.

Every decoder path ends in one of two places: an ``RGB uint8 (H, W, 3)`` numpy array, or an
:class:`ImageError` carrying a short machine-readable ``reason`` token and a human ``detail``.
Callers (``maskkit align``, ``maskkit synth``) write the reason to ``failures.jsonl``; nothing is
dropped silently and nothing crashes a run.

What is handled:

* content, not file name, decides the decoder (a PNG named ``.jpg`` decodes; text named
  ``.jpg`` is a ``decode_error``);
* EXIF orientation is applied (``ImageOps.exif_transpose``);
* CMYK, grayscale, 1-bit, palette, RGBA/LA (composited on white; :func:`alpha_of` gives the alpha back), 16-bit and float images are
  converted to RGB uint8 (16-bit is *scaled* to 8 bits, not clipped);
* an image of at most :data:`FEW_COLOURS` distinct colours (a 1-bit scan, a 2-4 colour palette,
  grey posterized to 2-4 levels) is read through a light low-pass (:func:`descreen`): a
  dithered bilevel face is a pattern of single pixels that dlib's and BlazeFace's models never
  saw, and their fits on it land off the face; the low-pass gives back the grey the dither
  stands for. The image maskkit crops and masks is that grey one (docs/DETECTION.md);
* the pixel limit is checked from the header *before* the pixels are decoded (PIL opens lazily),
  so a 20000x20000 image is refused without allocating it.

Example:
    >>> rgb = load_image("face.jpg", max_pixels=50_000_000)   # doctest: +SKIP
    >>> jpg = encode_jpeg(rgb, quality=95)                      # doctest: +SKIP
"""
from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["DEFAULT_MAX_PIXELS", "FEW_COLOURS", "DESCREEN_SIGMA", "descreen", "ImageError", "decode_image", "decode_crop", "read_crop", "load_image", "encode_jpeg",
           "to_rgb_uint8"]

log = logging.getLogger(__name__)

#: Default pixel limit (width * height) above which an image is refused (100 megapixels).
DEFAULT_MAX_PIXELS = 100_000_000

#: An image with at most this many distinct colours is low-passed when read (:func:`descreen`).
#: Measured (``benchmarks/low_bit_depth.py``: obama, biden, astronaut, grace_hopper as 1-bit
#: dithered/thresholded, palette and grey at 2, 3, 4, 8, 16, 32 levels, dithered or not; HOG and
#: BlazeFace): read as they are, the dithered 2-4 level copies give fits 0.2-0.4 IOD (mean
#: point) off the colour fit (rejected as ``bad_landmarks``, or, with BlazeFace's keypoints,
#: kept off the face: obama 1-bit, 0.41); 8 levels and more fit within 0.05 as they are, and at 8
#: the low-pass let BlazeFace keep a sleeve on dithered biden, so only 2-4 are low-passed.
FEW_COLOURS = 4

#: Standard deviation (pixels) of the Gaussian low-pass of :func:`descreen`. A dither pattern
#: lives at the pixel scale whatever the face size; at sigma 1 the kept subjects of every 1-bit
#: copy have eyes within 0.03 IOD of the colour fit, 2-4 levels within 0.075 (HOG) and 0.104
#: (BlazeFace, a 2-colour dithered palette); sigma 1.5 changed nothing more (docs/MARGINS.md).
DESCREEN_SIGMA = 1.0



class ImageError(Exception):
    """An input that could not be turned into an RGB image.

    Attributes:
        reason: short token for failure logs: ``empty``, ``read_error``, ``decode_error``,
            ``unsupported``, ``too_large``.
        detail: human-readable explanation.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _mode_to_rgb(im: Image.Image) -> np.ndarray:
    """Convert any PIL mode to an RGB uint8 array."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        if mode == "F":
            hi = 1.0 if arr.size and np.nanmax(arr) <= 1.0 else 255.0
            arr = arr / hi * 255.0
        elif arr.size and arr.max() > 255:
            # 16-bit (or 32-bit int holding 16-bit data): scale the full range to 8 bits
            arr = arr / (65535.0 if arr.max() <= 65535 else float(arr.max())) * 255.0
        gray = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, im).convert("RGB"), dtype=np.uint8)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def descreen(im: Image.Image, rgb: np.ndarray) -> np.ndarray:
    """``rgb`` (the RGB array of ``im``) low-passed when ``im`` has at most :data:`FEW_COLOURS`
    distinct colours (mode ``1``, a small palette, grey posterized to a few levels), else
    ``rgb`` itself.

    A bilevel or few-level image -- dithered or thresholded -- is read as the grey (or colour)
    it stands for: a Gaussian of :data:`DESCREEN_SIGMA` pixels (OpenCV). Counting colours stops
    at the fifth (``Image.getcolors``), so a photo costs microseconds.

    Args:
        im: the decoded PIL image (any mode).
        rgb: ``(H, W, 3)`` uint8, ``im`` converted to RGB.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    if FEW_COLOURS <= 0 or im.mode not in ("1", "L", "P", "RGB", "LA", "PA", "RGBA"):
        return rgb
    try:
        few = im.getcolors(FEW_COLOURS) is not None
    except (OSError, ValueError):  # pragma: no cover - PIL refuses a mode it cannot count
        return rgb
    if not few:
        return rgb
    import cv2

    return cv2.GaussianBlur(rgb, (0, 0), DESCREEN_SIGMA, borderType=cv2.BORDER_REFLECT)


def to_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    """Coerce a numpy image (gray HxW, HxWx1, RGB, RGBA; uint8/uint16/float) to RGB uint8.

    Args:
        arr: image array.

    Returns:
        C-contiguous ``(H, W, 3)`` uint8 array.
    """
    a = np.asarray(arr)
    if a.dtype == np.uint16:
        a = (a.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif a.dtype.kind == "f":
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0
        a = np.clip(a * scale, 0, 255).round().astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if a.ndim != 3 or a.shape[2] != 3:
        raise ImageError("unsupported", f"array of shape {arr.shape} is not an image")
    return np.ascontiguousarray(a)


def _open_checked(fp, max_pixels: int | None, name: str) -> Image.Image:
    # our own, configurable limit replaces PIL's decompression-bomb guard for this call only
    saved = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(fp)
    except UnidentifiedImageError as exc:
        raise ImageError("decode_error", f"{name}: not a recognised image format") from exc
    except Image.DecompressionBombError as exc:  # pragma: no cover - limit disabled above
        raise ImageError("too_large", f"{name}: {exc}") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError("decode_error", f"{name}: {exc}") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageError("decode_error", f"{name}: image has size {w}x{h}")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError("too_large", f"{name}: {w}x{h} = {w * h:,} pixels exceeds the limit of "
                                      f"{max_pixels:,} (raise --max-pixels to allow it)")
    return im


def _decode_opened(im: Image.Image, name: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        msg = str(exc)
        raise ImageError("decode_error", f"{name}: {msg or type(exc).__name__}") from exc
    except MemoryError as exc:
        raise ImageError("too_large", f"{name}: out of memory while decoding") from exc
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the image
        pass
    try:
        rgb = _mode_to_rgb(im)
    except (OSError, ValueError, KeyError) as exc:
        raise ImageError("unsupported", f"{name}: cannot convert mode {im.mode!r} to RGB ({exc})") from exc
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError("unsupported", f"{name}: mode {im.mode!r} gave shape {rgb.shape}")
    return np.ascontiguousarray(descreen(im, rgb))


def decode_image(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes (any format PIL reads) to RGB uint8.

    Args:
        data: the encoded file content.
        max_pixels: refuse images with more pixels than this (checked before decoding);
            ``None`` disables the check.
        name: used in error details.

    Returns:
        ``(H, W, 3)`` uint8 RGB array, EXIF orientation applied.

    Raises:
        ImageError: with ``reason`` ``empty``, ``decode_error``, ``unsupported`` or ``too_large``.
    """
    if not data:
        raise ImageError("empty", f"{name}: 0 bytes")
    im = _open_checked(io.BytesIO(data), max_pixels, name)
    return _decode_opened(im, name)


def decode_crop(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """Fast OpenCV decode of an encoded face crop (a shard sample, a ``.bin`` image) to RGB uint8.

    For the training/evaluation hot path over trusted, already aligned crops: no EXIF handling
    and no pixel limit (use :func:`decode_image` for arbitrary inputs).

    Args:
        data: JPEG/PNG bytes.
        size: wanted ``(H, W)``; a crop of another size is brought onto the template of ``size``
            (:func:`read_crop`). ``None`` keeps the decoded size.

    Raises:
        ValueError: ``decode_error: ...`` when the bytes are not a decodable image (0 bytes
            included);
            :class:`~maskkit.io.crop_template.TemplateRefused` (a ``ValueError``) when the crop's
            size is no template's, or its template's crop does not cover ``size``'s.
    """
    return read_crop(data, size)[0]


def _imdecode(cv2, data) -> np.ndarray | None:
    """``cv2.imdecode`` (BGR) of encoded bytes; None for bytes OpenCV cannot decode.

    Raises:
        ValueError: ``decode_error: ...`` for 0 bytes (OpenCV asserts ``!buf.empty()``), an entry
            that is no bytes at all, and any other ``cv2.error`` the decoder raises.
    """
    if not isinstance(data, (bytes, bytearray, memoryview, np.ndarray)):
        raise ValueError(f"decode_error: a {type(data).__name__}, not image bytes")
    buf = np.frombuffer(bytes(data), np.uint8)  # an ndarray (a .bin's np.uint8 entries): its raw bytes
    if not buf.size:
        raise ValueError("decode_error: 0 bytes (an empty image)")
    try:
        return cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        msg = " ".join(str(exc).split())
        raise ValueError(f"decode_error: OpenCV cannot decode these {buf.size} bytes ({msg[-160:]})") from None


def read_crop(data: bytes, size: tuple[int, int] | None = None):
    """:func:`decode_crop` and what was done to the crop: ``(rgb, change)``.

    ``change`` is None when nothing was asked (``size`` None) or the crop already has ``size``;
    otherwise the :class:`~maskkit.io.crop_template.TemplateChange` applied: the size of a crop
    says its template (:func:`~maskkit.io.crop_template.arcface_template`), so a 128x128 crop
    of insightface's 128 template loses its 8-px side borders and bottom 16 rows (no
    resampling) and a 224x224 crop of the 112 template is halved -- never a plain resize, which
    would leave a 128 crop's face 9-11 px off the 112 template. The caller records the change.

    Raises:
        ValueError: ``decode_error: ...`` when ``data`` is empty (0 bytes), not bytes, or bytes
            OpenCV cannot decode (it returns nothing or raises ``cv2.error``);
            :class:`~maskkit.io.crop_template.TemplateRefused` as :func:`decode_crop`.
    """
    import cv2

    from maskkit.io.crop_template import to_template

    bgr = _imdecode(cv2, data)
    if bgr is None:
        raise ValueError("decode_error: cannot decode image bytes")
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    if size is None or rgb.shape[:2] == tuple(size):
        return rgb, None
    return to_template(rgb, tuple(size))


def load_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file to RGB uint8, deciding the format from its content.

    Args:
        path: file path.
        max_pixels: refuse images with more pixels than this, checked from the header before
            the pixel data are decoded; ``None`` disables the check.

    Returns:
        ``(H, W, 3)`` uint8 RGB array, EXIF orientation applied.

    Raises:
        ImageError: ``read_error`` (missing, unreadable), ``empty``, ``decode_error``,
            ``unsupported`` or ``too_large``.
    """
    p = Path(path)
    name = p.name
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise ImageError("read_error", f"{name}: {exc.strerror or exc}") from exc
    if size == 0:
        raise ImageError("empty", f"{name}: 0 bytes")
    try:
        fh = open(p, "rb")
    except OSError as exc:
        raise ImageError("read_error", f"{name}: {exc.strerror or exc}") from exc
    with fh:
        im = _open_checked(fh, max_pixels, name)
        return _decode_opened(im, name)


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """Encode an RGB uint8 image as JPEG bytes (OpenCV, 4:2:0 like libjpeg defaults).

    Args:
        rgb: ``(H, W, 3)`` uint8 RGB.
        quality: JPEG quality 1..100.

    Returns:
        The JPEG file content.
    """
    import cv2

    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"encode_jpeg needs HxWx3 uint8, got {rgb.shape} {rgb.dtype}")
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV only fails on invalid input
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def alpha_of(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray | None:
    """The transparency of an image file, oriented as :func:`load_image` returns its pixels.

    :func:`load_image` composites an image with an alpha channel on white; a command that writes
    the image back (``maskkit mask``) puts this channel back so transparent parts stay transparent.

    Args:
        path: file path.
        max_pixels: as for :func:`load_image`.

    Returns:
        ``(H, W)`` uint8 alpha (0 = transparent), or ``None`` when the image has no alpha channel
        or is opaque everywhere.

    Raises:
        ImageError: as :func:`load_image`.
    """
    with open(Path(path), "rb") as fh:
        im = _open_checked(fh, max_pixels, Path(path).name)
        if im.mode not in ("RGBA", "LA", "La", "RGBa", "PA") and not (im.mode == "P" and "transparency" in im.info):
            return None
        im.load()
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001 - as load_image: a broken EXIF block keeps the image as stored
            pass
        a = np.asarray(im.convert("RGBA"), dtype=np.uint8)[..., 3]
    return np.ascontiguousarray(a) if int(a.min()) < 255 else None
