"""The align stage: detect, landmark and ArcFace-align every face under a folder.

Library entry points:

* :func:`process_file` -- the per-file work (decode -> detect -> landmarks -> align), a plain
  function reusable by ``maskkit synth``; it never raises for bad input, it returns a
  :class:`FileResult` with a failure ``reason``.
* :func:`run_align` -- the whole command for an :class:`AlignConfig`: walks ``src``, runs a joblib
  process pool over chunks of files (one detector per worker), writes crops, ``manifest.jsonl``
  and ``failures.jsonl``, shows a progress bar and returns the summary.

Accounting invariant: ``files == ok + failed`` and ``seen == files + skipped``; every input is
either in ``manifest.jsonl`` (one line per written face) or in ``failures.jsonl`` (one line per
input with a reason), and every other file under ``src`` is in ``skipped.jsonl`` with a reason.
A face of a written input that is left out (``--faces all``: its landmarks fail the check) is one
``rejected.jsonl`` line (:data:`maskkit.pipeline.runner.REJECTED`), counted as ``faces_rejected``.
Output names are decided for the whole run before any worker writes
(:func:`maskkit.pipeline.naming.plan_output_names`).
"""
from __future__ import annotations

import dataclasses
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maskkit.io.image_io import DEFAULT_MAX_PIXELS
from maskkit.io.sources import SourceItem

FACE_POLICIES = ("largest", "all", "central")


#: A face whose fitted 5 points sit further than this (RMS, in 112-px template units) from the
#: template is rejected as ``bad_landmarks`` (dlib's predictor on a non-face / extreme pose).
MAX_TEMPLATE_RMS = 20.0


class AlignError(RuntimeError):
    """The run cannot proceed (bad arguments, unwritable output, missing model)."""


@dataclass
class AlignConfig:
    """Configuration of one ``maskkit align`` run.

    Attributes:
        src: input folder (walked recursively) or a single image.
        out: output folder.
        size: aligned ``(H, W)``: (112, 112), (112, 96) or a square.
        detector: backend name (see :data:`maskkit.face.detect.DETECTORS`).
        detector_opts: backend options (e.g. ``{"upsample": 2}``).
        faces: ``largest`` | ``all`` | ``central``.
        jobs: worker processes (``0`` = all CPU cores).
        format: ``images`` or ``shards``.
        aligned: inputs are already ArcFace crops: skip detection, landmarks in the whole image.
        max_pixels: refuse images above this many pixels (checked before decoding).
        quality: JPEG quality of written crops.
        chunk: files per pool task (``0`` = automatic).
        progress: show the progress bar and summary table.
        overwrite: replace the outputs of a different, earlier run found in ``out`` instead
            of refusing.
    """

    src: Path
    out: Path
    size: tuple[int, int] = (112, 112)
    detector: str = "hog"
    detector_opts: dict = field(default_factory=dict)
    faces: str = "largest"
    jobs: int = 1
    format: str = "images"
    aligned: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    quality: int = 95
    chunk: int = 0
    progress: bool = True
    overwrite: bool = False


@dataclass
class FileResult:
    """Outcome of :func:`process_file` for one input.

    Attributes:
        item: the input.
        faces: ``[(Aligned, Face, index), ...]`` for every selected face (empty on failure).
        rejected: ``[(Face, index, reason, detail), ...]`` for every selected face left out
            (``bad_landmarks``: the landmark check failed, non-finite points, a degenerate fit,
            or 5 points off the template); with ``faces`` empty the file fails with their details.
        reason: ``None`` on success, else a failure token (``no_face``, ``decode_error``, ...).
        detail: explanation of ``reason``.
        shape: decoded image shape (``None`` when decoding failed).
        timings: seconds spent in ``decode``, ``detect``, ``landmarks``, ``warp``.
        crop_check: with ``aligned``, how the crop check kept the crop
            (:func:`maskkit.pipeline.unverified.crop_record`: ``how``, ``rms``, ``spread``).
    """

    item: SourceItem
    faces: list = field(default_factory=list)
    rejected: list = field(default_factory=list)
    reason: str | None = None
    detail: str = ""
    shape: tuple | None = None
    timings: dict = field(default_factory=dict)
    crop_check: dict | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None and bool(self.faces)


def _template_rms(aligned, size) -> float:
    from maskkit.face.align import arcface_template

    t = arcface_template(size)
    return float(np.sqrt(((aligned.landmarks5 - t) ** 2).sum(1).mean()) * 112.0 / size[0])


def process_file(item: SourceItem, detector, cfg) -> FileResult:
    """Decode, detect, landmark and align one input; never raises for bad input.

    Args:
        item: the input (``item.error`` set means it is already known to be unreadable).
        detector: a :class:`maskkit.face.base.Detector` (ignored when ``cfg.aligned``; may be None then).
        cfg: any object with attributes ``size`` ((H, W)), ``faces`` (policy), ``aligned`` (bool)
            and ``max_pixels``; missing ones default to (112, 112), ``largest``, False, 100 MP.

    Returns:
        :class:`FileResult`: aligned faces in policy order with their detection, or a reason.
    """
    from maskkit.face.align import align_face
    from maskkit.face.selection import aligned_face, find_faces
    from maskkit.face.crop_check import check_aligned_crop
    from maskkit.io.image_io import ImageError, load_image
    from maskkit.pipeline.unverified import crop_failure, crop_record

    size = tuple(getattr(cfg, "size", (112, 112)))
    policy = getattr(cfg, "faces", "largest")
    res = FileResult(item=item)
    tm = res.timings
    if item.error:
        res.reason, res.detail = item.error, item.detail
        return res
    try:
        t0 = time.perf_counter()
        try:
            rgb = load_image(item.path, max_pixels=getattr(cfg, "max_pixels", DEFAULT_MAX_PIXELS))
        except ImageError as exc:
            res.reason, res.detail = exc.reason, exc.detail
            return res
        finally:
            tm["decode"] = time.perf_counter() - t0
        res.shape = rgb.shape
        if getattr(cfg, "aligned", False):
            t0 = time.perf_counter()
            crop = check_aligned_crop(rgb, size)  # size/aspect, a face, on the template
            bad = crop_failure(crop)  # the check's failure, or an unverified face turned in-plane
            if bad is not None:
                tm["landmarks"] = time.perf_counter() - t0
                res.reason, res.detail = bad
                return res
            faces = [aligned_face(rgb)]
            res.crop_check = crop_record(crop)  # template / detected / unverified (manifest.jsonl)
            tm["landmarks"] = time.perf_counter() - t0
        else:
            faces = find_faces(detector, rgb, policy, tm)
        if not faces:
            res.reason, res.detail = "no_face", f"no face found ({getattr(detector, 'name', 'aligned')} detector)"
            return res
        t0 = time.perf_counter()
        for k, f in enumerate(faces):
            if f.fit is not None and not f.fit.ok:
                res.rejected.append((f, k, "bad_landmarks", f.fit.detail))
                continue
            if not np.all(np.isfinite(f.landmarks68)):
                res.rejected.append((f, k, "bad_landmarks", "non-finite landmarks"))
                continue
            try:
                al = align_face(rgb, f.landmarks68, size)
            except ValueError as exc:
                res.rejected.append((f, k, "bad_landmarks", str(exc)))
                continue
            rms = _template_rms(al, size)
            if rms > MAX_TEMPLATE_RMS:
                res.rejected.append((f, k, "bad_landmarks", f"5 points {rms:.1f} px RMS from the template after fitting"))
                continue
            res.faces.append((al, f, k))
        tm["warp"] = time.perf_counter() - t0
        if not res.faces:
            res.reason, res.detail = "bad_landmarks", "; ".join(f"face {k}: {d}" for _, k, _, d in res.rejected)
    except Exception as exc:  # noqa: BLE001 - one bad file must never end the run
        res.faces, res.rejected = [], []
        res.reason = "internal_error"
        res.detail = f"{type(exc).__name__}: {exc} | {traceback.format_exc(limit=3).strip().splitlines()[-1]}"
    return res


def output_names(items: list[SourceItem], multi: bool = False) -> dict[str, str]:
    """Output base name (POSIX, relative to ``--out``, no extension) for each input ``rel``.

    ``a/b.png`` -> ``a/b``; crops are ``<base>.jpg`` (``<base>_<k>.jpg`` with ``multi``, i.e.
    ``--faces all``). Names never collide under casefold, with each other or with the
    accounting files: the rules of :func:`maskkit.pipeline.naming.plan_output_names` (``x.jpg``
    and ``x.png`` become ``x_jpg`` and ``x_png``; a folded name that a real input already has
    gets ``~2``).
    """
    from maskkit.pipeline.naming import plan_output_names
    from maskkit.pipeline.runner import RESERVED

    return plan_output_names([it.rel for it in items], lambda rel: ".jpg", multi=multi, reserved=RESERVED)


def _align_chunk(items: list[SourceItem], cfg: AlignConfig, names: dict[str, str], detector=None) -> list[dict]:
    """Worker task: process and write a chunk of files; returns one small record per file."""
    from maskkit.face.detect import get_detector
    from maskkit.io.image_io import encode_jpeg
    from maskkit.pipeline.hints import crop_evidence
    from maskkit.pipeline.runner import rejected_line, safe_target
    from maskkit.pipeline.runner import rounded as _r
    from maskkit.util.files import write_atomic
    from maskkit.util.names import display_name, name_fields
    from maskkit.util.outcome import OutputFull, stops_run

    if detector is None and not cfg.aligned:
        detector = get_detector(cfg.detector, **cfg.detector_opts)  # once per worker process
    out_root = Path(cfg.out)
    results = []
    for item in items:
        res = process_file(item, detector, cfg)
        rec = {"src": item.rel, "identity": item.identity, "records": [], "failure": None,
               "timings": dict(res.timings), "faces_found": len(res.faces)}
        if not cfg.aligned and res.shape is not None:  # for the forgotten --aligned hint
            rec["evidence"] = crop_evidence(res.shape, [f.landmarks68 for _, f, _ in res.faces],
                                            no_face=res.reason == "no_face")
        src_fields = item.fields()  # display name (+ src_bytes when the name is not UTF-8)
        if res.ok:
            t0 = time.perf_counter()
            rel_out = names[item.rel]
            try:
                multi = cfg.faces == "all"
                for al, face, k in res.faces:
                    rel_out = f"{names[item.rel]}_{k}.jpg" if multi else f"{names[item.rel]}.jpg"
                    write_atomic(safe_target(out_root, rel_out), encode_jpeg(al.image, cfg.quality))
                    rec["records"].append({
                        **src_fields, "identity": display_name(item.identity), "face": k,
                        **name_fields(rel_out, "out"),
                        "size": [int(cfg.size[0]), int(cfg.size[1])],
                        "box": _r(face.box, 2), "score": None if face.score is None else round(float(face.score), 4),
                        "landmarks5": _r(al.landmarks5), "landmarks68": _r(al.landmarks68),
                        "matrix": _r(al.matrix, 6),
                        **({"landmark_check": face.fit.as_dict()} if face.fit is not None else {}),
                        **({"crop_check": res.crop_check} if res.crop_check is not None else {}),
                    })
            except (OSError, ValueError) as exc:
                if stops_run(exc):  # no space, read-only, ...: the run stops (one line), not this input
                    raise OutputFull.of(exc, out_root / rel_out) from None
                rec["records"] = []
                rec["failure"] = {**src_fields, "reason": "write_error", "detail": str(exc)}
            rec["timings"]["encode"] = time.perf_counter() - t0
            # faces left out of a written input: rejected.jsonl (maskkit.pipeline.runner.REJECTED)
            rec["rejected"] = [rejected_line(src_fields, display_name(item.identity), face, k, reason, detail)
                               for face, k, reason, detail in res.rejected]
        else:
            rec["failure"] = {**src_fields, "reason": res.reason or "no_face", "detail": res.detail}
        results.append(rec)
    return results


def _run_shards(cfg: AlignConfig) -> dict:
    """``--format shards``: delegate to ``maskkit.pipeline.synth.run_synth`` with ratio 0 (unmasked)."""
    from maskkit.pipeline.synth import SynthConfig, SynthError, run_synth  # noqa: PLC0415

    # the same detector options as --format images: an empty dict means the backend's own defaults
    # (SynthConfig would replace None by its faster max_side 640 and find other faces)
    scfg = SynthConfig(src=Path(cfg.src), out=Path(cfg.out), ratio=0.0, size=tuple(cfg.size),
                       detector=cfg.detector, detector_opts=dict(cfg.detector_opts), faces=cfg.faces,
                       jobs=cfg.jobs, aligned=cfg.aligned, max_pixels=cfg.max_pixels, quality=cfg.quality,
                       progress=cfg.progress, overwrite=cfg.overwrite, progress_desc="align",
                       command="maskkit align --format shards")
    try:
        result = run_synth(scfg)
    except SynthError as exc:
        raise AlignError(str(exc)) from exc
    manifest = result.manifest
    inputs = manifest.get("inputs", {})
    reasons = dict(inputs.get("failed_by_reason") or {})
    seconds = float(result.seconds)
    files = int(inputs.get("files") or 0)
    errors = {k: v for k, v in sorted(reasons.items()) if k != "no_face"}
    summary = {"seen": int(inputs.get("seen", files)), "files": files, "ok": int(inputs.get("ok") or 0),
               "failed": int(inputs.get("failed") or 0), "skipped": int(inputs.get("skipped") or 0),
               "faces": int(manifest.get("num_samples") or 0), "no_face": int(reasons.get("no_face", 0)),
               "faces_rejected": int(manifest.get("faces_rejected") or 0),
               "rejected_by_reason": dict(manifest.get("faces_rejected_by_reason") or {}),
               "errors": errors, "seconds": round(seconds, 3),
               "img_per_s": round(files / seconds, 2) if seconds > 0 else 0.0,
               "format": "shards", "out": str(cfg.out), "hints": list(manifest.get("hints", []))}
    if cfg.aligned:
        summary["unverified"] = int(manifest.get("unverified") or 0)
    if result.already_complete:
        summary["already_complete"] = True
    elif cfg.progress:
        from maskkit.util.progress import print_hints, print_summary

        print_summary(f"maskkit align -> {cfg.out}", _summary_rows(summary, shards=len(manifest.get("shards", []))))
        print_hints(summary["hints"])
    return summary


def run_align(cfg: AlignConfig) -> dict:
    """Run ``maskkit align`` for a config.

    Returns:
        Summary dict: ``seen`` (= ``files + skipped``), ``files``, ``ok``, ``failed``, ``skipped``,
        ``faces``, ``faces_rejected`` (``rejected.jsonl`` lines: faces left out of written inputs)
        and ``rejected_by_reason``, ``no_face``, ``errors`` (reason -> count, excluding ``no_face``), ``seconds``,
        ``img_per_s``, ``timings`` (total seconds per stage), ``hints`` (lines printed after the
        summary: a forgotten ``--aligned``, :mod:`maskkit.pipeline.hints`; with ``aligned``, crops
        kept unverified, :mod:`maskkit.pipeline.unverified`), ``unverified`` (with ``aligned``:
        crops kept without a checked fit, listed in ``unverified.jsonl``); ``already_complete: True`` when
        ``out`` already held this finished run (the summary is that run's).

    Raises:
        AlignError: the run cannot proceed (bad arguments, unwritable output, missing model).
        maskkit.util.outcome.NoInputError: ``src`` holds no input file (exit status 2).
    """
    from maskkit.face.align import parse_size
    from maskkit.face.detect import DETECTORS
    from maskkit.io.sources import list_sources, log_skipped, require_inputs, skipped_records
    from maskkit.pipeline.accounting import Tally, resume_point, write_accounting
    from maskkit.pipeline.runner import (
        check_previous_run,
        finish_run,
        listing_fingerprint,
        lock_out,
        prepare_run,
        run_chunks,
    )
    from maskkit.util.files import existing_names
    from maskkit.util.outcome import stop_guard
    from maskkit.util.progress import print_hints, print_summary

    src, out = Path(cfg.src), Path(cfg.out)
    if not src.exists():
        raise AlignError(f"--src {src} does not exist")
    if cfg.faces not in FACE_POLICIES:
        raise AlignError(f"--faces must be one of {FACE_POLICIES}, got {cfg.faces!r}")
    if cfg.detector not in DETECTORS:
        raise AlignError(f"--detector must be one of {DETECTORS}, got {cfg.detector!r}")
    if cfg.format not in ("images", "shards"):
        raise AlignError(f"--format must be images or shards, got {cfg.format!r}")
    try:
        cfg = dataclasses.replace(cfg, size=parse_size("x".join(map(str, cfg.size))))
    except ValueError as exc:
        raise AlignError(str(exc)) from exc
    if cfg.format == "shards":
        return _run_shards(cfg)
    t_start = time.perf_counter()
    listing = list_sources(src, exclude=[out])
    require_inputs(listing, src)
    detector = prepare_run(src, out, cfg.detector, cfg.detector_opts, cfg.aligned, AlignError)
    info = {
        "command": "maskkit align", "src": str(src.resolve()), "format": cfg.format, "size": list(cfg.size),
        "detector": cfg.detector, "detector_opts": dict(cfg.detector_opts), "faces": cfg.faces,
        "aligned": cfg.aligned, "max_pixels": cfg.max_pixels, "quality": cfg.quality,
    }
    fp = listing_fingerprint(listing)
    items = listing.items
    tally = Tally(len(items))
    # one run at a time into --out (a second, started meanwhile, is refused); then Ctrl-C, SIGTERM or
    # a full disk: one line, what is kept, how to resume
    with lock_out(out, "maskkit align", AlignError), stop_guard(tally.kept, lambda: out):
        names = output_names(items, multi=cfg.faces == "all")
        done = check_previous_run(out, info, cfg.overwrite, AlignError, listing=fp,
                                  taken=lambda: existing_names(out, [b + ".jpg" for b in names.values()],
                                                               numbered=cfg.faces == "all"))
        if done is not None:
            return dict(done, already_complete=True)

        log_skipped(listing, src)
        resume = resume_point(out, info, fp)  # an unfinished run of this command: keep what it did
        todo = items[resume.done:] if resume is not None else items
        gen, jobs = run_chunks(_align_chunk, todo, cfg.jobs, max_chunk=32, args=(cfg, names), local=(detector,),
                               chunk=cfg.chunk)
        timings: Counter = Counter()
        evidence: Counter = Counter()

        def count(rec: dict, stats: Counter) -> None:
            timings.update(rec["timings"])
            evidence.update(rec.get("evidence", {}))
            stats["faces"] += len(rec["records"])  # empty for a failure

        stats, reasons, rejected = write_accounting(out, gen, len(items), "align", cfg.progress, count,
                                                    skipped=skipped_records(listing.skipped),
                                                    header={"info": info, "listing": fp}, resume=resume, tally=tally)
        seconds = time.perf_counter() - t_start
        errors = {k: v for k, v in sorted(reasons.items()) if k != "no_face"}
        summary = {
            "seen": stats["seen"], "files": stats["files"], "ok": stats["ok"], "failed": stats["failed"],
            "skipped": stats["skipped"], "faces": stats["faces"],
            "faces_rejected": stats["faces_rejected"], "rejected_by_reason": dict(sorted(rejected.items())),
            "no_face": reasons.get("no_face", 0), "errors": errors, "seconds": round(seconds, 3),
            "img_per_s": round((len(todo)) / seconds, 2) if seconds > 0 else 0.0,
            "jobs": jobs, "timings": {k: round(v, 3) for k, v in timings.items()},
            "hints": [],
        }
        if resume is not None:
            summary["resumed"] = resume.done
        # unverified crops (--aligned) or a forgotten --aligned hinted at; accounting checked; recorded
        finish_run(out, info, fp, summary, stats, evidence, cfg.aligned, listing.seen, len(items))
    if cfg.progress:
        print_summary(f"maskkit align -> {out}", _summary_rows(summary, jobs=jobs))
        print_hints(summary["hints"])
    return summary


def _summary_rows(summary: dict, **extra) -> dict:
    """The end-of-run table of ``maskkit align`` (both formats)."""
    rows = {"seen": summary["seen"], "files": summary["files"], "ok": summary["ok"],
            "failed": summary["failed"], "skipped (not inputs)": summary["skipped"],
            "faces written": summary["faces"],
            # faces left out of written inputs (rejected.jsonl); a finished run of an older maskkit has none
            "faces rejected": summary.get("rejected_by_reason") or {},
            "no face": summary["no_face"], "errors": summary["errors"] or {},
            "seconds": summary["seconds"], "img/s": summary["img_per_s"]}
    if summary.get("resumed"):  # inputs a stopped run of the same command had done (kept, not redone)
        rows["resumed (kept)"] = summary["resumed"]
    if "unverified" in summary:  # --aligned (maskkit.pipeline.unverified)
        from maskkit.pipeline.unverified import summary_value

        rows["kept unverified"] = summary_value(summary["unverified"])
    if "jobs" in extra:
        rows["workers"] = extra["jobs"]
    if "shards" in extra:
        rows["shards"] = extra["shards"]
    return rows
