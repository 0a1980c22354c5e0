"""End to end: a .bin built from real faces (lfw-johns) with maskkit's aligner, a checkpoint
trained in the test, ``maskkit eval`` / ``embed`` / ``--compare`` through the CLI, and the report
checked against an independent recomputation."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import torch_threads

SEED = 3


def _pairs(identities: list[str]) -> tuple[list[tuple[int, int]], list[bool]]:
    """Deterministic pairs: 10 same pairs per identity (consecutive images) and as many
    different pairs (image k of identity a vs image k of the next identity)."""
    ids = np.array(identities)
    names = sorted(set(identities))
    by = {n: np.flatnonzero(ids == n) for n in names}
    pairs, same = [], []
    for j, n in enumerate(names):
        idx = by[n]
        other = by[names[(j + 1) % len(names)]]
        for k in range(min(10, len(idx) - 1, len(other))):
            pairs.append((int(idx[k]), int(idx[k + 1])))
            same.append(True)
            pairs.append((int(idx[k]), int(other[(k + 3) % len(other)])))
            same.append(False)
    return pairs, same


@pytest.fixture(scope="module")
def johns(lfw_johns, tmp_path_factory):
    """Aligned lfw-johns faces, a .bin in insightface's layout, and a tiny trained run."""
    with torch_threads(2):  # the faster count for this fixture only; later modules keep theirs
        return _make_johns(lfw_johns, tmp_path_factory)


def _make_johns(lfw_johns, tmp_path_factory) -> dict:
    from maskkit.render import MaskRenderer
    from maskkit.training.config import TrainConfig
    from maskkit.training.data import write_shards
    from maskkit.training.engine import train
    from maskkit.training.eval.evalsets import FaceAligner, apply_masks, load_image_folder, write_bin

    tmp = tmp_path_factory.mktemp("johns")
    faces = load_image_folder(lfw_johns, FaceAligner(), progress=False)
    # every one of the 55 photos is accounted: aligned or listed as a failure
    assert len(faces) + len(faces.failures) == 55
    assert len(faces) >= 50
    pairs, same = _pairs(faces.identities)
    assert len(pairs) == 100 and sum(same) == 50
    images = [faces.images[i] for p in pairs for i in p]
    bin_path = write_bin(tmp / "johns.bin", images, same)

    # a tiny two-stream MaskDUL model trained a few steps on the same faces, half masked
    classes = sorted(set(faces.identities))
    mo = apply_masks(faces.images, np.arange(len(faces)) % 2 == 1, seed=0, renderer=MaskRenderer(), progress=False)
    samples = [{"key": f"k{i}", "image": mo.images[i], "label": classes.index(faces.identities[i]),
                "masked": bool(mo.masked[i])} for i in range(len(faces))]
    write_shards(tmp / "shards", samples, classes)
    run = tmp / "run"
    # width 0.25: at width 0.125 (8-channel stage 1) torch 2.13 CPU crashes in the backward of
    # channels_last input (heap corruption), a torch bug outside maskkit
    cfg = TrainConfig(data=str(tmp / "shards"), out=str(run), method="maskdul", backbone="r18", width=0.25,
                      embedding_size=64, batch_size=16, num_workers=0, max_steps=3, progress=False,
                      tensorboard=False, device="cpu", amp="none", shuffle_buffer=64)
    train(cfg)
    return {"tmp": tmp, "bin": bin_path, "run": run, "faces": faces, "pairs": pairs, "same": same}


def _ten_fold_accuracy(dist: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Independent re-implementation of the insightface 10-fold accuracy (contiguous folds)."""
    thr = np.arange(0, 4, 0.01)
    n = len(dist)
    bounds = np.cumsum([0] + [n // 10 + (1 if k < n % 10 else 0) for k in range(10)])
    accs = []
    for k in range(10):
        test = np.zeros(n, bool)
        test[bounds[k]:bounds[k + 1]] = True
        train_acc = [np.mean((dist[~test] < t) == same[~test]) for t in thr]
        t = thr[int(np.argmax(train_acc))]
        accs.append(np.mean((dist[test] < t) == same[test]))
    return float(np.mean(accs)), float(np.std(accs))


def test_bin_layout_is_insightface(johns):
    with open(johns["bin"], "rb") as f:
        bins, issame = pickle.load(f)
    assert isinstance(bins, list) and isinstance(issame, list)
    assert len(bins) == 200 and len(issame) == 100
    assert all(isinstance(b, bytes) and b[:2] == b"\xff\xd8" for b in bins)  # JPEG bytes
    from maskkit.training.eval.evalsets import load_bin

    ps = load_bin(johns["bin"])
    assert ps.images.shape == (200, 112, 112, 3) and ps.issame.tolist() == johns["same"]
    # JPEG round trip of the aligned faces
    a = johns["faces"].images[johns["pairs"][0][0]].astype(int)
    assert np.abs(ps.images[0].astype(int) - a).mean() < 3.0


@pytest.fixture(scope="module")
def bin_report(johns):
    """``maskkit eval --bin johns.bin --mask-side one`` through the CLI: (report dir, output)."""
    from maskkit.cli import main

    out = johns["tmp"] / "report_one"
    res = CliRunner().invoke(main, ["eval", "--model", str(johns["run"]), "--bin", str(johns["bin"]),
                                    "--mask-side", "one", "--seed", str(SEED), "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return out, res.output


def test_eval_bin_report_matches_recomputation(johns, bin_report):
    import cv2

    from maskkit.face.landmarks import landmarks_in_box
    from maskkit.render import MaskRenderer
    from maskkit.training.api import load_model

    out, output = bin_report
    assert "accuracy" in output and "MLS" in output  # the terminal table
    for f in ("metrics.json", "roc.png", "sigma_hist.png", "magnitude_hist.png", "worst_pairs.png", "embeddings.npz"):
        assert (out / f).stat().st_size > 0, f
    m = json.loads((out / "metrics.json").read_text())
    c = m["counts"]
    assert (c["pairs"], c["same"], c["diff"], c["images"]) == (100, 50, 50, 200)
    assert c["mask_requested"] == 100 and c["masked"] + c["mask_failures"] == 100
    assert c["masked"] >= 95  # real, frontal faces: the renderer fits nearly all
    assert len(m["failures"]["masking"]) == c["mask_failures"]

    # --- independent recomputation: decode the pickle, mask image 2i+1 with the renderer and
    # the documented seeding, embed image + mirror, squared L2, 10 folds.
    with open(johns["bin"], "rb") as f:
        bins, issame = pickle.load(f)
    imgs = np.stack([cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                     for b in bins])
    renderer = MaskRenderer()
    masked = np.zeros(len(imgs), bool)
    for i in range(1, len(imgs), 2):
        try:
            r = renderer.render(imgs[i], landmarks_in_box(imgs[i], None), "random", np.random.default_rng([SEED, i]))
        except ValueError:
            continue
        imgs[i], masked[i] = r.image, True
    assert masked.sum() == c["masked"]
    model = load_model(johns["run"])
    mu1, s1 = model.embed(imgs, masked)
    mu2, s2 = model.embed(np.ascontiguousarray(imgs[:, :, ::-1]), masked)
    emb = mu1 + mu2
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    dist = np.sum((emb[0::2] - emb[1::2]) ** 2, axis=1)
    acc, std = _ten_fold_accuracy(dist, np.array(issame))
    assert m["cosine"]["accuracy"] == pytest.approx(acc, abs=1e-9)
    assert m["cosine"]["accuracy_std"] == pytest.approx(std, abs=1e-9)
    # ROC AUC against the exact rank statistic (the grid ROC is a close approximation)
    d_same, d_diff = dist[np.array(issame)], dist[~np.array(issame)]
    auc_exact = np.mean(d_same[:, None] < d_diff[None, :]) + 0.5 * np.mean(d_same[:, None] == d_diff[None, :])
    assert m["cosine"]["auc"] == pytest.approx(auc_exact, abs=0.02)
    # sigma statistics per branch
    sig = (s1 + s2) / 2
    sn = np.linalg.norm(sig, axis=1)
    assert m["sigma_norm"]["masked"]["mean"] == pytest.approx(sn[masked].mean(), rel=1e-4)
    assert m["sigma_norm"]["unmasked"]["mean"] == pytest.approx(sn[~masked].mean(), rel=1e-4)
    z = np.load(out / "embeddings.npz")
    np.testing.assert_allclose(z["mu"], emb, atol=1e-5)
    assert z["masked"].tolist() == masked.tolist()
    np.testing.assert_allclose(z["pair_dist"], dist, atol=1e-5)
    # sigma in unit-sphere units = sigma / ||mean mu||
    mag = np.linalg.norm((mu1.astype(np.float64) + mu2) / 2, axis=1, keepdims=True)
    np.testing.assert_allclose(z["sigma_unit"], sig / mag, rtol=1e-4)
    # MLS (PFE eq. 3) recomputed from the saved per-image Gaussians: with a 3-step model some
    # sigma are tiny and MLS is ill-conditioned, so it is recomputed from the report's own
    # float64 embeddings rather than from a second forward pass
    su, mu_u = z["sigma_unit"], z["mu"]
    var = np.maximum(su[0::2] ** 2 + su[1::2] ** 2, 1e-12)  # the documented variance floor
    mls = -0.5 * np.sum((mu_u[0::2] - mu_u[1::2]) ** 2 / var + np.log(var), axis=1) - 0.5 * mu_u.shape[1] * np.log(2 * np.pi)
    np.testing.assert_allclose(z["pair_mls"], mls, rtol=1e-9)
    # the worst false match is the closest different pair
    diff_idx = np.flatnonzero(~np.array(issame))
    assert m["worst"]["false_matches"][0]["pair"] == int(diff_idx[np.argmin(dist[diff_idx])])
    assert m["mls"] is not None and 0.0 <= m["mls"]["accuracy"] <= 1.0
    from maskkit.training.eval.verification import evaluate_scores

    assert m["mls"]["accuracy"] == pytest.approx(evaluate_scores(mls, np.array(issame)).accuracy, abs=1e-9)

    # reproducible: the same seed gives the same report figures, metrics saved in the run dir
    saved = json.loads((johns["run"] / "eval" / "johns-verification-maskone.json").read_text())
    assert saved["cosine"]["accuracy"] == m["cosine"]["accuracy"]


def test_mask_sides_and_compare(johns):
    from maskkit.cli import main

    runner = CliRunner()
    # a second run folder (same weights) so --compare has two rows
    run_b = johns["tmp"] / "run_b"
    shutil.copytree(johns["run"], run_b, ignore=shutil.ignore_patterns("eval"))
    out = johns["tmp"] / "rep_both"
    res = runner.invoke(main, ["eval", "--model", str(johns["run"]), "--bin", str(johns["bin"]), "--mask-side", "both",
                               "--out", str(out), "-q", "--no-flip"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    m_both = json.loads((out / "metrics.json").read_text())
    # -q: no table, one JSON line of the headline figures (those of metrics.json) and the report
    assert "MLS" not in res.output
    line = json.loads(res.output.strip().splitlines()[-1])
    assert line["accuracy"] == round(m_both["cosine"]["accuracy"], 6) and line["val"] == round(m_both["cosine"]["val"], 6)
    assert line["task"] == "verification" and line["mask_side"] == "both" and line["report"] == str(out)
    assert m_both["counts"]["mask_requested"] == 200
    assert m_both["counts"]["masked"] + m_both["counts"]["mask_failures"] == 200
    assert m_both["protocol"]["flip"] is False
    # --compare on a set: evaluates both runs (unmasked) then prints the table
    res = runner.invoke(main, ["eval", "--compare", str(johns["run"]), str(run_b), "--bin", str(johns["bin"]),
                               "--mask-side", "none", "--no-flip", "-q"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    ma = json.loads((johns["run"] / "eval" / "johns-verification-masknone.json").read_text())
    mb = json.loads((run_b / "eval" / "johns-verification-masknone.json").read_text())
    assert ma["counts"]["mask_requested"] == 0 and ma["counts"]["masked"] == 0
    # run_b has the same weights: evaluated on the same set it gets the same accuracy
    assert mb["cosine"]["accuracy"] == ma["cosine"]["accuracy"]
    # compare from saved metrics only: run A has its saved evaluations (both, none, ...), run B one
    res = runner.invoke(main, ["eval", "--compare", str(johns["run"]), str(run_b)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    from maskkit.training.eval.compare import compare_rows

    cols, rows = compare_rows([johns["run"], run_b])
    assert "johns MFV mask=none" in cols and "johns MFV mask=both" in cols
    assert rows[0]["johns MFV mask=none"].startswith(f"{100 * ma['cosine']['accuracy']:.2f}")
    assert rows[1]["method"] == "maskdul" and "johns MFV mask=both" not in rows[1]
    assert f"{100 * m_both['cosine']['accuracy']:.2f}" in res.output


def test_identification_and_embed_cli(johns, lfw_johns):
    from maskkit.cli import main

    runner = CliRunner()
    out = johns["tmp"] / "ident"
    # raw (unaligned) lfw-johns: same folder for gallery and probes, 2 gallery images per identity
    res = runner.invoke(main, ["eval", "--model", str(johns["run"]), "--gallery", str(lfw_johns), "--probes",
                               str(lfw_johns), "--gallery-per-id", "2", "--mask-side", "one", "--out", str(out),
                               "-q"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    m = json.loads((out / "metrics.json").read_text())
    c = m["counts"]
    assert c["identities"] == 5 and c["gallery_images"] == 10
    assert c["gallery_images"] + c["probes"] + c["input_failures"] == 55
    assert c["mask_requested"] == c["probes"] and c["probes_masked_branch"] == c["masked"]
    cmc = m["cosine"]["cmc"]
    assert len(cmc) == 5 and cmc[-1] == 1.0 and all(a <= b for a, b in zip(cmc, cmc[1:]))
    assert m["cosine"]["rank1"] == cmc[0] and m["cosine"]["rank5"] == 1.0
    hits = sum(v["rank1_hits"] for v in m["per_identity"].values())
    assert hits == round(cmc[0] * c["probes"])
    for f in ("cmc.png", "sigma_hist.png", "magnitude_hist.png", "worst_probes.png"):
        assert (out / f).stat().st_size > 0

    emb = johns["tmp"] / "emb.npz"
    res = runner.invoke(main, ["embed", "--model", str(johns["run"]), "--src", str(lfw_johns), "--out", str(emb),
                               "-q"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    z = np.load(emb)
    n = len(z["paths"])
    assert n + len(z["failures"]) == 55
    assert z["mu"].shape == (n, 64) and z["sigma"].shape == (n, 64) and z["magnitude"].shape == (n,)
    np.testing.assert_allclose(np.linalg.norm(z["mu"], axis=1), 1.0, atol=1e-5)
    assert sorted(set(z["identities"].tolist())) == sorted(p.name for p in Path(lfw_johns).iterdir())


def test_unmaskable_faces_are_kept_and_reported(astronaut):
    """A face the renderer cannot fit stays unmasked (face branch) and is listed."""
    from maskkit.render import CannotFit
    from maskkit.training.eval.evalsets import apply_masks

    class Picky:
        def render(self, rgb, lm, style, rng):
            if lm[0, 0] < 0:
                raise CannotFit("face_outside_image", "test")
            from types import SimpleNamespace

            return SimpleNamespace(image=255 - rgb, params={"style": "surgical"})

    imgs = np.stack([np.asarray(astronaut[:112, :112])] * 4)
    lms = [np.zeros((68, 2), np.float32), -np.ones((68, 2), np.float32), np.zeros((68, 2), np.float32), None]
    mo = apply_masks(imgs, [True, True, False, False], seed=0, landmarks68=lms, names=list("abcd"),
                     renderer=Picky(), progress=False)
    assert mo.masked.tolist() == [True, False, False, False]
    assert mo.failures == [{"index": 1, "name": "b", "reason": "cannot_fit", "detail": str(CannotFit("face_outside_image", "test"))}]
    assert np.array_equal(mo.images[1], imgs[1]) and np.array_equal(mo.images[0], 255 - imgs[0])
    assert mo.styles == ["surgical", None, None, None]


def test_pairs_txt_with_raw_photos(johns, bin_report, lfw_johns, tmp_path):
    """pairs.txt + image root of raw (unaligned 150x150) photos: aligned on the fly, same pairs
    as the .bin, and a pair with a missing image is reported, not dropped silently."""
    from maskkit.cli import main

    faces = johns["faces"]
    lines = [f"{faces.paths[a]} {faces.paths[b]} {int(s)}" for (a, b), s in zip(johns["pairs"], johns["same"])]
    lines.append(f"{faces.paths[0]} John_Nobody/missing.jpg 0")
    pairs_txt = tmp_path / "pairs_johns.txt"
    pairs_txt.write_text("# explicit-path form\n" + "\n".join(lines) + "\n")
    out = tmp_path / "rep_pairs"
    res = CliRunner().invoke(main, ["eval", "--model", str(johns["run"]), "--pairs", str(pairs_txt), "--root",
                                    str(lfw_johns), "--mask-side", "one", "--seed", str(SEED), "--out", str(out),
                                    "-q"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    m = json.loads((out / "metrics.json").read_text())
    assert m["set"] == "pairs_johns"
    # the missing image is one input failure; its pair is counted apart, as a pair left out
    assert m["counts"]["pairs"] == 100 and m["counts"]["pairs_skipped"] == 1 and m["counts"]["input_failures"] == 1
    assert [f["reason"] for f in m["failures"]["inputs"]] == ["missing"]
    assert [(r["pair"], r["b"]) for r in m["failures"]["pairs_skipped"]] == [(100, "John_Nobody/missing.jpg")]
    ref = json.loads((bin_report[0] / "metrics.json").read_text())
    # same faces, the same images masked; the masked second images wear other masks (a pairs
    # file's masks are drawn from the file names, a .bin's from its indices), so their scores
    # differ by design: on a near-chance 3-step model the two accuracies moved 0.06-0.15 apart
    # over renderer versions, which says nothing about reading the set. What must agree is what
    # was read: the mask pattern and the unmasked first images (the .bin's JPEG round trip only).
    z_ref = np.load(bin_report[0] / "embeddings.npz")
    z = np.load(out / "embeddings.npz")
    assert np.array_equal(z["masked"], z_ref["masked"]) and m["counts"]["pairs"] == ref["counts"]["pairs"]
    cos = np.sum(z["mu"] * z_ref["mu"], axis=1)
    plain = ~z["masked"] & ~z_ref["masked"]  # the unmasked first images: only the JPEG noise differs
    assert plain.sum() == 100 and np.median(cos[plain]) > 0.98


def test_parse_lfw_pairs_format(tmp_path):
    from maskkit.training.eval.evalsets import parse_pairs_txt

    p = tmp_path / "pairs.txt"
    p.write_text("10\t300\nAbel_Pacheco\t1\t4\nAkhmed_Zakayev\t1\t3\nAbdel_Madi_Shabneh\t1\tDean_Barker\t1\n")
    assert parse_pairs_txt(p) == [
        ("Abel_Pacheco/Abel_Pacheco_0001", "Abel_Pacheco/Abel_Pacheco_0004", True),
        ("Akhmed_Zakayev/Akhmed_Zakayev_0001", "Akhmed_Zakayev/Akhmed_Zakayev_0003", True),
        ("Abdel_Madi_Shabneh/Abdel_Madi_Shabneh_0001", "Dean_Barker/Dean_Barker_0001", False),
    ]
    p.write_text("a b c d e\n")
    with pytest.raises(ValueError, match=r"pairs.txt:1: cannot parse pairs line 'a b c d e'; expected 'path_a"):
        parse_pairs_txt(p)


def test_pairs_file_with_bom_and_crlf_lists_the_same_pairs(tmp_path):
    """A pairs file saved by a Windows editor (UTF-8 byte-order mark, CRLF line ends) lists the
    same pairs as the plain file, a Latin-1 name (not UTF-8) still mapping back to its bytes.
    Before: the mark stuck to the first name ('\ufeff10' made the header a pair line, or the
    first image 'missing')."""
    import os

    from maskkit.training.eval.evalsets import parse_pairs_txt

    lines = [b"10\t300", b"Abel_Pacheco\t1\t4", b"# a comment", b"base.png caf\xe9.png 1",
             b"Abdel_Madi_Shabneh\t1\tDean_Barker\t1", b""]
    plain, windows = tmp_path / "plain.txt", tmp_path / "windows.txt"
    plain.write_bytes(b"\n".join(lines))
    windows.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines))
    want = [("Abel_Pacheco/Abel_Pacheco_0001", "Abel_Pacheco/Abel_Pacheco_0004", True),
            ("base.png", os.fsdecode(b"caf\xe9.png"), True),
            ("Abdel_Madi_Shabneh/Abdel_Madi_Shabneh_0001", "Dean_Barker/Dean_Barker_0001", False)]
    assert parse_pairs_txt(plain) == want
    assert parse_pairs_txt(windows) == want
    assert os.fsencode(parse_pairs_txt(windows)[1][1]) == b"caf\xe9.png"
    # the mark before a path form's first name: stripped too, not part of 'base.png'
    windows.write_bytes(b"\xef\xbb\xbfbase.png caf\xe9.png 1\r\n")
    assert parse_pairs_txt(windows) == [want[1]]


def test_unwritable_outputs_are_one_line_errors(tmp_path):
    """export -o, embed -o and eval --out under a regular file: a one-line error at once
    (before any model is loaded), no traceback, nothing written."""
    from maskkit.cli import main

    import torch

    afile = tmp_path / "afile"
    afile.write_bytes(b"x")
    (tmp_path / "gal" / "a").mkdir(parents=True)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({}, run / "checkpoints" / "last.pt")  # the output check comes before any loading
    runner = CliRunner()
    cases = [
        (["export", "--model", str(run), "-o", str(afile / "m.onnx")], "--out"),
        (["embed", "--model", str(run), "--src", str(tmp_path / "gal"), "--out", str(afile / "e.npz")], "--out"),
        (["eval", "--model", str(run), "--gallery", str(tmp_path / "gal"), "--probes", str(tmp_path / "gal"),
          "--out", str(afile / "rep")], "--out"),
    ]
    for args, opt in cases:
        res = runner.invoke(main, args)
        assert res.exit_code == 1, (args, res.output, repr(res.exception))
        assert f"Error: {opt} {afile}" in res.output and "not writable" in res.output, res.output
        assert not isinstance(res.exception, OSError) and "Traceback" not in res.output
    assert afile.read_bytes() == b"x"


def test_model_that_is_not_a_run_is_a_one_line_error(tmp_path, lfw_johns):
    """--model pointing at a folder without checkpoints/last.pt, or at an image, gives a one-line
    error naming the problem (eval, embed, export, eval --compare with a set), no traceback."""
    from maskkit.cli import main

    img = next(lfw_johns.glob("*/*.jpg"))
    (tmp_path / "gal" / "a").mkdir(parents=True)
    gal = str(tmp_path / "gal")
    runner = CliRunner()
    for model, expect in ((str(tmp_path / "gal"), "no checkpoint in run dir"), (str(img), "not a PyTorch checkpoint")):
        for args in (["export", "--model", model, "-o", str(tmp_path / "m.onnx")],
                     ["embed", "--model", model, "--src", gal, "--out", str(tmp_path / "e.npz")],
                     ["eval", "--model", model, "--gallery", gal, "--probes", gal],
                     ["eval", "--compare", model, "--gallery", gal, "--probes", gal]):
            res = runner.invoke(main, args)
            assert res.exit_code == 1, (args, res.output, repr(res.exception))
            assert "Error: --model" in res.output and expect in res.output, (args, res.output)
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "e.npz").exists()


def test_unavailable_or_bad_device_is_a_one_line_error(tmp_path):
    """eval / embed / eval --compare with a set on a device this machine lacks: one-line error."""
    import torch

    from maskkit.cli import main

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({}, run / "checkpoints" / "last.pt")  # the device check comes before any loading
    (tmp_path / "gal" / "a").mkdir(parents=True)
    gal = str(tmp_path / "gal")
    bad = [("cuda:99", "--device cuda:99"), ("foo", "not a device name")]
    if not torch.cuda.is_available():
        bad.append(("cuda", "CUDA is not available"))
    for dev, expect in bad:
        for args in (["eval", "--model", str(run), "--gallery", gal, "--probes", gal, "--device", dev],
                     ["eval", "--compare", str(run), "--gallery", gal, "--probes", gal, "--device", dev],
                     ["embed", "--model", str(run), "--src", gal, "--out", str(tmp_path / "e.npz"), "--device", dev]):
            res = CliRunner().invoke(main, args)
            assert res.exit_code == 1, (args, res.output, repr(res.exception))
            assert "Error: --device" in res.output and expect in res.output, (args, res.output)


def test_unknown_detector_is_a_usage_error(tmp_path, lfw_johns):
    """eval / embed --detector foo: a usage error naming the choices (it used to fail every image
    and end in a ValueError traceback from an empty gallery); the choices are maskkit's detectors."""
    from maskkit.cli import main
    from maskkit.face.detect import DETECTORS

    for name in ("eval", "embed"):
        det = next(p for p in main.commands[name].params if p.name == "detector")
        assert tuple(det.type.choices) == tuple(DETECTORS)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    src = str(lfw_johns)
    for args in (["eval", "--model", str(run), "--gallery", src, "--probes", src, "--detector", "foo"],
                 ["embed", "--model", str(run), "--src", src, "--out", str(tmp_path / "e.npz"), "--detector", "foo"]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2, (args, res.output, repr(res.exception))
        assert "Invalid value for '--detector': 'foo'" in res.output and "blazeface" in res.output, res.output


def test_contact_sheet_captions_stay_identifiable():
    """Worst-pair / worst-probe captions keep names distinguishable (a plain [:18] cut made
    ``Arnold_Schwarzenegger_0006.jpg`` and ``..._0007.jpg`` the same label)."""
    from maskkit.training.eval.plots import pair_caption, probe_caption, short_label

    a, b = "lfw/Arnold_Schwarzenegger/Arnold_Schwarzenegger_0006.jpg", "x/Arnold_Schwarzenegger_0007.jpg"
    cap = pair_caption(0.41234, a, b)
    line1, ids, stems = cap.split("\n")
    assert line1 == "d=0.412"
    la, lb = (s.strip() for s in stems.split("|"))
    assert la != lb and la.startswith("Arnold") and la.endswith("_0006") and lb.endswith("_0007")
    assert len(la) <= 20 and len(lb) <= 20
    ia, ib = (s.strip() for s in ids.split("|"))  # each image's identity (its folder) beside its stem
    assert ia.startswith("Arnold") and ia.endswith("gger") and len(ia) <= 20 and ib == "x"
    assert pair_caption(0.1, "John_Kerry_0001.jpg", "John_Kerry_0002.jpg").endswith("John_Kerry_0001 | John_Kerry_0002")
    # a folder layout whose file names do not carry the identity (before: "001 | 001", no identity)
    assert pair_caption(0.2, "id_0042/001.jpg", "id_0977/001.jpg").split("\n")[1:] == ["id_0042 | id_0977", "001 | 001"]
    assert pair_caption(0.3, "lfw.bin:12", "lfw.bin:13") == "d=0.300\nlfw.bin:12 | lfw.bin:13"  # a .bin: no "- | -"
    assert pair_caption(0.3, "a.jpg", "id_7/b.jpg").split("\n")[1] == "- | id_7"
    cap = probe_caption(3, "Jennifer_Lopez_Anniston", "Jennifer_Lopez_Aniston_Smith")
    assert cap == "rank 3: Jennifer_Lopez_Anniston\n-> Jennifer_Lopez_Aniston_Smith"
    long_a, long_b = "Maria_Guadalupe_Fernanda_Lopez_A", "Maria_Guadalupe_Fernanda_Lopez_B"
    assert short_label(long_a, 28) != short_label(long_b, 28) and len(short_label(long_a, 28)) == 28
    assert short_label("short", 28) == "short"


def test_photo_without_a_face_fails_with_no_face(photos_dir, celeb_aligned, tmp_path):
    """No detected face is a ``no_face`` failure (never a whole-image guess that gets embedded
    and scored); a 112x112 crop on the ArcFace template passes through as it is (with the
    landmarks the template check fitted), trusted or not."""
    from maskkit.io.image_io import load_image
    from maskkit.training.eval.evalsets import FaceAligner, load_image_folder, load_pairs

    aligner = FaceAligner()
    with pytest.raises(ValueError) as ei:
        aligner(load_image(photos_dir / "dogs.jpg"))
    assert ei.value.reason == "no_face"
    img, lm, note = aligner(load_image(photos_dir / "obama.jpg"))
    assert img.shape == (112, 112, 3) and lm.shape == (68, 2) and note is None
    crop_path = next(p for p in sorted((celeb_aligned / "Barack_Obama").iterdir()) if p.suffix == ".jpg")
    crop = load_image(crop_path)
    assert crop.shape[:2] == (112, 112)
    out, lm, note = aligner(crop)
    assert out is crop and lm.shape == (68, 2) and note is None
    out, lm, note = FaceAligner(trust_aligned=True)(crop)
    assert out is crop and lm is None and note is None

    src = tmp_path / "src"
    (src / "dogs").mkdir(parents=True)
    (src / "obama").mkdir()
    shutil.copy(photos_dir / "dogs.jpg", src / "dogs" / "dogs.jpg")
    shutil.copy(photos_dir / "obama.jpg", src / "obama" / "obama.jpg")
    shutil.copy(crop_path, src / "obama" / "crop.jpg")
    s = load_image_folder(src, aligner, progress=False)
    assert len(s.images) == 2 and sorted(s.paths) == ["obama/crop.jpg", "obama/obama.jpg"]
    assert [(f["src"], f["reason"]) for f in s.failures] == [("dogs/dogs.jpg", "no_face")]
    assert not s.notes

    (tmp_path / "pairs.txt").write_text("obama/obama.jpg obama/crop.jpg 1\ndogs/dogs.jpg obama/obama.jpg 0\n")
    p = load_pairs(tmp_path / "pairs.txt", src, aligner, progress=False)
    assert p.n_pairs == 1 and len(p.images) == 2 and not p.notes
    assert [f["reason"] for f in p.failures] == ["no_face"]  # the image, once
    assert [(r["pair"], r["reason"]) for r in p.skipped_pairs] == [(1, "pair_skipped")]


def test_empty_gallery_or_probes_is_a_one_line_error(johns, lfw_johns, photos_dir, tmp_path):
    from maskkit.cli import main

    gal = tmp_path / "gal"
    (gal / "dogs").mkdir(parents=True)
    shutil.copy(photos_dir / "dogs.jpg", gal / "dogs" / "dogs.jpg")  # no face: the gallery ends up empty
    empty = tmp_path / "empty"
    empty.mkdir()
    runner = CliRunner()
    for args, what in (([ "--gallery", str(gal), "--probes", str(lfw_johns)], "gallery is empty"),
                       (["--gallery", str(lfw_johns), "--probes", str(empty)], "probe set is empty"),
                       (["--gallery", str(gal), "--probes", str(gal)], "is empty")):
        for cmd in (["eval", "--model", str(johns["run"])], ["eval", "--compare", str(johns["run"])]):
            # --name: test_identification_and_embed_cli saved this run's record for lfw-johns
            res = runner.invoke(main, cmd + args + ["-q", "--out", str(tmp_path / "rep"), "--name", "empty-check"])
            assert res.exit_code == 1 and isinstance(res.exception, SystemExit), (args, res.output, repr(res.exception))
            lines = [x for x in res.output.splitlines() if x.startswith("Error:")]
            assert len(lines) == 1 and what in lines[0] and "Traceback" not in res.output, res.output
    assert "no_face 1" in lines[0]


def test_compare_reads_the_method_from_config_json(tmp_path):
    """A run without saved metrics still shows its method (from RUN/config.json) in --compare."""
    from maskkit.cli import main
    from maskkit.training.config import TrainConfig
    from maskkit.training.eval.compare import compare_rows

    run = tmp_path / "arc_run"
    run.mkdir()
    TrainConfig(data="shards/", out=str(run), method="arcface").save(run / "config.json")
    bare = tmp_path / "bare"
    bare.mkdir()
    cols, rows = compare_rows([run, bare])
    assert cols == [] and [r["method"] for r in rows] == ["arcface", "-"]
    res = CliRunner().invoke(main, ["eval", "--compare", str(run)])
    assert res.exit_code == 0 and "arcface" in res.output, res.output


def test_val_at_far_note_in_report_and_table(bin_report):
    """50 negative pairs cannot resolve FAR=1e-3: metrics.json and the table say so."""
    out, output = bin_report
    m = json.loads((out / "metrics.json").read_text())
    assert m["counts"]["diff"] == 50
    assert "not resolvable" in m["val_note"] and "50 negative pairs" in m["val_note"]
    flat = " ".join(output.split())
    assert "VAL@FAR=0.001 % (*)" in flat and "not resolvable" in flat, output


def test_eval_refuses_a_report_folder_of_other_files(johns, tmp_path):
    """``eval --out`` into a folder of other files (another command's output, the user's) is
    refused, naming them, and writes nothing; with ``--overwrite`` the report is written beside
    them and they are kept."""
    from maskkit.cli import main

    out = tmp_path / "aligned"
    out.mkdir()
    (out / "manifest.jsonl").write_text('{"an": "align run"}\n')
    args = ["eval", "--model", str(johns["run"]), "--bin", str(johns["bin"]), "--mask-side", "none", "--out", str(out),
            "-q"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "is not empty" in res.output and "manifest.jsonl" in res.output, res.output
    assert sorted(p.name for p in out.iterdir()) == ["manifest.jsonl"]
    res = CliRunner().invoke(main, args + ["--overwrite"])
    assert res.exit_code == 0, res.output
    assert (out / "metrics.json").is_file() and (out / "manifest.jsonl").read_text() == '{"an": "align run"}\n'
