"""The training loop of ``maskkit train``: AMP, channels_last, torch.compile, DDP, exact resume.

:func:`train` runs one :class:`~maskkit.training.config.TrainConfig` in the current process; under
``torchrun`` (env ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``) every process runs it and they
train one DDP model (NCCL on CUDA, gloo on CPU). :func:`launch` starts ``N`` local processes
through ``torch.distributed.run`` (``maskkit train --nproc N``).

**Step.** uint8 NHWC batch -> device -> ``(x - 127.5) / 127.5`` (NCHW, channels_last on CUDA)
-> autocast (bf16, or fp16 with a GradScaler; CPU runs in fp32) -> model -> loss -> NaN/Inf
guard -> backward -> optional global-norm clipping -> SGD step. lr follows the epoch-based step
schedule (``lr x global_batch / 128``, x0.1 at the milestones), set every step from the
fractional epoch, so it survives a change of world size.

**Checkpoints** (``RUN/checkpoints/last.pt``, written atomically: temp file + ``os.replace``)
every ``ckpt_every`` steps, at each epoch end and when ``max_steps`` stops the run. Each holds
the model, the loss (class centres), optimizer, schedule, GradScaler, the RNG states of every
rank (torch, CUDA, numpy, python) and the data position (epoch, batches consumed in it,
per-worker stream positions, world size, workers, batch size).

**Resume** (``resume=True``) is exact (bit-identical weights on CPU) when world size, workers
and batch size are unchanged (with ``num_workers=None``, the default, the checkpoint's worker
count is reused, whatever the cores of the resuming machine): RNGs are restored and the data stream skips exactly what was
consumed (:mod:`~maskkit.training.data`). With a changed world size the run continues at the
same epoch and sample count (``batches x old global batch // new global batch``), the model,
optimizer and schedule state are restored exactly, the RNGs are re-seeded from
``(seed, rank, step)`` and the sample order of the rest of that epoch differs.

**Fine-tuning** (``cfg.init``, ``maskkit train --init``): the weights are read once, when the run
starts (:func:`~maskkit.training.checkpoints.init_model`; their sha256 and layout go into the
config); the optimizer then has two groups, the loaded parameters (``lr x finetune_lr_mult``,
frozen for the first ``freeze_steps`` steps: lr 0, weight decay 0, their BatchNorm layers in eval
mode) and the new ones (:func:`build_optimizer`). A resumed run rebuilds the same groups from the
config alone and never reads the file again.

**Threads.** Each process runs ``cfg.threads`` CPU threads (None: its current count); the
count of every rank is in ``config.json``'s ``resolved`` record and the log's ``start`` record;
:func:`train` gives the caller its own count back when it returns.

**Guard.** A non-finite loss on any rank stops every rank with :class:`NonFiniteLoss`, naming
the step, and leaves the last good checkpoint in place: nothing is written after a bad step. On
CPU the flag is checked before the optimizer step; on CUDA it is read one step later (so the
loop never stalls the kernel launch queue) and always before a checkpoint is written.

**No hidden syncs.** The two-stream route is computed from the loader's pinned CPU flags (the
loader groups each batch, unmasked samples first, so the route is one int and the start blocks
run on slices); the KL uses host scalars; metrics accumulate on the device and are read
only at log intervals.

This module imports only torch / numpy at module level (the GPU benchmark imports it on a
machine without webdataset or OpenCV).

Length: the training loop, its DDP setup, checkpointing and exact resume share the loop's state (RNG streams, loader positions, scaler); they are kept together so resume can be read in one place.
"""
from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from maskkit.training.api import Preprocess, check_device, normalize
from maskkit.training.config import TrainConfig, default_num_workers, usable_cores
from maskkit.training.losses import build_criterion
from maskkit.training.model import FaceModel, Route, build_model

log = logging.getLogger(__name__)

#: The start of torch's DataLoader warning when workers exceed the cores (ShardSource says it once).
_TORCH_WORKER_WARNING = "This DataLoader will create"

METRIC_KEYS = ("loss", "cls", "g", "kl", "mag", "sigma_m_sum", "sigma_m_n", "sigma_u_sum", "sigma_u_n", "steps")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or Inf; training stopped, the last good checkpoint is kept."""


class TrainError(ValueError):
    """Training cannot start with these data and options (the CLI prints it as a one-line error)."""


# ----------------------------------------------------------------------------------------------
# distributed / device
# ----------------------------------------------------------------------------------------------
@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = check_device(name)
        if dev.type == "cuda" and dev.index is None:
            dev = check_device(f"cuda:{local_rank}")
    except ValueError as exc:
        raise TrainError(str(exc)) from exc
    return dev


def setup_distributed(cfg: TrainConfig) -> DistInfo:
    """Initialise the process group from torchrun's env vars (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=device)


def _all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    if info.world == 1 or not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------------------------
# model wrapper, schedule
# ----------------------------------------------------------------------------------------------
class TrainModule(nn.Module):
    """Model + criterion in one module (what DDP wraps): ``forward(images_u8, labels, masked)``.

    ``images`` are uint8 NHWC (as the loader yields them) or already-normalised float NCHW.
    """

    def __init__(self, model: FaceModel, criterion: nn.Module, channels_last: bool = False,
                 preprocess: Preprocess | None = None):
        super().__init__()
        self.model, self.criterion, self.channels_last = model, criterion, channels_last
        self.preprocess = preprocess

    def forward(self, images: torch.Tensor, labels: torch.Tensor, masked: torch.Tensor, route: Route | None = None):
        """``route`` (optional): the two-stream route, precomputed from the loader's CPU flags by
        :meth:`FaceModel.route` so the forward never syncs the device. uint8 images get the run's
        :class:`~maskkit.training.api.Preprocess` (default ``(x - 127.5) / 127.5`` on RGB)."""
        x = normalize(images, self.preprocess) if images.dtype == torch.uint8 else images
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        mu, logvar = self.model.encode(x, masked, route)
        return self.criterion(mu, logvar, labels, masked)


class StepSchedule:
    """Epoch-based step decay with optional linear warm-up; ``state_dict`` for checkpoints.

    ``lr(e) = base x gamma^(#milestones <= e)`` (x ``e / warmup`` during warm-up), ``e`` the
    fractional epoch.
    """

    def __init__(self, base_lr: float, milestones: tuple[int, ...], gamma: float = 0.1, warmup_epochs: float = 0.0):
        self.base_lr, self.milestones, self.gamma, self.warmup = base_lr, tuple(milestones), gamma, warmup_epochs
        self.last_epoch, self.last_lr = 0.0, base_lr

    def lr_at(self, epoch: float) -> float:
        lr = self.base_lr * self.gamma ** sum(epoch >= m for m in self.milestones)
        if self.warmup > 0 and epoch < self.warmup:
            lr *= max(epoch / self.warmup, 1e-3)
        return lr

    def set(self, optimizer: torch.optim.Optimizer, epoch: float, step: int = 0) -> float:
        """Set every group's lr for the step ``step`` (0-based) at fractional epoch ``epoch``.

        A group's ``lr_mult`` (default 1) scales the schedule's lr; a group with
        ``freeze_steps`` N is frozen while ``step < N``: lr 0 and weight decay 0 (its
        ``base_weight_decay`` afterwards). Returns the schedule's lr.
        """
        self.last_epoch, self.last_lr = float(epoch), self.lr_at(epoch)
        for g in optimizer.param_groups:
            frozen = step < g.get("freeze_steps", 0)
            g["lr"] = 0.0 if frozen else self.last_lr * g.get("lr_mult", 1.0)
            if "base_weight_decay" in g:
                g["weight_decay"] = 0.0 if frozen else g["base_weight_decay"]
        return self.last_lr

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "milestones": list(self.milestones), "gamma": self.gamma,
                "warmup": self.warmup, "last_epoch": self.last_epoch, "last_lr": self.last_lr}

    def load_state_dict(self, d: dict) -> None:
        self.last_epoch, self.last_lr = float(d["last_epoch"]), float(d["last_lr"])


# ----------------------------------------------------------------------------------------------
# data sources
# ----------------------------------------------------------------------------------------------
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


class ShardSource:
    """Shards on disk through :class:`~maskkit.training.data.ShardStream` (one per rank).

    ``num_workers``: the loader's worker processes (default: the config's, resolved by
    :func:`resolve_num_workers`)."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, num_workers: int | None = None):
        from maskkit.training.data import ShardStream, make_loader, open_shards

        self.shards = open_shards(cfg.data, cfg.split)
        self.classes, self.num_samples = self.shards.classes, self.shards.num_samples
        self.num_workers = resolve_num_workers(cfg.num_workers if num_workers is None else num_workers)
        self.stream = ShardStream(self.shards, cfg.batch_size, info.rank, info.world, cfg.seed, cfg.shuffle_buffer,
                                  cfg.crop_pad, cfg.hflip, cfg.image_size)
        if self.num_workers > usable_cores():  # said once here; torch would warn at every epoch's iterator
            log.warning("num_workers %d exceeds the %d usable CPU cores: the loader may be slow (default: "
                        "min(4, cores))", self.num_workers, usable_cores())
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_TORCH_WORKER_WARNING)
            self.loader = make_loader(self.stream, self.num_workers, cfg.seed)
        if self.shards.num_masked == 0 and cfg.uses_two_stream:
            log.warning("%s has no masked samples: the masked branch of the two-stream model will not train",
                        cfg.data)

    def epoch_iter(self, epoch: int, skip_batches: int, positions: list[int] | None) -> Iterator[dict]:
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


def build_optimizer(tm: TrainModule, cfg: TrainConfig, base_lr: float) -> tuple[torch.optim.SGD, list[nn.Module]]:
    """SGD over the trainable parameters, and the BatchNorm layers to hold in eval mode while frozen.

    Without ``cfg.init``: one group (as every run before fine-tuning existed, so their optimizer
    states still load). With it: group 0 holds the parameters loaded from the file
    (:func:`~maskkit.training.checkpoints.pretrained_names`), ``lr_mult = cfg.finetune_lr_mult``,
    ``freeze_steps = cfg.freeze_steps``; group 1 the new ones (a fresh sigma head, the class
    centres), ``lr_mult = 1``. Freezing is lr 0 and weight decay 0 for group 0
    (:meth:`StepSchedule.set`) with its BatchNorm layers in eval mode; ``requires_grad`` is never
    toggled (the optimizer state and DDP's buckets stay the same across the unfreeze step). SGD's
    momentum buffer still accumulates the frozen parameters' gradients, so at the unfreeze step
    it holds their steady-state velocity at the pretrained weights.
    """
    from maskkit.training.checkpoints import pretrained_names

    pre = {f"model.{n}" for n in pretrained_names(tm.model, cfg)}
    named = [(n, p) for n, p in tm.named_parameters() if p.requires_grad]
    if not pre:
        return torch.optim.SGD([p for _, p in named], lr=base_lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay), []
    groups = [
        {"params": [p for n, p in named if n in pre], "name": "pretrained", "lr_mult": cfg.finetune_lr_mult,
         "freeze_steps": cfg.freeze_steps, "base_weight_decay": cfg.weight_decay},
        {"params": [p for n, p in named if n not in pre], "name": "new", "lr_mult": 1.0, "freeze_steps": 0,
         "base_weight_decay": cfg.weight_decay},
    ]
    bns = [m for n, m in tm.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and any(f"{n}.{pn}" in pre for pn, _ in m.named_parameters())] if cfg.freeze_steps else []
    return torch.optim.SGD(groups, lr=base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay), bns


# ----------------------------------------------------------------------------------------------
# RNG / checkpoint helpers
# ----------------------------------------------------------------------------------------------
def rng_state(device: torch.device) -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def set_rng_state(st: dict, device: torch.device) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def restore_state(ckpt: dict, model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                  sched: "StepSchedule", scaler: Any) -> None:
    """Load a checkpoint's model, criterion (class centres), optimizer, schedule and GradScaler
    state into the objects of a new run (any world size: none of them depends on it)."""
    model.load_state_dict(ckpt["model"])
    criterion.load_state_dict(ckpt["criterion"])
    optimizer.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file beside ``path`` then ``os.replace`` (never a torn checkpoint)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _progress(total: int, initial: int, enabled: bool):
    """The training bar (``maskkit.util.progress``: steps, rate, ETA), or None when disabled."""
    if not enabled:
        return None
    from maskkit.util.progress import make_bar

    return make_bar(total, unit="step", disable=False, initial=initial)


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------
def log_line(rec: dict, method: str, lr: float) -> str:
    """The human-readable training log line of one log record.

    Only the parts ``method`` has are shown: ``g`` (the MagFace regulariser) for magface,
    dul-mag and maskdul; ``kl`` and the mean ``|sigma|`` for the DUL methods (dul, dul-mag,
    maskdul). ArcFace shows neither.
    """
    fm = lambda v, f=".3g": "-" if v is None else format(v, f)  # noqa: E731
    parts = [f"step {rec['step']} ep {rec['epoch']:.2f} loss {fm(rec['loss'], '.4f')} cls {fm(rec['cls'], '.4f')}"]
    if method in ("magface", "dul-mag", "maskdul"):
        parts.append(f"g {fm(rec.get('g'), '.4f')}")
    if method in ("dul", "dul-mag", "maskdul"):
        parts.append(f"kl {fm(rec.get('kl'))} |sigma| m {fm(rec.get('sigma_masked'))} u {fm(rec.get('sigma_unmasked'))}")
    parts.append(f"|f| {fm(rec.get('mag'))} lr {lr:.3g} img/s {fm(rec.get('img_s'), '.1f')}")
    return " ".join(parts)


def train(cfg: TrainConfig, resume: bool = False, source: Any = None) -> dict:
    """Train ``cfg`` (in this process; under torchrun, as one DDP rank). Returns a summary dict.

    Args:
        cfg: the run configuration; ``cfg.out`` is the run directory.
        resume: continue from ``cfg.out/checkpoints/last.pt`` (exactly: see the module docstring).
        source: a data source (default :class:`ShardSource` over ``cfg.data``); the benchmarks
            pass a :class:`SyntheticSource`.

    Raises:
        NonFiniteLoss: the loss became NaN/Inf (the last good checkpoint is kept).
    """
    caller_threads = torch.get_num_threads()
    try:
        return _train(cfg, resume, source)
    finally:  # cfg.threads changes this process's count: give the caller its own back
        torch.set_num_threads(caller_threads)


def _train(cfg: TrainConfig, resume: bool, source: Any) -> dict:
    threads = int(cfg.threads) if cfg.threads else torch.get_num_threads()
    # CPU kernels sum in a thread-count-dependent order: the count is set and logged per rank, so two
    # launches (e.g. --nproc 2 and two one-process nodes) compute the same thing when they agree on it
    torch.set_num_threads(threads)
    info = setup_distributed(cfg)
    run = Path(cfg.out)
    ck_path = run / "checkpoints" / "last.pt"
    ckpt = None
    if resume:
        if not ck_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ck_path}")
        ckpt = torch.load(ck_path, map_location="cpu", weights_only=False)
    if info.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = not cfg.deterministic
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    src = source if source is not None else ShardSource(cfg, info, resolve_num_workers(cfg.num_workers, ckpt))
    num_classes = len(src.classes)
    if num_classes < 2:
        raise TrainError(f"{cfg.data} has {num_classes} identit{'y' if num_classes == 1 else 'ies'}: "
                         "a classification loss needs at least 2 (one sub-folder per identity in the synth "
                         "source); with 1 class the cls loss is 0 and nothing is learned")
    world, gb = info.world, cfg.batch_size * info.world
    spe = cfg.steps_per_epoch or max(1, src.num_samples // gb)
    nw = max(1, src.num_workers)
    use_cuda = info.device.type == "cuda"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp) if use_cuda else None
    channels_last = cfg.channels_last and use_cuda

    # identical init on every rank, then a per-rank RNG stream for dropout / eps
    seed_everything(cfg.seed)
    model = build_model(cfg)
    init_report = None
    if cfg.init and ckpt is None:  # --init: read once at the start; a resumed run takes its checkpoint
        from maskkit.training.checkpoints import WeightsError, init_model

        try:
            init_report = init_model(model, cfg)
        except (WeightsError, FileNotFoundError) as exc:
            raise TrainError(str(exc)) from exc
        cfg = cfg.replace(init_sha256=init_report.sha256, init_layout=init_report.label,
                          init_sigma_head=init_report.sigma_head)
    criterion = build_criterion(cfg, num_classes)
    tm = TrainModule(model, criterion, channels_last, Preprocess.from_config(cfg)).to(info.device)
    if channels_last:
        tm = tm.to(memory_format=torch.channels_last)
    base_lr = cfg.lr * gb / cfg.lr_base_batch
    params = [p for p in tm.parameters() if p.requires_grad]
    optimizer, frozen_bns = build_optimizer(tm, cfg, base_lr)
    new_params = [p for g in optimizer.param_groups if not g.get("freeze_steps") for p in g["params"]]
    sched = StepSchedule(base_lr, cfg.milestones, cfg.gamma, cfg.warmup_epochs)
    scaler = torch.amp.GradScaler("cuda", enabled=(use_cuda and cfg.amp == "fp16"))
    seed_everything(cfg.seed * 1_000_003 + info.rank + 1)

    start_epoch, start_b, global_step, positions = 0, 0, 0, None
    inexact = None  # the warning of a resume with another world size / batch size / workers
    if ckpt is not None:
        if ckpt.get("num_classes") != num_classes:
            raise TrainError(f"--resume: the checkpoint was trained on {ckpt.get('num_classes')} classes, "
                             f"{cfg.data} has {num_classes}")
        restore_state(ckpt, model, criterion, optimizer, sched, scaler)
        d = ckpt["data"]
        global_step = int(ckpt["step"])
        same = d["world"] == world and d["num_workers"] == nw and d["batch_size"] == cfg.batch_size
        start_epoch = int(d["epoch"])
        if same:
            start_b = int(d["batches_in_epoch"])
            positions = d["positions"][info.rank] if d.get("positions") else None
            set_rng_state(ckpt["rng"][info.rank], info.device)
        else:
            start_b = int(d["batches_in_epoch"]) * int(d["global_batch"]) // gb
            seed_everything(cfg.seed * 1_000_003 + info.rank + 1 + 7919 * global_step)
            inexact = (f"warning: this resume is not exact: world size {world}, batch size {cfg.batch_size}, "
                       f"workers {nw} (the checkpoint has {d['world']}, {d['batch_size']}, {d['num_workers']}); "
                       "the position is restored at sample granularity but the data order of this epoch "
                       "changes, so the weights will differ from an uninterrupted run")
        if start_b >= spe:
            start_epoch, start_b, positions = start_epoch + 1, 0, None
        if (cfg.max_steps is not None and global_step >= cfg.max_steps) or start_epoch >= cfg.epochs:
            # nothing to train: leave the run folder (config, log, checkpoint) untouched
            limit = (f"--max-steps {cfg.max_steps}" if cfg.max_steps is not None and global_step >= cfg.max_steps
                     else f"{cfg.epochs} epochs")
            return {"step": global_step, "epoch": start_epoch, "checkpoint": str(ck_path), "last_loss": None,
                    "world": world, "steps_per_epoch": spe, "steps_trained": 0, "nothing_to_do": True,
                    "reason": f"the run is already at step {global_step}, which reaches {limit}"}

    runner: nn.Module = tm
    if world > 1:
        runner = nn.parallel.DistributedDataParallel(tm, device_ids=[info.device.index] if use_cuda else None)
    if cfg.compile:
        runner = torch.compile(runner, mode=cfg.compile_mode)

    total_steps = spe * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    if info.is_main:
        run.mkdir(parents=True, exist_ok=True)
        (run / "checkpoints").mkdir(exist_ok=True)
    jsonl = open(run / "log.jsonl", "a") if info.is_main else None
    tb = None
    skipped = []  # (feature, reason): requested but not in effect, said once below
    if amp_dtype is None and cfg.amp != "none":
        skipped.append(("amp", f"amp {cfg.amp} requested: off on {info.device.type} (fp32)"))
    if info.is_main and cfg.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(run / "tb"))
        except Exception as exc:  # tensorboard not installed: the JSONL log is the record
            skipped.append(("tensorboard", f"tensorboard requested but unavailable ({type(exc).__name__}: {exc}); "
                                           "log.jsonl is the record"))
    rank_threads = _all_gather_object(threads, info)  # every rank's CPU threads (a collective: all ranks)
    if info.is_main:  # what was asked, and what this run does (config.json "resolved")
        cfg.save(run / "config.json", resolved={"device": str(info.device), "amp": cfg.amp if amp_dtype else "none",
                                                "tensorboard": tb is not None, "num_workers": src.num_workers,
                                                "threads": rank_threads})
    bar = _progress(total_steps, global_step, cfg.progress and info.is_main)

    def emit(line: str) -> None:
        if not info.is_main:
            return
        if bar is not None:
            bar.write(line)
        else:
            print(line, file=sys.stderr, flush=True)

    def write_log(rec: dict) -> None:
        if jsonl is not None:
            jsonl.write(json.dumps(rec) + "\n")
            jsonl.flush()
        if tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    tb.add_scalar(f"train/{k}", v, rec["step"])

    def check_finite(e) -> None:
        """Stop on a non-finite loss (``e = (step, epoch, batch, flag, loss)``); nothing is saved after it."""
        if e is None or e[3].item() == 0:
            return
        step_no, ep, bb, _, lval = e
        msg = (f"non-finite loss ({lval.item()}) at step {step_no} (epoch {ep}, batch {bb}); "
               f"stopping. The last good checkpoint is kept: "
               f"{ck_path if last_saved >= 0 else 'none written yet'}"
               f"{f' (step {last_saved})' if last_saved >= 0 else ''}. Try a lower lr, grad_clip, "
               f"or amp=bf16 instead of fp16.")
        emit(msg)
        write_log({"event": "nonfinite", "step": step_no, "epoch": ep, "batch": bb})
        raise NonFiniteLoss(msg)

    def save(epoch: int, b: int, pos: list[int]) -> None:
        nonlocal pending
        check_finite(pending)
        pending = None
        rngs = _all_gather_object(rng_state(info.device), info)
        all_pos = _all_gather_object(list(pos), info)
        if info.is_main:
            atomic_save({
                "config": cfg.to_dict(), "model": model.state_dict(), "criterion": criterion.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None, "rng": rngs,
                "data": {"epoch": epoch, "batches_in_epoch": b, "positions": all_pos, "world": world,
                         "num_workers": nw, "loader_workers": src.num_workers, "batch_size": cfg.batch_size,
                         "global_batch": gb,
                         "steps_per_epoch": spe},
                "step": global_step, "epoch": epoch + b / spe, "classes": list(src.classes),
                "num_classes": num_classes, "time": time.time(),
            }, ck_path)
        nonlocal last_saved
        last_saved = global_step

    if info.is_main:
        emit(f"maskkit train: {cfg.method} {cfg.backbone} (width {cfg.width}) on {info.device}, world {world}, "
             f"global batch {gb}, {spe} steps/epoch x {cfg.epochs} epochs, {num_classes} classes, lr {base_lr:g}, "
             f"amp {cfg.amp if amp_dtype else 'none'}, threads/process {'/'.join(map(str, rank_threads))}"
             + (f", resumed at step {global_step}" if ckpt else ""))
        write_log({"event": "start", "step": global_step, "world": world, "global_batch": gb,
                   "steps_per_epoch": spe, "device": str(info.device), "resumed": ckpt is not None,
                   "threads": rank_threads})
        for feature, reason in skipped:
            emit(f"note: {reason}")
            write_log({"event": "skipped", "step": global_step, "feature": feature, "reason": reason})
        if init_report is not None:
            pre = Preprocess.from_config(cfg).describe()
            emit(f"init: {cfg.init} ({init_report.label}, sha256 {init_report.sha256[:12]}), input {pre}, "
                 f"BN eps {cfg.bn_eps:g}; pretrained lr x{cfg.finetune_lr_mult:g}"
                 + (f", frozen for the first {cfg.freeze_steps} steps" if cfg.freeze_steps else "")
                 + "".join(f"; {n}" for n in init_report.notes))
            write_log({"event": "init", "step": global_step, "path": cfg.init, "sha256": init_report.sha256,
                       "layout": init_report.label, "fresh": init_report.fresh, "notes": init_report.notes})
        note = getattr(getattr(src, "stream", None), "template_note", None)
        if note:  # crops of another template size, brought onto this run's (training.data.ShardStream)
            emit(f"data: {note}")
            write_log({"event": "data_template", "step": global_step, "note": note})
        if inexact:
            emit(inexact)
            write_log({"event": "resume_inexact", "step": global_step, "message": inexact})

    pending = None  # CUDA: the last step's non-finite flag, read one step later
    acc = torch.zeros(len(METRIC_KEYS), dtype=torch.float64, device=info.device)
    zero = torch.zeros((), dtype=torch.float64, device=info.device)  # a metric the method lacks
    one = torch.ones((), dtype=torch.float64, device=info.device)  # the step count
    t_last, n_img = time.perf_counter(), 0
    last_saved = global_step if ckpt is not None else -1
    first_step = global_step
    last_loss = float("nan")
    stop = cfg.max_steps is not None and global_step >= cfg.max_steps
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if stop:
                break
            b0 = start_b if epoch == start_epoch else 0
            resume_pos = positions if epoch == start_epoch and positions else None
            pos = list(resume_pos) if resume_pos else [0] * nw
            it = src.epoch_iter(epoch, b0, resume_pos)
            tm.train()
            for b in range(b0, spe):
                batch = next(it)
                pos[batch["worker"]] = batch["stream_pos"]
                lr = sched.set(optimizer, epoch + b / spe, global_step)
                frozen = bool(cfg.init) and global_step < cfg.freeze_steps
                for m in frozen_bns:  # the pretrained BatchNorms: running statistics kept while frozen
                    m.train(not frozen)
                images = batch["images"].to(info.device, non_blocking=True)
                labels = batch["labels"].to(info.device, non_blocking=True)
                route = FaceModel.route(batch["masked"], info.device)  # on the CPU flags: no sync
                masked = batch["masked"].to(info.device, non_blocking=True)
                with torch.autocast(info.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    loss, parts = runner(images, labels, masked, route)
                bad = (~torch.isfinite(loss.detach())).float()
                if world > 1:
                    dist.all_reduce(bad)
                entry = (global_step + 1, epoch, b, bad, loss.detach())
                if not use_cuda:
                    check_finite(entry)  # CPU: immediately, before the update
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip:
                    scaler.unscale_(optimizer)
                    # while the pretrained groups are frozen, their gradients do not count
                    torch.nn.utils.clip_grad_norm_(new_params if frozen else params, cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                global_step += 1
                n_img += images.shape[0]
                if use_cuda:
                    # CUDA: read the previous step's flag (long computed: no stall of the launch queue);
                    # the current one is checked before any checkpoint is written
                    check_finite(pending)
                    pending = entry
                with torch.no_grad():
                    vals = [loss.detach()] + [parts.get(k, zero) for k in METRIC_KEYS[1:-1]]
                    acc += torch.stack([v.double().reshape(()) for v in vals] + [one])
                if bar is not None:
                    bar.update(1)
                done = cfg.max_steps is not None and global_step >= cfg.max_steps
                if global_step % cfg.log_every == 0 or done or b == spe - 1:
                    if world > 1:
                        dist.all_reduce(acc)
                    a = dict(zip(METRIC_KEYS, acc.tolist()))
                    n = max(a["steps"], 1.0)
                    dt = time.perf_counter() - t_last
                    rec = {"step": global_step, "epoch": round(epoch + (b + 1) / spe, 4), "lr": lr,
                           "loss": a["loss"] / n, "cls": a["cls"] / n, "g": a["g"] / n, "kl": a["kl"] / n,
                           "mag": a["mag"] / n,
                           "sigma_masked": a["sigma_m_sum"] / a["sigma_m_n"] if a["sigma_m_n"] else None,
                           "sigma_unmasked": a["sigma_u_sum"] / a["sigma_u_n"] if a["sigma_u_n"] else None,
                           "img_s": n_img * world / dt if dt > 0 else None}
                    if use_cuda:
                        rec["mem_gb"] = torch.cuda.max_memory_allocated(info.device) / 2 ** 30
                    last_loss = rec["loss"]
                    write_log(rec)
                    emit(log_line(rec, cfg.method, lr))
                    if bar is not None:
                        bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{lr:.2g}")
                    acc.zero_()
                    t_last, n_img = time.perf_counter(), 0
                if b == spe - 1:
                    save(epoch + 1, 0, [0] * nw)
                elif done or (cfg.ckpt_every and global_step % cfg.ckpt_every == 0):
                    save(epoch, b + 1, pos)
                if done:
                    stop = True
                    break
            del it
        check_finite(pending)
    finally:
        if bar is not None:
            bar.close()
        if jsonl is not None:
            jsonl.close()
        if tb is not None:
            tb.close()
    if info.is_main:
        emit(f"done: step {global_step}, checkpoint {ck_path}")
    return {"step": global_step, "epoch": epoch, "checkpoint": str(ck_path), "last_loss": last_loss,
            "world": world, "steps_per_epoch": spe, "steps_trained": global_step - first_step,
            "nothing_to_do": False}


# ----------------------------------------------------------------------------------------------
# launching
# ----------------------------------------------------------------------------------------------
def launch(cfg: TrainConfig, nproc: int, resume: bool = False) -> int:
    """Run ``cfg`` on ``nproc`` local processes via ``python -m torch.distributed.run``.

    The resolved config is written to ``RUN/launch_config.json`` and every rank runs
    ``python -m maskkit.training.engine RUN/launch_config.json [--resume]``. Returns the exit code.
    """
    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    cfg_path = run / "launch_config.json"
    cfg.save(cfg_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "maskkit.training.engine", str(cfg_path)] + (["--resume"] if resume else [])
    env = dict(os.environ)
    if cfg.threads:
        env["OMP_NUM_THREADS"] = str(int(cfg.threads))
    elif torch.cuda.is_available() is False:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(cmd, env=env)


def main(argv: list[str] | None = None) -> int:
    """Entry of each torchrun rank: ``python -m maskkit.training.engine CONFIG.json [--resume]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    resume = "--resume" in argv
    args = [a for a in argv if a != "--resume"]
    if len(args) != 1:
        print("usage: python -m maskkit.training.engine CONFIG.json [--resume]", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = TrainConfig.load(args[0])
    try:
        train(cfg, resume=resume)
    except NonFiniteLoss:
        return 3
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
