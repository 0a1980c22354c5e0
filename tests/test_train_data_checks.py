"""A damaged shard set must not train quietly.

* before step 0, ``maskkit train`` checks the set as ``export-rec`` does (sizes, and sha256 unless
  ``--no-verify``): a shard cut at 60 % or with bytes changed in place is refused in one line
  naming it, and nothing is written;
* a sample that still fails while training is counted per epoch in ``log.jsonl`` and in the
  summary and named; past ``max_data_loss`` the run stops with an error.
"""
from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from trainsets import log_records, plain_set

COMMON = ["--method", "arcface", "--backbone", "r18", "--width", "0.25", "--batch-size", "4", "--num-workers", "0",
          "--steps-per-epoch", "3", "--epochs", "2", "-q", "--no-tensorboard", "--set", "shuffle_buffer=4"]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return plain_set(tmp_path_factory.mktemp("checks"), [4, 4, 4], shard_samples=4)


def _copy(good: Path, dst: Path) -> Path:
    shutil.copytree(good, dst)
    return dst


def _train(data: Path, run: Path, *extra: str):
    from maskkit.cli import main

    return CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(run)] + COMMON + list(extra))


def _json_member(tar: Path) -> tuple[str, int, int]:
    """(key, offset, size) of the first JSON member of a shard."""
    with tarfile.open(tar) as tf:
        m = next(x for x in tf.getmembers() if x.name.endswith(".json"))
        return m.name.split(".")[0], m.offset_data, m.size


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_a_damaged_set_is_refused_before_step_0(good, tmp_path, damage):
    data = _copy(good, tmp_path / "data")
    shard = data / "train-000001.tar"
    raw = shard.read_bytes()
    if damage == "truncated":
        shard.write_bytes(raw[: int(len(raw) * 0.6)])  # a copy cut at 60 %
    else:
        _, off, size = _json_member(shard)
        shard.write_bytes(raw[:off] + b"X" * size + raw[off + size:])  # same size, other bytes
    run = tmp_path / "run"
    for extra in ([], ["--no-verify"]) if damage == "truncated" else ([],):
        res = _train(data, run, *extra)
        assert res.exit_code == 1, res.output
        lines = [x for x in res.output.splitlines() if x.strip()]
        assert len(lines) == 1 and "train-000001.tar" in lines[0] and "Traceback" not in res.output, res.output
        assert ("bytes, manifest says" if damage == "truncated" else "sha256") in lines[0]
        assert not run.exists()  # refused before anything is written


def test_a_sample_failing_mid_run_is_counted_named_and_stops_past_the_limit(good, tmp_path):
    # bytes changed in place pass the size check of --no-verify: the sample fails while training
    data = _copy(good, tmp_path / "data")
    shard = data / "train-000002.tar"
    key, off, size = _json_member(shard)
    raw = shard.read_bytes()
    shard.write_bytes(raw[:off] + b"X" * size + raw[off + size:])

    run = tmp_path / "tolerant"
    res = _train(data, run, "--no-verify", "--set", "max_data_loss=0.5")
    assert res.exit_code == 0, res.output
    assert "2 sample(s) failed to load" in res.output  # once per epoch, two epochs
    per_epoch = [r for r in log_records(run) if r.get("event") == "data"]
    assert [(r["epoch"], r["failed"]) for r in per_epoch] == [(0, 1), (1, 1)]
    assert all(r["failed_samples"][0]["key"] == key and r["failed_samples"][0]["shard"] == "train-000002.tar"
               and r["failed_by_reason"] == {"read_error": 1} for r in per_epoch)

    strict = tmp_path / "strict"  # the default share (1 % of an epoch's 12 samples): the first loss stops it
    res = _train(data, strict, "--no-verify")
    assert res.exit_code == 1, res.output
    assert f"{key} (train-000002.tar)" in res.output and "max_data_loss" in res.output, res.output
    recs = log_records(strict)
    assert [r["failed"] for r in recs if r.get("event") == "data"] == [1]
    assert max((r["step"] for r in recs if "loss" in r), default=0) < 6  # it stopped in epoch 0
