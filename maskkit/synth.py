"""``maskkit synth``: a masked-face training set as WebDataset shards -- exact, resumable, scalable.

Pipeline per identity (one work unit, so the ratio can be exact within each identity)::

    phase 1  every file: decode -> detect (or landmarks in the whole crop with --aligned)
             -> select one face -> fit the ArcFace transform      => accepted faces (n)
    phase 2  seeded by (seed, identity): a permutation of the n faces and a balanced list of
             m = round_half_up(ratio * n) styles; walk the permutation rendering each candidate
             (on the *source* image, at source resolution) until m renders succeeded. A face
             whose landmarks cannot take a mask (``CannotFit``) stays unmasked, is logged in
             ``mask_skips.jsonl``, and the next candidate takes its style, so the ratio stays
             exact whenever the identity has m faces that can be masked.
    phase 3  in file order: align the plain and/or the masked source crop with the same
             transform, warp the mask coverage alike, encode JPEG / PNG / JSON.

Exactness and determinism:

* Every random choice is drawn from a generator seeded by ``(seed, identity)`` (which faces,
  which styles) or ``(seed, sample key)`` (the render), never by worker or arrival order.
* Identities are processed in class order and their samples are written in one fixed global
  order (class, file, face, plain-then-masked), and shard ``k`` holds samples
  ``[k*S, (k+1)*S)`` of that order. So the shards are byte-identical for any ``--jobs`` and
  any backend.
* Styles: within an identity every style gets ``m // K`` masks and the ``m % K`` left over go
  to distinct styles chosen by the identity's generator, so each style's global count is
  within ``0.8 * identities`` of uniform: a share error <= ``0.8 * I / M`` for M masked faces
  (0.9% on celeb-aligned's 12 identities, 0.4% on VGGFace2).

Resume: each shard is written as ``*.tar.tmp`` and renamed when complete; a journal
(``.synth-journal.jsonl``) records every finished shard (name, samples, bytes, sha256) and
every consumed identity (its cumulative sample count, statistics and failures). A restarted run
with the same options keeps the journalled shards whose sha256 still matches, re-runs from the
identity holding the first sample not yet in a complete shard and skips that identity's samples
already written. ``failures.jsonl`` and ``manifest.json`` (last) are written at the end, then the
journal is removed.

Scale: work is chunked by identity and sent through ``joblib.Parallel(return_as="generator")``
with bounded pre-dispatch, so at most ~2 identities per worker are in flight and results are
written in order as they arrive (memory is bounded by the largest identity, not the dataset).
Models load once per worker process. ``backend="dask"`` runs the same units on a
``distributed`` cluster (``address`` of its scheduler; a local cluster when omitted) through
joblib's Dask backend; ``backend="ray"`` through Ray's joblib backend.

Example:
    >>> res = run_synth(SynthConfig(src="vggface2/train", out="shards/", ratio=0.5, jobs=8))  # doctest: +SKIP
    >>> res.manifest["num_masked"]                                                            # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import Counter, OrderedDict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from . import __version__
from .shards import (FORMAT_NAME, FORMAT_VERSION, Sample, ShardSink, encode_json, expected_masked,
                     sha256_file, shard_name, style_share_deviation, write_bytes_atomic, write_json_atomic)

__all__ = ["SynthConfig", "SynthResult", "InputItem", "Chunk", "ChunkResult", "list_inputs", "plan_chunks",
           "process_chunk", "run_synth", "sample_key", "render_seed", "balanced_styles", "ALL_STYLES", "SynthError"]

#: The five mask styles (same as ``maskkit.render.STYLES``; repeated so importing this module
#: stays light).
ALL_STYLES = ("surgical", "n95", "kn95", "cloth", "gas")
JOURNAL = ".synth-journal.jsonl"
STAGES = ("decode", "detect", "render", "align", "encode")


class SynthError(RuntimeError):
    """The run cannot proceed (bad options, an output folder holding a different run, ...)."""


# =============================================================================================
# configuration
# =============================================================================================
@dataclass
class SynthConfig:
    """Options of one ``maskkit synth`` run (one dataclass per command).

    Attributes:
        src: identity tree (``<identity>/<images>``), a folder of aligned crops with
            ``aligned=True``, or an insightface ``.rec`` file (needs ``aligned=True``).
        out: output shard folder.
        ratio: fraction of each identity's accepted faces that get a mask (0..1), exact per
            identity up to ``round_half_up``.
        paired: write the plain version of every face, plus a masked twin for the chosen ones.
        styles: mask styles to balance over (default: all five). May be empty when ``ratio``
            is 0 (``maskkit align --format shards``).
        seed: global seed.
        jobs: worker processes (local backend); ``0`` or ``-1`` = all cores.
        aligned: input faces are already aligned crops (no detection, no re-alignment; crops of
            another size are resized to ``size``).
        size: output ``(H, W)``.
        shard_samples: samples per shard.
        backend: ``local`` (joblib processes), ``dask`` or ``ray``.
        address: scheduler address for ``dask`` (``tcp://host:8786``) or ``ray``.
        detector: face detector backend name (``maskkit.detect``).
        detector_opts: options for the detector. Default for hog/cnn ``{"max_side": 640}``: detection runs
            on a copy downscaled to 640 px on its longest side (landmarks and everything after
            at full resolution) -- 2.3x faster than 1024 on full photos, and the one face per
            image that synth keeps is large in VGGFace2/CASIA-style loose crops.
        faces: ``largest`` (default), ``central`` or ``all``.
        quality: JPEG quality.
        mask_png: write ``KEY.mask.png`` for masked samples.
        max_pixels: refuse larger input images (``too_large``).
        split: shard name prefix.
        overwrite: delete a previous, different run in ``out`` instead of refusing.
        progress: show a progress bar.
        progress_desc: the progress bar's label (``align`` for ``maskkit align --format shards``).
        command: the command line recorded in the manifest.
        preview: also write a contact sheet PNG here.
    """

    src: Path
    out: Path
    ratio: float = 0.5
    paired: bool = False
    styles: tuple[str, ...] | None = None
    seed: int = 0
    jobs: int = 1
    aligned: bool = False
    size: tuple[int, int] = (112, 112)
    shard_samples: int = 10000
    backend: str = "local"
    address: str | None = None
    detector: str = "hog"
    detector_opts: dict | None = None
    faces: str = "largest"
    quality: int = 95
    mask_png: bool = True
    max_pixels: int = 100_000_000
    split: str = "train"
    overwrite: bool = False
    progress: bool = True
    progress_desc: str = "synth"
    command: str | None = None
    preview: Path | None = None

    def __post_init__(self) -> None:
        self.src = Path(self.src)
        self.out = Path(self.out)
        if isinstance(self.size, int):
            self.size = (self.size, self.size)
        self.size = (int(self.size[0]), int(self.size[1]))
        if self.styles is None:
            self.styles = ALL_STYLES
        self.styles = tuple(self.styles)
        if self.detector_opts is None:
            self.detector_opts = {"max_side": 640} if self.detector in ("hog", "cnn") else {}

    def validate(self) -> None:
        """Raise :class:`SynthError` for inconsistent options."""
        if not 0.0 <= self.ratio <= 1.0:
            raise SynthError(f"--ratio must be in [0, 1], got {self.ratio}")
        bad = [s for s in self.styles if s not in ALL_STYLES]
        if bad:
            raise SynthError(f"unknown style(s) {', '.join(bad)}; choose from {', '.join(ALL_STYLES)}")
        if len(set(self.styles)) != len(self.styles):
            raise SynthError("--styles lists a style twice")
        if self.ratio > 0 and not self.styles:
            raise SynthError("--ratio > 0 needs at least one style")
        if self.shard_samples < 1:
            raise SynthError("--shard-samples must be >= 1")
        if self.faces not in ("largest", "central", "all"):
            raise SynthError(f"--faces must be largest, central or all, not {self.faces!r}")
        if self.backend not in ("local", "dask", "ray"):
            raise SynthError(f"--backend must be local, dask or ray, not {self.backend!r}")
        if not 1 <= self.quality <= 100:
            raise SynthError("--quality must be in 1..100")
        if not self.src.exists():
            raise SynthError(f"--src {self.src} does not exist")
        if self.src.is_file() and self.src.suffix.lower() == ".rec" and not self.aligned:
            raise SynthError(f"{self.src} is an insightface .rec of aligned crops: pass --aligned")
        if self.src.is_file() and self.src.suffix.lower() != ".rec":
            raise SynthError(f"--src {self.src} must be a folder or a .rec file")

    def fingerprint_fields(self) -> dict:
        """Options that change the output bytes (a resumed run must match them)."""
        return {
            "src": str(self.src.resolve()), "ratio": self.ratio, "paired": self.paired,
            "styles": list(self.styles), "seed": self.seed, "aligned": self.aligned,
            "size": list(self.size), "shard_samples": self.shard_samples, "detector": self.detector,
            "detector_opts": self.detector_opts, "faces": self.faces, "quality": self.quality,
            "mask_png": self.mask_png, "max_pixels": self.max_pixels, "split": self.split,
            "version": __version__,
        }


# =============================================================================================
# inputs and work units
# =============================================================================================
@dataclass(frozen=True)
class InputItem:
    """One input file (or one record of a ``.rec``).

    Attributes:
        rel: source path relative to ``--src`` (POSIX), or ``train.rec#<key>``.
        identity: class name.
        path: file path (or the ``.rec`` path).
        rec_key: record key inside the ``.rec``; ``None`` for plain files.
        rec_offset: byte offset of that record.
        error: set for an entry that cannot be read at all (symlink loop, broken link, ...):
            it goes straight to ``failures.jsonl`` with this reason.
        detail: explanation of ``error``.
    """

    rel: str
    identity: str
    path: str
    rec_key: int | None = None
    rec_offset: int | None = None
    error: str | None = None
    detail: str = ""


@dataclass
class Chunk:
    """One work unit: all inputs of one identity."""

    index: int
    label: int
    identity: str
    items: list[InputItem]


@dataclass
class ChunkResult:
    """What a worker returns for a :class:`Chunk` (samples in their final order)."""

    index: int
    samples: list[Sample]
    failures: list[dict]
    mask_skips: list[dict]
    stats: dict


def _rec_inputs(rec_path: Path) -> list[InputItem]:
    from .recordio import RecReader

    with RecReader(rec_path) as r:
        labels = r.scan_labels()
        offsets = dict(r.offsets)
        masked = r.masked_keys
    width = max(len(str(max(labels.values(), default=0))), 1)
    # a maskkit export (export-rec) marks its masked faces: never mask a face twice
    why = (f"record already holds a maskkit-masked face (id2 = 1, see {r.sidecar.name}); "
           "export with `maskkit export-rec --only plain` to mask a set again")
    return [InputItem(f"{rec_path.name}#{k}", f"{labels[k]:0{width}d}", str(rec_path), k, offsets[k],
                      error="already_masked" if k in masked else None, detail=why if k in masked else "")
            for k in sorted(labels)]


def _dir_inputs(src: Path, out: Path) -> list[InputItem]:
    from .sources import iter_sources

    items = []
    for it in iter_sources(src, exclude=[out]):
        ident = it.identity if it.identity not in ("", ".") else "_root"
        items.append(InputItem(str(it.rel), str(ident), str(it.path), error=getattr(it, "error", None),
                               detail=getattr(it, "detail", "")))
    return items


def list_inputs(cfg: SynthConfig) -> tuple[list[InputItem], list[str]]:
    """All inputs in their canonical order and the class list (sorted identity names).

    Returns:
        ``(items, classes)``: items sorted by (class, rel).
    """
    if cfg.src.is_file():
        items = _rec_inputs(cfg.src)
    else:
        items = _dir_inputs(cfg.src, cfg.out)
    classes = sorted({it.identity for it in items})
    order = {c: i for i, c in enumerate(classes)}
    items.sort(key=lambda it: (order[it.identity], it.rec_key if it.rec_key is not None else -1, it.rel))
    return items, classes


def plan_chunks(items: Sequence[InputItem], classes: Sequence[str]) -> list[Chunk]:
    """Group items (already in canonical order) into one :class:`Chunk` per identity."""
    order = {c: i for i, c in enumerate(classes)}
    by: "OrderedDict[str, list[InputItem]]" = OrderedDict()
    for it in items:
        by.setdefault(it.identity, []).append(it)
    return [Chunk(i, order[ident], ident, its) for i, (ident, its) in enumerate(by.items())]


# =============================================================================================
# seeding and keys
# =============================================================================================
def _words(*parts: Any) -> list[int]:
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return [int.from_bytes(h[i:i + 4], "little") for i in range(0, 32, 4)]


def _rng(seed: int, *parts: Any) -> np.random.Generator:
    """Generator seeded by (seed, parts) only -- never by worker or time."""
    return np.random.default_rng(np.random.SeedSequence(_words(int(seed), *parts)))


def render_seed(seed: int, key: str) -> int:
    """The 63-bit seed of a sample's render generator, ``default_rng(render_seed(seed, key))``;
    recorded as ``mask.seed`` so the mask can be redrawn from the source face."""
    return int.from_bytes(hashlib.sha256(f"{int(seed)}\x1frender\x1f{key}".encode("utf-8")).digest()[:8],
                          "little") >> 1


def sample_key(label: int, rel: str, face: int) -> str:
    """Stable sample key ``<label:06d>_<sha1(rel)[:12]>_<face>`` (``[A-Za-z0-9_-]`` only)."""
    return f"{label:06d}_{hashlib.sha1(rel.encode('utf-8')).hexdigest()[:12]}_{face}"


def balanced_styles(m: int, styles: Sequence[str], rng: np.random.Generator) -> list[str]:
    """``m`` styles: ``m // K`` of each, the ``m % K`` extra ones distinct and random, shuffled."""
    k = len(styles)
    if m == 0 or k == 0:
        return []
    out = [s for s in styles for _ in range(m // k)]
    extra = rng.permutation(k)[: m % k]
    out += [styles[i] for i in sorted(extra)]
    rng.shuffle(out)
    return out


# =============================================================================================
# worker side
# =============================================================================================
_WORKER: dict = {}


def _models(cfg: SynthConfig):
    """Detector and renderer, created once per worker process (cached by their options)."""
    det = ren = None
    if not cfg.aligned:
        key = ("det", cfg.detector, json.dumps(cfg.detector_opts, sort_keys=True))
        det = _WORKER.get(key)
        if det is None:
            from .detect import make_detector

            det = _WORKER[key] = make_detector(cfg.detector, **cfg.detector_opts)
    if cfg.ratio > 0:
        ren = _WORKER.get("ren")
        if ren is None:
            from .render import MaskRenderer

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
    plain: Any = None  # maskkit.align.Aligned (the identity transform for aligned input)
    render: Any = None  # MaskResult
    style: str | None = None


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
    from .image_io import decode_image, load_image

    if item.rec_key is None:
        return load_image(item.path, max_pixels=cfg.max_pixels)
    from .recordio import read_record_at, unpack_header

    f = rec_fh.get(item.path)
    if f is None:
        f = rec_fh[item.path] = open(item.path, "rb")
    rec = read_record_at(f, item.rec_offset)
    if rec is None:
        from .image_io import ImageError

        raise ImageError("read_error", f"record {item.rec_key} is past the end of the .rec")
    _, payload = unpack_header(rec)
    return decode_image(payload, max_pixels=cfg.max_pixels, name=item.rel)


def _phase1(chunk: Chunk, cfg: SynthConfig, det, tm: Counter) -> tuple[list[_Face], list[dict], dict]:
    """Decode, find one face per file (or all), fit the alignment. Returns faces, failures, file->nfaces."""
    import cv2

    from .align import Aligned, align_face, five_points
    from .detect import landmarks_in_box, select_faces
    from .image_io import ImageError

    faces: list[_Face] = []
    failures: list[dict] = []
    nfaces: dict[str, int] = {}
    rec_fh: dict = {}
    seen_keys: set[str] = set()
    H, W = cfg.size
    try:
        for item in chunk.items:
            if item.error:
                failures.append({"src": item.rel, "reason": item.error, "detail": item.detail})
                continue
            t0 = time.perf_counter()
            try:
                rgb = _read_input(item, cfg, rec_fh)
            except ImageError as exc:
                failures.append({"src": item.rel, "reason": exc.reason, "detail": exc.detail})
                continue
            except Exception as exc:  # noqa: BLE001 - a bad file never stops the run
                failures.append({"src": item.rel, "reason": "read_error", "detail": f"{type(exc).__name__}: {exc}"})
                continue
            finally:
                tm["decode"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            try:
                if cfg.aligned:
                    if rgb.shape[:2] == (112, 112) and (H, W) == (112, 96):
                        rgb = np.ascontiguousarray(rgb[:, 8:104])  # insightface's 112x96 = x shifted by -8
                    elif rgb.shape[:2] != (H, W):
                        rgb = cv2.resize(rgb, (W, H), interpolation=cv2.INTER_AREA)
                    sel = [(0, None, landmarks_in_box(rgb, None))]
                else:
                    found = det.detect(rgb)
                    chosen = select_faces(found, cfg.faces, rgb.shape)
                    sel = [(i, f.score, f.landmarks68) for i, f in enumerate(chosen)]
            except Exception as exc:  # noqa: BLE001
                failures.append({"src": item.rel, "reason": "detect_error", "detail": f"{type(exc).__name__}: {exc}"})
                continue
            finally:
                tm["detect"] += time.perf_counter() - t0
            if not sel:
                failures.append({"src": item.rel, "reason": "no_face", "detail": f"detector {cfg.detector} found no face"})
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
                    errs.append(f"face {fi}: {type(exc).__name__}: {exc}")
                    continue
                key = sample_key(chunk.label, item.rel, fi)
                if key in seen_keys:  # a sha1 prefix clash inside one identity: stay unique, stay stable
                    key = f"{key}_{hashlib.sha1(item.rel.encode()).hexdigest()[12:20]}"
                seen_keys.add(key)
                faces.append(_Face(key, item.rel, fi, None if score is None else float(score), crop, lmc, plain))
                got += 1
            tm["align"] += time.perf_counter() - t0
            if got == 0:
                failures.append({"src": item.rel, "reason": "align_error", "detail": "; ".join(errs)[:500]})
            else:
                nfaces[item.rel] = got
    finally:
        for f in rec_fh.values():
            f.close()
    return faces, failures, nfaces


def process_chunk(chunk: Chunk, cfg: SynthConfig) -> ChunkResult:
    """Turn one identity's inputs into its samples (pure: same chunk and config, same bytes).

    Args:
        chunk: the identity's inputs.
        cfg: run options.

    Returns:
        :class:`ChunkResult` with samples in the final order, failures, mask skips, statistics
        and per-stage seconds.
    """
    import cv2

    from .align import Aligned, align_face
    from .image_io import encode_jpeg

    det, ren = _models(cfg)
    tm: Counter = Counter()
    faces, failures, nfaces = _phase1(chunk, cfg, det, tm)

    # ---- phase 2: which faces get which style (seeded by identity), render until m succeed
    n = len(faces)
    m = expected_masked(cfg.ratio, n) if ren is not None else 0
    mask_skips: list[dict] = []
    masked_idx: set[int] = set()
    if m:
        rng = _rng(cfg.seed, "choose", chunk.identity)
        perm = rng.permutation(n)
        queue = balanced_styles(m, cfg.styles, rng)
        qi = 0
        t0 = time.perf_counter()
        for i in perm:
            if qi == len(queue):
                break
            f = faces[int(i)]
            style = queue[qi]
            try:
                res = ren.render(f.crop, f.lm, style, np.random.default_rng(render_seed(cfg.seed, f.key)))
                if res.alpha is None or res.image.shape != f.crop.shape:
                    raise ValueError("renderer returned a result of the wrong shape")
            except Exception as exc:  # noqa: BLE001 - CannotFit, or anything: log, try the next face
                reason = getattr(exc, "reason", None) or type(exc).__name__
                mask_skips.append({"src": f.rel, "face": f.face, "key": f.key, "style": style,
                                   "reason": str(reason), "detail": str(exc)[:300]})
                continue
            f.render, f.style = res, style
            masked_idx.add(int(i))
            qi += 1
        tm["render"] += time.perf_counter() - t0
    shortfall = m - len(masked_idx)

    # ---- phase 3: align and encode, in file order
    H, W = cfg.size
    samples: list[Sample] = []
    styles_count: Counter = Counter()
    for i, f in enumerate(faces):
        t0 = time.perf_counter()
        is_masked = i in masked_idx
        plain = f.plain
        if plain is None and (cfg.paired or not is_masked):
            plain = align_face(f.crop, f.lm, size=cfg.size)
        mal = mask_u8 = None
        if is_masked:
            if cfg.aligned:
                mal = Aligned(f.render.image, f.plain.matrix, f.plain.landmarks5, f.plain.landmarks68)
                alpha = f.render.alpha
            else:
                mal = align_face(f.render.image, f.lm, size=cfg.size)
                alpha = cv2.warpAffine(np.asarray(f.render.alpha, np.float32), np.asarray(mal.matrix, np.float64),
                                       (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            mask_u8 = np.clip(np.rint(np.asarray(alpha, np.float32) * 255.0), 0, 255).astype(np.uint8)
        tm["align"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        base = {"label": chunk.label, "identity": chunk.identity, "src": f.rel, "face": f.face, "score":
                None if f.score is None else round(f.score, 5)}
        pkey, mkey = (f.key, f.key + "_m") if cfg.paired else (f.key, f.key)
        if plain is not None and (cfg.paired or not is_masked):
            meta = dict(base, masked=False, style=None, mask=None, landmarks5=_pts(plain.landmarks5),
                        landmarks68=_pts(plain.landmarks68), twin=mkey if (cfg.paired and is_masked) else None)
            samples.append(Sample(pkey, encode_jpeg(np.ascontiguousarray(plain.image), cfg.quality), meta))
        if is_masked:
            params = _jsonable(dict(f.render.params or {}))
            params.setdefault("style", f.style)
            params["seed"] = render_seed(cfg.seed, f.key)
            meta = dict(base, masked=True, style=f.style, mask=params, landmarks5=_pts(mal.landmarks5),
                        landmarks68=_pts(mal.landmarks68), twin=pkey if cfg.paired else None)
            png = None
            if cfg.mask_png:
                ok, buf = cv2.imencode(".png", mask_u8)
                png = buf.tobytes() if ok else None
            samples.append(Sample(mkey, encode_jpeg(np.ascontiguousarray(mal.image), cfg.quality), meta, png))
            styles_count[f.style] += 1
        tm["encode"] += time.perf_counter() - t0
        f.crop = None  # free memory early
        f.render = None

    by_reason = Counter(fl["reason"] for fl in failures)
    for fl in failures:
        fl.setdefault("identity", chunk.identity)
    stats = {
        "files": len(chunk.items), "ok": len(nfaces), "failed": len(failures),
        "failed_by_reason": dict(by_reason), "faces": n, "samples": len(samples),
        "masked": len(masked_idx), "styles": dict(styles_count), "shortfall": shortfall,
        "mask_skips": len(mask_skips), "seconds": {k: round(v, 6) for k, v in tm.items()},
    }
    return ChunkResult(chunk.index, samples, failures, mask_skips, stats)


# =============================================================================================
# driver side: journal, resume, backends, writing
# =============================================================================================
@dataclass
class SynthResult:
    """Outcome of :func:`run_synth`.

    Attributes:
        out: the shard folder.
        manifest: the manifest written.
        seconds: wall-clock seconds of this invocation.
        resumed: samples that were already in complete shards from an earlier, killed run.
        already_complete: the folder already held this exact run (nothing was recomputed).
        stage_seconds: summed per-stage worker seconds (decode, detect, render, align, encode)
            plus ``write`` (driver).
    """

    out: Path
    manifest: dict
    seconds: float
    resumed: int = 0
    already_complete: bool = False
    stage_seconds: dict = field(default_factory=dict)


def _jsonl(entries: Sequence[dict]) -> bytes:
    """Canonical JSON lines (the journal, ``failures.jsonl``, ``mask_skips.jsonl``)."""
    return b"".join(encode_json(e) + b"\n" for e in entries)


class _Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = None

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a torn last line from a kill
        return out

    def rewrite(self, entries: list[dict]) -> None:
        write_bytes_atomic(self.path, _jsonl(entries))

    def append(self, entry: dict) -> None:
        if self._f is None:
            self._f = open(self.path, "ab")
        self._f.write(encode_json(entry) + b"\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _our_files(out: Path, split: str) -> list[Path]:
    pats = [f"{split}-*.tar", f"{split}-*.tar.tmp", "manifest.json", "manifest.json.tmp", "failures.jsonl",
            "failures.jsonl.tmp", "mask_skips.jsonl", "mask_skips.jsonl.tmp", JOURNAL, JOURNAL + ".tmp"]
    return [p for pat in pats for p in out.glob(pat)]


def _fingerprint(cfg: SynthConfig, items: Sequence[InputItem]) -> str:
    h = hashlib.sha256(encode_json(cfg.fingerprint_fields()))
    for it in items:
        h.update(f"{it.identity}\x1f{it.rel}\n".encode("utf-8"))
    return h.hexdigest()


@dataclass
class _ResumeState:
    shards: list[dict]
    chunk_entries: list[dict]
    start_chunk: int
    skip: int
    written: int


def _prepare_out(cfg: SynthConfig, fp: str, n_chunks: int) -> _ResumeState | dict:
    """Check ``out``; return the completed manifest (already done) or the resume state."""
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    man_p = out / "manifest.json"
    jr = _Journal(out / JOURNAL)
    if man_p.exists():
        try:
            man = json.loads(man_p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            man = {}
        if man.get("fingerprint") == fp and not cfg.overwrite:
            for p in _our_files(out, cfg.split):  # leftovers of a kill after the manifest
                if p.name == JOURNAL or p.name.endswith(".tmp"):
                    p.unlink()
            return man
        if not cfg.overwrite:
            raise SynthError(f"{out} holds a finished dataset made with other inputs or options; "
                             "pass --overwrite to replace it, or choose another --out")
        for p in _our_files(out, cfg.split):
            p.unlink()
    for p in _our_files(out, cfg.split):  # half-written files of a killed run are never kept
        if p.name.endswith(".tmp"):
            p.unlink()
    entries = jr.read()
    if entries and (entries[0].get("fingerprint") != fp or cfg.overwrite):
        if not cfg.overwrite:
            raise SynthError(f"{out} holds an unfinished run with other inputs or options; pass --overwrite "
                             "to discard it, or rerun with the same options to resume it")
        for p in _our_files(out, cfg.split):
            p.unlink()
        entries = []
    if not entries and not cfg.overwrite:
        stray = [p for p in _our_files(out, cfg.split) if p.name != JOURNAL]
        if stray:
            raise SynthError(f"{out} holds shard files but no journal or manifest (not a maskkit synth run "
                             "or one from another version); pass --overwrite or choose another --out")
    # ---- valid shard prefix
    shard_recs = [e["shard"] for e in entries[1:] if "shard" in e]
    chunk_entries = [e for e in entries[1:] if "chunk" in e]
    # keep only a contiguous run of chunk entries 0..j
    ce = []
    for e in chunk_entries:
        if e["chunk"] != len(ce):
            break
        ce.append(e)
    valid: list[dict] = []
    for i, rec in enumerate(shard_recs):
        p = out / rec["name"]
        if rec["name"] != shard_name(i, cfg.split) or not p.exists() or p.stat().st_size != rec["bytes"] \
                or sha256_file(p) != rec["sha256"]:
            break
        if rec["samples"] != cfg.shard_samples:  # a final, partial shard: valid only if all was consumed
            if not (len(ce) == n_chunks and ce and ce[-1]["end"] == sum(r["samples"] for r in valid) + rec["samples"]):
                break
            valid.append(rec)
            break
        valid.append(rec)
    written = sum(r["samples"] for r in valid)
    keep = []
    for e in ce:
        if e["end"] > written:
            break
        keep.append(e)
    start = len(keep)
    prev_end = keep[-1]["end"] if keep else 0
    skip = written - prev_end
    # ---- remove what is not kept
    keep_names = {r["name"] for r in valid}
    for p in list(out.glob(f"{cfg.split}-*.tar")) + list(out.glob(f"{cfg.split}-*.tar.tmp")):
        if p.name not in keep_names:
            p.unlink()
    jr.rewrite([{"journal": 1, "fingerprint": fp, "config": cfg.fingerprint_fields()}]
               + [{"shard": r} for r in valid] + keep)
    return _ResumeState(valid, keep, start, skip, written)


@contextmanager
def _backend(cfg: SynthConfig):
    """Yield ``n_jobs`` for joblib inside the configured backend context."""
    import joblib

    if cfg.backend == "local":
        yield cfg.jobs if cfg.jobs != 0 else (os.cpu_count() or 1)
        return
    if cfg.backend == "dask":
        try:
            from distributed import Client
        except ImportError as exc:
            raise SynthError("--backend dask needs the 'distributed' package: pip install 'maskkit[scale]'") from exc
        if cfg.address:
            client = Client(cfg.address)
            own_cluster = None
        else:
            from distributed import LocalCluster

            own_cluster = LocalCluster(n_workers=max(1, cfg.jobs if cfg.jobs > 0 else os.cpu_count() or 1),
                                       threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None)
            client = Client(own_cluster)
        try:
            with joblib.parallel_config(backend="dask"):
                yield -1
        finally:
            client.close()
            if own_cluster is not None:
                own_cluster.close()
        return
    if cfg.backend == "ray":
        try:
            import ray
            from ray.util.joblib import register_ray
        except ImportError as exc:
            raise SynthError("--backend ray needs Ray: pip install 'ray[default]' (not installed here)") from exc
        if not ray.is_initialized():
            ray.init(address=cfg.address or None)
        register_ray()
        with joblib.parallel_config(backend="ray"):
            yield -1
        return
    raise SynthError(f"unknown backend {cfg.backend!r}")


def _results(chunks: list[Chunk], cfg: SynthConfig, n_jobs: int) -> Iterator[ChunkResult]:
    """Chunk results in chunk order, computed in parallel with bounded look-ahead."""
    from joblib import Parallel, delayed

    if n_jobs == 1 and cfg.backend == "local":
        for c in chunks:
            yield process_chunk(c, cfg)
        return
    par = Parallel(n_jobs=n_jobs, return_as="generator", pre_dispatch="2*n_jobs", batch_size=1)
    yield from par(delayed(process_chunk)(c, cfg) for c in chunks)


def _merge(total: dict, st: dict) -> None:
    for k in ("files", "ok", "failed", "faces", "samples", "masked", "mask_skips"):
        total[k] = total.get(k, 0) + st.get(k, 0)
    for k in ("failed_by_reason", "styles", "seconds"):
        d = total.setdefault(k, {})
        for kk, v in st.get(k, {}).items():
            d[kk] = d.get(kk, 0) + v


def _progress(total: int, initial: int, enabled: bool, desc: str = "synth"):
    """A progress bar over input files (img/s and ETA); a resumed run starts at ``initial``."""
    if not enabled:
        return nullcontext(None)
    from .progress import progress_bar

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
        from .detect import make_detector

        try:
            make_detector(cfg.detector, **cfg.detector_opts)
        except Exception as exc:  # noqa: BLE001 - DetectorUnavailable, bad options
            raise SynthError(f"detector {cfg.detector!r} cannot run: {exc}") from exc
    if cfg.out.exists() and not cfg.out.is_dir():
        raise SynthError(f"--out {cfg.out} exists and is not a folder")
    from .runner import check_out_kind

    check_out_kind(cfg.out, "shards", SynthError)
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
        (cfg.out / ".synth.lock").touch()
    except OSError as exc:
        raise SynthError(f"--out {cfg.out} is not writable: {exc.strerror or exc}") from exc
    with _out_lock(cfg.out):
        return _run_locked(cfg, t_start)


@contextmanager
def _out_lock(out: Path):
    """One writer per output folder: a second concurrent run fails fast (released by the OS
    even when the holder is SIGKILLed)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: no locking
        yield
        return
    fh = open(out / ".synth.lock", "a+b")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SynthError(f"another maskkit synth is writing to {out} right now") from None
        yield
        (out / ".synth.lock").unlink(missing_ok=True)  # finished: leave no trace (kept after a failure)
    finally:
        fh.close()


def _run_locked(cfg: SynthConfig, t_start: float) -> SynthResult:
    items, classes = list_inputs(cfg)
    chunks = plan_chunks(items, classes)
    fp = _fingerprint(cfg, items)
    state = _prepare_out(cfg, fp, len(chunks))
    if isinstance(state, dict):
        return SynthResult(cfg.out, state, time.perf_counter() - t_start, already_complete=True)

    out = cfg.out
    jr = _Journal(out / JOURNAL)
    total: dict = {}
    per_class = {c: {"samples": 0, "masked": 0, "faces": 0} for c in classes}
    failures: list[dict] = []
    skips: list[dict] = []
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
        skips.extend(entry.get("mask_skips", []))

    for e in state.chunk_entries:
        absorb(e)
    done_files = sum(len(c.items) for c in chunks[: state.start_chunk])
    shards = list(state.shards)

    def on_shard(rec: dict) -> None:
        shards.append(rec)
        jr.append({"shard": rec})

    t_write = 0.0
    end = state.chunk_entries[-1]["end"] if state.chunk_entries else 0
    skip = state.skip
    todo = chunks[state.start_chunk:]
    sink = ShardSink(out, cfg.shard_samples, cfg.split, start_index=len(shards), on_shard=on_shard)
    try:
        with _backend(cfg) as n_jobs, _progress(len(items), done_files, cfg.progress, cfg.progress_desc) as bar:
            for res in _results(todo, cfg, n_jobs):
                chunk = chunks[res.index]
                t0 = time.perf_counter()
                for s in res.samples:
                    if skip > 0:
                        skip -= 1
                        continue
                    sink.add(s)
                end += len(res.samples)
                entry = {"chunk": res.index, "identity": chunk.identity, "end": end, "stats": res.stats,
                         "failures": res.failures, "mask_skips": res.mask_skips}
                jr.append(entry)
                absorb(entry)
                t_write += time.perf_counter() - t0
                if bar is not None:
                    bar.update(len(chunk.items))
            t0 = time.perf_counter()
            sink.close()
            t_write += time.perf_counter() - t0
    except BaseException:
        sink.abort()
        raise
    finally:
        jr.close()

    # ---- finish: failure logs, then the manifest (last, atomically), then drop the journal
    write_bytes_atomic(out / "failures.jsonl", _jsonl(failures))
    if skips:
        write_bytes_atomic(out / "mask_skips.jsonl", _jsonl(skips))
    else:
        (out / "mask_skips.jsonl").unlink(missing_ok=True)
    styles = {s: int(total.get("styles", {}).get(s, 0)) for s in cfg.styles}
    for s, v in total.get("styles", {}).items():
        styles.setdefault(s, int(v))
    man = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION,
        "image_size": list(cfg.size), "template": "arcface",
        "classes": classes,
        "num_samples": int(total.get("samples", 0)), "num_masked": int(total.get("masked", 0)),
        "ratio": cfg.ratio, "paired": cfg.paired, "seed": cfg.seed,
        "styles": styles,
        "per_class": per_class,
        "shards": shards,
        "inputs": {"files": int(total.get("files", 0)), "ok": int(total.get("ok", 0)),
                   "failed": int(total.get("failed", 0)),
                   "failed_by_reason": dict(sorted(total.get("failed_by_reason", {}).items()))},
        "created_by": f"maskkit {__version__}",
        "command": cfg.command or "maskkit synth (library call)",
        # extensions (backward compatible)
        "num_faces": int(total.get("faces", 0)),
        "rounding": "half_up",
        "mask_skips": int(total.get("mask_skips", 0)),
        "mask_shortfall": shortfall,
        "style_share_max_dev": round(style_share_deviation(styles), 6),
        "aligned_input": cfg.aligned, "detector": None if cfg.aligned else cfg.detector,
        "faces": cfg.faces, "jpeg_quality": cfg.quality, "shard_samples": cfg.shard_samples,
        "split": cfg.split, "bytes": int(sum(r["bytes"] for r in shards)),
        "fingerprint": fp,
    }
    write_json_atomic(out / "manifest.json", man)
    (out / JOURNAL).unlink(missing_ok=True)
    stage = {k: round(float(v), 4) for k, v in total.get("seconds", {}).items()}
    stage["write"] = round(t_write, 4)
    if cfg.preview is not None:
        try:
            from .preview import preview  # the mask helper's contact sheet

            preview(out, cfg.preview, styles=cfg.styles or ALL_STYLES, seed=cfg.seed)
        except Exception as exc:  # noqa: BLE001 - the dataset is done; the sheet is a bonus
            print(f"warning: could not draw the preview: {exc}", file=sys.stderr)
    return SynthResult(out, man, time.perf_counter() - t_start, resumed=state.written, stage_seconds=stage)


def summary_rows(man: dict, stage_seconds: dict | None = None, seconds: float | None = None) -> list[tuple[str, str]]:
    """``(name, value)`` rows of the end-of-run summary table."""
    inp = man["inputs"]
    rows = [("inputs", f"{inp['files']:,}"), ("ok", f"{inp['ok']:,}"), ("failed", f"{inp['failed']:,}")]
    for r, v in sorted(inp.get("failed_by_reason", {}).items()):
        rows.append((f"  failed: {r}", f"{v:,}"))
    rows.append(("faces", f"{man.get('num_faces', man['num_samples']):,}"))
    rows.append(("samples", f"{man['num_samples']:,}"))
    nm = man["num_masked"]
    rows.append(("masked", f"{nm:,} ({100.0 * nm / max(1, man['num_samples']):.1f}% of samples)"))
    for s, v in man["styles"].items():
        rows.append((f"  {s}", f"{v:,} ({100.0 * v / max(1, nm):.1f}%)"))
    if man.get("mask_skips"):
        rows.append(("mask skips (cannot fit)", f"{man['mask_skips']:,}"))
    if man.get("mask_shortfall"):
        rows.append(("ratio shortfall", json.dumps(man["mask_shortfall"])))
    rows.append(("classes", f"{len(man['classes']):,}"))
    rows.append(("shards", f"{len(man['shards']):,}"))
    rows.append(("bytes", f"{sum(s['bytes'] for s in man['shards']):,}"))
    if seconds:
        rows.append(("seconds", f"{seconds:.1f}"))
        rows.append(("img/s", f"{inp['files'] / seconds:.1f}"))
    if stage_seconds:
        tot = sum(stage_seconds.values()) or 1.0
        rows.append(("stages (worker s)", ", ".join(f"{k} {v:.1f} ({100 * v / tot:.0f}%)"
                                                    for k, v in stage_seconds.items())))
    return rows
