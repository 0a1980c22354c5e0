"""Input discovery: walk a source tree into a sorted, deterministic list of :class:`SourceItem`.

* Recognised extensions (any case): ``.jpg .jpeg .png .bmp .webp .tif .tiff``. The decoder
  reads contents, so the extension only decides what is *considered* an input.
* Identity sub-folders are followed, including symlinked folders, but each real directory is
  entered once: a symlink loop becomes a failed item (``error="symlink_loop"``) instead of an
  endless walk. Unreadable folders and dangling links become failed items too, so every
  input is accounted for (``files == ok + failed``).
* ``identity`` is the first path component under ``src`` (``""`` for files directly in it).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

log = logging.getLogger(__name__)

__all__ = ["IMAGE_EXTENSIONS", "SourceItem", "iter_sources"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class SourceItem:
    """One input.

    Attributes:
        path: filesystem path (under ``src``, possibly through symlinks).
        rel: POSIX path relative to ``src``.
        identity: first folder of ``rel`` (class name), ``""`` at the top level.
        error: ``None`` for a normal file; else a reason token (``symlink_loop``,
            ``read_error``, ``broken_link``) for an entry that cannot be read.
        detail: human-readable explanation of ``error``.
    """

    path: Path
    rel: str
    identity: str
    error: str | None = None
    detail: str = ""


def _identity(rel: str) -> str:
    parts = PurePosixPath(rel).parts
    return parts[0] if len(parts) > 1 else ""


def iter_sources(src_dir: str | os.PathLike, exclude: Iterable[str | os.PathLike] = ()) -> list[SourceItem]:
    """List the image inputs under ``src_dir``.

    Args:
        src_dir: root folder (or a single image file).
        exclude: folders to skip (e.g. the output folder when it lies inside ``src``).

    Returns:
        Items sorted by ``rel``; failed entries (loops, unreadable folders, dangling links)
        are included with ``error`` set.
    """
    root = Path(src_dir)
    if root.is_file():
        return [SourceItem(root, root.name, "")]
    excl = set()
    for e in exclude:
        try:
            excl.add(Path(e).resolve())
        except OSError:
            pass
    items: list[SourceItem] = []
    seen: set[tuple[int, int]] = set()
    not_images: list[str] = []

    def walk(d: Path, rel: PurePosixPath, ancestors: frozenset) -> None:
        try:
            st = d.stat()
        except OSError as exc:
            items.append(SourceItem(d, rel.as_posix(), _identity(rel.as_posix() + "/x"), "read_error", str(exc)))
            return
        key = (st.st_dev, st.st_ino)
        if key in ancestors:
            items.append(SourceItem(d, rel.as_posix(), _identity(rel.as_posix() + "/x"), "symlink_loop",
                                    f"{rel.as_posix()} links back to one of its parent folders; not followed"))
            return
        if key in seen:  # another link to a folder already walked: its files are already listed
            return
        seen.add(key)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            items.append(SourceItem(d, rel.as_posix() or ".", _identity(rel.as_posix() + "/x"), "read_error",
                                    f"cannot list folder: {exc.strerror or exc}"))
            return
        for e in entries:
            p = Path(e.path)
            r = rel / e.name
            try:
                is_dir = e.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                try:
                    if p.resolve() in excl:
                        continue
                except (OSError, RuntimeError):
                    pass
                walk(p, r, ancestors | {key})
                continue
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                not_images.append(r.as_posix())
                continue
            rs = r.as_posix()
            if e.is_symlink() and not p.exists():
                items.append(SourceItem(p, rs, _identity(rs), "broken_link", "symbolic link to a missing file"))
            else:
                items.append(SourceItem(p, rs, _identity(rs)))

    walk(root, PurePosixPath(""), frozenset())
    if not_images:  # not inputs, but never passed over without a word
        log.warning("%d file(s) under %s have no image extension (%s) and are not inputs, e.g. %s",
                    len(not_images), root, " ".join(sorted(IMAGE_EXTENSIONS)), ", ".join(sorted(not_images)[:3]))
    items.sort(key=lambda it: it.rel)
    return items
