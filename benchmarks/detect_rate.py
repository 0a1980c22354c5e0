"""Detection rate of each backend on real masked faces (../shared/data/real-masked).

Prints, per backend: images with >= 1 face, the rate, faces found, and seconds per image
(1 process; timings are noisy on a shared machine). Also checks false positives on
photos/dogs.jpg (no human face) when present.

Usage:
    python benchmarks/detect_rate.py [--data ../shared/data] [--backends hog,cnn,blazeface,fan]
                                     [--limit N] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from maskkit.face.detect import DetectorUnavailable, make_detector
from maskkit.io.image_io import ImageError, load_image
from maskkit.io.sources import iter_sources

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--backends", default="hog,cnn,blazeface,fan")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images (0 = all)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    root = args.data / "real-masked"
    if not root.is_dir():
        raise SystemExit(f"{root} not found (pass --data)")
    items = [it for it in iter_sources(root) if not it.error]
    if args.limit:
        items = items[: args.limit]
    imgs = []
    for it in items:
        try:
            imgs.append((it.rel, load_image(it.path)))
        except ImageError as exc:
            print(f"skip {it.rel}: {exc}")
    dogs = args.data / "photos" / "dogs.jpg"
    results = {}
    print(f"{'backend':<10} {'found':>7} {'of':>5} {'rate':>7} {'faces':>6} {'s/img':>7}  dogs.jpg faces")
    for name in args.backends.split(","):
        try:
            det = make_detector(name)
        except DetectorUnavailable as exc:
            print(f"{name:<10} unavailable: {exc}")
            results[name] = {"unavailable": str(exc)}
            continue
        found = faces = 0
        t0 = time.perf_counter()
        for _, rgb in imgs:
            n = len(det.detect_boxes(rgb))
            found += n > 0
            faces += n
        dt = (time.perf_counter() - t0) / max(1, len(imgs))
        fp = len(det.detect_boxes(load_image(dogs))) if dogs.is_file() else None
        rate = found / max(1, len(imgs))
        results[name] = {"found": found, "images": len(imgs), "rate": rate, "faces": faces, "s_per_img": dt,
                         "dogs_faces": fp}
        print(f"{name:<10} {found:>7} {len(imgs):>5} {rate:>7.1%} {faces:>6} {dt:>7.3f}  {fp}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
