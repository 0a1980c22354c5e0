"""WebDataset tar shards, the manifest and their verification (``docs/FORMAT.md``, version 1).

A dataset is a folder of ``<split>-%06d.tar`` shards plus ``manifest.json`` (written last,
atomically) and ``failures.jsonl``. This module writes and reads that layout:

* :class:`Sample` is one group of tar members sharing a key (``KEY.jpg``, ``KEY.json`` and an
  optional ``KEY.mask.png``).
* :class:`ShardSink` cuts a stream of samples into shards of a fixed number of samples. Each
  shard is written under a temporary name (``.tmp`` suffix), fsynced, then renamed, so a shard
  file with its final name is always complete. Bytes are deterministic: members in a fixed
  order, fixed mtime/uid/gid/uname/mode, GNU tar format, JSON with sorted keys -- the same
  samples always give the same sha256.
* :func:`read_manifest` / :func:`read_samples` / :func:`iter_shard`.
* :func:`verify` checks a finished dataset against its manifest (what ``maskkit stats`` runs).

Length: the writer, the reader and the verifier of one on-disk format; ``verify`` restates the
writer's every promise (sizes, hashes, counts, the exact ratio and its logged exceptions), and keeping
it beside the code that makes those promises is what keeps the two in step.

Example:
    >>> with ShardSink("shards/", shard_samples=1000) as sink:      # doctest: +SKIP
    ...     sink.add(Sample("c00000_ab12_0", jpg_bytes, {"label": 0, ...}))
    >>> sink.shards[0]["sha256"]                                      # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Iterator

from maskkit.util.files import _fsync_dir

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "KEY_RE", "Sample", "ShardSink", "shard_name",
    "read_manifest", "iter_shard", "read_samples", "sha256_file", "round_half_up", "expected_masked",
    "VerifyReport", "verify", "check_shard_files", "ShardMismatchError", "class_expected_masked", "encode_json", "style_share_deviation",
]

FORMAT_NAME = "maskkit-shards"
FORMAT_VERSION = 1
#: Allowed sample keys (no dots: WebDataset splits member names at the first dot).
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
#: Fixed tar member metadata, so that equal samples give byte-identical shards.
TAR_MTIME = 946684800  # 2000-01-01T00:00:00Z
TAR_MODE = 0o644
_MEMBER_ORDER = {"jpg": 0, "json": 1, "mask.png": 2}


def round_half_up(x: float) -> int:
    """``round(x)`` with halves rounded up (0.5 -> 1, 5.5 -> 6), unlike Python's banker's rounding."""
    return int(math.floor(x + 0.5 + 1e-9))


def expected_masked(ratio: float, faces: int) -> int:
    """Masked faces an identity with ``faces`` accepted faces gets: ``round_half_up(ratio * faces)``."""
    return min(faces, max(0, round_half_up(ratio * faces)))


def class_expected_masked(man: dict, cls: str, counted: dict) -> tuple[int, int]:
    """``(faces, masked faces required)`` of class ``cls`` given its ``counted`` samples/masked:
    ``round_half_up(ratio * faces)`` minus the manifest's recorded shortfall (paired datasets
    count only the plain faces)."""
    faces = counted["samples"] - counted["masked"] if man.get("paired") else counted["samples"]
    exp = expected_masked(float(man.get("ratio", 0.0)), faces) - int((man.get("mask_shortfall") or {}).get(cls, 0))
    return faces, exp


def shard_name(index: int, split: str = "train") -> str:
    """``train-000003.tar`` for ``index=3``."""
    return f"{split}-{index:06d}.tar"


def encode_json(obj) -> bytes:
    """Canonical JSON bytes (sorted keys, compact, UTF-8) -- deterministic for equal objects.

    Always valid UTF-8: names go in as text (``src`` + ``src_bytes``, :mod:`maskkit.util.names`);
    a stray lone surrogate (a file name inside an error message) is written in its display form."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        from maskkit.util.names import text_safe

        return json.dumps(text_safe(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_file(path: str | os.PathLike, bufsize: int = 1 << 20) -> str:
    """Hex sha256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(bufsize)
            if not b:
                break
            h.update(b)
    return h.hexdigest()




@dataclass
class Sample:
    """One dataset sample: the members ``KEY.jpg``, ``KEY.json`` and optionally ``KEY.mask.png``.

    Attributes:
        key: unique key, ``[A-Za-z0-9_-]+``.
        jpg: JPEG bytes of the aligned face.
        meta: the ``KEY.json`` dict (see FORMAT.md).
        mask_png: 8-bit single-channel PNG of the mask coverage, or ``None``.
    """

    key: str
    jpg: bytes
    meta: dict
    mask_png: bytes | None = None

    def members(self) -> list[tuple[str, bytes]]:
        """``(member name, bytes)`` in the fixed order jpg, json, mask.png."""
        if not KEY_RE.match(self.key):
            raise ValueError(f"sample key {self.key!r} is not made of [A-Za-z0-9_-]")
        out = [(f"{self.key}.jpg", self.jpg), (f"{self.key}.json", encode_json(self.meta))]
        if self.mask_png is not None:
            out.append((f"{self.key}.mask.png", self.mask_png))
        return out


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = TAR_MTIME
    ti.mode = TAR_MODE
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "maskkit"
    ti.type = tarfile.REGTYPE
    tar.addfile(ti, io.BytesIO(data))


class _HashingWriter(io.RawIOBase):
    """A write-only file wrapper that hashes and counts what goes through it."""

    def __init__(self, f):
        self._f = f
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.nbytes

    def write(self, b) -> int:
        b = bytes(b)
        self._f.write(b)
        self.sha.update(b)
        self.nbytes += len(b)
        return len(b)


class ShardSink:
    """Cut a stream of :class:`Sample` into complete, atomically renamed tar shards.

    Shard ``k`` holds samples ``[k*shard_samples, (k+1)*shard_samples)`` of the stream, so the
    assignment of samples to shards depends only on their order (what resume relies on).

    Args:
        out_dir: the dataset folder (created if missing).
        shard_samples: samples per shard (the last one may hold fewer).
        split: shard name prefix (``train``).
        start_index: index of the first shard to write (resume keeps earlier shards).
        on_shard: called with the shard record ``{"name", "samples", "bytes", "sha256"}`` after
            each shard is renamed into place.
        on_event: called as ``on_event("before_rename", index)`` once a shard is complete and
            fsynced under its ``.tmp`` name, and ``on_event("after_rename", index)`` right after the
            rename (before ``on_shard``): the write boundaries a kill test injects at.
    """

    def __init__(self, out_dir: str | os.PathLike, shard_samples: int = 10000, split: str = "train",
                 start_index: int = 0, on_shard: Callable[[dict], None] | None = None,
                 on_event: Callable[[str, int], None] | None = None) -> None:
        if shard_samples < 1:
            raise ValueError("shard_samples must be >= 1")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shard_samples = int(shard_samples)
        self.split = split
        self.index = int(start_index)
        self.on_shard = on_shard
        self.on_event = on_event
        self.shards: list[dict] = []
        self._fh = None
        self._hw: _HashingWriter | None = None
        self._tar: tarfile.TarFile | None = None
        self._count = 0

    # -- context manager ------------------------------------------------------------------
    def __enter__(self) -> "ShardSink":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- writing --------------------------------------------------------------------------
    @property
    def _final_path(self) -> Path:
        return self.out_dir / shard_name(self.index, self.split)

    @property
    def _tmp_path(self) -> Path:
        return self.out_dir / (shard_name(self.index, self.split) + ".tmp")

    @property
    def writing(self) -> Path | None:
        """The temporary file of the shard in progress (``None`` between shards)."""
        return self._tmp_path if self._tar is not None else None

    def _open(self) -> None:
        self._fh = open(self._tmp_path, "wb")
        self._hw = _HashingWriter(self._fh)
        self._tar = tarfile.open(fileobj=self._hw, mode="w", format=tarfile.GNU_FORMAT)
        self._count = 0

    def add(self, sample: Sample) -> None:
        """Append one sample; completes and renames the current shard when it is full."""
        members = sample.members()
        if self._tar is None:
            self._open()
        for name, data in members:
            _add_member(self._tar, name, data)
        self._count += 1
        if self._count >= self.shard_samples:
            self._finish()

    def _finish(self) -> None:
        assert self._tar is not None and self._fh is not None and self._hw is not None
        self._tar.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        if self.on_event is not None:
            self.on_event("before_rename", self.index)
        os.replace(self._tmp_path, self._final_path)
        _fsync_dir(self.out_dir)
        if self.on_event is not None:
            self.on_event("after_rename", self.index)
        rec = {"name": self._final_path.name, "samples": self._count, "bytes": self._hw.nbytes,
               "sha256": self._hw.sha.hexdigest()}
        self.shards.append(rec)
        self._tar = self._fh = self._hw = None
        self._count = 0
        self.index += 1
        if self.on_shard is not None:
            self.on_shard(rec)

    def close(self) -> None:
        """Complete the last, partial shard (if it holds any sample)."""
        if self._tar is not None:
            if self._count:
                self._finish()
            else:  # pragma: no cover - never opened without a sample
                self.abort()

    def abort(self) -> None:
        """Drop the shard in progress (its temporary file is removed). Never raises: it runs while
        another error (a full disk, Ctrl-C) stops the run, and that error is the one to report."""
        if self._tar is not None:
            for close in (self._tar.close, self._fh.close):
                try:
                    close()
                except (OSError, ValueError):  # e.g. no space for the tar's end blocks
                    pass
            try:
                self._tmp_path.unlink(missing_ok=True)
            except OSError:  # pragma: no cover - a folder turned read-only: resume removes it
                pass
            self._tar = self._fh = self._hw = None


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def read_manifest(data_dir: str | os.PathLike) -> dict:
    """Load ``manifest.json``; raises ``FileNotFoundError`` with a clear message when absent."""
    p = Path(data_dir) / "manifest.json"
    if not p.exists():
        raise FileNotFoundError(f"{p} is missing: the dataset is incomplete (a run that did not finish?) "
                                "or this is not a maskkit shard folder")
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def iter_shard(path: str | os.PathLike, members: Collection[str] | None = None) -> Iterator[dict]:
    """Yield the samples of one tar shard, in file order.

    Each sample is a dict ``{"key", "jpg": bytes, "json": dict, "mask.png": bytes|None, "shard"}``
    plus any other member suffix found. Members of one key must be consecutive (as WebDataset
    requires). With ``members`` (e.g. ``{"json"}``) only those suffixes are read; the others
    are skipped unread and map to ``None``.
    """
    path = Path(path)
    with tarfile.open(path, "r") as tar:
        yield from _tar_samples(tar, path.name, members)


def _tar_samples(tar: tarfile.TarFile, shard: str, members: Collection[str] | None = None) -> Iterator[dict]:
    """The samples of an open tar (see :func:`iter_shard`); works on a stream (``r|``) too."""
    cur: dict | None = None
    for ti in tar:
        if not ti.isfile():
            continue
        base = ti.name.rsplit("/", 1)[-1]
        key, _, suffix = base.partition(".")
        data = tar.extractfile(ti).read() if members is None or suffix in members else None
        if cur is None or cur["key"] != key:
            if cur is not None:
                yield cur
            cur = {"key": key, "shard": shard, "mask.png": None}
        cur[suffix] = json.loads(data) if suffix == "json" and data is not None else data
    if cur is not None:
        yield cur


class _HashingReader(io.RawIOBase):
    """A read-only file wrapper that hashes what is read through it (one pass: read + sha256)."""

    def __init__(self, f):
        self._f = f
        self.sha = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        b = self._f.read(n)
        self.sha.update(b)
        return b

    def drain(self, bufsize: int = 1 << 20) -> str:
        """Hash the rest of the file; returns the hex sha256 of the whole file."""
        while self.read(bufsize):
            pass
        return self.sha.hexdigest()


def _count_lines(path: Path, required: tuple[str, ...], bad) -> int:
    """Non-empty lines of the JSON-lines file ``path`` (0 when it does not exist); ``bad`` is
    called with a message for a line that is not JSON or lacks one of the ``required`` keys."""
    n = 0
    if not path.exists():
        return 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            n += 1
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                bad(f"{path.name}: bad line {line.strip()[:80]}")
                continue
            if any(key not in r for key in required):
                bad(f"{path.name}: line without {'/'.join(required)}: {line.strip()[:80]}")
    return n


def _shard_paths(data_dir: Path) -> list[Path]:
    listed = read_manifest(data_dir).get("shards") if (data_dir / "manifest.json").exists() else None
    if listed is not None:
        return [data_dir / s["name"] for s in listed]
    return sorted(data_dir.glob("*.tar"))


def read_samples(data_dir: str | os.PathLike, members: Collection[str] | None = None) -> Iterator[dict]:
    """Yield every sample of a dataset folder, in shard order (see :func:`iter_shard`, also for
    ``members``).

    Uses the manifest's shard list when present, otherwise every ``*.tar`` in name order.
    """
    for p in _shard_paths(Path(data_dir)):
        yield from iter_shard(p, members)


# ---------------------------------------------------------------------------------------------
# verification
# ---------------------------------------------------------------------------------------------
def _missing(rec: dict) -> str:
    return f"{rec['name']}: listed shard is missing"


def _size_mismatch(rec: dict, size_b: int) -> str | None:
    return None if size_b == rec.get("bytes") else f"{rec['name']}: {size_b} bytes, manifest says {rec.get('bytes')}"


def _sha_mismatch(rec: dict, sha: str) -> str | None:
    return None if sha == rec.get("sha256") else \
        f"{rec['name']}: sha256 {sha[:16]}..., manifest says {str(rec.get('sha256'))[:16]}..."


class ShardMismatchError(ValueError):
    """Shards that do not match their manifest (:func:`check_shard_files`); ``problems`` lists them."""

    def __init__(self, data_dir: str | os.PathLike, problems: list[str]):
        self.data_dir = Path(data_dir)
        self.problems = list(problems)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{self.data_dir}: {problems[0]}{more}: the shards do not match their manifest "
                         "(damaged or changed after they were written)")


def check_shard_files(data_dir: str | os.PathLike, manifest: dict | None = None, hash: bool = True) -> list[str]:
    """The file checks of :func:`verify` (what ``maskkit stats`` reports first), alone: every shard
    the manifest lists exists with its listed byte size and -- with ``hash`` -- sha256.

    ``maskkit export-rec`` runs it before exporting (one sequential read of every shard); a
    finished ``maskkit synth`` found again runs it without ``hash`` (sizes only: a stat each).

    Args:
        data_dir: the dataset folder.
        manifest: its manifest, when already read (else ``manifest.json`` is read).
        hash: also compare each shard's sha256 (a shard whose size differs is not hashed).

    Returns:
        One line per problem, in shard order, worded as :func:`verify` words them (empty: all match).

    Raises:
        FileNotFoundError: no ``manifest.json`` (:func:`read_manifest`).
    """
    d = Path(data_dir)
    man = read_manifest(d) if manifest is None else manifest
    problems: list[str] = []
    for rec in man.get("shards", []):
        p = d / rec["name"]
        if not p.is_file():
            problems.append(_missing(rec))
            continue
        bad = _size_mismatch(rec, p.stat().st_size) or (_sha_mismatch(rec, sha256_file(p)) if hash else None)
        if bad:
            problems.append(bad)
    return problems


@dataclass
class VerifyReport:
    """Result of :func:`verify`.

    Attributes:
        ok: no problem found.
        problems: one human-readable line per mismatch.
        counted: what was counted in the shards (samples, masked, styles, per_class, ...).
        manifest: the manifest as read.
    """

    ok: bool
    problems: list[str] = field(default_factory=list)
    counted: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)


def verify(data_dir: str | os.PathLike, decode: bool = False, max_problems: int = 50) -> VerifyReport:
    """Check a dataset folder against its manifest.

    Checks: format/version; every listed shard exists with the listed byte size, sha256 and
    sample count; no unlisted shard; keys unique and well-formed; every sample has ``jpg`` and
    ``json``; labels/identities agree with ``classes``; totals (samples, masked, per style, per
    class) equal the manifest; per class, masked faces equal ``round_half_up(ratio * faces)``
    minus any recorded mask shortfall, and a shortfall only where every face of the class was
    tried (``masked + logged mask skips == faces``); ``mask_skips.jsonl`` holds ``mask_skips``
    lines; ``twin`` links are mutual; ``inputs.files == ok + failed``
    and ``failures.jsonl`` holds ``failed`` lines; ``rejected.jsonl`` holds ``faces_rejected``
    lines (when the manifest has that key). With ``decode=True`` every JPEG (and mask PNG)
    is also decoded and its size checked against ``image_size`` (a colour JPEG, a single-channel
    PNG); ``counted["decoded"]`` then says how many of each were decoded.

    Args:
        data_dir: the dataset folder.
        decode: also decode every image (slower).
        max_problems: stop listing after this many problems.

    Returns:
        :class:`VerifyReport`.
    """
    d = Path(data_dir)
    problems: list[str] = []

    def bad(msg: str) -> None:
        if len(problems) < max_problems:
            problems.append(msg)

    try:
        man = read_manifest(d)
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        return VerifyReport(False, [str(exc)], {}, {})
    if man.get("format") != FORMAT_NAME or man.get("version") != FORMAT_VERSION:
        bad(f"manifest format {man.get('format')!r} v{man.get('version')!r}, expected {FORMAT_NAME!r} v{FORMAT_VERSION}")
    classes = list(man.get("classes", []))
    styles_all = list(man.get("styles", {}).keys())
    size = tuple(man.get("image_size", (112, 112)))
    listed = {s["name"] for s in man.get("shards", [])}
    for p in sorted(d.glob("*.tar")):
        if p.name not in listed:
            bad(f"{p.name}: shard file not listed in the manifest")
    keys: set[str] = set()
    twins: dict[str, str | None] = {}
    masked_keys: set[str] = set()
    n = masked = 0
    decoded = {"jpg": 0, "mask_png": 0}
    styles = {s: 0 for s in styles_all}
    per_class = {c: {"samples": 0, "masked": 0} for c in classes}
    for rec in man.get("shards", []):
        p = d / rec["name"]
        if not p.exists():
            bad(_missing(rec))
            continue
        if msg := _size_mismatch(rec, p.stat().st_size):
            bad(msg)
        mark = len(problems)  # the sha256 line goes here, before this shard's sample problems
        count = 0
        fh = open(p, "rb")
        hr = _HashingReader(fh)
        try:  # one sequential read both hashes the shard and parses its samples
            for s in _tar_samples(tarfile.open(fileobj=hr, mode="r|*"), p.name):
                count += 1
                key = s["key"]
                if not KEY_RE.match(key):
                    bad(f"{rec['name']}: key {key!r} has characters outside [A-Za-z0-9_-]")
                if key in keys:
                    bad(f"{rec['name']}: duplicate key {key}")
                keys.add(key)
                if "jpg" not in s or "json" not in s:
                    bad(f"{rec['name']}: sample {key} lacks jpg or json")
                    continue
                meta = s["json"]
                lab, ident = meta.get("label"), meta.get("identity")
                if not isinstance(lab, int) or not 0 <= lab < len(classes) or classes[lab] != ident:
                    bad(f"{key}: label {lab!r} / identity {ident!r} disagree with manifest classes")
                    continue
                n += 1
                pc = per_class[ident]
                pc["samples"] += 1
                if meta.get("masked"):
                    masked_keys.add(key)
                    masked += 1
                    pc["masked"] += 1
                    st = meta.get("style")
                    styles[st] = styles.get(st, 0) + 1
                    if meta.get("mask") is None:
                        bad(f"{key}: masked sample without render parameters")
                twins[key] = meta.get("twin")
                if decode:
                    import cv2
                    import numpy as np

                    decoded["jpg"] += 1
                    img = cv2.imdecode(np.frombuffer(s["jpg"], np.uint8), cv2.IMREAD_COLOR)
                    if img is None or tuple(img.shape[:2]) != size:
                        bad(f"{key}: jpg does not decode to {size[0]}x{size[1]}")
                    if s.get("mask.png") is not None:
                        decoded["mask_png"] += 1
                        m = cv2.imdecode(np.frombuffer(s["mask.png"], np.uint8), cv2.IMREAD_UNCHANGED)
                        if m is None or m.ndim != 2 or tuple(m.shape) != size:
                            bad(f"{key}: mask.png is not a {size[0]}x{size[1]} single-channel image")
        except (tarfile.TarError, OSError, json.JSONDecodeError) as exc:
            bad(f"{rec['name']}: unreadable ({exc})")
        with fh:
            sha = hr.drain()
        if (msg := _sha_mismatch(rec, sha)) and mark < max_problems:
            problems.insert(mark, msg)
            del problems[max_problems:]
        if count != rec.get("samples"):
            bad(f"{rec['name']}: {count} samples, manifest says {rec.get('samples')}")
    if n != man.get("num_samples"):
        bad(f"num_samples: counted {n}, manifest says {man.get('num_samples')}")
    if masked != man.get("num_masked"):
        bad(f"num_masked: counted {masked}, manifest says {man.get('num_masked')}")
    if styles != {**{s: 0 for s in styles_all}, **man.get("styles", {})}:
        bad(f"styles: counted {styles}, manifest says {man.get('styles')}")
    ratio = float(man.get("ratio", 0.0))
    paired = bool(man.get("paired", False))
    for c in classes:
        got = per_class[c]
        want = man.get("per_class", {}).get(c, {})
        if got["samples"] != want.get("samples") or got["masked"] != want.get("masked"):
            bad(f"class {c}: counted {got}, manifest says {want}")
        faces, exp = class_expected_masked(man, c, got)
        if got["masked"] != exp:
            bad(f"class {c}: {got['masked']} masked of {faces} faces, ratio {ratio} requires {exp}")
    _check_shortfall(d, man, classes, per_class, bad)
    for k, t in twins.items():
        if t is not None and twins.get(t, "<missing>") != k:
            bad(f"{k}: twin {t} missing or not linked back")
    if paired:  # every masked sample has its plain twin (plain faces not chosen have none)
        for k, t in twins.items():
            if t is None and k in masked_keys:
                bad(f"{k}: masked sample of a paired dataset without its plain twin")
    inputs = man.get("inputs", {})
    if inputs.get("files") != inputs.get("ok", 0) + inputs.get("failed", 0):
        bad(f"inputs: files {inputs.get('files')} != ok {inputs.get('ok')} + failed {inputs.get('failed')}")
    nfail = _count_lines(d / "failures.jsonl", ("src", "reason"), bad)
    if nfail != inputs.get("failed", 0):
        bad(f"failures.jsonl has {nfail} lines, manifest inputs.failed is {inputs.get('failed')}")
    if "seen" in inputs:  # maskkit's extension: every file under --src accounted for
        if inputs["seen"] != inputs.get("files", 0) + inputs.get("skipped", 0):
            bad(f"inputs: seen {inputs['seen']} != files {inputs.get('files')} + skipped {inputs.get('skipped')}")
        nskip = _count_lines(d / "skipped.jsonl", ("src", "reason"), bad)
        if nskip != inputs.get("skipped", 0):
            bad(f"skipped.jsonl has {nskip} lines, manifest inputs.skipped is {inputs.get('skipped')}")
    nrej = 0
    if "faces_rejected" in man:  # maskkit's extension: faces left out of files that gave samples
        if not (d / "rejected.jsonl").exists():
            bad("rejected.jsonl is missing (the manifest counts faces_rejected)")
        nrej = _count_lines(d / "rejected.jsonl", ("src", "face", "reason"), bad)
        if nrej != man["faces_rejected"]:
            bad(f"rejected.jsonl has {nrej} lines, manifest faces_rejected is {man['faces_rejected']}")
    if "unverified" in man:  # maskkit's extension: --aligned crops kept without a checked fit, one line each
        nunv = _count_lines(d / "unverified.jsonl", ("src",), bad)
        if nunv != man["unverified"]:
            bad(f"unverified.jsonl has {nunv} lines, manifest unverified is {man['unverified']}")
    counted = {"num_samples": n, "num_masked": masked, "styles": styles, "per_class": per_class,
               "failures": nfail, "rejected": nrej, "keys": len(keys)}
    if decode:
        counted["decoded"] = decoded
    return VerifyReport(not problems, problems, counted, man)


def _skips_per_class(d: Path, classes: list[str], bad: Callable[[str], None]) -> tuple[dict[str, int], int]:
    """Lines of ``mask_skips.jsonl`` per class (the class is the key's ``<label:06d>`` prefix, see
    ``maskkit.pipeline.synth.seeding.sample_key``) and the total line count."""
    per: dict[str, int] = {}
    total = 0
    p = d / "mask_skips.jsonl"
    if not p.exists():
        return per, 0
    with open(p, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            total += 1
            try:
                key = str(json.loads(line)["key"])
                cls = classes[int(key.split("_", 1)[0])]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
                bad(f"mask_skips.jsonl: line without a sample key of a listed class: {line.strip()[:80]}")
                continue
            per[cls] = per.get(cls, 0) + 1
    return per, total


def _check_shortfall(d: Path, man: dict, classes: list[str], per_class: dict, bad: Callable[[str], None]) -> None:
    """A recorded mask shortfall must be explained by logged mask skips.

    Synth masks an identity's faces in a seeded order until ``round_half_up(ratio * faces)``
    succeed; a face the renderer refuses is logged in ``mask_skips.jsonl`` and the next one takes
    its place. So an identity falls short only after every one of its faces was tried: its
    shortfall is at most its skips, and then ``masked + skips == faces``. A shortfall without
    those skips means faces were left unmasked for no logged reason.
    """
    shortfall = man.get("mask_shortfall") or {}
    skips, total = _skips_per_class(d, classes, bad)
    if "mask_skips" in man and total != int(man.get("mask_skips") or 0):
        bad(f"mask_skips.jsonl has {total} lines, manifest mask_skips is {man.get('mask_skips')}")
    for c, k in sorted(shortfall.items()):
        k = int(k)
        if c not in per_class:
            bad(f"mask_shortfall names {c!r}, which is not a listed class")
            continue
        if k <= 0:
            bad(f"class {c}: mask_shortfall {k} is not a positive count")
            continue
        got = per_class[c]
        faces = got["samples"] - got["masked"] if man.get("paired") else got["samples"]
        n_skip = skips.get(c, 0)
        if n_skip < k or got["masked"] + n_skip != faces:
            bad(f"class {c}: mask shortfall {k} not explained by its {n_skip} logged mask skips "
                f"({got['masked']} masked + {n_skip} skipped != {faces} faces)")


def style_share_deviation(styles: dict[str, int]) -> float:
    """Largest ``|share - 1/K|`` over the K styles (0 when nothing is masked)."""
    tot = sum(styles.values())
    if not tot or not styles:
        return 0.0
    k = len(styles)
    return max(abs(v / tot - 1.0 / k) for v in styles.values())
