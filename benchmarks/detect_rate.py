"""Detection rate of each backend on real masked faces (../shared/data/real-masked), and whether
the defaults keep each portrait's subject.

Part 1, per backend over real-masked: images with >= 1 face box (``found``), images with >= 1
face whose 68 landmarks pass the landmark check (``accepted``, ``find_faces(..., "all")``; the
faces a command would use), faces found, and seconds per image (1 process; timings are noisy
on a shared machine). Also the faces found on photos/dogs.jpg (no human face).

Part 2 (``--subjects``): on the single-face portraits (obama*.jpg, biden.jpg, einstein.jpg,
breakingbad.jpg, Tom_Cruise_avp_2014_4.jpg) with the commands' default detector (HOG, upsample
1), is the subject the face ``--faces largest`` keeps (align, synth) and among ``--faces all``
(mask)? The subject is the face at the ground-truth eyes (``photos/*.pts``) or, without a .pts
file, the only face there.

``--before`` runs the path as it was before issue 12 §6-§7: no HOG second look, no landmark
check, no BlazeFace padded retry.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/detect_rate.py [--data ../shared/data]
        [--backends hog,cnn,blazeface,fan] [--limit N] [--before] [--subjects] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from maskkit.face.detect import make_detector
from maskkit.face.models import DetectorUnavailable
from maskkit.face.selection import find_faces
from maskkit.io.image_io import ImageError, load_image
from maskkit.io.sources import iter_sources

REPO = Path(__file__).resolve().parents[1]
PORTRAITS = ("obama", "obama2", "obama3", "biden", "einstein", "breakingbad", "Tom_Cruise_avp_2014_4")
#: the landmark check and the padded retry came with these options (``--before`` turns them off)
BEFORE = {"hog": {"second_look": 0}, "blazeface": {"pad_retry": False}}


def accepted(det, rgb, before: bool) -> int:
    if before:
        return len(det.detect_boxes(rgb))
    return sum(1 for f in find_faces(det, rgb, "all") if f.fit is None or f.fit.ok)


def read_pts(path: Path) -> np.ndarray:
    return np.array(path.read_text().split("{")[1].split("}")[0].split(), float).reshape(-1, 2) - 1.0


def subjects(data: Path, before: bool) -> None:
    det = make_detector("hog", **(BEFORE["hog"] if before else {}))
    print(f"\nportrait subjects, default detector {det!r}")
    print(f"{'photo':<28}{'--faces largest':>18}{'--faces all':>14}")
    for name in PORTRAITS:
        p = data / "photos" / f"{name}.jpg"
        if not p.is_file():
            continue
        rgb = load_image(p)
        pts = p.with_suffix(".pts")
        if pts.is_file():
            centre = read_pts(pts)[36:48].mean(0)
        else:
            boxes = det.detect_boxes(rgb)
            b = boxes[0][0] if len(boxes) == 1 else None
            centre = None if b is None else np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])

        def has_subject(faces) -> bool:
            return centre is not None and any(
                f[0][0] <= centre[0] <= f[0][2] and f[0][1] <= centre[1] <= f[0][3] and f[1] for f in faces)

        out = []
        for policy in ("largest", "all"):
            if before:
                from maskkit.face.base import Face
                from maskkit.face.selection import select_faces

                cands = [Face(tuple(b), s, None) for b, s, _ in det.detect_boxes(rgb)]
                faces = [(f.box, True) for f in select_faces(cands, policy, rgb.shape)]
            else:
                faces = [(f.box, f.fit is None or f.fit.ok) for f in find_faces(det, rgb, policy)]
            out.append("subject" if has_subject(faces) else "MISSED")
        print(f"{name:<28}{out[0]:>18}{out[1]:>14}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--backends", default="hog,cnn,blazeface,fan")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images (0 = all)")
    ap.add_argument("--before", action="store_true", help="the path before the second look / check / padded retry")
    ap.add_argument("--subjects", action="store_true", help="also check the portraits' subjects")
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
    print(f"{'backend':<10} {'found':>7} {'accepted':>9} {'of':>5} {'rate':>7} {'acc.rate':>9} {'faces':>6} "
          f"{'s/img':>7}  dogs.jpg faces")
    for name in args.backends.split(","):
        if not name:
            continue
        try:
            det = make_detector(name, **(BEFORE.get(name, {}) if args.before else {}))
        except DetectorUnavailable as exc:
            print(f"{name:<10} unavailable: {exc}")
            results[name] = {"unavailable": str(exc)}
            continue
        found = faces = acc = 0
        missed = []
        t0 = time.perf_counter()
        for rel, rgb in imgs:
            n = accepted(det, rgb, args.before)
            acc += n > 0
            if n == 0:
                missed.append(rel)
        dt = (time.perf_counter() - t0) / max(1, len(imgs))
        for _, rgb in imgs:
            n = len(det.detect_boxes(rgb))
            found += n > 0
            faces += n
        fp = len(det.detect_boxes(load_image(dogs))) if dogs.is_file() else None
        rate, arate = found / max(1, len(imgs)), acc / max(1, len(imgs))
        results[name] = {"found": found, "accepted": acc, "images": len(imgs), "rate": rate, "accepted_rate": arate,
                         "faces": faces, "s_per_img": dt, "dogs_faces": fp, "missed": missed}
        print(f"{name:<10} {found:>7} {acc:>9} {len(imgs):>5} {rate:>7.1%} {arate:>9.1%} {faces:>6} {dt:>7.3f}  {fp}")
    if args.subjects:
        subjects(args.data, args.before)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
