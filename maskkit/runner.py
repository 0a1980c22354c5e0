"""Shared plumbing of the per-file commands (``maskkit align``, ``maskkit mask``).

Both commands walk a source tree, process chunks of files in a joblib process pool (models
loaded once per worker), and account for every input: one ``manifest.jsonl`` line per written
face, one ``failures.jsonl`` line per input that gave nothing, ``files == ok + failed``. What
differs between them is the per-chunk work and what they count per written file; this module
holds the rest:

* :func:`prepare_run` / :func:`check_writable` -- fail fast on an output folder that cannot be
  written or a detector that cannot load.
* :func:`safe_target` / :func:`write_atomic` -- output paths that never leave ``--out`` and
  files that are never seen half written (``write_atomic`` also writes the eval reports and
  ``.bin`` sets; :func:`maskkit.shards.write_bytes_atomic` is the fsyncing variant whose
  ``NAME.tmp`` files ``maskkit synth`` cleans up on resume).
* :func:`rounded` -- compact JSON numbers for manifest lines.
* :func:`run_chunks` -- the chunked (optionally parallel) map over inputs, results in order.
* :func:`write_accounting` -- the manifest/failures writer with a progress bar.

Example:
    >>> gen, jobs = run_chunks(work, items, 4, max_chunk=32, args=(cfg,), local=(detector,))  # doctest: +SKIP
    >>> stats, reasons = write_accounting(out, gen, len(items), "align", True, count)      # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Sequence

import numpy as np

__all__ = ["prepare_run", "check_writable", "safe_target", "write_atomic", "rounded", "run_chunks", "write_accounting"]


def check_writable(out: Path) -> None:
    """Create ``out`` if needed and check a file can be written there.

    Raises:
        OSError: the folder cannot be created or written (callers turn it into their own error).
    """
    out.mkdir(parents=True, exist_ok=True)
    probe = out / f".maskkit-write-test-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


def prepare_run(src: Path, out: Path, detector: str, detector_opts: dict, aligned: bool,
                error: type[Exception] = RuntimeError):
    """Checks before any file is read; returns the detector (``None`` with ``aligned``).

    ``out`` must differ from ``src`` and be writable, and the detector must load here, before
    a pool starts, so that a missing model fails the run at once with a clear message.

    Raises:
        error: (the command's own exception class) with the reason.
    """
    from maskkit.detect import DetectorUnavailable, make_detector

    if out.resolve() == src.resolve():
        raise error("--out must differ from --src")
    try:
        check_writable(out)
    except OSError as exc:
        raise error(f"output folder {out} is not writable: {exc.strerror or exc}") from exc
    if aligned:
        return None
    try:
        return make_detector(detector, **detector_opts)
    except (DetectorUnavailable, ValueError) as exc:
        raise error(str(exc)) from exc


def safe_target(out_root: Path, rel: str) -> Path:
    """Join ``rel`` under ``out_root`` and refuse anything that would land outside it.

    Raises:
        ValueError: ``rel`` is absolute or has ``..``/empty parts, its folder resolves outside
            ``out_root`` (a symbolic link), or the target itself is a symbolic link.
    """
    pp = PurePosixPath(rel)
    if pp.is_absolute() or any(part in ("..", "") for part in pp.parts):
        raise ValueError(f"unsafe output path {rel!r}")
    target = out_root.joinpath(*pp.parts)
    root = out_root.resolve()
    parent = target.parent.resolve()
    if parent != root and root not in parent.parents:
        raise ValueError(f"output path {rel!r} resolves outside --out ({parent})")
    if target.is_symlink():
        raise ValueError(f"output path {rel!r} is a symbolic link; not overwritten")
    return target


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a per-process temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def rounded(a, nd: int = 3) -> list:
    """``a`` as nested lists of floats rounded to ``nd`` decimals (manifest lines)."""
    return np.round(np.asarray(a, dtype=np.float64), nd).tolist()


def run_chunks(work: Callable[..., list], items: Sequence, jobs: int, max_chunk: int, args: tuple = (),
               local: tuple = (), chunk: int = 0) -> tuple[Iterator[list], int]:
    """Map ``work(chunk_items, *args)`` over chunks of ``items``, results in input order.

    Args:
        work: module-level function ``work(items, *args, *local) -> list`` (one result per
            item); it must load its own models when ``local`` is not given (once per worker).
        items: the inputs.
        jobs: worker processes; ``0`` = all CPU cores. Capped at the number of inputs.
        max_chunk: largest chunk when ``chunk`` is 0 (the automatic size aims at 4 chunks per
            worker).
        args: arguments sent to every task (the config, ...).
        local: extra arguments passed only when the work runs in this process (one job), so
            the caller's already loaded models are reused; pool workers load their own.
        chunk: files per task (``0`` = automatic).

    Returns:
        ``(generator of per-chunk result lists, jobs actually used)``.
    """
    jobs = jobs if jobs > 0 else (os.cpu_count() or 1)
    jobs = max(1, min(jobs, len(items) or 1))
    chunk = chunk or max(1, min(max_chunk, len(items) // (jobs * 4) or 1))
    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    if jobs == 1:
        return (work(c, *args, *local) for c in chunks), jobs
    from joblib import Parallel, delayed

    return Parallel(n_jobs=jobs, backend="loky", return_as="generator")(
        delayed(work)(c, *args) for c in chunks), jobs


def write_accounting(out: Path, results: Iterator[list], total: int, desc: str, progress: bool,
                     count: Callable[[dict, Counter], None] | None = None) -> tuple[Counter, Counter]:
    """Write ``manifest.jsonl`` and ``failures.jsonl`` from per-file results, with a progress bar.

    Each result is ``{"records": [manifest lines], "failure": None | {"src", "reason", "detail"}}``.

    Args:
        out: output folder.
        results: per-chunk lists of results (from :func:`run_chunks`).
        total: number of inputs (the bar's total).
        desc: bar label.
        progress: show the bar.
        count: called with every result and the stats counter, to count what the command
            counts (faces, styles, timings, ...).

    Returns:
        ``(stats, reasons)``: ``stats`` has ``files``, ``ok``, ``failed`` and whatever ``count``
        added (``faces`` is shown on the bar); ``reasons`` counts failures by reason.
    """
    from maskkit.progress import progress_bar

    stats: Counter = Counter()
    reasons: Counter = Counter()
    with open(out / "manifest.jsonl", "w", encoding="utf-8") as man, \
            open(out / "failures.jsonl", "w", encoding="utf-8") as fail, \
            progress_bar(total, desc=desc, disable=not progress) as bar:
        for recs in results:
            for rec in recs:
                stats["files"] += 1
                if count is not None:
                    count(rec, stats)
                if rec["failure"] is None:
                    stats["ok"] += 1
                    for r in rec["records"]:
                        man.write(json.dumps(r, ensure_ascii=False) + "\n")
                else:
                    stats["failed"] += 1
                    reasons[rec["failure"]["reason"]] += 1
                    fail.write(json.dumps(rec["failure"], ensure_ascii=False) + "\n")
            bar.update(len(recs))
            bar.set_postfix(faces=stats["faces"], failed=stats["failed"], refresh=False)
    return stats, reasons
