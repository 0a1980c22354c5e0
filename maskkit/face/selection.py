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

__all__ = ["select_faces", "final_box", "find_faces", "aligned_face", "WEAK_DETECTION", "PASS_OVER_MIN_AREA", "KEYPOINT_DEROTATE",
           "HOLDS_FACE", "HOLDS_FACE_AREA"]


def final_box(face: Face, shape: tuple[int, ...] | None = None) -> tuple[float, float, float, float]:
    """The box selection compares: the bounding box of the face's *checked* 68 landmarks when
    its landmark check passed (``face.fit.ok``), else its detection box; clipped to the image
    when ``shape`` ``(H, W, ...)`` is given, so a face cut by the image edge counts with its
    visible part. Image pixels ``(x0, y0, x1, y1)``."""
    if face.fit is not None and getattr(face.fit, "ok", False) and face.landmarks68 is not None:
        lm = np.asarray(face.landmarks68, np.float64)
        x0, y0 = lm.min(axis=0)
        x1, y1 = lm.max(axis=0)
    else:
        x0, y0, x1, y1 = (float(v) for v in face.box)
    if shape is not None:
        h, w = float(shape[0]), float(shape[1])
        x0, x1 = min(max(x0, 0.0), w), min(max(x1, 0.0), w)
        y0, y1 = min(max(y0, 0.0), h), min(max(y1, 0.0), h)
    return float(x0), float(y0), float(x1), float(y1)


def select_faces(faces: Sequence[Face], policy: str = "largest", shape: tuple[int, ...] | None = None) -> list[Face]:
    """Choose faces by policy, comparing each face's :func:`final_box` (its checked landmarks'
    box once :func:`find_faces` has checked it, the part inside the image when ``shape`` is given).

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
    boxes = {id(f): final_box(f, shape) for f in faces}
    if policy == "largest":
        # near-ties (within 20% of the largest area) go to the more confident detection: dlib
        # boxes come in a few fixed sizes, so a false positive can match the true face's size
        area = {k: _area(b) for k, b in boxes.items()}
        big = max(area.values())
        near = [f for f in faces if area[id(f)] >= NEAR_TIE * big]
        return [max(near, key=lambda f: (f.score if f.score is not None else 0.0, area[id(f)]))]
    if policy == "central":
        if shape is None:
            raise ValueError("policy 'central' needs the image shape")
        cy, cx = shape[0] / 2.0, shape[1] / 2.0

        def off(f):
            b = boxes[id(f)]
            return ((b[0] + b[2]) / 2 - cx) ** 2 + ((b[1] + b[3]) / 2 - cy) ** 2
        return [min(faces, key=off)]
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


#: With ``--faces largest`` and HOG, how much larger a face's checked landmark box can be than
#: its detection box (area). Measured 2026-12-06 over every face ``--faces all`` keeps in
#: photos/ (84) and lfw-johns (55): at most 1.30 (median 0.89 / 1.09); 2.0 leaves 0.7. Once a
#: face that ``largest`` would not pass over is checked, a candidate whose detection box times
#: this is under the near-tie band of that face's box cannot be chosen, and is not fitted (a
#: group photo costs the few large faces, not all of them). BlazeFace's upright look moves boxes
#: far more (up to 15x measured on real-masked), so its candidates are all checked.
HOG_FINAL_OVER_RAW = 2.0

#: The near-tie band of ``largest`` (:func:`select_faces`): boxes within this fraction of the
#: largest area compete on detector score.
NEAR_TIE = 0.8


#: A face whose detection box holds at least this share of another accepted face's checked box
#: (:func:`final_box`), a face at most 1 / :data:`HOLDS_FACE_AREA` of its own checked box, is not a
#: face: no real face has a much smaller one inside it, so it is a detection at the wrong scale (its
#: check fails, ``bad_landmarks``) and the face it holds stays. Measured 2026-12-06
#: (``benchmarks/nested_faces.py``) over every pair of faces ``--faces all`` accepts in real-masked
#: (BlazeFace), photos/ and lfw-johns (BlazeFace and HOG), 982 pairs: 3 nested pairs hold 0.66, 1.0
#: and 1.0 at 4.8x, 9.8x and 12.9x the held face's area, and each larger face was wrong when viewed
#: (real-masked 0001/0177.jpg: a woman's neck and chest, which ``--faces largest`` kept over her
#: face; 0002/0081.jpg: a man's head with a building, around a woman's face; 0002/0084.jpg: a man's
#: mask at twice its scale). Faces side by side share at most 0.33 (photos/2008_002079.jpg, a couple
#: cheek by cheek, 1.9x), every other pair at most 0.15. Margins: 0.17 and 0.16 on the share; the
#: area rule keeps two faces of one size (cheek to cheek) apart whatever their overlap.
HOLDS_FACE = 0.5

#: See :data:`HOLDS_FACE`: how many times larger (checked-box area) a face must be than the face
#: it holds. Measured: nested 4.8x at least; every pair sharing over 0.1, 1.9x at most (margins
#: 2.3 and 0.6).
HOLDS_FACE_AREA = 2.5


def _holding(faces: list[Face], shape) -> dict[int, Face]:
    """The accepted faces that hold another (:data:`HOLDS_FACE`): ``{id(larger): held face}``."""
    ok = [(f, final_box(f, shape)) for f in faces if f.fit is not None and f.fit.ok]
    out = {}
    for f, fb in ok:
        for g, gb in ok:
            if g is f or _area(gb) <= 0 or _area(fb) < HOLDS_FACE_AREA * _area(gb):
                continue
            if _area(_clip_to(f.box, gb)) >= HOLDS_FACE * _area(gb):
                out[id(f)] = g
                break
    return out


def _reject_holding(faces: list[Face], shape) -> set[int]:
    """Fail the check of every accepted face that holds another (:func:`_holding`); their ids."""
    from dataclasses import replace

    held = _holding(faces, shape)
    for f in faces:
        g = held.get(id(f))
        if g is not None:
            gb = final_box(g, shape)
            x0, y0, x1, y1 = (round(v) for v in gb)
            ratio = _area(final_box(f, shape)) / _area(gb)
            f.fit = replace(f.fit, ok=False, reason="bad_landmarks",
                            detail=f"holds another face: its box holds most of the face at {x0},{y0}-{x1},{y1}, "
                                   f"{ratio:.1f}x smaller (a detection at the wrong scale, not a face)")
    return set(held)


def _cannot_win(f: Face, faces: list[Face], shape, growth: float) -> bool:
    """True when candidate ``f`` (not yet fitted) cannot be ``largest``'s choice whatever its fit:
    even ``growth`` times its detection box is under the near-tie band of a checked face that
    :func:`_choose` would not pass over (its fit passed, or a strong detection)."""
    settled = [g for g in faces if g.fit is None or g.fit.ok or (g.score is not None and g.score >= WEAK_DETECTION)]
    if not settled:
        return False
    # a candidate inside a checked face could show that face holds another (:data:`HOLDS_FACE`)
    inside = any(g.fit is not None and g.fit.ok and _area(_clip_to(f.box, g.box)) >= HOLDS_FACE * f.area
                 for g in settled)
    return not inside and growth * f.area < NEAR_TIE * max(_area(final_box(g, shape)) for g in settled)


def _clip_to(box, frame) -> tuple[float, float, float, float]:
    return (max(box[0], frame[0]), max(box[1], frame[1]), min(box[2], frame[2]), min(box[3], frame[3]))


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


def _fit_and_check(detector: Detector, rgb: np.ndarray, f: Face, kept: list[Face], check: bool) -> bool:
    """Fit (and with ``check`` check) the 68 points of candidate ``f`` in place; False when it is
    a second detection of a face already in ``kept`` (it is then not a face of its own)."""
    up = detector.upright(rgb, f.box, f.keypoints) if isinstance(detector, BlazeFaceDetector) else None
    if up is not None and any(box_iou(np.array(up.box), np.array([g.box]))[0] > UPRIGHT_SAME_FACE
                              for g in kept if g.fit is None or g.fit.ok):
        # two detections the upright looks show to be one face (an upside-down face found by
        # both models, one box turned): the second is not a face of its own
        return False
    first_look = (f.box, f.keypoints)
    if up is not None:
        f.box, f.keypoints = up.box, up.keypoints
        f.landmarks68 = fit_at_angle(rgb, f.box, up.angle)
    else:
        f.landmarks68 = _first_fit(rgb, detector, f.box, f.keypoints)
    if not check:
        return True
    # BlazeFace's keypoints vouch for a fit only when its upright look found the face again
    # (of real-masked's 3 detections it did not, 2 were a wall and a window)
    f.fit = (check_with_keypoints(rgb, f.box, f.landmarks68, f.keypoints) if up is not None else
             check_landmarks(rgb, f.box, f.landmarks68, angle_range=f.angle_range))
    if up is not None and not f.fit.ok:
        # the upright look's fit failed: the first look decides, as it did before there was an
        # upright look (measured: a masked close-up, real-masked 0001/0015.jpg, is kept so)
        box, kps = first_look
        lm = _first_fit(rgb, detector, box, kps)
        fit = check_with_keypoints(rgb, box, lm, kps)
        if fit.ok:
            f.box, f.keypoints, f.landmarks68, f.fit = box, kps, lm, fit
    if f.fit.ok and f.fit.recovered and isinstance(detector, HogDetector) and f.score < WEAK_DETECTION:
        _confirm_upright(rgb, f)
    if f.fit.ok:
        f.landmarks68 = f.fit.landmarks68
    return True


def _choose(faces: list[Face], policy: str, shape, holding: set[int] = frozenset()) -> list[Face]:
    """The one face of ``largest``/``central`` among checked candidates, by their final boxes
    (:func:`final_box`: the checked landmarks' box inside the image). A weak detection
    (:data:`WEAK_DETECTION`) whose landmarks are not on a face is a false positive and the next
    face is taken instead (measured: an emblem on the astronaut's suit, score 0.06, larger than
    her face at half size); with ``largest`` only a face at least :data:`PASS_OVER_MIN_AREA` of
    its area replaces it, else the failed face is returned (recorded ``bad_landmarks``), never a
    small bystander. A strong detection whose fit failed is the subject, returned as failed. A face
    that holds another (ids in ``holding``, :data:`HOLDS_FACE`) is never chosen: the face it holds is
    a candidate of its own."""
    passed_over = None
    chosen = [f for f in faces if id(f) not in holding] or faces
    for f in _policy_order(chosen, policy, shape):
        if (passed_over is not None and policy == "largest"
                and _area(final_box(f, shape)) < PASS_OVER_MIN_AREA * _area(final_box(passed_over, shape))):
            return [passed_over]
        if f.fit is not None and not f.fit.ok and (f.score is None or f.score < WEAK_DETECTION):
            passed_over = f
            continue
        return [f]
    return []


def find_faces(detector: Detector, rgb: np.ndarray, policy: str = "largest",
               timings: dict | None = None, check: bool = True) -> list[Face]:
    """Detect, landmark and check every candidate, then select by ``policy`` among the checked
    faces (:func:`select_faces` on their :func:`final_box`: the checked landmarks' box inside
    the image, never the raw detection box; see :func:`_choose` for a failed fit).

    Backends whose landmarks come from dlib's predictor (those that keep
    :meth:`Detector.detect`) are landmarked and checked here; the others
    (``fan``) produce landmarks with their boxes (and are not checked). With ``check`` each
    dlib fit goes through :func:`maskkit.face.fit_check.check_landmarks`: ``face.fit`` holds the
    outcome and, when it passed, ``face.landmarks68`` the checked (or recovered) landmarks.
    Faces whose fit failed are returned too (``face.fit.ok`` False): the caller records them
    as ``bad_landmarks``, never as samples. So is a checked face whose detection box holds most of
    a much smaller checked face (:data:`HOLDS_FACE`): a detection at the wrong scale. For BlazeFace the fit is first compared with its
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
        faces = []
        growth = HOG_FINAL_OVER_RAW if policy == "largest" and isinstance(detector, HogDetector) else None
        for f in order:
            if growth is not None and _cannot_win(f, faces, rgb.shape, growth):
                continue  # too small to be chosen, whatever its fit: not fitted
            if _fit_and_check(detector, rgb, f, faces, check):
                faces.append(f)
        holding = _reject_holding(faces, rgb.shape) if check else set()
        if policy != "all":
            faces = _choose(faces, policy, rgb.shape, holding)
        tm["landmarks"] = time.perf_counter() - t0
        return faces
    # backends that produce landmarks together with boxes (fan)
    t0 = time.perf_counter()
    faces = select_faces(detector.detect(rgb), policy, rgb.shape)
    tm["detect"] = time.perf_counter() - t0
    return faces
