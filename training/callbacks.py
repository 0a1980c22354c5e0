"""Callbacks of the training loop: work that runs between steps on rank 0 (validation).

The loop (:mod:`~maskkit.training.loop`) knows callbacks only through this protocol, so it never
imports what a callback does: ``maskkit train`` builds the validation callback
(:class:`maskkit.training.eval.validation.Validator`) where commands are wired and hands it to
:func:`~maskkit.training.loop.train`, as arcface_torch's ``train.py`` builds its verification
callback and hands it to its loop (``docs/ARCHITECTURE.md``: ``training`` never imports
``training.eval``).

At a step where a callback is :meth:`~Callback.due`, rank 0 runs it on the model in eval mode
(the other ranks wait at the checkpoint that follows), writes what it returns
(:class:`CallbackResult`: ``log.jsonl`` records, console lines, TensorBoard scalars), then writes
``last.pt`` with every callback's :meth:`~Callback.state_dict` (so ``--resume`` keeps, e.g., the
validation history) and, when the result asks to ``keep`` it, a copy of that checkpoint
(``RUN/checkpoints/<keep>.pt``): the weights the figure was measured on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass
class CallbackContext:
    """What a callback sees: the step, the fractional epoch, the model (``FaceModel``, in eval
    mode, on ``device``), the run's config dict, the run folder and the checkpoint to be written."""

    step: int
    epoch: float
    model: Any
    config: dict
    device: Any
    run: Path
    checkpoint: Path


@dataclass
class CallbackResult:
    """What a callback hands back to the loop (see the module docstring)."""

    records: list[dict] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    scalars: dict[str, float] = field(default_factory=dict)
    keep: str | None = None


@runtime_checkable
class Callback(Protocol):
    """A callback of the training loop (see the module docstring)."""

    #: its key in checkpoints (``callbacks``) and in the loop's check of ``cfg.val``.
    name: str

    def start(self, step: int) -> CallbackResult:
        """Rank 0, once, before the first step (after :meth:`load_state_dict` on resume)."""

    def due(self, step: int, epoch_end: bool, last: bool) -> bool:
        """Whether to run after optimiser step ``step`` (``epoch_end``: the epoch's last step;
        ``last``: the run's last step)."""

    def __call__(self, ctx: CallbackContext) -> CallbackResult:
        """Run (rank 0)."""

    def state_dict(self) -> dict:
        """What ``--resume`` needs (stored in the checkpoint)."""

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output."""
