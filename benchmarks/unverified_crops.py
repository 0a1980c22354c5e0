"""Crops the ``--aligned`` check keeps ``unverified``: real ones against shifted and rotated copies.

``maskkit.face.crop_check.check_aligned_crop`` keeps a crop in which a face is found but whose
points cannot be checked. This measures, for the tilt rule of
``maskkit.pipeline.unverified.crop_failure`` (and a vertical-position rule left to the check):

* every celeb-aligned crop (2,223, all must be kept): the outcome counts, and for the unverified
  ones the eye-to-mouth axis tilt of the fit in the aligned box (``axis_tilt``) and how many the
  tilt rule would reject (must be 0);
* every 10th celeb crop (and the astronaut's and grace_hopper's ArcFace crops) shifted by 20-25 px
  in 8 directions or rotated by +-35 degrees (a tester's "not aligned" crops): how many the check
  keeps unverified and how many of those the rule rejects;
* with ``--detected``: the vertical offset from the template's centre of the 5 points fitted in
  the face the check detects (``find_face_in_crop``; about 0.3 s more per unverified crop).

Usage:
    OMP_NUM_THREADS=1 python benchmarks/unverified_crops.py [--data ../shared/data] [--step 10] [--detected]
"""
from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np

from maskkit.face.align import align_face, arcface_template, five_points
from maskkit.face.detect import make_detector
from maskkit.face.crop_check import check_aligned_crop, find_face_in_crop
from maskkit.face.fit_check import check_landmarks
from maskkit.io.image_io import load_image
from maskkit.pipeline.unverified import UNVERIFIED_MAX_TILT, axis_tilt, crop_failure

REPO = Path(__file__).resolve().parents[1]
SHIFTS = ((20, 0), (-20, 0), (25, 0), (-25, 0), (0, 20), (0, -20), (20, 20), (-20, -20))


def shifted(rgb: np.ndarray, dx: int, dy: int) -> np.ndarray:
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(rgb, m, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def rotated(rgb: np.ndarray, deg: float) -> np.ndarray:
    m = cv2.getRotationMatrix2D((56, 56), deg, 1.0)
    return cv2.warpAffine(rgb, m, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def copies(rgb: np.ndarray):
    for dx, dy in SHIFTS:
        yield ("shift" if dy == 0 else "shift (vertical)"), shifted(rgb, dx, dy)
    for deg in (35, -35):
        yield "rotated 35", rotated(rgb, deg)


def dependency_crops() -> list[np.ndarray]:
    from PIL import Image
    import matplotlib.cbook as cbook
    from skimage import data as skdata

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        grace = np.asarray(Image.open(f).convert("RGB"))
    hog = make_detector("hog")
    return [align_face(im, max(hog.detect(im), key=lambda f: f.area).landmarks68, (112, 112)).image
            for im in (skdata.astronaut(), grace)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--step", type=int, default=10, help="copies of every N-th celeb crop")
    ap.add_argument("--detected", action="store_true", help="also the detected fit's vertical offset")
    args = ap.parse_args()
    celeb = sorted((args.data / "celeb-aligned").rglob("*.jpg"))
    centre_y = float(np.asarray(arcface_template((112, 112)))[:, 1].mean())
    outcomes: dict[str, Counter] = defaultdict(Counter)
    tilts: dict[str, list] = defaultdict(list)
    dys: dict[str, list] = defaultdict(list)
    secs: dict[str, float] = Counter()

    def run(group: str, rgb: np.ndarray) -> None:
        t0 = time.perf_counter()
        c = check_aligned_crop(rgb)
        secs[group] += time.perf_counter() - t0
        if not c.ok:
            outcomes[group][c.reason] += 1
            return
        outcomes[group][f"ok/{c.how}"] += 1
        if c.how != "unverified":
            return
        tilts[group].append(axis_tilt(c.landmarks68))
        if crop_failure(c) is not None:
            outcomes[group]["unverified rejected by tilt"] += 1
        if args.detected:
            found = find_face_in_crop(c.image)
            if found is not None:
                fit = check_landmarks(c.image, found[0], search=())
                if fit.landmarks68 is not None:
                    dys[group].append(float(five_points(fit.landmarks68)[:, 1].mean()) - centre_y)

    for p in celeb:
        run("celeb-aligned (keep all)", load_image(p))
    for p in celeb[::args.step]:
        for kind, rgb in copies(load_image(p)):
            run(f"celeb copies: {kind}", rgb)
    for a in dependency_crops():
        for kind, rgb in copies(a):
            run(f"astronaut/grace copies: {kind}", rgb)

    print(f"tilt limit {UNVERIFIED_MAX_TILT:g} deg")
    print(f"{'group':<40}{'n':>6}{'s/crop':>8}  outcomes")
    for g, cnt in outcomes.items():
        n = sum(v for k, v in cnt.items() if k != "unverified rejected by tilt")
        print(f"{g:<40}{n:>6}{secs[g] / max(n, 1):>8.3f}  " + ", ".join(f"{k} {v}" for k, v in sorted(cnt.items())))
    print("\n|tilt| of unverified crops (deg): min / median / max")
    for g, t in tilts.items():
        a = np.abs(t)
        print(f"  {g:<40}{len(a):>5}  {a.min():6.1f} {np.median(a):6.1f} {a.max():6.1f}")
    if args.detected:
        print("\nvertical offset (px) of the detected face's 5 points from the template's centre: min / max, "
              "beyond +-20")
        for g, d in dys.items():
            d = np.asarray(d)
            print(f"  {g:<40}{len(d):>5}  {d.min():6.1f} {d.max():6.1f}  {int((np.abs(d) > 20).sum())}")


if __name__ == "__main__":
    main()
