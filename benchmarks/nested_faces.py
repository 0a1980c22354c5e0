"""Faces inside faces: the margin of ``maskkit.face.selection.HOLDS_FACE``.

For every image of the given sets and every detector, ``find_faces(detector, rgb, "all")``
checks every face; for every pair of faces that passed the landmark check (or failed it only
because it holds the other) it prints the share of the smaller face's checked box
(:func:`maskkit.face.selection.final_box`) inside the larger face's detection box, largest first,
with the ratio of their checked boxes' areas and the detector's acceptance route of each
(``keypoints`` / ``fixed_point``). Pairs at or above ``HOLDS_FACE`` whose larger face is at least
``HOLDS_FACE_AREA`` times the smaller are the nested ones the rule rejects (the larger face);
the rest are faces side by side. View the nested ones with ``--sheet PNG`` (both faces' landmarks drawn, the
rejected one in red).

Usage:
    OMP_NUM_THREADS=1 nice python benchmarks/nested_faces.py [--data ../shared/data] [--sheet nested.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from maskkit.face.detect import make_detector
from maskkit.face.selection import HOLDS_FACE, HOLDS_FACE_AREA, final_box, find_faces
from _images import readable_images

REPO = Path(__file__).resolve().parents[1]
SETS = (("real-masked", ("blazeface",)), ("photos", ("blazeface", "hog")), ("lfw-johns", ("blazeface", "hog")))


def _area(b) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _share(outer, inner) -> float:
    cut = (max(outer[0], inner[0]), max(outer[1], inner[1]), min(outer[2], inner[2]), min(outer[3], inner[3]))
    return _area(cut) / max(_area(inner), 1e-9)


def pairs_of(faces, shape):
    """``(share, larger, smaller)`` for every pair of faces, larger by checked box."""
    out = []
    for i, f in enumerate(faces):
        for g in faces[i + 1:]:
            big, small = (f, g) if _area(final_box(f, shape)) >= _area(final_box(g, shape)) else (g, f)
            out.append((_share(big.box, final_box(small, shape)), big, small))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--sheet", type=Path, help="PNG of the nested pairs")
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data} not found (pass --data)")
    rows, nested = [], []
    for name, backends in SETS:
        root = args.data / name
        if not root.is_dir():
            print(f"skipped {name}: {root} not found")
            continue
        for backend in backends:
            det = make_detector(backend)
            n_img = n_faces = 0
            for rel, rgb in readable_images(root):
                n_img += 1
                faces = [f for f in find_faces(det, rgb, "all")
                         if f.fit.ok or f.fit.detail.startswith("holds another face")]
                n_faces += len(faces)
                for share, big, small in pairs_of(faces, rgb.shape):
                    ratio = _area(final_box(big, rgb.shape)) / max(_area(final_box(small, rgb.shape)), 1e-9)
                    row = (share, f"{name}/{rel}", backend, big, small, ratio)
                    rows.append(row)
                    if share >= HOLDS_FACE and ratio >= HOLDS_FACE_AREA:
                        nested.append((rgb, row))
            print(f"{name:<12} {backend:<10} {n_img:>4} images, {n_faces:>4} faces")
    rows.sort(key=lambda r: -r[0])
    print(f"\nHOLDS_FACE = {HOLDS_FACE}, HOLDS_FACE_AREA = {HOLDS_FACE_AREA}; {len(rows)} pairs of faces; the "
          "largest shares (smaller face's checked box inside the larger's detection box):")
    print(f"{'share':>6} {'area':>6}  {'image':<28}{'detector':<11}{'larger (route, px)':<26}smaller (route, px)")
    for share, rel, backend, big, small, ratio in rows[:12]:
        def desc(f):
            b = final_box(f, (10 ** 6, 10 ** 6))
            return f"{f.fit.method if f.fit.ok else 'rejected'}, {b[2] - b[0]:.0f}"
        print(f"{share:6.3f} {ratio:5.1f}x  {rel:<28}{backend:<11}{desc(big):<26}{desc(small)}")
    nest = [r for r in rows if r[0] >= HOLDS_FACE and r[5] >= HOLDS_FACE_AREA]
    side = [r for r in rows if not (r[0] >= HOLDS_FACE and r[5] >= HOLDS_FACE_AREA)]
    if side:
        top = max(side, key=lambda r: r[0])
        print(f"\nside by side: share at most {top[0]:.3f} (margin {HOLDS_FACE - top[0]:.3f}; that pair {top[5]:.1f}x); "
              f"pairs sharing over 0.1: at most {max([r[5] for r in side if r[0] > 0.1] or [0]):.1f}x")
    if nest:
        print(f"nested: share at least {min(r[0] for r in nest):.3f} (margin {min(r[0] for r in nest) - HOLDS_FACE:.3f}), "
              f"area at least {min(r[5] for r in nest):.1f}x; {len(nest)} larger faces rejected")
    if args.sheet and nested:
        _sheet(nested, args.sheet)
        print(f"sheet: {args.sheet}")


def _sheet(nested, path: Path, tile: int = 320) -> None:
    from PIL import Image, ImageDraw

    tiles = []
    for rgb, (share, rel, backend, big, small, _) in nested:
        b = np.array(big.box, float)
        c, s = (b[:2] + b[2:]) / 2, 0.75 * float(max(b[2:] - b[:2]))
        x0, y0 = c - s
        k = tile / (2 * s)
        im = Image.fromarray(rgb).crop((int(x0), int(y0), int(x0 + 2 * s), int(y0 + 2 * s))).resize((tile, tile))
        d = ImageDraw.Draw(im)
        for f, col in ((big, (255, 0, 0)), (small, (0, 255, 0))):
            for x, y in np.asarray(f.landmarks68):
                X, Y = (x - int(x0)) * k, (y - int(y0)) * k
                d.ellipse((X - 2, Y - 2, X + 2, Y + 2), fill=col)
        d.text((4, 4), f"{rel} {backend} {share:.2f}", fill=(255, 255, 0))
        tiles.append(im)
    sheet = Image.new("RGB", (tile * len(tiles), tile))
    for i, t in enumerate(tiles):
        sheet.paste(t, (i * tile, 0))
    sheet.save(path)


if __name__ == "__main__":
    main()
