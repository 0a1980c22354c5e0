"""Evaluation that must return the right number or say why not (issue 12 §8): pair order and
folds, VAL@FAR interpolation, identification caveats, non-finite scores, the pairs format."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from project_docs import docs_text

from maskkit.training.eval import verification as V
from maskkit.training.eval.verification import calculate_val, evaluate_distances


# ---- pairs in any order ---------------------------------------------------------------------
def _overlapping_pairs(n_each: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Same pairs at d ~ N(1.0, 0.3), different at d ~ N(1.3, 0.3), clipped to [0, 4]:
    a separation like a weak model's (about 65 % accuracy), in interleaved order S D S D ..."""
    rng = np.random.default_rng(seed)
    ds = np.clip(rng.normal(1.0, 0.3, n_each), 0, 3.99)
    dd = np.clip(rng.normal(1.3, 0.3, n_each), 0, 3.99)
    dist = np.empty(2 * n_each)
    dist[0::2], dist[1::2] = ds, dd
    same = np.zeros(2 * n_each, bool)
    same[0::2] = True
    return dist, same


def test_sorted_pairs_score_like_interleaved_pairs():
    """All same pairs first, then all different: the same figures as the interleaved file.
    Before the fix every contiguous fold held one class: 40-45 % accuracy, AUC near 0.2."""
    dist, same = _overlapping_pairs()
    inter = evaluate_distances(dist, same)
    order = np.argsort(~same, kind="stable")  # same pairs first, each class in its original order
    srt = evaluate_distances(dist[order], same[order])
    assert 0.6 < inter.accuracy < 0.75  # a weak but real separation
    # the stratified folds of the sorted file hold exactly the pairs of the interleaved file's
    # contiguous folds (run i of each class = block i of S D S D ...), so the figures are equal
    # up to summation order (1e-12 on values of order 1)
    assert srt.accuracy == pytest.approx(inter.accuracy, abs=1e-12)
    assert srt.auc_folds == pytest.approx(inter.auc_folds, abs=1e-12)
    assert srt.val == pytest.approx(inter.val, abs=1e-12)
    # the all-pairs AUC does not depend on order at all
    assert srt.auc == pytest.approx(inter.auc, abs=1e-12)
    assert 0.7 < inter.auc < 0.85
    assert (inter.fold_rule, srt.fold_rule) == ("kfold", "stratified")
    assert srt.fold_sizes == [[30, 30]] * 10

    # a random order (every contiguous fold still holds both classes): other folds, so the
    # accuracy moves by fold noise only; 0.03 is ~3 held-out pairs in 60 per fold
    perm = np.random.default_rng(7).permutation(len(dist))
    rnd = evaluate_distances(dist[perm], same[perm])
    assert rnd.fold_rule == "kfold"
    assert rnd.accuracy == pytest.approx(srt.accuracy, abs=0.03)
    assert rnd.auc == pytest.approx(srt.auc, abs=1e-12)

    # LFW's pairs.txt layout (10 blocks of 30 same + 30 different here) keeps insightface's
    # contiguous folds, one block each, and their figures
    blocks = np.concatenate([np.concatenate([np.flatnonzero(same)[30 * b:30 * b + 30],
                                             np.flatnonzero(~same)[30 * b:30 * b + 30]]) for b in range(10)])
    folds, rule = V.assign_folds(same[blocks])
    assert rule == "kfold" and folds.tolist() == np.repeat(np.arange(10), 60).tolist()
    _, _, acc, _ = V.calculate_roc(V.DEFAULT_THRESHOLDS, dist[blocks], same[blocks], 10)  # contiguous KFold
    assert evaluate_distances(dist[blocks], same[blocks]).accuracy == pytest.approx(float(np.mean(acc)), abs=1e-12)


def test_all_pairs_auc_hand_worked():
    # S .101, D .104, S .3, D .5 (x5): same-vs-different comparisons (.101<.104) (.101<.5)
    # (.3>.104: 0) (.3<.5) -> 3 / 4; ties count half: S .3 vs an added D .3 below
    r = evaluate_distances(np.array([0.101, 0.104, 0.3, 0.5] * 5), np.array([1, 0, 1, 0] * 5, bool))
    assert r.auc == pytest.approx(0.75, abs=1e-12)
    # insightface's figure comes from the 0.01 grid, which cannot tell .101 from .104 apart
    assert r.auc_folds < 0.7
    r = evaluate_distances(np.array([0.1, 0.3, 0.3, 0.5] * 5), np.array([1, 0, 1, 0] * 5, bool))
    assert r.auc == pytest.approx(3.5 / 4, abs=1e-12)  # (.1<.3) (.1<.5) (.3=.3: 1/2) (.3<.5)


# ---- VAL@FAR --------------------------------------------------------------------------------
# Grid 0, .1, ..., .9. Two folds of 5 pairs, both alike: same .05 .12 .22, different .18 .47.
# Training negatives {.18, .47}: FAR(t) = #(neg < t) / 2 on the grid
#     t:   0   .1   .2   .3   .4   .5   .6 ...
#   FAR:   0    0   .5   .5   .5    1    1 ...
# insightface's interp1d (as it ran with repeated FAR values) joins the LAST threshold of the
# lower FAR to the FIRST threshold of the next:
#   FAR .25 : (0 @ .1) -> (.5 @ .2):  t = .1 + (.25/.5) * .1 = .15
#             held out: same .05 .12 accepted (d < t) -> VAL 2/3; different none -> FAR 0
#   FAR .75 : (.5 @ .4) -> (1 @ .5):  t = .4 + (.25/.5) * .1 = .45
#             same all 3 -> VAL 1; different .18 -> FAR 1/2
#   FAR .5 (on the grid): the first threshold reaching it, t = .2
#             same .05 .12 -> VAL 2/3; different .18 -> FAR 1/2
# The old rule (each FAR collapsed to its LAST threshold) gave t = .25, .65 and .4.
GRID = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
VD = np.array([0.05, 0.12, 0.22, 0.18, 0.47] * 2)
VS = np.array([1, 1, 1, 0, 0] * 2, bool)


@pytest.mark.parametrize("target, val, far", [(0.25, 2 / 3, 0.0), (0.75, 1.0, 0.5), (0.5, 2 / 3, 0.5)])
def test_val_at_far_hand_worked(target, val, far):
    v, v_std, f = calculate_val(GRID, VD, VS, far_target=target, nrof_folds=2)
    assert (v, v_std, f) == pytest.approx((val, 0.0, far), abs=1e-12)


def test_threshold_at_far_hand_worked_and_as_interp1d_ran():
    # the thresholds of the table above, from the curve itself
    f = getattr(V, "threshold_at_far", None) or getattr(V, "_threshold_at_far")
    far = np.array([0, 0, 0.5, 0.5, 0.5, 1, 1, 1, 1, 1])
    for target, t in ((0.25, 0.15), (0.75, 0.45), (0.5, 0.2), (2.0, 0.0)):
        assert f(GRID, far, target) == pytest.approx(t, abs=1e-12), target
    # against SciPy's linear interp1d on sorted x (np.searchsorted, side left: the rule that
    # insightface's slinear interpolation followed on the SciPy versions where it ran), on
    # random step curves with long plateaus; thresholds of order 1: 1e-9 absolute
    from scipy.interpolate import interp1d

    rng = np.random.default_rng(0)
    thr = np.arange(0, 4, 0.001)
    for _ in range(20):
        neg = np.sort(rng.uniform(0.5, 3.5, 27))
        far_c = np.searchsorted(neg, thr, side="left") / len(neg)
        for target in (1e-3, 0.01, 0.05, 0.3):
            want = float(interp1d(far_c, thr, kind="linear", assume_sorted=True)(target))
            assert f(thr, far_c, target) == pytest.approx(want, abs=1e-9)


# ---- folds are the file's, before any pair is dropped ----------------------------------------
CODES = {"base": 10, "same": 60, "diff": 120, "hard": 180, "nan": 240}
COS = {10: 1.0, 60: 0.875, 120: 0.1, 180: 0.95, 240: 1.0}  # cosine to "base": d = 2 - 2 cos = 0, .25, 1.8, .1


class _CodeModel:
    """A stand-in model: the embedding is set by a code written in both top corners of the image
    (so the mirror embeds the same), at the angle whose cosine to the base image is COS[code];
    σ is 1, or inf for the code in ``inf_codes``; μ is (inf, NaN, 0) -- a diverged checkpoint's
    -- for the codes in ``nan_codes``."""

    config = {"method": "stand-in"}

    def __init__(self, inf_codes=(), nan_codes=()):
        self.inf_codes, self.nan_codes = set(inf_codes), set(nan_codes)

    def embed(self, images, masked):
        code = np.asarray(images)[:, 0, 0, 0].astype(int)
        theta = np.arccos([COS[int(c)] for c in code])
        mu = np.stack([np.cos(theta), np.sin(theta), np.zeros_like(theta)], 1)
        mu[np.isin(code, list(self.nan_codes)), :2] = (np.inf, np.nan)
        sigma = np.ones_like(mu)
        sigma[np.isin(code, list(self.inf_codes))] = np.inf
        return mu, sigma


def _code_image(face: np.ndarray, code: int) -> np.ndarray:
    img = face.copy()
    img[0, 0] = img[0, -1] = code
    return img


@pytest.fixture(scope="module")
def coded_root(astronaut, tmp_path_factory):
    """Aligned 112x112 astronaut crops carrying the codes, as PNG (lossless) under root/."""
    from PIL import Image

    from maskkit.training.eval.evalsets import FaceAligner

    face, _, _ = FaceAligner()(astronaut)
    root = tmp_path_factory.mktemp("coded")
    for name, code in CODES.items():
        Image.fromarray(_code_image(face, code)).save(root / f"{name}.png")
    return root


def _eval(tmp_path, pairs_file, root, model, **kw):
    from maskkit.training.eval.report import EvalConfig, run_eval

    cfg = EvalConfig(model=str(tmp_path), pairs=str(pairs_file), root=str(root), mask_side="none",
                     out=str(tmp_path / "report"), save_to_run=False, progress=False, **kw)
    return run_eval(cfg, model=model)


def test_a_pair_that_fails_to_load_moves_no_other_pair(coded_root, tmp_path):
    """20 pairs S D S D ...; pair 0 names a missing file, pair 1 is a different pair closer than
    every same pair (d .1 < .25). With the file's folds (2 pairs each) pair 1 is alone in fold 0
    and misjudged there: fold accuracies [0, 1 x 9], mean 0.9. Before the fix the 19 loaded
    pairs were re-split, pair 1 shared fold 0 with pair 2: [0.5, 1 x 9], mean 0.95."""
    lines = ["base.png missing.png 1", "base.png hard.png 0"]
    for k in range(2, 20):
        lines.append("base.png same.png 1" if k % 2 == 0 else "base.png diff.png 0")
    pf = tmp_path / "pairs.txt"
    pf.write_text("\n".join(lines) + "\n")
    m = _eval(tmp_path, pf, coded_root, _CodeModel())
    assert m["cosine"]["fold_accuracy"] == [0.0] + [1.0] * 9
    assert m["cosine"]["accuracy"] == pytest.approx(0.9, abs=1e-12)
    assert m["protocol"]["fold_rule"] == "kfold" and m["protocol"]["listed_pairs"] == 20
    assert m["protocol"]["fold_sizes_same_diff"][0] == [0, 1]
    assert m["counts"]["pairs"] == 19 and m["counts"]["pairs_skipped"] == 1
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert saved["protocol"]["fold_rule"] == "kfold"
    z = np.load(tmp_path / "report" / "embeddings.npz")
    assert z["pair_index"].tolist() == list(range(1, 20))  # pair 0 (missing image) is not there
    assert z["pair_fold"].tolist() == [k // 2 for k in range(1, 20)]


# ---- non-finite scores ----------------------------------------------------------------------
def test_non_finite_mls_is_reported_and_the_report_written(coded_root, tmp_path):
    """σ = inf for one image gives -inf / NaN MLS scores. Before the fix: ``ValueError:
    distances contain NaN or inf`` and no report."""
    from rich.console import Console

    lines = [("base.png same.png 1" if k % 2 == 0 else "base.png diff.png 0") for k in range(20)]
    lines[5] = "base.png hard.png 0"
    pf = tmp_path / "pairs.txt"
    pf.write_text("\n".join(lines) + "\n")
    console = Console(record=True, width=200)
    from maskkit.training.eval.report import EvalConfig, run_eval

    cfg = EvalConfig(model=str(tmp_path), pairs=str(pf), root=str(coded_root), mask_side="none",
                     out=str(tmp_path / "report"), save_to_run=False, progress=False)
    m = run_eval(cfg, model=_CodeModel(inf_codes=[CODES["hard"]]), console=console)
    assert m["mls"] is None
    assert len(m["notes"]) == 1 and "1 of 20 MLS scores are not finite" in m["notes"][0], m["notes"]
    assert "pair(s) 5" in m["notes"][0]
    # the cosine figures and every report file are there: pair 5 is the only error (fold 2)
    assert m["cosine"]["accuracy"] == pytest.approx(0.95, abs=1e-12)
    for f in ("metrics.json", "roc.png", "sigma_hist.png", "magnitude_hist.png", "worst_pairs.png", "embeddings.npz"):
        assert (tmp_path / "report" / f).stat().st_size > 0, f
    assert "MLS scores are not finite" in console.export_text()


# ---- non-finite μ: entries left out, counted and named ---------------------------------------
D_OF = {"same": 2 - 2 * 0.875, "diff": 2 - 2 * 0.1, "hard": 2 - 2 * 0.95}  # squared L2 to base


def _nan_pairs() -> tuple[list[tuple[str, str, bool]], np.ndarray]:
    """20 pairs S D S D ...; pair 0 (same) and pair 7 (different) use the NaN image, pair 1 is a
    different pair closer than every same pair. Returns the pairs and which have finite scores."""
    pairs = [("base", "same" if k % 2 == 0 else "diff", k % 2 == 0) for k in range(20)]
    pairs[0], pairs[1], pairs[7] = ("base", "nan", True), ("base", "hard", False), ("nan", "diff", False)
    return pairs, np.array(["nan" not in p[:2] for p in pairs])


@pytest.mark.parametrize("source", ["pairs", "bin"])
def test_non_finite_pairs_are_left_out_keeping_their_folds(coded_root, tmp_path, source, caplog):
    """μ = (inf, NaN, 0) for one image: the 2 pairs that use it are left out, counted and named,
    and every other pair keeps the fold of its position in the file. With those folds (2 pairs
    each) pair 1 is alone in fold 0 and misjudged: fold accuracies [0, 1 x 9]; re-splitting the
    18 finite pairs would put pair 2 beside it (0.5). Before the fix: a one-line error, no report."""
    from PIL import Image
    from rich.console import Console

    from maskkit.training.eval.evalsets import write_bin
    from maskkit.training.eval.report import EvalConfig, run_eval

    pairs, keep = _nan_pairs()
    if source == "pairs":
        pf = tmp_path / "pairs.txt"
        pf.write_text("".join(f"{a}.png {b}.png {int(s)}\n" for a, b, s in pairs))
        src = {"pairs": str(pf), "root": str(coded_root)}
        names = {0: ("base.png", "nan.png"), 7: ("nan.png", "diff.png")}
    else:
        img = {n: np.asarray(Image.open(coded_root / f"{n}.png")) for n in CODES}
        bp = write_bin(tmp_path / "coded.bin", [img[n] for a, b, _ in pairs for n in (a, b)],
                       [s for *_, s in pairs], ext=".png")  # lossless: the codes survive
        src = {"bin": str(bp)}
        names = {0: ("coded.bin:0", "coded.bin:1"), 7: ("coded.bin:14", "coded.bin:15")}
    console = Console(record=True, width=250)
    cfg = EvalConfig(model=str(tmp_path), mask_side="none", out=str(tmp_path / "report"), save_to_run=False,
                     progress=False, **src)
    with caplog.at_level("WARNING"):
        m = run_eval(cfg, model=_CodeModel(nan_codes=[CODES["nan"]]), console=console)
    c = m["counts"]
    assert (c["loaded_pairs"], c["pairs"], c["non_finite_pairs"]) == (20, 18, 2)
    assert [(r["pair"], r["a"], r["b"]) for r in m["failures"]["non_finite"]] == [(p, *names[p]) for p in (0, 7)]
    # the figures are those of the 18 finite pairs under the file's folds, computed here by hand
    issame = np.array([s for *_, s in pairs])
    dist = np.array([D_OF[b] for a, b, s in pairs if "nan" not in (a, b)])
    folds, rule = V.assign_folds(issame)
    ref = evaluate_distances(dist, issame[keep], folds=folds[keep], fold_rule=rule)
    assert m["cosine"]["fold_accuracy"] == ref.fold_accuracy == [0.0] + [1.0] * 9
    assert m["cosine"]["accuracy"] == pytest.approx(0.9, abs=1e-12)
    assert (m["cosine"]["auc"], m["cosine"]["val"]) == (ref.auc, ref.val)
    # MLS is scored on the same 18 pairs (σ = 1 everywhere: finite)
    assert m["mls"] is not None and m["mls"]["n_pairs"] == 18
    # one note, one warning line, one table row; ‖μ‖ counts the two non-finite images
    assert len(m["notes"]) == 1 and m["notes"][0].startswith("2 of 20 pairs left out of the figures")
    assert f"pair 0 ({names[0][0]} | {names[0][1]})" in m["notes"][0] and "pair 7" in m["notes"][0]
    assert len([r for r in caplog.records if "left out of the figures" in r.getMessage()]) == 1
    text = " ".join(console.export_text().split())
    assert "left out: non-finite scores" in text and "2 pairs" in text and "pair 7" in text
    assert m["magnitude"]["unmasked"]["non_finite"] == 2 and m["magnitude"]["unmasked"]["n"] == 40
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert saved["counts"]["non_finite_pairs"] == 2
    z = np.load(tmp_path / "report" / "embeddings.npz")
    assert z["pair_index"].tolist() == [k for k in range(20) if k not in (0, 7)]
    assert z["pair_fold"].tolist() == [k // 2 for k in range(20) if k not in (0, 7)]
    assert np.isfinite(z["mu"]).all() and (tmp_path / "report" / "worst_pairs.png").stat().st_size > 0


def _id_folders(tmp_path, coded_root, gallery, probes):
    for d, spec in (("gallery", gallery), ("probes", probes)):
        for ident, n in spec:
            (tmp_path / d / ident).mkdir(parents=True, exist_ok=True)
            os.symlink(coded_root / f"{n}.png", tmp_path / d / ident / f"{n}.png")


def test_non_finite_gallery_images_and_probes_are_left_out(coded_root, tmp_path):
    """A NaN μ in the gallery would make its identity's template NaN, and every probe with it;
    a NaN probe would rank 1 (NaN compares false). Both are left out, counted and named: the 2
    finite probes give Rank-1 1/2 ("same" finds base; "hard", filed under diff, is closer to base).
    Before the fix: a one-line error and no report."""
    from maskkit.training.eval.identification import identify
    from maskkit.training.eval.report import EvalConfig, run_eval

    _id_folders(tmp_path, coded_root, [("base", "base"), ("base", "nan"), ("diff", "diff")],
                [("base", "same"), ("diff", "hard"), ("diff", "nan")])
    cfg = EvalConfig(model=str(tmp_path), gallery=str(tmp_path / "gallery"), probes=str(tmp_path / "probes"),
                     mask_side="none", out=str(tmp_path / "report"), save_to_run=False, progress=False)
    m = run_eval(cfg, model=_CodeModel(nan_codes=[CODES["nan"]]))
    c = m["counts"]
    assert (c["gallery_images"], c["non_finite_gallery_images"], c["probes"], c["non_finite_probes"]) == (2, 1, 2, 1)
    assert [(r["path"], r["identity"]) for r in m["failures"]["non_finite"]] == [("base/nan.png", "base"),
                                                                                ("diff/nan.png", "diff")]
    assert len(m["notes"]) == 1 and m["notes"][0].startswith("1 of 3 gallery images and 1 of 3 probes left out")
    # by hand on the finite images: unit μ at the coded angles
    mu = {n: np.array([np.cos(np.arccos(COS[CODES[n]])), np.sin(np.arccos(COS[CODES[n]])), 0.0]) for n in CODES}
    ref = identify(np.stack([mu["base"], mu["diff"]]), ["base", "diff"], np.stack([mu["same"], mu["hard"]]),
                   ["base", "diff"])
    assert m["cosine"]["rank1"] == ref.rank1 == 0.5 and m["cosine"]["cmc"] == ref.cmc == [0.5, 1.0]
    assert m["mls"] is not None and m["mls"]["n_probes"] == 2
    assert (tmp_path / "report" / "worst_probes.png").stat().st_size > 0


def _cli_eval(monkeypatch, model, args):
    """``maskkit eval`` through click with ``model`` in place of a loaded checkpoint."""
    from click.testing import CliRunner

    import maskkit.cli.eval as cli_eval
    from maskkit.cli import main

    monkeypatch.setattr(cli_eval, "_check_model", lambda m: None)
    monkeypatch.setattr(cli_eval, "_load", lambda m, device="cpu": model)
    return CliRunner().invoke(main, ["eval", "--mask-side", "none", "-q", "--device", "cpu"] + args)


@pytest.mark.parametrize("case", ["all_pairs", "nine_finite_pairs", "all_probes"])
def test_too_few_finite_scores_is_a_one_line_error_with_counts(coded_root, tmp_path, monkeypatch, case):
    """Too few finite entries for the protocol: exit 1, one error line, and metrics.json with the
    counts, the reason and the σ statistics (here ‖σ‖ = ‖(1, 1, 1)‖ = √3 exactly); the record
    shows as "failed" in --compare. Before the fix: a one-line error and nothing written."""
    run = tmp_path / "run"
    run.mkdir()
    out = tmp_path / "report"
    if case == "all_probes":
        _id_folders(tmp_path, coded_root, [("base", "base"), ("diff", "diff")], [("base", "same"), ("diff", "hard")])
        args = ["--gallery", str(tmp_path / "gallery"), "--probes", str(tmp_path / "probes")]
        model = _CodeModel(nan_codes=[CODES["same"], CODES["hard"]])
        want = {"non_finite_probes": 2, "probes": 0, "gallery_images": 2}
    else:
        n_nan = 20 if case == "all_pairs" else 11
        lines = [("base.png nan.png 1" if k < n_nan else "base.png same.png 1") if k % 2 == 0 else
                 ("nan.png diff.png 0" if k < n_nan else "base.png diff.png 0") for k in range(20)]
        pf = tmp_path / "pairs.txt"
        pf.write_text("\n".join(lines) + "\n")
        args = ["--pairs", str(pf), "--root", str(coded_root)]
        model = _CodeModel(nan_codes=[CODES["nan"]])
        want = {"non_finite_pairs": n_nan, "pairs": 20 - n_nan}
    res = _cli_eval(monkeypatch, model, ["--model", str(run), "--out", str(out)] + args)
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output + repr(res.exception)
    errors = [x for x in res.output.splitlines() if x.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    assert "non-finite" in errors[0] or "finite score" in errors[0], errors[0]
    m = json.loads((out / "metrics.json").read_text())
    assert {k: m["counts"][k] for k in want} == want
    assert m["cosine"] is None and m["error"] and m["error"] in errors[0]
    assert m["sigma_norm"]["unmasked"]["mean"] == pytest.approx(np.sqrt(3), rel=1e-12)
    assert m["files"] == ["metrics.json", "sigma_hist.png", "magnitude_hist.png"]
    assert all((out / f).stat().st_size > 0 for f in m["files"])
    from maskkit.training.eval.compare import compare_rows

    _, rows = compare_rows([run])
    assert "failed" in rows[0].values()


def test_fewer_than_ten_pairs_is_a_one_line_error(coded_root, tmp_path, monkeypatch):
    """Before: ``ValueError: 5 pairs: the 10-fold protocol needs at least 10`` as a traceback."""
    pf = tmp_path / "pairs.txt"
    pf.write_text("base.png same.png 1\nbase.png diff.png 0\n" * 2 + "base.png missing.png 1\n" + "base.png same.png 1\n")
    res = _cli_eval(monkeypatch, _CodeModel(), ["--model", str(tmp_path), "--pairs", str(pf), "--root", str(coded_root)])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output + repr(res.exception)
    errors = [x for x in res.output.splitlines() if x.startswith("Error:")]
    assert len(errors) == 1 and "5 usable pair(s)" in errors[0] and "missing 1" in errors[0], res.output


# ---- identification caveats -----------------------------------------------------------------
def test_identification_flags_no_known_probe_and_trivial_ranks():
    from maskkit.training.eval.identification import identify

    rng = np.random.default_rng(0)
    g = rng.normal(size=(3, 8))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    # no probe identity in the gallery: before the fix Rank-1 0.00 with no word
    r = identify(g, ["a", "b", "c"], g.copy(), ["x", "y", "z"])
    assert r.rank1 is None and r.rank5 is None and r.cmc == []
    assert set(r.flags) == {"no_known_probe"} and "none of the 3 probes" in r.flags["no_known_probe"]
    # 3 gallery identities: Rank-5 is 100 % whatever the embeddings; Rank-1 is a real figure
    probes = rng.normal(size=(6, 8))
    r = identify(g, ["a", "b", "c"], probes, ["a", "b", "c", "a", "b", "q"])
    assert r.rank5 == 1.0 and set(r.flags) == {"rank5_trivial", "probes_unknown"}
    assert "only 3 identities" in r.flags["rank5_trivial"] and "1 of 6 probes" in r.flags["probes_unknown"]
    # one identity: Rank-1 is trivial too
    r = identify(g[:1], ["a"], probes[:2], ["a", "a"])
    assert r.rank1 == 1.0 and {"rank1_trivial", "rank5_trivial"} <= set(r.flags)
    # 6 identities, every probe known: nothing to flag
    g6 = rng.normal(size=(6, 8))
    r = identify(g6, list("abcdef"), probes, list("abcdef"))
    assert r.flags == {}


def test_identification_flags_reach_metrics_and_table(coded_root, tmp_path):
    """Through the report: flags in metrics.json and marked in the table."""
    from rich.console import Console

    from maskkit.training.eval.report import EvalConfig, run_eval

    for d, names in (("gallery", ("base", "same")), ("probes", ("diff", "hard"))):
        for n in names:
            (tmp_path / d / n).mkdir(parents=True)
            os.symlink(coded_root / f"{n}.png", tmp_path / d / n / f"{n}.png")
    console = Console(record=True, width=200)
    cfg = EvalConfig(model=str(tmp_path), gallery=str(tmp_path / "gallery"), probes=str(tmp_path / "probes"),
                     mask_side="none", out=str(tmp_path / "report"), save_to_run=False, progress=False)
    m = run_eval(cfg, model=_CodeModel(), console=console)
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert saved["cosine"]["rank1"] is None and "no_known_probe" in saved["flags"]
    assert saved["cosine"]["flags"] == m["flags"]
    text = console.export_text()
    assert "Rank-1 % (undefined)" in text and "no_known_probe" in text


def test_non_finite_mls_in_identification_is_reported(coded_root, tmp_path):
    """A probe with σ = inf: the MLS ranks are left out with a note, the cosine ranks stay.
    Before the fix the NaN MLS scores were ranked (NaN compares false: rank 1) and the ‖σ‖
    histogram then raised on inf, so no report was written."""
    from maskkit.training.eval.report import EvalConfig, run_eval

    for d, names in (("gallery", ("base", "diff")), ("probes", ("same", "hard"))):
        for n in names:
            ident = "base" if n in ("same", "hard") else n
            (tmp_path / d / ident).mkdir(parents=True, exist_ok=True)
            os.symlink(coded_root / f"{n}.png", tmp_path / d / ident / f"{n}.png")
    cfg = EvalConfig(model=str(tmp_path), gallery=str(tmp_path / "gallery"), probes=str(tmp_path / "probes"),
                     mask_side="none", out=str(tmp_path / "report"), save_to_run=False, progress=False)
    m = run_eval(cfg, model=_CodeModel(inf_codes=[CODES["hard"]]))
    assert m["mls"] is None
    assert len(m["notes"]) == 1 and "1 of 2 probes' mls scores are not finite" in m["notes"][0], m["notes"]
    # cosine: both probes are closer to "base" (cos .875, .95) than to "diff" (cos of angles)
    assert m["cosine"]["rank1"] == 1.0 and set(m["flags"]) == {"rank5_trivial"}
    assert (tmp_path / "report" / "cmc.png").stat().st_size > 0


# ---- the pairs format -----------------------------------------------------------------------
def test_pairs_file_naming_a_latin1_file(coded_root, tmp_path):
    """A pairs file that names a Latin-1 ``café.png`` (bytes not valid UTF-8): the pair is
    loaded from that file. Before the fix: ``UnicodeDecodeError`` reading the pairs file."""
    import shutil

    root = tmp_path / "root"
    shutil.copytree(coded_root, root)
    latin = os.fsdecode(b"caf\xe9.png")
    shutil.copy(root / "same.png", root / latin)
    body = b"\n".join([b"# a comment", b"base.png caf\xe9.png 1"] +
                      [b"base.png same.png 1" if k % 2 == 0 else b"base.png diff.png 0" for k in range(1, 20)])
    pf = tmp_path / "pairs.txt"
    pf.write_bytes(body + b"\n")
    from maskkit.training.eval.evalsets import load_pairs, parse_pairs_txt

    triples = parse_pairs_txt(pf)
    assert len(triples) == 20 and os.fsencode(triples[0][1]) == b"caf\xe9.png"
    ps = load_pairs(pf, root, progress=False)
    assert ps.n_pairs == 20 and ps.failures == []
    m = _eval(tmp_path, pf, root, _CodeModel())
    assert m["counts"]["pairs"] == 20 and m["cosine"]["accuracy"] == 1.0
    json.loads((tmp_path / "report" / "metrics.json").read_text(encoding="utf-8"))  # valid UTF-8 JSON


def test_pairs_format_in_help_and_readme():
    from click.testing import CliRunner

    from maskkit.cli import main

    out = CliRunner().invoke(main, ["eval", "--help"]).output
    assert "path_a path_b 1|0" in out and "10 300" in out
    readme = docs_text()
    assert "`path_a path_b 1|0`" in readme


# ---- no report replaced silently (issue 12 §9) ----------------------------------------------
def test_eval_never_replaces_a_report_or_record_silently(coded_root, tmp_path, monkeypatch):
    """An earlier report (default --out RUN/eval/<key>/, or any --out) and its saved record
    RUN/eval/<key>.json are refused without --overwrite, before anything is evaluated; --overwrite
    removes the old report's files, so none of another task's figures stays beside the new ones.
    Before the fix: silently replaced (and another task's cmc.png stayed in the folder)."""
    run = tmp_path / "run"
    run.mkdir()
    pf = tmp_path / "pairs.txt"
    pf.write_text("".join("base.png same.png 1\n" if k % 2 == 0 else "base.png diff.png 0\n" for k in range(20)))
    args = ["--pairs", str(pf), "--root", str(coded_root)]
    model = _CodeModel()
    home = run / "eval"
    key = f"{Path(coded_root).name}-verification-masknone"  # a file named pairs.txt: the set is named after --root
    record, report = home / f"{key}.json", home / key
    res = _cli_eval(monkeypatch, model, ["--model", str(run)] + args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    stamp = {p: p.stat().st_mtime_ns for p in home.rglob("*")}
    # the same command again: refused, naming the file and the flag; nothing touched
    res = _cli_eval(monkeypatch, model, ["--model", str(run)] + args)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    flat = " ".join(res.output.split())
    assert f"{report / 'metrics.json'} already exists" in flat and "--overwrite" in flat, res.output
    # another --out: the saved record --compare reads would still be replaced
    res = _cli_eval(monkeypatch, model, ["--model", str(run), "--out", str(tmp_path / "other")] + args)
    assert res.exit_code == 1 and f"{record} already exists" in " ".join(res.output.split()), res.output
    # --compare on a set claims every run's outputs before evaluating any
    run_b = tmp_path / "run_b"
    run_b.mkdir()
    res = _cli_eval(monkeypatch, model, ["--compare", str(run_b), str(run)] + args)
    assert res.exit_code == 1 and "--overwrite" in res.output, res.output
    assert not (run_b / "eval").exists()
    assert {p: p.stat().st_mtime_ns for p in home.rglob("*")} == stamp
    # --overwrite into a folder holding another task's report: its files go, the new ones come
    for f in ("metrics.json", "cmc.png", "worst_probes.png"):
        (report / f).write_bytes(b"old")
    (report / "mine.txt").write_text("kept")  # not a report file: left alone
    res = _cli_eval(monkeypatch, model, ["--model", str(run), "--overwrite"] + args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert sorted(p.name for p in report.iterdir()) == sorted([
        "metrics.json", "roc.png", "sigma_hist.png", "magnitude_hist.png", "worst_pairs.png", "embeddings.npz",
        "mine.txt"])
    assert json.loads((report / "metrics.json").read_text())["task"] == "verification"
    assert json.loads(record.read_text())["counts"]["pairs"] == 20


def test_aligned_and_checked_evaluations_keep_two_records(coded_root, tmp_path, monkeypatch):
    """The same pairs with and without --aligned: two reports and two saved records
    (``<key>.json`` and ``<key>-aligned.json``), neither refused nor replaced, and --compare shows
    both columns; a record without ``config`` (older maskkit) counts as not aligned. Before: the
    second run was refused (or --overwrite replaced the other record)."""
    from maskkit.training.eval.compare import compare_rows

    run = tmp_path / "run"
    run.mkdir()
    pf = tmp_path / "pairs.txt"
    pf.write_text("".join("base.png same.png 1\n" if k % 2 == 0 else "base.png diff.png 0\n" for k in range(20)))
    args = ["--model", str(run), "--pairs", str(pf), "--root", str(coded_root)]
    model = _CodeModel()
    home, key = run / "eval", f"{Path(coded_root).name}-verification-masknone"
    res = _cli_eval(monkeypatch, model, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    plain = (home / f"{key}.json").read_bytes()
    res = _cli_eval(monkeypatch, model, args + ["--aligned"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert (home / f"{key}.json").read_bytes() == plain  # the checked record is untouched
    rec = json.loads((home / f"{key}-aligned.json").read_text())
    assert rec["config"]["aligned"] is True and (home / f"{key}-aligned" / "metrics.json").is_file()
    # the same --aligned run again: refused, as any repeated evaluation
    res = _cli_eval(monkeypatch, model, args + ["--aligned"])
    assert res.exit_code == 1 and "--overwrite" in res.output, res.output
    old = json.loads(plain)
    del old["config"]  # as written before config was saved: read as not aligned
    (home / f"{key}.json").write_text(json.dumps(old))
    cols, rows = compare_rows([run])
    col = f"{Path(coded_root).name} MFV mask=none"
    assert cols == [col, col + " aligned"] and rows[0][col] == rows[0][col + " aligned"] != "-"


def test_bin_evaluation_is_one_record_with_or_without_aligned(coded_root, tmp_path, monkeypatch):
    """A ``.bin`` is aligned by construction, so ``--aligned`` changes nothing that is read: the
    same ``.bin`` with and without the flag is one evaluation -- one record ``<key>.json`` (no
    ``-aligned`` twin), the second run refused without ``--overwrite``, and ``--compare`` shows one
    column, with no `` aligned`` one, also for a record whose config says ``aligned`` (written
    with the flag). The rule is shared by the record key and the compare columns."""
    from PIL import Image

    from maskkit.training.eval.compare import compare_rows
    from maskkit.training.eval.evalsets import write_bin

    run = tmp_path / "run"
    run.mkdir()
    img = {n: np.asarray(Image.open(coded_root / f"{n}.png")) for n in CODES}
    pairs = [("base", "same", True) if k % 2 == 0 else ("base", "diff", False) for k in range(20)]
    bp = write_bin(tmp_path / "coded.bin", [img[n] for a, b, _ in pairs for n in (a, b)],
                   [s for *_, s in pairs], ext=".png")
    args = ["--model", str(run), "--bin", str(bp)]
    model, home, key = _CodeModel(), run / "eval", "coded-verification-masknone"
    for first, second in ((["--aligned"], []), ([], ["--aligned"])):
        res = _cli_eval(monkeypatch, model, args + first + ["--overwrite"])
        assert res.exit_code == 0, res.output + repr(res.exception)
        res = _cli_eval(monkeypatch, model, args + second)
        assert res.exit_code == 1 and "--overwrite" in res.output, res.output
        assert sorted(p.name for p in home.glob("*.json")) == [f"{key}.json"]
        assert not (home / f"{key}-aligned").exists()
        cols, rows = compare_rows([run])
        assert cols == ["coded MFV mask=none"] and rows[0][cols[0]] != "-", (cols, rows)
    assert json.loads((home / f"{key}.json").read_text())["config"]["aligned"] is False


def test_eval_help_names_overwrite():
    from click.testing import CliRunner

    from maskkit.cli import main

    out = " ".join(CliRunner().invoke(main, ["eval", "--help"]).output.split())
    assert "--overwrite" in out and "never replaced without --overwrite" in out
    assert "not finite" in out
    readme = " ".join(docs_text().split())
    assert "`synth --preview`" in readme and "`eval` refuses a report already in `--out`" in readme
    assert "`counts.non_finite_pairs`" in readme


# ---- a pairs line that is no pair; a failed image counted once ------------------------------
@pytest.mark.parametrize("bad, n_line", [("a.png b.png c.png d.png e.png", 24), ("base.png same.png 2", 3)])
def test_malformed_pairs_line_is_one_line_error_naming_file_line_and_forms(coded_root, tmp_path, monkeypatch,
                                                                           bad, n_line):
    """Five fields, or a label that is not 0/1: exit 1 with one error line naming file:line and
    the accepted forms, before any model loads. Before: a ``ValueError`` traceback
    (``pairs_bad.txt:24: cannot parse pairs line ...``) after the model had loaded."""
    lines = ["base.png same.png 1" if k % 2 == 0 else "base.png diff.png 0" for k in range(30)]
    lines[n_line - 1] = bad
    pf = tmp_path / "pairs_bad.txt"
    pf.write_text("\n".join(lines) + "\n")

    from click.testing import CliRunner

    import maskkit.cli.eval as cli_eval
    from maskkit.cli import main

    def no_model(*a, **k):
        raise AssertionError("the model was looked at before the pairs file was checked")

    monkeypatch.setattr(cli_eval, "_check_model", no_model)
    monkeypatch.setattr(cli_eval, "_load", no_model)
    res = CliRunner().invoke(main, ["eval", "-q", "--device", "cpu", "--model", str(tmp_path), "--pairs", str(pf),
                                    "--root", str(coded_root)])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output + repr(res.exception)
    assert "Traceback" not in res.output
    errors = [x for x in res.output.splitlines() if x.startswith("Error:")]
    assert len(errors) == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert f"pairs_bad.txt:{n_line}: cannot parse pairs line '{bad}'" in errors[0]
    assert "'path_a path_b 0|1'" in errors[0] and "'name n1 n2'" in errors[0] and "'name1 n1 name2 n2'" in errors[0]
    assert not (tmp_path / "eval").exists()  # nothing claimed or written
    # the library says the same, as an EvalInputError
    from maskkit.training.eval.report import EvalInputError

    with pytest.raises(EvalInputError, match=f"pairs_bad.txt:{n_line}: cannot parse"):
        _eval(tmp_path, pf, coded_root, _CodeModel())


def test_a_failed_image_is_one_input_failure_and_its_pairs_are_counted_apart(coded_root, tmp_path):
    """missing.png is named by pairs 0 and 5: one input failure (the image) and 2 pairs left out,
    in separate counts, records and table rows. Before: "input failures 2" for one missing
    image named once (the image plus a ``pair_skipped`` record counted as another input)."""
    from rich.console import Console

    from maskkit.training.eval.report import EvalConfig, run_eval

    lines = ["base.png same.png 1" if k % 2 == 0 else "base.png diff.png 0" for k in range(22)]
    lines[0], lines[5] = "base.png missing.png 1", "missing.png diff.png 0"
    pf = tmp_path / "pairs.txt"
    pf.write_text("\n".join(lines) + "\n")
    console = Console(record=True, width=200)
    cfg = EvalConfig(model=str(tmp_path), pairs=str(pf), root=str(coded_root), mask_side="none",
                     out=str(tmp_path / "report"), save_to_run=False, progress=False)
    m = run_eval(cfg, model=_CodeModel(), console=console)
    c = m["counts"]
    assert (c["input_failures"], c["pairs_skipped"], c["pairs"], c["listed_pairs"]) == (1, 2, 20, 22)
    assert [(f["src"], f["reason"]) for f in m["failures"]["inputs"]] == [("missing.png", "missing")]
    assert [(r["pair"], r["a"], r["b"], r["reason"]) for r in m["failures"]["pairs_skipped"]] == [
        (0, "base.png", "missing.png", "pair_skipped"), (5, "missing.png", "diff.png", "pair_skipped")]
    text = " ".join(console.export_text().split())
    assert "input failures │ 1" in text and "pairs left out (image failed) │ 2" in text

    # a .bin whose image 3 does not decode: that image is the failure, pair 1 is left out
    import pickle

    from maskkit.training.eval.evalsets import load_bin, write_bin

    img = np.zeros((112, 112, 3), np.uint8)
    bp = write_bin(tmp_path / "x.bin", [img] * 24, [k % 2 == 0 for k in range(12)], ext=".png")
    bins, issame = pickle.loads(bp.read_bytes())
    bins[3] = b"not an image"
    bp.write_bytes(pickle.dumps((bins, issame)))
    ps = load_bin(bp)
    assert [(f["src"], f["reason"]) for f in ps.failures] == [("x.bin:3", "decode_error")]
    assert [r["pair"] for r in ps.skipped_pairs] == [1] and ps.n_pairs == 11
    assert ps.mask_keys == [k for k in range(24) if k not in (2, 3)]  # .bin indices: unmoved by the drop


@pytest.mark.parametrize("bad", [b"", np.zeros(0, np.uint8)], ids=["empty-bytes", "empty-array"])
def test_bin_with_an_empty_image_is_a_decode_error_not_a_traceback(tmp_path, bad):
    """A 0-byte entry of a .bin (bytes or an empty np.uint8 array, as insightface's own sets hold
    them): one ``decode_error`` failure and its pair left out, as for undecodable bytes. Before the
    fix: cv2.error ``!buf.empty()`` out of ``eval --bin`` and ``train --val``."""
    import pickle

    from maskkit.io.image_io import decode_crop
    from maskkit.training.eval.evalsets import load_bin, write_bin

    with pytest.raises(ValueError, match="decode_error"):
        decode_crop(bad, (112, 112))
    img = np.zeros((112, 112, 3), np.uint8)
    bp = write_bin(tmp_path / "x.bin", [img] * 24, [k % 2 == 0 for k in range(12)], ext=".png")
    bins, issame = pickle.loads(bp.read_bytes())
    bins[7] = bad
    bp.write_bytes(pickle.dumps((bins, issame)))
    ps = load_bin(bp)
    assert [(f["src"], f["reason"]) for f in ps.failures] == [("x.bin:7", "decode_error")]
    assert [r["pair"] for r in ps.skipped_pairs] == [3] and ps.n_pairs == 11


# ---- MLS that is no σ-aware result; no empty legend -----------------------------------------
def test_mls_flags_closed_forms():
    """σ = 0: PFE's MLS is undefined (−∞ for different μ): ``sigma_zero``. One σ for all:
    MLS = −‖Δμ‖²/(4σ²) + const, the distance's ranking: ``sigma_constant``. Varying σ: none."""
    from maskkit.training.eval.uncertainty import mls_flags, mutual_likelihood_score

    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    zero = np.zeros((50, 8))
    f = mls_flags(zero, zero)
    assert set(f) == {"sigma_zero"} and "50 of 50 pairs" in f["sigma_zero"]
    half = np.ones((50, 8))
    half[:7, 3] = 0.0
    assert set(mls_flags(half, half)) == {"sigma_zero"} and "7 of 50 pairs" in mls_flags(half, half)["sigma_zero"]
    # σ = 0 on one side only: σ₁² + σ₂² > 0, MLS is defined
    assert mls_flags(zero, np.full((50, 8), 0.3)) == {}
    const = np.full((50, 8), 0.3)
    assert set(mls_flags(const, const)) == {"sigma_constant"}
    # the closed form behind the flag: MLS is a decreasing affine function of ‖Δμ‖²
    d2 = np.sum((mu1 - mu2) ** 2, axis=1)
    mls = mutual_likelihood_score(mu1, const, mu2, const)
    np.testing.assert_allclose(mls, -d2 / (4 * 0.09) - 4 * np.log(2 * 0.09) - 4 * np.log(2 * np.pi), rtol=1e-12)
    varied = 0.2 + rng.random((50, 8))
    assert mls_flags(varied, varied[::-1]) == {}
    # gallery templates against probes: a probe meets the floor where its σ and a template's are 0
    g, p = np.ones((3, 8)), np.ones((4, 8))
    g[1, 2], p[[0, 2], 2] = 0.0, 0.0
    assert "2 of 4 probes" in mls_flags(g, p, paired=False)["sigma_zero"]


def test_sigma_zero_flags_mls_and_sigma_inf_draws_no_empty_legend(coded_root, tmp_path, recwarn):
    """σ = 0 everywhere: MLS comes with ``mls_flags.sigma_zero`` in metrics.json and a (†) note
    in the table (before: a normal-looking MLS column, no word). σ = inf everywhere: the ‖σ‖
    histogram has nothing to draw and no legend (before: matplotlib's "No artists with labels
    found to put in legend" UserWarning on stderr)."""
    import warnings

    from rich.console import Console

    from maskkit.training.eval.report import EvalConfig, run_eval

    class _Sigma(_CodeModel):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def embed(self, images, masked):
            mu, sigma = super().embed(images, masked)
            return mu, np.full_like(sigma, self.value)

    pf = tmp_path / "pairs.txt"
    pf.write_text("".join("base.png same.png 1\n" if k % 2 == 0 else "base.png diff.png 0\n" for k in range(20)))
    console = Console(record=True, width=300)
    cfg = EvalConfig(model=str(tmp_path), pairs=str(pf), root=str(coded_root), mask_side="none",
                     out=str(tmp_path / "r0"), save_to_run=False, progress=False)
    m = run_eval(cfg, model=_Sigma(0.0), console=console)
    assert set(m["mls_flags"]) == {"sigma_zero"} and "20 of 20 pairs" in m["mls_flags"]["sigma_zero"]
    assert json.loads((tmp_path / "r0" / "metrics.json").read_text())["mls_flags"] == m["mls_flags"]
    text = " ".join(console.export_text().split())
    assert "MLS (σ-aware) (†)" in text and "(†) sigma_zero: MLS is degenerate" in text
    m = run_eval(EvalConfig(**{**cfg.__dict__, "out": str(tmp_path / "r1")}), model=_Sigma(0.7))
    assert set(m["mls_flags"]) == {"sigma_constant"}

    warnings.simplefilter("always")
    recwarn.clear()
    m = run_eval(EvalConfig(**{**cfg.__dict__, "out": str(tmp_path / "rinf")}), model=_Sigma(np.inf))
    assert m["mls"] is None and m["mls_flags"] == {}  # the non-finite MLS is left out with its note
    legend = [w for w in recwarn.list if "legend" in str(w.message)]
    assert legend == [], [str(w.message) for w in legend]
    assert (tmp_path / "rinf" / "sigma_hist.png").stat().st_size > 0


# ---- embed: -q is quiet; an all-failed run points at where the failures are ------------------
def test_embed_quiet_and_all_failed_message(coded_root, tmp_path, monkeypatch):
    """``embed -q`` prints nothing on success (before: the summary table); when every input
    fails it exits 1 naming the 'failures' array of the .npz, where they are (before: "see
    emb3.npz/failures.jsonl", a path that does not exist)."""
    from click.testing import CliRunner

    import maskkit.cli.eval as cli_eval
    from maskkit.cli import main

    monkeypatch.setattr(cli_eval, "_check_model", lambda m: None)
    monkeypatch.setattr(cli_eval, "_load", lambda m, device="cpu": _CodeModel())
    (tmp_path / "src" / "base").mkdir(parents=True)
    os.symlink(coded_root / "base.png", tmp_path / "src" / "base" / "base.png")
    args = ["embed", "--model", str(tmp_path), "--src", str(tmp_path / "src"), "--aligned", "--device", "cpu"]
    res = CliRunner().invoke(main, args + ["--out", str(tmp_path / "e1.npz"), "-q"])
    assert res.exit_code == 0 and res.output == "", res.output + repr(res.exception)
    assert len(np.load(tmp_path / "e1.npz")["mu"]) == 1
    res = CliRunner().invoke(main, args + ["--out", str(tmp_path / "e2.npz")])
    assert res.exit_code == 0 and "maskkit embed" in res.output  # the table without -q

    (tmp_path / "bad" / "x").mkdir(parents=True)
    (tmp_path / "bad" / "x" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "emb3.npz"
    res = CliRunner().invoke(main, ["embed", "--model", str(tmp_path), "--src", str(tmp_path / "bad"), "--aligned",
                                    "--device", "cpu", "--out", str(out), "-q"])
    assert res.exit_code == 1, res.output + repr(res.exception)
    assert "failures.jsonl" not in res.output and res.output.count("\n") == 1, res.output
    assert f"every input failed (1); see the 'failures' array in {out}" in res.output
    failures = [json.loads(f) for f in np.load(out)["failures"]]
    assert len(failures) == 1 and failures[0]["src"] == "x/broken.png" and failures[0]["reason"]


def _shift(rgb: np.ndarray, dx: int, dy: int) -> np.ndarray:
    import cv2

    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(rgb, m, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class _MeanColourModel:
    """A stand-in model: μ is the image's mean colour (a re-aligned image keeps a finite, distinct μ), σ 1."""

    config = {"method": "stand-in"}

    def embed(self, images, masked):
        mu = np.asarray(images, np.float64).mean(axis=(1, 2)) + 1.0
        return mu, np.ones_like(mu)  # σ: the table gets its MLS column (the widest table)


def _table_rows(text: str) -> dict[str, str]:
    """``{label: cosine cell}`` of a printed metrics table; each row must be one line (a wrapped
    label leaves its value cell empty)."""
    rows = {}
    for ln in text.split("┡")[1].split("└")[0].splitlines()[1:]:
        cells = [x.strip() for x in ln.strip("│").split("│")]
        assert cells[1], f"a row broke over two lines: {ln!r}"
        rows[cells[0]] = cells[1]
    return rows


def test_table_names_crops_used_as_given_and_keeps_every_row_on_one_line(coded_root, grace_hopper, tmp_path):
    """Crops whose face cannot be checked are counted as "crops used as given" (they were called
    "align fallbacks", which they are not), re-aligned crops apart; at 80 columns every row of
    the table is one line (before: "input failures / align fallbacks" and "pairs left out (an
    image failed)" broke over two)."""
    from PIL import Image
    from rich.console import Console

    from maskkit.face.align import align_face
    from maskkit.face.detect import make_detector
    from maskkit.face.crop_check import check_aligned_crop
    from maskkit.training.eval.report import EvalConfig, run_eval

    face = max(make_detector("hog").detect(grace_hopper), key=lambda f: f.area)
    crop = align_face(grace_hopper, face.landmarks68, (112, 112)).image
    root = tmp_path / "root"
    root.mkdir()
    for f in coded_root.iterdir():
        (root / f.name).write_bytes(f.read_bytes())
    # grace shifted by (20, 20) px: a face whose fit is unstable, kept unverified (tests/test_unverified.py)
    shifted = _code_image(_shift(crop, 20, 20), CODES["same"])
    assert check_aligned_crop(shifted).how == "unverified"
    Image.fromarray(shifted).save(root / "shifted.png")
    # grace shifted by (0, 14) px: on a face, off the template, re-aligned
    off = _code_image(_shift(crop, 0, 14), CODES["diff"])
    assert check_aligned_crop(off).reason == "not_aligned"
    Image.fromarray(off).save(root / "off.png")
    lines = ["base.png shifted.png 1" if k % 2 == 0 else "base.png off.png 0" for k in range(20)]
    lines[0], lines[5] = "base.png missing.png 1", "missing.png diff.png 0"
    pf = tmp_path / "pairs.txt"
    pf.write_text("\n".join(lines) + "\n")
    console = Console(record=True, width=80)
    cfg = EvalConfig(model=str(tmp_path), pairs=str(pf), root=str(root), mask_side="none",
                     out=str(tmp_path / "report"), save_to_run=False, progress=False)
    m = run_eval(cfg, model=_MeanColourModel(), console=console)
    c = m["counts"]
    assert (c["input_failures"], c["realigned"], c["used_as_given"], c["pairs_skipped"]) == (1, 1, 1, 2)
    rows = _table_rows(console.export_text())
    assert (rows["input failures"], rows["crops re-aligned"], rows["crops used as given"],
            rows["pairs left out (image failed)"]) == ("1", "1", "1", "2")


def test_table_of_a_bin_counts_its_crops_as_read_aligned(coded_root, tmp_path):
    """A ``.bin``'s crops are aligned by construction and never checked: the table says how many
    were read that way (it said "crops re-aligned 0" and "crops used as given 0", as if none had
    been read)."""
    from PIL import Image
    from rich.console import Console

    from maskkit.training.eval.evalsets import write_bin
    from maskkit.training.eval.report import EvalConfig, run_eval

    names = sorted(p.name for p in coded_root.iterdir())[:4]
    img = {n: np.asarray(Image.open(coded_root / n).convert("RGB")) for n in names}
    pairs = [(names[k % 4], names[(k + 1) % 4]) for k in range(20)]
    bp = write_bin(tmp_path / "coded.bin", [img[n] for p in pairs for n in p], [k % 2 == 0 for k in range(20)],
                   ext=".png")
    console = Console(record=True, width=80)
    m = run_eval(EvalConfig(model=str(tmp_path), bin=str(bp), mask_side="none", out=str(tmp_path / "report"),
                            save_to_run=False, progress=False), model=_MeanColourModel(), console=console)
    text = console.export_text()
    rows = _table_rows(text)
    assert m["counts"]["images"] == 40 and rows["crops read as aligned (.bin)"] == "40", text
    assert "crops re-aligned" not in rows and "crops used as given" not in rows


# ---- a .bin is someone else's pickle: read without running anything it names ----------------
class _Touch:
    """A pickle that creates ``path`` when loaded (what a hostile .bin could do with os.system)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.path),)


def _one_line_refusal(run, marker) -> str:
    from maskkit.training.eval.evalsets import BinFormatError

    with pytest.raises(BinFormatError) as ei:
        run()
    assert not marker.exists(), "the .bin ran what its pickle named"
    assert "\n" not in str(ei.value)
    return str(ei.value)


def test_bin_reader_runs_nothing_and_refuses_what_is_no_bin(tmp_path):
    """``pickle.load`` ran whatever a ``.bin`` named (a downloaded file could call ``os.system``)
    and random bytes ended in a traceback. Now only image bytes and same/different flags are
    built; anything else is one line. insightface's own forms still load: protocol 2 pickles of
    bytes (``_codecs.encode``), numpy booleans, a Python 2 ``encoding="bytes"`` pickle."""
    import pickle

    from maskkit.training.eval.evalsets import load_bin, read_bin_lists, write_bin

    marker = tmp_path / "ran"
    img = np.zeros((112, 112, 3), np.uint8)
    good = write_bin(tmp_path / "good.bin", [img] * 20, [k % 2 == 0 for k in range(10)], ext=".png")
    bins, issame = pickle.loads(good.read_bytes())
    variants = {
        "hostile_image": ([_Touch(marker)] + bins[1:], issame),
        "hostile_flags": (bins, [_Touch(marker)] + issame[1:]),
        "not_a_pair": {"bins": bins},
        "odd_count": (bins[:-1], issame),
        "text_image": (["img"] * 20, issame),
    }
    for name, obj in variants.items():
        p = tmp_path / f"{name}.bin"
        p.write_bytes(pickle.dumps(obj, protocol=2))
        msg = _one_line_refusal(lambda: load_bin(p), marker)
        assert msg.startswith(str(p)), msg
    (tmp_path / "random.bin").write_bytes(np.random.default_rng(0).bytes(3000))
    assert "not an insightface .bin" in _one_line_refusal(lambda: load_bin(tmp_path / "random.bin"), marker)
    assert "its pickle asks to build" in _one_line_refusal(lambda: read_bin_lists(tmp_path / "hostile_image.bin"), marker)
    # insightface's forms: protocol 2 (bytes via _codecs.encode), numpy bools, numpy byte arrays
    for k, obj in enumerate([(bins, issame), (bins, [np.bool_(s) for s in issame]),
                             ([np.frombuffer(b, np.uint8) for b in bins], issame)]):
        p = tmp_path / f"insightface{k}.bin"
        p.write_bytes(pickle.dumps(obj, protocol=2))
        ps = load_bin(p)
        assert ps.n_pairs == 10 and list(ps.issame) == issame and not ps.failures


def test_eval_and_train_refuse_a_hostile_bin_in_one_line(tmp_path):
    """``eval --bin`` stops with its one-line input error; ``train --val`` refuses before its run
    folder is made; the pickle's call never runs."""
    import pickle

    from click.testing import CliRunner

    from maskkit.cli import main
    from maskkit.training.eval.report import EvalConfig, EvalInputError, run_eval

    marker = tmp_path / "ran"
    bp = tmp_path / "lfw.bin"
    bp.write_bytes(pickle.dumps(([_Touch(marker)] * 20, [True] * 10), protocol=2))
    with pytest.raises(EvalInputError, match="not an insightface .bin: its pickle asks to build") as ei:
        run_eval(EvalConfig(model=str(tmp_path), bin=str(bp), out=str(tmp_path / "r"), save_to_run=False,
                            progress=False), model=_MeanColourModel())
    assert not marker.exists() and "\n" not in str(ei.value)
    res = CliRunner().invoke(main, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--val", str(bp)])
    assert res.exit_code == 2 and not marker.exists() and not (tmp_path / "run").exists(), res.output
    assert f"--val {bp}: not an insightface .bin" in res.output


# ---- a set of one kind of pair: no verification figure ---------------------------------------
@pytest.mark.parametrize("kind", ["all-same", "all-different"])
def test_eval_and_train_refuse_a_set_of_one_kind_of_pair(astronaut, grace_hopper, tmp_path, kind):
    """12 pairs of real faces (astronaut, Grace Hopper, aligned) all flagged same (or all
    different): ``eval --bin`` and ``train --val`` refuse in one line -- before the fix eval
    reported ``accuracy 90.00 ± 30.00`` and AUC 0.0000 with exit 0. The same images with both
    kinds of pair are scored (the control)."""
    from click.testing import CliRunner

    from maskkit.cli import main
    from maskkit.training.eval.evalsets import FaceAligner, write_bin
    from maskkit.training.eval.report import EvalConfig, EvalInputError, run_eval

    al = FaceAligner()
    crops = [al(p)[0] for p in (astronaut, grace_hopper)]
    imgs = [np.clip(crops[k % 2].astype(int) + 3 * k, 0, 255).astype(np.uint8) for k in range(24)]
    flags = [kind == "all-same"] * 12
    bp = write_bin(tmp_path / "one.bin", imgs, flags)
    cfg = EvalConfig(model=str(tmp_path), bin=str(bp), mask_side="none", out=str(tmp_path / "r"),
                     save_to_run=False, progress=False)
    with pytest.raises(EvalInputError, match="no verification figure") as ei:
        run_eval(cfg, model=_MeanColourModel())
    assert "\n" not in str(ei.value) and "12 usable pairs" in str(ei.value)
    res = CliRunner().invoke(main, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--val", str(bp)])
    assert res.exit_code not in (0, None) and isinstance(res.exception, SystemExit), res.output
    assert "no verification figure" in res.output and str(bp) in res.output, res.output
    assert not (tmp_path / "run").exists()
    # control: the same images with same and different pairs give figures
    both = write_bin(tmp_path / "both.bin", imgs, [k % 2 == 0 for k in range(12)])
    m = run_eval(EvalConfig(model=str(tmp_path), bin=str(both), mask_side="none", out=str(tmp_path / "r2"),
                            save_to_run=False, progress=False), model=_MeanColourModel())
    assert m["counts"]["pairs"] == 12


def test_embed_accounts_for_every_file_under_src(astronaut, grace_hopper, tmp_path, monkeypatch):
    """Two aligned real faces, an undecodable .png and a readme.txt: the table's files row is
    embedded + failed + skipped (4 = 2 + 1 + 1), readme.txt is in the archive's ``skipped`` with
    its reason (before: only in a stderr warning), and the legacy ``alignment_fallbacks`` row
    (realigned + unverified counted again) is not printed."""
    import cv2
    from click.testing import CliRunner

    import maskkit.cli.eval as cli_eval
    from maskkit.cli import main
    from maskkit.training.eval.evalsets import FaceAligner

    monkeypatch.setattr(cli_eval, "_check_model", lambda m: None)
    monkeypatch.setattr(cli_eval, "_load", lambda m, device="cpu": _MeanColourModel())
    al = FaceAligner()
    for name, photo in (("astronaut", astronaut), ("grace", grace_hopper)):
        (tmp_path / "src" / name).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "src" / name / "0.png"), np.ascontiguousarray(al(photo)[0][:, :, ::-1]))
    (tmp_path / "src" / "grace" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "src" / "readme.txt").write_text("notes\n")
    out = tmp_path / "e.npz"
    res = CliRunner().invoke(main, ["embed", "--model", str(tmp_path), "--src", str(tmp_path / "src"), "--aligned",
                                    "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    rows = {}
    for ln in res.stdout.splitlines():
        cells = [c.strip() for c in ln.strip("│ ").split("│")]
        if len(cells) == 2:
            rows[cells[0]] = cells[1]
    assert (rows["files"], rows["embedded"], rows["failed"], rows["skipped"]) == ("4", "2", "1", "1"), rows
    assert rows["not_an_image"] == "1" and "alignment_fallbacks" not in res.stdout, res.stdout
    z = np.load(out)
    skipped = [json.loads(s) for s in z["skipped"]]
    assert [(s["src"], s["reason"]) for s in skipped] == [("readme.txt", "not_an_image")]
    assert len(z["paths"]) + len(z["failures"]) + len(z["skipped"]) == 4
