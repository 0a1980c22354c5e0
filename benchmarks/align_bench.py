"""Alignment throughput per process, with a stage breakdown.

Runs ``maskkit.pipeline.align.process_file`` + JPEG encoding in ONE process over:

* ``lfw-johns`` (55 150x150 face crops, HOG detection),
* ``celeb-aligned`` (2,223 112x112 ArcFace crops, ``--aligned``: no detection),
* ``photos`` (21 full photographs, HOG detection, the default ``--faces largest`` and all faces),

and prints img/s and the mean milliseconds per image in decode / detect / landmarks / warp /
encode. Anchor (same images, 1 core): MaskTheFace ~18 img/s on 112x112 crops, ~1 photo/s on
full photos. Timings on a shared machine are noisy.

Usage:
    python benchmarks/align_bench.py [--data ../shared/data] [--detector hog] [--limit N]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from maskkit.pipeline.align import AlignConfig, process_file
from maskkit.face.detect import make_detector
from maskkit.io.image_io import encode_jpeg
from maskkit.io.sources import iter_sources

REPO = Path(__file__).resolve().parents[1]
STAGES = ("decode", "detect", "landmarks", "warp", "encode")


def bench(name: str, root: Path, detector, cfg: AlignConfig, limit: int) -> dict:
    items = [it for it in iter_sources(root) if not it.error]
    if limit:
        items = items[:limit]
    totals = dict.fromkeys(STAGES, 0.0)
    faces = ok = 0
    t0 = time.perf_counter()
    for it in items:
        res = process_file(it, detector, cfg)
        for k, v in res.timings.items():
            totals[k] += v
        t1 = time.perf_counter()
        for al, _, _ in res.faces:
            encode_jpeg(al.image, 95)
        totals["encode"] += time.perf_counter() - t1
        ok += res.ok
        faces += len(res.faces)
    wall = time.perf_counter() - t0
    n = max(1, len(items))
    row = {"set": name, "images": len(items), "ok": ok, "faces": faces, "seconds": wall, "img_s": len(items) / wall}
    row.update({k: 1000 * totals[k] / n for k in STAGES})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--detector", default="hog")
    ap.add_argument("--limit", type=int, default=0, help="at most N images per set (0 = all)")
    args = ap.parse_args()
    det = make_detector(args.detector)
    runs = [
        ("lfw-johns", args.data / "lfw-johns", AlignConfig(src=None, out=None, faces="largest")),
        ("celeb-aligned --aligned", args.data / "celeb-aligned", AlignConfig(src=None, out=None, aligned=True)),
        ("photos (largest: default)", args.data / "photos", AlignConfig(src=None, out=None, faces="largest")),
        ("photos (all faces)", args.data / "photos", AlignConfig(src=None, out=None, faces="all")),
    ]
    print(f"detector={args.detector} ({det!r}), 1 process\n")
    hdr = f"{'set':<26}{'images':>7}{'ok':>6}{'faces':>7}{'img/s':>9}" + "".join(f"{s + ' ms':>13}" for s in STAGES)
    print(hdr)
    print("-" * len(hdr))
    for name, root, cfg in runs:
        if not root.is_dir():
            print(f"{name:<26} (absent: {root})")
            continue
        r = bench(name, root, det, cfg, args.limit)
        print(f"{r['set']:<26}{r['images']:>7}{r['ok']:>6}{r['faces']:>7}{r['img_s']:>9.1f}"
              + "".join(f"{r[s]:>13.2f}" for s in STAGES))
    print("\nanchor (MaskTheFace, 1 core): ~18 img/s on 112x112 crops, ~1 photo/s on full photos")


if __name__ == "__main__":
    main()
