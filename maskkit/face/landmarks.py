"""dlib's 68-point landmark model: landmarks in a given box, and on a turned, scaled copy of the image.

Every fit here is dlib's shape predictor (``shape_predictor_68_face_landmarks.dat``, loaded once
per process, :mod:`maskkit.face.models`): ``(68, 2)`` float32 points in iBUG order, 0-based image
pixels. :func:`landmarks_in_box` fits in a box as it is; :func:`fit_at_angle` fits on a copy of
the image turned about the box centre (:func:`turned_patch`) and maps the points back (the
landmark checks' refits and the upright looks at a face all work on such copies).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .models import cached, load_dlib, model_file

__all__ = ["ALIGNED_BOX_FRACTION", "PATCH_BOX", "landmarks_in_box", "turned_patch", "fit_at_angle", "shape_predictor"]

#: Box (x0, y0, x1, y1) as fractions of a pre-aligned ArcFace crop, used by
#: :func:`landmarks_in_box` when no box is given. Tuned on celeb-aligned by a grid search over
#: box centre and size minimising the distance of the fitted 5 points to the template (mean
#: about 3.5 px: a systematic dlib-vs-template offset); the median dlib HOG box on 2x upsampled
#: crops is close to it (0.13, 0.29, 0.83, 0.98).
ALIGNED_BOX_FRACTION = (0.10, 0.25, 0.90, 1.05)


#: Box side (pixels) of the normalised patch the refits run in: the face is rotated and scaled
#: so that its detection box is this wide (the predictor works in box-relative coordinates).
PATCH_BOX = 128


_PREDICTOR_BY_ENV: dict[str | None, object] = {}


def shape_predictor():
    # locating the model file walks the import path (about 1 ms, more than the predictor
    # itself): remember the predictor per MASKKIT_MODEL_DIR value, the only input of the lookup
    env = os.environ.get("MASKKIT_MODEL_DIR")
    sp = _PREDICTOR_BY_ENV.get(env)
    if sp is None:
        path = model_file("shape_predictor_68_face_landmarks.dat")
        sp = _PREDICTOR_BY_ENV[env] = cached("shape68", str(path), lambda: load_dlib().shape_predictor(str(path)))
    return sp


def _rect(dlib, box) -> object:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return dlib.rectangle(x0, y0, max(x1, x0 + 1), max(y1, y0 + 1))


def landmarks_in_box(rgb: np.ndarray, box: Sequence[float] | None = None) -> np.ndarray:
    """dlib 68-point landmarks inside a given box (no detection).

    Args:
        rgb: ``(H, W, 3)`` uint8 image.
        box: ``(x0, y0, x1, y1)`` in dlib's box convention. ``None`` means "this image is a
            pre-aligned ArcFace crop": the box is :data:`ALIGNED_BOX_FRACTION` of the image.

    Returns:
        ``(68, 2)`` float32 landmarks, 0-based pixels.
    """
    dlib = load_dlib()
    img = np.ascontiguousarray(rgb, dtype=np.uint8)
    if box is None:
        h, w = img.shape[:2]
        fx0, fy0, fx1, fy1 = ALIGNED_BOX_FRACTION
        box = (fx0 * w, fy0 * h, fx1 * w, fy1 * h)
    shape = shape_predictor()(img, _rect(dlib, box))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def turned_patch(rgb: np.ndarray, centre: Sequence[float], angle: float, scale: float, size: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` copy of ``rgb`` turned by ``angle`` degrees about ``centre``
    (``cv2.getRotationMatrix2D`` convention, counter-clockwise on screen), scaled by ``scale``,
    with ``centre`` at the copy's centre; borders replicated (the second, upright and refit
    looks at a face all work on such copies).

    Returns:
        ``(patch, m)``: the ``(size, size, 3)`` copy and the ``(2, 3)`` float64 matrix from image
        to copy pixels (``cv2.invertAffineTransform(m)`` maps back).
    """
    import cv2

    cx, cy = float(centre[0]), float(centre[1])
    if angle:
        m = cv2.getRotationMatrix2D((cx, cy), float(angle), float(scale))
        m[0, 2] += size / 2 - cx
        m[1, 2] += size / 2 - cy
    else:
        m = np.array([[scale, 0, size / 2 - scale * cx], [0, scale, size / 2 - scale * cy]], np.float64)
    patch = cv2.warpAffine(np.ascontiguousarray(rgb), m, (int(size), int(size)),
                           flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return patch, m


def _box_geometry(box: Sequence[float]) -> tuple[float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return (x0 + x1) / 2, (y0 + y1) / 2, max(1.0, ((x1 - x0) + (y1 - y0)) / 2)


def fit_at_angle(rgb: np.ndarray, box: Sequence[float], angle: float, box_px: int = PATCH_BOX) -> np.ndarray:
    """68 landmarks fitted on a copy of the image rotated by ``angle`` about the box centre.

    The copy is scaled so the box is ``box_px`` wide, in a patch twice that size (border
    replicated); dlib's predictor runs in the same-sized box there and the points are mapped
    back to the image.

    Args:
        rgb: ``(H, W, 3)`` uint8 image.
        box: ``(x0, y0, x1, y1)`` face box, dlib convention, image pixels.
        angle: degrees, ``cv2.getRotationMatrix2D`` convention (counter-clockwise on screen);
            :func:`maskkit.face.fit_check.eye_angle` of a fit is the angle that makes that fit upright.
        box_px: box side in the patch.

    Returns:
        ``(68, 2)`` float32 landmarks in image pixels.
    """
    import cv2

    cx, cy, side = _box_geometry(box)
    size = 2 * box_px
    patch, m = turned_patch(rgb, (cx, cy), angle, box_px / side, size)
    half = box_px / 2
    lm = landmarks_in_box(patch, (size / 2 - half, size / 2 - half, size / 2 + half, size / 2 + half))
    inv = cv2.invertAffineTransform(m)
    return (lm.astype(np.float64) @ inv[:, :2].T + inv[:, 2]).astype(np.float32)

