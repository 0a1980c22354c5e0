"""Atomic file writes: readers never see half a file (a temporary file, then a rename).

:func:`write_atomic` writes through a per-process temporary name (safe when several workers
write beside each other); :func:`write_bytes_atomic` / :func:`write_json_atomic` also fsync the
file and its folder, and use ``NAME.tmp`` (which ``maskkit synth`` cleans up on resume).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["write_atomic", "write_bytes_atomic", "write_json_atomic"]

def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a per-process temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


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
    """Write bytes to ``path`` via a temporary file, fsync and rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
