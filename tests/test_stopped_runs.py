"""Issue 20: runs stopped by a full disk (any ``OSError`` on output) or by Ctrl-C.

Before: a full disk during ``synth`` or ``align`` ended in chained tracebacks (``align``/``mask``
even went on, failing every later input as ``write_error``), and Ctrl-C printed only
``Aborted!``. Now each is one line -- the path and the cause, or ``interrupted:`` -- saying how
much is kept and that rerunning the same command resumes; the exit status is 1 (output) or 130
(Ctrl-C); nothing is damaged (no temporary file is left, no half shard is kept) and the rerun
finishes with the bytes of an uninterrupted run.

Faces: scikit-image's astronaut and matplotlib's grace_hopper (shipped in dependencies), cropped
and scaled into 12 distinct photos of 2 identities, plus a photo without a face (a
``failures.jsonl`` line that a resumed run must keep too).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import maskkit.pipeline.accounting  # noqa: F401 - imported before a test patches the writers they bind at import
import maskkit.pipeline.align  # noqa: F401
import maskkit.pipeline.mask  # noqa: F401
import maskkit.pipeline.runner  # noqa: F401
import maskkit.pipeline.synth  # noqa: F401
from maskkit.cli import main
from zoo import faces_tree

#: the run record holds timings: every other file must be byte-identical after a resume
_TIMED = {"maskkit-run.json"}


def tree_hashes(out: Path) -> dict[str, str]:
    """sha256 of every file under ``out`` (synth's manifest.json without its ``command``, which
    names --out; align/mask's run record, which holds timings, left out)."""
    def data(p: Path) -> bytes:
        if p.name == "manifest.json":  # key order kept: a resumed manifest must be byte-identical but for --out
            return json.dumps({k: v for k, v in json.loads(p.read_bytes()).items() if k != "command"}).encode()
        return p.read_bytes()

    return {p.relative_to(out).as_posix(): hashlib.sha256(data(p)).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name not in _TIMED}


def _args(command: str, src: Path, out: Path) -> list[str]:
    extra = {"synth": ["--shard-samples", "3"], "mask": ["--coverage"]}.get(command, [])
    return [command, "--src", str(src), "--out", str(out), "-j", "1", *extra]


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return faces_tree(tmp_path_factory.mktemp("faces") / "src")


@pytest.fixture(scope="module")
def clean(src, tmp_path_factory):
    """The uninterrupted run of each command: what a stopped and rerun run must equal."""
    runs = {}

    def get(command: str) -> dict[str, str]:
        if command not in runs:
            out = tmp_path_factory.mktemp(f"clean-{command}") / "out"
            res = CliRunner().invoke(main, _args(command, src, out) + ["-q"])
            assert res.exit_code == 0, res.output
            runs[command] = tree_hashes(out)
        return runs[command]

    return get


def _fail_at(monkeypatch, command: str, after: int, exc: BaseException) -> dict:
    """Make the writer of ``command`` raise ``exc`` once ``after`` outputs are written: the image
    writer of align/mask (``maskkit.util.files.write_atomic``), the shard writer of synth (each
    tar member: ``maskkit.io.shards._add_member``)."""
    import maskkit.io.shards as shards
    import maskkit.util.files as files

    mod, name = (shards, "_add_member") if command == "synth" else (files, "write_atomic")
    real, calls = getattr(mod, name), {"n": 0}

    def writer(*a, **kw):
        calls["n"] += 1
        if calls["n"] > after:
            raise exc
        return real(*a, **kw)

    monkeypatch.setattr(mod, name, writer)
    return calls


def _one_line(res) -> str:
    """The stopped run's stderr (run with -q: no bar) is exactly one line, without a traceback."""
    assert "Traceback" not in res.output and "Aborted!" not in res.output, res.output
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0]


def _no_debris(out: Path) -> None:
    """Nothing half-written is left: no temporary file of a write, no partial shard."""
    left = [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not left, left


def _resume_and_compare(command: str, src: Path, out: Path, clean) -> str:
    res = CliRunner().invoke(main, _args(command, src, out))
    assert res.exit_code == 0, res.output
    assert tree_hashes(out) == clean(command)  # byte for byte the uninterrupted run's files
    return res.output


@pytest.mark.parametrize("command,after,code", [
    ("align", 5, errno.ENOSPC),
    ("align", 0, errno.ENOSPC),          # the very first output: nothing done
    ("align", 7, errno.EDQUOT),
    ("align", 4, errno.EROFS),
    ("align", 8, errno.EACCES),
    ("mask", 5, errno.ENOSPC),           # (mask writes the image and its coverage PNG: 2 per input)
    ("synth", 14, errno.ENOSPC),         # inside the 3rd shard (2 tar members per sample, 3 masked)
    ("synth", 0, errno.EDQUOT),
])
def test_output_error_is_one_line_and_the_rerun_resumes(src, clean, tmp_path, monkeypatch, command, after, code):
    """An OSError on output (no space, quota, read-only, no permission) injected at the writer:
    one stderr line naming the output path and the cause (with its code) and how much is kept,
    saying to rerun the same command; exit status 1; no temporary file or half shard left. The
    rerun finishes with the uninterrupted run's bytes."""
    out = tmp_path / "out"
    _fail_at(monkeypatch, command, after, OSError(code, os.strerror(code)))
    res = CliRunner().invoke(main, _args(command, src, out) + ["-q"])
    assert res.exit_code == 1, res.output
    line = _one_line(res)
    assert line.startswith(f"error: cannot write {out}"), line
    assert f"{os.strerror(code)} ({errno.errorcode[code]})" in line
    assert line.endswith("rerun the same command to resume"), line
    assert " kept" in line
    if after == 0:
        assert "0 of 13" in line
    _no_debris(out)
    monkeypatch.undo()
    _resume_and_compare(command, src, out, clean)


def test_synth_disk_full_inside_a_shard_file(src, clean, tmp_path, monkeypatch):
    """The disk fills up while a shard's bytes are written (every later write fails too, so even
    closing the half shard fails): one line naming that shard's temporary file, no half shard
    left, and the rerun resumes to the uninterrupted bytes."""
    import maskkit.io.shards as shards

    real, seen = shards._HashingWriter.write, {"n": 0}

    def write(self, b):
        seen["n"] += len(b)
        if seen["n"] > 40_000:  # the disk is full from here on
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, b)

    monkeypatch.setattr(shards._HashingWriter, "write", write)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, _args("synth", src, out) + ["-q"])
    assert res.exit_code == 1, res.output
    line = _one_line(res)
    assert line.startswith(f"error: cannot write {out}/train-0000") and ".tar.tmp: No space left on device" in line
    _no_debris(out)
    monkeypatch.undo()
    _resume_and_compare("synth", src, out, clean)


def test_a_full_disk_in_align_keeps_the_finished_inputs(src, clean, tmp_path, monkeypatch):
    """The count the line gives is what the rerun keeps: the rerun's table says so and redoes only
    the rest (the writer is called for those only)."""
    clean("align")  # the uninterrupted run, made now: made while the writer is counted, it counted too
    out = tmp_path / "out"
    _fail_at(monkeypatch, "align", 8, OSError(errno.ENOSPC, "No space left on device"))
    res = CliRunner().invoke(main, _args("align", src, out) + ["-q"])
    kept = int(_one_line(res).split("; ")[1].split(" of 13")[0])
    assert 0 < kept <= 8
    monkeypatch.undo()
    calls = _fail_at(monkeypatch, "align", 10 ** 9, OSError())  # count the writes of the rerun
    from zoo import parse_summary

    table = parse_summary(_resume_and_compare("align", src, out, clean))
    assert table["resumed (kept)"] == kept and calls["n"] == 12 - kept  # 12 crops in all, the kept ones not redone


@pytest.mark.parametrize("command,after", [("align", 6), ("mask", 8), ("synth", 13)])
def test_ctrl_c_says_what_is_kept_and_the_rerun_resumes(src, clean, tmp_path, monkeypatch, command, after):
    """Ctrl-C (KeyboardInterrupt at the writer): `interrupted: ... kept; rerun the same command to
    resume`, exit status 130 (was `Aborted!`, 1); the rerun finishes with the uninterrupted bytes."""
    out = tmp_path / "out"
    _fail_at(monkeypatch, command, after, KeyboardInterrupt())
    res = CliRunner().invoke(main, _args(command, src, out) + ["-q"])
    assert res.exit_code == 130, res.output
    line = _one_line(res)
    assert line.startswith("interrupted: ") and line.endswith("kept; rerun the same command to resume"), line
    assert "nothing" not in line  # each interrupt comes after a first chunk (or shard) is kept
    _no_debris(out)
    monkeypatch.undo()
    _resume_and_compare(command, src, out, clean)


@pytest.mark.parametrize("command,journal", [("align", ".maskkit-progress.jsonl"), ("synth", ".synth-journal.jsonl")])
def test_a_real_ctrl_c_with_worker_processes(src, tmp_path, command, journal):
    """SIGINT to the whole process group (what a terminal sends) while 2 worker processes run:
    exit status 130 and the `interrupted:` line, and no worker prints a traceback of its own; the
    rerun resumes to the uninterrupted bytes. Each face is copied 8 times (104 inputs), more when
    the run ended before it could be interrupted (:func:`signal_a_real_run`)."""
    def args_for(big, out):
        return [sys.executable, "-m", "maskkit.cli", *_args(command, big, out)[:-2 if command != "synth" else -4],
                "-j", "2", "-q"] + (["--shard-samples", "3"] if command == "synth" else [])

    big, out, p, errp = signal_a_real_run(src, tmp_path, args_for, journal, lambda p: os.killpg(p.pid, signal.SIGINT))
    p.wait(timeout=300)
    err = errp.read_text()
    assert p.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "Aborted!" not in err, err[-3000:]
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines[-1].startswith("interrupted: ") and lines[-1].endswith("rerun the same command to resume"), err
    whole = tmp_path / "whole"
    res = CliRunner().invoke(main, _args(command, big, whole) + ["-q"])
    assert res.exit_code == 0, res.output
    clean = tree_hashes(whole)
    _resume_and_compare(command, big, out, lambda _: clean)


@pytest.fixture
def small_disk(tmp_path):
    """A real, small file system (tmpfs) to fill up; skipped where mounting is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root with CAP_SYS_ADMIN; the injected ENOSPC cases cover the rest")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def _resize(disk: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True, capture_output=True)


@pytest.mark.parametrize("command", ["align", "mask", "synth"])
def test_a_real_full_disk_with_worker_processes(src, clean, small_disk, command):
    """A real file system that fills up half-way (a tmpfs of half the output's size), with 2 worker
    processes: exit 1 and exactly one stderr line naming the cause (no traceback, no warning of the
    pool's); once there is room again the same command resumes to the uninterrupted bytes."""
    ref = Path(str(small_disk) + "-ref")  # the whole output, on the ordinary disk: how much room it takes
    assert CliRunner().invoke(main, _args(command, src, ref) + ["-q"]).exit_code == 0
    size = sum(p.stat().st_size for p in ref.rglob("*") if p.is_file())
    _resize(small_disk, max(4096, size // 2 // 4096 * 4096))
    out = small_disk / "out"
    args = [sys.executable, "-m", "maskkit.cli", *_args(command, src, out)]
    args[args.index("-j") + 1] = "2"
    p = subprocess.run(args + ["-q"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 1, p.stderr[-3000:]
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, p.stderr[-3000:]
    assert lines[0].startswith(f"error: cannot write {out}") and "No space left on device (ENOSPC)" in lines[0]
    assert lines[0].endswith("free some space, then rerun the same command to resume")
    _no_debris(out)
    _resize(small_disk, 4 * size + (1 << 20))  # room again
    _resume_and_compare(command, src, out, clean)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder (chmod is not enforced); "
                                               "the EROFS/EACCES cases above inject the error instead")
def test_read_only_folder(src, clean, tmp_path):
    """A real read-only identity folder in --out (left by an earlier run of the same command):
    one line naming it, exit 1; once writable again, the rerun resumes."""
    out = tmp_path / "out"
    (out / "grace").mkdir(parents=True)
    (out / "grace").chmod(0o555)
    try:
        res = CliRunner().invoke(main, _args("align", src, out) + ["-q"])
        assert res.exit_code == 1
        line = _one_line(res)
        assert line.startswith(f"error: cannot write {out / 'grace'}") and "(EACCES)" in line, line
    finally:
        (out / "grace").chmod(0o755)
    _resume_and_compare("align", src, out, clean)


def test_the_atomic_writers_leave_no_temporary_file(tmp_path, monkeypatch):
    """A write that fails (here: the rename, after the data) leaves the target as it was and no
    temporary file beside it, for both writers."""
    import maskkit.util.files as files

    for writer in (files.write_atomic, files.write_bytes_atomic):
        target = tmp_path / f"{writer.__name__}.bin"
        target.write_bytes(b"old")

        def full(*a):
            raise OSError(errno.ENOSPC, "No space left on device")

        with monkeypatch.context() as m:
            m.setattr(files.os, "replace", full)
            with pytest.raises(OSError):
                writer(target, b"new")
        assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir() if "tmp" in p.name) == []


def test_an_os_error_no_command_handles_is_one_line(tmp_path, monkeypatch):
    """The group's last resort: an OSError escaping any command (here `stats` reading its manifest)
    is one line with the path and the cause, exit 1."""
    import maskkit.io.shard_verify as shard_verify

    def broken(*a, **k):
        raise OSError(errno.EIO, "Input/output error", str(tmp_path / "manifest.json"))

    monkeypatch.setattr(shard_verify, "verify", broken)
    res = CliRunner().invoke(main, ["stats", str(tmp_path)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.stderr.strip() == f"Error: {tmp_path / 'manifest.json'}: Input/output error (EIO)"


# ---- the other long commands: Ctrl-C says what is kept and what to run -------------------------
@pytest.fixture
def weights(tmp_path):
    import torch

    p = tmp_path / "m.pt"
    torch.save({"model": {}}, p)  # a PyTorch file (what the command checks before loading it)
    return p


def _interrupt(monkeypatch, module: str, name: str) -> None:
    import importlib

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), name, stop)


def test_ctrl_c_in_embed_and_eval(tmp_path, monkeypatch, weights):
    """embed and eval keep nothing part-way: the line says so and to rerun the same command (exit 130)."""
    import maskkit.cli.eval as cli_eval

    monkeypatch.setattr(cli_eval, "_load", lambda *a, **k: None)
    _interrupt(monkeypatch, "maskkit.training.eval.embed", "run_embed")
    res = CliRunner().invoke(main, ["embed", "--model", str(weights), "--src", str(tmp_path), "-o",
                                    str(tmp_path / "e.npz"), "--device", "cpu"])
    assert res.exit_code == 130 and "Traceback" not in res.output
    assert _one_line(res) == (f"interrupted: embed keeps nothing part-way ({tmp_path / 'e.npz'} is written when "
                              "every image is embedded); rerun the same command to start again")
    _interrupt(monkeypatch, "maskkit.training.eval.report", "run_eval")
    (tmp_path / "set.bin").write_bytes(b"x")
    res = CliRunner().invoke(main, ["eval", "--model", str(weights), "--bin", str(tmp_path / "set.bin"), "-o",
                                    str(tmp_path / "rep"), "--device", "cpu"])
    assert res.exit_code == 130
    assert _one_line(res).startswith("interrupted: eval keeps nothing part-way (its report is written when the run "
                                     "ends); rerun the same command to start again")


@pytest.mark.parametrize("step", [None, 1200])
def test_ctrl_c_in_train_names_the_checkpoint_kept(tmp_path, monkeypatch, step):
    """train: the line names the last checkpoint and its step and says to continue with --resume;
    before the first checkpoint, that none is kept and a new start needs --overwrite."""
    import torch

    import maskkit.cli.train as cli_train
    import maskkit.training.loop as loop

    out = tmp_path / "run"

    def train(cfg, resume=False, **kw):  # trains until a checkpoint at `step` is written, then Ctrl-C
        if step is not None:
            (out / "checkpoints").mkdir(parents=True)
            torch.save({"step": step, "model": {}}, out / "checkpoints" / "last.pt")
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", train)  # what `maskkit train` calls
    monkeypatch.setattr(cli_train, "_check_data", lambda *a, **k: None)  # the set's own check: tested elsewhere
    (tmp_path / "data").mkdir()
    res = CliRunner().invoke(main, ["train", "--data", str(tmp_path / "data"), "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 130, res.output
    line = _one_line(res)
    if step is None:
        assert line.startswith("interrupted: no checkpoint was written yet") and "--overwrite" in line, line
    else:
        assert line == (f"interrupted: the last checkpoint (step 1,200) is kept in {out / 'checkpoints' / 'last.pt'}; "
                        f"the steps after it are lost; rerun with --resume to continue from it: maskkit train "
                        f"--out {out} --resume"), line


def test_a_stop_before_any_record_does_not_claim_nothing_is_on_disk():
    """Stopped before the first chunk was recorded, workers may have written images already (a new
    user found 22 crops beside "nothing was kept yet"): the line says 0 are done and that the
    rerun writes those images again."""
    from maskkit.pipeline.accounting import Tally

    line = Tally(465).kept()
    assert "0 of 465" in line and "nothing" not in line and "written again by the rerun" in line
    assert Tally(465, 22).kept() == "22 of 465 inputs done and kept"


def signal_a_real_run(src: Path, tmp_path: Path, args_for, journal: str, send, copies=(8, 32)):
    """Start a real run over ``src``'s files copied ``copies[0]`` times, wait until its first chunk
    is on record in ``journal`` (3 lines), then ``send(process)``. When the run has already ended
    by then (on a loaded machine a late-starting worker can hold the first chunk back while the
    other finishes the rest), start again with the next count: the run is signalled mid-way or the
    test fails.

    Args:
        args_for: ``(src, out) -> argv`` of the command (a list for ``subprocess``).
        send: ``(Popen) -> None``, the signal (it may look at the process first).

    Returns:
        ``(input folder, output folder, Popen, stderr file path)``; the caller waits for the process.
    """
    import shutil

    for n in copies:
        big, out, errp = tmp_path / f"src{n}", tmp_path / f"out{n}", tmp_path / f"stderr{n}.txt"
        for f in sorted(p for p in src.rglob("*") if p.is_file()):
            rel = f.relative_to(src)
            for k in range(n):
                (big / rel.parent).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, big / rel.parent / f"{rel.stem}_{k}{rel.suffix}")
        with open(errp, "w") as errf:  # a file, not a pipe: a worker left running holds no wait up
            p = subprocess.Popen(args_for(big, out), stdout=subprocess.DEVNULL, stderr=errf, text=True,
                                 start_new_session=True)
        probe, deadline = out / journal, time.monotonic() + 300
        while time.monotonic() < deadline and p.poll() is None:  # until the first chunk is on record
            if probe.is_file() and len(probe.read_bytes().splitlines()) >= 3:
                break
            time.sleep(0.02)
        if p.poll() is None:
            send(p)
            return big, out, p, errp
    pytest.fail(f"every run ended before it could be signalled (up to {copies[-1]} copies of each input): "
                f"{errp.read_text()[-2000:]}")
