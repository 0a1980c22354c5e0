"""Exit statuses shared by every command (:mod:`maskkit.util.outcome`): click wiring only."""
from __future__ import annotations

import click


def _no_input(exc: Exception) -> click.ClickException:
    """A ``NoInputError`` as a click error that exits with status 2."""
    from maskkit.util.names import safe_text
    from maskkit.util.outcome import EXIT_NO_INPUT

    err = click.ClickException(safe_text(str(exc)))
    err.exit_code = EXIT_NO_INPUT
    return err


def _stopped(exc: Exception) -> SystemExit:
    """A run stopped by Ctrl-C or an output that cannot be written
    (:data:`maskkit.util.outcome.STOPPED`): its one line on stderr, then its exit status."""
    from maskkit.util.names import safe_text
    from maskkit.util.outcome import Interrupted

    line = safe_text(str(exc))
    click.echo(line if isinstance(exc, Interrupted) else f"error: {line}", err=True)
    return SystemExit(exc.exit_code)


def _interrupted(kept: str, resume: str) -> SystemExit:
    """Ctrl-C in a command without its own record of progress: one line, exit status 130."""
    from maskkit.util.outcome import Interrupted

    return _stopped(Interrupted(f"interrupted: {kept}; {resume}"))


def _run_stage(fn, arg, errors: type[Exception] | tuple[type[Exception], ...] = ()):
    """``fn(arg)`` for a command: no input exits 2 (one line), the stage's own errors are one-line
    click errors, a run stopped by Ctrl-C or a full disk is one line saying what is kept and how to
    resume (exit 130 / 1); anything else propagates."""
    from maskkit.util.outcome import STOPPED, NoInputError

    try:
        return fn(arg)
    except NoInputError as exc:
        raise _no_input(exc) from exc
    except STOPPED as exc:
        raise _stopped(exc) from None
    except KeyboardInterrupt:  # before the run wrote anything (listing the inputs, loading a model)
        raise _interrupted("nothing was written yet", "rerun the same command to start") from None
    except errors as exc:
        raise click.ClickException(str(exc)) from exc


def _claim(paths, overwrite: bool, what: str, **kwargs) -> None:
    """A one-line error when an output exists and ``--overwrite`` was not given
    (:func:`maskkit.util.files.claim_outputs`; ``kwargs`` go to it)."""
    from maskkit.util.files import OutputExistsError, claim_outputs

    try:
        claim_outputs(paths, overwrite, what, **kwargs)
    except OutputExistsError as exc:
        raise click.ClickException(str(exc)) from exc


def _quiet_json(summary: dict, keys: tuple[str, ...]) -> None:
    """The one JSON line ``-q`` prints: ``keys`` of ``summary`` (``unverified`` only when the run
    had ``--aligned``, the only runs that count it)."""
    import json

    click.echo(json.dumps({k: summary.get(k) for k in keys if k != "unverified" or k in summary}))


def _finish(out, ok: int, failed: int, already_complete: bool = False, failures_at: str | None = None) -> None:
    """After the summary: say ``already complete``, or exit 1 when every input failed.

    ``failures_at`` says where the failure records are (default ``OUT/failures.jsonl``, the
    per-file commands' folder; ``embed`` keeps them inside its ``.npz``)."""
    from maskkit.util.names import safe_text
    from maskkit.util.outcome import already_complete_message, exit_code

    if already_complete:
        click.echo(safe_text(already_complete_message(str(out))), err=True)
        return
    code = exit_code(ok, failed)
    if code:
        where = failures_at if failures_at is not None else f"{out}/failures.jsonl"
        click.echo(f"error: every input failed ({failed:,}); see {safe_text(str(where))}", err=True)
        raise SystemExit(code)
