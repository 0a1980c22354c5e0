"""Mask renderer benchmark and coverage evaluation on real faces.

Speed (default): renders per second per process on 112x112 aligned crops with landmarks given
(landmarks are computed once, before timing; templates are loaded before timing)::

    python benchmarks/mask_bench.py --data ../shared/data [--n 2000] [--style random]

Coverage (``--coverage``): for every face of lfw-johns, celeb-aligned (all of it) and the
single-face photos, over all five styles, the fraction of faces whose mask covers landmarks
31-35, 48-67 and 8 (alpha >= 0.5, extending past the chin) and leaves 36-47 clear (alpha < 0.1);
faces with |yaw| >= 0.35 (side views) are reported separately::

    python benchmarks/mask_bench.py --data ../shared/data --coverage

Timings are wall-clock on whatever else the machine is doing: treat them as indicative.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

import numpy as np

SINGLE_PHOTOS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "einstein.jpg", "breakingbad.jpg",
                 "Tom_Cruise_avp_2014_4.jpg")


def _load(path):
    from maskkit.io.image_io import load_image

    return load_image(path)


def celeb_faces(data: Path, per_identity: int | None = None):
    """(name, rgb, lm68) for celeb-aligned crops (landmarks in the whole crop)."""
    from maskkit.face.landmarks import landmarks_in_box

    out = []
    for ident in sorted(os.listdir(data / "celeb-aligned")):
        files = sorted(glob.glob(str(data / "celeb-aligned" / ident / "*.jpg")),
                       key=lambda p: (len(os.path.basename(p)), p))
        if per_identity:
            files = files[:per_identity]
        for f in files:
            rgb = _load(f)
            out.append((f"celeb/{ident}/{os.path.basename(f)}", rgb, landmarks_in_box(rgb).astype(np.float64)))
    return out


def detected_faces(paths, upsample: int = 1):
    """(name, rgb, lm68) for the largest HOG face of each image (images without one are listed)."""
    from maskkit.face.detect import make_detector

    det = make_detector("hog", upsample=upsample)
    out, missed = [], []
    for p in paths:
        rgb = _load(p)
        faces = det.detect(rgb)
        if not faces:
            missed.append(str(p))
            continue
        f = max(faces, key=lambda f: f.area)
        out.append((str(p), rgb, np.asarray(f.landmarks68, np.float64)))
    return out, missed


def lfw_faces(data: Path):
    return detected_faces(sorted(glob.glob(str(data / "lfw-johns" / "*" / "*.jpg"))), upsample=1)


def photo_faces(data: Path):
    return detected_faces([data / "photos" / n for n in SINGLE_PHOTOS], upsample=1)


def coverage_table(faces, styles=None, seed: int = 0, renderer=None):
    """Per style: {n, ok, cannot_fit, fails: [(name, report)]}; ``faces`` from the loaders above."""
    from maskkit.render import STYLES, CannotFit, MaskRenderer, coverage_check

    renderer = renderer or MaskRenderer()
    styles = styles or STYLES
    table = {}
    for j, st in enumerate(styles):
        row = {"n": 0, "ok": 0, "cannot_fit": 0, "fails": []}
        for i, (name, rgb, lm) in enumerate(faces):
            row["n"] += 1
            try:
                res = renderer.render(rgb, lm, st, np.random.default_rng([seed, i, j]))
            except CannotFit as exc:
                row["cannot_fit"] += 1
                row["fails"].append((name, {"cannot_fit": exc.reason}))
                continue
            rep = coverage_check(res.alpha, lm)
            if rep["ok"]:
                row["ok"] += 1
            else:
                row["fails"].append((name, rep))
        table[st] = row
    return table


def bench(data: Path, n: int, style: str, per_identity: int) -> None:
    from maskkit.render import MaskRenderer

    faces = celeb_faces(data, per_identity)
    import cv2

    cv2.setNumThreads(1)  # one core per process
    r = MaskRenderer()
    rng = np.random.default_rng(0)
    for k in range(20):  # warm-up
        _, rgb, lm = faces[k % len(faces)]
        r.render(rgb, lm, style, rng)
    t0, c0 = time.perf_counter(), time.process_time()
    for k in range(n):
        _, rgb, lm = faces[k % len(faces)]
        r.render(rgb, lm, style, rng)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    print(f"renders/s per process (112x112, style={style}, {n} renders, {len(faces)} distinct faces): "
          f"{n / dt:.0f} wall ({1e3 * dt / n:.2f} ms/render), {n / dc:.0f} per CPU-second of this process")
    from maskkit.render import STYLES

    for st in STYLES:
        t0, c0 = time.perf_counter(), time.process_time()
        m = max(200, n // 5)
        for k in range(m):
            _, rgb, lm = faces[k % len(faces)]
            r.render(rgb, lm, st, rng)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        print(f"  {st:9s} {m / dt:7.0f} renders/s wall, {m / dc:7.0f} per CPU-second")


def coverage(data: Path, per_identity: int | None) -> None:
    from maskkit.render import yaw_estimate

    sets = {}
    lfw, lfw_missed = lfw_faces(data)
    sets["lfw-johns"] = lfw
    ph, ph_missed = photo_faces(data)
    sets["photos"] = ph
    sets["celeb-aligned"] = celeb_faces(data, per_identity)
    for miss in lfw_missed + ph_missed:
        print(f"no face detected (not evaluated): {miss}")
    allf = [f for v in sets.values() for f in v]
    side = [f for f in allf if abs(yaw_estimate(f[2])) >= 0.35]
    sets["side views (|yaw|>=0.35)"] = side
    for name, faces in sets.items():
        tab = coverage_table(faces)
        print(f"\n{name}: {len(faces)} faces")
        for st, row in tab.items():
            print(f"  {st:9s} pass {row['ok']}/{row['n']} = {100.0 * row['ok'] / max(row['n'], 1):6.2f}%"
                  f"  (cannot_fit {row['cannot_fit']})")
            for fname, rep in row["fails"][:3]:
                print(f"      fail {fname}: {rep}")
    print("\nside views:", ", ".join(f"{f[0]} (yaw {yaw_estimate(f[2]):+.2f})" for f in side[:20]),
          "..." if len(side) > 20 else "")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--style", default="random")
    ap.add_argument("--per-identity", type=int, default=20, help="celeb-aligned faces per identity (speed mode)")
    ap.add_argument("--coverage", action="store_true", help="coverage evaluation instead of speed")
    args = ap.parse_args(argv)
    if not (args.data / "celeb-aligned").exists():
        sys.exit(f"real-face data not found at {args.data} (pass --data)")
    if args.coverage:
        coverage(args.data, None)
    else:
        bench(args.data, args.n, args.style, args.per_identity)


if __name__ == "__main__":
    main()
