"""Processes and devices of ``maskkit train``: the device, the DDP process group, the launcher.

Under ``torchrun`` (env ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``) every process runs the loop
(:mod:`~maskkit.training.loop`) and they train one DDP model (NCCL on CUDA, gloo on CPU).
:func:`launch` starts ``N`` local processes through ``torch.distributed.run``
(``maskkit train --nproc N``); each runs a *rank entry*: by default this package's
(``python -m maskkit.training.engine CONFIG.json``, which takes no callbacks), and from the
command line ``maskkit.cli._rank``, which builds the validation callback where commands are
wired (``docs/ARCHITECTURE.md``: ``training`` never imports ``training.eval``).

This module imports only torch at module level.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from maskkit.training.api import check_device
from maskkit.training.config import TrainConfig
from maskkit.training.errors import TrainError

#: The rank entry :func:`launch` runs unless told another (``python -m <entry> CONFIG [--resume]``).
DEFAULT_ENTRY = "maskkit.training.engine"


@dataclass
class DistInfo:
    """This process's place in the run: rank, world size, local rank and device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``.

    Raises:
        TrainError: a device this machine does not have (one line).
    """
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


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` for one process). A collective: all ranks call it."""
    if info.world == 1 or not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def launch(cfg: TrainConfig, nproc: int, resume: bool = False, entry: str = DEFAULT_ENTRY,
           extra_args: list[str] | None = None) -> int:
    """Run ``cfg`` on ``nproc`` local processes via ``python -m torch.distributed.run``.

    The resolved config is written to ``RUN/launch_config.json`` and every rank runs
    ``python -m <entry> RUN/launch_config.json [--resume] [extra_args]``. Returns the exit code.
    """
    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    cfg_path = run / "launch_config.json"
    cfg.save(cfg_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", entry, str(cfg_path)] + (["--resume"] if resume else []) + list(extra_args or [])
    env = dict(os.environ)
    if cfg.threads:
        env["OMP_NUM_THREADS"] = str(int(cfg.threads))
    elif torch.cuda.is_available() is False:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(cmd, env=env)


def parse_rank_args(argv: list[str] | None, usage: str) -> tuple[TrainConfig, dict] | int:
    """The arguments of a rank entry, ``CONFIG.json [--resume] [--verified]``: ``(config, flags)``,
    or the exit code 2 after printing ``usage`` when they are not that."""
    import logging

    argv = list(sys.argv[1:] if argv is None else argv)
    flags = {"resume": "--resume" in argv, "verified": "--verified" in argv}
    args = [a for a in argv if a not in ("--resume", "--verified")]
    if len(args) != 1:
        print(usage, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return TrainConfig.load(args[0]), flags


def finish_rank() -> None:
    """Leave the process group (the end of every rank entry)."""
    if dist.is_initialized():
        dist.destroy_process_group()
