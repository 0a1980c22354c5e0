"""How a command ends: one set of exit codes and messages for every maskkit command.

* ``0`` -- the run finished (some inputs may have failed; they are in ``failures.jsonl``), or the
  output already held this finished run (the command says ``already complete``).
* ``1`` -- every input failed (after the summary is printed), or the run could not proceed.
* ``2`` -- ``--src`` holds no input file (:class:`NoInputError`, message from
  :func:`no_input_message`); nothing is written.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable

__all__ = ["EXIT_OK", "EXIT_ALL_FAILED", "EXIT_NO_INPUT", "NoInputError", "no_input_message", "exit_code",
           "already_complete_message"]

EXIT_OK = 0
EXIT_ALL_FAILED = 1
EXIT_NO_INPUT = 2


class NoInputError(RuntimeError):
    """``--src`` holds no input file. ``exit_code`` is :data:`EXIT_NO_INPUT`."""

    exit_code = EXIT_NO_INPUT


def no_input_message(src: str, skipped: Iterable[tuple[str, str]] = ()) -> str:
    """The one message for an empty source, with what was found instead.

    Args:
        src: the ``--src`` as given (display form).
        skipped: ``(display name, reason)`` of every file that is not an input.

    Example:
        >>> no_input_message("photos/", [("a.txt", "not_an_image")])
        'no input file under --src photos/ (1 file seen, not an input: not_an_image 1, e.g. a.txt)'
    """
    skipped = list(skipped)
    if not skipped:
        return f"no input file under --src {src} (it holds no file)"
    by = Counter(r for _, r in skipped)
    n = len(skipped)
    return (f"no input file under --src {src} ({n} file{'s' if n != 1 else ''} seen, not an input: "
            + ", ".join(f"{r} {c}" for r, c in sorted(by.items()))
            + ", e.g. " + ", ".join(name for name, _ in skipped[:3]) + ")")


def exit_code(ok: int, failed: int) -> int:
    """:data:`EXIT_ALL_FAILED` when there were inputs and every one failed, else :data:`EXIT_OK`."""
    return EXIT_ALL_FAILED if ok == 0 and failed > 0 else EXIT_OK


def already_complete_message(out: str) -> str:
    """What a command prints when ``out`` already holds this finished run."""
    return f"already complete: {out} holds this finished run (same inputs and options); nothing to do"
