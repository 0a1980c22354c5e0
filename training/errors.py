"""The errors of ``maskkit train`` (each is one line for the command to print)."""
from __future__ import annotations


class TrainError(ValueError):
    """Training cannot start (or go on) with these data and options (the CLI prints it as a one-line error)."""


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or Inf; training stopped, the last good checkpoint is kept."""


class DataLossError(TrainError):
    """More samples failed to load during an epoch than ``max_data_loss`` allows; training stopped,
    the last good checkpoint is kept. The message names the count, the share and the first samples."""
