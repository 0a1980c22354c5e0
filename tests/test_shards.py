"""Shard writer, reader and verifier (docs/FORMAT.md): deterministic bytes, atomic shards,
WebDataset compatibility, and tamper detection."""
from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from maskkit.io.shard_verify import verify
from maskkit.io.shards import (Sample, ShardSink, expected_masked, iter_shard, read_samples, round_half_up,
                               sha256_file)
from maskkit.util.files import write_json_atomic


def _mask_png() -> bytes:
    import cv2

    a = np.zeros((112, 112), np.uint8)
    a[60:, 20:92] = 255
    return cv2.imencode(".png", a)[1].tobytes()


def _samples(astronaut, n=7):
    from maskkit.io.image_io import encode_jpeg

    out = []
    for i in range(n):
        crop = np.ascontiguousarray(astronaut[30 + i:142 + i, 170:282])
        meta = {"label": i % 2, "identity": ["a", "b"][i % 2], "src": f"x/{i}.jpg", "face": 0,
                "masked": False, "style": None, "mask": None, "landmarks5": [[0.5, 1.25]] * 5,
                "landmarks68": None, "score": None, "twin": None}
        out.append(Sample(f"k{i:03d}_x-y", encode_jpeg(crop), meta,
                          _mask_png() if i == 3 else None))
    return out


def test_round_half_up():
    assert [round_half_up(x) for x in (0.5, 1.5, 2.5, 5.5, 2.4999, 0.0)] == [1, 2, 3, 6, 2, 0]
    assert expected_masked(0.5, 11) == 6 and expected_masked(0.5, 10) == 5 and expected_masked(1.0, 3) == 3
    assert expected_masked(0.0, 9) == 0 and expected_masked(1 / 3, 3) == 1


def test_sink_cuts_fixed_size_shards_with_identical_bytes(tmp_path, astronaut):
    ss = _samples(astronaut)
    recs = []
    for d in ("a", "b"):
        with ShardSink(tmp_path / d, shard_samples=3) as sink:
            for s in ss:
                sink.add(s)
        recs.append(sink.shards)
    assert recs[0] == recs[1]  # same samples -> same bytes (fixed mtime/uid/order)
    assert [r["samples"] for r in recs[0]] == [3, 3, 1]
    for r in recs[0]:
        p = tmp_path / "a" / r["name"]
        assert p.stat().st_size == r["bytes"] and sha256_file(p) == r["sha256"]
    assert not list((tmp_path / "a").glob("*.tmp"))
    with tarfile.open(tmp_path / "a" / "train-000001.tar") as tar:
        names = tar.getnames()
        m = tar.getmember(names[0])
        assert (m.mtime, m.uid, m.gid, m.uname) == (946684800, 0, 0, "maskkit")
    assert names == ["k003_x-y.jpg", "k003_x-y.json", "k003_x-y.mask.png", "k004_x-y.jpg", "k004_x-y.json",
                     "k005_x-y.jpg", "k005_x-y.json"]
    back = list(read_samples(tmp_path / "a"))
    assert [b["key"] for b in back] == [s.key for s in ss]
    assert back[3]["mask.png"] == _mask_png() and back[0]["json"] == ss[0].meta
    assert back[2]["jpg"] == ss[2].jpg


def test_webdataset_reads_shards(tmp_path, astronaut):
    import webdataset as wds

    ss = _samples(astronaut)
    with ShardSink(tmp_path, shard_samples=4) as sink:
        for s in ss:
            sink.add(s)
    urls = [str(tmp_path / r["name"]) for r in sink.shards]
    got = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb").to_tuple("__key__", "jpg", "json"))
    assert [g[0] for g in got] == [s.key for s in ss]
    assert all(g[1].shape == (112, 112, 3) and g[1].dtype == np.float32 for g in got)
    assert got[5][2]["src"] == "x/5.jpg"
    masks = list(wds.WebDataset(urls, shardshuffle=False).decode("l").to_tuple("mask.png", missing_is_error=False))
    masks = [m[0] for m in masks if m[0] is not None]
    assert len(masks) == 1 and masks[0].shape == (112, 112) and masks[0][100, 50] == 1.0


def test_bad_keys_and_abort(tmp_path):
    sink = ShardSink(tmp_path, shard_samples=5)
    with pytest.raises(ValueError, match="A-Za-z0-9"):
        sink.add(Sample("has.dot", b"", {}))
    sink.add(Sample("ok", b"x", {}))
    assert (tmp_path / "train-000000.tar.tmp").exists() and not (tmp_path / "train-000000.tar").exists()
    sink.abort()
    assert not list(tmp_path.iterdir())


def test_write_json_atomic(tmp_path):
    write_json_atomic(tmp_path / "m.json", {"a": 1})
    write_json_atomic(tmp_path / "m.json", {"a": 2})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def _manifest_for(tmp_path, sink, ss):
    man = {"format": "maskkit-shards", "version": 1, "image_size": [112, 112], "template": "arcface",
           "classes": ["a", "b"], "num_samples": len(ss), "num_masked": 0, "ratio": 0.0, "paired": False,
           "seed": 0, "styles": {}, "per_class": {"a": {"samples": 4, "masked": 0}, "b": {"samples": 3, "masked": 0}},
           "shards": sink.shards, "inputs": {"files": 8, "ok": 7, "failed": 1}}
    write_json_atomic(tmp_path / "manifest.json", man)
    (tmp_path / "failures.jsonl").write_text('{"src": "x/7.jpg", "reason": "no_face", "detail": ""}\n')
    return man


def test_verify_catches_every_kind_of_mismatch(tmp_path, astronaut):
    ss = _samples(astronaut)
    with ShardSink(tmp_path, shard_samples=3) as sink:
        for s in ss:
            sink.add(s)
    man = _manifest_for(tmp_path, sink, ss)
    rep = verify(tmp_path, decode=False)
    assert rep.ok, rep.problems
    assert rep.counted["num_samples"] == 7 and rep.counted["per_class"]["a"]["samples"] == 4
    # a flipped byte in a shard
    p = tmp_path / "train-000000.tar"
    data = bytearray(p.read_bytes())
    data[600] ^= 0xFF
    p.write_bytes(bytes(data))
    rep = verify(tmp_path)
    assert not rep.ok and any("sha256" in x for x in rep.problems)
    p.write_bytes(bytes(data[:600]) + bytes([data[600] ^ 0xFF]) + bytes(data[601:]))
    assert verify(tmp_path).ok
    # wrong counts, accounting, extra shard, missing failures line
    write_json_atomic(tmp_path / "manifest.json", dict(man, num_samples=8, inputs={"files": 9, "ok": 7, "failed": 1}))
    probs = " | ".join(verify(tmp_path).problems)
    assert "num_samples" in probs and "inputs" in probs
    write_json_atomic(tmp_path / "manifest.json", man)
    (tmp_path / "train-000009.tar").write_bytes(b"")
    assert "not listed" in " | ".join(verify(tmp_path).problems)
    (tmp_path / "train-000009.tar").unlink()
    (tmp_path / "failures.jsonl").write_text("")
    assert "failures.jsonl" in " | ".join(verify(tmp_path).problems)
    (tmp_path / "manifest.json").unlink()
    rep = verify(tmp_path)
    assert not rep.ok and "missing" in rep.problems[0]


def test_iter_shard_groups_members(tmp_path, astronaut):
    ss = _samples(astronaut, 2)
    with ShardSink(tmp_path, shard_samples=10) as sink:
        for s in ss:
            sink.add(s)
    got = list(iter_shard(tmp_path / "train-000000.tar"))
    assert [g["key"] for g in got] == ["k000_x-y", "k001_x-y"] and got[1]["json"]["label"] == 1
