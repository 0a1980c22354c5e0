"""Synth worker phases (one identity per call, run in a worker process; models load once per worker).

phase 1 decode/detect/fit, phase 2 choose and render the masks (exact ratio), phase 3 align, encode.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from maskkit.io.shards import Sample, expected_masked
from maskkit.pipeline.synth.config import SynthConfig
from maskkit.pipeline.synth.plan import Chunk, ChunkResult, InputItem
from maskkit.pipeline.synth.seeding import (
    _rng,
    balanced_styles,
    leftover_styles,
    render_seed,
    sample_key,
)
from maskkit.util.names import name_bytes, name_fields

#: Per-process model cache (detector, renderer): models load once per worker process.
_WORKER: dict = {}


def _models(cfg: SynthConfig):
    """Detector and renderer, created once per worker process (cached by their options)."""
    det = ren = None
    if not cfg.aligned:
        key = ("det", cfg.detector, json.dumps(cfg.detector_opts, sort_keys=True))
        det = _WORKER.get(key)
        if det is None:
            from maskkit.face.detect import make_detector

            det = _WORKER[key] = make_detector(cfg.detector, **cfg.detector_opts)
    if cfg.ratio > 0:
        ren = _WORKER.get("ren")
        if ren is None:
            from maskkit.render import MaskRenderer

            ren = _WORKER["ren"] = MaskRenderer()
    return det, ren


@dataclass
class _Face:
    key: str
    rel: str
    face: int
    score: float | None
    crop: np.ndarray  # source-resolution region holding the face (or the aligned crop)
    lm: np.ndarray    # 68 landmarks in crop coordinates
    plain: Any = None  # maskkit.face.align.Aligned (the identity transform for aligned input)
    render: Any = None  # MaskResult
    style: str | None = None
    crop_check: dict | None = None  # --aligned: how the crop check kept it (maskkit.pipeline.unverified)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return round(v, 5) if np.isfinite(v) else None
    if isinstance(x, (np.bool_,)):
        return bool(x)
    return x


def _pts(a: np.ndarray | None) -> list | None:
    if a is None:
        return None
    return np.round(np.asarray(a, dtype=np.float64), 3).tolist()


def _source_region(shape, lm: np.ndarray, matrix: np.ndarray, out_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Pixel box of the source image that the aligned output and the mask need (clipped)."""
    h, w = out_hw
    inv = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], dtype=np.float64) @ inv.T
    pts = np.vstack([corners, lm])
    x0, y0 = pts.min(0)
    x1, y1 = pts.max(0)
    pad = 0.1 * max(x1 - x0, y1 - y0) + 4
    H, W = shape[:2]
    return (max(0, int(np.floor(x0 - pad))), max(0, int(np.floor(y0 - pad))),
            min(W, int(np.ceil(x1 + pad))), min(H, int(np.ceil(y1 + pad))))


def _read_input(item: InputItem, cfg: SynthConfig, rec_fh: dict) -> np.ndarray:
    from maskkit.io.image_io import decode_image, load_image

    if item.rec_key is None:
        return load_image(item.path, max_pixels=cfg.max_pixels)
    from maskkit.io.recordio import read_record_at, unpack_header

    f = rec_fh.get(item.path)
    if f is None:
        f = rec_fh[item.path] = open(item.path, "rb")
    rec = read_record_at(f, item.rec_offset)
    if rec is None:
        from maskkit.io.image_io import ImageError

        raise ImageError("read_error", f"record {item.rec_key} is past the end of the .rec")
    _, payload = unpack_header(rec)
    return decode_image(payload, max_pixels=cfg.max_pixels, name=item.rel)


def _phase1(chunk: Chunk, cfg: SynthConfig, det, tm: Counter) -> tuple[list[_Face], list[dict], dict, dict, list[dict]]:
    """Decode, find one face per file (or all), fit the alignment.

    Returns faces, failures, file->nfaces, without ``aligned`` the summed
    :func:`maskkit.pipeline.hints.crop_evidence` of the inputs (for the forgotten ``--aligned``
    hint: crop-sized inputs, those without a face, faces already on the template), and the
    ``rejected.jsonl`` lines (:func:`maskkit.pipeline.runner.rejected_line`): the faces left out
    of a file that gives samples (``--faces all``: ``bad_landmarks``, ``align_error``)."""
    from maskkit.face.align import Aligned, align_face, five_points
    from maskkit.face.selection import find_faces
    from maskkit.face.crop_check import check_aligned_crop
    from maskkit.io.image_io import ImageError
    from maskkit.pipeline.hints import EVIDENCE_KEYS, crop_evidence
    from maskkit.pipeline.runner import rejected_line
    from maskkit.pipeline.unverified import crop_failure, crop_record

    faces: list[_Face] = []
    failures: list[dict] = []
    rejected: list[dict] = []
    nfaces: dict[str, int] = {}
    rec_fh: dict = {}
    seen_keys: set[str] = set()
    evidence: Counter = Counter({k: 0 for k in EVIDENCE_KEYS})
    H, W = cfg.size
    try:
        for item in chunk.items:
            if item.error:
                failures.append({**name_fields(item.rel), "reason": item.error, "detail": item.detail})
                continue
            t0 = time.perf_counter()
            try:
                rgb = _read_input(item, cfg, rec_fh)
            except ImageError as exc:
                failures.append({**name_fields(item.rel), "reason": exc.reason, "detail": exc.detail})
                continue
            except Exception as exc:  # noqa: BLE001 - a bad file never stops the run
                failures.append({**name_fields(item.rel), "reason": "read_error", "detail": f"{type(exc).__name__}: {exc}"})
                continue
            finally:
                tm["decode"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            chosen: list = []  # the detections, in policy order (their index is the sample's face)
            bad: list = []  # (index, reason, detail) of the faces left out
            cc = None
            try:
                if cfg.aligned:
                    # size/aspect, a face, on the template; the crop comes back at (H, W)
                    # (insightface's 112x96 = the 112x112 crop's columns 8..104)
                    check = check_aligned_crop(rgb, (H, W))
                    failed = crop_failure(check)  # the check's failure, or an unverified face turned in-plane
                    if failed is not None:
                        failures.append({**name_fields(item.rel), "reason": failed[0], "detail": failed[1]})
                        continue
                    rgb = check.image
                    sel = [(0, None, check.landmarks68)]
                    cc = crop_record(check)  # template / detected / unverified, in the sample's JSON
                else:
                    chosen = find_faces(det, rgb, cfg.faces)  # landmarks checked (maskkit.face.fit_check)
                    bad = [(i, "bad_landmarks", f.fit.detail) for i, f in enumerate(chosen)
                           if f.fit is not None and not f.fit.ok]
                    sel = [(i, f.score, f.landmarks68) for i, f in enumerate(chosen) if f.fit is None or f.fit.ok]
                    if chosen and not sel:
                        evidence.update(crop_evidence(rgb.shape, [], no_face=False))
                        failures.append({**name_fields(item.rel), "reason": "bad_landmarks",
                                         "detail": "; ".join(f"face {i}: {d}" for i, _, d in bad)[:500]})
                        continue
            except Exception as exc:  # noqa: BLE001
                failures.append({**name_fields(item.rel), "reason": "detect_error", "detail": f"{type(exc).__name__}: {exc}"})
                continue
            finally:
                tm["landmarks" if cfg.aligned else "detect"] += time.perf_counter() - t0  # no detection with --aligned
            if not cfg.aligned:
                evidence.update(crop_evidence(rgb.shape, [lm for _, _, lm in sel], no_face=not sel))
            if not sel:
                failures.append({**name_fields(item.rel), "reason": "no_face", "detail": f"detector {cfg.detector} found no face"})
                continue
            t0 = time.perf_counter()
            errs = []
            got = 0
            for fi, score, lm in sel:
                lm = np.asarray(lm, dtype=np.float32)
                try:
                    if not np.all(np.isfinite(lm)):
                        raise ValueError("non-finite landmarks")
                    if cfg.aligned:
                        crop, lmc = np.ascontiguousarray(rgb), lm
                        plain = Aligned(crop, np.array([[1, 0, 0], [0, 1, 0]], np.float32), five_points(lm), lm)
                    else:
                        full = align_face(rgb, lm, size=cfg.size)
                        x0, y0, x1, y1 = _source_region(rgb.shape, lm, np.asarray(full.matrix, np.float64), cfg.size)
                        crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
                        lmc = lm - np.array([x0, y0], np.float32)
                        plain = None  # aligned in phase 3 from the crop
                except Exception as exc:  # noqa: BLE001
                    errs.append((fi, "align_error", f"{type(exc).__name__}: {exc}"))
                    continue
                key = sample_key(chunk.label, item.rel, fi)
                if key in seen_keys:  # a sha1 prefix clash inside one identity: stay unique, stay stable
                    key = f"{key}_{hashlib.sha1(name_bytes(item.rel)).hexdigest()[12:20]}"
                seen_keys.add(key)
                faces.append(_Face(key, item.rel, fi, None if score is None else float(score), crop, lmc, plain,
                                   crop_check=cc))
                got += 1
            tm["align"] += time.perf_counter() - t0
            if got == 0:
                failures.append({**name_fields(item.rel), "reason": "align_error",
                                 "detail": "; ".join(f"face {i}: {d}" for i, _, d in sorted(bad + errs))[:500]})
            else:
                nfaces[item.rel] = got
                # the faces left out of a file that gives samples: rejected.jsonl, never dropped silently
                rejected += [rejected_line(name_fields(item.rel), chunk.display or chunk.identity,
                                           chosen[i] if i < len(chosen) else None, i, why, d)
                             for i, why, d in sorted(bad + errs)]
    finally:
        for f in rec_fh.values():
            f.close()
    return faces, failures, nfaces, dict(evidence), rejected


def _walk(perm: list[int], start: int, queue: list[str], try_render, assign: dict[int, str],
          skips: list[tuple[int, str]]) -> int:
    """Give ``queue``'s styles, in order, to the faces of ``perm[start:]`` whose render succeeds
    (a failed face keeps no mask and the next face takes its style). Returns the next position."""
    qi, p = 0, start
    while qi < len(queue) and p < len(perm):
        i = perm[p]
        p += 1
        if try_render(i, queue[qi]):
            assign[i] = queue[qi]
            qi += 1
        else:
            skips.append((i, queue[qi]))
    return p


def process_chunk(chunk: Chunk, cfg: SynthConfig, style_offset: int | None = None) -> ChunkResult:
    """Turn one identity's inputs into its samples (pure: same chunk, config and offset, same bytes).

    Args:
        chunk: the identity's inputs.
        cfg: run options.
        style_offset: the run's leftover-style offset when this identity comes up
            (:func:`~maskkit.pipeline.synth.seeding.leftover_styles`). ``None`` (what the
            workers run, since the offset depends on the identities before this one): the
            result holds a variant for every offset (:meth:`ChunkResult.pick`); only the
            ``m % K`` leftover faces differ between variants, and their extra renders are the
            only extra work.

    Returns:
        :class:`ChunkResult` with samples in the final order, failures, mask skips, statistics
        (``extra_styles``: the leftover count ``m % K``) and per-stage seconds.
    """
    import cv2

    from maskkit.face.align import Aligned, align_face
    from maskkit.io.image_io import encode_jpeg
    from maskkit.pipeline.unverified import is_unverified

    det, ren = _models(cfg)
    tm: Counter = Counter()
    faces, failures, nfaces, crops, rejected = _phase1(chunk, cfg, det, tm)

    # ---- phase 2: which faces get which style (seeded by identity), render until m succeed:
    # m // K of each style (shuffled), then the m % K leftovers from the run's style offset
    n, k = len(faces), len(cfg.styles)
    m = expected_masked(cfg.ratio, n) if ren is not None else 0
    r = m % k if k else 0
    renders: dict[tuple[int, str], Any] = {}  # (face, style) -> MaskResult, or the skip record

    def try_render(i: int, style: str) -> bool:
        if (i, style) not in renders:
            f = faces[i]
            t0 = time.perf_counter()
            try:
                res = ren.render(f.crop, f.lm, style, np.random.default_rng(render_seed(cfg.seed, f.key)))
                if res.alpha is None or res.image.shape != f.crop.shape:
                    raise ValueError("renderer returned a result of the wrong shape")
            except Exception as exc:  # noqa: BLE001 - CannotFit, or anything: log, try the next face
                reason = getattr(exc, "reason", None) or type(exc).__name__
                res = {**name_fields(f.rel), "face": f.face, "key": f.key, "style": style, "reason": str(reason),
                       "detail": str(exc)[:300]}
            renders[(i, style)] = res
            tm["render"] += time.perf_counter() - t0
        return not isinstance(renders[(i, style)], dict)

    base: dict[int, str] = {}
    base_skips: list[tuple[int, str]] = []
    perm: list[int] = []
    pos = 0
    if m:
        rng = _rng(cfg.seed, "choose", chunk.identity)
        perm = [int(i) for i in rng.permutation(n)]
        pos = _walk(perm, 0, balanced_styles(m - r, cfg.styles, rng), try_render, base, base_skips)
    chosen: dict[int, tuple[dict[int, str], list[tuple[int, str]]]] = {}
    for o in (range(k) if style_offset is None and r else [style_offset or 0]):
        assign, skips = dict(base), list(base_skips)
        if r:
            _walk(perm, pos, leftover_styles(r, cfg.styles, o), try_render, assign, skips)
        chosen[o] = (assign, skips)

    # ---- phase 3: align and encode, in file order (each face once per style it gets in some variant)
    H, W = cfg.size
    per_face: dict[tuple[int, str | None], list[Sample]] = {}
    for i, f in enumerate(faces):
        plain_img = None
        for style in sorted({a.get(i) for a, _ in chosen.values()}, key=lambda x: (x is not None, x or "")):
            t0 = time.perf_counter()
            is_masked = style is not None
            res = renders[(i, style)] if is_masked else None
            if plain_img is None and (cfg.paired or not is_masked):
                plain = f.plain if f.plain is not None else align_face(f.crop, f.lm, size=cfg.size)
                plain_img = (plain, encode_jpeg(np.ascontiguousarray(plain.image), cfg.quality))
            mal = mask_u8 = None
            if is_masked:
                if cfg.aligned:
                    mal = Aligned(res.image, f.plain.matrix, f.plain.landmarks5, f.plain.landmarks68)
                    alpha = res.alpha
                else:
                    mal = align_face(res.image, f.lm, size=cfg.size)
                    alpha = cv2.warpAffine(np.asarray(res.alpha, np.float32), np.asarray(mal.matrix, np.float64),
                                           (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                           borderValue=0)
                mask_u8 = np.clip(np.rint(np.asarray(alpha, np.float32) * 255.0), 0, 255).astype(np.uint8)
            tm["align"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            # names as text: the display form (+ src_bytes for a name that is not UTF-8; docs/FORMAT.md)
            base_meta = {"label": chunk.label, "identity": chunk.display or chunk.identity, **name_fields(f.rel),
                         "face": f.face, "score": None if f.score is None else round(f.score, 5)}
            if f.crop_check is not None:  # --aligned only (algorithm 10): other sets keep version 9's bytes
                base_meta["crop_check"] = f.crop_check
            pkey, mkey = (f.key, f.key + "_m") if cfg.paired else (f.key, f.key)
            out: list[Sample] = []
            if cfg.paired or not is_masked:
                plain, jpg = plain_img
                meta = dict(base_meta, masked=False, style=None, mask=None, landmarks5=_pts(plain.landmarks5),
                            landmarks68=_pts(plain.landmarks68), twin=mkey if (cfg.paired and is_masked) else None)
                out.append(Sample(pkey, jpg, meta))
            if is_masked:
                params = _jsonable(dict(res.params or {}))
                params.setdefault("style", style)
                params["seed"] = render_seed(cfg.seed, f.key)
                meta = dict(base_meta, masked=True, style=style, mask=params, landmarks5=_pts(mal.landmarks5),
                            landmarks68=_pts(mal.landmarks68), twin=pkey if cfg.paired else None)
                png = None
                if cfg.mask_png:
                    ok, buf = cv2.imencode(".png", mask_u8)
                    png = buf.tobytes() if ok else None
                out.append(Sample(mkey, encode_jpeg(np.ascontiguousarray(mal.image), cfg.quality), meta, png))
            per_face[(i, style)] = out
            tm["encode"] += time.perf_counter() - t0
        f.crop = None  # free memory early
    skip_records = {key: v for key, v in renders.items() if isinstance(v, dict)}
    renders.clear()

    by_reason = Counter(fl["reason"] for fl in failures)
    for fl in failures:
        fl.setdefault("identity", chunk.display or chunk.identity)
    how = Counter(f.crop_check["how"] for f in faces if f.crop_check is not None)
    results = {}
    for o, (assign, skips) in chosen.items():
        samples = [s for i in range(n) for s in per_face[(i, assign.get(i))]]
        mask_skips = [dict(skip_records[key]) for key in skips]
        # --aligned crops kept without a checked fit: unverified.jsonl lines (maskkit.pipeline.unverified)
        unverified = [{**name_fields(f.rel), "identity": chunk.display or chunk.identity, "face": f.face,
                       "key": f.key, **f.crop_check, "masked": i in assign, "style": assign.get(i)}
                      for i, f in enumerate(faces) if is_unverified(f.crop_check)]
        stats = {
            **crops,
            "files": len(chunk.items), "ok": len(nfaces), "failed": len(failures),
            "failed_by_reason": dict(by_reason), "faces": n, "samples": len(samples),
            "faces_rejected": len(rejected), "rejected_by_reason": dict(Counter(r["reason"] for r in rejected)),
            "masked": len(assign), "styles": dict(Counter(assign[i] for i in sorted(assign))),
            "shortfall": m - len(assign), "extra_styles": r, "mask_skips": len(mask_skips),
            "unverified": len(unverified), "unverified_masked": sum(u["masked"] for u in unverified),
            "crop_check": dict(sorted(how.items())),
            "seconds": {kk: round(v, 6) for kk, v in tm.items()},
        }
        results[o] = ChunkResult(chunk.index, samples, failures, mask_skips, stats, rejected=rejected, unverified=unverified)
    first = results[min(results)]
    if len(results) > 1:
        first.variants = results
    return first
