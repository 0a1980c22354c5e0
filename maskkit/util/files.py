"""Atomic file writes: readers never see half a file (a temporary file, then a rename).

:func:`write_atomic` writes through a per-process temporary name (safe when several workers
write beside each other); :func:`write_bytes_atomic` / :func:`write_json_atomic` also fsync the
file and its folder, and use ``NAME.tmp`` (which ``maskkit synth`` cleans up on resume).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["write_atomic", "write_bytes_atomic", "write_json_atomic", "OutputExistsError", "claim_outputs"]


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a per-process temporary file and a rename.

    Raises:
        OSError: the write failed (no space, read-only, ...); the temporary file is removed and
            ``path`` is as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: Path) -> None:
    """Remove a temporary file after a failed write (never raises: the write's error is the one to report)."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:  # pragma: no cover - e.g. the folder turned read-only
        pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    """Write JSON to ``path`` via a temporary file, fsync and rename (readers never see half a file)."""
    write_bytes_atomic(path, json.dumps(obj, indent=indent, sort_keys=False, ensure_ascii=False).encode("utf-8") + b"\n")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to ``path`` via a temporary file, fsync and rename (on failure the temporary
    file is removed and ``path`` is as it was)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise
    _fsync_dir(path.parent)


class OutputExistsError(FileExistsError):
    """An output that exists would be replaced, and the command was not told to (``--overwrite``)."""


def claim_outputs(paths, overwrite: bool, what: str, remove: bool = False, alternatives: str = "",
                  where: str | os.PathLike | None = None) -> list[Path]:
    """Refuse to replace existing outputs silently: the one rule of every command that writes a
    file or a run folder (``train``, ``embed``, ``export``, ``export-rec``, ``preview -o``, ...).

    Args:
        paths: the files (or folders) the command is about to write.
        overwrite: the command was given ``--overwrite``: existing outputs may be replaced.
        what: what they are, for the message (``"a training run"``, ``"an embeddings file"``).
        remove: with ``overwrite``, delete the existing ones first (files unlinked, folders
            removed with their contents) -- for outputs made of several files, where a new run
            would otherwise leave some of the old ones behind.
        alternatives: other ways out named in the message (``"--resume to continue it"``).
        where: the folder named in the message (default: the existing paths themselves).

    Returns:
        The paths that existed (removed when ``remove``).

    Raises:
        OutputExistsError: some exist and ``overwrite`` is false; the message names them and the way out.
    """
    import shutil

    from maskkit.util.names import safe_text

    existing = [Path(p) for p in paths if os.path.lexists(p)]
    if existing and not overwrite:
        if where is not None:
            names = ", ".join(safe_text(p.name) for p in existing[:4]) + (", ..." if len(existing) > 4 else "")
            held = f"{safe_text(str(where))} already holds {what} ({names})"
        else:
            held = f"{safe_text(str(existing[0]))} already exists ({what})"
        ways = " or ".join([a for a in [alternatives] if a] + ["--overwrite to replace it"])
        raise OutputExistsError(f"{held}; pass {ways}, or choose another output")
    if existing and remove:
        for p in existing:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    return existing
