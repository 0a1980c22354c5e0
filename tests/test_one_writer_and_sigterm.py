"""Try-out 4, findings 1, 9 and 10: one writer per output folder, SIGTERM, export-rec on a full disk.

1. Two ``align`` (or ``mask``) runs into one ``--out`` at once both exited 0 and left duplicated
   and torn ``manifest.jsonl`` lines; only ``synth`` had a lock. Now every command that writes an
   output folder (align, mask, synth, export-rec) holds ``OUT/.maskkit.lock``
   (:class:`maskkit.util.files.OutputLock`): a second run is refused with one line naming the
   folder and the running command's pid, exit 1, and writes nothing. The OS releases the lock
   when its holder dies in any way, so the lock file a killed run leaves never blocks the rerun.
2. SIGTERM (``kill``, ``timeout``, a cluster's pre-emption) to ``synth -j 2`` / ``align -j 2``
   killed the parent on the spot: no ``interrupted:`` line, a stale lock and journal, and the two
   loky workers kept running, re-parented to PID 1. Now SIGTERM is handled as Ctrl-C: the same
   one line (what is kept, rerun to resume), exit status 143, the worker pool is stopped (no
   process of the run survives it) and the rerun resumes to the uninterrupted run's bytes.
3. ``export-rec`` on a full disk said ``Error: an output: No space left on device`` and left
   ``train.rec.tmp`` / ``train.idx.tmp`` filling the disk. Now: one line naming the file, saying
   nothing was exported, what to do; no partial file is left (the ENOSPC is injected at the
   writer: a small tmpfs needs root).

Faces: scikit-image's astronaut and matplotlib's grace_hopper (``zoo.faces_tree``).
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from maskkit.cli import main
from test_stopped_runs import (  # noqa: F401 - src and clean are fixtures, shared
    _args, _no_debris, _one_line, clean, signal_a_real_run, src, tree_hashes)

LOCK = ".maskkit.lock"


class _Holder:
    """Another process that holds ``out``'s lock as a running ``command`` does, until killed."""

    def __init__(self, out: Path, command: str) -> None:
        code = ("import sys; from maskkit.util.files import OutputLock; "
                "held = OutputLock(sys.argv[1], sys.argv[2]).acquire(); print('held', flush=True); sys.stdin.read()")
        self.p = subprocess.Popen([sys.executable, "-c", code, str(out), command], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert self.p.stdout.readline().strip() == "held"

    def kill(self) -> None:  # as kill -9 (or a power cut) ends a run: nothing of ours runs after it
        self.p.kill()
        self.p.wait()


# ---- 1. one writer per output folder --------------------------------------------------------------
@pytest.mark.parametrize("command", ["align", "mask", "synth"])
def test_a_second_run_into_a_folder_being_written_is_refused(src, clean, tmp_path, command):
    """While another process holds the folder (a first run of the same command), the second run
    exits 1 with one line naming the folder and that run, and writes nothing. Once the holder is
    killed -9 (its lock file stays behind), the same command runs to the uninterrupted bytes and
    leaves no lock file."""
    out = tmp_path / "out"
    out.mkdir()
    holder = _Holder(out, f"maskkit {command}")
    try:
        res = CliRunner().invoke(main, _args(command, src, out) + ["-q"])
        assert res.exit_code == 1, res.output
        line = _one_line(res)
        assert f"another maskkit {command} (pid {holder.p.pid}) is writing to {out} right now" in line, line
        assert sorted(os.listdir(out)) == [LOCK]  # nothing written beside the first run's records
    finally:
        holder.kill()
    assert (out / LOCK).is_file()  # what a killed run leaves: it must not block the rerun
    res = CliRunner().invoke(main, _args(command, src, out) + ["-q"])
    assert res.exit_code == 0, res.output
    assert tree_hashes(out) == clean(command)
    assert not (out / LOCK).exists()


@pytest.fixture(scope="module")
def shards(src, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "set"
    res = CliRunner().invoke(main, _args("synth", src, out) + ["-q"])
    assert res.exit_code == 0, res.output
    return out


def test_a_second_export_rec_into_a_folder_being_written_is_refused(shards, tmp_path):
    out = tmp_path / "rec"
    out.mkdir()
    holder = _Holder(out, "maskkit export-rec")
    try:
        res = CliRunner().invoke(main, ["export-rec", str(shards), "-o", str(out), "-q"])
        assert res.exit_code == 1, res.output
        assert f"another maskkit export-rec (pid {holder.p.pid}) is writing to {out} right now" in res.stderr
        assert sorted(os.listdir(out)) == [LOCK]
    finally:
        holder.kill()
    res = CliRunner().invoke(main, ["export-rec", str(shards), "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(out)) == ["property", "train.idx", "train.maskkit.json", "train.rec"]


# ---- 2. SIGTERM ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("command,journal,target", [
    ("align", ".maskkit-progress.jsonl", "process"),   # kill -TERM PID
    ("synth", ".synth-journal.jsonl", "group"),         # timeout(1), a cluster: the whole process group
])
def test_sigterm_stops_like_ctrl_c_and_leaves_no_process(src, tmp_path, command, journal, target):
    """SIGTERM while 2 worker processes run: exit 143 and the `interrupted:` line (what is kept,
    rerun to resume), no traceback; every process the run started is gone (no worker left running
    re-parented to PID 1), the lock is released; the rerun resumes to the uninterrupted bytes.
    Each face is copied 8 times (104 inputs), more when the run ended before it could be stopped
    (``test_stopped_runs.signal_a_real_run``)."""
    children = []

    def send(p):
        children.extend(psutil.Process(p.pid).children(recursive=True))
        assert len(children) >= 2, children  # the 2 workers (and loky's resource tracker)
        if target == "group":
            os.killpg(p.pid, signal.SIGTERM)
        else:
            p.send_signal(signal.SIGTERM)

    big, out, p, errp = signal_a_real_run(src, tmp_path, _two_workers(command), journal, send)
    p.wait(timeout=300)
    err = errp.read_text()
    _, alive = psutil.wait_procs(children, timeout=60)
    left = [c for c in alive if c.status() != psutil.STATUS_ZOMBIE]
    for c in left:  # not ours to leave running, whatever the outcome
        c.kill()
    assert not left, [(c.pid, c.cmdline()[:3]) for c in left]
    assert p.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "Aborted!" not in err, err[-3000:]
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines[-1].startswith("interrupted: ") and lines[-1].endswith("rerun the same command to resume"), err
    assert not (out / LOCK).exists()
    res = CliRunner().invoke(main, _args(command, big, out))
    assert res.exit_code == 0, res.output
    whole = tmp_path / "whole"
    res = CliRunner().invoke(main, _args(command, big, whole) + ["-q"])
    assert res.exit_code == 0, res.output
    assert tree_hashes(out) == tree_hashes(whole)


def test_sigterm_in_process_is_ctrl_c_with_status_143(src, tmp_path, monkeypatch):
    """A SIGTERM that arrives while align writes (raised at the writer, in this process): the same
    `interrupted:` line as Ctrl-C, exit status 143; the handler is gone after the command."""
    import maskkit.util.files as files

    real, calls = files.write_atomic, {"n": 0}

    def writer(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **kw)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(files, "write_atomic", writer)
    res = CliRunner().invoke(main, _args("align", src, tmp_path / "out") + ["-q"])
    assert res.exit_code == 143, res.output
    line = _one_line(res)
    assert line.startswith("interrupted: ") and line.endswith("kept; rerun the same command to resume"), line
    assert signal.getsignal(signal.SIGTERM) == before


# ---- 3. export-rec on a full disk -----------------------------------------------------------------------
@pytest.mark.parametrize("where", ["record", "close"])
def test_export_rec_on_a_full_disk_names_the_file_and_leaves_nothing(shards, tmp_path, monkeypatch, where):
    """ENOSPC while the records are written (a write names no file), or when the files are closed
    (the last buffered bytes): one line naming PREFIX.rec, saying nothing was exported and what to
    do, exit 1; no .tmp file (nor an empty folder) is left; once there is room the same command
    exports."""
    from maskkit.io.recordio import RecordWriter

    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if where == "record":
        _writes_fail_after(monkeypatch, 5, full)
    else:
        real_close = RecordWriter.close

        def close(self):
            real_close(self)
            raise full

        monkeypatch.setattr(RecordWriter, "close", close)
    out = tmp_path / "rec"
    res = CliRunner().invoke(main, ["export-rec", str(shards), "-o", str(out), "--prefix", "set", "-q"])
    assert res.exit_code == 1, res.output
    assert _one_line(res) == (f"error: cannot write {out / 'set.rec'}: No space left on device (ENOSPC); nothing was "
                              "exported (the partial files are removed); free some space, then rerun the same command")
    assert not out.exists()
    (out / "mine").mkdir(parents=True)  # a folder that exists already: kept, and emptied of the export's files
    res = CliRunner().invoke(main, ["export-rec", str(shards), "-o", str(out), "--prefix", "set", "-q"])
    assert res.exit_code == 1
    assert sorted(os.listdir(out)) == ["mine"]
    monkeypatch.undo()
    res = CliRunner().invoke(main, ["export-rec", str(shards), "-o", str(out), "--prefix", "set", "-q"])
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(out)) == ["mine", "property", "set.idx", "set.maskkit.json", "set.rec"]
    _no_debris(out)


def test_ctrl_c_in_export_rec_leaves_no_partial_file(shards, tmp_path, monkeypatch):
    _writes_fail_after(monkeypatch, 3, KeyboardInterrupt())
    out = tmp_path / "rec"
    out.mkdir()
    res = CliRunner().invoke(main, ["export-rec", str(shards), "-o", str(out), "-q"])
    assert res.exit_code == 130, res.output
    assert _one_line(res) == "interrupted: nothing was exported (the partial files are removed); rerun the same command"
    assert os.listdir(out) == []


@pytest.mark.parametrize("command,journal", [("synth", ".synth-journal.jsonl")])
def test_workers_end_when_their_parent_is_killed_without_a_word(src, tmp_path, command, journal):
    """``kill -9`` (or the OOM killer) gives the parent no chance to stop its pool: the workers,
    which ignore SIGINT/SIGTERM (the parent handles those), end themselves within seconds of being
    left instead of running on re-parented to PID 1 (~260 MB each); the rerun resumes."""
    children = []

    def send(p):
        children.extend(c for c in psutil.Process(p.pid).children(recursive=True) if "LokyProcess" in " ".join(c.cmdline()))
        assert len(children) >= 2, children  # the 2 workers
        p.kill()

    big, out, p, errp = signal_a_real_run(src, tmp_path, _two_workers(command), journal, send)
    p.wait(timeout=60)
    _, alive = psutil.wait_procs(children, timeout=20)
    left = [c for c in alive if c.status() != psutil.STATUS_ZOMBIE]
    for c in left:  # not ours to leave running, whatever the outcome
        c.kill()
    assert not left, [(c.pid, c.cmdline()[:3]) for c in left]
    res = CliRunner().invoke(main, _args(command, big, out))
    assert res.exit_code == 0, res.output


def test_a_lock_name_taken_by_a_link_or_folder_is_refused_and_nothing_is_written_through_it(src, tmp_path):
    """``OUT/.maskkit.lock`` is never opened through a link (a link to a file elsewhere had that
    file truncated and overwritten) and a folder at that name is named as such (it said the output
    folder was not writable): one line each, exit 1, the link's target untouched."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious data\n")
    for kind in ("link", "folder"):
        out = tmp_path / f"out-{kind}"
        out.mkdir()
        if kind == "link":
            os.symlink(victim, out / LOCK)
        else:
            (out / LOCK).mkdir()
        res = CliRunner().invoke(main, _args("align", src, out) + ["-q"])
        assert res.exit_code == 1 and f"is a {kind}, not maskkit's lock file" in res.output, res.output
        assert sorted(p.name for p in out.iterdir()) == [LOCK]
    assert victim.read_text() == "precious data\n"


def _writes_fail_after(monkeypatch, n: int, exc: BaseException) -> None:
    """``RecordWriter.write`` raises ``exc`` from its ``n + 1``-th record on."""
    from maskkit.io.recordio import RecordWriter

    real, seen = RecordWriter.write, {"n": 0}

    def write(self, key, record):
        seen["n"] += 1
        if seen["n"] > n:
            raise exc
        return real(self, key, record)

    monkeypatch.setattr(RecordWriter, "write", write)


def _two_workers(command: str):
    """``(src, out) -> argv`` of ``command`` as a real process with 2 workers, quiet."""
    def args_for(big, out):
        args = [sys.executable, "-m", "maskkit.cli", *_args(command, big, out)]
        args[args.index("-j") + 1] = "2"
        return args + ["-q"]

    return args_for

