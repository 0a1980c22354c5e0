"""The mask stage: draw masks on every face of every image, in place (``maskkit mask``).

``maskkit mask --src photos/ --out masked/`` is the MaskTheFace use case: each output image is
the input with a mask drawn on each selected face, mirroring the input tree. Accounting is the
same as ``maskkit align``: ``files == ok + failed``; every input is either written (with one
``manifest.jsonl`` line per face, carrying the render parameters needed to redraw the mask) or
listed in ``failures.jsonl`` with a reason (``no_face``, ``decode_error``, ``cannot_fit``, ...).
A face that cannot carry a mask in an image where others can is written unmasked and recorded
in the manifest with ``masked: false`` and its reason; when that reason is ``bad_landmarks`` (the
68 points are not on the face, :mod:`maskkit.face.fit_check`) the face is also a ``rejected.jsonl``
line (:data:`maskkit.pipeline.runner.REJECTED`, as in ``align`` and ``synth``) and counts as
``faces_rejected``; the others (``cannot_fit``) count as ``faces_unfit``.

Randomness is seeded per file and face (``--seed``, the input path's bytes, the face index), so
a rerun -- with any number of workers -- draws the same masks.

Output names are decided for the whole run before any worker writes
(:func:`maskkit.pipeline.naming.plan_output_names`): ``x.png`` and ``x.bmp`` (both PNG outputs)
become ``x_png.png`` and ``x_bmp.png``, the ``--coverage`` file of ``x.png`` never takes the name
of a real input ``x.mask.png``, and no two names differ only in case. Every file under
``--src`` that is not an input is in ``skipped.jsonl`` with a reason.
"""
from __future__ import annotations

import hashlib
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from maskkit.io.image_io import DEFAULT_MAX_PIXELS

FACE_POLICIES = ("all", "largest", "central")


class MaskError(RuntimeError):
    """The run cannot proceed (bad arguments, unwritable output, missing model)."""


@dataclass
class MaskConfig:
    """Configuration of one ``maskkit mask`` run.

    Attributes:
        src: input folder (walked recursively) or one image.
        out: output folder (mirrors the input tree).
        style: a style of :data:`maskkit.render.STYLES` or ``random``.
        colour: a colour of the style's palette (:data:`maskkit.render.PALETTES`, what ``synth``
            draws from) or ``random`` (drawn from the palette, seeded).
        texture: one of :data:`maskkit.render.TEXTURES` (cloth masks come in all; the others are
            plain) or ``random``.
        seed: base seed; each face's generator is derived from (seed, path, face index).
        detector: detector backend name (``hog`` default).
        detector_opts: backend options.
        faces: ``all`` (default) | ``largest`` | ``central``.
        aligned: inputs are ArcFace crops: landmarks in the whole image, no detection.
        jobs: worker processes (0 = all cores).
        max_pixels: refuse images above this many pixels (checked before decoding: ``too_large``).
        quality: JPEG quality for JPEG outputs.
        coverage: also write ``<stem>.mask.png`` (8-bit coverage, 255 = mask).
        progress: show the progress bar and summary table.
        overwrite: replace the outputs of a different, earlier run found in ``out`` instead
            of refusing.
    """

    src: Path
    out: Path
    style: str = "random"
    seed: int = 0
    colour: str = "random"
    texture: str = "random"
    detector: str = "hog"
    detector_opts: dict = field(default_factory=dict)
    faces: str = "all"
    aligned: bool = False
    jobs: int = 1
    max_pixels: int = DEFAULT_MAX_PIXELS
    quality: int = 95
    coverage: bool = False
    progress: bool = True
    overwrite: bool = False


def face_rng(seed: int, rel: str, face: int) -> np.random.Generator:
    """The generator for one face: stable across runs, platforms and worker counts.

    ``rel`` is hashed as its file-name bytes (``os.fsencode``; the UTF-8 bytes of a valid name),
    so a name that is not UTF-8 seeds as well as any other."""
    from maskkit.util.names import name_bytes

    h = int.from_bytes(hashlib.sha256(name_bytes(rel)).digest()[:8], "little")
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, h & 0xFFFFFFFF, h >> 32, int(face)])


def out_ext(rel: str) -> str:
    """The extension of an input's masked output: JPEG (under any of its extensions) and PNG keep
    theirs; bmp/webp/tif come out as PNG."""
    from maskkit.io.sources import JPEG_EXTENSIONS

    suffix = PurePosixPath(rel).suffix
    return suffix if suffix.lower() in JPEG_EXTENSIONS | {".png"} else ".png"


def output_names(rels: list[str], coverage: bool) -> dict[str, str]:
    """``{rel: output path}`` for every input (relative to ``--out``): the input's own path, or
    another when two inputs would write one file (:func:`maskkit.pipeline.naming.plan_output_names`;
    with ``coverage`` the ``<stem>.mask.png`` files take part)."""
    from maskkit.pipeline.naming import plan_output_names
    from maskkit.pipeline.runner import RESERVED

    bases = plan_output_names(rels, out_ext, extras=(".mask.png",) if coverage else (), reserved=RESERVED)
    return {rel: bases[rel] + out_ext(rel) for rel in rels}


def _write(path: Path, rgb_or_gray: np.ndarray, quality: int, alpha: np.ndarray | None = None) -> None:
    """Encode as JPEG (``.jpg`` and its aliases) or PNG with PIL and write atomically; a PNG gets
    ``alpha`` (``(H, W)`` uint8) as its transparency when given."""
    import io

    from PIL import Image

    from maskkit.io.sources import JPEG_EXTENSIONS
    from maskkit.util.files import write_atomic

    buf = io.BytesIO()
    im = Image.fromarray(rgb_or_gray)
    if alpha is not None and path.suffix.lower() not in JPEG_EXTENSIONS:
        im = Image.fromarray(np.dstack([rgb_or_gray, alpha]))
    if path.suffix.lower() in JPEG_EXTENSIONS:
        im.save(buf, format="JPEG", quality=quality)
    else:
        im.save(buf, format="PNG")
    write_atomic(path, buf.getvalue())


def mask_file(item, detector, renderer, cfg: MaskConfig, out_rel: str | None = None) -> dict:
    """Mask every selected face of one input and write it to ``out_rel`` (under ``cfg.out``;
    default: the input's own path with :func:`out_ext`); never raises for bad input.

    Returns:
        ``{"src", "records": [...], "failure": None | {"src", "reason", "detail"}, "faces": int,
        "rejected": [rejected.jsonl lines]}`` (``rejected``: the faces left unmasked because
        their landmarks failed the check, with ``src``, ``out``, ``face``, ``reason``, ``detail``,
        ``box``, ``score``, ``landmark_check``).
    """
    from maskkit.face.selection import aligned_face, find_faces
    from maskkit.face.crop_check import check_aligned_crop
    from maskkit.io.image_io import ImageError, alpha_of, load_image
    from maskkit.io.sources import JPEG_EXTENSIONS
    from maskkit.pipeline.hints import crop_evidence
    from maskkit.pipeline.runner import coverage_rel, safe_target
    from maskkit.pipeline.runner import rounded as _r
    from maskkit.pipeline.unverified import crop_failure, crop_record
    from maskkit.render import CannotFit
    from maskkit.util.names import name_fields
    from maskkit.util.outcome import OutputFull, stops_run

    rec = {"src": item.rel, "records": [], "failure": None, "faces": 0, "rejected": []}
    src_fields = item.fields()  # display name (+ src_bytes when the name is not UTF-8)
    if out_rel is None:
        out_rel = (PurePosixPath(item.rel).parent / PurePosixPath(item.rel).stem).as_posix() + out_ext(item.rel)

    def fail(reason, detail=""):
        rec["records"], rec["rejected"] = [], []  # the failures.jsonl line accounts for the input
        rec["failure"] = {**src_fields, "reason": reason, "detail": detail}
        return rec

    if item.error:
        return fail(item.error, item.detail)
    try:
        try:
            rgb = load_image(item.path, max_pixels=cfg.max_pixels)
        except ImageError as exc:
            return fail(exc.reason, exc.detail)
        h, w = rgb.shape[:2]
        cc = None
        # only the faces the policy keeps are landmarked (and their landmarks checked)
        if cfg.aligned:
            crop = check_aligned_crop(rgb)
            bad = crop_failure(crop)  # the check's failure, or an unverified face turned in-plane
            if bad is not None:
                return fail(*bad)
            faces = [aligned_face(rgb)]
            cc = crop_record(crop)  # template / detected / unverified (manifest.jsonl, unverified.jsonl)
        else:
            faces = find_faces(detector, rgb, cfg.faces)
            # for the forgotten --aligned hint (maskkit.pipeline.hints)
            rec["evidence"] = crop_evidence(rgb.shape, [f.landmarks68 for f in faces if f.fit is None or f.fit.ok],
                                            no_face=not faces)
        if not faces:
            return fail("no_face", f"no face found ({cfg.detector} detector)")
        cov = np.zeros((h, w), np.float32)
        img = rgb
        reasons = []
        for k, f in enumerate(faces):
            r = {**src_fields, **name_fields(out_rel, "out"), "face": k, "box": _r(f.box, 2),
                 "score": None if f.score is None else round(float(f.score), 4),
                 "landmarks68": _r(f.landmarks68, 2)}
            if cc is not None:
                r["crop_check"] = cc
            if f.fit is not None:
                r["landmark_check"] = f.fit.as_dict()
                if not f.fit.ok:  # a mask on points that are not on the face is a wrong sample
                    r.update(masked=False, style=None, params=None, reason="bad_landmarks", detail=f.fit.detail)
                    reasons.append(f"face {k}: bad_landmarks ({f.fit.detail})")
                    rec["records"].append(r)
                    rec["rejected"].append({**src_fields, **name_fields(out_rel, "out"), "face": k,
                                            "reason": "bad_landmarks", "detail": f.fit.detail, "box": r["box"],
                                            "score": r["score"], "landmark_check": r["landmark_check"]})
                    continue
            try:  # a face cut by the image edge (which align keeps) gets the visible part of its mask
                res = renderer.render(img, f.landmarks68, cfg.style, face_rng(cfg.seed, item.rel, k),
                                      colour=_chosen(cfg.colour), texture=_chosen(cfg.texture), edge="draw")
            except CannotFit as exc:
                r.update(masked=False, style=None, params=None, reason=exc.reason, detail=exc.detail)
                reasons.append(f"face {k}: {exc.reason} ({exc.detail})")
            else:
                img = res.image
                np.maximum(cov, res.alpha, out=cov)
                res.params["seed"] = {"base": int(cfg.seed), "face": k, "derivation": "maskkit.pipeline.mask.face_rng"}
                r.update(masked=True, style=res.params["style"], params=res.params,
                         coverage=round(float(res.alpha.sum()), 1))
            rec["records"].append(r)
        if not any(r["masked"] for r in rec["records"]):
            why = {r.get("reason") for r in rec["records"]}
            unfit = sum(r.get("reason") != "bad_landmarks" for r in rec["records"])
            fail("bad_landmarks" if why == {"bad_landmarks"} else "cannot_fit", "; ".join(reasons))
            if unfit:  # the summary's "faces the mask cannot fit" counts them (also when resumed)
                rec["failure"]["faces_unfit"] = unfit
            return rec
        target = Path(cfg.out) / out_rel
        try:
            # an input's transparency stays in a PNG output (the faces were found on it composited on white)
            alpha = alpha_of(item.path, max_pixels=cfg.max_pixels) if not out_rel.lower().endswith(
                tuple(JPEG_EXTENSIONS)) else None
            _write(target := safe_target(Path(cfg.out), out_rel), img, cfg.quality, alpha)
            if cfg.coverage:
                _write(target := safe_target(Path(cfg.out), coverage_rel(out_rel)),
                       np.clip(cov * 255 + 0.5, 0, 255).astype(np.uint8), cfg.quality)
        except OSError as exc:
            if stops_run(exc):  # no space, read-only, ...: the run stops (one line), not this input
                raise OutputFull.of(exc, target) from None
            raise
        rec["faces"] = sum(r["masked"] for r in rec["records"])
    except (OSError, ValueError) as exc:
        return fail("write_error", str(exc))
    except OutputFull:
        raise  # the output folder cannot take more: the run stops
    except Exception as exc:  # noqa: BLE001 - one bad file must never end the run
        return fail("internal_error", f"{type(exc).__name__}: {exc} | "
                    f"{traceback.format_exc(limit=3).strip().splitlines()[-1]}")
    return rec


def _chosen(value: str) -> str | None:
    return None if value == "random" else value


def _mask_chunk(items, cfg: MaskConfig, names: dict[str, str], detector=None, renderer=None) -> list:
    from maskkit.face.detect import get_detector
    from maskkit.render import MaskRenderer

    if detector is None and not cfg.aligned:
        detector = get_detector(cfg.detector, **cfg.detector_opts)
    renderer = renderer or MaskRenderer()  # templates load once per worker
    return [mask_file(it, detector, renderer, cfg, names[it.rel]) for it in items]


def run_mask(cfg: MaskConfig) -> dict:
    """Run ``maskkit mask``; returns the summary (``seen``, ``files``, ``ok``, ``failed``,
    ``skipped``, ``faces`` (masked), ``faces_rejected`` (unmasked, landmarks not on the face:
    ``rejected.jsonl``) and ``rejected_by_reason``, ``faces_unfit`` (unmasked, the mask cannot
    fit: in written images and in failed ones, whose ``failures.jsonl`` line counts them), ``errors``, ``styles``, ``seconds``, ``img_per_s``, ``hints`` (a forgotten
    ``--aligned``, or with ``--aligned`` crops kept unverified, printed after the table,
    :mod:`maskkit.pipeline.hints`, :mod:`maskkit.pipeline.unverified`), ``unverified`` (with
    ``--aligned``: crops kept without a checked fit, listed in ``unverified.jsonl``);
    ``already_complete: True`` when ``out`` already held this finished run).

    Raises:
        MaskError: the run cannot proceed.
        maskkit.util.outcome.NoInputError: ``src`` holds no input file (exit status 2).
    """
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
    from maskkit.pipeline.runner import coverage_rel
    from maskkit.pipeline.unverified import summary_value
    from maskkit.util.files import existing_names
    from maskkit.util.outcome import stop_guard
    from maskkit.render import STYLES, MaskRenderer
    from maskkit.util.progress import print_hints, print_summary

    src, out = Path(cfg.src), Path(cfg.out)
    if not src.exists():
        raise MaskError(f"--src {src} does not exist")
    if cfg.style not in STYLES + ("random",):
        raise MaskError(f"--style must be one of {STYLES + ('random',)}, got {cfg.style!r}")
    try:
        renderer = MaskRenderer()
    except FileNotFoundError as exc:
        raise MaskError(str(exc)) from exc
    why = renderer.choice_error(cfg.style, _chosen(cfg.colour), _chosen(cfg.texture))
    if why:  # e.g. --style surgical --colour yellow: one line naming the palette, before any file is read
        raise MaskError(why)
    if cfg.faces not in FACE_POLICIES:
        raise MaskError(f"--faces must be one of {FACE_POLICIES}")
    if cfg.detector not in DETECTORS:
        raise MaskError(f"--detector must be one of {DETECTORS}, got {cfg.detector!r}")
    t0 = time.perf_counter()
    listing = list_sources(src, exclude=[out])
    require_inputs(listing, src)
    detector = prepare_run(src, out, cfg.detector, cfg.detector_opts, cfg.aligned, MaskError)
    info = {
        "command": "maskkit mask", "src": str(src.resolve()), "style": cfg.style, "seed": int(cfg.seed),
        "detector": cfg.detector, "detector_opts": dict(cfg.detector_opts), "faces": cfg.faces,
        "aligned": cfg.aligned, "quality": cfg.quality, "coverage": cfg.coverage,
        # chosen ones only: the run record of a run with neither matches the one of before they existed
        **{k: v for k, v in (("colour", cfg.colour), ("texture", cfg.texture)) if v != "random"},
        **({"max_pixels": cfg.max_pixels} if cfg.max_pixels != DEFAULT_MAX_PIXELS else {}),
        # faces cut by the image edge are masked (were refused): a run of before is another run
        "edge_faces": "drawn",
    }
    fp = listing_fingerprint(listing)
    items = listing.items
    tally = Tally(len(items))
    # one run at a time into --out (a second, started meanwhile, is refused); then Ctrl-C, SIGTERM or
    # a full disk: one line, what is kept, how to resume
    with lock_out(out, "maskkit mask", MaskError), stop_guard(tally.kept, lambda: out):
        names = output_names([it.rel for it in items], cfg.coverage)
        planned = list(names.values()) + ([coverage_rel(n) for n in names.values()] if cfg.coverage else [])
        done = check_previous_run(out, info, cfg.overwrite, MaskError, listing=fp,
                                  taken=lambda: existing_names(out, planned))
        if done is not None:
            return dict(done, already_complete=True)

        log_skipped(listing, src)
        resume = resume_point(out, info, fp)  # an unfinished run of this command: keep what it did
        todo = items[resume.done:] if resume is not None else items
        gen, jobs = run_chunks(_mask_chunk, todo, cfg.jobs, max_chunk=16, args=(cfg, names),
                               local=(detector, renderer))
        styles: Counter = Counter()
        evidence: Counter = Counter()

        def count(rec: dict, stats: Counter) -> None:
            evidence.update(rec.get("evidence", {}))
            if rec["failure"] is not None:  # an image none of whose faces took a mask
                stats["faces_unfit"] += rec["failure"].get("faces_unfit", 0)
            for r in rec["records"]:  # empty for a failure
                if r["masked"]:
                    stats["faces"] += 1
                    styles[r["style"]] += 1
                elif r.get("reason") != "bad_landmarks":  # those are rejected.jsonl lines: faces_rejected
                    stats["faces_unfit"] += 1

        stats, reasons, rejected = write_accounting(out, gen, len(items), "mask", cfg.progress, count,
                                                    skipped=skipped_records(listing.skipped),
                                                    header={"info": info, "listing": fp}, resume=resume, tally=tally)
        seconds = time.perf_counter() - t0
        summary = {
            "seen": stats["seen"], "files": stats["files"], "ok": stats["ok"], "failed": stats["failed"],
            "skipped": stats["skipped"], "faces": stats["faces"],
            "faces_unfit": stats["faces_unfit"], "faces_rejected": stats["faces_rejected"],
            "rejected_by_reason": dict(sorted(rejected.items())), "errors": dict(sorted(reasons.items())),
            "styles": {s: styles.get(s, 0) for s in STYLES}, "seconds": round(seconds, 3),
            "img_per_s": round(len(todo) / seconds, 2) if seconds > 0 else 0.0, "jobs": jobs, "hints": [],
        }
        if resume is not None:
            summary["resumed"] = resume.done
        # unverified crops (--aligned) or a forgotten --aligned hinted at; accounting checked; recorded
        finish_run(out, info, fp, summary, stats, evidence, cfg.aligned, listing.seen, len(items))
    if cfg.progress:
        rows = {
            "seen": summary["seen"], "files": summary["files"], "ok": summary["ok"],
            "failed": summary["errors"] or {}, "skipped (not inputs)": summary["skipped"],
            "faces masked": summary["faces"], "faces rejected": summary["rejected_by_reason"] or {},
            "faces the mask cannot fit": summary["faces_unfit"],
            "styles": summary["styles"], "seconds": seconds, "img/s": summary["img_per_s"], "workers": jobs,
        }
        if summary.get("resumed"):  # inputs a stopped run of the same command had done (kept, not redone)
            rows["resumed (kept)"] = summary["resumed"]
        if cfg.aligned:
            rows["kept unverified"] = summary_value(summary["unverified"])
        print_summary(f"maskkit mask -> {out}", rows)
        print_hints(summary["hints"])
    return summary
