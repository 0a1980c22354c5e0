"""WebDataset tar shards and the manifest (``docs/FORMAT.md``, version 1): writer and reader.

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
* :mod:`maskkit.io.shard_verify` checks a finished dataset against its manifest (what
  ``maskkit stats`` runs).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Iterator

from maskkit.util.files import _fsync_dir

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "KEY_RE", "Sample", "ShardSink", "shard_name",
    "read_manifest", "ManifestError", "iter_shard", "read_samples", "sha256_file", "round_half_up", "expected_masked",
    "class_expected_masked", "encode_json",
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
class ManifestError(ValueError):
    """A ``manifest.json`` that cannot be a shard set's: unreadable, not JSON, not a JSON object,
    or a key readers rely on missing or of the wrong type. The message is one line that starts
    with the file's path and says what is wrong."""


#: Keys every reader relies on, and the JSON type each must have.
_REQUIRED = {"classes": list, "shards": list}
#: Keys that may be absent (older sets, other writers) but, when present, must have this type.
_TYPED = {"styles": dict, "per_class": dict, "inputs": dict, "image_size": list, "num_samples": int,
          "num_masked": int, "num_faces": int}
_JSON_TYPE = {dict: "an object", list: "an array", str: "a string", int: "a whole number", float: "a number",
              bool: "true/false", type(None): "null"}


def _json_type(v) -> str:
    return _JSON_TYPE.get(type(v), type(v).__name__)


def _manifest_problem(man, require: Collection[str]) -> str | None:
    """What makes ``man`` (parsed JSON) no shard-set manifest, or None."""
    if not isinstance(man, dict):
        return f"holds {_json_type(man)}, not a manifest (a JSON object)"
    for key in require:
        if key not in man:
            return f"has no {key!r} (every shard-set manifest lists its {key})"
    for key, typ in {**_REQUIRED, **_TYPED}.items():
        v = man.get(key)
        if key in man and not (isinstance(v, typ) and not (typ is int and isinstance(v, bool))):
            return f"{key!r} is {_json_type(v)}, not {_JSON_TYPE[typ]}"
    if "format" in man and man["format"] != FORMAT_NAME:
        return f"'format' is {man['format']!r}, not {FORMAT_NAME!r}"
    if "version" in man and not (isinstance(man["version"], int) and not isinstance(man["version"], bool)
                                 and 1 <= man["version"] <= FORMAT_VERSION):
        return (f"'version' is {man['version']!r}: this maskkit reads shard format versions 1..{FORMAT_VERSION} "
                "(a newer maskkit wrote it, or the file was edited)")
    classes = man.get("classes", [])
    if not all(isinstance(c, str) for c in classes):
        return "'classes' holds an entry that is not a string"
    if len(set(classes)) != len(classes):
        dup = next(c for i, c in enumerate(classes) if c in classes[:i])
        return f"'classes' lists {dup!r} twice (each identity is one class)"
    names: set[str] = set()
    for i, rec in enumerate(man.get("shards", [])):
        if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
            return f"'shards' entry {i} is not an object with a 'name' string"
        name = rec["name"]
        if name in ("", ".", "..") or "/" in name or "\\" in name or name.startswith("."):
            return f"'shards' entry {i} is named {name!r}, not a file name inside the set folder"
        if name in names:
            return f"'shards' lists {name!r} twice"
        names.add(name)
        for k in ("samples", "bytes"):
            if k in rec and (not isinstance(rec[k], int) or isinstance(rec[k], bool) or rec[k] < 0):
                return f"'shards' entry {i} ({name}): {k!r} is {rec[k]!r}, not a whole number >= 0"
        if "sha256" in rec and not isinstance(rec["sha256"], str):
            return f"'shards' entry {i} ({rec['name']}): 'sha256' is {_json_type(rec['sha256'])}, not a string"
    if "image_size" in man and not (len(man["image_size"]) == 2 and all(
            isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in man["image_size"])):
        return f"'image_size' is {man['image_size']!r}, not [height, width] in pixels"
    # a size the manifest states is its consumers' to judge: train refuses crops under 16 px, export-rec
    # compares it with the faces (a set an older synth made at --size 7 is a set, not damage)
    if "shards" in man and not man["shards"] and man.get("num_samples", 0) > 0:
        # the counts themselves are verify()'s to compare; a set of samples listing no shard is no set
        return f"'shards' lists no shard, but 'num_samples' is {man['num_samples']:,}"
    return None


def read_manifest(data_dir: str | os.PathLike, require: Collection[str] = tuple(_REQUIRED)) -> dict:
    """Load and check a shard set's ``manifest.json`` (``docs/FORMAT.md``).

    The one reader of the file for every command (``stats``, ``export-rec``, ``train``,
    ``preview``): the keys readers rely on are checked here, so a damaged file is one error.

    Args:
        data_dir: the shard folder.
        require: keys that must be there (default ``classes`` and ``shards``; ``()`` for a reader
            that copes without them, e.g. ``preview``, which then takes every ``*.tar``). Keys
            that are there are type-checked either way.

    Returns:
        The manifest (a dict; ``classes`` and ``shards`` lists when present; the other keys as written).

    Raises:
        FileNotFoundError: no ``manifest.json`` (a clear message: an unfinished run, or no shard folder).
        ManifestError: the file is unreadable, not JSON (e.g. a torn write), not a JSON object,
            or lacks ``classes`` / ``shards`` or holds a key of the wrong type; one line naming it.
    """
    p = Path(data_dir) / "manifest.json"
    if not p.exists():
        raise FileNotFoundError(f"{p} is missing: the dataset is incomplete (a run that did not finish?) "
                                "or this is not a maskkit shard folder")
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ManifestError(f"{p}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{p}: is not UTF-8 text (byte {exc.start}); the file is damaged") from None
    try:
        man = json.loads(text)
    except json.JSONDecodeError as exc:
        what = "is empty" if not text.strip() else f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        raise ManifestError(f"{p}: {what}; the file is damaged (a torn write?): rebuild the set with the "
                            "command that made it") from None
    bad = _manifest_problem(man, require)
    if bad:
        raise ManifestError(f"{p}: {bad}; the file is damaged or is not a maskkit shard-set manifest") from None
    return man


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


def _shard_paths(data_dir: Path) -> list[Path]:
    listed = read_manifest(data_dir, require=()).get("shards") if (data_dir / "manifest.json").exists() else None
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
