"""face-alignment's SFD detector + 2D FAN landmarks (optional extra ``maskkit[fan]``).

Fails fast with a clear message when the package or its cached weights are absent; it never
downloads.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from .base import Detector, Face
from .models import DetectorUnavailable, cached

__all__ = ["FanDetector"]


class FanDetector(Detector):
    """face-alignment's SFD detector + 2D FAN landmarks (optional extra).

    Never downloads: the package must be installed and its weights (``s3fd-*.pth`` and
    ``2DFAN4-*``) already present in torch hub's checkpoint folder.
    """

    name = "fan"

    def __init__(self, device: str = "cpu") -> None:
        if importlib.util.find_spec("face_alignment") is None:
            raise DetectorUnavailable("the 'fan' backend needs face-alignment: pip install 'maskkit[fan]' "
                                      "(or pip install face-alignment)")
        import torch  # noqa: PLC0415

        ckpt = Path(torch.hub.get_dir()) / "checkpoints"
        have = {p.name for p in ckpt.glob("*")} if ckpt.is_dir() else set()
        missing = [w for w in ("s3fd", "2DFAN4") if not any(n.startswith(w) for n in have)]
        if missing:
            raise DetectorUnavailable(
                f"the 'fan' backend needs face-alignment weights {missing} cached in {ckpt}; maskkit never "
                "downloads at run time. Fetch them once with face-alignment on a networked machine "
                "(or copy the files there), or use --detector hog|cnn|blazeface")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import face_alignment  # noqa: PLC0415

        lt = getattr(face_alignment.LandmarksType, "TWO_D", None) or getattr(face_alignment.LandmarksType, "_2D")
        self.device = device
        self._fa = cached("fan", device, lambda: face_alignment.FaceAlignment(lt, device=device, face_detector="sfd"))

    def detect(self, rgb):
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        res = self._fa.get_landmarks_from_image(rgb, return_bboxes=True)
        lms, boxes = (res[0], res[2]) if isinstance(res, tuple) else (res, None)
        faces = []
        for i, lm in enumerate(lms or []):
            b = boxes[i] if boxes is not None else None
            box = tuple(float(v) for v in b[:4]) if b is not None else (
                float(lm[:, 0].min()), float(lm[:, 1].min()), float(lm[:, 0].max()), float(lm[:, 1].max()))
            score = float(b[4]) if b is not None and len(b) > 4 else None
            faces.append(Face(box=box, score=score, landmarks68=np.asarray(lm[:, :2], np.float32)))
        return faces

    def detect_boxes(self, rgb):  # pragma: no cover - detect() is overridden
        return [(f.box, f.score, None) for f in self.detect(rgb)]

