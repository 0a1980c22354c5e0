"""How a command ends: one set of exit codes and messages for every maskkit command.

* ``0`` -- the run finished (some inputs may have failed; they are in ``failures.jsonl``), or the
  output already held this finished run (the command says ``already complete``).
* ``1`` -- every input failed (after the summary is printed), or the run could not proceed.
* ``2`` -- ``--src`` holds no input file (:class:`NoInputError`, message from
  :func:`no_input_message`); nothing is written.
* ``1`` -- an output could not be written (:class:`OutputError`: no space, quota, read-only, no
  permission): one line naming the path and the cause, what is kept, and that rerunning the same
  command resumes.
* ``130`` -- interrupted (Ctrl-C, :class:`Interrupted`): one line saying how much is kept and that
  rerunning the same command resumes.
* ``143`` -- stopped by SIGTERM (``kill``, ``timeout``, a cluster's pre-emption): handled like
  Ctrl-C (:func:`sigterm_as_interrupt`: the same ``interrupted:`` line, worker processes
  stopped), only the exit status differs (128 + SIGTERM).

A long run turns both into one line with :func:`stop_guard` (what is kept comes from the run);
the command line prints it (``maskkit.cli._exit``), never a traceback.
"""
from __future__ import annotations

import errno
import os
import time
from collections import Counter
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

__all__ = ["EXIT_OK", "EXIT_ALL_FAILED", "EXIT_NO_INPUT", "EXIT_INTERRUPTED", "EXIT_TERMINATED", "NoInputError", "no_input_message",
           "exit_code", "already_complete_message", "RunStopped", "OutputError", "Interrupted", "OutputFull",
           "OUTPUT_ERRNOS", "STOPPED", "worker_ignores_interrupts", "quiet_pool_tracker", "close_quietly", "stops_run", "Terminated", "sigterm_as_interrupt", "os_cause", "stop_guard", "RESUME"]

EXIT_OK = 0
EXIT_ALL_FAILED = 1
EXIT_NO_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM: what a run stopped by SIGTERM exits with (after its interrupted: line)

#: ``OSError`` numbers that stop a whole run when writing an output: the output folder cannot take
#: more files (no space, quota), is read-only, or refuses us, or the device fails. Any other
#: ``OSError`` on one output (a name too long, ...) fails that input only (``write_error``).
OUTPUT_ERRNOS = frozenset(n for n in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS, errno.EACCES,
                                      errno.EPERM, errno.EIO, errno.EFBIG) if n is not None)

#: What a stopped run tells its user to do (align, mask and synth resume from what they kept).
RESUME = "rerun the same command to resume"

_REMEDY = {errno.ENOSPC: "free some space", getattr(errno, "EDQUOT", -1): "free some space or raise the quota",
           errno.EROFS: "make the file system writable", errno.EACCES: "make the folder writable",
           errno.EPERM: "make the folder writable", errno.EFBIG: "use a file system that takes larger files"}


class _Stop:
    exit_code = EXIT_ALL_FAILED

    def __reduce__(self):  # one string argument: travels between processes
        return type(self), (str(self),)


class RunStopped(_Stop, Exception):
    """A run stopped before its end; the message (one line) says what is kept and how to go on."""


class OutputError(RunStopped):
    """An output could not be written (:data:`OUTPUT_ERRNOS`). Exit status 1."""


class Interrupted(_Stop, KeyboardInterrupt):
    """The run was interrupted (Ctrl-C); the message says what is kept and how to go on. Still a
    ``KeyboardInterrupt`` (no ``except Exception`` swallows it). Exit status :data:`EXIT_INTERRUPTED`."""

    exit_code = EXIT_INTERRUPTED


#: What a command catches to print a stopped run's one line (:class:`RunStopped`, :class:`Interrupted`).
STOPPED = (RunStopped, Interrupted)


class OutputFull(Exception):
    """Raised by a worker when writing one output fails with an error of :data:`OUTPUT_ERRNOS`,
    so the run stops (:func:`stop_guard` turns it into :class:`OutputError`) instead of failing
    every later input. Picklable (a worker process sends it back).

    Attributes:
        path: the output being written.
        errno: the ``OSError``'s number.
        strerror: its text.
    """

    def __init__(self, path: str, errno_: int | None, strerror: str) -> None:
        super().__init__(path, errno_, strerror)
        self.path, self.errno, self.strerror = str(path), errno_, strerror

    @classmethod
    def of(cls, exc: OSError, path) -> "OutputFull":
        return cls(str(exc.filename or path), exc.errno, exc.strerror or str(exc))


def worker_ignores_interrupts() -> None:
    """Initializer of pool worker processes: Ctrl-C (SIGINT, sent by a terminal to the whole
    process group) and SIGTERM (``timeout`` and cluster schedulers send it to the whole group
    too) are left to the parent, which stops the pool (its workers are killed) and prints one
    line; the workers print no traceback of their own.

    A parent killed without a word (``kill -9``, the OOM killer) cannot stop its pool: each
    worker then ends itself within about a second of being left (:func:`_exit_with_parent`),
    instead of running on, re-parented, ignoring ``kill``."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _exit_with_parent(os.getppid())


#: The filter :func:`quiet_pool_tracker` gives loky's resource tracker (a ``PYTHONWARNINGS`` entry).
TRACKER_WARNINGS = "ignore::UserWarning:joblib.externals.loky.backend.resource_tracker"


def quiet_pool_tracker() -> None:
    """Keep loky's resource tracker from printing its clean-up warnings ("leaked semlock objects
    to clean up at shutdown") to the user's terminal after a run a full disk or a signal stopped:
    the tracker removes what the stopped pool left, which is its job, and the run has said its one
    line. Call before the pool starts: the tracker is a child process and reads the filter from
    the ``PYTHONWARNINGS`` it inherits (added to, never replaced)."""
    have = os.environ.get("PYTHONWARNINGS", "")
    if TRACKER_WARNINGS not in have.split(","):
        os.environ["PYTHONWARNINGS"] = ",".join(x for x in (have, TRACKER_WARNINGS) if x)


#: How often (seconds) a pool worker looks whether its parent is still there.
PARENT_CHECK_S = 1.0


def _exit_with_parent(ppid: int) -> None:
    """Start a daemon thread that ends this process (``os._exit(1)``) once its parent ``ppid`` is
    gone (the process was re-parented)."""
    import threading

    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK_S)
            if os.getppid() != ppid:
                os._exit(1)

    threading.Thread(target=watch, name="maskkit-parent-watch", daemon=True).start()


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM inside
    :func:`sigterm_as_interrupt`: every ``except KeyboardInterrupt`` (:func:`stop_guard`, the
    commands' own) handles it as Ctrl-C."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[dict]:
    """Within the block, SIGTERM stops the run as Ctrl-C does (:class:`Terminated`, a
    ``KeyboardInterrupt``): the run says what it keeps, its worker pool is stopped and its lock
    released, instead of the process dying on the spot with its workers left running. A second
    SIGTERM while the run stops is ignored (``kill -9`` still ends it). The previous handler is
    restored at the end. Outside the main thread (where no handler can be set) nothing changes.

    Yields:
        ``{"received": bool}``: whether a SIGTERM arrived (the caller then exits with
        :data:`EXIT_TERMINATED`).
    """
    import signal
    import threading

    seen = {"received": False}
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return

    def on_term(signum, frame):
        if seen["received"]:
            return  # already stopping
        seen["received"] = True
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, previous)


def close_quietly(results) -> None:
    """Close a generator of pool results while a run stops: the pool's tasks are cancelled here,
    and joblib's note about the results left unused (a warning on stderr) is not printed -- the
    stopped run's one line is all the user sees."""
    import warnings

    close = getattr(results, "close", None)
    if close is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            close()
        except Exception:  # noqa: BLE001 - the error that stopped the run is the one to report
            pass


def stops_run(exc: BaseException) -> bool:
    """``exc`` is an ``OSError`` that stops a run (:data:`OUTPUT_ERRNOS`), not one input's failure."""
    return isinstance(exc, OSError) and exc.errno in OUTPUT_ERRNOS


def os_cause(errno_: int | None, strerror: str) -> str:
    """``'No space left on device (ENOSPC)'``: the cause as the system words it, with its code."""
    code = errno.errorcode.get(errno_ or -1)
    return f"{strerror} ({code})" if code else strerror


@contextmanager
def stop_guard(kept: Callable[[], str], where: Callable[[], object] = lambda: None,
               resume: str = RESUME) -> Iterator[None]:
    """Turn Ctrl-C and a failed output write inside the block into one line each.

    Args:
        kept: says what is kept when the run stops now (``"120 of 500 inputs done and kept"``).
        where: the output being written, when the ``OSError`` does not name it (a write after an
            open names no file).
        resume: how to go on.

    Raises:
        Interrupted: on ``KeyboardInterrupt``: ``interrupted: KEPT; RESUME``.
        OutputError: on an ``OSError`` or :class:`OutputFull`: ``cannot write PATH: CAUSE; KEPT;
            REMEDY, then RESUME``.
    """
    try:
        yield
    except STOPPED:
        raise  # an inner guard said it already
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: {kept()}; {resume}") from None
    except (OSError, OutputFull) as exc:
        from maskkit.util.names import safe_text

        path = getattr(exc, "path", None) or getattr(exc, "filename", None) or where() or "the output"
        remedy = _REMEDY.get(exc.errno or -1)
        raise OutputError(f"cannot write {safe_text(str(path))}: {os_cause(exc.errno, exc.strerror or str(exc))}; "
                          f"{kept()}; " + (f"{remedy}, then {resume}" if remedy else resume)) from None


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
