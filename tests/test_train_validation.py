"""Validation while training (``maskkit train --val``): the figures are ``maskkit eval``'s, the kept
``best.pt`` is the best logged one, and ``--resume`` keeps the history.

Real faces: an unmasked ``synth --ratio 0`` set (tests/trainsets.py) trained with online masks,
and a 20-pair ``.bin`` of two identities the training set does not hold.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from trainsets import log_records, plain_set, verification_bin

COMMON = ["--method", "maskdul", "--backbone", "r18", "--width", "0.25", "--batch-size", "6", "--num-workers", "0",
          "--steps-per-epoch", "3", "--seed", "5", "--online-masks", "--val-every", "2", "-q", "--no-tensorboard",
          "--set", "shuffle_buffer=8", "--set", "lr=0.5"]


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("val")
    return plain_set(tmp, [4, 6, 8], shard_samples=9), verification_bin(tmp / "heldout.bin", 20)


def _train(args: list[str]):
    from maskkit.cli import main

    res = CliRunner().invoke(main, ["train"] + args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res


def _eval(model: Path, bin_path: Path, side: str, out: Path) -> dict:
    from maskkit.cli import main

    res = CliRunner().invoke(main, ["eval", "--model", str(model), "--bin", str(bin_path), "--mask-side", side,
                                    "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return json.loads((out / "metrics.json").read_text())


def test_figures_equal_eval_best_is_the_best_logged_and_resume_keeps_the_history(sets, tmp_path):
    data, heldout = sets
    a, b = tmp_path / "a", tmp_path / "b"
    _train(["--data", str(data), "--out", str(a), "--max-steps", "6", "--val", str(heldout)] + COMMON)
    recs = log_records(a)
    val = [r for r in recs if r.get("event") == "val"]
    # every 2 steps and at the end, sides none and one by default
    assert [(r["step"], r["mask_side"]) for r in val] == [(s, side) for s in (2, 4, 6) for side in ("none", "one")]
    assert all(r["set"] == "heldout" and r["pairs"] == 20 for r in val)
    assert all(r["masked"] == 20 for r in val if r["mask_side"] == "one")  # the second image of each pair
    rule = [r for r in recs if r.get("event") == "val_setup"][0]["rule"]
    assert rule == "heldout:one:accuracy"
    assert json.loads((a / "config.json").read_text())["resolved"]["val_best"] == rule

    # best.pt is the checkpoint of the best logged figure (ties: the earlier step) ...
    one = [r for r in val if r["mask_side"] == "one"]
    best = max(one, key=lambda r: (r["accuracy"], -r["step"]))
    kept = torch.load(a / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    assert kept["step"] == best["step"]
    assert kept["callbacks"]["val"]["best"]["value"] == best["accuracy"]
    # ... and `maskkit eval` of it on the same set and side gives the logged figures exactly
    m = _eval(a / "checkpoints" / "best.pt", heldout, "one", tmp_path / "e1")
    assert (m["cosine"]["accuracy"], m["cosine"]["accuracy_std"], m["cosine"]["auc"]) == \
        (best["accuracy"], best["accuracy_std"], best["auc"])
    last_none = [r for r in val if r["mask_side"] == "none"][-1]
    m = _eval(a, heldout, "none", tmp_path / "e2")  # RUN/ = last.pt, written at the last validation
    assert (m["cosine"]["accuracy"], m["cosine"]["auc"]) == (last_none["accuracy"], last_none["auc"])
    assert len({r["accuracy"] for r in val}) > 1  # the figures move: the best is a real choice

    # interrupted after the first validation, resumed: the same history, the same best.pt
    _train(["--data", str(data), "--out", str(b), "--max-steps", "3", "--val", str(heldout)] + COMMON)
    _train(["--out", str(b), "--resume", "--max-steps", "6", "-q"])
    hist_a = torch.load(a / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["callbacks"]["val"]
    hist_b = torch.load(b / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["callbacks"]["val"]
    steps_b = [h["step"] for h in hist_b["history"]]
    assert steps_b == [2, 2, 3, 3, 4, 4, 6, 6]  # the stop at step 3 was validated too (the run's end)
    assert [h for h in hist_b["history"] if h["step"] != 3] == hist_a["history"]  # bit-exact figures
    assert hist_b["rule"] == rule
    kb = torch.load(b / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    top_b = max((h for h in hist_b["history"] if h["mask_side"] == "one"), key=lambda h: (h["accuracy"], -h["step"]))
    assert kb["step"] == top_b["step"] and hist_b["best"]["value"] == top_b["accuracy"]
    starts = [r for r in log_records(b) if r.get("event") == "val_setup"]
    assert [s["resumed_history"] for s in starts] == [0, 4]


def test_validation_changes_no_weight_and_a_bad_set_is_a_usage_error(sets, tmp_path):
    """A validated run trains the same weights as one without validation (eval mode, no RNG
    drawn); a set that is no set stops before anything is written."""
    from maskkit.cli import main

    data, heldout = sets
    _train(["--data", str(data), "--out", str(tmp_path / "v"), "--max-steps", "3", "--val", str(heldout)] + COMMON)
    _train(["--data", str(data), "--out", str(tmp_path / "n"), "--max-steps", "3"] + COMMON)
    a = torch.load(tmp_path / "v" / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    b = torch.load(tmp_path / "n" / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for bad, expect in ((str(data / "manifest.json"), "a pairs file needs its image folder"),
                        (str(tmp_path / "nope.bin"), "not a .bin file")):
        res = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(tmp_path / "x"), "--val", bad]
                                 + COMMON)
        assert res.exit_code == 2 and expect in res.output, res.output
        assert not (tmp_path / "x").exists()
    res = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(tmp_path / "x"), "--val", str(heldout),
                                    "--val-best", "lfw:one"] + COMMON)
    assert res.exit_code == 2 and "no --val set is named 'lfw'" in res.output, res.output


def test_the_rule_keeps_the_best_figure_not_the_latest(sets):
    """The rule's choice over a sequence of figures (as one validation each): keep on a strict
    improvement only, so a later, worse or equal figure never replaces best.pt."""
    from maskkit.training.callbacks import CallbackResult
    from maskkit.training.eval.validation import Validator

    _, heldout = sets
    v = Validator([str(heldout)], ("none", "one"), best="heldout:one:accuracy")
    kept = []
    for step, (acc_one, acc_none) in enumerate([(0.6, 0.9), (0.8, 0.5), (0.7, 0.95), (0.8, 0.99), (0.75, 1.0)], 1):
        res = CallbackResult(records=[{"set": "heldout", "mask_side": "none", "accuracy": acc_none},
                                      {"set": "heldout", "mask_side": "one", "accuracy": acc_one}])
        rec = v._best(step, float(step), res)
        kept.append(res.keep)
        assert rec["event"] == "val_best" and rec["rule"] == "heldout:one:accuracy"
    assert kept == ["best", "best", None, None, None]
    assert v.best["value"] == 0.8 and v.best["step"] == 2
    v2 = Validator([str(heldout)], ("none", "one"), best="heldout:none:accuracy")
    for step, acc in enumerate([0.5, 0.7, 0.6], 1):
        v2._best(step, float(step), CallbackResult(records=[{"set": "heldout", "mask_side": "none", "accuracy": acc}]))
    assert v2.best["step"] == 2 and v2.state_dict()["rule"] == "heldout:none:accuracy"


def test_under_ddp_rank_0_validates_once(sets, tmp_path):
    """--nproc 2 (gloo): the launched ranks build the validator (maskkit.cli._rank); only rank 0
    evaluates and writes, once per validation; the kept best.pt is that step's checkpoint."""
    data, heldout = sets
    run = tmp_path / "ddp"
    args = [a for a in COMMON if a not in ("--online-masks",)]
    _train(["--data", str(data), "--out", str(run), "--max-steps", "2", "--nproc", "2", "--val", str(heldout)]
           + args + ["--batch-size", "3"])
    recs = log_records(run)
    val = [r for r in recs if r.get("event") == "val"]
    assert [(r["step"], r["mask_side"]) for r in val] == [(2, "none"), (2, "one")]
    assert [s["world"] for s in recs if s.get("event") == "start"] == [2]
    kept = torch.load(run / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    assert kept["step"] == 2 and kept["data"]["world"] == 2
    assert kept["callbacks"]["val"]["history"][1]["accuracy"] == val[1]["accuracy"]


@pytest.mark.parametrize("entry", ["maskkit.cli._rank", "maskkit.training.engine"])
def test_rank_entries_answer_in_one_line(entry, tmp_path, capsys):
    """Both rank entries (the command line's, with validation, and the engine's) share one body:
    wrong arguments exit 2 with the usage, options that cannot train exit 1 with one line."""
    import importlib

    from maskkit.training.config import TrainConfig

    run = importlib.import_module(entry)
    run = getattr(run, "_main", None) or run.main
    assert run([]) == 2 and capsys.readouterr().err.startswith("usage: python -m " + entry)
    cfg = tmp_path / "config.json"
    TrainConfig(data=str(tmp_path / "missing"), out=str(tmp_path / "run"), val=(str(tmp_path / "missing.bin"),),
                val_best="missing:sideways").save(cfg)
    assert run([str(cfg)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maskkit train: error: "), err
