"""The mask stage: draw masks on every face of every image, in place (``maskkit mask``).

``maskkit mask --src photos/ --out masked/`` is the MaskTheFace use case: each output image is
the input with a mask drawn on each selected face, mirroring the input tree. Accounting is the
same as ``maskkit align``: ``files == ok + failed``; every input is either written (with one
``manifest.jsonl`` line per face, carrying the render parameters needed to redraw the mask) or
listed in ``failures.jsonl`` with a reason (``no_face``, ``decode_error``, ``cannot_fit``, ...).
A face that cannot carry a mask in an image where others can is written unmasked and recorded
in the manifest with ``masked: false`` and its reason.

Randomness is seeded per file and face (``--seed``, the input path, the face index), so a rerun
-- with any number of workers -- draws the same masks.
"""
from __future__ import annotations

import hashlib
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

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
        seed: base seed; each face's generator is derived from (seed, path, face index).
        detector: detector backend name (``hog`` default).
        detector_opts: backend options.
        faces: ``all`` (default) | ``largest`` | ``central``.
        aligned: inputs are ArcFace crops: landmarks in the whole image, no detection.
        jobs: worker processes (0 = all cores).
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
    detector: str = "hog"
    detector_opts: dict = field(default_factory=dict)
    faces: str = "all"
    aligned: bool = False
    jobs: int = 1
    quality: int = 95
    coverage: bool = False
    progress: bool = True
    overwrite: bool = False


def face_rng(seed: int, rel: str, face: int) -> np.random.Generator:
    """The generator for one face: stable across runs, platforms and worker counts."""
    h = int.from_bytes(hashlib.sha256(rel.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, h & 0xFFFFFFFF, h >> 32, int(face)])


def _out_rel(rel: str) -> str:
    p = PurePosixPath(rel)
    suffix = p.suffix.lower()
    if suffix not in (".jpg", ".jpeg", ".png"):
        p = p.with_suffix(".png")  # bmp/webp/tif come out as PNG
    return p.as_posix()


def _write(path: Path, rgb_or_gray: np.ndarray, quality: int) -> None:
    """Encode as JPEG (``.jpg``/``.jpeg``) or PNG with PIL and write atomically."""
    import io

    from PIL import Image

    from maskkit.util.files import write_atomic

    buf = io.BytesIO()
    im = Image.fromarray(rgb_or_gray)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        im.save(buf, format="JPEG", quality=quality)
    else:
        im.save(buf, format="PNG")
    write_atomic(path, buf.getvalue())


def mask_file(item, detector, renderer, cfg: MaskConfig) -> dict:
    """Mask every selected face of one input and write it; never raises for bad input.

    Returns:
        ``{"src", "records": [...], "failure": None | {"src", "reason", "detail"}, "faces": int}``.
    """
    from maskkit.face.detect import aligned_face, find_faces
    from maskkit.io.image_io import ImageError, load_image
    from maskkit.pipeline.runner import coverage_rel, safe_target
    from maskkit.pipeline.runner import rounded as _r
    from maskkit.render import CannotFit

    rec = {"src": item.rel, "records": [], "failure": None, "faces": 0}

    def fail(reason, detail=""):
        rec["records"] = []
        rec["failure"] = {"src": item.rel, "reason": reason, "detail": detail}
        return rec

    if item.error:
        return fail(item.error, item.detail)
    try:
        try:
            rgb = load_image(item.path)
        except ImageError as exc:
            return fail(exc.reason, exc.detail)
        h, w = rgb.shape[:2]
        # only the faces the policy keeps are landmarked
        faces = [aligned_face(rgb)] if cfg.aligned else find_faces(detector, rgb, cfg.faces)
        if not faces:
            return fail("no_face", f"no face found ({cfg.detector} detector)")
        out_rel = _out_rel(item.rel)
        cov = np.zeros((h, w), np.float32)
        img = rgb
        reasons = []
        for k, f in enumerate(faces):
            r = {"src": item.rel, "out": out_rel, "face": k, "box": _r(f.box, 2),
                 "score": None if f.score is None else round(float(f.score), 4),
                 "landmarks68": _r(f.landmarks68, 2)}
            try:
                res = renderer.render(img, f.landmarks68, cfg.style, face_rng(cfg.seed, item.rel, k))
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
            return fail("cannot_fit", "; ".join(reasons))
        _write(safe_target(Path(cfg.out), out_rel), img, cfg.quality)
        if cfg.coverage:
            _write(safe_target(Path(cfg.out), coverage_rel(out_rel)),
                   np.clip(cov * 255 + 0.5, 0, 255).astype(np.uint8), cfg.quality)
        rec["faces"] = sum(r["masked"] for r in rec["records"])
    except (OSError, ValueError) as exc:
        return fail("write_error", str(exc))
    except Exception as exc:  # noqa: BLE001 - one bad file must never end the run
        return fail("internal_error", f"{type(exc).__name__}: {exc} | "
                    f"{traceback.format_exc(limit=3).strip().splitlines()[-1]}")
    return rec


def _mask_chunk(items, cfg: MaskConfig, detector=None, renderer=None) -> list:
    from maskkit.face.detect import get_detector
    from maskkit.render import MaskRenderer

    if detector is None and not cfg.aligned:
        detector = get_detector(cfg.detector, **cfg.detector_opts)
    renderer = renderer or MaskRenderer()  # templates load once per worker
    return [mask_file(it, detector, renderer, cfg) for it in items]


def run_mask(cfg: MaskConfig) -> dict:
    """Run ``maskkit mask``; returns the summary (``files``, ``ok``, ``failed``, ``faces``,
    ``errors``, ``styles``, ``seconds``, ``img_per_s``).

    Raises:
        MaskError: the run cannot proceed.
    """
    from maskkit.face.detect import DETECTORS
    from maskkit.io.sources import iter_sources
    from maskkit.pipeline.runner import (
        check_previous_run,
        prepare_run,
        run_chunks,
        write_accounting,
    )
    from maskkit.render import STYLES, MaskRenderer
    from maskkit.util.progress import print_summary

    src, out = Path(cfg.src), Path(cfg.out)
    if not src.exists():
        raise MaskError(f"--src {src} does not exist")
    if cfg.style not in STYLES + ("random",):
        raise MaskError(f"--style must be one of {STYLES + ('random',)}, got {cfg.style!r}")
    if cfg.faces not in FACE_POLICIES:
        raise MaskError(f"--faces must be one of {FACE_POLICIES}")
    if cfg.detector not in DETECTORS:
        raise MaskError(f"--detector must be one of {DETECTORS}, got {cfg.detector!r}")
    detector = prepare_run(src, out, cfg.detector, cfg.detector_opts, cfg.aligned, MaskError)
    check_previous_run(out, {
        "command": "maskkit mask", "src": str(src.resolve()), "style": cfg.style, "seed": int(cfg.seed),
        "detector": cfg.detector, "detector_opts": dict(cfg.detector_opts), "faces": cfg.faces,
        "aligned": cfg.aligned, "quality": cfg.quality, "coverage": cfg.coverage,
    }, cfg.overwrite, MaskError)
    try:
        renderer = MaskRenderer()
    except FileNotFoundError as exc:
        raise MaskError(str(exc)) from exc

    t0 = time.perf_counter()
    items = iter_sources(src, exclude=[out])
    gen, jobs = run_chunks(_mask_chunk, items, cfg.jobs, max_chunk=16, args=(cfg,), local=(detector, renderer))
    styles: Counter = Counter()

    def count(rec: dict, stats: Counter) -> None:
        for r in rec["records"]:  # empty for a failure
            if r["masked"]:
                stats["faces"] += 1
                styles[r["style"]] += 1
            else:
                stats["faces_unfit"] += 1

    stats, reasons = write_accounting(out, gen, len(items), "mask", cfg.progress, count)
    seconds = time.perf_counter() - t0
    summary = {
        "files": stats["files"], "ok": stats["ok"], "failed": stats["failed"], "faces": stats["faces"],
        "faces_unfit": stats["faces_unfit"], "errors": dict(sorted(reasons.items())),
        "styles": {s: styles.get(s, 0) for s in STYLES}, "seconds": round(seconds, 3),
        "img_per_s": round(stats["files"] / seconds, 2) if seconds > 0 else 0.0, "jobs": jobs,
    }
    assert summary["files"] == len(items) == summary["ok"] + summary["failed"], "accounting broken"
    if cfg.progress:
        print_summary(f"maskkit mask -> {out}", {
            "files": summary["files"], "ok": summary["ok"], "faces masked": summary["faces"],
            "faces not fitted": summary["faces_unfit"], "failed": summary["errors"] or {},
            "styles": summary["styles"], "seconds": seconds, "img/s": summary["img_per_s"], "workers": jobs,
        })
    return summary
