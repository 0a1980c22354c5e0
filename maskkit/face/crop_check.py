"""Is this image an ArcFace-aligned face crop? The check ``--aligned`` inputs go through.

:func:`check_aligned_crop`: its size and aspect must be those of a crop, the predictor's
landmarks in the crop must be a stable fit (else ``no_face``) and their 5 points must sit on the
template (else ``not_aligned``). :func:`crop_sized` and :func:`aligned_hint` notice a run over
aligned crops that forgot ``--aligned``.

Thresholds are measured, not guessed (see ``benchmarks/crop_check.py``): celeb-aligned (2,223
ArcFace crops) against blank, noise, non-face and loose crops.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .align import arcface_template, five_points
from .detect import get_detector
from .fit_check import check_landmarks, eye_angle
from .landmarks import ALIGNED_BOX_FRACTION, fit_at_angle, landmarks_in_box
from .models import DetectorUnavailable

__all__ = ["CropCheck", "check_aligned_crop", "find_face_in_crop", "crop_to_size", "crop_sized", "aligned_hint",
           "CROP_DELTA", "CROP_TOL", "CROP_SURE_TOL", "CROP_MAX_RMS", "CROP_FAR_RMS", "CROP_LEVEL_ANGLE", "CROP_SIDE_RANGE",
           "CROP_ASPECT_TOL", "CROP_MIN_STD", "CROP_PAD", "CROP_SIZED_MAX", "BLAZE_CROP_MIN_SCORE",
           "BLAZE_CROP_MAX_ANGLE", "BLAZE_CROP_UPRIGHT_GAP", "BLAZE_CROP_MESH_SIDE", "BLAZE_CROP_MESH_PRESENCE",
           "CNN_UPRIGHT_PAD"]

#: Rotation (degrees) of the refits of an aligned crop: crops are upright by construction, so a
#: wider test than :data:`~maskkit.face.fit_check.FIT_DELTA` (a blank image's constant shape moves by 0.2 IOD at 20).
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
#: 112x112) from the template is not aligned, when the detector confirms the face is off the
#: template (:data:`CROP_LEVEL_ANGLE`: the box covers the crop's centre, and a tilted fit is what
#: HOG's turned sub-detector saw). Measured (``benchmarks/crop_check_reencode.py`` on the 220
#: celeb-aligned crops whose aligned-box fit is unstable, as they are and re-saved as JPEG q70-q95
#: or resized 112->224->112 and 112->96->112; ``benchmarks/crop_check.py`` for the negatives):
#: confirmed fits of real crops 10.3 px at most (1.7 under the limit); every loose, shifted,
#: half-scale, rotated and lfw-johns crop 13.6 or more (rotated 30 degrees; 1.6 over it; untilted
#: ones 14.0 or more).
CROP_FAR_RMS = 12.0

#: A face found in an aligned crop whose checked fit is tilted by more than this (degrees,
#: :func:`~maskkit.face.fit_check.eye_angle`) is off the template only when HOG's turned
#: sub-detector on the same side fired for it (``maskkit.face.dlib_detectors.HOG_SUBDETECTOR_ANGLES``:
#: 3 for negative angles, 4 for positive ones); under an upright sub-detector the tilt is the fit's
#: word against the detector's, and the crop is kept ``unverified``. Measured (issue 20): two
#: occluded celeb-aligned faces (Barack_Obama/27.jpg, hand over the mouth; Tina_Fey/8984.jpg, food)
#: re-saved as JPEG q90/q95 or resized get fits 12.4-13.8 px off the template, tilted -18.7 to
#: -21.4 degrees, from sub-detectors 0 and 2 (the crops are upright: their eyes are level); every
#: crop rotated 30 or 45 degrees fires sub-detector 3 with fits at -26 to -46; the untilted
#: negatives' fits lie within 8.5 degrees (a crop turned 180; loose, shifted, scaled, lfw-johns:
#: 5.2). The bound sits about 5 degrees from both sides.
CROP_LEVEL_ANGLE = 13.5

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

#: The fast look at a crop HOG finds no face in (:func:`find_face_in_crop`), made before dlib's
#: CNN (0.1 s a crop, 0.6 s when it must upsample) with the ``blazeface`` extra: BlazeFace (both
#: models, about 2.5 ms) on the padded crop, as it is and turned over, and the face mesh
#: (``maskkit.face.mesh``, 1.5 ms) on the face it finds. Its largest detection scoring at least
#: :data:`BLAZE_CROP_MIN_SCORE` is taken as an upright face when its eye keypoints are level
#: within :data:`BLAZE_CROP_MAX_ANGLE` degrees (an aligned crop is upright), the crop scores at
#: least :data:`BLAZE_CROP_UPRIGHT_GAP` higher as it is than turned over (best score of both
#: models, down to 0.3: BlazeFace puts an upside-down face's keypoints as if it were upright),
#: and the mesh, looking at the face levelled in a square :data:`BLAZE_CROP_MESH_SIDE` times its
#: box, gives it a presence of at least :data:`BLAZE_CROP_MESH_PRESENCE`. Anything else goes on
#: to the CNN, as does a face whose checked fit is not on the template (:func:`check_aligned_crop`:
#: the look settles ``detected`` crops only).
#: Measured (``benchmarks/crop_check.py``, the 449 crops whose template fit is unstable; 121 of
#: them have no HOG face and a BlazeFace one): the 13 celeb crops turned 180 degrees score 0.19 to
#: 0.38 lower as they are (celeb-aligned's 78: -0.06 once, else 0.01 to 0.73 higher); of the two
#: dog crops BlazeFace sees (dlib's CNN: none), one has mesh presence 0.001, the other (1.0) no
#: checked fit on the template; celeb-aligned's: presence 0.5 or more for 68 of 78.
BLAZE_CROP_MIN_SCORE = 0.5
BLAZE_CROP_MAX_ANGLE = 25.0
BLAZE_CROP_UPRIGHT_GAP = 0.0
BLAZE_CROP_MESH_SIDE = 1.4
BLAZE_CROP_MESH_PRESENCE = 0.5

#: Padding (fraction of the crop side) of the canvas dlib's CNN looks at when BlazeFace saw an
#: upright face in the crop (its largest detection scoring :data:`BLAZE_CROP_MIN_SCORE` or more,
#: eye keypoints level within :data:`BLAZE_CROP_MAX_ANGLE`) that its own look could not settle;
#: other crops keep :data:`CROP_PAD`. The CNN's cost grows with the canvas (0.16 s a look at
#: 180x180, 0.07 s at the crop's own 112x112 on this machine; 0.8 s and 0.3 s when it must
#: upsample; one core). Measured on the crops of ``benchmarks/crop_check.py`` (the 102 whose
#: template fit is unstable, no HOG face and an upright BlazeFace face): the CNN finds a face on the unpadded crop
#: exactly where it finds one on the padded canvas (the 78 celeb-aligned crops and 9 shifted,
#: scaled or 30-degree turned ones: found; 2 dog crops and 13 celeb crops turned 180 degrees:
#: none), and ``crop_check.py --compare`` shows no change between kept, ``no_face`` and
#: ``not_aligned``. The weakest celeb profile scores 0.062 unpadded (Leonardo_DiCaprio/6001.jpg,
#: 0.315 padded at upsample 1); the weakest padded one, Hugh_Laurie/3496.jpg (0.021 at upsample
#: 1), scores 0.68 unpadded. A 0.15 padding loses one celeb profile (6101.jpg), so the padding is
#: 0 or :data:`CROP_PAD`, nothing between. Turned crops (BlazeFace's keypoints not level) keep the
#: padded canvas: unpadded, the CNN finds 5 faces the padded look does not in 45 and 90 degree
#: turned celeb crops and loses one.
CNN_UPRIGHT_PAD = 0.0


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
    return float(np.sqrt(((five_points(lm68) - arcface_template(size)) ** 2).sum(1).mean()) * 112.0 / size[0])


def _five_point_spread(crop: np.ndarray, box, lm: np.ndarray, delta: float, sure: float = 0.0,
                       tol: float = float("inf")) -> float:
    """Largest 5-point displacement (fraction of the template's eye distance) between the fit in
    ``box`` and its refits on copies rotated by ``+delta``, then ``-delta``; the second refit is
    skipped when the first settles the test (at most ``sure``: stable; above ``tol``: unstable),
    and the spread is then the first refit's."""
    t = arcface_template(crop.shape[:2])
    iod = float(np.linalg.norm(t[1] - t[0]))
    p5 = five_points(lm)
    spread = 0.0
    for d in (delta, -delta):
        spread = max(spread, float(np.linalg.norm(five_points(fit_at_angle(crop, box, d)) - p5, axis=1).max()) / iod)
        if spread <= sure or spread > tol:
            break
    return spread


def _blaze_face(padded: np.ndarray) -> tuple[tuple[float, float, float, float] | None, bool]:
    """BlazeFace's upright face in a padded crop, seen by the face mesh too (see
    :data:`BLAZE_CROP_UPRIGHT_GAP`): ``(box, upright)``, ``box`` its predictor box in the padded
    crop's pixels or ``None`` (no such face, or the ``blazeface`` extra is not installed);
    ``upright``: BlazeFace's largest face is upright (score and level keypoints, before the
    turned-over and mesh tests; :data:`CNN_UPRIGHT_PAD`)."""
    from .blazeface import keypoint_angle
    from .mesh import face_mesh

    try:
        det, mesh = get_detector("blazeface"), face_mesh()
    except DetectorUnavailable:
        return None, False
    dets = det.scan(padded, 0.3)
    faces = [d for d in dets if d[1] >= BLAZE_CROP_MIN_SCORE]
    if not faces:
        return None, False
    box, _, kp = max(faces, key=lambda d: (d[0][2] - d[0][0]) * (d[0][3] - d[0][1]))
    angle = keypoint_angle(kp)
    if angle is None or abs(angle) > BLAZE_CROP_MAX_ANGLE:
        return None, False
    over = max((d[1] for d in det.scan(np.ascontiguousarray(padded[::-1, ::-1]), 0.3)), default=0.0)
    if max(d[1] for d in dets) - over < BLAZE_CROP_UPRIGHT_GAP:
        return None, True
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    _, presence = mesh.look(padded, centre, BLAZE_CROP_MESH_SIDE * (box[2] - box[0]), angle)
    return (box if presence >= BLAZE_CROP_MESH_PRESENCE else None), True


def find_face_in_crop(crop: np.ndarray, cnn: bool = True, blaze: bool = True, hog: bool = True,
                      upright: bool = False) -> tuple[tuple[float, float, float, float], str] | None:
    """Detect the largest face in a small crop: HOG (upsample 1, with its second look) on the
    crop padded by :data:`CROP_PAD` of its side (edge replicated, so a face filling the crop
    still fits the detector's window); when HOG finds nothing, BlazeFace's upright face
    (``blaze``, when installed; :data:`BLAZE_CROP_UPRIGHT_GAP`), then dlib's CNN (upsample 0,
    then 1) when ``cnn``; ``hog=False`` skips HOG (the CNN's look after BlazeFace's). Returns
    ``(box, "hog"|"blazeface"|"cnn")`` in crop pixels, or ``None``. The CNN looks at the crop
    padded by :data:`CNN_UPRIGHT_PAD` instead when BlazeFace saw an upright face in it (its look
    here, or ``upright``: the caller's)."""
    padded, pad = _padded(crop)

    def unpad(b):
        return (b[0] - pad, b[1] - pad, b[2] - pad, b[3] - pad)

    def largest(boxes):
        if not boxes:
            return None
        return unpad(max(boxes, key=lambda x: (x[2] - x[0]) * (x[3] - x[1])))

    box = largest([b for b, _, _ in get_detector("hog", upsample=1, max_side=0).detect_boxes(padded)]) if hog else None
    if box is not None:
        return box, "hog"
    if blaze:
        box, seen_upright = _blaze_face(padded)
        if box is not None:
            return unpad(box), "blazeface"
        upright = upright or seen_upright
    if cnn:
        try:
            det = get_detector("cnn", upsample=0, max_side=0)
        except DetectorUnavailable:
            return None
        canvas, cpad = _padded(crop, CNN_UPRIGHT_PAD) if upright else (padded, pad)
        for up in (0, 1):
            det.upsample = up
            boxes = det.detect_boxes(canvas)
            if boxes:
                b = max((b for b, _, _ in boxes), key=lambda x: (x[2] - x[0]) * (x[3] - x[1]))
                return (b[0] - cpad, b[1] - cpad, b[2] - cpad, b[3] - cpad), "cnn"
    return None


def _padded(crop: np.ndarray, frac: float = CROP_PAD) -> tuple[np.ndarray, int]:
    """``(crop with its edges replicated outwards by frac of its longer side, that pad in pixels)``."""
    import cv2

    pad = int(round(frac * max(crop.shape[:2])))
    return cv2.copyMakeBorder(np.ascontiguousarray(crop), pad, pad, pad, pad, cv2.BORDER_REPLICATE), pad


def _off_template_confirmed(crop: np.ndarray, box, lm68: np.ndarray) -> bool:
    """Does the detector confirm that the HOG-found face whose checked fit ``lm68`` lies far from
    the template is the crop's face, off the template? Its box must cover the crop's centre (a
    loose, shifted or scaled crop is still centred on its face; a small detection beside it is
    something else in the crop), and a fit tilted by more than :data:`CROP_LEVEL_ANGLE` must be
    what HOG's turned sub-detector on that side saw (one more HOG run, made only for far fits)."""
    h, w = crop.shape[:2]
    if not (box[0] <= w / 2 <= box[2] and box[1] <= h / 2 <= box[3]):
        return False
    angle = eye_angle(lm68)
    if abs(angle) <= CROP_LEVEL_ANGLE:
        return True
    padded, pad = _padded(crop)
    dets = get_detector("hog", upsample=1, max_side=0).detect_oriented(padded)
    if not dets:
        return False
    _, _, sub = max(dets, key=lambda d: (d[0][2] - d[0][0]) * (d[0][3] - d[0][1]))
    return sub == (3 if angle < 0 else 4)


def check_aligned_crop(rgb: np.ndarray, size: tuple[int, int] = (112, 112), *, cnn: bool = True,
                       blaze: bool = True, delta: float = CROP_DELTA, tol: float = CROP_TOL, sure: float = CROP_SURE_TOL,
                       max_rms: float = CROP_MAX_RMS, far_rms: float = CROP_FAR_RMS) -> CropCheck:
    """Check that an image is an ArcFace-aligned face crop for ``size``.

    A crop is rejected only on clear evidence, so that real aligned faces whose landmarks
    cannot be fitted (profiles, occlusion: about 10% of celeb-aligned) are kept:

    1. size and aspect (:data:`CROP_SIDE_RANGE`, :data:`CROP_ASPECT_TOL`), else ``not_aligned``;
    2. a flat image (grey-level std below :data:`CROP_MIN_STD` in the face region): ``no_face``;
    3. the crop is brought to ``size`` (:func:`crop_to_size`) and dlib's 68 points are fitted in
       the box an aligned crop's face occupies (``maskkit.face.landmarks.ALIGNED_BOX_FRACTION``).
       A *stable* fit (refits on copies rotated by ``+-delta`` move the 5 points by at most
       ``tol`` of the template's eye distance; the first refit alone settles it when it moves
       them by at most ``sure`` or by more than ``tol``) is on a face: its 5 points within
       ``max_rms`` pixels RMS (112-pixel units) of the template make the crop aligned
       (``how="template"``), further off ``not_aligned``;
    4. otherwise the face is looked for (:func:`find_face_in_crop`); none is ``no_face``. A
       frontal face (found by HOG) whose 68 points pass :func:`check_landmarks`' fast test and
       lie more than ``far_rms`` from the template is ``not_aligned`` when the detector confirms
       it (its box covers the crop's centre; a fit tilted beyond :data:`CROP_LEVEL_ANGLE` needs
       HOG's turned sub-detector on that side; ``landmarks68`` are its checked points: a caller
       may re-align with them); any other face is kept
       (``how="detected"`` when its checked points are on the template, else
       ``how="unverified"``).

    Measured (``benchmarks/crop_check.py``): celeb-aligned 2,223 of 2,223 kept (2,003 by the
    template fit, 1,435 of them after one refit); blank, noise and dog crops ``no_face``; loose,
    shifted, half-scale and 30/45-degree rotated crops of astronaut, grace_hopper and celeb faces
    ``not_aligned``. Cost (one core): about 2.8 ms a crop the template fit settles (3 predictor
    runs, 2 when the first refit settles it), 20-35 ms when HOG finds the face, 0.1 s when dlib's
    CNN must look (0.6 s when it needs upsampling): 8.6 ms a crop on average over celeb-aligned,
    half of it the CNN's look at the 3.7 % of crops (profiles) that only it finds. With
    BlazeFace installed (``blaze``), its look (about 5 ms: both models, the crop as it is and
    turned over) comes before the CNN's and takes most of those profiles.

    Args:
        rgb: ``(H, W, 3)`` uint8 image claimed to be an aligned crop.
        size: target ``(H, W)``.
        cnn: let dlib's CNN look for faces HOG misses (about 0.1 s a crop, 0.6 s when it needs
            upsampling; only for crops whose landmarks are unstable and where HOG finds nothing).
        blaze: let BlazeFace look first (:data:`BLAZE_CROP_UPRIGHT_GAP`; skipped when it is not
            installed).
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
    found = find_face_in_crop(crop, cnn=cnn, blaze=blaze)
    fit = None
    if found is not None and found[1] == "blazeface":
        # BlazeFace's look settles only a face whose checked fit lies on the template (kept
        # "detected"); any other face it sees is left to dlib's CNN, as before it looked (a dog
        # crop seen by BlazeFace at 0.73 and by the face mesh at 1.0, measured, is no face for it)
        fit = check_landmarks(crop, found[0], search=())
        if not (fit.ok and _template_rms(fit.landmarks68, size) <= max_rms):
            found, fit = find_face_in_crop(crop, cnn=cnn, blaze=False, hog=False, upright=True), None
    if found is None:
        return CropCheck(False, "no_face", f"no face found in the crop (its landmarks are unstable: a refit "
                         f"{delta:g} deg off moves them by {spread:.2f} of the eye distance)", lm, rms, spread, crop)
    fbox, how = found
    # fast test only: a crop claimed aligned is upright, and the orientation search's weaker
    # evidence is not enough to call a crop misaligned
    fit = fit or check_landmarks(crop, fbox, search=())
    if fit.ok:
        frms = _template_rms(fit.landmarks68, size)
        if frms <= max_rms:
            return CropCheck(True, None, "", fit.landmarks68, frms, spread, crop, how="detected")
        if how == "hog" and frms > far_rms and _off_template_confirmed(crop, fbox, fit.landmarks68):
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
