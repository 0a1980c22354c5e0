"""Shared plumbing of the per-file commands (``maskkit align``, ``maskkit mask``).

Both commands walk a source tree, process chunks of files in a joblib process pool (models
loaded once per worker), and account for every input: one ``manifest.jsonl`` line per written
face, one ``failures.jsonl`` line per input that gave nothing, ``files == ok + failed``, and one
``rejected.jsonl`` line per face of a written input that was left out (:data:`REJECTED`). What
differs between them is the per-chunk work and what they count per written file; this module
holds the rest:

* :func:`prepare_run` / :func:`check_writable` -- fail fast on an output folder that cannot be
  written or a detector that cannot load.
* :func:`lock_out` -- one run at a time writes into an output folder (a second is refused).
* :func:`safe_target` -- output paths that never leave ``--out`` (files are written with
  :func:`maskkit.util.files.write_atomic`).
* :func:`rounded` -- compact JSON numbers for manifest lines.
* :func:`check_out_kind` -- images and shards never share an output folder (``synth`` uses it too).
* :func:`check_previous_run` -- refuse an ``--out`` that holds the output of a different run
  (recorded in :data:`RUN_INFO`) unless ``--overwrite``, which first removes that run's files;
  recognise the same run, already finished on the same inputs (:func:`record_complete`), as
  complete.
* :data:`RESERVED` -- the accounting files; output names (:mod:`maskkit.pipeline.naming`) never
  take them.
* :func:`run_chunks` -- the chunked (optionally parallel) map over inputs, results in order.
* :data:`PROGRESS` -- the progress journal of an unfinished run (the accounting files and resume
  are :mod:`maskkit.pipeline.accounting`).

Example:
    >>> gen, jobs = run_chunks(work, items, 4, max_chunk=32, args=(cfg,), local=(detector,))  # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Sequence

import numpy as np

from maskkit.util.files import write_atomic
from maskkit.util.names import name_from_fields, text_safe

__all__ = ["RUN_INFO", "REJECTED", "RESERVED", "PROGRESS", "check_out_kind", "check_previous_run", "record_complete", "listing_fingerprint",
           "prepare_run", "check_writable", "lock_out", "safe_target", "coverage_rel", "rounded", "run_chunks",
           "json_line", "rejected_line", "finish_run", "auto_workers", "FILES_PER_WORKER"]


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
    from maskkit.face.detect import make_detector
    from maskkit.face.models import DetectorUnavailable

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


def lock_out(out: Path, command: str, error: type[Exception] = RuntimeError):
    """Take ``out``'s writer lock (:class:`maskkit.util.files.OutputLock`) for ``command``; use the
    result as a ``with`` block around the run (released, its file removed, when the block ends).

    Raises:
        error: another maskkit run is writing to ``out`` right now, or ``out`` is not writable.
    """
    from maskkit.util.files import OutputBusyError, OutputLock

    try:
        return OutputLock(out, command).acquire()
    except OutputBusyError as exc:
        raise error(str(exc)) from None
    except OSError as exc:
        raise error(f"output folder {out} is not writable: {exc.strerror or exc}") from exc


#: The run-info file ``align``/``mask`` write into ``--out``: the command, source and the options
#: that change the outputs. A later run into the same folder compares against it.
RUN_INFO = "maskkit-run.json"

#: The per-face record of faces left out of an input that was written (``--faces all``: a face
#: whose landmarks fail the check while another face of the file is kept): one line per face,
#: ``src`` (+ ``src_bytes``), ``face`` (the index ``k`` of ``_k`` names), ``reason``, ``detail``.
#: An input that gave nothing is one ``failures.jsonl`` line instead (its detail names each face).
#: ``maskkit synth`` writes the same file beside its ``failures.jsonl``.
REJECTED = "rejected.jsonl"

#: The progress journal of an unfinished ``align``/``mask`` run in ``--out`` (removed when the run
#: finishes): a header (``info``, ``listing``), then one line per chunk written,
#: ``{"done": inputs, "bytes": [manifest, failures, rejected sizes], "items": [[m, f, r, extra], ...]}``
#: (per input: its manifest, failures and rejected line counts, and what the summary counts).
PROGRESS = ".maskkit-progress.jsonl"

#: The files ``align``/``mask`` write into ``--out`` besides the outputs of the inputs
#: (``unverified.jsonl``: ``maskkit.pipeline.unverified.UNVERIFIED_FILE``, only with ``--aligned``).
RESERVED = ("manifest.jsonl", "failures.jsonl", REJECTED, "skipped.jsonl", "unverified.jsonl", RUN_INFO, PROGRESS)



def rejected_line(src_fields: dict, identity: str, face, k: int, reason: str, detail: str) -> dict:
    """One :data:`REJECTED` line (``align``, ``synth``): the input's name fields (``src`` +
    ``src_bytes``, :func:`maskkit.util.names.name_fields`), its ``identity`` (display form), the
    face index ``k`` (as in ``<stem>_<k>`` names and shard JSON ``face``), ``reason``, ``detail``
    (at most 500 characters), the detection's ``box`` (image pixels, ``None`` without one) and
    ``score``, and ``landmark_check`` when the check ran (:class:`maskkit.face.fit_check.FitCheck`).

    Args:
        face: the :class:`maskkit.face.base.Face` (or ``None``).
    """
    line = {**src_fields, "identity": identity, "face": int(k), "reason": reason, "detail": str(detail)[:500],
            "box": None if face is None else rounded(face.box, 2),
            "score": None if face is None or face.score is None else round(float(face.score), 4)}
    fit = getattr(face, "fit", None)
    if fit is not None:
        line["landmark_check"] = fit.as_dict()
    return line


def json_line(obj) -> str:
    """One JSON line (no newline), valid UTF-8 whatever strings ``obj`` holds
    (:func:`maskkit.util.names.text_safe` is the guard for a stray name in a message)."""
    try:
        return json.dumps(obj, ensure_ascii=False).encode("utf-8").decode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(text_safe(obj), ensure_ascii=False)


def _describe_change(old: dict | None, new: dict) -> str:
    if old is None:
        return f"a manifest.jsonl without {RUN_INFO}"
    def show(d: dict, k: str) -> str:  # a key a run record leaves out is the option's default
        return repr(d[k]) if k in d else "default"

    diffs = [f"{k}: {show(old, k)} -> {show(new, k)}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "other options: " + "; ".join(diffs[:4]) + ("; ..." if len(diffs) > 4 else "")


def coverage_rel(rel: str) -> str:
    """The ``<stem>.mask.png`` coverage sibling of an output path (``maskkit mask --coverage``)."""
    p = PurePosixPath(rel)
    return (p.parent / (p.stem + ".mask.png")).as_posix()


def _remove_previous_outputs(out: Path) -> int:
    """Delete the files listed (``out`` field) in ``out/manifest.jsonl`` (plus their
    ``<stem>.mask.png`` coverage siblings), the accounting files and the run info; then the
    folders this left empty. Returns the number of files removed."""
    removed = 0
    root = out.resolve()
    dirs: set[Path] = set()
    man = out / "manifest.jsonl"
    rels: list[str] = []
    if man.is_file():
        with open(man, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rel = name_from_fields(json.loads(line), "out")  # out_bytes: a name that is not UTF-8
                except (json.JSONDecodeError, AttributeError, ValueError):
                    continue
                if isinstance(rel, str) and rel:
                    rels += [rel, coverage_rel(rel)]
    for rel in dict.fromkeys(rels):
        try:
            target = safe_target(out, rel)
        except ValueError:
            continue  # never delete outside --out
        if target.is_file():
            target.unlink()
            removed += 1
            dirs.add(target.parent)
    for name in RESERVED:
        p = out / name
        if p.is_file():
            p.unlink()
            removed += 1
    for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
        while d.resolve() != root and root in d.resolve().parents:
            try:
                d.rmdir()  # only when empty
            except OSError:
                break
            d = d.parent
    return removed


def check_out_kind(out: Path, writing: str, error: type[Exception] = RuntimeError) -> None:
    """Images (``align``/``mask``) and shards (``synth``, ``align --format shards``) never share an
    output folder. ``--overwrite`` would not remove the other kind's files, so this refuses always.

    Args:
        out: the output folder (may not exist yet).
        writing: ``"images"`` or ``"shards"``, what this run writes.

    Raises:
        error: ``out`` holds the other kind of output.
    """
    if writing == "images":
        other = ["manifest.json"] if (out / "manifest.json").is_file() else []
        what = "a shard set (manifest.json of maskkit synth or align --format shards)"
    else:
        other = [n for n in ("manifest.jsonl", RUN_INFO) if (out / n).is_file()]
        what = f"the per-file output of maskkit align/mask ({other[0]})" if other else ""
    if other:
        raise error(f"--out {out} holds {what}; write the {writing} to another folder")


def listing_fingerprint(listing) -> str:
    """sha256 over every entry of a :class:`maskkit.io.sources.SourceListing`: each input's name
    (bytes), size and modification time, and each skipped file's name and reason (except the
    output folder's own files, ``inside_out``). Two walks with the same fingerprint saw the same
    source files."""
    import hashlib

    from maskkit.util.names import name_bytes

    h = hashlib.sha256()
    for it in listing.items:
        try:
            st = os.stat(it.path)
            h.update(name_bytes(it.rel) + f"\x00{st.st_size}\x00{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(name_bytes(it.rel) + b"\x00-\n")
    for sk in listing.skipped:
        if sk.reason != "inside_out":  # the output folder's own files change with every run
            h.update(name_bytes(sk.rel) + f"\x00{sk.reason}\n".encode())
    return h.hexdigest()


def _outputs_present(out: Path) -> bool:
    man = out / "manifest.jsonl"
    # a run of a maskkit without rejected.jsonl did not record the faces it left out: run it again
    if not (man.is_file() and (out / "failures.jsonl").is_file() and (out / REJECTED).is_file()):
        return False
    with open(man, encoding="utf-8") as fh:
        for line in fh:
            try:
                rel = name_from_fields(json.loads(line), "out")
            except (json.JSONDecodeError, AttributeError, ValueError):
                return False
            if rel and not (out / rel).is_file():
                return False
    return True


def _ours_untracked(rel: str) -> bool:
    """What align/mask leave in a folder before their run info exists: the write probe and the
    temporary file of a write (:func:`maskkit.util.files.write_atomic`)."""
    name = rel.rpartition("/")[2]
    return (rel.startswith(".maskkit-write-test-") or
            (name.startswith(".") and name.endswith(".tmp") and name[1:-4].rpartition(".")[2].isdigit()))


def _looks_like_our_manifest(path: Path) -> bool:
    """A ``manifest.jsonl`` of align/mask (its first line has ``src`` and ``out``), not another tool's."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline()
        return not first.strip() or {"src", "out"} <= set(json.loads(first))
    except (OSError, ValueError, TypeError):
        return False


def check_previous_run(out: Path, info: dict, overwrite: bool, error: type[Exception] = RuntimeError,
                       listing: str | None = None, taken: Callable[[], list[str]] = lambda: []) -> dict | None:
    """Refuse to mix two different runs in one output folder, or to write among other files;
    record this run's info.

    ``out`` holding no run of align/mask (no :data:`RUN_INFO`, no ``manifest.jsonl`` of theirs)
    but other files (a folder of the user's) is refused unless ``overwrite``; with ``overwrite``
    the run writes beside them, never replacing one (refused when an output would land on one,
    ``taken``: :func:`maskkit.util.files.claim_folder`).
    ``out`` holding a ``manifest.jsonl`` (or a :data:`RUN_INFO`) from a run with another
    command, source or output-changing options is an error unless ``overwrite``, which removes
    the previous run's outputs (the files its manifest lists) first. A rerun with identical
    options proceeds (resuming what a stopped run kept: :func:`resume_point`) -- unless that run finished
    (:func:`record_complete`) on the same inputs (``listing``, :func:`listing_fingerprint`) and
    its outputs are all there (the accounting files too: a run of a maskkit that wrote no
    :data:`REJECTED` is redone): then nothing is redone.

    Args:
        out: the (existing, writable) output folder.
        info: JSON-serialisable description of this run (command, resolved source, options).
        overwrite: replace a previous run (different or not) instead of refusing or reusing it.
        error: the command's exception class.
        listing: fingerprint of this run's inputs.
        taken: the outputs of this run that exist in ``out`` already (POSIX paths relative to it,
            :func:`maskkit.util.files.existing_names`), asked only of a folder of other files.

    Returns:
        The finished run's summary when ``out`` already holds this run, complete; else ``None``
        (the caller runs).

    Raises:
        error: ``out`` holds another run and ``overwrite`` is false, or holds a shard set, or
            holds other files (without ``overwrite``, or where this run would write).
    """
    from maskkit.util.files import OutputExistsError, claim_folder

    check_out_kind(out, "images", error)
    info = json.loads(json.dumps(text_safe(info), sort_keys=True))
    info_p = out / RUN_INFO
    previous = None
    if info_p.is_file():
        try:
            previous = json.loads(info_p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            previous = {"unreadable": True}
    finished = previous.pop("finished", None) if isinstance(previous, dict) else None
    held = previous is not None or ((out / "manifest.jsonl").is_file()
                                    and _looks_like_our_manifest(out / "manifest.jsonl"))
    if not held:  # a new folder, or one of the user's: never write among (or over) other files silently
        try:
            claim_folder(out, _ours_untracked, overwrite, lambda: [n for n in RESERVED if (out / n).exists()] + taken())
        except OutputExistsError as exc:
            raise error(str(exc)) from None
    if held and previous != info:
        if not overwrite:
            raise error(f"--out {out} holds the output of another run ({_describe_change(previous, info)}); "
                        "pass --overwrite to replace it, or choose another --out")
        _remove_previous_outputs(out)
    elif held and overwrite:
        _remove_previous_outputs(out)
    elif (held and listing is not None and isinstance(finished, dict) and finished.get("listing") == listing
          and isinstance(finished.get("summary"), dict) and _outputs_present(out)):
        return dict(finished["summary"])
    write_atomic(info_p, (json.dumps(info, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    return None


def record_complete(out: Path, info: dict, listing: str, summary: dict) -> None:
    """Mark the run recorded in ``out``'s :data:`RUN_INFO` as finished on the inputs ``listing``,
    with its ``summary`` (what a rerun reports as ``already complete``)."""
    info = json.loads(json.dumps(text_safe(info), sort_keys=True))
    info["finished"] = {"listing": listing, "summary": json.loads(json.dumps(text_safe(summary)))}
    write_atomic(out / RUN_INFO, (json.dumps(info, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def finish_run(out: Path, info: dict, listing_fp: str, summary: dict, stats: Counter, evidence: Counter,
               aligned: bool, seen: int, n_items: int) -> dict:
    """The end of an ``align``/``mask`` run on ``summary`` (which has ``files``, ``ok``,
    ``failed``, ``seen``, ``skipped`` and an empty ``hints`` list): with ``aligned`` it gains
    ``unverified`` (``stats["unverified"]``, the crops kept without a checked fit); the run's
    hint goes into ``hints`` (crops kept unverified with ``aligned``,
    :func:`maskkit.pipeline.unverified.unverified_hint`; otherwise a forgotten ``--aligned``,
    :func:`maskkit.pipeline.hints.forgotten_aligned_hint` of the summed ``evidence``); the
    accounting is asserted (``files == n_items == ok + failed``, ``seen == files + skipped``,
    ``seen`` the listing's) and the run is recorded complete (:func:`record_complete`).

    Returns:
        ``summary``.
    """
    from maskkit.pipeline.hints import forgotten_aligned_hint
    from maskkit.pipeline.unverified import unverified_hint
    from maskkit.util.names import display_name

    if aligned:
        summary["unverified"] = stats["unverified"]
        hint = unverified_hint(stats["unverified"], stats["files"], display_name(str(out)))
    else:
        hint = forgotten_aligned_hint({**evidence, "files": stats["files"]})
    if hint:
        summary["hints"].append(hint)
    assert summary["files"] == n_items == summary["ok"] + summary["failed"], "accounting broken"
    assert summary["seen"] == seen == summary["files"] + summary["skipped"], "accounting broken"
    record_complete(out, info, listing_fp, summary)
    (out / PROGRESS).unlink(missing_ok=True)  # finished: a rerun finds the run complete, not resumable
    return summary


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



def rounded(a, nd: int = 3) -> list:
    """``a`` as nested lists of floats rounded to ``nd`` decimals (manifest lines)."""
    return np.round(np.asarray(a, dtype=np.float64), nd).tolist()


#: ``--jobs 0`` (the default: "as many as pay off") of ``align``, ``mask`` and ``synth`` starts one
#: worker process per this many input files, up to the cores and the identities there are; fewer files run in this process. A worker
#: pays for its start-up (a process, the imports, the dlib model: about 1.3 CPU-seconds measured
#: with ``benchmarks/synth_bench.py``'s one-input runs) before it saves anything: two workers beat
#: one process only above ``2 * 1.3 s / t`` files at ``t`` seconds a file, 370 files at the
#: fastest rate measured (``--aligned``, about 7 ms a crop); 500 a worker leaves a margin of 2.7.
FILES_PER_WORKER = 500


def auto_workers(files: int, chunks: int, cores: int | None = None) -> int:
    """Worker processes for ``--jobs 0``: one per :data:`FILES_PER_WORKER` files, at most one per
    core and per chunk of work (``synth``: per identity), at least 1 (1 = no pool: the work runs in this process, so a
    small job is never slower than one worker)."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(cores, chunks, files // FILES_PER_WORKER))


def run_chunks(work: Callable[..., list], items: Sequence, jobs: int, max_chunk: int, args: tuple = (),
               local: tuple = (), chunk: int = 0) -> tuple[Iterator[list], int]:
    """Map ``work(chunk_items, *args)`` over chunks of ``items``, results in input order.

    Args:
        work: module-level function ``work(items, *args, *local) -> list`` (one result per
            item); it must load its own models when ``local`` is not given (once per worker).
        items: the inputs.
        jobs: worker processes; ``0`` = as many as pay off (:func:`auto_workers`). Capped at the
            number of inputs.
        max_chunk: largest chunk when ``chunk`` is 0 (the automatic size aims at 4 chunks per
            worker).
        args: arguments sent to every task (the config, ...).
        local: extra arguments passed only when the work runs in this process (one job), so
            the caller's already loaded models are reused; pool workers load their own.
        chunk: files per task (``0`` = automatic).

    Returns:
        ``(generator of per-chunk result lists, jobs actually used)``.
    """
    jobs = jobs if jobs > 0 else auto_workers(len(items), len(items))
    jobs = max(1, min(jobs, len(items) or 1))
    chunk = chunk or max(1, min(max_chunk, len(items) // (jobs * 4) or 1))
    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    if jobs == 1:
        return (work(c, *args, *local) for c in chunks), jobs
    from joblib import Parallel, delayed

    from maskkit.util.outcome import quiet_pool_tracker, worker_ignores_interrupts

    # Ctrl-C: the parent stops the pool and says what is kept; the workers stay silent, and so
    # does the pool's resource tracker cleaning up after a stopped run
    quiet_pool_tracker()
    return Parallel(n_jobs=jobs, backend="loky", return_as="generator", initializer=worker_ignores_interrupts)(
        delayed(work)(c, *args) for c in chunks), jobs
