"""Impossible option values are refused in one line, with a nonzero exit, before anything is
written (try-out 4, findings 4, 7, 8, 12): ``--size`` of align and synth (one click type,
16..4096), train's numeric options and config keys, a shard set of crops under the 16 px floor,
and ``export --opset`` outside the range the installed torch exporter writes.

Every refusal is checked against a control: the same command with a good value runs (so the
refusal comes from the value, not from the rest of the command line)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from maskkit.cli import main
from trainsets import plain_set


def _one_error_line(res) -> str:
    """The single ``Error:`` line of a refused command (click's usage lines aside)."""
    errors = [x for x in res.output.splitlines() if x.startswith("Error:")]
    assert len(errors) == 1, res.output
    assert "Traceback" not in res.output
    return errors[0]


# -- --size: align and synth ---------------------------------------------------------------------

@pytest.mark.parametrize("command", ["align", "synth"])
@pytest.mark.parametrize("size", ["7", "0", "15x15", "96x112", "100000", "4097", "abc", "112x96x3"])
def test_bad_size_is_refused_when_the_command_line_is_read(tmp_path, grace_hopper, command, size):
    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "hopper.jpg"), np.ascontiguousarray(grace_hopper[:, :, ::-1]))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, [command, "--src", str(src), "--out", str(out), "-j", "1", "-q", "--size", size])
    assert res.exit_code == 2, res.output
    line = _one_error_line(res)
    assert "--size" in line and ("16..4096" in line or "112x96" in line or "N or HxW" in line), line
    assert not out.exists()  # nothing written, not one failure line per input


@pytest.mark.parametrize("size,hw", [("16", (16, 16)), ("112x96", (112, 96)), ("128", (128, 128)),
                                     ("4096", (4096, 4096))])
def test_good_sizes_parse_alike_in_align_and_synth(size, hw):
    for command in ("align", "synth"):
        opt = next(p for p in main.commands[command].params if p.name == "size")
        assert opt.process_value(__import__("click").Context(main.commands[command]), size) == hw, command


def test_synth_config_refuses_a_size_out_of_range(tmp_path):
    from maskkit.pipeline.synth import SynthConfig

    for size in ((7, 7), (96, 112), (100000, 100000)):
        with pytest.raises(ValueError):
            SynthConfig(src=tmp_path, out=tmp_path / "o", size=size)
    assert SynthConfig(src=tmp_path, out=tmp_path / "o", size=(112, 96)).size == (112, 96)


# -- train ----------------------------------------------------------------------------------------

TRAIN = ["--method", "arcface", "--backbone", "r18", "--width", "0.25", "--batch-size", "4", "--num-workers", "0",
         "--steps-per-epoch", "2", "--epochs", "1", "--max-steps", "1", "-q", "--no-tensorboard",
         "--set", "shuffle_buffer=4"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return plain_set(tmp_path_factory.mktemp("opts"), [4, 4], shard_samples=4)


def _train(data: Path, run: Path, *extra: str):
    return CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(run)] + TRAIN + list(extra))


def test_train_control_runs(shards, tmp_path):
    res = _train(shards, tmp_path / "run", "--split-point", "layer1.0", "--milestones", "1", "--lr", "0.05",
                 "--log-every", "1", "--width", "0.25", "--set", "max_data_loss=0.5")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


@pytest.mark.parametrize("extra,named", [
    (["--width", "0"], "--width"), (["--width", "-1"], "--width"),
    (["--method", "maskdul", "--split-point", "layer9.9"], "split_point"),
    (["--milestones", "a,b"], "--milestones"), (["--milestones", "0"], "--milestones"),
    (["--lr", "-1"], "--lr"), (["--lr", "0"], "--lr"),
    (["--log-every", "0"], "--log-every"), (["--ckpt-every", "-1"], "--ckpt-every"),
    (["--steps-per-epoch", "0"], "--steps-per-epoch"), (["--epochs", "0"], "--epochs"),
    (["--max-steps", "0"], "--max-steps"), (["--batch-size", "0"], "--batch-size"),
    (["--num-workers", "-1"], "--num-workers"), (["--nproc", "0"], "--nproc"),
    (["--freeze-steps", "-1"], "--freeze-steps"), (["--finetune-lr-mult", "-0.5"], "--finetune-lr-mult"),
    (["--val-best", "small:three"], "--val"),
    (["--set", "max_data_loss=abc"], "max_data_loss"), (["--set", "dropout=1"], "dropout"),
    (["--set", "embedding_size=0"], "embedding_size"), (["--set", "milestones=[\"a\"]"], "milestones"),
    (["--set", "image_size=[7,7]"], "image_size"), (["--set", "grad_clip=0"], "grad_clip"),
    # try-out 5: negative seeds, non-finite numbers, a 1-channel net, text a bool does not take
    (["--seed", "-1"], "--seed"), (["--set", "seed=-1"], "seed"), (["--set", f"seed={2**32}"], "seed"),
    (["--width", "inf"], "--width"), (["--width", "1e-9"], "width"), (["--set", "width=0.1"], "width"),
    (["--lr", "inf"], "--lr"), (["--lr", "1e400"], "--lr"), (["--set", "lr=inf"], "lr"),
    (["--set", "lr=1e400"], "lr"), (["--set", "kl_lambda=NaN"], "kl_lambda"),
    (["--finetune-lr-mult", "inf"], "--finetune-lr-mult"),
    (["--set", "two_stream=maybe"], "two_stream"), (["--set", "xi_detach=2"], "xi_detach"),
    (["--set", "epochs=2.5"], "epochs"), (["--set", "milestones=0"], "milestones"),
    (["--set", "milestones=[1,x]"], "milestones"), (["--set", "image_size=112"], "image_size"),
    (["--set", "nokey=1"], "nokey"),
])
def test_train_refuses_impossible_values_in_one_line(shards, tmp_path, extra, named):
    run = tmp_path / "run"
    res = _train(shards, run, *extra)
    assert res.exit_code == 2, res.output
    assert named in _one_error_line(res)
    assert not run.exists()  # refused before the run folder is made


def _branch_keys(run: Path) -> int:
    import torch

    ck = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    return sum("branch_masked" in k for k in ck["model"])


@pytest.mark.parametrize("words", [("no", "off", "False", "FALSE", "0"), ("yes", "on", "True", "TRUE", "1")])
def test_bool_keys_take_every_spelling_alike(words):
    from maskkit.cli.train import _parse_set
    from maskkit.training.config import TrainConfig

    want = words[0] == "yes"
    for w in words + tuple(w.lower() for w in words) + tuple(f" {w.upper()} " for w in words):
        sets = _parse_set((f"two_stream={w}", f"xi_detach={w}", f"hflip={w}"))
        assert sets == {"two_stream": want, "xi_detach": want, "hflip": want}, w
        cfg = TrainConfig.from_dict({"two_stream": w, "xi_detach": w, "hflip": w})  # --config's path
        assert (cfg.uses_two_stream, cfg.xi_detach, cfg.hflip) == (want, want, want), w


def test_two_stream_no_builds_one_stream_through_set_and_config(shards, tmp_path):
    """try-out 5 #1: ``two_stream=no`` built and trained a second (masked) branch."""
    hows = (["--set", "two_stream=no"], ["--set", "two_stream=Off"], "config", ["--set", "xi_detach=no"])
    for i, how in enumerate(hows):
        run = tmp_path / f"run{i}"
        if how == "config":
            conf = tmp_path / "c.json"
            conf.write_text(json.dumps({"two_stream": "no", "xi_detach": "False"}))
            how = ["--config", str(conf)]
        res = _train(shards, run, *how)
        assert res.exit_code == 0, res.output
        assert _branch_keys(run) == 0, how
        stored = json.loads((run / "config.json").read_text())
        assert stored["two_stream"] in (False, None) and stored["xi_detach"] is (i < 2), (how, stored)
    res = _train(shards, tmp_path / "yes", "--set", "two_stream=yes")  # control: the branch is built
    assert res.exit_code == 0, res.output
    assert _branch_keys(tmp_path / "yes") > 0


def test_set_takes_one_milestone_or_comma_text_as_the_option_does(shards, tmp_path):
    for i, (how, want) in enumerate(((["--set", "milestones=5"], [5]), (["--set", "milestones=3,7"], [3, 7]),
                                     (["--milestones", "5"], [5]), (["--set", "milestones=[]"], []))):
        res = _train(shards, tmp_path / f"r{i}", *how)
        assert res.exit_code == 0, res.output
        assert json.loads((tmp_path / f"r{i}" / "config.json").read_text())["milestones"] == want, how


@pytest.mark.parametrize("content,key", [
    ({"milestones": [0]}, "milestones"), ({"seed": -1}, "seed"), ({"two_stream": "maybe"}, "two_stream"),
    ({"lr": "inf"}, "lr"), ({"gamma": float("inf")}, "gamma"), ({"dropout": 1.5}, "dropout"),
    ({"milestones": 0}, "milestones"),
    ({"lr_bse_batch": 64}, "lr_base_batch"),  # a typo: refused, the nearest key suggested
])
def test_config_file_errors_name_the_file_and_the_key(shards, tmp_path, content, key):
    conf = tmp_path / "mine.json"
    conf.write_text(json.dumps(content))
    res = _train(shards, tmp_path / "run", "--config", str(conf))
    assert res.exit_code == 2, res.output
    line = _one_error_line(res)
    assert str(conf) in line and key in line, line
    assert not (tmp_path / "run").exists()


def test_check_refuses_non_finite_numbers_given_to_the_library():
    from maskkit.training.config import TrainConfig

    TrainConfig(lr=0.1, gamma=0.5, dropout=0.0).check()  # control
    for key in ("lr", "gamma", "kl_lambda", "warmup_epochs", "mag_lambda_g"):
        for bad in (float("inf"), float("nan")):
            with pytest.raises(ValueError, match=f"^{key} must be a finite number"):
                TrainConfig(**{key: bad}).check()


def test_check_refuses_a_text_in_a_bool_field_given_to_the_library():
    from maskkit.training.config import TrainConfig

    TrainConfig(two_stream=False, xi_detach=False).check()  # control
    for key in ("two_stream", "xi_detach", "hflip"):
        with pytest.raises(ValueError, match=f"^{key} must be true or false"):
            TrainConfig(**{key: "no"}).check()


def test_width_keeps_at_least_8_stem_channels_and_seed_is_numpys_range():
    from maskkit.training.config import TrainConfig

    for good in (0.125, 0.25, 1.0):
        TrainConfig(width=good).check()
    for bad in (1e-9, 0.1, 0.0, -1.0):  # 64 x 0.1 = 6.4 channels: under the 8-channel floor
        with pytest.raises(ValueError, match="^width must be >= 0.125"):
            TrainConfig(width=bad).check()
    TrainConfig(seed=0).check(), TrainConfig(seed=2**32 - 1).check()
    for bad in (-1, 2**32):
        with pytest.raises(ValueError, match="^seed must be in 0..4294967295"):
            TrainConfig(seed=bad).check()


def test_a_saved_run_with_bool_text_loads_as_it_was_trained(tmp_path):
    """Before coercion, ``"two_stream": "no"`` in a run's config.json built a two-stream model:
    reading the run (eval, embed, export, --init) must keep building that model."""
    import torch

    from maskkit.training.api import load_model
    from maskkit.training.config import TrainConfig
    from maskkit.training.model import build_model

    cfg = TrainConfig(method="arcface", backbone="r18", width=0.25, embedding_size=64, two_stream=True)
    old = dict(cfg.to_dict(), two_stream="no", xi_detach="False", nokey=1)  # what an older maskkit stored
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"config": old, "model": build_model(cfg).state_dict(), "step": 2},
               tmp_path / "run" / "checkpoints" / "last.pt")
    (tmp_path / "run" / "config.json").write_text(json.dumps(old))
    assert TrainConfig.load(tmp_path / "run" / "config.json").uses_two_stream is True
    m = load_model(tmp_path / "run")
    assert m.meta["step"] == 2
    mu = m.embed(np.full((2, 112, 112, 3), 128, np.uint8))[0]
    assert np.isfinite(mu).all() and mu.shape == (2, 64)


def test_train_config_file_that_is_not_json_is_named(shards, tmp_path):
    bad = tmp_path / "some.bin"
    bad.write_bytes(b"\x80\x81\xfe" + bytes(range(256)))
    for path in (bad, tmp_path / "list.json"):
        if path.suffix == ".json":
            path.write_text("[1, 2]")
        res = _train(shards, tmp_path / "run", "--config", str(path))
        assert res.exit_code == 2, res.output
        assert str(path) in _one_error_line(res)
    assert not (tmp_path / "run").exists()


def test_train_ckpt_every_0_checkpoints_at_the_end_only(shards, tmp_path):
    res = _train(shards, tmp_path / "run", "--ckpt-every", "0")
    assert res.exit_code == 0, res.output
    ck = __import__("torch").load(tmp_path / "run" / "checkpoints" / "last.pt", map_location="cpu",
                                  weights_only=False)
    assert ck["step"] == 1


def _small_set(tmp: Path, side: int, faces) -> Path:
    """An old-style set (written directly, as before synth checked --size) of ``side`` x ``side``
    crops of two real aligned faces."""
    from maskkit.training.data import write_shards

    samples = []
    for label, face in enumerate(faces):
        for j in range(4):
            img = face[:, ::-1] if j % 2 else face
            img = np.roll(img, j // 2, axis=1)
            samples.append({"key": f"{label}_{j}", "label": label,
                            "image": cv2.resize(np.ascontiguousarray(img), (side, side), interpolation=cv2.INTER_AREA)})
    write_shards(tmp / f"s{side}", samples, ["astronaut", "hopper"], shard_samples=4)
    return tmp / f"s{side}"


@pytest.fixture(scope="module")
def aligned_faces(astronaut, grace_hopper):
    from maskkit.training.eval.evalsets import FaceAligner

    al = FaceAligner()
    return [al(astronaut)[0], al(grace_hopper)[0]]


def test_train_refuses_crops_under_16_px_and_takes_larger_old_sets(tmp_path, aligned_faces):
    tiny = _small_set(tmp_path, 7, aligned_faces)
    assert json.loads((tiny / "manifest.json").read_text())["image_size"] == [7, 7]
    res = _train(tiny, tmp_path / "run7")
    assert res.exit_code == 1, res.output
    line = _one_error_line(res)
    assert "7x7" in line and "16" in line
    assert not (tmp_path / "run7").exists()

    ok = _small_set(tmp_path, 56, aligned_faces)  # an old set of a valid size still trains
    res = _train(ok, tmp_path / "run56")
    assert res.exit_code == 0, res.output


def test_train_refuses_a_112x96_set_before_the_run_folder(tmp_path, aligned_faces):
    from maskkit.io.crop_template import template_change

    faces = [template_change((112, 112), (112, 96)).apply(f) for f in aligned_faces]
    data = tmp_path / "s96"
    from maskkit.training.data import write_shards

    write_shards(data, [{"key": f"{i}_{j}", "label": i, "image": f} for i, f in enumerate(faces) for j in range(4)],
                 ["astronaut", "hopper"], shard_samples=4)
    res = _train(data, tmp_path / "run")
    assert res.exit_code == 1, res.output
    assert "112x96" in _one_error_line(res) or "96x112" in _one_error_line(res)
    assert not (tmp_path / "run").exists()


# -- export --opset -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    import torch

    from maskkit.training.config import TrainConfig
    from maskkit.training.model import build_model

    torch.manual_seed(0)
    cfg = TrainConfig(method="maskdul", backbone="r18", width=0.25, embedding_size=64, dropout=0.0)
    m = build_model(cfg).eval()
    run = tmp_path_factory.mktemp("exp") / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    torch.save({"config": cfg.to_dict(), "model": m.state_dict(), "step": 0}, run / "checkpoints" / "last.pt")
    return run


def test_export_refuses_an_opset_out_of_range_in_one_line(run_dir, tmp_path):
    from maskkit.training.eval.export import opset_range

    lo, hi = opset_range()
    for opset in (5, lo - 1, hi + 1, 99):
        out = tmp_path / f"m{opset}.onnx"
        res = CliRunner().invoke(main, ["export", "--model", str(run_dir), "-o", str(out), "--opset", str(opset)])
        assert res.exit_code == 2, res.output
        line = _one_error_line(res)
        assert "--opset" in line and f"{lo}..{hi}" in line, line
        assert not out.exists()
    for opset in (lo, hi):  # both ends of the stated range export and run in onnxruntime
        out = tmp_path / f"m{opset}.onnx"
        res = CliRunner().invoke(main, ["export", "--model", str(run_dir), "-o", str(out), "--opset", str(opset)])
        assert res.exit_code == 0, res.output
        assert out.stat().st_size > 10_000 and "batch 7" in res.output


def test_an_exporter_failure_is_one_line_and_leaves_no_file(run_dir, tmp_path, monkeypatch):
    """Below opset 9 torch cannot write the two-stream ``Where``: with the range check widened,
    the exporter's own refusal still reaches the user as one ValueError line."""
    from maskkit.training.api import load_model
    from maskkit.training.eval import export

    monkeypatch.setattr(export, "MIN_OPSET", 7)
    out = tmp_path / "m8.onnx"
    with pytest.raises(ValueError) as err:
        export.export_onnx(load_model(run_dir), out, opset=8)
    assert "\n" not in str(err.value) and "opset 8" in str(err.value) and "7.." in str(err.value)
    assert not out.exists()
