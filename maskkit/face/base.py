"""One detected face (:class:`Face`) and the interface every detector backend implements (:class:`Detector`).

Every backend returns *all* faces as :class:`Face` (box, score, 68 landmarks in iBUG order,
0-based image pixels); backends that only give boxes get their landmarks from dlib's 68-point
predictor (:func:`maskkit.face.landmarks.landmarks_in_box`) at full resolution.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .landmarks import landmarks_in_box

__all__ = ["Face", "Detector"]


@dataclass
class Face:
    """One detected face.

    Attributes:
        box: ``(x0, y0, x1, y1)`` float, image pixels (dlib box convention for dlib backends).
        score: detector confidence (backend-specific scale) or ``None``.
        landmarks68: ``(68, 2)`` float32, iBUG order, 0-based image pixels.
        keypoints: optional backend keypoints (BlazeFace: 6 points), image pixels.
        fit: the landmark check (:class:`maskkit.face.fit_check.FitCheck`) when
            :func:`maskkit.face.selection.find_faces` ran it; ``fit.ok`` False means the 68 points are not on the face
            (``bad_landmarks``).
        angle_range: eye-line angles (degrees) the detector's evidence allows (HOG: from the
            sub-detector that fired), or ``None``.
    """

    box: tuple[float, float, float, float]
    score: float | None
    landmarks68: np.ndarray
    keypoints: np.ndarray | None = field(default=None, repr=False)
    fit: object | None = field(default=None, repr=False)
    angle_range: tuple[float, float] | None = field(default=None, repr=False)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)



class Detector:
    """Base class: subclasses implement :meth:`detect_boxes`; landmarks come from dlib's
    68-point predictor at full resolution unless the backend provides its own."""

    name = "base"

    def detect_boxes(self, rgb: np.ndarray) -> list[tuple[tuple[float, float, float, float], float | None, np.ndarray | None]]:
        """Return ``[(box, score, keypoints_or_None), ...]`` in full-image pixels."""
        raise NotImplementedError

    def landmarks(self, rgb: np.ndarray, box) -> np.ndarray:
        """68 landmarks for one box (dlib predictor)."""
        return landmarks_in_box(rgb, box)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Detect every face with its box, score and 68 landmarks.

        Args:
            rgb: ``(H, W, 3)`` uint8 RGB image.
        """
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        return [Face(box=tuple(float(v) for v in box), score=None if score is None else float(score),
                     landmarks68=self.landmarks(rgb, box), keypoints=kps)
                for box, score, kps in self.detect_boxes(rgb)]

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({opts})"

