"""The ``maskkit`` command line: one click group, commands registered from per-area modules.

Each area module (``cli.align``, ``cli.mask``, ``cli.synth``, ``cli.train``, ``cli.eval``, ``cli.demo``)
exposes ``COMMANDS``, a list of click commands. Heavy imports (torch, dlib) happen inside
the commands, so ``maskkit --help`` stays fast.
"""
from __future__ import annotations

import importlib
import logging

import click

from maskkit import __version__

_AREAS = ("align", "mask", "synth", "train", "eval", "demo")


def _one_line_os_errors(callback):
    """Every command's last resort: an ``OSError`` that the command did not turn into its own
    message (a full disk while ``train`` saves a checkpoint, a read-only ``--out`` of ``export``,
    ...) ends in one line naming the path and the cause (exit status 1), never a traceback."""
    import functools

    @functools.wraps(callback)
    def run(*args, **kwargs):
        try:
            return _sigterm_like_ctrl_c(callback, *args, **kwargs)
        except OSError as exc:
            from maskkit.util.names import safe_text
            from maskkit.util.outcome import os_cause

            where = exc.filename or "an output"
            raise click.ClickException(safe_text(f"{where}: {os_cause(exc.errno, exc.strerror or str(exc))}")) \
                from None

    return run


def _sigterm_like_ctrl_c(callback, *args, **kwargs):
    """Run a command with SIGTERM handled as Ctrl-C (:func:`maskkit.util.outcome.sigterm_as_interrupt`):
    the same one ``interrupted:`` line and cleanup; the exit status is 143 instead of 130."""
    from maskkit.util.outcome import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, sigterm_as_interrupt

    with sigterm_as_interrupt() as term:
        try:
            return callback(*args, **kwargs)
        except SystemExit as exc:
            if term["received"] and exc.code == EXIT_INTERRUPTED:
                raise SystemExit(EXIT_TERMINATED) from None
            raise
        except Terminated:  # a command without its own Ctrl-C handling (click would say "Aborted!", 1)
            click.echo("interrupted (SIGTERM)", err=True)
            raise SystemExit(EXIT_TERMINATED) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="maskkit")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """maskkit: masked-face training data (align, mask, synth), MaskDUL training and evaluation."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


for _area in _AREAS:
    try:
        _mod = importlib.import_module(f"maskkit.cli.{_area}")
    except ModuleNotFoundError as exc:  # an area not built yet
        if exc.name != f"maskkit.cli.{_area}":
            raise
        continue
    for _cmd in getattr(_mod, "COMMANDS", []):
        _cmd.callback = _one_line_os_errors(_cmd.callback)
        main.add_command(_cmd)


if __name__ == "__main__":  # pragma: no cover
    main()
