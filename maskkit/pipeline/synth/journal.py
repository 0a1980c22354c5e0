"""Synth resume: the run fingerprint, the journal of finished shards and identities."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from maskkit.io.shard_verify import check_shard_files
from maskkit.io.shards import encode_json, sha256_file, shard_name
from maskkit.pipeline.synth.config import ALGORITHM_VERSION, JOURNAL, SynthConfig, SynthError
from maskkit.pipeline.runner import REJECTED
from maskkit.pipeline.synth.plan import InputItem
from maskkit.util.files import write_bytes_atomic
from maskkit.util.names import name_bytes


def _jsonl(entries: Sequence[dict]) -> bytes:
    """Canonical JSON lines (the journal, ``failures.jsonl``, ``rejected.jsonl``, ``mask_skips.jsonl``)."""
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
            try:
                self._f.close()
            except OSError:  # a torn last line after a full disk: read() drops it
                pass
            self._f = None


def _our_files(out: Path, split: str) -> list[Path]:
    pats = [f"{split}-*.tar", f"{split}-*.tar.tmp", "manifest.json", "manifest.json.tmp", "failures.jsonl",
            "failures.jsonl.tmp", "mask_skips.jsonl", "mask_skips.jsonl.tmp", "skipped.jsonl", "skipped.jsonl.tmp",
            REJECTED, REJECTED + ".tmp", "unverified.jsonl", "unverified.jsonl.tmp",
            JOURNAL, JOURNAL + ".tmp"]
    return [p for pat in pats for p in out.glob(pat)]


def _fingerprint(cfg: SynthConfig, items: Sequence[InputItem]) -> str:
    h = hashlib.sha256(encode_json(cfg.fingerprint_fields()))
    for it in items:
        h.update(name_bytes(f"{it.identity}\x1f{it.rel}\n"))  # os.fsencode: a name that is not UTF-8 as its bytes
    return h.hexdigest()


@dataclass
class _ResumeState:
    shards: list[dict]
    chunk_entries: list[dict]
    start_chunk: int
    skip: int
    written: int
    style_offset: int = 0  # the leftover-style offset after the last kept identity


def finished_set_damage(out: Path, man: dict) -> str | None:
    """Why the finished set in ``out`` (its manifest ``man``) cannot be called "already complete".

    A finished run found again is complete only when every shard its manifest lists is there at
    its listed byte size (a stat each; ``maskkit stats`` hashes them, export-rec checks the hashes
    before exporting). ``maskkit synth`` and ``maskkit demo`` both decide with this.

    Returns:
        None when all shards match; else one line naming the first damaged shard (and how many
        more), pointing to ``--overwrite``.
    """
    problems = check_shard_files(out, man, hash=False)
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return (f"{out} holds this finished run, but {problems[0]}{more}: the set is damaged; "
            "pass --overwrite to rebuild it (`maskkit stats` lists every mismatch)")


#: How the options of :meth:`SynthConfig.fingerprint_fields` are named in a message.
_OPTION = {"src": "--src", "src_bytes": "--src", "ratio": "--ratio", "paired": "--paired", "styles": "--styles",
           "seed": "--seed", "aligned": "--aligned", "size": "--size", "shard_samples": "--shard-samples",
           "detector": "--detector", "detector_opts": "detector options (--max-side, --upsample)",
           "faces": "--faces", "quality": "--quality", "mask_png": "--no-mask-png", "max_pixels": "--max-pixels",
           "split": "split", "version": "maskkit version", "algorithm": "synth algorithm version"}


def _manifest_config(man: dict) -> dict:
    """The options a finished set was made with: its manifest's ``config`` (maskkit writes it since
    issue 20), else what older manifests record of them."""
    if isinstance(man.get("config"), dict):
        return man["config"]
    old = {"ratio": man.get("ratio"), "paired": man.get("paired"), "seed": man.get("seed"),
           "styles": list(man["styles"]) if isinstance(man.get("styles"), dict) else None,
           "aligned": man.get("aligned_input"), "size": man.get("image_size"),
           "shard_samples": man.get("shard_samples"), "faces": man.get("faces"), "quality": man.get("jpeg_quality"),
           "split": man.get("split"), "algorithm": man.get("algorithm_version", 1),
           "version": str(man.get("created_by", "")).removeprefix("maskkit ") or None}
    if not man.get("aligned_input"):
        old["detector"] = man.get("detector")
    return {k: v for k, v in old.items() if v is not None}


def describe_difference(old: dict, new: dict, old_files: int | None, new_files: int) -> str:
    """Which options (and inputs) of ``new`` differ from ``old`` (both
    :meth:`SynthConfig.fingerprint_fields`-like; only keys ``old`` has are compared), e.g.
    ``--ratio 0.5 -> 0.3; --seed 0 -> 1``, or ``the inputs: 500 files then, 502 now``."""
    diffs = []
    for k in [k for k in new if k in old] + [k for k in old if k not in new]:
        if old.get(k) != new.get(k) and k != "src_bytes":
            diffs.append(f"{_OPTION.get(k, k)} {old.get(k)!r} -> {new.get(k)!r}")
    if old_files is not None and old_files != new_files:
        diffs.append(f"the inputs: {old_files:,} files then, {new_files:,} now")
    elif not diffs:
        diffs.append(f"the inputs: the same count ({new_files:,} files) with other names or identities")
    return "; ".join(diffs[:5]) + ("; ..." if len(diffs) > 5 else "")


def _is_synth_manifest(man: dict) -> bool:
    """A ``manifest.json`` written by maskkit (not another tool's file of that name)."""
    return str(man.get("created_by", "")).startswith("maskkit") or "fingerprint" in man


def _ours_untracked(cfg: SynthConfig):
    """What synth may leave in a folder before its journal exists: the journal's first write and
    the preview sheet (the lock file is every command's own: :func:`maskkit.util.files.foreign_files`)."""
    preview = cfg.preview.resolve() if cfg.preview is not None else None

    def ours(rel: str) -> bool:
        return rel == JOURNAL + ".tmp" or (preview is not None and (cfg.out / rel).resolve() == preview)

    return ours


def _read_manifest(out: Path) -> dict | None:
    """``out``'s ``manifest.json`` when maskkit wrote it (``None``: none, or another tool's)."""
    try:
        man = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return man if isinstance(man, dict) and _is_synth_manifest(man) else None


def claim_out_folder(cfg: SynthConfig) -> None:
    """Before anything is written: ``cfg.out`` holding no synth run (no manifest of maskkit's, no
    journal) but other files (a folder of the user's) is refused unless ``overwrite``; with it the
    run writes beside them and never replaces one -- refused when one has a name synth writes
    (:func:`maskkit.util.files.claim_folder`).

    Raises:
        SynthError: with the reason and the way out.
    """
    from maskkit.util.files import OutputExistsError, claim_folder

    out = cfg.out
    if not out.is_dir() or (out / JOURNAL).exists() or _read_manifest(out) is not None:
        return
    try:
        claim_folder(out, _ours_untracked(cfg), cfg.overwrite, lambda: [p.name for p in _our_files(out, cfg.split)],
                     what="maskkit synth output")
    except OutputExistsError as exc:
        raise SynthError(str(exc)) from None


def _prepare_out(cfg: SynthConfig, fp: str, n_chunks: int, n_files: int = 0) -> _ResumeState | dict:
    """Check ``out``; return the completed manifest (already done) or the resume state."""
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    jr = _Journal(out / JOURNAL)
    man = _read_manifest(out)
    if man is not None:
        if man.get("fingerprint") == fp and not cfg.overwrite:
            if damage := finished_set_damage(out, man):
                raise SynthError(damage)
            for p in _our_files(out, cfg.split):  # leftovers of a kill after the manifest
                if p.name == JOURNAL or p.name.endswith(".tmp"):
                    p.unlink()
            return man
        if not cfg.overwrite and man.get("algorithm_version", 1) != ALGORITHM_VERSION:
            raise SynthError(f"{out} holds a dataset made under synth algorithm version {man.get('algorithm_version', 1)} "
                             f"(this maskkit writes version {ALGORITHM_VERSION}); pass --overwrite to rebuild it, "
                             "or choose another --out")
        if not cfg.overwrite:
            what = describe_difference(_manifest_config(man), cfg.fingerprint_fields(),
                                       (man.get("inputs") or {}).get("files"), n_files)
            raise SynthError(f"{out} holds a finished dataset made with other inputs or options ({what}); "
                             "pass --overwrite to replace it, or choose another --out")
        for p in _our_files(out, cfg.split):
            p.unlink()
    for p in _our_files(out, cfg.split):  # half-written files of a killed run are never kept
        if p.name.endswith(".tmp"):
            p.unlink()
    entries = jr.read()
    if entries and (entries[0].get("fingerprint") != fp or cfg.overwrite):
        old_algo = entries[0].get("config", {}).get("algorithm", 1)
        if not cfg.overwrite and old_algo != ALGORITHM_VERSION:
            raise SynthError(f"{out} holds an unfinished run started under synth algorithm version {old_algo} "
                             f"(this maskkit writes version {ALGORITHM_VERSION}, whose shards differ); it is never "
                             "resumed under new rules: pass --overwrite to start again, or choose another --out")
        if not cfg.overwrite:
            what = describe_difference(entries[0].get("config") or {}, cfg.fingerprint_fields(),
                                       entries[0].get("files"), n_files)
            raise SynthError(f"{out} holds an unfinished run with other inputs or options ({what}); pass "
                             "--overwrite to discard it, or rerun with its options to resume it")
        for p in _our_files(out, cfg.split):
            p.unlink()
        entries = []
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
    jr.rewrite([{"journal": 1, "fingerprint": fp, "config": cfg.fingerprint_fields(), "files": n_files}]
               + [{"shard": r} for r in valid] + keep)
    return _ResumeState(valid, keep, start, skip, written, int(keep[-1].get("style_offset", 0)) if keep else 0)
