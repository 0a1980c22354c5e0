"""Where the training loop's batches come from: shards on disk (checked first), or synthetic ones.

:class:`ShardSource` opens a shard set (:mod:`~maskkit.training.data`), refuses a damaged one
before step 0 and, with ``online_masks``, plans and draws the masks
(:mod:`~maskkit.training.online_masks`). :class:`EpochAccount` counts, per epoch, the samples
that failed to load after that check (a disk error mid-run) and the planned masks the renderer
could not fit. :class:`SyntheticSource` makes random batches on the device (benchmarks).

**The check before step 0** is the one ``maskkit export-rec`` and ``maskkit stats`` make
(:func:`maskkit.io.shard_verify.check_shard_files`): every shard the manifest lists exists with its
listed byte size and, unless ``verify_data`` is off (``--no-verify``), its sha256 (one sequential
read of the set; under DDP rank 0 hashes, the other ranks compare sizes). A damaged set is a
one-line :class:`~maskkit.training.errors.TrainError` naming the first shard.
"""
from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from maskkit.training.config import TrainConfig, default_num_workers, usable_cores
from maskkit.training.distributed import DistInfo, all_gather_object
from maskkit.training.errors import TrainError

log = logging.getLogger(__name__)

#: The start of torch's DataLoader warning when workers exceed the cores (ShardSource says it once).
_TORCH_WORKER_WARNING = "This DataLoader will create"
#: Failed samples named in a log record or an error message.
NAMED = 20


def resolve_num_workers(requested: int | None, ckpt: dict | None = None) -> int:
    """The loader's worker count: ``requested`` when given; else, on resume, the checkpoint's
    count (the data order depends on it, so resume stays exact on another machine); else
    :func:`~maskkit.training.config.default_num_workers`."""
    if requested is not None:
        return int(requested)
    if ckpt is not None:
        d = ckpt.get("data", {})
        # checkpoints before "loader_workers" hold max(1, workers): the same data order
        return int(d.get("loader_workers", d.get("num_workers", default_num_workers())))
    return default_num_workers()


def _refuse(root: Any, problems: list[str], hashed: bool) -> None:
    from maskkit.io.shard_verify import ShardMismatchError

    if problems:
        why = "" if hashed else " (sizes checked; sha256 skipped: --no-verify)"
        raise TrainError(f"--data: {ShardMismatchError(root, list(dict.fromkeys(problems)))}{why}; "
                         f"`maskkit stats {root}` lists every mismatch: rebuild or restore the set")


def verify_shards(root: str | Any, manifest: dict | None = None, hash: bool = True) -> None:
    """Refuse a damaged shard set in one process (``maskkit train`` checks it before launching).

    Raises:
        TrainError: a listed shard is missing, or its size or (``hash``) sha256 differs (one line
            naming the first shard).
    """
    from maskkit.io.shard_verify import check_shard_files

    _refuse(root, check_shard_files(root, manifest, hash=hash), hash)


def check_set(shards: Any, info: DistInfo, hash: bool) -> None:
    """Refuse a damaged shard set (see the module docstring); a collective under DDP.

    Raises:
        TrainError: as :func:`verify_shards`.
    """
    from maskkit.io.shard_verify import check_shard_files

    problems = check_shard_files(shards.root, shards.manifest, hash=hash and info.is_main)
    _refuse(shards.root, [p for rank in all_gather_object(problems, info) for p in rank], hash)


class ShardSource:
    """Shards on disk through :class:`~maskkit.training.data.ShardStream` (one per rank).

    ``num_workers``: the loader's worker processes (default: the config's, resolved by
    :func:`resolve_num_workers`). ``verified``: the set was checked by the caller (the launcher
    checks it once for all ranks); only the sizes are compared again."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, num_workers: int | None = None, verified: bool = False):
        from maskkit.training.data import ShardStream, make_loader, open_shards

        self.shards = open_shards(cfg.data, cfg.split)
        check_set(self.shards, info, hash=cfg.verify_data and not verified)
        self.classes, self.num_samples = self.shards.classes, self.shards.num_samples
        self.masker = None
        if cfg.online_masks:
            from maskkit.training.online_masks import OnlineMasks, read_index

            self.masker = OnlineMasks(read_index(self.shards, cfg.image_size), cfg.mask_ratio, cfg.seed,
                                      cfg.mask_styles)
        self.num_workers = resolve_num_workers(cfg.num_workers if num_workers is None else num_workers)
        self.stream = ShardStream(self.shards, cfg.batch_size, info.rank, info.world, cfg.seed, cfg.shuffle_buffer,
                                  cfg.crop_pad, cfg.hflip, cfg.image_size, masker=self.masker)
        if self.num_workers > usable_cores():  # said once here; torch would warn at every epoch's iterator
            log.warning("num_workers %d exceeds the %d usable CPU cores: the loader may be slow (default: "
                        "min(4, cores))", self.num_workers, usable_cores())
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_TORCH_WORKER_WARNING)
            self.loader = make_loader(self.stream, self.num_workers, cfg.seed)
        if self.shards.num_masked == 0 and self.masker is None and cfg.uses_two_stream:
            log.warning("%s has no masked samples: the masked branch of the two-stream model will not train "
                        "(--online-masks draws masks while training)", cfg.data)

    def epoch_plan(self, epoch: int) -> dict | None:
        """The online-mask plan of ``epoch`` as a ``log.jsonl`` record (None without online masks)."""
        if self.masker is None:
            return None
        return self.masker.set_epoch(epoch).summary(self.classes, self.masker.ratio)

    def epoch_iter(self, epoch: int, skip_batches: int, positions: list[int] | None) -> Iterator[dict]:
        if self.masker is not None:
            self.masker.set_epoch(epoch)  # before the workers fork: they take the plan with them
        self.stream.set_epoch(epoch, skip_batches, positions)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_TORCH_WORKER_WARNING)
            return iter(self.loader)


class SyntheticSource:
    """Random uint8 faces made on the device (benchmarks and GPU smoke tests; no disk, no workers).

    The ``masked`` flags are CPU tensors (pinned on CUDA), as a real loader delivers them.
    """

    def _pin(self, t: torch.Tensor) -> torch.Tensor:
        return t.pin_memory() if self.info.device.type == "cuda" else t

    def __init__(self, cfg: TrainConfig, info: DistInfo, num_classes: int = 1000, num_samples: int = 100_000,
                 masked_ratio: float = 0.5):
        self.classes = [f"c{i}" for i in range(num_classes)]
        self.num_samples, self.num_workers = num_samples, 0
        self.cfg, self.info, self.masked_ratio = cfg, info, masked_ratio

    def epoch_plan(self, epoch: int) -> dict | None:
        return None

    def epoch_iter(self, epoch: int, skip_batches: int, positions: list[int] | None) -> Iterator[dict]:
        g = torch.Generator(device=self.info.device)
        g.manual_seed(hash((self.cfg.seed, epoch, self.info.rank)) % (2 ** 31))
        gc = torch.Generator().manual_seed(hash((self.cfg.seed, epoch, self.info.rank, 1)) % (2 ** 31))
        b, (h, w) = self.cfg.batch_size, self.cfg.image_size
        dev = self.info.device
        i = skip_batches
        while True:
            i += 1
            n_masked = int((torch.rand(b, generator=gc) < self.masked_ratio).sum())
            yield {"images": torch.randint(0, 256, (b, h, w, 3), dtype=torch.uint8, device=dev, generator=g),
                   "labels": torch.randint(0, len(self.classes), (b,), device=dev, generator=g),
                   # grouped as the shard loader delivers them: unmasked first
                   "masked": self._pin(torch.arange(b) >= b - n_masked),
                   "worker": 0, "stream_pos": i}


@dataclass
class EpochAccount:
    """This rank's failed samples and unfitted masks in one epoch.

    ``limit``: the samples the epoch may lose (``max_data_loss x`` its samples on this rank);
    :attr:`over` turns true once more are lost (the loop then stops every rank with
    :class:`~maskkit.training.errors.DataLossError` and :meth:`error_message`).
    """

    epoch: int
    samples: int
    share: float
    failed: list[dict] = field(default_factory=list)
    mask_failed: list[dict] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return sum(int(f.get("lost", 1)) for f in self.failed)

    @property
    def limit(self) -> float:
        return self.share * self.samples

    @property
    def over(self) -> bool:
        return bool(self.failed) and self.lost > self.limit

    def add(self, batch: dict) -> None:
        """Count the failures a batch carries (``failed``, ``mask_failed``)."""
        self.failed += batch.get("failed") or []
        self.mask_failed += batch.get("mask_failed") or []

    def error_message(self) -> str:
        return (f"{self.lost} sample(s) of epoch {self.epoch} failed to load, more than max_data_loss "
                f"{self.share:g} of its {self.samples} ({self.names(5)}); stopping. The last good checkpoint is "
                "kept; check the disk and the set (`maskkit stats`), or --set max_data_loss=... to accept more")

    def names(self, n: int = NAMED) -> str:
        """The first ``n`` failures as ``key (shard): reason`` (a shard alone for a shard failure)."""
        parts = [(f"{f['key']} ({f['shard']})" if f.get("key") else f"shard {f['shard']} ({f.get('lost', 0)} lost)")
                 + f": {f['reason']}" for f in self.failed[:n]]
        more = len(self.failed) - n
        return ", ".join(parts) + (f" and {more} more" if more > 0 else "")

    def record(self, step: int) -> dict:
        """The epoch's ``data`` record for ``log.jsonl``."""
        rec = {"event": "data", "epoch": self.epoch, "step": step, "failed": self.lost,
               "failed_by_reason": dict(Counter(f["reason"] for f in self.failed)),
               "failed_samples": [{k: f.get(k) for k in ("key", "shard", "reason", "detail", "lost")}
                                  for f in self.failed[:NAMED]]}
        if self.mask_failed:
            rec["mask_failed"] = len(self.mask_failed)
            rec["mask_failed_samples"] = self.mask_failed[:NAMED]
        return rec
