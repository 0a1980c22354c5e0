"""The aligned-crop check (``maskkit.face.crop_check.check_aligned_crop``) on real aligned crops and
on crops that are not aligned faces.

* kept: ``celeb-aligned`` (2,223 ArcFace crops; every one must be kept), plus the ArcFace crops
  of astronaut and grace_hopper made by ``maskkit.face.align``;
* rejected: blank and noise images, crops of ``photos/dogs.jpg``, the dog photo itself
  (900x916), lfw-johns crops resized to 112 (loose, not on the template), loose crops (1.2x to
  3x the face box) of astronaut and grace_hopper, and celeb crops shifted by 20 px, shrunk to
  half or 3/4 scale, rotated by 30, 45, 90 and 180 degrees (every 100th celeb crop).

Prints, per group, the counts of each outcome (``ok/how`` or the failure reason), the seconds
per crop and the CPU-seconds per crop of this process. ``--save`` writes every crop's verdict
(outcome, sha1 of the returned landmarks' bytes) as JSON lines; ``--compare`` checks the verdicts
against such a file and lists every crop whose outcome or landmarks differ.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/crop_check.py [--data ../shared/data] [--celeb-step 1]
        [--save verdicts.jsonl] [--compare baseline.jsonl]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np

from maskkit.face.align import align_face
from maskkit.face.detect import make_detector
from maskkit.face.crop_check import check_aligned_crop
from maskkit.io.image_io import load_image

REPO = Path(__file__).resolve().parents[1]


def rotated(rgb: np.ndarray, deg: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
    return cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def negatives(data: Path, celeb: list[Path]):
    from PIL import Image
    import matplotlib.cbook as cbook
    from skimage import data as skdata

    rng = np.random.default_rng(0)
    yield "blank/noise", np.full((112, 112, 3), 255, np.uint8)
    yield "blank/noise", np.full((112, 112, 3), 128, np.uint8)
    yield "blank/noise", rng.integers(0, 256, (112, 112, 3)).astype(np.uint8)
    yield "blank/noise", cv2.GaussianBlur(rng.integers(0, 256, (112, 112, 3)).astype(np.uint8), (9, 9), 3)
    dogs_path = data / "photos" / "dogs.jpg"
    if dogs_path.is_file():
        dogs = load_image(dogs_path)
        yield "dog photo (900x916)", dogs
        for x, y, s in ((167, 614, 156), (726, 727, 76), (100, 100, 400), (400, 300, 300), (500, 500, 300)):
            yield "dog crops", cv2.resize(dogs[y:y + s, x:x + s], (112, 112), interpolation=cv2.INTER_AREA)
    for p in sorted((data / "lfw-johns").rglob("*.jpg")):
        yield "lfw-johns resized", cv2.resize(load_image(p), (112, 112), interpolation=cv2.INTER_AREA)
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        grace = np.asarray(Image.open(f).convert("RGB"))
    hog = make_detector("hog")
    for im in (skdata.astronaut(), grace):
        face = hog.detect(im)[0]
        yield "dependency faces aligned (keep)", align_face(im, face.landmarks68, 112).image
        x0, y0, x1, y1 = face.box
        cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0
        for m in (1.2, 1.6, 2.0, 2.5, 3.0):
            h = side * m / 2
            c = im[int(max(0, cy - h)):int(cy + h), int(max(0, cx - h)):int(cx + h)]
            yield "dependency faces loose", cv2.resize(c, (112, 112), interpolation=cv2.INTER_AREA)
    for p in celeb[::100]:
        im = load_image(p)
        yield "celeb shifted 20px", np.ascontiguousarray(np.pad(im, ((0, 0), (20, 0), (0, 0)), mode="edge")[:, :112])
        for k, pad in (("half", 56), ("3/4", 18)):
            yield f"celeb {k} scale", cv2.resize(np.pad(im, ((pad, pad), (pad, pad), (0, 0)), mode="edge"), (112, 112),
                                                 interpolation=cv2.INTER_AREA)
        for deg in (30, 45, 90, 180):
            yield f"celeb rotated {deg}", rotated(im, deg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--celeb-step", type=int, default=1, help="check every N-th celeb crop (1 = all)")
    ap.add_argument("--save", type=Path, default=None, help="write every crop's verdict here (JSON lines)")
    ap.add_argument("--compare", type=Path, default=None, help="compare every crop's verdict with this --save file")
    args = ap.parse_args()
    celeb = sorted((args.data / "celeb-aligned").rglob("*.jpg"))
    groups: dict[str, Counter] = defaultdict(Counter)
    secs: dict[str, list] = defaultdict(list)
    cpus: dict[str, list] = defaultdict(list)
    verdicts: list[dict] = []

    def run(group, rgb, name):
        t0, c0 = time.perf_counter(), time.process_time()
        c = check_aligned_crop(rgb)
        cpus[group].append(time.process_time() - c0)
        secs[group].append(time.perf_counter() - t0)
        outcome = f"ok/{c.how}" if c.ok else c.reason
        groups[group][outcome] += 1
        lm = None if c.landmarks68 is None else hashlib.sha1(np.ascontiguousarray(c.landmarks68).tobytes()).hexdigest()
        verdicts.append({"group": group, "crop": name, "outcome": outcome, "landmarks_sha1": lm,
                         "rms": c.rms, "spread": c.spread, "cpu_s": round(cpus[group][-1], 4)})

    for p in celeb[::args.celeb_step]:
        run("celeb-aligned (keep)", load_image(p), str(p.relative_to(args.data)))
    seen: Counter = Counter()
    for group, rgb in negatives(args.data, celeb):
        run(group, rgb, f"{group}#{seen[group]}")
        seen[group] += 1
    print(f"{'group':<34}{'n':>6}{'s/crop':>8}{'cpu-s':>8}  outcomes")
    for g, cnt in groups.items():
        print(f"{g:<34}{sum(cnt.values()):>6}{np.mean(secs[g]):>8.3f}{np.mean(cpus[g]):>8.4f}  "
              + ", ".join(f"{k} {v}" for k, v in sorted(cnt.items())))
    total = sum(sum(v) for v in cpus.values())
    print(f"total: {len(verdicts)} crops, {total:.1f} CPU-s")
    if args.save:
        args.save.write_text("".join(json.dumps(v) + "\n" for v in verdicts))
    if args.compare:
        keys = ("outcome", "landmarks_sha1")  # what a verdict is; rms/spread/cpu_s are figures
        base = {v["crop"]: {k: v[k] for k in keys} for v in map(json.loads, args.compare.read_text().splitlines())}
        now = {v["crop"]: {k: v[k] for k in keys} for v in verdicts}
        diff = [c for c in sorted(set(base) | set(now)) if base.get(c) != now.get(c)]
        outcome_diff = [c for c in diff if (base.get(c) or {}).get("outcome") != (now.get(c) or {}).get("outcome")]
        print(f"compared with {args.compare}: {len(diff)} crops differ ({len(outcome_diff)} in outcome, "
              f"{len(diff) - len(outcome_diff)} in landmarks only)")
        for c in diff:
            print(f"  {c}: {base.get(c)} -> {now.get(c)}")


if __name__ == "__main__":
    main()
