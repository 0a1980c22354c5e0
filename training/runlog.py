"""The record of a training run: ``log.jsonl``, TensorBoard scalars, console lines, the progress bar.

Only rank 0 writes. TensorBoard (``cfg.tensorboard``): None (the default) writes ``RUN/tb`` when
the ``tensorboard`` package (the ``train`` extra) is installed and says nothing otherwise;
True asks for it, so a run without the package says so once (a ``skipped`` event); False is off.
``log.jsonl`` is always the full record.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _progress(total: int, initial: int, enabled: bool):
    """The training bar (``maskkit.util.progress``: steps, rate, ETA), or None when disabled."""
    if not enabled:
        return None
    from maskkit.util.progress import make_bar

    return make_bar(total, unit="step", disable=False, initial=initial)


class RunLog:
    """Rank 0's writers of one run (no-ops on the other ranks).

    Attributes:
        skipped: ``(feature, reason)`` of what was asked for but is not in effect (said once at
            the start, :meth:`say_skipped`).
        tensorboard: whether TensorBoard scalars are written.
    """

    def __init__(self, run: Path, is_main: bool, tensorboard: bool | None, total_steps: int, start_step: int,
                 progress: bool):
        self.main = is_main
        self.skipped: list[tuple[str, str]] = []
        self.jsonl = open(run / "log.jsonl", "a") if is_main else None
        self.tb = None
        if is_main and tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run / "tb"))
            except Exception as exc:  # tensorboard not installed: the JSONL log is the record
                if tensorboard:
                    self.skipped.append(("tensorboard", f"tensorboard requested but unavailable ({type(exc).__name__}: "
                                                        f"{exc}); log.jsonl is the record"))
        self.bar = _progress(total_steps, start_step, progress and is_main)

    @property
    def tensorboard(self) -> bool:
        return self.tb is not None

    def emit(self, line: str) -> None:
        """One console line (stderr; above the bar when there is one)."""
        if not self.main:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, file=sys.stderr, flush=True)

    def write(self, rec: dict) -> None:
        """One ``log.jsonl`` record; a training record's numbers also go to TensorBoard (``train/...``)."""
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(rec) + "\n")
            self.jsonl.flush()
        if self.tb is not None and "event" not in rec:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(f"train/{k}", v, rec["step"])

    def scalars(self, values: dict[str, Any], step: int) -> None:
        """TensorBoard scalars under their full tags (e.g. ``val/lfw/maskone/accuracy``)."""
        if self.tb is not None:
            for tag, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(tag, v, step)
            self.tb.flush()

    def say_skipped(self, step: int) -> None:
        for feature, reason in self.skipped:
            self.emit(f"note: {reason}")
            self.write({"event": "skipped", "step": step, "feature": feature, "reason": reason})

    def step_done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def postfix(self, loss: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2g}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
