"""Masks drawn online (``maskkit train --online-masks``) on an unmasked set of real faces.

The set is made by ``maskkit synth --ratio 0`` (tests/trainsets.py: celeb-aligned crops when
present, else the dependency-shipped faces), so every sample carries the 68 landmarks synth found;
the loader draws the masks with synth's renderer. Identity sizes 1, 3, 6 and 8 cover the one-image
identity and both floor and ceiling counts at ratio 0.5.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from maskkit.training.config import TrainConfig
from maskkit.training.data import ShardStream, make_loader, open_shards, write_shards
from maskkit.training.online_masks import OnlineMasks, epoch_counts, plan_epoch, read_index

from trainsets import log_records, plain_set

SIZES = [1, 3, 6, 8]
NARROW = dict(backbone="r18", width=0.25, progress=False, tensorboard=False, shuffle_buffer=8)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    return plain_set(tmp_path_factory.mktemp("online"), SIZES, shard_samples=5)


def _epoch(stream: ShardStream, epoch: int, workers: int) -> dict[str, tuple[np.ndarray, bool, int]]:
    """Every sample of one epoch's stream: key -> (image, masked, label). A worker whose shards
    hold fewer samples starts its next cycle before the others finish: a sample read twice must
    come back with the same mask, bit for bit (it is drawn from (seed, epoch, key))."""
    stream.set_epoch(epoch)
    if stream.masker is not None:
        stream.masker.set_epoch(epoch)
    n = stream.shards.num_samples
    out: dict = {}
    it = iter(make_loader(stream, workers))
    for _ in range(3 * n):
        b = next(it)
        for k, img, m, lb in zip(b["keys"], b["images"].numpy(), b["masked"].tolist(), b["labels"].tolist()):
            if k in out:
                assert np.array_equal(out[k][0], img) and out[k][1] == m, (epoch, k)
            out[k] = (img, m, lb)
        if len(out) == n:
            break
    del it
    assert len(out) == n
    return out


def _stream(plain: Path, ratio: float = 0.5, seed: int = 0, batch: int = 1) -> ShardStream:
    ss = open_shards(plain)
    masker = OnlineMasks(read_index(ss, (112, 112)), ratio, seed)
    # no crop / flip: a face's pixels depend on its mask alone
    return ShardStream(ss, batch, seed=seed, shuffle_buffer=4, augment=False, masker=masker)


def test_epoch_counts_are_floor_or_ceiling_converge_and_total_within_one():
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 40, 300)
    for ratio in (0.5, 0.3, 0.37, 1.0, 0.0):
        per_epoch = np.stack([epoch_counts(sizes, ratio, seed=7, epoch=e) for e in range(400)])
        exact = ratio * sizes
        assert ((per_epoch == np.floor(exact + 1e-9)) | (per_epoch == np.ceil(exact - 1e-9))).all()
        assert np.abs(per_epoch.sum(1) - exact.sum()).max() < 1.0  # the epoch's total: within one of r N
        # over the epochs each identity's share converges to r: after 400 epochs within 1 % of one
        # mask (the golden-ratio sequence's discrepancy; measured max 0.4 %)
        assert np.abs(per_epoch.mean(0) - exact).max() < 0.01, ratio
    one = [int(epoch_counts([1], 0.5, seed=s, epoch=e)[0]) for s in range(20) for e in range(10)]
    per_seed = np.array(one).reshape(20, 10).sum(1)
    assert per_seed.min() >= 4 and per_seed.max() <= 6  # about half of 10 epochs, for every seed


def test_plan_counts_swaps_shortfall_and_balanced_styles(plain):
    ss = open_shards(plain)
    index = read_index(ss, (112, 112))
    sizes = index.sizes.tolist()
    assert sorted(sizes) == sorted(json.loads((plain / "manifest.json").read_text())["per_class"][c]["samples"]
                                   for c in ss.classes)
    for epoch in range(6):
        plan = plan_epoch(index, 0.5, 3, epoch, ("surgical", "n95", "kn95", "cloth", "gas"))
        for lab, n in enumerate(sizes):
            assert plan.planned[lab] in (math.floor(n / 2), math.ceil(n / 2))
            assert plan.masked[lab] == plan.planned[lab]  # every face of these sets can take a mask
            assert ((plan.style[index.members[lab]] >= 0).sum()) == plan.masked[lab]
        assert abs(plan.masked.sum() - 0.5 * len(index.keys)) < 1
        counts = Counter(plan.style[plan.style >= 0].tolist())
        assert max(counts.values()) - min(counts.get(k, 0) for k in range(5)) <= 1
    # faces that cannot take a mask (their landmarks fail the renderer's check) are swapped for
    # another face of the identity, else counted as a shortfall
    big = int(np.argmax(index.sizes))
    members = index.members[big]
    for bad in (1, len(members) - 2):
        index.fit[:] = True
        index.fit[members[:bad]] = False
        plan = plan_epoch(index, 0.5, 3, 0, ("surgical", "n95"))
        want = int(plan.planned[big])
        assert plan.masked[big] == min(want, len(members) - bad)
        assert plan.shortfall[big] == want - plan.masked[big]
        assert not (plan.style[members[:bad]] >= 0).any()
    index.fit[:] = True


def test_loader_counts_per_identity_new_masks_each_epoch_same_for_same_seed_epoch_key(plain):
    stream = _stream(plain)
    index = stream.masker.index
    label_of = {k.decode(): int(lb) for k, lb in zip(index.keys, index.labels)}
    ref = _stream(plain, ratio=0.0)  # the faces as stored
    plain_px = {k: v[0] for k, v in _epoch(ref, 0, 0).items()}
    passes = {e: _epoch(stream, e, 2) for e in range(10)}
    masked_epochs: Counter = Counter()
    for e, got in passes.items():
        plan = stream.masker.set_epoch(e)
        assert sorted(got) == sorted(label_of)
        per_id = Counter(label_of[k] for k, (_, m, _) in got.items() if m)
        assert [per_id.get(i, 0) for i in range(len(SIZES))] == plan.masked.tolist()  # exact, per identity
        for k, (img, m, _) in got.items():
            # a masked face differs from the stored one; an unmasked face is the stored one
            assert (not np.array_equal(img, plain_px[k])) == m, (e, k)
            masked_epochs[k] += m
    one = next(k for k, lb in label_of.items() if index.sizes[lb] == 1)
    assert 4 <= masked_epochs[one] <= 6, masked_epochs[one]  # about half of 10 epochs
    # one key masked with the same style in two epochs: two different masks (template variant,
    # colour, fit jitter are drawn anew); the same (seed, epoch, key) again, with another number
    # of workers: the same mask, bit for bit
    style = {}
    for e in passes:
        stream.masker.set_epoch(e)
        style[e] = {k: stream.masker.style_of(k) for k in label_of}
    twice = [(k, e1, e2) for k in label_of for e1 in passes for e2 in passes
             if e1 < e2 and passes[e1][k][1] and passes[e2][k][1] and style[e1][k] == style[e2][k]]
    assert len(twice) >= 3
    assert all(not np.array_equal(passes[e1][k][0], passes[e2][k][0]) for k, e1, e2 in twice)
    e1 = twice[0][1]
    again = _epoch(stream, e1, 0)
    assert all(np.array_equal(again[key][0], passes[e1][key][0]) and again[key][1] == passes[e1][key][1]
               for key in again)
    other_seed = _epoch(_stream(plain, seed=1), e1, 0)
    assert any(not np.array_equal(other_seed[key][0], passes[e1][key][0]) for key in again)


def test_routing_hkld_and_flag_follow_the_online_flag(plain, tmp_path, monkeypatch):
    """What the model routes and what H-KLD weighs is the loader's flag, which is the plan's."""
    from maskkit.training import loop
    from maskkit.training.losses import Criterion
    from maskkit.training.model import FaceModel

    seen = {"batches": [], "encode": [], "crit": []}
    real_iter, real_encode, real_crit = loop.ShardSource.epoch_iter, FaceModel.encode, Criterion.forward

    def spy_iter(self, epoch, skip, pos):
        for b in real_iter(self, epoch, skip, pos):
            seen["batches"].append((epoch, list(b["keys"]), b["masked"].clone()))
            yield b

    def spy_encode(self, x, masked, route=None):
        seen["encode"].append((masked.clone(), route))
        return real_encode(self, x, masked, route)

    def spy_crit(self, mu, logvar, labels, masked):
        seen["crit"].append(masked.clone())
        return real_crit(self, mu, logvar, labels, masked)

    monkeypatch.setattr(loop.ShardSource, "epoch_iter", spy_iter)
    monkeypatch.setattr(FaceModel, "encode", spy_encode)
    monkeypatch.setattr(Criterion, "forward", spy_crit)
    cfg = TrainConfig(data=str(plain), out=str(tmp_path / "on"), method="maskdul", batch_size=6, num_workers=0,
                      steps_per_epoch=3, epochs=2, online_masks=True, mask_ratio=0.5, **NARROW)
    loop.train(cfg)
    index = read_index(open_shards(plain), (112, 112))
    masker = OnlineMasks(index, 0.5, cfg.seed)
    assert len(seen["batches"]) == len(seen["encode"]) == len(seen["crit"]) == 6
    n_masked = 0
    for (epoch, keys, flags), (enc, route), crit in zip(seen["batches"], seen["encode"], seen["crit"]):
        masker.set_epoch(epoch)
        planned = torch.tensor([masker.style_of(k) is not None for k in keys])
        assert torch.equal(flags, planned) and torch.equal(enc, planned) and torch.equal(crit, planned)
        assert route == FaceModel.route(planned, torch.device("cpu"))
        n_masked += int(planned.sum())
    assert 0 < n_masked < 36
    # without the flag, nothing on this set is masked: every sample takes the face branch
    seen["batches"].clear(), seen["encode"].clear(), seen["crit"].clear()
    loop.train(cfg.replace(out=str(tmp_path / "off"), online_masks=False, epochs=1))
    assert not any(bool(m.any()) for m in seen["crit"])
    plans = [r for r in log_records(tmp_path / "on") if r.get("event") == "online_masks"]
    assert [p["epoch"] for p in plans] == [0, 1] and all(abs(p["masked"] - p["target"]) < 1 for p in plans)


def _weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)


def test_resume_across_an_epoch_boundary_is_bit_exact(plain, tmp_path):
    base = TrainConfig(data=str(plain), method="maskdul", batch_size=6, num_workers=2, steps_per_epoch=3,
                       log_every=1, ckpt_every=100, seed=4, online_masks=True, **NARROW)
    loop_train = __import__("maskkit.training.loop", fromlist=["train"]).train
    loop_train(base.replace(out=str(tmp_path / "a"), max_steps=7))
    loop_train(base.replace(out=str(tmp_path / "b"), max_steps=3))  # stops at the end of epoch 0
    assert _weights(tmp_path / "b")["data"]["epoch"] == 1
    loop_train(base.replace(out=str(tmp_path / "b"), max_steps=5), resume=True)  # mid-epoch 1
    loop_train(base.replace(out=str(tmp_path / "b"), max_steps=7), resume=True)  # across into epoch 2
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a["step"] == b["step"] == 7
    for part in ("model", "criterion"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    la = [r["loss"] for r in log_records(tmp_path / "a") if "loss" in r]
    lb = [r["loss"] for r in log_records(tmp_path / "b") if "loss" in r]
    assert la == lb


def test_a_set_with_stored_masks_is_refused_in_one_line(plain, tmp_path):
    from maskkit.cli import main

    from test_train import _real_faces

    imgs, labels, ids = _real_faces(2, 3)
    masked = tmp_path / "masked"
    write_shards(masked, [{"key": f"m{i}", "image": im, "label": lb, "masked": i % 2 == 0, "style": "surgical"}
                          for i, (im, lb) in enumerate(zip(imgs, labels))], ids)
    run = tmp_path / "r"
    res = CliRunner().invoke(main, ["train", "--data", str(masked), "--out", str(run), "--online-masks",
                                    "--backbone", "r18", "--width", "0.25", "--max-steps", "1", "--num-workers", "0",
                                    "-q", "--no-tensorboard"])
    assert res.exit_code == 1, res.output
    err = [x for x in res.output.splitlines() if x.strip()]
    assert len(err) == 1 and "already holds 3 stored masked samples" in err[0], res.output
    assert "--ratio 0" in err[0] and "Traceback" not in res.output
    assert not (run / "checkpoints").exists()
    # an unmasked set made by synth --ratio 0 is taken
    res = CliRunner().invoke(main, ["train", "--data", str(plain), "--out", str(tmp_path / "ok"), "--online-masks",
                                    "--backbone", "r18", "--width", "0.25", "--max-steps", "1", "--batch-size", "4",
                                    "--num-workers", "0", "-q", "--no-tensorboard"])
    assert res.exit_code == 0, res.output
