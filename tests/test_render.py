"""The mask renderer on real faces: placement (coverage), yaw, shading, compositing, degenerate input.

Landmarks come from dlib's 68-point predictor through :mod:`maskkit.face.detect` (HOG detector on
lfw-johns and the photos; the whole crop as the box on celeb-aligned). celeb-aligned is judged on
a deterministic subset (the first 20 crops of each identity, 240 faces) to fit the test budget;
``python benchmarks/mask_bench.py --coverage`` reports the full set.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import pytest

from maskkit.render import (CLEAR_IDX, COVER_IDX, STYLES, CannotFit, MaskRenderer, MaskResult, Template,
                            coverage_check, render_mask, yaw_estimate)

SINGLE_PHOTOS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "einstein.jpg", "breakingbad.jpg",
                 "Tom_Cruise_avp_2014_4.jpg")
SIDE_YAW = 0.35  # |yaw_estimate| at or above this is a side view (far half-width < 0.48 x near)


@pytest.fixture(scope="module")
def renderer():
    return MaskRenderer()


def _load(p):
    from maskkit.io.image_io import load_image

    return load_image(p)


def _detected(paths):
    from maskkit.face.detect import make_detector

    det = make_detector("hog", upsample=1)
    out = []
    for p in paths:
        rgb = _load(p)
        faces = det.detect(rgb)
        assert faces, f"no face detected in {p}"
        f = max(faces, key=lambda f: f.area)
        out.append((str(p), rgb, np.asarray(f.landmarks68, np.float64)))
    return out


@pytest.fixture(scope="module")
def lfw_faces(lfw_johns):
    return _detected(sorted(glob.glob(str(lfw_johns / "*" / "*.jpg"))))


@pytest.fixture(scope="module")
def photo_faces(photos_dir):
    return _detected([photos_dir / n for n in SINGLE_PHOTOS])


@pytest.fixture(scope="module")
def celeb_faces(celeb_aligned):
    from maskkit.face.landmarks import landmarks_in_box

    out = []
    for ident in sorted(os.listdir(celeb_aligned)):
        files = sorted(glob.glob(str(celeb_aligned / ident / "*.jpg")), key=lambda p: (len(os.path.basename(p)), p))
        for f in files[:20]:
            rgb = _load(f)
            out.append((f, rgb, landmarks_in_box(rgb).astype(np.float64)))
    return out


def _pass_rates(renderer, faces, seed=0):
    rates, fails = {}, {}
    for j, st in enumerate(STYLES):
        ok, bad = 0, []
        for i, (name, rgb, lm) in enumerate(faces):
            try:
                res = renderer.render(rgb, lm, st, np.random.default_rng([seed, i, j]))
            except CannotFit as exc:
                bad.append((name, exc.reason))
                continue
            rep = coverage_check(res.alpha, lm)
            if rep["ok"]:
                ok += 1
            else:
                bad.append((name, rep))
        rates[st] = ok / len(faces)
        fails[st] = bad[:5]
    return rates, fails


# ------------------------------------------------------------------------------------------
# coverage on real faces
# ------------------------------------------------------------------------------------------
def test_coverage_on_real_faces_all_styles(renderer, lfw_faces, photo_faces, celeb_faces):
    """README "Coverage on real faces", asserted per set and per style: 100 % of the 55 lfw-johns
    faces and of the 7 single-face photos (no miss allowed); celeb-aligned (README: 99.7-99.8 % of
    all 2223, here the 240-crop subset) >= 99 %, i.e. at most 2 misses of 240 per style."""
    sets = {"lfw-johns": (lfw_faces, 55, 1.0), "single-face photos": (photo_faces, 7, 1.0),
            "celeb-aligned subset": (celeb_faces, 240, 0.99)}
    for name, (faces, n, floor) in sets.items():
        assert len(faces) == n, name
        rates, fails = _pass_rates(renderer, faces)
        for st in STYLES:
            assert rates[st] >= floor, f"{name}, {st}: coverage pass rate {rates[st]:.3%} < {floor:.0%}; e.g. {fails[st]}"


def test_coverage_on_side_views(renderer, lfw_faces, photo_faces, celeb_faces):
    side = [f for f in lfw_faces + photo_faces + celeb_faces if abs(yaw_estimate(f[2])) >= SIDE_YAW]
    # both directions of turn, from the photos / lfw as well as the crops
    assert len(side) >= 40
    assert any(yaw_estimate(f[2]) > 0 for f in side) and any(yaw_estimate(f[2]) < 0 for f in side)
    assert any("photos" in f[0] or "lfw" in f[0] for f in side)
    rates, fails = _pass_rates(renderer, side, seed=5)
    for st in STYLES:
        assert rates[st] >= 0.97, f"{st}: side-view pass rate {rates[st]:.3%}; e.g. {fails[st]}"


def test_coverage_check_rejects_a_misplaced_mask(renderer, photo_faces):
    """The check itself can fail: a mask drawn for a shifted face leaves the mouth bare."""
    name, rgb, lm = photo_faces[0]
    res = renderer.render(rgb, lm, "surgical", np.random.default_rng(0))
    assert coverage_check(res.alpha, lm)["ok"]
    h = np.linalg.norm(lm[8] - lm[27])
    moved = renderer.render(rgb, lm - [0, 0.45 * h], "surgical", np.random.default_rng(0))
    rep = coverage_check(moved.alpha, lm)
    assert not rep["ok"] and rep["eyes_covered"]
    rep2 = coverage_check(np.zeros_like(res.alpha), lm)
    assert set(rep2["uncovered"]) == {i for i in COVER_IDX}


# ------------------------------------------------------------------------------------------
# geometry: yaw, jitter, full photos, aligned crops
# ------------------------------------------------------------------------------------------
def _halfwidths(alpha, lm):
    """Mask extent left/right of the nose tip along the row through the mouth corners."""
    y = int(round(0.5 * (lm[48, 1] + lm[54, 1])))
    row = alpha[y] >= 0.5
    xs = np.where(row)[0]
    x30 = lm[30, 0]
    return x30 - xs.min(), xs.max() - x30


def test_far_side_compresses_with_yaw(renderer, lfw_faces, photo_faces, celeb_faces):
    """Continuous yaw: the mask's far/near width ratio follows the face's own jaw ratio."""
    faces = [f for f in lfw_faces + photo_faces + celeb_faces if abs(yaw_estimate(f[2])) >= 0.2]
    assert len(faces) >= 20
    errs = []
    for i, (name, rgb, lm) in enumerate(faces):
        res = renderer.render(rgb, lm, "surgical", np.random.default_rng(i))
        y = 0.5 * (lm[48, 1] + lm[54, 1])
        if not (0 <= y < rgb.shape[0]):
            continue
        left, right = _halfwidths(res.alpha, lm)
        jl, jr = lm[30, 0] - lm[4, 0], lm[12, 0] - lm[30, 0]
        if min(left, right, jl, jr) <= 1:
            continue
        errs.append(abs(np.log((left / right) / (jl / jr))))
    errs = np.array(errs)
    # the mask's asymmetry tracks the jaw's: median log-ratio error below log(1.25)
    assert len(errs) >= 15 and np.median(errs) < np.log(1.25), f"median {np.median(errs):.3f}"


def test_jitter_moves_top_edge_and_chin_and_is_recorded(renderer, photo_faces):
    name, rgb, lm = photo_faces[0]
    tops, bottoms, params = [], [], []
    for s in range(12):
        res = renderer.render(rgb, lm, "kn95", np.random.default_rng(s))
        col = res.alpha[:, int(round(lm[30, 0]))] >= 0.5
        ys = np.where(col)[0]
        tops.append(ys.min())
        bottoms.append(ys.max())
        params.append(res.params)
    h = np.linalg.norm(lm[8] - lm[27])
    assert np.ptp(tops) > 0.03 * h and np.ptp(bottoms) > 0.02 * h
    # the top edge follows the recorded nose offset
    nose = np.array([p["offsets"]["nose"] for p in params])
    assert np.corrcoef(nose, tops)[0, 1] > 0.8
    for p in params:
        assert p["style"] == "kn95" and p["colour"] and p["template"].startswith("kn95")
        assert set(p["offsets"]) == {"nose", "chin", "inset", "eye_margin"}


def test_params_redraw_the_same_mask_and_rng_is_deterministic(renderer, celeb_faces):
    import json

    name, rgb, lm = celeb_faces[3]
    a = renderer.render(rgb, lm, "random", np.random.default_rng(42))
    b = renderer.render(rgb, lm, "random", np.random.default_rng(42))
    assert np.array_equal(a.image, b.image) and a.params == b.params
    c = renderer.render(rgb, lm, "ignored", params=json.loads(json.dumps(a.params)))
    assert np.array_equal(a.image, c.image)
    assert not np.shares_memory(a.image, rgb)
    styles = {renderer.render(rgb, lm, "random", np.random.default_rng(s)).params["style"] for s in range(40)}
    assert styles == set(STYLES)


def test_palette_colours_and_no_default_tint(renderer, celeb_faces):
    name, rgb, lm = celeb_faces[0]
    seen = set()
    for s in range(200):
        seen.add(renderer.sample_params("surgical", np.random.default_rng(s))["colour"])
    assert {"white", "light_blue", "black", "green"} <= seen
    # a white surgical mask on a flat grey image comes out grey-white, not blue
    grey = np.full_like(rgb, 128)
    p = renderer.sample_params("surgical", np.random.default_rng(0))
    p.update(colour="white", colour2=None)
    flat = MaskRenderer(shading=0.0)
    res = flat.render(grey, lm, "surgical", params=p)
    body = res.alpha > 0.95
    px = res.image[body].astype(np.float64)
    assert px.mean() > 180 and abs(px[:, 2].mean() - px[:, 0].mean()) < 4


def test_no_halo_at_the_soft_edge(celeb_faces):
    """Premultiplied warping: edge pixels are a blend of face and mask, never darker than both."""
    name, rgb, lm = celeb_faces[1]
    flat = MaskRenderer(shading=0.0)
    grey = np.full_like(rgb, 120)
    for tpl in ("surgical_3pleat", "cloth_plain", "kn95_fold"):
        p = flat.sample_params(tpl.split("_")[0], np.random.default_rng(0))
        p.update(template=tpl, colour="white", colour2=None)
        res = flat.render(grey, lm, "x", params=p)
        edge = (res.alpha > 0.05) & (res.alpha < 0.95)
        assert edge.sum() > 30, "no soft edge"
        assert res.image.min() >= 119, f"{tpl}: dark fringe ({res.image.min()})"
        # coverage changes smoothly: no binary alpha jumps along the edge
        assert len(np.unique(np.round(res.alpha[edge], 2))) > 20


def test_mask_is_shaded_by_the_face_lighting(renderer, celeb_faces):
    """Same mask, same face, one half put in shadow: the mask darkens on that half only."""
    name, rgb, lm = min(celeb_faces, key=lambda f: abs(yaw_estimate(f[2])))
    cx = int(round(lm[30, 0]))
    lit = rgb.astype(np.float32)
    lit[:, cx:] *= 0.45
    lit = lit.astype(np.uint8)
    p = renderer.sample_params("surgical", np.random.default_rng(1))
    p.update(colour="white")
    base = renderer.render(rgb, lm, "surgical", params=p)
    p = base.params  # same mask, including its recorded sharpness match
    shaded = renderer.render(lit, lm, "surgical", params=p)
    assert np.array_equal(base.alpha, shaded.alpha)
    body = base.alpha > 0.95
    left, right = body.copy(), body.copy()
    left[:, cx - 6:] = False
    right[:, :cx + 6] = False
    assert left.sum() > 100 and right.sum() > 100
    l0, l1 = base.image[left].mean(), shaded.image[left].mean()
    r0, r1 = base.image[right].mean(), shaded.image[right].mean()
    assert r1 < 0.8 * r0, (r0, r1)
    assert r1 / r0 < (l1 / l0) - 0.15, (l0, l1, r0, r1)
    flat = MaskRenderer(shading=0.0)
    f0 = flat.render(rgb, lm, "surgical", params=p).image
    f1 = flat.render(lit, lm, "surgical", params=p).image
    assert np.abs(f0[right].astype(int) - f1[right]).mean() < 2.0  # without shading, no change


def test_full_photo_with_several_faces(renderer, photos_dir):
    from maskkit.face.detect import make_detector

    rgb = _load(photos_dir / "friends_t1.jpg")
    faces = make_detector("hog").detect(rgb)
    assert len(faces) >= 5
    img = rgb
    covered = np.zeros(rgb.shape[:2], np.float32)
    n_ok = 0
    for k, f in enumerate(faces):
        res = renderer.render(img, f.landmarks68, STYLES[k % 5], np.random.default_rng(k))
        assert res.image.shape == rgb.shape and res.alpha.shape == rgb.shape[:2]
        n_ok += coverage_check(res.alpha, f.landmarks68)["ok"]
        img = res.image
        covered = np.maximum(covered, res.alpha)
    assert n_ok == len(faces)
    # pixels no mask touches are unchanged
    untouched = covered == 0
    assert np.array_equal(img[untouched], rgb[untouched])
    assert untouched.mean() > 0.8


def test_templates_load_once(monkeypatch, celeb_faces, request):
    from maskkit.render import default_renderer

    calls = []
    orig = Template.load.__func__

    def counting(cls, *a, **k):
        calls.append(a)
        return orig(cls, *a, **k)

    monkeypatch.setattr(Template, "load", classmethod(counting))
    default_renderer.cache_clear()  # built again below, once, with the counting loader
    request.addfinalizer(default_renderer.cache_clear)
    name, rgb, lm = celeb_faces[0]
    render_mask(rgb, lm, "n95", np.random.default_rng(0))
    n = len(calls)
    assert n >= 5
    for s in range(5):
        out = render_mask(rgb, lm, STYLES[s], np.random.default_rng(s))
        assert isinstance(out, MaskResult)
    assert len(calls) == n, "templates were re-read for later renders"


# ------------------------------------------------------------------------------------------
# degenerate landmarks
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def frontal(celeb_faces):
    return celeb_faces[0][1], celeb_faces[0][2]


def _reason(renderer, rgb, lm):
    with pytest.raises(CannotFit) as ei:
        renderer.render(rgb, lm, "surgical", np.random.default_rng(0))
    assert isinstance(ei.value, ValueError)
    return ei.value.reason


def test_degenerate_landmarks_raise_cannot_fit(renderer, frontal):
    rgb, lm = frontal
    bad = lm.copy()
    bad[40, 0] = np.nan
    assert _reason(renderer, rgb, bad) == "nan_landmarks"
    line = np.stack([np.linspace(10, 100, 68), np.linspace(20, 90, 68)], 1)
    assert _reason(renderer, rgb, line) == "collinear_landmarks"
    assert _reason(renderer, rgb, np.full((68, 2), 50.0)) == "collinear_landmarks"
    # a jaw that never crosses the lip line: the whole jaw pushed above the mouth
    nojaw = lm.copy()
    nojaw[0:17, 1] = lm[36:48, 1].mean() - 5
    nojaw[0:17, 0] = np.linspace(lm[0, 0], lm[16, 0], 17)
    nojaw[8, 1] = lm[8, 1]  # keep the chin so the face height is sane
    nojaw[0:8, 1] = lm[36, 1] - 5
    nojaw[9:17, 1] = lm[36, 1] - 5
    nojaw[7, 1] = nojaw[9, 1] = lm[36, 1] - 5
    assert _reason(renderer, rgb, nojaw) in ("jaw_misses_lip_line", "folded_warp")
    onesided = lm.copy()
    onesided[0:17, 0] = lm[54, 0] + 5 + np.arange(17)  # jaw entirely right of the mouth
    assert _reason(renderer, rgb, onesided) == "jaw_misses_lip_line"
    # a face partly outside the image
    assert _reason(renderer, rgb, lm + [70, 0]) == "face_outside_image"
    assert _reason(renderer, rgb, lm - [0, 60]) == "face_outside_image"
    assert _reason(renderer, rgb, lm * 0.05) in ("face_too_small", "collinear_landmarks")
    assert _reason(renderer, rgb, lm[:5]) == "bad_input"
    with pytest.raises(CannotFit):
        renderer.render(rgb[..., 0], lm, "surgical", np.random.default_rng(0))


def test_random_landmarks_never_crash(renderer, frontal):
    """Garbage in: only MaskResult or CannotFit, never another exception."""
    rgb, lm = frontal
    rng = np.random.default_rng(123)
    outcomes = {"ok": 0, "cannot_fit": 0}
    for k in range(300):
        kind = k % 4
        if kind == 0:
            pts = rng.uniform(-20, 130, (68, 2))
        elif kind == 1:
            pts = lm + rng.normal(0, 6, (68, 2))
        elif kind == 2:
            pts = lm.copy()
            idx = rng.choice(68, 6, replace=False)
            pts[idx] = pts[rng.permutation(idx)]
            pts[rng.integers(68)] = [np.inf, 3][rng.integers(2)]
        else:
            a = rng.uniform(-np.pi, np.pi)
            R = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            pts = (lm - 56) @ R.T * rng.uniform(0.3, 1.5) + 56
        try:
            res = renderer.render(rgb, pts, "random", rng)
            assert res.alpha.min() >= 0 and res.alpha.max() <= 1
            outcomes["ok"] += 1
        except CannotFit as exc:
            assert exc.reason
            outcomes["cannot_fit"] += 1
    assert outcomes["ok"] > 20 and outcomes["cannot_fit"] > 20, outcomes


# ------------------------------------------------------------------------------------------
# turned heads (issue 18): near-profiles, eye clearance, pose, the far side
# ------------------------------------------------------------------------------------------
#: celeb-aligned near-profiles whose far jaw (dlib's, through the aligned-crop check) meets the
#: lip line just inside the far mouth corner (by 0.02-0.19 of the mouth width), and one whose far
#: jaw strays into the background (Hugh_Laurie/3417).
NEAR_PROFILES = ("Halle_Berry/2086.jpg", "Halle_Berry/2182.jpg", "Halle_Berry/2186.jpg", "Hugh_Laurie/3412.jpg",
                 "Hugh_Laurie/3452.jpg", "Hugh_Laurie/3459.jpg", "Keanu_Reeves/5592.jpg", "Mark_Ruffalo/6402.jpg",
                 "Victoria_Beckham/10053.jpg", "Hugh_Laurie/3417.jpg")


@pytest.fixture(scope="module")
def profile_faces(celeb_aligned):
    """(name, crop, landmarks) of NEAR_PROFILES, landmarks as ``synth --aligned`` gets them."""
    from maskkit.face.crop_check import check_aligned_crop

    out = []
    for rel in NEAR_PROFILES:
        check = check_aligned_crop(_load(celeb_aligned / rel), (112, 112))
        assert check.ok and check.landmarks68 is not None, f"{rel}: the crop check no longer keeps it"
        out.append((rel, check.image, np.asarray(check.landmarks68, np.float64)))
    return out


def test_near_profiles_get_masks_that_cover_them(renderer, profile_faces, monkeypatch):
    """A near-profile's far jaw is its silhouette and may meet the lip line just inside the far
    mouth corner: such a face is masked (was CannotFit before issue 18), in every style, and the
    mask covers its lower nose, mouth and chin and leaves its eyes clear (coverage_check)."""
    import maskkit.render.anchors as anchors

    for j, st in enumerate(STYLES):
        for i, (name, rgb, lm) in enumerate(profile_faces):
            res = renderer.render(rgb, lm, st, np.random.default_rng([7, i, j]))
            rep = coverage_check(res.alpha, lm)
            assert rep["ok"], f"{name}, {st}: {rep}"
    # the set is the hard case: under the old rule (the jaw must reach past both mouth corners)
    # most of these faces cannot be fitted
    monkeypatch.setattr(anchors, "JAW_SHORTFALL", 0.0)
    refused = 0
    for name, rgb, lm in profile_faces:
        try:
            renderer.render(rgb, lm, "surgical", np.random.default_rng(0))
        except CannotFit:
            refused += 1
    assert refused >= 5, f"only {refused} of {len(profile_faces)} need the far-jaw allowance"


#: Below every eye landmark, alpha stays < 0.1 this far down (units of |lm8 - lm27|): a quarter
#: of EYE_CLEAR (the clearance gives way to NOSE_TIP_GAP on faces whose eyes sit near the nose).
#: Measured on all 2,223 celeb-aligned crops x 5 styles: at most 0.04 here (0.097 at 0.04); the
#: top edge as placed before issue 18 reaches 0.1 on 533 of those 11,114 renders.
EYE_FREE_BAND = 0.03


def test_top_edge_keeps_clear_of_the_eyes(renderer, lfw_faces, photo_faces, celeb_faces, profile_faces):
    worst = []
    for i, (name, rgb, lm) in enumerate(lfw_faces + photo_faces + celeb_faces + profile_faces):
        h = np.linalg.norm(lm[8] - lm[27])
        down = (lm[8] - lm[27]) / h
        for j, st in enumerate(STYLES):
            try:
                res = renderer.render(rgb, lm, st, np.random.default_rng([3, i, j]))
            except CannotFit:
                continue
            a = _sample_alpha(res.alpha, lm[36:48] + down * EYE_FREE_BAND * h)
            a = a[np.isfinite(a)]
            if a.size:
                worst.append((float(a.max()), name, st))
    assert len(worst) >= 5 * 300
    top = max(worst)
    assert top[0] < 0.1, f"the mask reaches {EYE_FREE_BAND} face heights below an eye: {top}"


def _sample_alpha(alpha, pts):
    from maskkit.render.coverage import _sample

    return _sample(alpha, np.asarray(pts, np.float64))


def test_head_pose_on_real_faces(lfw_faces, photo_faces, celeb_faces, profile_faces):
    """Yaw's sign says where the face points (mirror images: opposite yaw); near-profiles are
    turned at least 25 degrees, frontal faces (jaw half-widths within 10 %) less than 15."""
    from maskkit.render.pose import head_pose

    mirror = np.array(list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
                      + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
                      + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65])
    faces = lfw_faces + photo_faces + celeb_faces
    for name, rgb, lm in faces[::7] + profile_faces:
        hp = head_pose(lm)
        flipped = lm[mirror] * [-1, 1] + [rgb.shape[1] - 1, 0]
        hm = head_pose(flipped)
        assert abs(hp.yaw + hm.yaw) < 1.0 and abs(hp.pitch - hm.pitch) < 1.0, (name, hp.yaw, hm.yaw)
        assert hp.residual < 0.12, (name, hp.residual)
    for name, rgb, lm in profile_faces:
        hp = head_pose(lm)
        # the nose tip lies on the side the face points to (image-right: yaw > 0)
        side = np.sign(lm[30, 0] - 0.5 * (lm[39, 0] + lm[42, 0]))
        assert abs(hp.yaw) >= 25 and np.sign(hp.yaw) == side, (name, hp.yaw)
    frontal = [f for f in faces if abs(yaw_estimate(f[2])) < 0.05]
    assert len(frontal) >= 20
    assert max(abs(head_pose(lm).yaw) for _, _, lm in frontal) < 15


def test_far_side_of_a_turned_head_stays_by_its_profile(renderer, profile_faces):
    """On a head turned past FAR_HIDE_YAW the far cheek is hidden behind the nose: on the rows
    from the upper nose (lm28) to the chin the mask reaches at most ENVELOPE_MARGIN (+ 0.04 for the soft edge)
    of the face height past the front profile (nose tip, lips, chin), even where the landmark
    fit's far jaw strays into the background (Hugh_Laurie/3417: 0.13 before)."""
    from maskkit.render.anchors import ENVELOPE_MARGIN, FAR_HIDE_YAW
    from maskkit.render.pose import head_pose

    checked = 0
    for i, (name, rgb, lm) in enumerate(profile_faces):
        hp = head_pose(lm)
        if abs(hp.yaw) < FAR_HIDE_YAW:
            continue
        far = 1 if hp.yaw > 0 else -1
        h = np.linalg.norm(lm[8] - lm[27])
        front = far * np.max(far * np.vstack([lm[27:36], lm[48:68], lm[7:10]])[:, 0])
        for j, st in enumerate(STYLES):
            res = renderer.render(rgb, lm, st, np.random.default_rng([9, i, j]))
            rows = res.alpha[int(lm[28, 1]):int(min(lm[8, 1], rgb.shape[0] - 1))] >= 0.5
            xs = np.where(rows.any(0))[0]
            reach = far * ((xs.max() if far > 0 else xs.min()) - front) / h
            assert reach <= ENVELOPE_MARGIN + 0.04, f"{name}, {st}: the far side reaches {reach:.3f} past the profile"
        checked += 1
    assert checked >= 3


def test_a_grey_photo_gets_a_grey_mask(renderer, astronaut, grace_hopper):
    """A greyscale photo (R == G == B; a grey dataset, a 1-bit scan) is masked in grey: every style
    and colour, as recorded (``params["grey"]``), so colour never marks "masked" in a grey set. The
    mask is still drawn (it changes the mouth region by far more than a rounding), and a colour
    photo keeps its coloured mask (no ``grey`` key). Before: light-blue and yellow masks on grey
    faces."""
    from maskkit.face.detect import make_detector

    hog = make_detector("hog")
    for img in (astronaut, grace_hopper):
        grey = np.repeat(np.asarray(img, np.float64).mean(-1).round().astype(np.uint8)[..., None], 3, axis=2)
        face = max(hog.detect(grey), key=lambda f: f.area)
        for k, style in enumerate(STYLES):
            res = renderer.render(grey, face.landmarks68, style, np.random.default_rng(k))
            out = res.image.astype(int)
            assert res.params.get("grey") is True
            assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2]), style
            assert np.abs(out - grey)[res.alpha > 0.5].mean() > 10, style
        colour = renderer.render(img, max(hog.detect(img), key=lambda f: f.area).landmarks68, "surgical",
                                 np.random.default_rng(0))
        o = colour.image.astype(int)
        assert "grey" not in colour.params and not np.array_equal(o[..., 0], o[..., 2])
