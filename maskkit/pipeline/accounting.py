"""The accounting files of the per-file commands (``maskkit align``, ``maskkit mask``) and their resume.

* :func:`write_accounting` -- the manifest/failures/rejected/skipped writer with a progress bar
  (``seen == ok + failed + skipped``), plus ``unverified.jsonl`` for ``--aligned`` crops kept
  without a checked fit (:mod:`maskkit.pipeline.unverified`). Every line is valid UTF-8: names
  that are not come as ``src`` (display) + ``src_bytes`` (:mod:`maskkit.util.names`).
* Resume (:data:`maskkit.pipeline.runner.PROGRESS`, :func:`resume_point`): after each chunk the
  accounting files are flushed and one line of the progress journal records how many inputs (a
  prefix, in input order) they hold and what the summary counts of each; a run stopped by Ctrl-C
  or a full disk, rerun with the same command on the same inputs, keeps that prefix and processes
  only the rest. The result is byte-identical to an uninterrupted run's (the kept lines are cut
  where the journal says, the rest are written as before).
* :class:`Tally` -- how much is kept when a run stops (:func:`maskkit.util.outcome.stop_guard`).

Example:
    >>> rp = resume_point(out, info, listing)                               # doctest: +SKIP
    >>> gen, jobs = run_chunks(work, items[rp.done if rp else 0:], 4, max_chunk=32)  # doctest: +SKIP
    >>> stats, reasons, rejected = write_accounting(out, gen, len(items), "align", True, count,
    ...                                             header={"info": info, "listing": listing}, resume=rp)  # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator, Sequence

from maskkit.pipeline.runner import PROGRESS, REJECTED, json_line, safe_target
from maskkit.util.files import write_atomic
from maskkit.util.names import name_from_fields, text_safe
from maskkit.util.outcome import close_quietly

__all__ = ["Tally", "Resume", "resume_point", "write_accounting"]

#: The accounting files a progress journal line measures, in its ``bytes`` order.
_ACCOUNTING = ("manifest.jsonl", "failures.jsonl", REJECTED)


class Tally:
    """How far a run is, for the line a stopped run prints (:func:`maskkit.util.outcome.stop_guard`).

    Attributes:
        total: the run's inputs.
        done: inputs done and kept (their outputs written and their lines in the accounting
            files, recorded in the progress journal): what a rerun of the same command keeps.
    """

    def __init__(self, total: int, done: int = 0) -> None:
        self.total, self.done = int(total), int(done)

    def kept(self) -> str:
        if self.done == 0:
            # workers write images before the driver records them: some may be on disk already,
            # and the rerun writes them again (it said "nothing was kept" beside those files)
            return (f"0 of {self.total:,} inputs done and kept (images already written for inputs not yet "
                    "recorded are written again by the rerun)")
        if self.done >= self.total:
            return f"all {self.total:,} inputs done and kept"
        return f"{self.done:,} of {self.total:,} inputs done and kept"


class Resume:
    """Where an unfinished run of the same command on the same inputs stopped (:func:`resume_point`).

    Attributes:
        done: the inputs done (the first ``done`` of the run's inputs, in order).
        sizes: the byte sizes of ``manifest.jsonl``, ``failures.jsonl``, ``rejected.jsonl`` that
            hold their lines (anything after is cut off: a chunk that was not finished).
        lines: the progress journal's lines (header first) up to that point.
    """

    def __init__(self, done: int, sizes: tuple[int, int, int], lines: list[dict]) -> None:
        self.done, self.sizes, self.lines = done, sizes, lines


def _progress_header(info: dict, listing: str) -> dict:
    return {"progress": 1, "listing": listing, "info": json.loads(json.dumps(text_safe(info), sort_keys=True))}


def _read_progress(out: Path) -> list[dict]:
    """The progress journal's complete lines (a torn last line from a stop is dropped)."""
    lines: list[dict] = []
    try:
        with open(out / PROGRESS, "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break
                try:
                    lines.append(json.loads(raw))
                except ValueError:
                    break
    except OSError:
        return []
    return lines


def _lines(path: Path, size: int) -> Iterator[dict]:
    """The JSON lines in the first ``size`` bytes of ``path``."""
    with open(path, "rb") as fh:
        pos = 0
        for raw in fh:
            pos += len(raw)
            if pos > size:
                return
            yield json.loads(raw)


def resume_point(out: Path, info: dict, listing: str) -> Resume | None:
    """What an unfinished run of the same command, options (``info``) and inputs (``listing``,
    :func:`listing_fingerprint`) left in ``out``: the inputs it finished, when its progress
    journal (:data:`PROGRESS`) and accounting files agree and every output its kept manifest lines
    name is there; else ``None`` (the run starts from its first input).
    """
    lines = _read_progress(out)
    if len(lines) < 2 or lines[0] != _progress_header(info, listing):
        return None
    try:
        sizes = tuple(int(b) for b in lines[-1]["bytes"])
        done = int(lines[-1]["done"])
        items = [it for line in lines[1:] for it in line["items"]]
        if done != len(items) or any(not (out / n).is_file() or (out / n).stat().st_size < b
                                     for n, b in zip(_ACCOUNTING, sizes)):
            return None
        n_man = 0
        for r in _lines(out / "manifest.jsonl", sizes[0]):
            rel = name_from_fields(r, "out")
            if not rel or not safe_target(out, rel).is_file():  # an output of a kept input is gone: redo all
                return None
            n_man += 1
        counted = (n_man, sum(1 for _ in _lines(out / _ACCOUNTING[1], sizes[1])),
                   sum(1 for _ in _lines(out / _ACCOUNTING[2], sizes[2])))
        if counted != tuple(sum(int(it[k]) for it in items) for k in range(3)):
            return None
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    return Resume(done, sizes, lines)


def _replay(out: Path, resume: Resume) -> Iterator[dict]:
    """The per-input results a :class:`Resume` keeps, rebuilt from the accounting files (the same
    dicts the workers returned, less what is not counted)."""
    readers = [_lines(out / n, b) for n, b in zip(_ACCOUNTING, resume.sizes)]
    for line in resume.lines[1:]:
        for m, f, r, extra in line["items"]:
            recs = [next(readers[0]) for _ in range(m)]
            failure = next(readers[1]) if f else None
            yield {**extra, "records": recs, "failure": failure, "rejected": [next(readers[2]) for _ in range(r)]}


def write_accounting(out: Path, results: Iterator[list], total: int, desc: str, progress: bool,
                     count: Callable[[dict, Counter], None] | None = None,
                     skipped: Sequence[dict] = (), header: dict | None = None, resume: Resume | None = None,
                     tally: Tally | None = None) -> tuple[Counter, Counter, Counter]:
    """Write ``manifest.jsonl``, ``failures.jsonl``, ``rejected.jsonl`` (:data:`REJECTED`) and
    ``skipped.jsonl`` from per-file results, with a progress bar; and ``unverified.jsonl`` (one
    line per manifest line whose ``crop_check`` is ``unverified``: ``--aligned`` crops kept
    without a checked fit) when there is one.

    Each result is ``{"records": [manifest lines], "failure": None | {"src", "reason", "detail"},
    "rejected": [{"src", "face", "reason", "detail", ...}]}`` (names already in their text form,
    :meth:`maskkit.io.sources.SourceItem.fields`; ``rejected`` optional). The ``rejected`` lines
    of a written input (``failure`` None) go to ``rejected.jsonl``; those of a failed input are
    dropped here because its ``failures.jsonl`` line already accounts for it (``files == ok + failed``).

    Args:
        out: output folder.
        results: per-chunk lists of results (from :func:`run_chunks`), for the inputs after the
            ``resume.done`` ones that are kept.
        total: number of inputs (the bar's total), kept ones included.
        desc: bar label.
        progress: show the bar.
        count: called with every result and the stats counter, to count what the command
            counts (faces, styles, timings, ...); kept results are counted again from their lines.
        skipped: the ``skipped.jsonl`` lines (files under ``--src`` that are not inputs,
            :func:`maskkit.io.sources.skipped_records`).
        header: ``{"info": ..., "listing": ...}`` of the run: a progress journal (:data:`PROGRESS`)
            records each chunk written, so a stopped run resumes (``None``: no journal).
        resume: what an unfinished run of the same command left (:func:`resume_point`): its
            lines are kept (the files are cut after them) and counted, then ``results`` follow.
        tally: updated with the inputs done and kept as each chunk is recorded.

    Returns:
        ``(stats, reasons, rejected)``: ``stats`` has ``files``, ``ok``, ``failed``, ``skipped``,
        ``seen`` (``= files + skipped``), ``faces_rejected`` (``rejected.jsonl`` lines),
        ``unverified`` (``unverified.jsonl`` lines) and whatever ``count`` added (``faces`` is
        shown on the bar); ``reasons`` counts failures by reason, ``rejected`` the rejected faces
        by reason.
    """
    from maskkit.pipeline.unverified import UNVERIFIED_FILE, is_unverified

    stats: Counter = Counter()
    reasons: Counter = Counter()
    rejected: Counter = Counter()
    unverified: list[str] = []

    def account(rec: dict, files=None) -> tuple[int, int, int]:
        """Count one result (and write its lines to ``files``); returns its line counts."""
        man, fail, rej = files or (None, None, None)
        stats["files"] += 1
        if count is not None:
            count(rec, stats)
        if rec["failure"] is not None:
            stats["failed"] += 1
            reasons[rec["failure"]["reason"]] += 1
            if fail is not None:
                fail.write((json_line(rec["failure"]) + "\n").encode("utf-8"))
            return 0, 1, 0
        stats["ok"] += 1
        for r in rec["records"]:
            if man is not None:
                man.write((json_line(r) + "\n").encode("utf-8"))
            if is_unverified(r.get("crop_check")):
                unverified.append(json_line(_unverified_line(r)) + "\n")
        for r in rec.get("rejected", ()):
            rejected[r["reason"]] += 1
            if rej is not None:
                rej.write((json_line(r) + "\n").encode("utf-8"))
        return len(rec["records"]), 0, len(rec.get("rejected", ()))

    with open(out / "skipped.jsonl", "w", encoding="utf-8") as sk:
        for r in skipped:
            sk.write(json_line(r) + "\n")
    done = 0
    if resume is not None:
        for rec in _replay(out, resume):
            account(rec)
        done = resume.done
        assert stats["files"] == done, "progress journal and accounting files disagree"
        for name, size in zip(_ACCOUNTING, resume.sizes):  # a chunk that was not finished is cut off
            os.truncate(out / name, size)
        write_atomic(out / PROGRESS, b"".join((json_line(x) + "\n").encode("utf-8") for x in resume.lines))
    elif header is not None:
        write_atomic(out / PROGRESS, (json_line(_progress_header(**header)) + "\n").encode("utf-8"))
    if tally is not None:
        tally.done = done
    mode = "ab" if resume is not None else "wb"
    try:
        _write_results(out, results, total, desc, progress, mode, done, account, stats, tally,
                       journaled=header is not None or resume is not None)
    except BaseException:
        close_quietly(results)  # a full disk or Ctrl-C: the pool stops here, without joblib's note
        raise
    stats["skipped"] = len(skipped)
    stats["seen"] = stats["files"] + stats["skipped"]
    stats["faces_rejected"] = sum(rejected.values())
    stats["unverified"] = len(unverified)
    if unverified:
        write_atomic(out / UNVERIFIED_FILE, "".join(unverified).encode("utf-8"))
    else:
        (out / UNVERIFIED_FILE).unlink(missing_ok=True)
    return stats, reasons, rejected


def _write_results(out: Path, results, total: int, desc: str, progress: bool, mode: str, done: int, account,
                   stats: Counter, tally: Tally | None, journaled: bool) -> None:
    """The loop of :func:`write_accounting`: each chunk's lines, then (``journaled``) its journal line."""
    from maskkit.util.progress import progress_bar

    with open(out / "manifest.jsonl", mode) as man, open(out / "failures.jsonl", mode) as fail, \
            open(out / REJECTED, mode) as rej, \
            open(out / PROGRESS, "ab") if journaled else _no_journal() as journal, \
            progress_bar(total, desc=desc, disable=not progress, initial=done) as bar:
        for recs in results:
            items = []
            for rec in recs:
                m, f, r = account(rec, (man, fail, rej))
                items.append([m, f, r, {k: v for k, v in rec.items() if k not in _NOT_JOURNALED}])
            done += len(recs)
            if journal is not None:  # the chunk's lines are on disk before the journal says so
                for fh in (man, fail, rej):
                    fh.flush()
                    os.fsync(fh.fileno())
                journal.write((json_line({"done": done, "bytes": [man.tell(), fail.tell(), rej.tell()],
                                          "items": items}) + "\n").encode("utf-8"))
                journal.flush()
            if tally is not None:
                tally.done = done
            bar.update(len(recs))
            bar.set_postfix(faces=stats["faces"], failed=stats["failed"], refresh=False)


#: Result keys the progress journal does not repeat (they are in the accounting lines).
_NOT_JOURNALED = ("records", "failure", "rejected", "src", "src_bytes", "identity")


class _no_journal:
    def __enter__(self):
        return None

    def __exit__(self, *exc) -> None:
        return None


def _unverified_line(r: dict) -> dict:
    """The ``unverified.jsonl`` line of a manifest line: where it came from and went, what the
    check measured, and (``mask``) whether it was masked."""
    keys = ("src", "src_bytes", "out", "out_bytes", "face", "masked", "style")
    return {**{k: r[k] for k in keys if k in r}, **r["crop_check"]}
