"""Training data order (maskkit.training.data module docstring), checked in-process without loader workers:

* in epoch ``e`` (cycle ``c``) all slots share one shard permutation drawn from ``(seed, e, c)``:
  with as many shards as slots, the slots read disjoint shards that together are the whole set,
  the same ``(seed, epoch)`` gives the same assignment, and the assignment changes across epochs;
* each sample's augmentation draws from its own generator ``default_rng([seed, epoch, slot, index
  in the stream])``.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

import maskkit.training.data as D
from maskkit.training.data import ShardStream, write_shards


@pytest.fixture(scope="module")
def four_shards(tmp_path_factory, astronaut):
    """32 samples of a real face (scikit-image's astronaut), keys s000..s031, 8 per shard: the
    shard of a sample is ``int(key[1:]) // 8``."""
    face = cv2.resize(np.ascontiguousarray(astronaut[20:220, 150:350]), (112, 112), interpolation=cv2.INTER_AREA)
    samples = [{"key": f"s{i:03d}", "image": face, "label": i % 4, "masked": False} for i in range(32)]
    out = tmp_path_factory.mktemp("order")
    return write_shards(out, samples, ["a", "b", "c", "d"], shard_samples=8)


def _slot_shard(stream: ShardStream, epoch: int, slot: int, nslots: int, cycle: int = 0) -> int:
    """The shard slot ``slot`` reads in cycle ``cycle`` (one shard per slot per cycle here)."""
    stream.set_epoch(epoch)
    it = stream._slot_samples(slot, nslots)
    keys = [next(it)["__key__"] for _ in range(8 * (cycle + 1))][8 * cycle:]
    shards = {int(k[1:]) // 8 for k in keys}
    assert len(shards) == 1, keys  # a slot reads whole shards
    return shards.pop()


def test_shard_permutation_partitions_the_shards_and_changes_per_epoch(four_shards):
    st = ShardStream(four_shards, batch_size=4, world=1, seed=7, shuffle_buffer=1)
    assert len(four_shards.urls) == 4
    per_epoch = []
    for epoch in range(6):
        assign = [_slot_shard(st, epoch, slot, 4) for slot in range(4)]
        assert sorted(assign) == [0, 1, 2, 3], (epoch, assign)  # every shard once per epoch
        assert [_slot_shard(st, epoch, slot, 4) for slot in range(4)] == assign  # same (seed, epoch)
        per_epoch.append(tuple(assign))
    assert len(set(per_epoch)) >= 3, per_epoch  # reshuffled across epochs (measured: 5 of 6 distinct)
    # the next cycle of an epoch draws a new permutation too: (seed, e, c)
    assert any(_slot_shard(st, e, 0, 4, cycle=1) != per_epoch[e][0] for e in range(6))


def test_each_sample_gets_its_own_augmentation_draw(four_shards, monkeypatch):
    seen = []
    real = D.augment

    def spy(img, rng, pad, hflip):
        seen.append(rng.bit_generator.state["state"]["state"])
        return real(img, rng, pad, hflip)

    monkeypatch.setattr(D, "augment", spy)
    st = ShardStream(four_shards, batch_size=4, world=1, seed=3, shuffle_buffer=8)
    st.set_epoch(2)
    it = iter(st)
    for _ in range(4):
        next(it)
    want = [np.random.default_rng([3, 2, 0, idx]).bit_generator.state["state"]["state"] for idx in range(16)]
    assert seen == want
    assert len(set(seen)) == 16


def test_resume_skip_without_positions_lands_on_the_next_batch_of_every_worker(four_shards):
    """Resuming from a checkpoint that has no stream positions (older runs): each of 2 loader
    workers skips its own share of the consumed batches (worker_skip), so after 2 of an epoch's
    batches the stream continues with batches 3 and 4 -- one from each worker -- not a repeat."""
    from maskkit.training.data import make_loader

    st = ShardStream(four_shards, batch_size=4, world=1, seed=11, shuffle_buffer=8)

    def keys(skip: int, n: int) -> list[list[str]]:
        st.set_epoch(0, skip)
        it = iter(make_loader(st, 2))
        got = [next(it)["keys"] for _ in range(n)]
        del it
        return got

    full = keys(0, 4)
    assert len({k for b in full for k in b}) == 16  # 4 distinct batches
    assert keys(2, 2) == full[2:4]
    assert keys(1, 3) == full[1:4]
