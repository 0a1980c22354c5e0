"""``maskkit train``'s engine: the names its users import, and the default rank entry.

The engine is split by concern (``docs/ARCHITECTURE.md``):

* :mod:`~maskkit.training.loop` -- :func:`train`: the loop (AMP, channels_last, torch.compile,
  the NaN/Inf and data-loss guards, callbacks, logging);
* :mod:`~maskkit.training.resume` -- checkpoints (``RUN/checkpoints/last.pt``, kept copies such as
  ``best.pt``) and exact resume;
* :mod:`~maskkit.training.distributed` -- the device, the DDP process group and :func:`launch`
  (``maskkit train --nproc N``);
* :mod:`~maskkit.training.recipe` -- model + loss module, optimizer, lr schedule, the log line;
* :mod:`~maskkit.training.sources` -- shards (checked before step 0, online masks) or synthetic
  batches, and the per-epoch count of failed samples;
* :mod:`~maskkit.training.callbacks`, :mod:`~maskkit.training.runlog`.

``python -m maskkit.training.engine CONFIG.json [--resume]`` runs one rank of a launched run
without callbacks (a config with validation sets needs ``maskkit.cli._rank``, the rank entry
:func:`launch` gets from the command line).
"""
from __future__ import annotations

import sys

from maskkit.training.distributed import (
    DistInfo,
    all_gather_object,
    finish_rank,
    launch,
    parse_rank_args,
    resolve_device,
    setup_distributed,
)
from maskkit.training.errors import DataLossError, NonFiniteLoss, TrainError
from maskkit.training.loop import resolve_amp, train
from maskkit.training.recipe import METRIC_KEYS, StepSchedule, TrainModule, build_optimizer, log_line
from maskkit.training.resume import atomic_save, restore_state, rng_state, seed_everything, set_rng_state
from maskkit.training.sources import ShardSource, SyntheticSource, resolve_num_workers

__all__ = [
    "DistInfo", "all_gather_object", "launch", "resolve_device", "setup_distributed", "DataLossError",
    "NonFiniteLoss", "TrainError", "resolve_amp", "train", "METRIC_KEYS", "StepSchedule", "TrainModule",
    "build_optimizer", "log_line", "atomic_save", "restore_state", "rng_state", "seed_everything", "set_rng_state",
    "ShardSource", "SyntheticSource", "resolve_num_workers", "run_rank", "main",
]


def run_rank(argv: list[str] | None, usage: str, make_callbacks=None, errors: tuple = ()) -> int:
    """One rank of a launched run: parse ``CONFIG.json [--resume] [--verified]``, train, leave the
    process group.

    Args:
        argv: the rank's arguments (``sys.argv[1:]`` when ``None``).
        usage: printed (exit 2) when the arguments are not that.
        make_callbacks: ``config -> list`` of callbacks (built inside the guard, so its errors are
            one line too); none when ``None``.
        errors: exception types, beyond :class:`TrainError` and ``FileNotFoundError``, that mean
            the data or options cannot train.

    Returns:
        The exit code: 0, 1 (one line ``maskkit train: error: ...`` on stderr), 2 (usage) or 3
        (non-finite loss).
    """
    parsed = parse_rank_args(argv, usage)
    if isinstance(parsed, int):
        return parsed
    cfg, flags = parsed
    try:
        callbacks = make_callbacks(cfg) if make_callbacks is not None else []
        train(cfg, resume=flags["resume"], callbacks=callbacks, verified=flags["verified"])
    except NonFiniteLoss:
        return 3
    except (TrainError, FileNotFoundError, *errors) as exc:
        print(f"maskkit train: error: {exc}", file=sys.stderr)
        return 1
    finally:
        finish_rank()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry of each torchrun rank: ``python -m maskkit.training.engine CONFIG.json [--resume]``."""
    return run_rank(argv, "usage: python -m maskkit.training.engine CONFIG.json [--resume]")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
