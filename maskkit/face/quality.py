"""Face quality checks, in one place: are 68 landmarks on the face, is a crop an aligned face.

Two questions every command asks before a face becomes a sample:

* :func:`check_landmarks` -- *are these 68 points on the face?* dlib's predictor always returns
  68 points, also on a face turned 45 degrees in-plane (where it returns something close to its
  upright mean shape inside the box) and on a non-face. The check is a fixed-point test: the
  face is re-fitted on copies of the image rotated by +-``delta`` degrees about the box centre
  (in the frame where the fit is upright) and mapped back. A fit on a real face is reproduced
  (the predictor follows the face); a fit that is not on the face is not (the refits jump to
  another solution, often the real face). When the first fit fails, an orientation search
  fits the face from start angles ``angle + (-60..60 step 15)`` and keeps the solution they
  converge to most tightly (:data:`MIN_SUPPORT` fits or more); when there is none the face is
  rejected with ``bad_landmarks``.
* :func:`check_aligned_crop` -- *is this image an ArcFace-aligned face crop?* Its size and
  aspect must be those of a crop, the predictor's landmarks in the crop must be a stable fit
  (else ``no_face``) and their 5 points must sit on the template (else ``not_aligned``).

Thresholds are measured, not guessed (see ``benchmarks/landmark_quality.py``):

* rotated copies of the single-face portraits, astronaut, grace_hopper and 19 lfw-johns crops at
  0, +-15, +-30, +-45, 60, +-90 and 180 degrees, eye centres scored against ground truth
  (``photos/*.pts``; the upright fit elsewhere) rotated with the image;
* dlib's VOC ground-truth faces, lfw-johns, the group photos (true faces) and every HOG
  detection down to score -0.6 that is not a face (dogs, clothing, background);
* celeb-aligned (2,223 ArcFace crops) against blank, noise, non-face and loose crops.

Eye agreement is measured as the larger of the two eye-centre distances divided by the
inter-ocular distance (IOD); :data:`FIT_TOL` = 0.10 IOD is also the error the issue allows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["FitCheck", "CropCheck", "check_landmarks", "check_with_keypoints", "KEYPOINT_TOL", "check_aligned_crop", "fit_at_angle", "eye_angle",
           "eye_disagreement", "FIT_DELTA", "FIT_TOL", "SEARCH_ANGLES", "MIN_SUPPORT", "CROP_DELTA",
           "CROP_TOL", "CROP_SURE_TOL", "CROP_MAX_RMS", "CROP_FAR_RMS", "CROP_MIN_STD", "CROP_PAD", "find_face_in_crop", "crop_to_size", "crop_sized", "aligned_hint", "CROP_SIDE_RANGE", "CROP_ASPECT_TOL", "PATCH_BOX"]

#: Box side (pixels) of the normalised patch the refits run in: the face is rotated and scaled
#: so that its detection box is this wide (the predictor works in box-relative coordinates).
PATCH_BOX = 128

#: Rotation (degrees) of the two refits of the fixed-point test on a detected face. Measured:
#: at +-10 degrees 97 of 98 true faces (VOC ground truth + lfw-johns) pass the fast test; at
#: +-20 degrees, 93 of 98.
FIT_DELTA = 10.0

#: Largest eye-centre disagreement (fraction of the inter-ocular distance) between a fit and a
#: refit for the two to count as the same solution.
FIT_TOL = 0.10

#: Start angles of the orientation search, relative to the first fit's own angle (degrees).
#: +-60 covers the +-45 degree faces dlib's HOG still detects (its boxes are on the face, the
#: first fit is not).
SEARCH_ANGLES = tuple(range(-60, 61, 15))

#: How many start fits (of the search angles + the first fit) must converge to one solution
#: for it to be accepted: 3 = a 30 degree basin. A fit that is not on a face converges from
#: one or two neighbouring starts only.
MIN_SUPPORT = 3

#: Rotation (degrees) of the refits of an aligned crop: crops are upright by construction, so a
#: wider test than :data:`FIT_DELTA` (a blank image's constant shape moves by 0.2 IOD at 20).
CROP_DELTA = 20.0

#: Eye disagreement tolerance of the aligned-crop test (fraction of IOD).
CROP_TOL = 0.20

#: A crop whose first refit (rotated by ``+CROP_DELTA``) moves the 5 points by at most this
#: (fraction of the template's eye distance) is stable without the second refit (one predictor
#: run saved on most crops). Measured (``benchmarks/crop_check.py``): 1,428 of the 2,004 crops
#: the two-refit test calls stable have their first refit within 0.05; of the crops it calls
#: unstable, 7 have (all celeb-aligned faces, their verdict unchanged: kept); every blank,
#: noise, dog, loose, shifted, scaled or rotated crop's first refit moves the points by 0.088 or
#: more (a dog crop at 0.094, on the template, would be kept with a bound of 0.10).
CROP_SURE_TOL = 0.05

#: Largest RMS distance (pixels of a 112x112 crop) of a stable fit's 5 points from the ArcFace
#: template for the crop to count as aligned (celeb-aligned: 10.4 at most over the 2,003 stable fits).
CROP_MAX_RMS = 11.0

#: A frontal face found in the crop whose checked 5 points are further than this (pixels RMS at
#: 112x112) from the template is not aligned (celeb-aligned: 9.7 at most over the HOG-found
#: faces whose aligned-box fit is unstable; loose and shifted crops: 14 to 24).
CROP_FAR_RMS = 12.0

#: A crop's side must lie in ``[lo, hi]`` times the target side (a 900x916 photo is not a crop).
CROP_SIDE_RANGE = (0.5, 4.0)

#: Largest relative difference between a crop's aspect (H/W) and the target's.
CROP_ASPECT_TOL = 0.05

#: A crop whose grey levels in the face region vary less than this (std, 0-255) is flat: a
#: blank image, not a face (celeb-aligned: 17 at the least).
CROP_MIN_STD = 4.0

#: Padding (fraction of the crop side, edge replicated) around a crop before detection in it:
#: an aligned face fills most of the crop, larger than HOG's window at the crop's own size.
CROP_PAD = 0.3


def _eyes(lm: np.ndarray) -> np.ndarray:
    lm = np.asarray(lm, dtype=np.float64)
    return np.stack([lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)])


def eye_angle(lm68: np.ndarray) -> float:
    """In-plane angle (degrees) of the line from the image-left to the image-right eye centre.

    Image coordinates (y down): positive when the image-right eye is lower, i.e. the face is
    turned clockwise on screen. Rotating the image by this angle with
    ``cv2.getRotationMatrix2D`` levels the eyes.
    """
    e = _eyes(lm68)
    d = e[1] - e[0]
    return float(np.degrees(np.arctan2(d[1], d[0])))


def eye_disagreement(a: np.ndarray, b: np.ndarray) -> float:
    """Larger of the two eye-centre distances between fits ``a`` and ``b``, divided by their
    mean inter-ocular distance (dimensionless; 0 = same eyes)."""
    ea, eb = _eyes(a), _eyes(b)
    iod = (np.linalg.norm(ea[1] - ea[0]) + np.linalg.norm(eb[1] - eb[0])) / 2
    return float(np.linalg.norm(ea - eb, axis=1).max() / max(iod, 1e-6))


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
            :func:`eye_angle` of a fit is the angle that makes that fit upright.
        box_px: box side in the patch.

    Returns:
        ``(68, 2)`` float32 landmarks in image pixels.
    """
    import cv2

    from .detect import landmarks_in_box, turned_patch

    cx, cy, side = _box_geometry(box)
    size = 2 * box_px
    patch, m = turned_patch(rgb, (cx, cy), angle, box_px / side, size)
    half = box_px / 2
    lm = landmarks_in_box(patch, (size / 2 - half, size / 2 - half, size / 2 + half, size / 2 + half))
    inv = cv2.invertAffineTransform(m)
    return (lm.astype(np.float64) @ inv[:, :2].T + inv[:, 2]).astype(np.float32)


@dataclass
class FitCheck:
    """Outcome of :func:`check_landmarks`.

    Attributes:
        ok: the landmarks are on the face.
        landmarks68: ``(68, 2)`` float32 image pixels: the checked landmarks (the mean of the
            agreeing fits) when ``ok``, else the first fit.
        angle: in-plane angle of the accepted fit (:func:`eye_angle`, degrees).
        spread: eye disagreement (fraction of IOD) of the fast test's refits with the first fit.
        support: number of fits that agreed with the accepted solution (3 in the fast test).
        recovered: the first fit was off and the orientation search found the face.
        reason: ``None`` or ``"bad_landmarks"``.
        detail: a short explanation for logs and failure records.
        method: ``"fixed_point"`` (:func:`check_landmarks`) or ``"keypoints"`` (the fit's eyes
            agree with the detector's own eye keypoints, :func:`check_with_keypoints`).
    """

    ok: bool
    landmarks68: np.ndarray
    angle: float
    spread: float
    support: int
    recovered: bool = False
    reason: str | None = None
    detail: str = ""
    method: str = "fixed_point"

    def as_dict(self) -> dict:
        """JSON-friendly summary (no landmarks)."""
        return {"ok": self.ok, "method": self.method, "angle": round(self.angle, 1),
                "spread": round(self.spread, 3), "support": self.support, "recovered": self.recovered}


def check_landmarks(rgb: np.ndarray, box: Sequence[float], lm68: np.ndarray | None = None, *,
                    angle_hint: float | None = None, delta: float = FIT_DELTA, tol: float = FIT_TOL,
                    search: Sequence[float] = SEARCH_ANGLES, min_support: int = MIN_SUPPORT,
                    angle_range: tuple[float, float] | None = None) -> FitCheck:
    """Check that 68 landmarks are on the face in ``box``; recover them or reject.

    Fast test (3 predictor runs in all): refit at ``a +- delta`` where ``a`` is the first fit's
    :func:`eye_angle`; when both agree with the first fit within ``tol`` the fit is accepted
    and the mean of the three is returned. Otherwise an orientation search (one predictor run
    per start angle in ``search``) looks for a solution that ``min_support`` fits converge to.

    Args:
        rgb: ``(H, W, 3)`` uint8 image.
        box: ``(x0, y0, x1, y1)`` detection box (dlib convention), image pixels.
        lm68: the first fit, ``(68, 2)`` image pixels; ``None`` fits it here (upright, or at
            ``angle_hint``).
        angle_hint: in-plane angle (degrees, :func:`eye_angle` convention) the detector measured
            (BlazeFace keypoints): the first fit is made in that frame.
        delta: refit rotation of the fast test (degrees).
        tol: eye agreement tolerance (fraction of IOD).
        search: start angles of the orientation search, relative to the first fit's angle;
            empty disables recovery.
        min_support: fits that must agree for a searched solution.
        angle_range: ``(lo, hi)`` eye angles (degrees) the detector's own evidence allows (HOG:
            the sub-detector that fired, ``maskkit.face.detect.HOG_SUBDETECTOR_ANGLES``); a
            solution outside is not accepted. Measured need: two lfw-johns faces turned 45
            degrees had stuck upright fits that passed the fast test (0.09 and 0.10) with eyes
            0.8-0.95 IOD off; their sub-detector said "turned" the other way.

    Returns:
        :class:`FitCheck`.
    """
    from .detect import landmarks_in_box

    if lm68 is None:
        lm68 = fit_at_angle(rgb, box, angle_hint) if angle_hint is not None else landmarks_in_box(rgb, box)
    first = np.asarray(lm68, dtype=np.float64)
    if first.shape != (68, 2) or not np.all(np.isfinite(first)):
        return FitCheck(False, np.asarray(lm68, np.float32), 0.0, float("inf"), 0, reason="bad_landmarks",
                        detail="no finite 68-point fit")
    a0 = eye_angle(first)
    plus, minus = fit_at_angle(rgb, box, a0 + delta), fit_at_angle(rgb, box, a0 - delta)
    spread = max(eye_disagreement(plus, first), eye_disagreement(minus, first))
    def allowed(lm) -> bool:
        return angle_range is None or angle_range[0] <= eye_angle(lm) <= angle_range[1]

    if spread <= tol:
        mean = ((first + plus + minus) / 3).astype(np.float32)
        if allowed(mean):
            return FitCheck(True, mean, eye_angle(mean), spread, 3)
    if not search:
        return FitCheck(False, first.astype(np.float32), a0, spread, 1, reason="bad_landmarks",
                        detail=f"landmarks not on the face: refits {delta:g} deg apart move the eyes by "
                               f"{spread:.2f} of the eye distance (limit {tol:g})")
    fits = [first] + [fit_at_angle(rgb, box, a0 + g).astype(np.float64) for g in search]
    dis = np.array([[eye_disagreement(a, b) for b in fits] for a in fits])
    # the solution is the fit with the largest *soft* support (each fit counts 1 - d/tol when
    # within tol): two groups of three can agree, and the one that agrees tightly is the face
    # (measured: the true face's group agrees within 0.01-0.02 IOD, a stuck fit's within 0.1)
    soft = np.clip(1.0 - dis / tol, 0.0, None).sum(axis=1)
    soft[[not allowed(f) for f in fits]] = -1.0
    centre = int(np.argmax(soft))
    best = [fits[j] for j in np.flatnonzero(dis[centre] <= tol)]
    if soft[centre] >= 0 and len(best) >= min_support and allowed(np.mean(best, axis=0)):
        mean = np.mean(best, axis=0).astype(np.float32)
        return FitCheck(True, mean, eye_angle(mean), spread, len(best),
                        recovered=eye_disagreement(mean, first) > tol)
    return FitCheck(False, first.astype(np.float32), a0, spread, len(best), reason="bad_landmarks",
                    detail=f"landmarks not on the face: refits {delta:g} deg apart move the eyes by {spread:.2f} "
                           f"of the eye distance and no orientation from {min(search):+g} to {max(search):+g} "
                           f"deg gives a stable fit ({len(best)} of {len(fits)} agree, {min_support} needed)")


#: Largest disagreement (fraction of the keypoints' eye distance) between a fit's eye centres
#: and the detector's eye keypoints (BlazeFace) for the fit to count as on the face without the
#: fixed-point test. BlazeFace's eye keypoints and dlib's eye centres differ by 0.08 (median)
#: to 0.18 (max) on lfw-johns; on masked faces the fixed-point test rejects fits whose eyes are
#: right (a mask hides the lower face, the lower points wander between refits): with this
#: rule real-masked keeps 430 of the 449 images BlazeFace finds a face in (390 with the
#: fixed-point test alone).
KEYPOINT_TOL = 0.30


def check_with_keypoints(rgb: np.ndarray, box: Sequence[float], lm68: np.ndarray, keypoints: np.ndarray, *,
                         kp_tol: float = KEYPOINT_TOL, **kwargs) -> FitCheck:
    """Landmark check for a detector with eye keypoints (BlazeFace: 0 image-left eye, 1
    image-right eye of an upright face): a fit whose eye centres lie within ``kp_tol`` of them
    (fraction of their distance) is accepted as it is; otherwise :func:`check_landmarks`
    decides (``kwargs`` go to it).
    """
    ke = np.asarray(keypoints, np.float64)[:2]
    iod = float(np.linalg.norm(ke[1] - ke[0]))
    lm = np.asarray(lm68, np.float64)
    if lm.shape == (68, 2) and np.all(np.isfinite(lm)) and iod > 0:
        d = float(np.linalg.norm(_eyes(lm) - ke, axis=1).max() / iod)
        if d <= kp_tol:
            return FitCheck(True, lm.astype(np.float32), eye_angle(lm), d, 1, method="keypoints")
    return check_landmarks(rgb, box, lm68, **kwargs)


# --------------------------------------------------------------------------------------------
# aligned crops
# --------------------------------------------------------------------------------------------

@dataclass
class CropCheck:
    """Outcome of :func:`check_aligned_crop`.

    Attributes:
        ok: the crop is an aligned face.
        reason: ``None``, ``"not_aligned"`` (wrong size/aspect, or a face off the template) or
            ``"no_face"`` (the landmarks do not lock onto a face).
        detail: explanation.
        landmarks68: ``(68, 2)`` float32 landmarks in the (resized) crop, or ``None`` when the
            size check failed before fitting.
        rms: RMS distance (pixels of a 112-wide crop) of the crop's 5 points from the template.
        spread: largest 5-point displacement of the rotated refits made (fraction of the
            template's eye distance; one refit when the first settled the test, see
            :data:`CROP_SURE_TOL`).
        image: the crop resized to the target size (what the landmarks refer to), or ``None``.
        how: what decided: ``"template"`` (a stable fit in the aligned box), ``"detected"`` (a
            detected face's checked fit), ``"unverified"`` (a face is there, its points cannot
            be checked: kept as given).
    """

    ok: bool
    reason: str | None = None
    detail: str = ""
    landmarks68: np.ndarray | None = None
    rms: float | None = None
    spread: float | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    how: str | None = None

    def as_dict(self) -> dict:
        return {"ok": self.ok, "reason": self.reason, "how": self.how,
                "rms": None if self.rms is None else round(self.rms, 2),
                "spread": None if self.spread is None else round(self.spread, 3)}


def crop_to_size(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An aligned crop brought to ``size`` ``(H, W)``: a 112x112 crop for 112x96 keeps columns
    8..104 (insightface's 112x96 template is the 112x112 one shifted by -8 in x); other sizes
    are resized (``INTER_AREA``)."""
    import cv2

    h, w = int(size[0]), int(size[1])
    if rgb.shape[:2] == (h, w):
        return np.ascontiguousarray(rgb)
    if rgb.shape[:2] == (112, 112) and (h, w) == (112, 96):
        return np.ascontiguousarray(rgb[:, 8:104])
    return cv2.resize(np.ascontiguousarray(rgb), (w, h), interpolation=cv2.INTER_AREA)


def _size_problem(shape: tuple[int, ...], size: tuple[int, int]) -> str | None:
    h, w = int(shape[0]), int(shape[1])
    th, tw = int(size[0]), int(size[1])
    if (h, w) == (112, 112) and (th, tw) == (112, 96):
        return None
    aspect, target = h / max(w, 1), th / tw
    if abs(aspect / target - 1) > CROP_ASPECT_TOL:
        return f"{w}x{h} has aspect {aspect:.2f}, an aligned {tw}x{th} crop has {target:.2f}"
    lo, hi = CROP_SIDE_RANGE
    if not lo * th <= h <= hi * th:
        return f"{w}x{h} is not the size of an aligned {tw}x{th} crop ({lo:g}x to {hi:g}x of it)"
    return None


def _template_rms(lm68: np.ndarray, size: tuple[int, int]) -> float:
    from .align import arcface_template, five_points

    return float(np.sqrt(((five_points(lm68) - arcface_template(size)) ** 2).sum(1).mean()) * 112.0 / size[0])


def _five_point_spread(crop: np.ndarray, box, lm: np.ndarray, delta: float, sure: float = 0.0,
                       tol: float = float("inf")) -> float:
    """Largest 5-point displacement (fraction of the template's eye distance) between the fit in
    ``box`` and its refits on copies rotated by ``+delta``, then ``-delta``; the second refit is
    skipped when the first settles the test (at most ``sure``: stable; above ``tol``: unstable),
    and the spread is then the first refit's."""
    from .align import arcface_template, five_points

    t = arcface_template(crop.shape[:2])
    iod = float(np.linalg.norm(t[1] - t[0]))
    p5 = five_points(lm)
    spread = 0.0
    for d in (delta, -delta):
        spread = max(spread, float(np.linalg.norm(five_points(fit_at_angle(crop, box, d)) - p5, axis=1).max()) / iod)
        if spread <= sure or spread > tol:
            break
    return spread


def find_face_in_crop(crop: np.ndarray, cnn: bool = True) -> tuple[tuple[float, float, float, float], str] | None:
    """Detect the largest face in a small crop: HOG (upsample 1, with its second look) on the
    crop padded by :data:`CROP_PAD` of its side (edge replicated, so a face filling the crop
    still fits the detector's window), then dlib's CNN (upsample 0, then 1) when HOG finds
    nothing and ``cnn``. Returns ``(box, "hog"|"cnn")`` in crop pixels, or ``None``."""
    import cv2

    from .detect import DetectorUnavailable, get_detector

    h, w = crop.shape[:2]
    pad = int(round(CROP_PAD * max(h, w)))
    padded = cv2.copyMakeBorder(np.ascontiguousarray(crop), pad, pad, pad, pad, cv2.BORDER_REPLICATE)

    def largest(boxes):
        if not boxes:
            return None
        b = max(boxes, key=lambda x: (x[2] - x[0]) * (x[3] - x[1]))
        return (b[0] - pad, b[1] - pad, b[2] - pad, b[3] - pad)

    box = largest([b for b, _, _ in get_detector("hog", upsample=1, max_side=0).detect_boxes(padded)])
    if box is not None:
        return box, "hog"
    if cnn:
        try:
            det = get_detector("cnn", upsample=0, max_side=0)
        except DetectorUnavailable:
            return None
        for up in (0, 1):
            det.upsample = up
            box = largest([b for b, _, _ in det.detect_boxes(padded)])
            if box is not None:
                return box, "cnn"
    return None


def check_aligned_crop(rgb: np.ndarray, size: tuple[int, int] = (112, 112), *, cnn: bool = True,
                       delta: float = CROP_DELTA, tol: float = CROP_TOL, sure: float = CROP_SURE_TOL,
                       max_rms: float = CROP_MAX_RMS, far_rms: float = CROP_FAR_RMS) -> CropCheck:
    """Check that an image is an ArcFace-aligned face crop for ``size``.

    A crop is rejected only on clear evidence, so that real aligned faces whose landmarks
    cannot be fitted (profiles, occlusion: about 10% of celeb-aligned) are kept:

    1. size and aspect (:data:`CROP_SIDE_RANGE`, :data:`CROP_ASPECT_TOL`), else ``not_aligned``;
    2. a flat image (grey-level std below :data:`CROP_MIN_STD` in the face region): ``no_face``;
    3. the crop is brought to ``size`` (:func:`crop_to_size`) and dlib's 68 points are fitted in
       the box an aligned crop's face occupies (``maskkit.face.detect.ALIGNED_BOX_FRACTION``).
       A *stable* fit (refits on copies rotated by ``+-delta`` move the 5 points by at most
       ``tol`` of the template's eye distance; the first refit alone settles it when it moves
       them by at most ``sure`` or by more than ``tol``) is on a face: its 5 points within
       ``max_rms`` pixels RMS (112-pixel units) of the template make the crop aligned
       (``how="template"``), further off ``not_aligned``;
    4. otherwise the face is looked for (:func:`find_face_in_crop`); none is ``no_face``. A
       frontal face (found by HOG) whose 68 points pass :func:`check_landmarks`' fast test and
       lie more than ``far_rms`` from the template is ``not_aligned`` (``landmarks68`` are its
       checked points: a caller may re-align with them); any other face is kept
       (``how="detected"`` when its checked points are on the template, else
       ``how="unverified"``).

    Measured (``benchmarks/crop_check.py``): celeb-aligned 2,223 of 2,223 kept (2,003 by the
    template fit, 1,435 of them after one refit); blank, noise and dog crops ``no_face``; loose,
    shifted, half-scale and 30/45-degree rotated crops of astronaut, grace_hopper and celeb faces
    ``not_aligned``. Cost (one core): about 2.8 ms a crop the template fit settles (3 predictor
    runs, 2 when the first refit settles it), 20-35 ms when HOG finds the face, 0.1 s when dlib's
    CNN must look (0.6 s when it needs upsampling): 8.6 ms a crop on average over celeb-aligned,
    half of it the CNN's look at the 3.7 % of crops (profiles) that only it finds.

    Args:
        rgb: ``(H, W, 3)`` uint8 image claimed to be an aligned crop.
        size: target ``(H, W)``.
        cnn: let dlib's CNN look for faces HOG misses (about 0.1 s a crop, 0.6 s when it needs
            upsampling; only for crops whose landmarks are unstable and where HOG finds nothing).
        delta, tol: refit rotation (degrees) and stability bound (fraction of the template's
            eye distance) of the template fit.
        sure: a first refit within this is stable without the second (:data:`CROP_SURE_TOL`;
            0 always makes both refits).
        max_rms, far_rms: template distances (pixels RMS at 112x112), see step 3 and 4.

    Returns:
        :class:`CropCheck` (``image`` is the crop at ``size``, ``landmarks68`` its landmarks).
    """
    size = (int(size[0]), int(size[1]))
    problem = _size_problem(rgb.shape, size)
    if problem:
        return CropCheck(False, "not_aligned", problem)
    import cv2

    from .detect import ALIGNED_BOX_FRACTION, landmarks_in_box

    crop = crop_to_size(rgb, size)
    h, w = crop.shape[:2]
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    std = float(gray[int(0.18 * h):int(0.9 * h), int(0.13 * w):int(0.87 * w)].std())
    if std < CROP_MIN_STD:
        return CropCheck(False, "no_face", f"a flat image (grey-level std {std:.1f}), not a face", image=crop)
    fx0, fy0, fx1, fy1 = ALIGNED_BOX_FRACTION
    box = (fx0 * w, fy0 * h, fx1 * w, fy1 * h)
    lm = landmarks_in_box(crop, box)
    spread = _five_point_spread(crop, box, lm, delta, sure=sure, tol=tol)
    rms = _template_rms(lm, size)
    if spread <= tol:
        if rms <= max_rms:
            return CropCheck(True, None, "", lm, rms, spread, crop, how="template")
        return CropCheck(False, "not_aligned", f"face not on the ArcFace template: its 5 points are {rms:.1f} px "
                         f"RMS from it (limit {max_rms:g} px at 112x112)", lm, rms, spread, crop, how="template")
    found = find_face_in_crop(crop, cnn=cnn)
    if found is None:
        return CropCheck(False, "no_face", f"no face found in the crop (its landmarks are unstable: a refit "
                         f"{delta:g} deg off moves them by {spread:.2f} of the eye distance)", lm, rms, spread, crop)
    fbox, how = found
    # fast test only: a crop claimed aligned is upright, and the orientation search's weaker
    # evidence is not enough to call a crop misaligned
    fit = check_landmarks(crop, fbox, search=())
    if fit.ok:
        frms = _template_rms(fit.landmarks68, size)
        if frms <= max_rms:
            return CropCheck(True, None, "", fit.landmarks68, frms, spread, crop, how="detected")
        if how == "hog" and frms > far_rms:
            return CropCheck(False, "not_aligned", f"face not on the ArcFace template: its 5 points are {frms:.1f} "
                             f"px RMS from it (limit {far_rms:g} px at 112x112)", fit.landmarks68, frms, spread, crop,
                             how="detected")
    return CropCheck(True, None, "", lm, rms, spread, crop, how="unverified")


# --------------------------------------------------------------------------------------------
# a forgotten --aligned
# --------------------------------------------------------------------------------------------

#: An input at most this many pixels a side, about square, has the size of an aligned crop.
CROP_SIZED_MAX = 128


def crop_sized(shape: tuple[int, ...]) -> bool:
    """The image has the size of an aligned face crop (at most :data:`CROP_SIZED_MAX` a side,
    aspect 0.8..1.25, e.g. 112x112 or 112x96)."""
    h, w = int(shape[0]), int(shape[1])
    return max(h, w) <= CROP_SIZED_MAX and 0.8 <= h / max(w, 1) <= 1.25


def aligned_hint(files: int, crop_sized_files: int, crop_sized_no_face: int) -> str | None:
    """A hint for a run without ``--aligned`` over aligned crops, or ``None``.

    Detectors miss faces that fill the whole image: on celeb-aligned, HOG finds no face in 8%
    of the 112x112 crops. When most inputs have a crop's size (:func:`crop_sized`) and at least
    2% of those (and 2 or more) had no face, the inputs are most likely aligned crops.
    """
    if files <= 0 or crop_sized_files < max(1, files // 2) or crop_sized_no_face < max(2, 0.02 * crop_sized_files):
        return None
    return (f"{crop_sized_files:,} of {files:,} inputs have the size of aligned face crops and "
            f"{crop_sized_no_face:,} of them had no face found: these look like aligned crops: "
            "add --aligned (the crops are then checked against the ArcFace template instead)")
