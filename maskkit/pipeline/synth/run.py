"""``run_synth``: the driver that plans, dispatches, writes shards in one global order, and finishes the manifest."""
from __future__ import annotations

import sys
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

from maskkit import __version__
from maskkit.io.shard_verify import style_share_deviation
from maskkit.io.shards import FORMAT_NAME, FORMAT_VERSION, ShardSink
from maskkit.pipeline.synth.backends import _backend, _results
from maskkit.pipeline.synth.config import ALGORITHM_VERSION, ALL_STYLES, JOURNAL, SynthConfig, SynthError
from maskkit.pipeline.synth.journal import (
    claim_out_folder,
    _fingerprint,
    _Journal,
    _jsonl,
    _prepare_out,
)
from maskkit.io.sources import skipped_records
from maskkit.pipeline.hints import EVIDENCE_KEYS
from maskkit.pipeline.runner import REJECTED
from maskkit.pipeline.synth.plan import class_display_names, list_sources_for, plan_chunks
from maskkit.util.names import display_name, name_b64
from maskkit.pipeline.synth.seeding import next_style_offset
from maskkit.pipeline.synth.summary import ratio_departure, ratio_hint
from maskkit.pipeline.unverified import UNVERIFIED_FILE, unverified_hint
from maskkit.util.files import OutputBusyError, OutputLock, write_bytes_atomic, write_json_atomic
from maskkit.util.outcome import close_quietly, stop_guard


@dataclass
class SynthResult:
    """Outcome of :func:`run_synth`.

    Attributes:
        out: the shard folder.
        manifest: the manifest written.
        seconds: wall-clock seconds of this invocation.
        resumed: samples that were already in complete shards from an earlier, killed run.
        already_complete: the folder already held this exact run (nothing was recomputed).
        stage_seconds: summed per-stage worker seconds (decode, detect -- or landmarks with
            ``aligned``, where nothing is detected --, render, align, encode) plus ``write`` (driver).
        files_done: input files this invocation processed (a resumed run's earlier identities
            are not counted): the files its speed is measured over.
        workers: worker processes this invocation used (1: in this process).
    """

    out: Path
    manifest: dict
    seconds: float
    resumed: int = 0
    already_complete: bool = False
    stage_seconds: dict = field(default_factory=dict)
    files_done: int = 0
    workers: int = 1


def _merge(total: dict, st: dict) -> None:
    for k in ("files", "ok", "failed", "faces", "samples", "masked", "mask_skips", "faces_rejected", "unverified",
              "unverified_masked") + EVIDENCE_KEYS:
        total[k] = total.get(k, 0) + st.get(k, 0)
    for k in ("failed_by_reason", "rejected_by_reason", "styles", "seconds", "crop_check"):
        d = total.setdefault(k, {})
        for kk, v in st.get(k, {}).items():
            d[kk] = d.get(kk, 0) + v


def _progress(total: int, initial: int, enabled: bool, desc: str = "synth"):
    """A progress bar over input files (img/s and ETA); a resumed run starts at ``initial``."""
    if not enabled:
        return nullcontext(None)
    from maskkit.util.progress import progress_bar

    # shown on a pipe or log file too (like align and mask): a long run under nohup must report progress
    return progress_bar(total=total, desc=desc, unit="img", initial=initial, disable=False)


def run_synth(cfg: SynthConfig) -> SynthResult:
    """Run (or resume, or recognise as finished) a synthesis into ``cfg.out``.

    Args:
        cfg: the run's options.

    Returns:
        :class:`SynthResult` with the manifest.

    Raises:
        SynthError: bad options, or ``out`` holds a different run (without ``overwrite``).
    """
    t_start = time.perf_counter()
    cfg.validate()
    if not cfg.aligned:  # fail fast, with the detector's own message, before any work is sent out
        from maskkit.face.detect import make_detector

        try:
            make_detector(cfg.detector, **cfg.detector_opts)
        except Exception as exc:  # noqa: BLE001 - DetectorUnavailable, bad options
            raise SynthError(f"detector {cfg.detector!r} cannot run: {exc}") from exc
    if cfg.out.exists() and not cfg.out.is_dir():
        raise SynthError(f"--out {cfg.out} exists and is not a folder")
    from maskkit.pipeline.runner import check_out_kind

    check_out_kind(cfg.out, "shards", SynthError)
    if cfg.aligned:  # a plain install takes the dlib path: say once how to get the fast one
        from maskkit.face.detect import fast_path_note

        note = fast_path_note()
        if note:
            print(note, file=sys.stderr)
    listing = list_sources_for(cfg)
    if not listing[0]:
        from maskkit.util.names import display_name
        from maskkit.util.outcome import NoInputError, no_input_message

        raise NoInputError(no_input_message(display_name(str(cfg.src)),
                                            [(display_name(s.rel), s.reason) for s in listing[2]]))
    from maskkit.io.sources import SourceListing, log_skipped

    log_skipped(SourceListing([], listing[2]), cfg.src)  # one warning per reason; all in skipped.jsonl
    claim_out_folder(cfg)  # a folder of the user's: refused (or, --overwrite, written beside, never over)
    # one writer per folder: a second run while this one writes is refused (released even on kill -9)
    lock = OutputLock(cfg.out, " ".join((cfg.command or "maskkit synth").split()[:2]))
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OutputBusyError as exc:
        raise SynthError(str(exc)) from None
    except OSError as exc:
        raise SynthError(f"--out {cfg.out} is not writable: {exc.strerror or exc}") from exc
    with lock:
        kept = _Kept(len(listing[0]), cfg.out)
        # Ctrl-C or a full disk: one line saying what is kept (complete shards) and that rerunning resumes
        with stop_guard(kept.line, kept.where):
            return _run_locked(cfg, t_start, listing, kept)


class _Kept:
    """What a stopped synth run keeps: its complete shards and the inputs they hold in full."""

    def __init__(self, total: int, out: Path) -> None:
        self.total = total
        self.shards: list[dict] = []  # the complete shards (renamed into place)
        self.logged: list[tuple[int, int]] = []  # (end sample, files) of each identity in the journal
        self.writing: Path = out  # the shard being written when the run stopped, else the folder

    def line(self) -> str:
        written = sum(int(r["samples"]) for r in self.shards)
        files = sum(n for end, n in self.logged if end <= written)
        if not self.shards:
            return f"no shard was complete yet (0 of {self.total:,} inputs kept)"
        return (f"{len(self.shards):,} complete shard{'s' if len(self.shards) > 1 else ''} ({written:,} samples; "
                f"{files:,} of {self.total:,} inputs) kept")

    def where(self) -> Path:
        """The shard being written, else the folder (an ``OSError`` on a write names no file)."""
        return self.writing


def _run_locked(cfg: SynthConfig, t_start: float, listing: tuple, kept: _Kept) -> SynthResult:
    items, classes, skipped = listing
    chunks = plan_chunks(items, classes)
    shown = class_display_names(classes)  # the class names as text (= classes when all are UTF-8)
    fp = _fingerprint(cfg, items)
    state = _prepare_out(cfg, fp, len(chunks), len(items))
    if isinstance(state, dict):  # a finished run: nothing is written, the preview neither
        return SynthResult(cfg.out, state, time.perf_counter() - t_start, already_complete=True)
    if cfg.preview is not None:  # claimed before any face is decoded, not found taken at the end
        from maskkit.util.files import OutputExistsError, claim_outputs

        try:
            claim_outputs([cfg.preview], cfg.overwrite, "a contact sheet")
        except OutputExistsError as exc:
            raise SynthError(str(exc)) from exc

    out = cfg.out
    jr = _Journal(out / JOURNAL)
    total: dict = {}
    per_class = {c: {"samples": 0, "masked": 0, "faces": 0} for c in shown}
    failures: list[dict] = []
    rejected: list[dict] = []  # rejected.jsonl: faces left out of files that gave samples
    unrecorded: list[str] = []  # identities resumed from a journal older than rejected.jsonl
    skips: list[dict] = []
    unverified: list[dict] = []
    shortfall: dict[str, int] = {}

    def absorb(entry: dict) -> None:
        st = entry["stats"]
        _merge(total, st)
        pc = per_class[entry["identity"]]
        pc["samples"] += st["samples"]
        pc["masked"] += st["masked"]
        pc["faces"] += st["faces"]
        if st.get("shortfall"):
            shortfall[entry["identity"]] = shortfall.get(entry["identity"], 0) + st["shortfall"]
        failures.extend(entry.get("failures", []))
        if "rejected" in entry:
            rejected.extend(entry["rejected"])
        else:  # journaled by a maskkit that did not record rejected faces: resumed, counted as unknown
            unrecorded.append(entry["identity"])
        skips.extend(entry.get("mask_skips", []))
        unverified.extend(entry.get("unverified", []))

    for e in state.chunk_entries:
        absorb(e)
    done_files = sum(len(c.items) for c in chunks[: state.start_chunk])
    # the resumed shards' records in the writer's key order (the journal stores them sorted), so a
    # resumed run's manifest.json is byte-identical to an uninterrupted run's
    shards = kept.shards = [{**{k: r[k] for k in ("name", "samples", "bytes", "sha256") if k in r}, **r}
                            for r in state.shards]
    kept.logged = [(e["end"], len(chunks[e["chunk"]].items)) for e in state.chunk_entries]

    def on_shard(rec: dict) -> None:
        shards.append(rec)
        jr.append({"shard": rec})

    t_write = 0.0
    end = state.chunk_entries[-1]["end"] if state.chunk_entries else 0
    skip = state.skip
    style_offset = state.style_offset  # leftover styles continue in class order (seeding.leftover_styles)
    todo = chunks[state.start_chunk:]
    hook = cfg.on_boundary
    sink = ShardSink(out, cfg.shard_samples, cfg.split, start_index=len(shards), on_shard=on_shard,
                                 on_event=hook)
    wcfg = cfg if hook is None else replace(cfg, on_boundary=None)  # the hook stays in the driver
    results = None
    try:
        with _backend(cfg, sum(len(c.items) for c in todo), len(todo)) as n_jobs, _progress(len(items), done_files, cfg.progress, cfg.progress_desc) as bar:
            results = _results(todo, wcfg, n_jobs, lambda: style_offset)  # read when each chunk is due
            for res in results:
                res = res.pick(style_offset)
                style_offset = next_style_offset(style_offset, res.stats.get("extra_styles", 0), len(cfg.styles))
                chunk = chunks[res.index]
                t0 = time.perf_counter()
                for s in res.samples:
                    if skip > 0:
                        skip -= 1
                        continue
                    sink.add(s)
                end += len(res.samples)
                entry = {"chunk": res.index, "identity": chunk.display or chunk.identity, "end": end,
                         "style_offset": style_offset, "stats": res.stats, "failures": res.failures,
                         "rejected": res.rejected, "mask_skips": res.mask_skips}
                if res.unverified:
                    entry["unverified"] = res.unverified
                jr.append(entry)
                kept.logged.append((end, len(chunk.items)))
                if hook is not None:
                    hook("chunk_logged", res.index)
                absorb(entry)
                t_write += time.perf_counter() - t0
                if bar is not None:
                    bar.update(len(chunk.items))
            t0 = time.perf_counter()
            sink.close()
            t_write += time.perf_counter() - t0
    except BaseException:
        if sink.writing is not None:
            kept.writing = sink.writing
        sink.abort()
        close_quietly(results)  # the pool stops here, without joblib's note on stderr
        raise
    finally:
        jr.close()

    # ---- finish: failure logs, then the manifest (last, atomically), then drop the journal
    write_bytes_atomic(out / "failures.jsonl", _jsonl(failures))
    write_bytes_atomic(out / REJECTED, _jsonl(rejected))
    write_bytes_atomic(out / "skipped.jsonl", _jsonl(skipped_records(skipped)))
    if skips:
        write_bytes_atomic(out / "mask_skips.jsonl", _jsonl(skips))
    else:
        (out / "mask_skips.jsonl").unlink(missing_ok=True)
    if unverified:  # --aligned crops kept without a checked fit (maskkit.pipeline.unverified)
        write_bytes_atomic(out / UNVERIFIED_FILE, _jsonl(unverified))
    else:
        (out / UNVERIFIED_FILE).unlink(missing_ok=True)
    styles = {s: int(total.get("styles", {}).get(s, 0)) for s in cfg.styles}
    for s, v in total.get("styles", {}).items():
        styles.setdefault(s, int(v))
    man = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION,
        "image_size": list(cfg.size), "template": "arcface",
        "classes": shown,
        "num_samples": int(total.get("samples", 0)), "num_masked": int(total.get("masked", 0)),
        "ratio": cfg.ratio, "paired": cfg.paired, "seed": cfg.seed,
        "styles": styles,
        "per_class": per_class,
        "shards": shards,
        "inputs": {"files": int(total.get("files", 0)), "ok": int(total.get("ok", 0)),
                   "failed": int(total.get("failed", 0)),
                   "failed_by_reason": dict(sorted(total.get("failed_by_reason", {}).items())),
                   # extensions: seen = ok + failed + skipped (skipped.jsonl)
                   "seen": int(total.get("files", 0)) + len(skipped), "skipped": len(skipped),
                   "skipped_by_reason": dict(sorted(Counter(s.reason for s in skipped).items()))},
        "created_by": f"maskkit {__version__}",
        "command": cfg.command or "maskkit synth (library call)",
        # extensions (backward compatible)
        "num_faces": int(total.get("faces", 0)),
        "rounding": "half_up",
        "mask_skips": int(total.get("mask_skips", 0)),
        "faces_rejected": len(rejected),  # rejected.jsonl lines
        "faces_rejected_by_reason": dict(sorted(Counter(r["reason"] for r in rejected).items())),
        "mask_shortfall": shortfall,
        "style_share_max_dev": round(style_share_deviation(styles), 6),
        "aligned_input": cfg.aligned, "detector": None if cfg.aligned else cfg.detector,
        "faces": cfg.faces, "jpeg_quality": cfg.quality, "shard_samples": cfg.shard_samples,
        "split": cfg.split, "bytes": int(sum(r["bytes"] for r in shards)),
        "fingerprint": fp, "algorithm_version": ALGORITHM_VERSION,
        "config": cfg.fingerprint_fields(),  # the options it was made with (a refusal names those that differ)
        # --aligned crops kept without a checked fit, listed in unverified.jsonl (maskkit.pipeline.unverified)
        "unverified": int(total.get("unverified", 0)), "unverified_masked": int(total.get("unverified_masked", 0)),
    }
    if cfg.aligned:  # how the crop check kept each face: template / detected / unverified
        man["crop_check"] = {k: int(v) for k, v in sorted(total.get("crop_check", {}).items())}
    class_bytes = {d: b for c, d in zip(classes, shown) if (b := name_b64(c)) is not None}
    if unrecorded and cfg.faces == "all" and not cfg.aligned:  # (only --faces all keeps a file and leaves a face out)
        man["rejected_unrecorded"] = unrecorded
        print(f"warning: {len(unrecorded)} identities were finished by a maskkit that did not record rejected "
              f"faces; {REJECTED} may miss some of theirs (rerun with --overwrite for a full record)", file=sys.stderr)
    if class_bytes:  # class names that are not UTF-8: their exact bytes (docs/FORMAT.md)
        man["classes_bytes"] = class_bytes
    hints = []
    if not cfg.aligned:  # the forgotten --aligned (printed with the summary: maskkit.util.progress.print_hints)
        from maskkit.pipeline.hints import forgotten_aligned_hint

        hints.append(forgotten_aligned_hint(total))
    else:
        hints.append(unverified_hint(man["unverified"], man["inputs"]["files"], display_name(str(out)),
                                     man["unverified_masked"] if cfg.ratio > 0 else None))
    dep = ratio_departure(man)  # the overall masked share more than a point off --ratio: say why
    if dep is not None:
        man["ratio_departure"] = dep
        hints.append(ratio_hint(dep, cfg.paired))
    if any(hints):
        man["hints"] = [h for h in hints if h]
    if hook is not None:
        hook("before_manifest", -1)
    write_json_atomic(out / "manifest.json", man)
    if hook is not None:
        hook("after_manifest", -1)
    (out / JOURNAL).unlink(missing_ok=True)
    stage = {k: round(float(v), 4) for k, v in total.get("seconds", {}).items()}
    stage["write"] = round(t_write, 4)
    if cfg.preview is not None:
        try:
            from maskkit.pipeline.preview import (
                preview,  # the mask helper's contact sheet
            )

            preview(out, cfg.preview, styles=cfg.styles or ALL_STYLES, seed=cfg.seed)
        except Exception as exc:  # noqa: BLE001 - the dataset is done; the sheet is a bonus
            print(f"warning: could not draw the preview: {exc}", file=sys.stderr)
    return SynthResult(out, man, time.perf_counter() - t_start, resumed=state.written, stage_seconds=stage,
                       files_done=len(items) - done_files, workers=n_jobs)
