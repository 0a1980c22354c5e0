"""Checkpoints of ``maskkit train`` and exact resume.

**Checkpoints** (``RUN/checkpoints/last.pt``, written atomically: temp file + ``os.replace``) are
written every ``ckpt_every`` steps, at each epoch end, at each validation and when ``max_steps``
stops the run. Each holds the model, the loss (class centres), optimizer, schedule, GradScaler,
the RNG states of every rank (torch, CUDA, numpy, python), the data position (epoch, batches
consumed in it, per-worker stream positions, world size, workers, batch size) and the state of
the run's callbacks (``callbacks``: e.g. the validation history and the best figure). A
callback can keep a copy of the checkpoint it was evaluated on beside it
(``RUN/checkpoints/best.pt``, :func:`keep_copy`).

**Resume** (:func:`resume_point`) is exact (bit-identical weights on CPU) when world size,
workers and batch size are unchanged: RNGs are restored and the data stream skips exactly what
was consumed (:mod:`~maskkit.training.data`). With a changed world size the run continues at the
same epoch and sample count (``batches x old global batch // new global batch``), the model,
optimizer and schedule state are restored exactly (:func:`restore_state`), the RNGs are
re-seeded from ``(seed, rank, step)`` and the sample order of the rest of that epoch differs.

This module imports only torch / numpy at module level.
"""
from __future__ import annotations

import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def rng_state(device: torch.device) -> dict:
    """This process's RNG states (torch, numpy, python; CUDA on a GPU)."""
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def set_rng_state(st: dict, device: torch.device) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def restore_state(ckpt: dict, model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                  sched: Any, scaler: Any) -> None:
    """Load a checkpoint's model, criterion (class centres), optimizer, schedule and GradScaler
    state into the objects of a new run (any world size: none of them depends on it)."""
    model.load_state_dict(ckpt["model"])
    criterion.load_state_dict(ckpt["criterion"])
    optimizer.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file beside ``path`` then ``os.replace`` (never a torn checkpoint)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def keep_copy(src: Path, name: str) -> Path:
    """Copy the checkpoint ``src`` to ``<name>.pt`` beside it, atomically (temp file + ``os.replace``)."""
    dst = src.with_name(f"{name}.pt")
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst


@dataclass
class ResumePoint:
    """Where a run (re)starts: epoch, batches already consumed in it, the global step, this rank's
    per-worker stream positions (exact resume only) and the warning of an inexact resume."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    positions: list[int] | None = None
    inexact: str | None = None


def resume_point(ckpt: dict | None, cfg: Any, rank: int, world: int, device: torch.device, num_workers: int,
                 steps_per_epoch: int, global_batch: int) -> ResumePoint:
    """The start of a run from checkpoint ``ckpt`` (None: a new run at step 0), restoring this
    rank's RNG states (same world size, workers and batch size) or re-seeding them from
    ``(seed, rank, step)`` (otherwise; :attr:`ResumePoint.inexact` then says why)."""
    if ckpt is None:
        return ResumePoint()
    d = ckpt["data"]
    step = int(ckpt["step"])
    same = d["world"] == world and d["num_workers"] == num_workers and d["batch_size"] == cfg.batch_size
    p = ResumePoint(epoch=int(d["epoch"]), step=step)
    if same:
        p.batch = int(d["batches_in_epoch"])
        p.positions = d["positions"][rank] if d.get("positions") else None
        set_rng_state(ckpt["rng"][rank], device)
    else:
        p.batch = int(d["batches_in_epoch"]) * int(d["global_batch"]) // global_batch
        seed_everything(cfg.seed * 1_000_003 + rank + 1 + 7919 * step)
        p.inexact = (f"warning: this resume is not exact: world size {world}, batch size {cfg.batch_size}, "
                     f"workers {num_workers} (the checkpoint has {d['world']}, {d['batch_size']}, "
                     f"{d['num_workers']}); the position is restored at sample granularity but the data order of "
                     "this epoch changes, so the weights will differ from an uninterrupted run")
    if p.batch >= steps_per_epoch:
        p.epoch, p.batch, p.positions = p.epoch + 1, 0, None
    return p


def checkpoint_payload(*, cfg: Any, model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                       sched: Any, scaler: Any, rngs: list, data: dict, step: int, epoch: float, classes: list,
                       num_classes: int, callbacks: dict | None = None) -> dict:
    """The dictionary a checkpoint holds (see the module docstring)."""
    out = {
        "config": cfg.to_dict(), "model": model.state_dict(), "criterion": criterion.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None, "rng": rngs, "data": data,
        "step": step, "epoch": epoch, "classes": list(classes), "num_classes": num_classes,
        "time": time.time(),
    }
    if callbacks:
        out["callbacks"] = callbacks
    return out
