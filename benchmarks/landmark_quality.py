"""Landmark quality under in-plane rotation: is each accepted fit on the face?

Rotates each portrait by 0, +-15, +-30, +-45, +-90 and 180 degrees (canvas grown to keep the
whole image), runs detection with every face kept (``find_faces(..., "all")``) and scores the
portrait's subject -- the detection whose box holds the centre of its ground-truth eyes:

* ``ok``        accepted, both eye centres within 10% of the inter-ocular distance (IOD);
* ``WRONG``     accepted, an eye centre further off (a tilted crop, a mask on the wrong place);
* ``rejected``  detected, landmark check failed (``bad_landmarks``);
* ``missed``    not detected (``no_face``).

Ground truth: ``photos/einstein.pts`` and ``photos/breakingbad.pts`` (iBUG, 1-based), rotated with
the image; for the other portraits (obama*.jpg, biden.jpg, Tom_Cruise_avp_2014_4.jpg, and the
dependency faces astronaut and grace_hopper) the upright fit of the *old* path (dlib HOG box +
68-point predictor, no check), which is correct on these upright faces. ``--lfw`` adds the 55
lfw-johns crops (upright old fit as reference). Other accepted detections (not the subject) are
counted too.

``--before`` runs the path as it was before the landmark check: no HOG second look, no check,
no BlazeFace keypoint de-rotation.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/landmark_quality.py [--data ../shared/data] [--detector hog]
        [--lfw] [--before] [--angles 0,15,-15,30,-30,45,-45,90,-90,180]
"""
from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np

from maskkit.face.detect import make_detector
from maskkit.face.landmarks import landmarks_in_box
from maskkit.face.selection import find_faces
from maskkit.io.image_io import load_image

REPO = Path(__file__).resolve().parents[1]
PORTRAITS = ("obama", "obama2", "obama3", "biden", "einstein", "breakingbad", "Tom_Cruise_avp_2014_4")
TOL = 0.10


def read_pts(path: Path) -> np.ndarray:
    body = path.read_text().split("{")[1].split("}")[0].split()
    return np.array(body, float).reshape(-1, 2) - 1.0  # iBUG .pts are 1-based


def eyes(lm: np.ndarray) -> np.ndarray:
    lm = np.asarray(lm, float)
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0)])


def eye_error(lm: np.ndarray, gt: np.ndarray) -> float:
    """Larger eye-centre distance over the ground truth's inter-ocular distance."""
    e, g = eyes(lm), eyes(gt)
    return float(np.linalg.norm(e - g, axis=1).max() / np.linalg.norm(g[1] - g[0]))


def rotate(rgb: np.ndarray, deg: float, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate counter-clockwise by ``deg`` about the centre on a canvas that holds it all."""
    h, w = rgb.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(h * s + w * c + 0.5), int(h * c + w * s + 0.5)
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    out = cv2.warpAffine(rgb, m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return out, np.asarray(pts, float) @ m[:, :2].T + m[:, 2]


def old_faces(det, rgb):
    """The path before the check: boxes, then the predictor in each box."""
    return [(b, True, landmarks_in_box(rgb, b)) for b, _, _ in det.detect_boxes(rgb)]


def new_faces(det, rgb):
    return [(f.box, f.fit is None or f.fit.ok, f.landmarks68) for f in find_faces(det, rgb, "all")]


def subjects(data: Path, lfw: bool) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from PIL import Image
    import matplotlib.cbook as cbook
    from skimage import data as skdata

    ref_det = make_detector("hog", second_look=0)

    def upright_ref(rgb):
        boxes = ref_det.detect_boxes(rgb)
        if not boxes:
            return None
        box = max(boxes, key=lambda b: (b[0][2] - b[0][0]))[0]
        return landmarks_in_box(rgb, box)

    out = []
    photos = data / "photos"
    for name in PORTRAITS:
        p = photos / f"{name}.jpg"
        if not p.is_file():
            continue
        rgb = load_image(p)
        pts = photos / f"{name}.pts"
        gt = read_pts(pts) if pts.is_file() else upright_ref(rgb)
        out.append((name, rgb, gt))
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        grace = np.asarray(Image.open(f).convert("RGB"))
    for name, rgb in (("astronaut", skdata.astronaut()), ("grace_hopper", grace)):
        out.append((name, rgb, upright_ref(rgb)))
    if lfw and (data / "lfw-johns").is_dir():
        for p in sorted((data / "lfw-johns").rglob("*.jpg")):
            rgb = load_image(p)
            ref = upright_ref(rgb)
            if ref is not None:
                out.append((f"lfw/{p.parent.name}/{p.stem}", rgb, ref))
    return [s for s in out if s[2] is not None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--detector", default="hog")
    ap.add_argument("--lfw", action="store_true", help="add the 55 lfw-johns crops")
    ap.add_argument("--before", action="store_true", help="the path before the landmark check")
    ap.add_argument("--angles", default="0,15,-15,30,-30,45,-45,90,-90,180")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    angles = [int(a) for a in args.angles.split(",")]
    opts = {"second_look": 0} if (args.before and args.detector == "hog") else {}
    det = make_detector(args.detector, **opts)
    run = old_faces if args.before else new_faces
    subs = subjects(args.data, args.lfw)
    table: dict[int, Counter] = defaultdict(Counter)
    wrong = []
    t0 = time.perf_counter()
    for name, rgb, gt in subs:
        for deg in angles:
            img, g = rotate(rgb, deg, gt)
            centre = eyes(g).mean(0)
            status = "missed"
            for box, ok, lm in run(det, img):
                x0, y0, x1, y1 = box
                if not (x0 <= centre[0] <= x1 and y0 <= centre[1] <= y1):
                    table[deg]["other accepted" if ok else "other rejected"] += 1
                    continue
                if not ok:
                    status = "rejected"
                    continue
                err = eye_error(lm, g)
                status = "ok" if err <= TOL else "WRONG"
                if err > TOL:
                    wrong.append(f"{name} at {deg:+d}: eye error {err:.2f} IOD")
            table[deg][status] += 1
            if args.verbose:
                print(f"{name:<28} {deg:+4d} {status}")
    secs = time.perf_counter() - t0
    mode = "before (no check)" if args.before else "after (second look + landmark check)"
    print(f"detector={args.detector}, {mode}, {len(subs)} subjects, eye tolerance {TOL:.2f} IOD, "
          f"{secs:.1f} s\n")
    cols = ("ok", "WRONG", "rejected", "missed", "other accepted", "other rejected")
    print(f"{'angle':>6}" + "".join(f"{c:>16}" for c in cols))
    for deg in angles:
        print(f"{deg:>+6d}" + "".join(f"{table[deg][c]:>16d}" for c in cols))
    total = sum((table[d] for d in angles), Counter())
    print(f"{'all':>6}" + "".join(f"{total[c]:>16d}" for c in cols))
    if wrong:
        print("\naccepted fits off the eyes:\n  " + "\n  ".join(wrong))


if __name__ == "__main__":
    main()
