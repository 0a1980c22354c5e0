"""Which detections become faces: :func:`find_faces` detects, selects by policy
(:func:`select_faces`), fits the 68 landmarks and checks them (:mod:`maskkit.face.fit_check`);
:func:`aligned_face` is the face of a pre-aligned crop.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from .base import Detector, Face
from .blazeface import UPRIGHT_SAME_FACE, BlazeFaceDetector, box_iou, keypoint_angle
from .detect import get_detector
from .dlib_detectors import HogDetector
from .fit_check import check_landmarks, check_with_keypoints
from .landmarks import fit_at_angle, landmarks_in_box

__all__ = ["select_faces", "find_faces", "aligned_face", "WEAK_DETECTION", "PASS_OVER_MIN_AREA", "KEYPOINT_DEROTATE"]


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

#: With ``--faces largest``, a weak detection whose landmarks fail is passed over only for a
#: candidate at least this fraction of its box area; a smaller one is a bystander, and the failed
#: face is returned (recorded as ``bad_landmarks``) instead of a mask on someone else. Measured:
#: the astronaut at half size, the suit emblem (HOG 0.03, failing) against her face: 0.70 of its
#: area, passed over (margin 0.20); einstein.jpg, Einstein (HOG 0.16 after the second look) against
#: the seated bystander: 0.34 (margin 0.16), so on a machine where Einstein's fit fails (14 of 100
#: copies with 1-grey-level noise) he is recorded, not swapped for the bystander.
PASS_OVER_MIN_AREA = 0.5


def _area(box) -> float:
    return max(0.0, float(box[2]) - float(box[0])) * max(0.0, float(box[3]) - float(box[1]))


def _confirm_upright(rgb: np.ndarray, face: Face) -> None:
    """A weak HOG detection (score below :data:`WEAK_DETECTION`) whose 68 points only the
    orientation search found (``fit.recovered``) is a face only if dlib's CNN detector sees one
    on the copy the fit makes upright (:meth:`~maskkit.face.dlib_detectors.CnnDetector.upright_score`); otherwise its check
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
    hint = keypoint_angle(keypoints)
    if hint is not None and abs(hint) > KEYPOINT_DEROTATE:
        return fit_at_angle(rgb, box, hint)
    return detector.landmarks(rgb, box)


def find_faces(detector: Detector, rgb: np.ndarray, policy: str = "largest",
               timings: dict | None = None, check: bool = True) -> list[Face]:
    """Detect, select by ``policy`` (see :func:`select_faces`), landmark and check the selected faces.

    Backends whose landmarks come from dlib's predictor (those that keep
    :meth:`Detector.detect`) are landmarked only for the faces ``policy`` keeps; the others
    (``fan``) produce landmarks with their boxes (and are not checked). With ``check`` each
    dlib fit goes through :func:`maskkit.face.fit_check.check_landmarks`: ``face.fit`` holds the
    outcome and, when it passed, ``face.landmarks68`` the checked (or recovered) landmarks.
    Faces whose fit failed are returned too (``face.fit.ok`` False): the caller records them
    as ``bad_landmarks``, never as samples. For BlazeFace the fit is first compared with its
    eye keypoints (:func:`maskkit.face.fit_check.check_with_keypoints`), and keypoints tilted by
    more than :data:`KEYPOINT_DEROTATE` degrees put the first fit in the de-rotated frame.

    Args:
        detector: a :class:`Detector`.
        rgb: ``(H, W, 3)`` uint8 RGB image.
        policy: ``largest`` | ``all`` | ``central``.
        timings: if given, receives seconds spent in ``detect`` (and ``landmarks``, which
            includes the check).
        check: run the landmark check.
    """
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
        faces, passed_over = [], None
        for f in order:
            if passed_over is not None and policy == "largest" and _area(f.box) < PASS_OVER_MIN_AREA * _area(passed_over.box):
                faces = [passed_over]  # the largest face's fit failed: recorded, never swapped for a small bystander
                break
            up = detector.upright(rgb, f.box, f.keypoints) if isinstance(detector, BlazeFaceDetector) else None
            if up is not None and any(box_iou(np.array(up.box), np.array([g.box]))[0] > UPRIGHT_SAME_FACE
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
                passed_over = faces.pop()
                continue
            break
        tm["landmarks"] = time.perf_counter() - t0
        return faces
    # backends that produce landmarks together with boxes (fan)
    t0 = time.perf_counter()
    faces = select_faces(detector.detect(rgb), policy, rgb.shape)
    tm["detect"] = time.perf_counter() - t0
    return faces
