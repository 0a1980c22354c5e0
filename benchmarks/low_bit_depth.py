"""Faces in images of low bit depth: are they kept, with their 68 points where the colour
photo puts them?

Each face (obama, biden from ``photos/``; the dependency faces astronaut and grace_hopper) is
re-saved as: 1-bit dithered (``convert('1')``) and thresholded (``dither=NONE``); a palette of
2, 3, 4, 8, 16, 32 colours (``P<k>``, and ``P<k>dith`` Floyd-Steinberg dithered); grey posterized
to the same numbers of levels (``L<k>``, ``L<k>dith``). Each copy goes through PNG bytes and
:func:`maskkit.io.image_io.decode_image` (what ``align``/``mask``/``synth`` read) and
``find_faces(..., "all")``. For every face kept the scores are the eye error (larger eye-centre
distance from the colour photo's fit) and the mean distance of its 68 points from it, both
divided by the colour fit's inter-ocular distance (IOD); a kept face more than 1 IOD from the
colour face is another thing (``OTHER``).

``--raw`` reads the copies as they were read before the low-pass (``FEW_COLOURS = 0``).

Usage:
    OMP_NUM_THREADS=1 python benchmarks/low_bit_depth.py [--data ../shared/data] [--detector hog,blazeface] [--raw]
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image

from maskkit.face.detect import make_detector
from maskkit.face.selection import find_faces
from maskkit.io import image_io


def variants(im: Image.Image, levels=(2, 3, 4, 8, 16, 32)):
    """``{name: PIL image}`` of the low-bit-depth copies of the RGB image ``im``."""
    out = {"1dith": im.convert("1"), "1thr": im.convert("1", dither=Image.Dither.NONE)}
    grey = im.convert("L")
    for k in levels:
        out[f"P{k}"] = im.quantize(colors=k, dither=Image.Dither.NONE)
        out[f"P{k}dith"] = im.quantize(palette=out[f"P{k}"], dither=Image.Dither.FLOYDSTEINBERG)
        g = np.asarray(grey, np.float64)
        out[f"L{k}"] = Image.fromarray((np.round(g / 255 * (k - 1)) * (255 / (k - 1))).astype(np.uint8), "L")
        pal = Image.new("P", (1, 1))
        lv = [round(i * 255 / (k - 1)) for i in range(k)]
        pal.putpalette([v for x in lv for v in (x, x, x)] + [0] * (768 - 3 * k))
        out[f"L{k}dith"] = grey.convert("RGB").quantize(palette=pal, dither=Image.Dither.FLOYDSTEINBERG).convert("L")
    return out


def faces_of(data: Path | None) -> dict[str, Image.Image]:
    import matplotlib.cbook as cbook
    import skimage.data

    out = {}
    if data is not None and (data / "photos").is_dir():
        for n in ("obama", "biden"):
            out[n] = Image.open(data / "photos" / f"{n}.jpg").convert("RGB")
    out["astronaut"] = Image.fromarray(skimage.data.astronaut())
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        out["grace_hopper"] = Image.open(f).convert("RGB")
    return out


def read(im: Image.Image) -> np.ndarray:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return image_io.decode_image(buf.getvalue())


def eyes(lm: np.ndarray) -> np.ndarray:
    lm = np.asarray(lm, np.float64)
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0)])


def iod(lm: np.ndarray) -> float:
    return float(np.linalg.norm(lm[42:48].mean(0) - lm[36:42].mean(0)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--detector", default="hog,blazeface")
    ap.add_argument("--raw", action="store_true", help="no low-pass (as read before it)")
    a = ap.parse_args()
    if a.raw:
        image_io.FEW_COLOURS = 0
    worst = {}
    for dn in a.detector.split(","):
        det = make_detector(dn)
        for name, im in faces_of(a.data).items():
            ref_faces = [f for f in find_faces(det, read(im), "all") if f.fit is None or f.fit.ok]
            ref = max(ref_faces, key=lambda f: f.area).landmarks68.astype(np.float64)
            r_iod = iod(ref)
            for vn, v in variants(im).items():
                faces = find_faces(det, read(v), "all")
                cells, subject = [], "missed"
                for f in faces:
                    d = np.linalg.norm(f.landmarks68 - ref, axis=1) / r_iod
                    ok = f.fit is None or f.fit.ok
                    if d.mean() > 1.0:
                        cells.append("OTHER kept" if ok else "other rejected")
                        continue
                    eye = float(np.linalg.norm(eyes(f.landmarks68) - eyes(ref), axis=1).max() / r_iod)
                    subject = f"kept eye {eye:.3f} mean {d.mean():.3f}" if ok else f"REJECTED (eye {eye:.3f})"
                    if ok:
                        key = (dn, vn[:1] if vn[0] != "1" else vn, int(vn[1:].rstrip("dithr") or 0) if vn[0] != "1" else 2)
                        w = worst.get(key, (0.0, 0.0))
                        worst[key] = (max(w[0], eye), max(w[1], d.mean()))
                print(f"{dn:9s} {name:12s} {vn:8s} {subject:28s} {' '.join(cells)}", flush=True)
    print("\nworst eye error / mean point distance (IOD) of kept subjects:")
    for k in sorted(worst):
        print(" ", k, f"eye {worst[k][0]:.3f} mean {worst[k][1]:.3f}")


if __name__ == "__main__":
    main()
