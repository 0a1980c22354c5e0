"""Checking a finished shard set against its manifest (``docs/FORMAT.md``): what ``maskkit stats``
runs (:func:`verify`), and the file checks alone (:func:`check_shard_files`) that ``train``,
``export-rec`` and a finished ``synth`` found again run. ``verify`` restates every promise the
writer (:mod:`maskkit.io.shards`) makes: sizes, hashes, counts, the exact ratio and its logged
exceptions.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from maskkit.io.shards import (
    FORMAT_NAME,
    FORMAT_VERSION,
    KEY_RE,
    ManifestError,
    _tar_samples,
    class_expected_masked,
    read_manifest,
    sha256_file,
)

__all__ = ["VerifyReport", "verify", "check_shard_files", "ShardMismatchError", "style_share_deviation"]


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
        ManifestError: a damaged ``manifest.json`` (:func:`read_manifest`).
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
    except (FileNotFoundError, ManifestError) as exc:  # one line naming the file
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
