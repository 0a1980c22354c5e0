"""dlib's detectors: the frontal HOG detector (with a second look at near-threshold detections)
and the MMOD CNN (``mmod_human_face_detector.dat``).

Both run on a copy downscaled to ``max_side`` (boxes mapped back), give boxes in dlib's box
convention (the one the 68-point predictor was trained on; the CNN's are shifted to it, see
:data:`CNN_TO_DLIB`) and leave the landmarks to dlib's predictor at full resolution. Options:
see :mod:`maskkit.face.detect`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import Detector
from .landmarks import shape_predictor, turned_patch
from .models import cached, load_dlib, model_file

__all__ = ["HogDetector", "CnnDetector", "SECOND_LOOK_BOX", "SECOND_LOOK_CONTEXT", "HOG_SUBDETECTOR_ANGLES",
           "CNN_TO_DLIB", "CONFIRM_BOX"]


def _downscale(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    h, w = rgb.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return rgb, 1.0
    import cv2

    s = max_side / float(max(h, w))
    small = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return small, s


def _centred(box: Sequence[float], size: int, box_px: float) -> bool:
    """Is the centre of ``box`` (``x0, y0, x1, y1``) within ``0.35 * box_px`` of the centre of a
    ``size``-pixel patch in both x and y (a detection of the face the patch was made around)?"""
    x0, y0, x1, y1 = box
    return abs((x0 + x1) / 2 - size / 2) < 0.35 * box_px and abs((y0 + y1) / 2 - size / 2) < 0.35 * box_px



class _DlibDetector(Detector):
    """A dlib detector run on a copy downscaled to ``max_side``; subclasses load ``_det``."""

    def __init__(self, upsample: int, max_side: int, threshold: float) -> None:
        self.upsample = int(upsample)
        self.max_side = int(max_side)
        self.threshold = float(threshold)
        self._det = self._load()
        shape_predictor()

    def _load(self):  # pragma: no cover - abstract
        raise NotImplementedError


#: HOG second look: detections scoring within ``second_look`` below the threshold are looked at
#: again on a patch rescaled so that their box is this many pixels wide (context
#: :data:`SECOND_LOOK_CONTEXT` times the box, no upsampling), and kept when that scores at or
#: above the threshold. Measured on every HOG detection from -0.6 to 0 in photos/, lfw-johns and
#: dlib's VOC scenes: Einstein in ``einstein.jpg`` (full-image score -0.22) scores +0.16 at 120 px;
#: the 16 non-faces and partial faces there (dogs, clothing, background, a mouth) all stay below
#: -0.24. The full-image pyramid samples scales 5/6 apart, the patch puts the face at the
#: scale the 80x80 HOG window was trained for.
SECOND_LOOK_BOX = 120
SECOND_LOOK_CONTEXT = 2.5


class HogDetector(_DlibDetector):
    """dlib frontal HOG + linear SVM detector, with a second look at near-threshold detections."""

    name = "hog"

    def __init__(self, upsample: int = 1, max_side: int = 1024, threshold: float = 0.0,
                 second_look: float = 0.5) -> None:
        super().__init__(upsample, max_side, threshold)
        self.second_look = float(second_look)

    def _load(self):
        return cached("hog", "frontal", lambda: load_dlib().get_frontal_face_detector())

    def second_look_score(self, rgb: np.ndarray, box, angle: float = 0.0) -> float | None:
        """HOG score of the face in ``box`` on a patch where the box is :data:`SECOND_LOOK_BOX`
        pixels wide, turned by ``angle`` degrees about the box centre (``cv2.getRotationMatrix2D``
        convention); ``None`` when no detection there is centred near the box's centre."""
        x0, y0, x1, y1 = (float(v) for v in box)
        cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, max(1.0, ((x1 - x0) + (y1 - y0)) / 2)
        size = int(SECOND_LOOK_CONTEXT * SECOND_LOOK_BOX)
        patch, _ = turned_patch(rgb, (cx, cy), angle, SECOND_LOOK_BOX / side, size)
        rects, scores, _ = self._det.run(patch, 0, self.threshold - 1.0)
        near = [sc for r, sc in zip(rects, scores)
                if _centred((r.left(), r.top(), r.right(), r.bottom()), size, SECOND_LOOK_BOX)]
        return float(max(near)) if near else None

    def detect_oriented(self, rgb) -> list[tuple[tuple[float, float, float, float], float, int]]:
        """Like :meth:`detect_boxes`, with the index of dlib's sub-detector that fired instead of
        keypoints (see :data:`HOG_SUBDETECTOR_ANGLES`)."""
        small, s = _downscale(rgb, self.max_side)
        floor = self.threshold - max(0.0, self.second_look)
        rects, scores, subs = self._det.run(np.ascontiguousarray(small), self.upsample, floor)
        out = []
        for r, sc, sub in zip(rects, scores, subs):
            box = (r.left() / s, r.top() / s, (r.right() + 1) / s, (r.bottom() + 1) / s)
            if sc < self.threshold:
                sc = self.second_look_score(rgb, box)
                if sc is None or sc < self.threshold:
                    continue
            out.append((box, sc, int(sub)))
        return out

    def detect_boxes(self, rgb):
        return [(box, sc, None) for box, sc, _ in self.detect_oriented(rgb)]

    @staticmethod
    def angle_range(sub: int) -> tuple[float, float] | None:
        """Eye-line angles (:func:`maskkit.face.fit_check.eye_angle`) a face found by sub-detector
        ``sub`` can have."""
        return HOG_SUBDETECTOR_ANGLES.get(int(sub))


#: dlib's frontal detector is five HOG filters; the one that fired says how the face is turned
#: in-plane. Measured on lfw-johns + 5 portraits turned 0, +-15, +-30, +-45 degrees: unturned
#: faces fire 0 (front) or 2; faces turned counter-clockwise on screen (eye angle -15..-45) fire
#: 3 (60 of 60 at 30 and 45, 43 of 60 at 15), clockwise ones 4. The ranges below (degrees,
#: :func:`maskkit.face.fit_check.eye_angle`) are the eye angles a fit may have for each; a
#: solution outside is not the face the detector saw (a stuck fit, upright in a turned face).
HOG_SUBDETECTOR_ANGLES = {0: (-40.0, 40.0), 1: (-40.0, 40.0), 2: (-40.0, 40.0), 3: (-75.0, 5.0), 4: (-5.0, 75.0)}


#: MMOD boxes sit a little higher than the HOG boxes dlib's 68-point predictor was trained on;
#: shift them down (dx, dy, side ratio as fractions of the MMOD side). On 136 faces found by both
#: the median HOG box is (0.017, 0.072, 0.948) off, but that full shift *hurt* the manual iBUG
#: ground truth (breakingbad NME 0.17 -> 0.34); (0, 0.02, 1.0) improved both manual faces
#: (einstein 0.102 -> 0.084, breakingbad 0.17 -> 0.157) and the VOC XML mean (0.040 -> 0.038).
CNN_TO_DLIB = (0.0, 0.02, 1.0)

#: Box side (pixels) of the face on the upright copy :meth:`CnnDetector.upright_score` looks at
#: (MMOD's window is 80 px). Measured on the 51 weak HOG fits of the portraits and lfw-johns
#: turned 0, -15, +-45 and 180 degrees: at 120, 100, 90 and 80 px the same faces are seen (all
#: 46 subjects, no non-face), at 194, 125, 101 and 82 ms a look (1 core).
CONFIRM_BOX = 90


class CnnDetector(_DlibDetector):
    """dlib MMOD CNN detector (``mmod_human_face_detector.dat``)."""

    name = "cnn"

    def __init__(self, upsample: int = 1, max_side: int = 800, threshold: float = 0.0) -> None:
        """Raises ``ValueError`` for ``threshold < 0``: dlib's CNN reports only detections scoring
        above 0, so a lower threshold would promise candidates it never returns."""
        if threshold < 0:
            raise ValueError(f"cnn threshold {threshold}: dlib's CNN reports only detections scoring above 0 "
                             "(use a threshold >= 0)")
        super().__init__(upsample, max_side, threshold)

    def _load(self):
        path = model_file("mmod_human_face_detector.dat")
        return cached("cnn", str(path), lambda: load_dlib().cnn_face_detection_model_v1(str(path)))

    def upright_score(self, rgb: np.ndarray, box: Sequence[float], angle: float) -> float | None:
        """MMOD confidence of the face in ``box`` on a copy of the image rotated by ``angle``
        (degrees, ``cv2.getRotationMatrix2D`` convention: the rotation that makes the face
        upright) and scaled so the box is :data:`CONFIRM_BOX` pixels wide; ``None`` when no
        detection there is centred within 0.35 box sides of the box centre. About 0.1 s."""
        x0, y0, x1, y1 = (float(v) for v in box)
        cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, max(1.0, ((x1 - x0) + (y1 - y0)) / 2)
        size = 2 * CONFIRM_BOX
        patch, _ = turned_patch(rgb, (cx, cy), angle, CONFIRM_BOX / side, size)
        near = [sc for b, sc, _ in self.detect_boxes(patch) if _centred(b, size, CONFIRM_BOX)]
        return float(max(near)) if near else None

    def detect_boxes(self, rgb):
        small, s = _downscale(rgb, self.max_side)
        out = []
        for d in self._det(np.ascontiguousarray(small), self.upsample):
            if d.confidence < self.threshold:
                continue
            r = d.rect
            x0, y0, x1, y1 = r.left() / s, r.top() / s, (r.right() + 1) / s, (r.bottom() + 1) / s
            side = ((x1 - x0) + (y1 - y0)) / 2
            dx, dy, ratio = CNN_TO_DLIB
            cx, cy, half = (x0 + x1) / 2 + dx * side, (y0 + y1) / 2 + dy * side, ratio * side / 2
            out.append(((cx - half, cy - half, cx + half, cy + half), d.confidence, None))
        return out

