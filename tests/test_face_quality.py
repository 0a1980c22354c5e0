"""Face quality (issue 12 §5-§7): landmarks that are not on the face are recovered or rejected,
crops that are not aligned faces never become samples, and the defaults keep the subject.

Always-on tests use the dependency-shipped faces (astronaut, grace_hopper): rotated copies, a
blank and a non-face crop under ``--aligned``, a loose 112x112 crop. Shared-data tests (skipped
when ``../shared/data`` is absent) cover einstein.jpg's subject and BlazeFace's close-ups.

Eye errors are measured as the larger eye-centre distance over the reference inter-ocular
distance (IOD), the unit of the issue's 10% criterion; the reference is the upright image's fit
rotated with the image (these two faces are frontal and upright, their upright fit is right).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from maskkit.face.detect import make_detector
from maskkit.face.landmarks import landmarks_in_box
from maskkit.face.selection import find_faces
from maskkit.io.image_io import load_image

TOL = 0.10  # eye error allowed, fraction of the IOD (issue 12 §6)


@pytest.fixture(scope="module")
def hog():
    return make_detector("hog")


def _eyes(lm) -> np.ndarray:
    lm = np.asarray(lm, float)
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0)])


def _eye_angle(lm) -> float:
    e = _eyes(lm)
    return float(np.degrees(np.arctan2(e[1, 1] - e[0, 1], e[1, 0] - e[0, 0])))


def _eye_error(lm, ref) -> float:
    e, r = _eyes(lm), _eyes(ref)
    return float(np.linalg.norm(e - r, axis=1).max() / np.linalg.norm(r[1] - r[0]))


def _rotate(rgb: np.ndarray, deg: float, pts: np.ndarray):
    """Rotate counter-clockwise by ``deg`` on a canvas that keeps the whole image."""
    h, w = rgb.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(h * s + w * c + 0.5), int(h * c + w * s + 0.5)
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    return cv2.warpAffine(rgb, m, (nw, nh)), np.asarray(pts, float) @ m[:, :2].T + m[:, 2]


def _subject(faces, ref):
    """The detection whose box holds the reference eyes' midpoint, or None."""
    c = _eyes(ref).mean(0)
    for f in faces:
        x0, y0, x1, y1 = f.box
        if x0 <= c[0] <= x1 and y0 <= c[1] <= y1:
            return f
    return None


def _accepted(face) -> bool:
    fit = getattr(face, "fit", None)  # faces without a check count as accepted
    return fit is None or fit.ok


def test_rotated_faces_accepted_on_the_eyes_or_rejected(hog, astronaut, grace_hopper):
    """Both faces turned +-15/+-30: found and accepted with both eyes within 10% IOD. Turned
    +-45/+-90: recovered within 10% IOD, or rejected / not found -- never accepted off the eyes
    (before the check grace_hopper at -45 was accepted with an eye 0.15 IOD off)."""
    wrong = []
    for which, rgb in (("astronaut", astronaut), ("grace_hopper", grace_hopper)):
        upright = max(hog.detect_boxes(rgb), key=lambda b: b[0][2] - b[0][0])[0]
        ref = landmarks_in_box(rgb, upright)
        for deg in (15, -15, 30, -30, 45, -45, 90, -90):
            img, g = _rotate(rgb, deg, ref)
            f = _subject(find_faces(hog, img, "all"), g)
            if abs(deg) <= 30:
                assert f is not None and _accepted(f), f"{which} at {deg:+d}: the face must be found and accepted"
            if f is not None and _accepted(f) and _eye_error(f.landmarks68, g) > TOL:
                wrong.append(f"{which} {deg:+d}: {_eye_error(f.landmarks68, g):.2f}")
    assert not wrong, f"accepted fits off the eyes (IOD): {wrong}"


def test_recovery_finds_the_45_degree_face(hog, grace_hopper):
    """grace_hopper turned -45 degrees: HOG boxes the face, the first fit in its box is off the eyes
    (the old path accepted it) and the check ends on the eyes: eyes within 10% IOD, eye line
    turned by about the 45 degrees. The outcome is asserted, not which step got there (the
    orientation search, here). Margins (2026-12-06, docs/MARGINS.md; in brackets over copies
    with 1-grey-level noise): the accepted eyes 0.018 IOD off [0.015-0.035], limit 0.10; the first
    fit 0.15 off [0.16-0.24], so the test can tell the two apart. The check's own decision, that
    the first fit is not stable, clears FIT_TOL 0.10 by less: its refits move the eyes 0.124
    [0.13-0.22]."""
    upright = max(hog.detect_boxes(grace_hopper), key=lambda b: b[0][2] - b[0][0])[0]
    ref = landmarks_in_box(grace_hopper, upright)
    img, g = _rotate(grace_hopper, -45, ref)
    f = _subject(find_faces(hog, img, "largest"), g)
    assert f is not None and _accepted(f)
    assert _eye_error(f.landmarks68, g) <= TOL
    assert _eye_error(landmarks_in_box(img, f.box), g) > TOL  # what the old path accepted
    # rotating the image by +deg (counter-clockwise on screen) turns the eye line by -deg in
    # image coordinates (y down); 15 degrees is a loose bound
    assert abs(_eye_angle(f.landmarks68) - (_eye_angle(ref) + 45)) < 15


def test_blazeface_turned_faces_on_the_eyes(blazeface_packages, astronaut, grace_hopper):
    """BlazeFace, both faces turned +-15 to 180 degrees: every accepted fit has both eyes within
    10% IOD, and grace_hopper upside down is found and accepted on the eyes. Before the upright
    look BlazeFace put its keypoints on an upside-down face as if it were upright (on the mouth)
    and the fit there was accepted: grace_hopper at 180 with the eyes 1.80 IOD off."""
    bz = make_detector("blazeface")
    hog = make_detector("hog")
    wrong, found = [], {}
    for which, rgb in (("astronaut", astronaut), ("grace_hopper", grace_hopper)):
        upright = max(hog.detect_boxes(rgb), key=lambda b: b[0][2] - b[0][0])[0]
        ref = landmarks_in_box(rgb, upright)
        for deg in (15, -15, 30, -30, 45, -45, 90, -90, 180):
            img, g = _rotate(rgb, deg, ref)
            f = _subject(find_faces(bz, img, "all"), g)
            found[which, deg] = f is not None and _accepted(f)
            if found[which, deg] and _eye_error(f.landmarks68, g) > TOL:
                wrong.append(f"{which} {deg:+d}: {_eye_error(f.landmarks68, g):.2f}")
    assert not wrong, f"accepted fits off the eyes (IOD): {wrong}"
    assert found["grace_hopper", 180], "grace_hopper upside down must be found and accepted"
    assert all(found[w, d] for w in ("astronaut", "grace_hopper") for d in (15, -15, 30, -30))


def test_weak_hog_detection_must_be_a_face_upright(hog, astronaut):
    """astronaut with every face kept (``mask --faces all``): HOG also boxes an emblem on her suit
    (score 0.12). The promise is the outcome: the emblem is rejected (``bad_landmarks``) and only
    her face is accepted (before: both were, and the emblem got a mask). Two checks stand between
    the emblem and a mask, and which one fires first depends on the machine (here the orientation
    search: 2 of 10 start fits agree, 3 needed; elsewhere it found 3 and dlib's CNN rejected it), so
    the test asserts the outcome and states each check's margin (2026-12-06, docs/MARGINS.md).
    The CNN's upright look, the backstop, sees *no* face near the emblem at any angle from -90 to
    +90 degrees, at its scale and at twice it, while it sees her face (1.06; its limit is 0). How
    far below 0 the emblem scores cannot be read: dlib's Python API returns only detections
    scoring above 0 (a detector made with a lower ``threshold``, as this test had, sees the same).
    The emblem's own detection, which the test needs, scores 0.117 (0.098-0.174 over 15 copies
    with 1-grey-level noise) against HOG's limit 0; the astronaut is a lossless PNG, so HOG reads
    the same pixels on every CPU."""
    from maskkit.face.selection import WEAK_DETECTION

    faces = find_faces(hog, astronaut, "all")
    accepted = [f for f in faces if _accepted(f)]
    assert len(accepted) == 1 and accepted[0].score > WEAK_DETECTION, [(f.score, _accepted(f)) for f in faces]
    rejected = [f for f in faces if not _accepted(f)]
    assert len(rejected) == 1 and rejected[0].fit.reason == "bad_landmarks" and rejected[0].score < WEAK_DETECTION
    cnn = make_detector("cnn", upsample=0, max_side=0)
    assert all(cnn.upright_score(astronaut, rejected[0].box, a) is None for a in range(-90, 91, 15))
    cnn2 = make_detector("cnn", upsample=1, max_side=0)
    assert all(cnn2.upright_score(astronaut, rejected[0].box, a) is None for a in range(-90, 91, 30))
    assert cnn.upright_score(astronaut, accepted[0].box, accepted[0].fit.angle) is not None


def test_blazeface_keeps_masked_faces_upright(blazeface_packages, real_masked):
    """real-masked (upright photos of people in masks), every 4th image: the accepted fits stay
    upright. BlazeFace scores many masked faces higher upside down (a mask reads as hair): with the
    flip rule cut down to its preference (``UPRIGHT_FLIP_GAP`` 0) 13 of this subset's 139 accepted
    fits are turned over (eye line beyond +-90 degrees; measured 2026-12-06), the defect this
    test catches. With the rule: 0 or 1 here and over 5 copies with 1-grey-level noise, each a
    face 19-27 px wide (0002/0081.jpg, 0002/0093.jpg) whose 68-point fit lands anywhere from one
    copy to the next -- not the upright look turning it. So the bound is 3: 2 above what is measured, 10 below the
    defect (the bound was 1, met exactly, by another small face on another machine). Margins of
    the upright look itself (docs/MARGINS.md): BlazeFace prefers a face turned over by 0.18 at
    most (limit 0.25), HOG sees one turned over at 0.07 at most (limit 0.5). Accepted fits: 140
    (138-140 over the copies), at least 100 asserted."""
    from maskkit.face.fit_check import eye_angle
    from maskkit.io.sources import iter_sources

    bz = make_detector("blazeface")
    items = [it for it in iter_sources(real_masked) if not it.error][::4]
    turned, accepted = [], 0
    for it in items:
        for f in find_faces(bz, load_image(it.path), "all"):
            if _accepted(f):
                accepted += 1
                if abs(eye_angle(f.landmarks68)) > 90:
                    turned.append(f"{it.rel}: {eye_angle(f.landmarks68):.0f} deg")
    assert accepted >= 100, accepted
    assert len(turned) <= 3, f"masked faces fitted upside down: {turned}"


def test_blazeface_one_face_is_one_face(blazeface_packages, photos_dir):
    """biden.jpg turned 180 degrees with every face kept (``mask --faces all``): BlazeFace's two
    models find his face twice, boxes 0.3 IoU apart; their upright looks put both on the same
    face (IoU 0.97), so it is one face, not two (before: two crops, two masks on one face)."""
    bz = make_detector("blazeface")
    img, _ = _rotate(load_image(photos_dir / "biden.jpg"), 180, np.zeros((68, 2)))
    accepted = [f for f in find_faces(bz, img, "all") if _accepted(f)]
    assert len(accepted) == 1, [[round(v) for v in f.box] for f in accepted]


def _aligned(rgb, hog) -> np.ndarray:
    from maskkit.face.align import align_face

    face = max(hog.detect(rgb), key=lambda f: f.area)
    return align_face(rgb, face.landmarks68, (112, 112)).image


def _write(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))


def _jsonl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]


def test_synth_aligned_rejects_blank_and_non_face(tmp_path, hog, astronaut, grace_hopper):
    """``synth --aligned`` takes the two ArcFace crops and rejects a blank white image and a
    photo without a face (scikit-image's coffee, 400x600: not a crop's aspect) -- before, all
    four became samples of the identity, the blank one masked."""
    from skimage import data

    from maskkit.pipeline.synth import SynthConfig, run_synth

    src = tmp_path / "src"
    _write(src / "id0" / "astronaut.png", _aligned(astronaut, hog))
    _write(src / "id0" / "grace.png", _aligned(grace_hopper, hog))
    _write(src / "id0" / "blank.png", np.full((112, 112, 3), 255, np.uint8))
    _write(src / "id0" / "coffee.png", data.coffee())
    res = run_synth(SynthConfig(src=src, out=tmp_path / "out", aligned=True, ratio=0.5, progress=False))
    failed = {f["src"]: f["reason"] for f in _jsonl(tmp_path / "out" / "failures.jsonl")}
    assert failed == {"id0/blank.png": "no_face", "id0/coffee.png": "not_aligned"}
    assert res.manifest["num_samples"] == 2


def test_align_aligned_rejects_non_face_crop(tmp_path, hog, astronaut):
    """``align --aligned``: a 112x112 crop of a face-free photo is ``no_face``, a 112x112
    crop of the astronaut taken loosely (the face at about half size, off the template) is
    ``not_aligned``; the astronaut's ArcFace crop is kept. Before, all three were written."""
    from skimage import data

    from maskkit.pipeline.align import AlignConfig, run_align

    src = tmp_path / "src"
    _write(src / "face.png", _aligned(astronaut, hog))
    _write(src / "coffee.png", cv2.resize(data.coffee()[100:400, 150:450], (112, 112), interpolation=cv2.INTER_AREA))
    x0, y0, x1, y1 = max(hog.detect_boxes(astronaut), key=lambda b: b[0][2] - b[0][0])[0]
    cx, cy, h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0)
    loose = astronaut[int(cy - h):int(cy + h), int(cx - h):int(cx + h)]  # 2x the face box
    _write(src / "loose.png", cv2.resize(loose, (112, 112), interpolation=cv2.INTER_AREA))
    summary = run_align(AlignConfig(src=src, out=tmp_path / "out", aligned=True, progress=False))
    failed = {f["src"]: f["reason"] for f in _jsonl(tmp_path / "out" / "failures.jsonl")}
    assert failed == {"coffee.png": "no_face", "loose.png": "not_aligned"}
    assert summary["ok"] == 1


def test_loose_112_crop_is_realigned_for_evaluation(hog, astronaut):
    """A loose 112x112 crop (the face box with 60% margin) given to the evaluation loader is
    found off the template and re-aligned: in the central 80x80 (the re-aligned crop has a black
    border where the loose crop had no pixels) it matches the astronaut's ArcFace crop
    (correlation 0.99 measured; > 0.9 asserted) where the crop as given does not (0.39);
    ``trust_aligned`` keeps it as is."""
    from maskkit.training.eval.evalsets import FaceAligner

    x0, y0, x1, y1 = max(hog.detect_boxes(astronaut), key=lambda b: b[0][2] - b[0][0])[0]
    cx, cy, h = (x0 + x1) / 2, (y0 + y1) / 2, 0.8 * (x1 - x0)
    loose = cv2.resize(astronaut[int(cy - h):int(cy + h), int(cx - h):int(cx + h)], (112, 112),
                       interpolation=cv2.INTER_AREA)
    target = _aligned(astronaut, hog).astype(float)

    def corr(a):
        c = slice(16, 96)
        return float(np.corrcoef(np.asarray(a, float)[c, c].ravel(), target[c, c].ravel())[0, 1])

    out, lm, note = FaceAligner()(loose)
    assert note is not None and note.startswith("realigned")
    assert corr(out) > 0.9 > corr(loose)
    kept, _, note2 = FaceAligner(trust_aligned=True)(loose)
    assert note2 is None and np.array_equal(kept, loose)


def test_aligned_crop_first_refit_settles_clear_cases(monkeypatch, hog, astronaut, grace_hopper):
    """The template test of ``check_aligned_crop`` makes the second rotated refit only when the
    first settles nothing: a crop whose first refit moves the 5 points by at most
    ``CROP_SURE_TOL`` (0.05 of the eye distance) is kept after one refit, with the outcome and
    landmarks of both refits. Which way a real crop goes is its first refit's business, so the
    rule is asserted on each dependency face's ArcFace crop; the astronaut's is the clear case
    the optimisation is for (first refit 0.031 [0.012-0.031 over 9 copies with 1-grey-level
    noise], 0.019 under the limit: one refit asserted), grace_hopper's sits nearer (0.040
    [0.029-0.049]: either way). With refits displaced by set amounts (every point shifted by
    ``d`` times the template's eye distance, so the 5-point spread is ``d``): +0.03 is stable
    after one refit (whatever the second would say), +0.10 needs the second (0.50: unstable,
    0.15: stable), +0.30 is unstable after one."""
    from maskkit.face import crop_check  # check_aligned_crop reads fit_at_angle and find_face_in_crop here
    from maskkit.face.align import arcface_template
    from maskkit.face.landmarks import ALIGNED_BOX_FRACTION, PATCH_BOX

    real_fit = crop_check.fit_at_angle
    for rgb, clear in ((astronaut, True), (grace_hopper, False)):
        crop = _aligned(rgb, hog)
        h, w = crop.shape[:2]
        fx0, fy0, fx1, fy1 = ALIGNED_BOX_FRACTION
        box = (fx0 * w, fy0 * h, fx1 * w, fy1 * h)
        # the first refit's 5-point displacement on its own (sure=1: stop after it)
        lm = landmarks_in_box(crop, box)
        first_refit = crop_check._five_point_spread(crop, box, lm, crop_check.CROP_DELTA, sure=1.0)
        settles = first_refit <= crop_check.CROP_SURE_TOL
        assert settles or not clear, first_refit
        calls: list[float] = []
        monkeypatch.setattr(crop_check, "fit_at_angle", lambda *a, **k: calls.append(a[2]) or real_fit(*a, **k))
        one = crop_check.check_aligned_crop(crop)
        assert one.ok and one.how == "template"
        assert calls == ([crop_check.CROP_DELTA] if settles else [crop_check.CROP_DELTA, -crop_check.CROP_DELTA]), first_refit
        calls.clear()
        both = crop_check.check_aligned_crop(crop, sure=0.0)
        assert both.ok and both.how == "template" and len(calls) == 2
        assert np.array_equal(one.landmarks68, both.landmarks68)
        monkeypatch.setattr(crop_check, "fit_at_angle", real_fit)

    crop = _aligned(astronaut, hog)
    h, w = crop.shape[:2]
    fx0, fy0, fx1, fy1 = ALIGNED_BOX_FRACTION
    first = landmarks_in_box(crop, (fx0 * w, fy0 * h, fx1 * w, fy1 * h))
    t = arcface_template((h, w))
    iod = float(np.linalg.norm(t[1] - t[0]))
    # no face search: an unstable fit ends as no_face, so the outcome tells which way the test went
    monkeypatch.setattr(crop_check, "find_face_in_crop", lambda *a, **k: None)
    for d_plus, d_minus, stable, refits in ((0.03, 0.50, True, 1), (0.10, 0.50, False, 2), (0.10, 0.15, True, 2),
                                            (0.30, 0.00, False, 1)):
        calls = []

        def displaced(rgb, box, angle, box_px=PATCH_BOX):
            calls.append(angle)
            return first + np.float32([(d_plus if angle > 0 else d_minus) * iod, 0.0])

        monkeypatch.setattr(crop_check, "fit_at_angle", displaced)
        c = crop_check.check_aligned_crop(crop)
        assert (c.ok, c.how if c.ok else c.reason) == ((True, "template") if stable else (False, "no_face")), (d_plus, d_minus)
        assert len(calls) == refits, (d_plus, d_minus, calls)
        # the spread reported is the largest over the refits made (float32 landmarks: 1e-5 of the IOD)
        assert c.spread == pytest.approx(d_plus if refits == 1 else max(d_plus, d_minus), abs=1e-5)


# --------------------------------------------------------------------------------------------
# shared data
# --------------------------------------------------------------------------------------------

def _pts(path: Path) -> np.ndarray:
    return np.array(path.read_text().split("{")[1].split("}")[0].split(), float).reshape(-1, 2) - 1.0


def test_einstein_is_the_subject_with_default_options(hog, photos_dir, monkeypatch):
    """Defaults (HOG, upsample 1): ``--faces largest`` returns Einstein, never the small seated
    bystander the old path kept, and ``--faces all`` includes him.

    Margins (2026-12-06, docs/MARGINS.md): his detection clears its limit (second look +0.16
    against 0; 0.13 to 0.22 over copies with 1-grey-level noise); his landmark check does not
    (refits move the eyes 0.108 against 0.10, the search's third fit 0.097 against 0.10: rejected
    on 14 of 100 noisy copies), so whether his fit is *accepted* depends on the machine and is not
    asserted. The promise that holds everywhere is the subject: a weak largest face whose fit fails
    is passed over only for a candidate at least half its area (``PASS_OVER_MIN_AREA``); the
    bystander is 0.34 of his, so Einstein is returned, accepted or recorded as ``bad_landmarks``,
    and no bystander gets his mask. Checked here with his fit forced to fail (as on such a machine)."""
    from maskkit.face import selection

    rgb = load_image(photos_dir / "einstein.jpg")
    gt = _pts(photos_dir / "einstein.pts")
    largest = find_faces(hog, rgb, "largest")
    assert len(largest) == 1 and _subject(largest, gt) is not None
    every = find_faces(hog, rgb, "all")
    assert _subject(every, gt) is not None
    his = _subject(every, gt)
    others = [f for f in every if f is not his]
    assert others and max((f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in others) < \
        (selection.PASS_OVER_MIN_AREA - 0.1) * (his.box[2] - his.box[0]) * (his.box[3] - his.box[1])
    real = selection.check_landmarks

    def fails_on_him(img, box, *a, **k):  # his fit rejected, as on the 14 % of machines/copies
        fit = real(img, box, *a, **k)
        if abs(box[0] - his.box[0]) < 30 and abs(box[1] - his.box[1]) < 30:
            from dataclasses import replace
            return replace(fit, ok=False, reason="bad_landmarks", detail="forced")
        return fit
    monkeypatch.setattr(selection, "check_landmarks", fails_on_him)
    forced = find_faces(hog, rgb, "largest")
    assert len(forced) == 1 and _subject(forced, gt) is not None and not _accepted(forced[0])


def test_blazeface_finds_the_close_ups(real_masked):
    """BlazeFace's padded retry finds the 256x256 close-ups it missed (real-masked batch 0001,
    files 0015, 0016, 0077: no face before). 0015 and 0077 pass the landmark check; 0016's
    box sits low (the cap's brim hides the eyes) and its fit is off the eyes: rejected, as it
    must be, rather than masked."""
    from maskkit.face.models import DetectorUnavailable

    try:
        bz = make_detector("blazeface")
    except DetectorUnavailable as exc:
        pytest.skip(str(exc))
    for name in ("0015", "0016", "0077"):
        faces = find_faces(bz, load_image(real_masked / "0001" / f"{name}.jpg"), "largest")
        assert faces, f"0001/{name}.jpg: no face"
        x0, y0, x1, y1 = faces[0].box
        assert x1 - x0 > 60, "a close-up: the face is large"
        assert _accepted(faces[0]) == (name != "0016"), f"0001/{name}.jpg: {faces[0].fit.as_dict()}"


def test_forgotten_aligned_gives_a_hint(celeb_aligned, tmp_path):
    """synth without ``--aligned`` on 112x112 aligned crops: HOG misses some of them, and the
    summary says what to do (manifest ``hints``)."""
    from maskkit.pipeline.synth import SynthConfig, run_synth

    ident = sorted(p for p in celeb_aligned.iterdir() if p.is_dir())[0]
    src = tmp_path / "src" / ident.name
    src.mkdir(parents=True)
    for p in sorted(ident.glob("*.jpg"))[:60]:
        (src / p.name).write_bytes(p.read_bytes())
    res = run_synth(SynthConfig(src=tmp_path / "src", out=tmp_path / "out", ratio=0.0, progress=False))
    assert res.manifest["inputs"]["failed_by_reason"].get("no_face", 0) >= 2
    assert any("add --aligned" in h for h in res.manifest.get("hints", []))


def test_blazeface_look_finds_the_face_of_an_aligned_crop(blazeface_packages, monkeypatch, hog, astronaut, grace_hopper):
    """``--aligned``: a crop whose template fit is unstable and in which HOG finds no face is
    looked at by BlazeFace (and the face mesh) before dlib's CNN (issue 18: 0.1-0.6 s a crop for the
    CNN, about 5 ms for the look). The two dependency faces' ArcFace crops, with HOG made blind:
    the look finds each face where it is (box centre within 10 px of the template's centre).
    Turned 180 degrees (CNN off, so only the look could keep them): not kept. The turned-over
    comparison itself is exercised on the shared-data crops of the next test."""
    from maskkit.face import crop_check as C
    from maskkit.face.align import arcface_template

    for rgb in (astronaut, grace_hopper):
        crop = _aligned(rgb, hog)
        turned = np.ascontiguousarray(crop[::-1, ::-1])
        c = C.check_aligned_crop(turned, cnn=False)
        assert not c.ok and c.reason == "no_face", c.as_dict()
        centre = arcface_template((112, 112)).mean(0)  # the face's centre in an ArcFace crop
        real_hog = C.get_detector

        def blind_hog(name, **opts):
            det = real_hog(name, **opts)
            if name != "hog":
                return det

            class Blind:
                def detect_boxes(self, img):
                    return []
            return Blind()

        monkeypatch.setattr(C, "get_detector", blind_hog)
        found = C.find_face_in_crop(crop, cnn=False)
        monkeypatch.undo()
        assert found is not None and found[1] == "blazeface"
        x0, y0, x1, y1 = found[0]
        assert np.hypot((x0 + x1) / 2 - centre[0], (y0 + y1) / 2 - centre[1]) < 10, (found, centre)


#: celeb-aligned crops whose template fit is unstable, in which HOG finds no face, and whose face
#: BlazeFace's look settles (a checked fit on the template: ``detected``; before issue 18's look
#: dlib's CNN found them and they were kept ``unverified``). ``benchmarks/crop_check.py --compare``
#: lists 16 such crops.
PROFILE_CROPS = ("Barack_Obama/37.jpg", "Hugh_Laurie/3458.jpg", "Jessica_Alba/4955.jpg")

#: celeb-aligned crops that, turned 180 degrees (``benchmarks/crop_check.py``'s "celeb rotated
#: 180"), HOG finds no face in while BlazeFace sees an upright-looking face whose fit passes the
#: fixed-point test on the template (7.7 to 10.1 px RMS): only the turned-over comparison keeps
#: them from being kept ``detected``; dlib's CNN finds no face in them (``no_face``).
UPSIDE_DOWN_CROPS = ("Barack_Obama/0.jpg", "Drew_Barrymore/461.jpg", "Tina_Fey/9117.jpg")


def test_blazeface_look_keeps_profiles_without_the_cnn(blazeface_packages, celeb_aligned):
    """celeb-aligned crops the template fit cannot settle and HOG finds no face in: BlazeFace's
    look keeps them with dlib's CNN switched off (before, only the CNN's 0.1-0.6 s look found them),
    with a fit checked on the template; the same crops turned 180 degrees are not kept."""
    from maskkit.face import crop_check as C

    kept = 0
    for name in PROFILE_CROPS:
        crop = load_image(celeb_aligned / name)
        c = C.check_aligned_crop(crop, cnn=False)
        assert c.ok and c.how == "detected" and c.rms <= C.CROP_MAX_RMS, (name, c.as_dict())
        kept += 1
        turned = C.check_aligned_crop(np.ascontiguousarray(crop[::-1, ::-1]), cnn=False)
        assert not turned.ok, (name, turned.as_dict())
    assert kept == len(PROFILE_CROPS)
    for name in UPSIDE_DOWN_CROPS:
        crop = load_image(celeb_aligned / name)
        m = cv2.getRotationMatrix2D((crop.shape[1] / 2, crop.shape[0] / 2), 180, 1.0)
        turned = cv2.warpAffine(crop, m, crop.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        c = C.check_aligned_crop(turned, cnn=False)
        assert not c.ok and c.reason == "no_face", (name, c.as_dict())


def test_plain_install_takes_the_dlib_path_and_says_once_how_to_get_the_fast_one(tmp_path, monkeypatch, capfd, hog,
                                                                                  astronaut, grace_hopper):
    """Without the ``blazeface`` extra (LiteRT missing), ``synth --aligned`` still runs (dlib's
    path: the CNN looks where HOG finds nothing) and prints the line that says how to get the fast
    path exactly once per run, not once per crop; with the extra installed it prints nothing."""
    import importlib.util

    from maskkit.face.detect import fast_path_note
    from maskkit.pipeline.synth import SynthConfig, run_synth

    src = tmp_path / "src"
    for i in range(3):
        _write(src / "id0" / f"a{i}.png", _aligned(astronaut, hog))
        _write(src / "id1" / f"g{i}.png", _aligned(grace_hopper, hog))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ai_edge_litert" else real(name, *a))
    note = fast_path_note()
    assert note is not None and "pip install 'maskkit[blazeface]'" in note
    capfd.readouterr()
    res = run_synth(SynthConfig(src=src, out=tmp_path / "out", aligned=True, ratio=0.5, jobs=1, progress=False))
    assert res.manifest["num_samples"] == 6
    assert capfd.readouterr().err.count(note) == 1
    monkeypatch.undo()
    if fast_path_note() is None:  # the extra is installed here: no line
        run_synth(SynthConfig(src=src, out=tmp_path / "out2", aligned=True, ratio=0.5, jobs=1, progress=False))
        assert "fast face path" not in capfd.readouterr().err
