"""Right-mask rate per style, judged by an independent face fit (not maskkit's own landmarks).

For every ArcFace-aligned crop of ``celeb-aligned`` (2,223 faces, 12 identities), as
``maskkit synth --aligned --ratio 1.0`` would mask it:

1. maskkit's own path: the aligned-crop check (``maskkit.face.crop_check.check_aligned_crop``, which
   also fits dlib's 68 points), then ``MaskRenderer.render`` once per style (surgical, n95, kn95,
   cloth, gas) with a seeded generator per (face, style);
2. an independent judge: MediaPipe's face mesh (``benchmarks/facemesh.py``: another model, another
   point set) fitted to the *unmasked* crop. The mask is right when its alpha is at least
   :data:`COVER` at the nose tip (mesh 1), the nose wings (98, 327), the mouth corners and lip
   centres (61, 291, 0, 17) and the chin (152), and below :data:`SPARE` at every point of both
   eye contours (16 mesh points each). A point outside the crop (the chin of an aligned crop is
   often cut) is judged where the line from the nose tip to it leaves the crop (1 px inside);
   eye points outside the crop are not judged.

A face the crop check rejects or the renderer cannot fit (``CannotFit``) counts as a failure of
every style it fails for: the rate is right masks / all crops. Printed: per style the rate, the
failures by kind (``rejected``, ``cannot_fit:<reason>``, ``miss:<nose|mouth|chin|eyes>``), the
judge's margins (the lowest alpha at a covered point and the highest at an eye point, over the
right masks), and the same rate over the most turned faces (|yaw| of the mesh >= 30 degrees).

``--sheet DIR`` writes ``turned.png``: the 12 most turned faces (|yaw| from the mesh), unmasked
and in every style (3x, nearest neighbour, judged points that fail drawn in red), and
``failures.png`` with up to 48 failing (face, style) pairs.

Usage::

    nice python benchmarks/right_mask_rate.py [--data ../shared/data] [--cache /tmp/rmr.npz]
        [--step 1] [--sheet ../notes/issue18t]

Measured (2026-12-06, dlib landmarks through the aligned-crop check): 98.38-98.65 % per style
before issue 18's renderer changes (9 near-profiles ``jaw_misses_lip_line`` in every style, 16-22
masks touching an eye), 99.64-99.78 % after; of the 10 faces still failing, 7 have dlib points
off the face (more than 0.25 eye-to-mouth distances from the mesh's).

``--cache`` keeps the landmarks and mesh fits (keyed by file name, size and mtime) so reruns of a
renderer change take seconds a style rather than minutes; delete it after a change to the face
stage. ``--step k`` judges every k-th crop.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from facemesh import CHIN, LEFT_EYE, RIGHT_EYE, FaceMesh, head_pose  # noqa: E402

#: alpha a covered point needs / an eye point must stay below.
COVER = 0.5
SPARE = 0.1
JUDGE_COVER = {"nose": (1, 98, 327), "mouth": (61, 291, 0, 17), "chin": CHIN}
JUDGE_SPARE = {"eyes": RIGHT_EYE + LEFT_EYE}
TURNED_DEG = 30.0


def _sample(alpha: np.ndarray, pts: np.ndarray) -> np.ndarray:
    import cv2

    m = cv2.remap(alpha.astype(np.float32), pts[:, 0:1].astype(np.float32), pts[:, 1:2].astype(np.float32),
                  cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=np.nan)
    return m.ravel().astype(np.float64)


def _inside(p: np.ndarray, origin: np.ndarray, w: int, h: int) -> np.ndarray:
    """``p`` itself when inside the crop, else where the segment origin -> p leaves it (1 px inside)."""
    lo, hi = np.array([1.0, 1.0]), np.array([w - 2.0, h - 2.0])
    if np.all(p >= lo) and np.all(p <= hi):
        return p
    d = p - origin
    t = 1.0
    for k in range(2):
        if d[k] > 1e-9:
            t = min(t, (hi[k] - origin[k]) / d[k])
        elif d[k] < -1e-9:
            t = min(t, (lo[k] - origin[k]) / d[k])
    return origin + max(t, 0.0) * d


def judge(alpha: np.ndarray, mesh: np.ndarray) -> dict:
    """Judge a rendered mask's alpha (HxW) against the mesh (468, 3) of the unmasked face.

    Returns ``{"ok", "miss": [kinds], "cover_min", "spare_max"}``.
    """
    h, w = alpha.shape
    origin = mesh[1, :2]
    miss, cover_min, spare_max = [], 1.0, 0.0
    for kind, idx in JUDGE_COVER.items():
        pts = np.array([_inside(mesh[i, :2], origin, w, h) for i in idx])
        a = _sample(alpha, pts)
        a = np.where(np.isfinite(a), a, 0.0)
        cover_min = min(cover_min, float(a.min()))
        if a.min() < COVER:
            miss.append(kind)
    for kind, idx in JUDGE_SPARE.items():
        pts = mesh[list(idx), :2]
        a = _sample(alpha, pts)
        a = a[np.isfinite(a)]
        if a.size:
            spare_max = max(spare_max, float(a.max()))
            if a.max() >= SPARE:
                miss.append(kind)
    return {"ok": not miss, "miss": miss, "cover_min": cover_min, "spare_max": spare_max}


# ------------------------------------------------------------------------------------------
def _files(data: Path, step: int) -> list[str]:
    root = data / "celeb-aligned"
    out = []
    for ident in sorted(os.listdir(root)):
        fs = sorted(glob.glob(str(root / ident / "*.jpg")), key=lambda p: (len(os.path.basename(p)), p))
        out += fs
    return out[::step]


def _fits(files: list[str], cache: Path | None):
    """Per file: (rgb, lm68 or None, reject reason, mesh (468, 3), mesh score), cached by name/size/mtime."""
    from maskkit.face.crop_check import check_aligned_crop, crop_to_size
    from maskkit.io.image_io import load_image
    from maskkit.pipeline.unverified import crop_failure

    old = {}
    if cache is not None and cache.is_file():
        z = np.load(cache, allow_pickle=True)
        old = z["fits"].item()
    mesh = None
    out, new = [], {}
    t0 = time.perf_counter()
    for n, f in enumerate(files):
        st = os.stat(f)
        key = f"{f}|{st.st_size}|{st.st_mtime_ns}"
        rgb = load_image(f)
        rec = old.get(key)
        if rec is None:
            check = check_aligned_crop(rgb, (112, 112))
            failed = crop_failure(check)
            lm = None if failed else np.asarray(check.landmarks68, np.float64)
            if mesh is None:
                mesh = FaceMesh()
            rgb = crop_to_size(rgb, (112, 112))
            pts, score = mesh.fit(rgb)
            rec = (lm, failed[0] if failed else None, pts, score)
        else:
            rgb = crop_to_size(rgb, (112, 112))
        new[key] = rec
        out.append((f, rgb) + tuple(rec))
        if (n + 1) % 200 == 0:
            dt = time.perf_counter() - t0
            print(f"  fitted {n + 1}/{len(files)}  {(n + 1) / dt:.1f}/s", file=sys.stderr)
    if cache is not None:
        np.savez(cache, fits=np.array(new, dtype=object))
    return out


def evaluate(faces, seed: int = 0, styles=None):
    """Render every style on every face and judge it. Returns (rows, per-face results)."""
    from maskkit.render import STYLES, CannotFit, MaskRenderer

    ren = MaskRenderer()
    styles = styles or STYLES
    results = []  # (face index, style, outcome, MaskResult | None, judge | None)
    for i, (f, rgb, lm, rej, mesh, score) in enumerate(faces):
        for j, st in enumerate(styles):
            if lm is None:
                results.append((i, st, f"rejected:{rej}", None, None))
                continue
            try:
                res = ren.render(rgb, lm, st, np.random.default_rng([seed, i, j]))
            except CannotFit as exc:
                results.append((i, st, f"cannot_fit:{exc.reason}", None, None))
                continue
            jd = judge(res.alpha, mesh)
            results.append((i, st, "right" if jd["ok"] else "miss:" + "+".join(jd["miss"]), res, jd))
    return results


def report(faces, results, styles) -> None:
    yaw = np.array([head_pose(f[4])[0] for f in faces])
    turned = set(np.where(np.abs(yaw) >= TURNED_DEG)[0].tolist())
    print(f"\nceleb-aligned: {len(faces)} crops; mesh |yaw| >= {TURNED_DEG:g} deg: {len(turned)} crops; "
          f"mesh score < 0.5 on {sum(f[5] < 0.5 for f in faces)} crops")
    print(f"judge: alpha >= {COVER} at nose tip/wings, mouth, chin; < {SPARE} at both eye contours (mesh points)\n")
    print(f"{'style':9s} {'right':>11s} {'rate':>8s} {'turned':>9s}  cover_min  spare_max  failures")
    worst = 1.0
    for st in styles:
        rows = [r for r in results if r[1] == st]
        ok = [r for r in rows if r[2] == "right"]
        tr = [r for r in rows if r[0] in turned]
        tok = sum(r[2] == "right" for r in tr)
        fails = Counter(r[2] for r in rows if r[2] != "right")
        cmin = min((r[4]["cover_min"] for r in ok), default=float("nan"))
        smax = max((r[4]["spare_max"] for r in ok), default=float("nan"))
        rate = len(ok) / max(len(rows), 1)
        worst = min(worst, rate)
        print(f"{st:9s} {len(ok):5d}/{len(rows):<5d} {100 * rate:7.2f}% {100 * tok / max(len(tr), 1):8.1f}%"
              f"  {cmin:9.3f}  {smax:9.3f}  {dict(fails.most_common())}")
    print(f"\nworst style: {100 * worst:.2f}% right (target >= 99.5%)")


def sheets(faces, results, styles, out: Path) -> None:
    import cv2

    out.mkdir(parents=True, exist_ok=True)
    by = {(r[0], r[1]): r for r in results}
    yaw = np.array([head_pose(f[4])[0] for f in faces])
    pitch = np.array([head_pose(f[4])[1] for f in faces])
    S = 3

    def tile(img, label, res=None, mesh=None, bad=()):
        big = cv2.resize(img, (img.shape[1] * S, img.shape[0] * S), interpolation=cv2.INTER_CUBIC)
        if mesh is not None:
            for kind in bad:
                idx = JUDGE_COVER.get(kind) or JUDGE_SPARE.get(kind)
                for i in idx:
                    cv2.circle(big, (int(mesh[i, 0] * S), int(mesh[i, 1] * S)), 3, (255, 0, 0), -1)
        cv2.rectangle(big, (0, 0), (big.shape[1], 16), (0, 0, 0), -1)
        cv2.putText(big, label[:42], (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1, cv2.LINE_AA)
        return big

    def row(i, only=None):
        f, rgb = faces[i][0], faces[i][1]
        tiles = [tile(rgb, f"{Path(f).parent.name[:10]}/{Path(f).stem} yaw{yaw[i]:+.0f} p{pitch[i]:+.0f}")]
        for st in (only or styles):
            r = by[(i, st)]
            if r[3] is None:
                t = tile(rgb // 3, f"{st}: {r[2]}")
            else:
                t = tile(r[3].image, f"{st}: {r[2]}", mesh=faces[i][4], bad=r[4]["miss"])
            tiles.append(t)
        return np.hstack(tiles)

    order = np.argsort(-np.abs(yaw))[:12]
    sheet = np.vstack([row(i) for i in order])
    cv2.imwrite(str(out / "turned.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    fails = [r for r in results if r[2] != "right"][:48]
    if fails:
        tiles = [row(r[0], [r[1]]) for r in fails]
        rows = [np.hstack(tiles[k:k + 4] + [np.zeros_like(tiles[0])] * (4 - len(tiles[k:k + 4])))
                for k in range(0, len(tiles), 4)]
        cv2.imwrite(str(out / "failures.png"), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))
    print(f"sheets: {out / 'turned.png'}" + (f", {out / 'failures.png'}" if fails else ""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    ap.add_argument("--cache", type=Path, default=None, help="npz file keeping landmarks and mesh fits")
    ap.add_argument("--step", type=int, default=1, help="judge every k-th crop")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sheet", type=Path, default=None, help="folder for turned.png and failures.png")
    args = ap.parse_args(argv)
    if not (args.data / "celeb-aligned").is_dir():
        print(f"celeb-aligned not found under {args.data} (pass --data)", file=sys.stderr)
        return 2
    import cv2

    cv2.setNumThreads(1)
    from maskkit.render import STYLES

    files = _files(args.data, max(1, args.step))
    t0 = time.perf_counter()
    faces = _fits(files, args.cache)
    t1 = time.perf_counter()
    results = evaluate(faces, args.seed, STYLES)
    t2 = time.perf_counter()
    print(f"fits {t1 - t0:.1f} s, renders + judging {t2 - t1:.1f} s ({len(results) / max(t2 - t1, 1e-9):.0f}/s)")
    report(faces, results, STYLES)
    if args.sheet is not None:
        sheets(faces, results, STYLES, args.sheet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
