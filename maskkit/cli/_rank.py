"""The rank entry that ``maskkit train --nproc N`` launches (``torch.distributed.run -m maskkit.cli._rank``).

Each rank reads the launched config, builds the validation callback here, where commands are wired
(``training`` never imports ``training.eval``; ``docs/ARCHITECTURE.md``), and runs the loop. Errors
are one line on stderr and an exit code: 1 (the data or options cannot train), 3 (non-finite loss).
"""
from __future__ import annotations

import sys


def _main(argv: list[str] | None = None) -> int:
    """Entry of each rank: ``python -m maskkit.cli._rank CONFIG.json [--resume] [--verified]``."""
    from maskkit.training.distributed import finish_rank, parse_rank_args
    from maskkit.training.errors import NonFiniteLoss, TrainError
    from maskkit.training.eval.validation import ValidationError, Validator
    from maskkit.training.loop import train

    parsed = parse_rank_args(argv, "usage: python -m maskkit.cli._rank CONFIG.json [--resume] [--verified]")
    if isinstance(parsed, int):
        return parsed
    cfg, flags = parsed
    try:
        validator = Validator.from_config(cfg)
        train(cfg, resume=flags["resume"], callbacks=[validator] if validator else [], verified=flags["verified"])
    except NonFiniteLoss:
        return 3
    except (TrainError, ValidationError, FileNotFoundError) as exc:
        print(f"maskkit train: error: {exc}", file=sys.stderr)
        return 1
    finally:
        finish_rank()
    return 0


if __name__ == "__main__":  # pragma: no cover - a launched rank
    sys.exit(_main())
