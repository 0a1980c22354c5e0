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


def test_a_shard_failing_mid_run_is_recorded_once_with_its_loss(tmp_path):
    """A shard cut after the check (a disk error mid-run): the stream goes on with the next shard
    and hands up one record naming it, with the samples its manifest lists beyond those read."""
    from maskkit.training.data import ShardStream, open_shards, write_shards

    from test_train import _real_faces

    imgs, labels, ids = _real_faces(2, 8)
    write_shards(tmp_path, [{"key": f"s{i:03d}", "image": im, "label": lb}
                            for i, (im, lb) in enumerate(zip(imgs, labels))], ids, shard_samples=8)
    shard = tmp_path / "train-000001.tar"
    raw = shard.read_bytes()
    shard.write_bytes(raw[: int(len(raw) * 0.6)])
    stream = ShardStream(open_shards(tmp_path), 4, seed=0, shuffle_buffer=2, augment=False)
    stream.set_epoch(0)
    it = iter(stream)
    keys, failed = [], []
    for _ in range(6):  # past the cut shard at least once (12 readable samples a cycle, batches of 4)
        b = next(it)
        keys += b["keys"]
        failed += b["failed"]
    readable = {k for k in keys if k >= "s008"}  # the same complete samples in every cycle
    assert readable and len(readable) < 8
    assert failed and all((f["shard"], f["reason"], f["lost"], f["key"]) ==
                          ("train-000001.tar", "shard_read_error", 8 - len(readable), None) for f in failed), failed
    assert len(failed) <= 2  # once per pass over the cut shard (two passes in 6 batches at most)
