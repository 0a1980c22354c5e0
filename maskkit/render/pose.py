"""Head pose from 68 landmarks: a 3-D mean head fitted with ``cv2.solvePnP`` (SQPnP).

The head model (:data:`MEAN_HEAD`) is the symmetric mean 68-point face the templates are drawn
on (:data:`MEAN_FACE_112`, ArcFace 112-px frame) with a depth per point (:data:`MEAN_HEAD_Z`),
read once from MediaPipe's face mesh on the near-frontal crops of celeb-aligned
(``benchmarks/head_model.py``; a generic shape prior, not a per-face fit). :func:`head_pose` fits
it to a face's brows, nose, eyes, mouth and chin (the jaw contour is a silhouette that slides
round the head as it turns, so it is left out) with a near-orthographic camera (focal length 10x
the face height), refits once without the points that disagree with the first fit (a landmark
fit that is off in places), and reports yaw, pitch and roll.

Used by :mod:`maskkit.render.anchors`: on a head turned so far that its far cheek is hidden behind
the nose, the far side of the mask may not reach past the head's predicted silhouette.

Cost: one or two SQPnP solves on 52 points, about 0.2 ms a face (CPU time on a busy shared machine).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["MEAN_FACE_112", "MEAN_HEAD_Z", "MEAN_HEAD", "POSE_IDX", "HeadPose", "head_pose"]

#: Symmetric mean 68-point face in an ArcFace-aligned 112x112 crop (dlib shape_predictor_68
#: averaged over 278 celeb-aligned faces and mirrored; rounded to 0.1 px).
MEAN_FACE_112 = np.array([
    [14.1, 52.0], [14.0, 62.7], [15.0, 73.4], [17.3, 83.9], [21.6, 93.5], [28.0, 101.9], [36.0, 108.3],
    [45.0, 112.5], [55.5, 113.2], [66.0, 112.5], [75.0, 108.3], [83.0, 101.9], [89.4, 93.5], [93.7, 83.9],
    [96.0, 73.4], [97.0, 62.7], [96.9, 52.0], [23.0, 42.2], [28.2, 38.5], [35.0, 37.6], [41.8, 38.6],
    [48.5, 41.6], [62.5, 41.6], [69.2, 38.6], [76.0, 37.6], [82.8, 38.5], [88.0, 42.2], [55.5, 50.3],
    [55.5, 57.4], [55.5, 64.3], [55.5, 71.2], [47.5, 76.5], [51.4, 77.9], [55.5, 79.1], [59.6, 77.9],
    [63.5, 76.5], [30.7, 51.1], [35.0, 48.3], [40.5, 48.4], [45.0, 52.0], [40.0, 53.3], [34.6, 53.2],
    [66.0, 52.0], [70.5, 48.4], [76.0, 48.3], [80.3, 51.1], [76.4, 53.2], [71.0, 53.3], [40.0, 90.2],
    [45.6, 87.7], [51.5, 86.4], [55.5, 87.5], [59.5, 86.4], [65.4, 87.7], [71.0, 90.2], [65.7, 95.5],
    [59.9, 98.0], [55.5, 98.4], [51.1, 98.0], [45.3, 95.5], [42.3, 90.5], [51.4, 90.2], [55.5, 90.6],
    [59.6, 90.2], [68.7, 90.5], [59.7, 92.3], [55.5, 92.8], [51.3, 92.3],
], dtype=np.float64)

#: Depth of each point of :data:`MEAN_FACE_112` behind the nose tip (lm30), same pixel units
#: (MediaPipe face mesh surface depth under dlib's points, 590 near-frontal celeb-aligned crops,
#: mirrored; ``benchmarks/head_model.py``).
MEAN_HEAD_Z = np.array((
    44.3, 45.7, 45.9, 49.4, 48.7, 42.8, 37.2, 31.9, 29.4, 31.9, 37.2, 42.8, 48.7, 49.4, 45.9, 45.7, 44.3,
    24.2, 15.9, 11.5, 9.7, 9.5, 9.5, 9.7, 11.5, 15.9, 24.2, 9.7, 6.4, 1.9, 0.0, 12.5, 10.4, 10.8, 10.4, 12.5,
    21.7, 18.3, 17.8, 19.4, 18.8, 19.8, 19.4, 17.8, 18.3, 21.7, 19.8, 18.8, 24.6, 18.0, 13.5, 13.5, 13.5,
    18.0, 24.6, 21.4, 19.4, 19.1, 19.4, 21.4, 23.2, 16.9, 16.5, 16.9, 23.2, 17.6, 17.0, 17.6,
), dtype=np.float64)

#: The 3-D mean head: (68, 3), x right, y down, z away from the camera, nose tip at the origin.
MEAN_HEAD = np.column_stack([MEAN_FACE_112 - MEAN_FACE_112[30], MEAN_HEAD_Z])
MEAN_HEAD.setflags(write=False)

#: Landmarks the pose is fitted to: chin (8), brows, nose, eyes and mouth (not the jaw contour).
POSE_IDX = np.r_[8, 17:68]


@dataclass(frozen=True)
class HeadPose:
    """A head pose fitted to 68 landmarks.

    Attributes:
        yaw: degrees; > 0 when the face points toward image-right (its far side is image-right).
        pitch: degrees; > 0 when the face points up.
        roll: degrees; > 0 when the face's horizontal axis turns clockwise in the image.
        projected: (68, 2) the mean head's points in image pixels under this pose.
        residual: RMS distance (pixels / |lm8 - lm27|) of the kept landmarks from ``projected``.
        kept: how many of the :data:`POSE_IDX` landmarks the final fit used.
    """

    yaw: float
    pitch: float
    roll: float
    projected: np.ndarray
    residual: float
    kept: int


def head_pose(lm: np.ndarray) -> HeadPose:
    """Fit :data:`MEAN_HEAD` to ``lm`` ((68, 2) pixels, checked by ``check_landmarks``).

    Returns:
        :class:`HeadPose`.
    """
    import cv2

    p = np.asarray(lm, dtype=np.float64)
    height = max(float(np.linalg.norm(p[8] - p[27])), 1e-6)
    idx = POSE_IDX
    c = p[idx].mean(0)
    f = 10.0 * height
    K = np.array([[f, 0.0, c[0]], [0.0, f, c[1]], [0.0, 0.0, 1.0]])
    keep = idx
    for rnd in range(2):
        _, rv, tv = cv2.solvePnP(MEAN_HEAD[keep], p[keep], K, None, flags=cv2.SOLVEPNP_SQPNP)
        R = cv2.Rodrigues(rv)[0]
        cam = MEAN_HEAD @ R.T + tv.reshape(1, 3)
        proj = f * cam[:, :2] / np.maximum(cam[:, 2:3], 1e-9) + c
        if rnd == 0:  # leave out the points the first fit disagrees with (a fit off in places)
            r = np.linalg.norm(proj[idx] - p[idx], axis=1)
            ok = r <= max(3.0 * float(np.median(r)), 0.04 * height)
            if ok.sum() < 12 or ok.all():
                break
            keep = idx[ok]
    r = np.linalg.norm(proj[keep] - p[keep], axis=1)
    d = -R[:, 2]  # the face's forward direction (toward the camera) in camera coordinates
    yaw = math.degrees(math.atan2(d[0], -d[2]))
    pitch = math.degrees(math.atan2(-d[1], math.hypot(d[0], d[2])))
    roll = math.degrees(math.atan2(R[1, 0], R[0, 0]))
    return HeadPose(yaw=yaw, pitch=pitch, roll=roll, projected=proj,
                    residual=float(np.sqrt(np.mean(r ** 2))) / height, kept=int(len(keep)))
