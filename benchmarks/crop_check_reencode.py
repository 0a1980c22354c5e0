"""The aligned-crop check (``maskkit.face.crop_check.check_aligned_crop``) on re-encoded copies of
real aligned crops: does a crop the check keeps stay kept once re-saved?

Each ``celeb-aligned`` crop (2,223 ArcFace crops) is checked as it is and as a copy re-encoded by
each variant: JPEG q70, q80, q90, q95 (OpenCV, 4:2:0, what ``maskkit.io.image_io.encode_jpeg``
writes), JPEG q95 by PIL, PNG (lossless: must equal the original), and resize round trips
112->224->112 (``INTER_LINEAR`` up, ``INTER_AREA`` down) and 112->96->112 (``INTER_AREA`` down,
``INTER_LINEAR`` up). Per variant it prints the counts of each outcome, how many crops kept as
they are flip to a rejection, and, over the crops kept as they are, the distribution (max, 99.9th
percentile) of the distance the decisive limit compares: the 5-point RMS (pixels at 112x112) of a
stable template fit (``how == "template"``, limit ``CROP_MAX_RMS``) and of a detected face's
checked fit (``how == "detected"``, and the fits of ``not_aligned`` crops). ``benchmarks/crop_check.py``
measures the negatives (loose, shifted, scaled, rotated and non-face crops); its ``--save`` lines
carry the same ``rms`` for them.

Usage:
    OMP_NUM_THREADS=1 nice python benchmarks/crop_check_reencode.py [--data ../shared/data]
        [--variants jpeg95,png,...] [--limit N] [--step N] [--save rows.jsonl]
"""
from __future__ import annotations

import argparse
import io
import json
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from maskkit.face.crop_check import check_aligned_crop
from maskkit.io.image_io import decode_image, encode_jpeg, load_image

REPO = Path(__file__).resolve().parents[1]


def _cv_jpeg(q):
    return lambda rgb: decode_image(encode_jpeg(rgb, q))


def _pil(fmt, **kw):
    def f(rgb):
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=fmt, **kw)
        return decode_image(buf.getvalue())
    return f


def _round_trip(side, up, down):
    def f(rgb):
        h, w = rgb.shape[:2]
        mid = cv2.resize(rgb, (side, side), interpolation=up)
        return cv2.resize(mid, (w, h), interpolation=down)
    return f


#: name -> re-encoding of an RGB uint8 crop (returns the decoded copy)
VARIANTS = {
    "jpeg70": _cv_jpeg(70), "jpeg80": _cv_jpeg(80), "jpeg90": _cv_jpeg(90), "jpeg95": _cv_jpeg(95),
    "pil-jpeg95": _pil("JPEG", quality=95), "png": _pil("PNG"),
    "resize224": _round_trip(224, cv2.INTER_LINEAR, cv2.INTER_AREA),
    "resize96": _round_trip(96, cv2.INTER_AREA, cv2.INTER_LINEAR),
}


def outcome(c) -> str:
    return f"ok/{c.how}" if c.ok else f"{c.reason}/{c.how}"


def pct(v, q):
    return float(np.percentile(v, q)) if len(v) else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ",".join(VARIANTS))
    ap.add_argument("--limit", type=int, default=0, help="check at most N crops (0 = all)")
    ap.add_argument("--step", type=int, default=1, help="check every N-th crop (1 = all)")
    ap.add_argument("--only", type=Path, default=None, help="check only the crops (relative paths) listed in this file")
    ap.add_argument("--save", type=Path, default=None, help="write one JSON line per crop and variant here")
    args = ap.parse_args()
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    crops = sorted((args.data / "celeb-aligned").rglob("*.jpg"))[::args.step]
    if args.only:
        wanted = set(args.only.read_text().split())
        crops = [p for p in crops if str(p.relative_to(args.data / "celeb-aligned")) in wanted]
    if args.limit:
        crops = crops[:args.limit]
    rows = []
    t0 = time.perf_counter()
    for i, p in enumerate(crops):
        rgb = load_image(p)
        rel = str(p.relative_to(args.data / "celeb-aligned"))
        base = check_aligned_crop(rgb)
        rows.append({"crop": rel, "variant": "original", "outcome": outcome(base), "ok": base.ok, "how": base.how,
                     "rms": base.rms, "spread": base.spread})
        for v in names:
            c = check_aligned_crop(VARIANTS[v](rgb))
            rows.append({"crop": rel, "variant": v, "outcome": outcome(c), "ok": c.ok, "how": c.how, "rms": c.rms,
                         "spread": c.spread, "base_ok": base.ok})
        if (i + 1) % 100 == 0 or i + 1 == len(crops):
            el = time.perf_counter() - t0
            print(f"  {i + 1}/{len(crops)} crops, {(i + 1) / el:.1f} crops/s, ETA {el / (i + 1) * (len(crops) - i - 1):.0f} s",
                  flush=True)
    if args.save:
        args.save.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"\n{len(crops)} celeb-aligned crops; rms = 5-point RMS to the template, pixels at 112x112, "
          "over the crops kept as they are")
    print(f"{'variant':<12}{'kept':>6}{'flip':>6}  {'template rms max / 99.9%':>26}  {'detected rms max / 99.9%':>26}  outcomes")
    for v in ["original"] + names:
        rs = [r for r in rows if r["variant"] == v]
        kept = sum(r["ok"] for r in rs)
        flips = [r for r in rs if r.get("base_ok") and not r["ok"]]
        okbase = [r for r in rs if r.get("base_ok", r["ok"])]
        tr = [r["rms"] for r in okbase if r["how"] == "template" and r["rms"] is not None]
        dr = [r["rms"] for r in okbase if r["how"] == "detected" and r["rms"] is not None]
        cnt = Counter(r["outcome"] for r in rs)
        print(f"{v:<12}{kept:>6}{len(flips):>6}  {max(tr, default=float('nan')):>12.2f} / {pct(tr, 99.9):>5.2f}"
              f"      {max(dr, default=float('nan')):>12.2f} / {pct(dr, 99.9):>5.2f}      "
              + ", ".join(f"{k} {n}" for k, n in sorted(cnt.items())))
        for r in flips:
            print(f"    flip: {r['crop']} -> {r['outcome']} rms {r['rms']:.2f} spread {r['spread']:.3f}")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
