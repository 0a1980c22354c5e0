"""Contact sheets of mask styles on real faces (``maskkit preview``).

Sources it understands:

* a folder of images (full photos or, with ``aligned=True``, ArcFace crops): faces are detected,
  landmarked, and every style is drawn on each face; rows are faces, columns the input and the
  styles;
* a shard set (FORMAT.md: ``manifest.json`` + ``*.tar``): its masked samples grouped by style
  (columns); a set without masked samples has its plain samples (with ``landmarks68``) masked in
  every style;
* ``maskkit mask`` output (``manifest.jsonl`` lines with ``params``): the masked faces grouped by
  style (columns) -- what was actually written.

The README sheet is rebuilt from dependency-shipped faces (scikit-image's astronaut and
matplotlib's grace_hopper.jpg) with::

    python -m maskkit.pipeline.preview --demo docs/mask_styles.png
"""
from __future__ import annotations

import argparse
import json
import logging
import tarfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from maskkit.render import STYLES, CannotFit, MaskRenderer

__all__ = ["face_crop", "styles_grid", "contact_sheet", "demo_images", "demo_faces", "write_demo", "load_source_faces", "preview"]

CELL = 160
_LABEL_H = 22


def face_crop(rgb: np.ndarray, lm: np.ndarray, size: int = CELL, zoom: float = 1.0) -> np.ndarray:
    """A square crop around a face (from its landmarks), resized to ``size``.

    The window is 1.45x the landmark extent, centred on the face, then kept inside the image:
    shifted away from the edges, and no larger than the image's short side. So an ArcFace crop
    (chin close to the bottom edge) or a face near a photo's border fills the cell with image
    pixels instead of a padded strip; only an image smaller than the window is still padded.
    """
    import cv2

    lm = np.asarray(lm, dtype=np.float64)
    h, w = rgb.shape[:2]
    c = np.array([0.5 * (lm[:, 0].min() + lm[:, 0].max()), 0.5 * (lm[27, 1] + lm[8, 1])])
    side = min(max(np.ptp(lm[:, 0]), np.ptp(lm[:, 1])) * 1.45 / zoom, float(min(h, w)))
    c = np.clip(c, side / 2, np.array([w, h]) - side / 2)
    s = size / max(side, 1e-6)
    m = np.array([[s, 0, size / 2 - s * c[0]], [0, s, size / 2 - s * c[1]]])
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return cv2.warpAffine(rgb, m, (size, size), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=(24, 24, 24))


def _label(cell: np.ndarray, text: str) -> np.ndarray:
    import cv2

    out = np.full((_LABEL_H, cell.shape[1], 3), 255, np.uint8)
    cv2.putText(out, text, (4, _LABEL_H - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (20, 20, 20), 1, cv2.LINE_AA)
    return out


def contact_sheet(rows: Sequence[Sequence[np.ndarray]], header: Optional[Sequence[str]] = None,
                  pad: int = 2) -> np.ndarray:
    """Tile equally sized RGB cells (rows x columns) into one image, with an optional header."""
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    H = len(rows) * (h + pad) + pad + (_LABEL_H if header else 0)
    W = ncol * (w + pad) + pad
    sheet = np.full((H, W, 3), 255, np.uint8)
    y = pad
    if header:
        for j, t in enumerate(header[:ncol]):
            sheet[0:_LABEL_H, pad + j * (w + pad): pad + j * (w + pad) + w] = _label(np.zeros((1, w, 3)), t)
        y = _LABEL_H
    for r in rows:
        for j, cell in enumerate(r):
            x = pad + j * (w + pad)
            sheet[y:y + h, x:x + w] = cell
        y += h + pad
    return sheet


def styles_grid(faces: Sequence[Tuple[np.ndarray, np.ndarray]], styles: Sequence[str] = STYLES, seed: int = 0,
                renderer: Optional[MaskRenderer] = None, size: int = CELL) -> Tuple[List[List[np.ndarray]], List[str]]:
    """Rows of cells: the face, then the face masked in each style (a failed fit shows the reason)."""
    import cv2

    renderer = renderer or MaskRenderer()
    rows = []
    for i, (rgb, lm) in enumerate(faces):
        row = [face_crop(rgb, lm, size)]
        for j, st in enumerate(styles):
            rng = np.random.default_rng([seed, i, j])
            try:
                res = renderer.render(rgb, lm, st, rng)
                cell = face_crop(res.image, lm, size)
            except CannotFit as exc:
                cell = (row[0] * 0.35).astype(np.uint8)
                cv2.putText(cell, exc.reason[:20], (4, size // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                            cv2.LINE_AA)
            row.append(cell)
        rows.append(row)
    return rows, ["face"] + list(styles)


def demo_images() -> Dict[str, np.ndarray]:
    """The dependency-shipped photos: scikit-image's astronaut and matplotlib's grace_hopper.jpg."""
    import matplotlib.cbook as cbook
    from PIL import Image
    from skimage import data

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = np.asarray(Image.open(f).convert("RGB"))
    return {"astronaut": np.ascontiguousarray(data.astronaut()), "grace_hopper": hopper}


def demo_faces() -> List[Tuple[np.ndarray, np.ndarray]]:
    """The dependency-shipped faces (:func:`demo_images`) with dlib landmarks."""
    from maskkit.face.detect import make_detector

    det = make_detector("hog")
    out = []
    for rgb in demo_images().values():
        faces = det.detect(rgb)
        if not faces:
            raise RuntimeError("no face found in a demo image")
        f = max(faces, key=lambda f: f.area)
        out.append((rgb, np.asarray(f.landmarks68, np.float64)))
    return out


def write_demo(path: Path, seeds: Sequence[int] = (0, 1, 2), size: int = CELL) -> Path:
    """Write the README contact sheet (all five styles on the demo faces, a few seeds each)."""
    from PIL import Image

    renderer = MaskRenderer()
    faces = demo_faces()
    rows: List[List[np.ndarray]] = []
    header: List[str] = []
    for s in seeds:
        r, header = styles_grid(faces, STYLES, seed=s, renderer=renderer, size=size)
        rows += r
    sheet = contact_sheet(rows, header)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path, format="PNG", optimize=False, compress_level=9)
    return path


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------
def load_source_faces(src: Path, n: int = 6, aligned: bool = False, detector: str = "hog",
                      styles: Sequence[str] = STYLES, left_out: Optional[Dict[str, int]] = None):
    """Classify ``src`` and collect what to show (for a shard set: see :func:`_shard_faces`).

    A folder of images is read in order until ``n`` faces are found; every file read that gives
    no face is counted in ``left_out`` (``{reason: files}``, when given) and said in one warning.

    Returns:
        ``("faces", [(rgb, lm68), ...])`` for images to mask in every style, or
        ``("masked", {style: [cell_rgb, ...]})`` for already masked faces.
    """
    src = Path(src)
    if src.is_dir() and (src / "manifest.json").exists() and list(src.glob("*.tar")):
        return _shard_faces(src, n, styles)
    if src.is_dir() and (src / "manifest.jsonl").exists():
        from maskkit.io.image_io import ImageError, load_image
        from maskkit.util.names import name_from_fields

        masked = {s: [] for s in STYLES}
        with open(src / "manifest.jsonl", encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                st = rec.get("style")
                if not rec.get("masked", True) or st not in masked or len(masked[st]) >= n or "out" not in rec:
                    continue
                rel = name_from_fields(rec, "out")  # out_bytes: a name that is not UTF-8
                try:
                    rgb = load_image(src / rel)
                except ImageError as exc:  # a file removed or damaged since `mask` wrote it
                    logging.getLogger(__name__).warning("preview: %s left out: %s", rec["out"], exc)
                    continue
                lm = rec.get("landmarks68")
                masked[st].append(face_crop(rgb, np.asarray(lm, np.float64)) if lm else _square(rgb))
        if any(masked.values()):
            return "masked", masked
    # a folder of images (or one image)
    from maskkit.face.detect import make_detector
    from maskkit.face.landmarks import landmarks_in_box
    from maskkit.io.image_io import ImageError, load_image
    from maskkit.io.sources import iter_sources

    det = None if aligned else make_detector(detector)
    faces = []
    skipped = left_out if left_out is not None else {}
    read = 0
    for item in iter_sources(src):
        read += 1
        if item.error:
            skipped[item.error] = skipped.get(item.error, 0) + 1
            continue
        try:
            rgb = load_image(item.path)
        except ImageError as exc:
            skipped[exc.reason] = skipped.get(exc.reason, 0) + 1
            continue
        if aligned:
            faces.append((rgb, landmarks_in_box(rgb).astype(np.float64)))
        else:
            found = sorted(det.detect(rgb), key=lambda f: -f.area)
            if not found:
                skipped["no_face"] = skipped.get("no_face", 0) + 1
            for f in found:
                faces.append((rgb, np.asarray(f.landmarks68, np.float64)))
                if len(faces) >= n:
                    break
        if len(faces) >= n:
            break
    if skipped:  # a sheet is a sample, but no file it read is dropped without a word
        logging.getLogger(__name__).warning(
            "preview: %d of the %d files read gave no face: %s", sum(skipped.values()), read,
            ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())))
    return "faces", faces


def _spread(k: int) -> List[int]:
    """``0..k-1`` coarse to fine (0, k/2, k/4, 3k/4, ...): any prefix covers the whole range."""
    order, seen, step = [], set(), 1 << max(0, (k - 1).bit_length())
    while step >= 1:
        for i in range(0, k, step):
            if i not in seen:
                seen.add(i)
                order.append(i)
        step //= 2
    return order


def _shard_faces(src: Path, n: int, styles: Sequence[str] = STYLES):
    """Faces of a shard set for the sheet, spread across identities.

    Up to ``n`` masked faces per style, each of another identity as long as the set has
    identities left (then faces of identities already shown), so a column is not ``n`` photos of
    the first identity. Shards are read coarse to fine over the set (:func:`_spread`: the first,
    the middle, the quarters, ...) and reading stops once every style has ``n`` identities. A set
    without masked samples gives up to ``n`` plain faces (with ``landmarks68``) the same way.
    """
    from maskkit.io.image_io import decode_image
    from maskkit.io.shards import read_manifest

    # a damaged manifest is ManifestError (one line naming it); a bare one (no shard list) is fine
    man = read_manifest(src, require=())
    names = [str(r.get("name")) for r in man.get("shards", []) if isinstance(r, dict)]
    paths = [src / nm for nm in names if (src / nm).is_file()] or sorted(src.glob("*.tar"))
    if man.get("num_masked", 1) != 0:
        got = _pick_across_identities(paths, n, [st for st in styles if st in STYLES])
        if any(got.values()):
            masked: Dict[str, List[np.ndarray]] = {st: [] for st in STYLES}
            for st, faces in got.items():
                for jpg, lm in faces:
                    rgb = decode_image(jpg)
                    masked[st].append(face_crop(rgb, np.asarray(lm, np.float64)) if lm else _square(rgb))
            return "masked", masked
    plain = _pick_across_identities(paths, n, [None])[None]
    return "faces", [(decode_image(jpg), np.asarray(lm, np.float64)) for jpg, lm in plain]


def _pick_across_identities(paths: List[Path], n: int, wanted: List[Optional[str]]) -> Dict:
    """``{style: [(jpg, landmarks68), ...]}`` (style None: plain faces with landmarks), up to
    ``n`` each: one per identity first, then repeats (see :func:`_shard_faces`)."""
    from maskkit.io.shards import iter_shard

    picked: Dict = {st: [] for st in wanted}
    spare: Dict = {st: [] for st in wanted}  # more faces of identities already picked
    seen: Dict = {st: set() for st in wanted}
    for k in _spread(len(paths)):
        try:
            for sample in iter_shard(paths[k]):
                meta = sample.get("json")
                if sample.get("jpg") is None or not isinstance(meta, dict):
                    continue
                st, lm = (meta.get("style") if meta.get("masked") else None), meta.get("landmarks68")
                if st not in picked or (st is None and not lm):
                    continue
                ident = meta.get("label", meta.get("identity"))
                if ident not in seen[st] and len(picked[st]) < n:
                    seen[st].add(ident)
                    picked[st].append((sample["jpg"], lm))
                elif len(spare[st]) < n:
                    spare[st].append((sample["jpg"], lm))
        except (tarfile.TarError, OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            # a truncated or garbage shard: one line naming it, as `maskkit stats` words it
            why = " ".join(str(exc).split())  # tarfile lists each method it tried on a line of its own
            raise ValueError(f"{paths[k]}: unreadable ({why}): the shard is damaged; `maskkit stats "
                             f"{paths[k].parent}` checks the whole set") from None
        if all(len(v) >= n for v in picked.values()):
            break
    return {st: picked[st] + spare[st][: n - len(picked[st])] for st in wanted}


def _square(rgb: np.ndarray, size: int = CELL) -> np.ndarray:
    import cv2

    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)


def check_out_file(out: Path) -> None:
    """Check that the file ``out`` can be written (its folder is created if needed).

    Raises:
        ValueError: a one-line reason (``out`` is a folder, its folder cannot be created or
            is not writable).
    """
    import os

    out = Path(out)
    if out.is_dir():
        raise ValueError(f"cannot write {out}: it is a folder")
    for parent in out.parents:  # the nearest existing ancestor must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"cannot write {out}: {parent} is not a folder")
            break
    probe = out.parent / f".{out.name}.{os.getpid()}.probe"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"cannot write {out}: {exc.strerror or exc}") from exc


def preview(src: Path, out: Path, styles: Sequence[str] = STYLES, n: int = 6, seed: int = 0,
            aligned: bool = False, detector: str = "hog") -> dict:
    """Build a styles x faces contact sheet PNG from ``src``; returns a small summary.

    Raises:
        ValueError: ``out`` cannot be written (checked first, before any face is loaded), or
            ``src`` holds no usable face.
    """
    from PIL import Image

    out = Path(out)
    check_out_file(out)
    left_out: Dict[str, int] = {}
    kind, data = load_source_faces(Path(src), n=n, aligned=aligned, detector=detector, styles=styles,
                                   left_out=left_out)
    if kind == "faces":
        if not data:
            raise ValueError(f"no faces found in {src}")
        rows, header = styles_grid(data, styles, seed=seed)
        n_faces = len(rows)
    else:
        cols = [s for s in styles if data.get(s)]
        if not cols:
            raise ValueError(f"no masked faces of styles {list(styles)} in {src}")
        depth = max(len(data[s]) for s in cols)
        blank = np.full((CELL, CELL, 3), 235, np.uint8)
        rows = [[data[s][i] if i < len(data[s]) else blank for s in cols] for i in range(depth)]
        header = cols
        n_faces = sum(len(data[s]) for s in cols)
    sheet = contact_sheet(rows, header)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sheet).save(out, format="PNG")
    except OSError as exc:
        raise ValueError(f"cannot write {out}: {exc.strerror or exc}") from exc
    return {"kind": kind, "faces": n_faces, "rows": len(rows), "columns": len(header), "out": str(out),
            **({"left_out": dict(sorted(left_out.items()))} if left_out else {})}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="mask-style contact sheets")
    ap.add_argument("src", nargs="?", type=Path, help="folder of images, shard set or mask output")
    ap.add_argument("-o", "--out", type=Path, default=Path("preview.png"))
    ap.add_argument("--demo", type=Path, default=None, help="write the README sheet from shipped faces to this path")
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.demo:
        print(write_demo(args.demo))
    elif args.src:
        print(json.dumps(preview(args.src, args.out, n=args.n, seed=args.seed)))
    else:
        ap.error("give SRC or --demo PATH")


if __name__ == "__main__":
    main()
