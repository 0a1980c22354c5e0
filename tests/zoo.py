"""Build the bad-input zoo in a temporary folder (shared by the align, synth and mask tests).

``make_zoo(dir)`` writes a small tree of real faces (scikit-image's astronaut, matplotlib's
grace_hopper -- dependency-shipped, written only into ``dir``) in every awkward encoding, plus
broken and hostile files, and returns ``{rel_path: expected_outcome}`` where the outcome is
``"ok"`` (a face must be written) or the failure reason token expected in ``failures.jsonl``.

Cases (issue 2, "Bad input"): 0-byte file, truncated JPEG, corrupt PNG, text named ``.jpg``;
CMYK JPEG, 16-bit PNG, grayscale, RGBA, palette PNG, EXIF-rotated JPEG; a 20000x20000 image
(refused by the pixel limit without being decoded); unicode and space-containing names, names
with several dots, upper-case extensions, a PNG named ``.jpg``; a symlink loop; an image with no
face; an image with 40 faces.

Example:
    >>> expected = make_zoo(tmp_path / "zoo")            # doctest: +SKIP
    >>> expected["broken/empty.jpg"]
    'empty'
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["make_zoo", "faces_tree", "astronaut", "grace_hopper", "FORTY_FACES", "ZOO_FACE_COUNTS", "ZOO_FACES_ACCEPTED_MIN", "HUGE",
           "parse_summary"]

#: rel path of the 40-face image and of the 20000x20000 image.
FORTY_FACES = "crowd/forty_faces.jpg"
HUGE = "broken/huge_20000x20000.png"
#: expected number of faces with ``--faces all`` for inputs with more than one face: every face is
#: found (the 40 copies score 0.72 to 1.6 with HOG, limit 0), and each one is written or recorded as
#: rejected (exact accounting).
ZOO_FACE_COUNTS = {FORTY_FACES: 40}
#: how many of those must pass the landmark check. Measured 2026-12-06 (docs/MARGINS.md): 40 of 40,
#: here and on 18 copies with 1-grey-level noise, but in each copy 1 to 3 faces pass only through
#: the orientation search, where 3 to 6 of 10 start fits agree (3 needed; 3 was seen once in 29
#: such faces), and a few pass the fast test within 0.01 of its limit: "all 40" would ride on
#: that. At least 38: 2 under what is measured.
ZOO_FACES_ACCEPTED_MIN = {FORTY_FACES: 38}


def astronaut() -> np.ndarray:
    """scikit-image's astronaut (Eileen Collins), RGB uint8 512x512."""
    from skimage import data

    return data.astronaut()


def grace_hopper() -> np.ndarray:
    """matplotlib's grace_hopper.jpg, RGB uint8 600x512."""
    import matplotlib.cbook as cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


def faces_tree(root: str | os.PathLike, per: int = 6) -> Path:
    """An identity tree of real faces: ``eileen/`` and ``grace/`` with ``per`` distinct photos each
    (the astronaut and grace_hopper, cropped and scaled a little more each time, JPEG), plus
    ``grace/zz_coffee.jpg``, a photo without a face. HOG finds every face (``2 * per`` of them)."""
    root = Path(root)
    for name, img in (("eileen", astronaut()), ("grace", grace_hopper())):
        (root / name).mkdir(parents=True, exist_ok=True)
        h, w = img.shape[:2]
        for i in range(per):
            s = 1.0 - 0.07 * i
            im = Image.fromarray(img).crop((4 * i, 3 * i, w - 5 * i, h - 2 * i))
            im = im.resize((int(im.width * s), int(im.height * s)), Image.BILINEAR)
            im.save(root / name / f"{i:02d}.jpg", quality=92)
    Image.fromarray(_no_face()).save(root / "grace" / "zz_coffee.jpg")
    return root


def _no_face() -> np.ndarray:
    from skimage import data

    return data.coffee()  # a real photo without a face


def _huge_png(path: Path, side: int = 20000) -> None:
    """A valid 1-bit ``side`` x ``side`` PNG written in streaming fashion (~50 KB on disk)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)
    parts = []
    block = row * 500
    for _ in range(side // 500):
        parts.append(comp.compress(block))
    parts.append(comp.flush())
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.write(chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)))
        fh.write(chunk(b"IDAT", b"".join(parts)))
        fh.write(chunk(b"IEND", b""))


def _crowd(face: np.ndarray, n_rows: int = 5, n_cols: int = 8, cell: int = 130) -> np.ndarray:
    """40 copies of a real face on a grid (each face ~90 px, well within HOG's range)."""
    import cv2

    h, w = face.shape[:2]
    canvas = np.full((n_rows * cell, n_cols * cell, 3), 200, np.uint8)
    tile = cv2.resize(face, (cell, cell), interpolation=cv2.INTER_AREA)
    for r in range(n_rows):
        for c in range(n_cols):
            canvas[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = tile
    return canvas


def _jpeg(arr_or_im, **kw) -> bytes:
    im = arr_or_im if isinstance(arr_or_im, Image.Image) else Image.fromarray(arr_or_im)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=92, **kw)
    return buf.getvalue()


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def make_zoo(root: str | os.PathLike) -> dict[str, str]:
    """Write the zoo under ``root`` and return ``{rel: "ok" | reason}``.

    Symlink cases are skipped (and not returned) on filesystems without symlinks.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    gh, ast = grace_hopper(), astronaut()
    face_crop = gh[40:420, 60:440]  # Grace Hopper's head and shoulders
    exp: dict[str, str] = {}

    def put(rel: str, data: bytes, outcome: str) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        exp[rel] = outcome

    # real faces, plain
    put("people/astronaut.png", _png(Image.fromarray(ast)), "ok")
    put("people/grace_hopper.jpg", _jpeg(gh), "ok")
    # awkward encodings of real faces
    put("modes/cmyk.jpg", _jpeg(Image.fromarray(gh).convert("CMYK")), "ok")
    g16 = (np.asarray(Image.fromarray(ast).convert("L"), np.uint16) * 257)
    put("modes/gray16.png", _png(Image.fromarray(g16.astype(np.uint16))), "ok")
    put("modes/gray.jpg", _jpeg(Image.fromarray(gh).convert("L")), "ok")
    rgba = np.dstack([ast, np.full(ast.shape[:2], 255, np.uint8)])
    rgba[:40, :40, 3] = 0  # some transparency in a corner
    put("modes/rgba.png", _png(Image.fromarray(rgba, "RGBA")), "ok")
    put("modes/palette.png", _png(Image.fromarray(gh).quantize(256)), "ok")
    rotated = Image.fromarray(np.ascontiguousarray(np.rot90(gh, k=1)))  # stored sideways ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... with "rotate 90 CW to display"
    put("modes/exif_rotated.jpg", _jpeg(rotated, exif=exif.tobytes()), "ok")
    put("modes/UPPER.JPEG", _jpeg(ast), "ok")
    put("modes/png_named.jpg", _png(Image.fromarray(gh)), "ok")
    put("modes/face.webp", _webp(ast), "ok")
    put("modes/face.tif", _tiff(gh), "ok")
    put("modes/face.bmp", _bmp(ast), "ok")
    # names
    put("names/Zoë Ünïcode 名前.jpg", _jpeg(gh), "ok")
    put("names/with space.png", _png(Image.fromarray(ast)), "ok")
    put("names/many.dots.in.name.jpg", _jpeg(gh), "ok")
    # broken
    put("broken/empty.jpg", b"", "empty")
    full = _jpeg(ast)
    put("broken/truncated.jpg", full[: len(full) * 6 // 10], "decode_error")
    png = bytearray(_png(Image.fromarray(gh)))
    png[12:33] = b"\xde\xad\xbe\xef" * 5 + b"\x00"  # IHDR chunk garbled
    put("broken/corrupt.png", bytes(png), "decode_error")
    put("broken/text.jpg", b"this is not an image, just some text\n" * 10, "decode_error")
    (root / "broken").mkdir(parents=True, exist_ok=True)
    _huge_png(root / HUGE)
    exp[HUGE] = "too_large"
    # content
    put("scenes/coffee_no_face.jpg", _jpeg(_no_face()), "no_face")
    put(FORTY_FACES, _jpeg(_crowd(face_crop)), "ok")
    # not an image extension: ignored, never an input
    (root / "people" / "notes.txt").write_text("ignored: not an image extension\n")
    # symlink loop: loop/again -> .. (the zoo root)
    try:
        (root / "loop").mkdir(exist_ok=True)
        (root / "loop" / "again").symlink_to("..", target_is_directory=True)
        exp["loop/again"] = "symlink_loop"
    except (OSError, NotImplementedError):
        pass
    return exp


def _webp(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="WEBP", quality=90)
    return buf.getvalue()


def _tiff(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="TIFF")
    return buf.getvalue()


def _bmp(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="BMP")
    return buf.getvalue()


def parse_summary(text: str) -> dict:
    """The summary table a command prints (``maskkit.util.progress.print_summary``), parsed exactly.

    Returns ``{metric: value}`` for the top-level rows; a row with indented sub-rows maps to
    ``(value, {sub-metric: value})``. Values that are integers (``1,234``) become ``int``, others
    stay strings. Raises ``AssertionError`` when no table is found or a metric repeats.
    """
    rows: list[tuple[int, str, str]] = []
    for line in text.splitlines():
        if not line.startswith("\u2502"):  # the table body's vertical bar
            continue
        cells = line.split("\u2502")
        assert len(cells) == 4, line
        key, val = cells[1].rstrip(), cells[2].strip()
        indent = len(key) - len(key.lstrip(" ")) - 1
        rows.append((indent, key.strip(), val))
    assert rows, f"no summary table in: {text[-500:]}"

    def num(v: str):
        return int(v.replace(",", "")) if v.replace(",", "").lstrip("-").isdigit() else v

    out: dict = {}
    parent = None
    for indent, key, val in rows:
        if indent == 0:
            assert key not in out, f"metric {key!r} printed twice"
            out[key] = num(val)
            parent = key
        else:
            assert parent is not None, key
            head = out[parent]
            if not isinstance(head, tuple):
                head = out[parent] = (head, {})
            assert key not in head[1], f"metric {parent}/{key} printed twice"
            head[1][key] = num(val)
    return out
