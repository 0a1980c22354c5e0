"""Derive the depth of maskkit's 3-D mean head (``maskkit.render.pose.MEAN_HEAD_Z``).

The renderer's head model is the symmetric mean 68-point face of the templates
(``MEAN_FACE_112``, ArcFace 112-px frame) with a depth per point. The
depth is read here, once, from MediaPipe's face mesh (``benchmarks/facemesh.py``) on the
near-frontal crops of celeb-aligned (mesh |yaw| and |pitch - median pitch| under 8 degrees, dlib's
68 points within 0.1 eye-to-mouth distances of the mesh's): for every dlib point, the mesh's
surface depth under it (barycentric in the mesh's 2-D Delaunay triangulation), relative to the
nose tip (lm30), averaged, mirrored (the mean of each point and its mirror image) and rounded to
0.1 px. It prints the Python literal committed in ``maskkit/render/pose.py``. A generic shape
prior, not a per-face fit: the right-mask benchmark still judges every face by its own mesh fit.

Usage::

    nice python benchmarks/head_model.py [--data ../shared/data] [--cache /tmp/rmr.npz]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import right_mask_rate as R  # noqa: E402
from facemesh import head_pose  # noqa: E402

#: iBUG 68 mirror pairs (point -> its mirror image on a frontal face).
MIRROR = np.array(list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
                  + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40] + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]
                  + [64, 63, 62, 61, 60, 67, 66, 65])


def depth_under(mesh: np.ndarray, pts: np.ndarray) -> np.ndarray:
    from scipy.spatial import Delaunay

    tri = Delaunay(mesh[:, :2])
    s = tri.find_simplex(pts)
    out = np.full(len(pts), np.nan)
    for k, (p, si) in enumerate(zip(pts, s)):
        if si < 0:
            j = np.argmin(np.linalg.norm(mesh[:, :2] - p, axis=1))
            out[k] = mesh[j, 2]
            continue
        T = tri.transform[si]
        b = T[:2] @ (p - T[2])
        w = np.array([b[0], b[1], 1 - b.sum()])
        out[k] = w @ mesh[tri.simplices[si], 2]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args(argv)
    faces = R._fits(R._files(args.data, 1), args.cache)
    poses = np.array([head_pose(f[4]) for f in faces])
    p0 = np.median(poses[:, 1])
    zs = []
    for f, (yaw, pitch, _) in zip(faces, poses):
        lm, mesh = f[2], f[4]
        if lm is None or abs(yaw) > 8 or abs(pitch - p0) > 8:
            continue
        eye_m = 0.5 * (mesh[list(R.RIGHT_EYE), :2].mean(0) + mesh[list(R.LEFT_EYE), :2].mean(0))
        scale = np.linalg.norm(eye_m - 0.5 * (mesh[61, :2] + mesh[291, :2]))
        e = np.linalg.norm(np.array([lm[30], lm[48], lm[54], lm[8]]) - mesh[[4, 61, 291, 152], :2], axis=1).max()
        if e > 0.1 * scale:
            continue
        z = depth_under(mesh, lm)
        zs.append(z - z[30])
    z = np.nanmean(np.array(zs), axis=0)
    z = 0.5 * (z + z[MIRROR])
    print(f"# {len(zs)} near-frontal crops (median mesh pitch {p0:+.1f} deg)")
    print("MEAN_HEAD_Z = (" + ", ".join(f"{v:.1f}" for v in z) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
