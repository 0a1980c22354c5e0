"""The rank entry that ``maskkit train --nproc N`` launches (``torch.distributed.run -m maskkit.cli._rank``).

Each rank reads the launched config, builds the validation callback here, where commands are wired
(``training`` never imports ``training.eval``; ``docs/ARCHITECTURE.md``), and runs the loop. Errors
are one line on stderr and an exit code: 1 (the data or options cannot train), 3 (non-finite loss).
"""
from __future__ import annotations

import sys


def _main(argv: list[str] | None = None) -> int:
    """Entry of each rank: ``python -m maskkit.cli._rank CONFIG.json [--resume] [--verified]``."""
    from maskkit.training.engine import run_rank
    from maskkit.training.eval.validation import ValidationError, Validator

    def callbacks(cfg):
        validator = Validator.from_config(cfg)
        return [validator] if validator else []

    return run_rank(argv, "usage: python -m maskkit.cli._rank CONFIG.json [--resume] [--verified]",
                    make_callbacks=callbacks, errors=(ValidationError,))


if __name__ == "__main__":  # pragma: no cover - a launched rank
    sys.exit(_main())
