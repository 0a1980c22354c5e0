"""Input discovery: walk a source tree into a sorted, deterministic list of inputs, and account
for every other file under it.

* Recognised extensions (any case): ``.jpg .jpeg .png .bmp .webp .tif .tiff`` and the JPEG
  aliases ``.jfif .jpe .jif``. The decoder reads contents, so the extension only decides what is
  *considered* an input.
* Identity sub-folders are followed, including symlinked folders, but each real directory is
  entered once: a symlink loop becomes a failed item (``error="symlink_loop"``) instead of an
  endless walk; so does a file link whose chain leads back to itself (``a.jpg -> b.jpg -> a.jpg``). Unreadable folders and dangling links become failed items too.
* Every other file under ``src`` is a :class:`Skipped` entry with a reason
  (:data:`SKIP_REASONS`): ``not_an_image`` (no image extension), ``duplicate_via_link`` (under a
  second link to a folder already walked, or a symbolic link to a file that is an input already:
  same ``os.path.realpath``; the file that is not a link wins, else the first link in walk
  order), ``inside_out`` (under the output folder, when it lies inside ``src``). So
  ``seen == len(items) + len(skipped)`` and, after a run, ``seen == ok + failed + skipped``.
  Hard links are distinct paths of one file: each is an input (the walker cannot tell a hard
  link made on purpose from a copy, and neither is a link a user can see).
* Names are taken as the file system gives them: ``rel`` may hold lone surrogates for bytes that
  are not UTF-8 (see :mod:`maskkit.util.names`); :meth:`SourceItem.fields` gives their text form.
* ``identity`` is the first path component under ``src`` (``""`` for files directly in it).
"""
from __future__ import annotations

import errno
import logging
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable

from maskkit.util.names import display_name, name_fields

log = logging.getLogger(__name__)

__all__ = ["IMAGE_EXTENSIONS", "JPEG_EXTENSIONS", "SKIP_REASONS", "SourceItem", "Skipped", "SourceListing",
           "list_sources", "iter_sources", "log_skipped", "require_inputs", "skipped_records"]

#: JPEG under any of its registered extensions (``.jfif`` is what several browsers save).
JPEG_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jfif", ".jpe", ".jif"})
IMAGE_EXTENSIONS = JPEG_EXTENSIONS | frozenset({".png", ".bmp", ".webp", ".tif", ".tiff"})

#: Why a file under ``--src`` is not an input (``skipped.jsonl``'s ``reason``).
SKIP_REASONS = ("not_an_image", "duplicate_via_link", "inside_out")


@dataclass(frozen=True)
class SourceItem:
    """One input.

    Attributes:
        path: filesystem path (under ``src``, possibly through symlinks).
        rel: POSIX path relative to ``src``, exactly as the file system names it (lone
            surrogates for bytes that are not UTF-8).
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

    @property
    def display(self) -> str:
        """``rel`` as valid UTF-8 text (:func:`maskkit.util.names.display_name`)."""
        return display_name(self.rel)

    def fields(self, key: str = "src") -> dict:
        """``{"src": display}`` (+ ``"src_bytes"`` for a name that is not UTF-8) for a text record."""
        return name_fields(self.rel, key)


@dataclass(frozen=True)
class Skipped:
    """A file under ``src`` that is not an input: ``rel`` (as :attr:`SourceItem.rel`), ``reason``
    (one of :data:`SKIP_REASONS`) and ``detail``."""

    rel: str
    reason: str
    detail: str = ""

    def record(self) -> dict:
        """The ``skipped.jsonl`` line: ``{"src", ["src_bytes"], "reason", "detail"}``."""
        return {**name_fields(self.rel), "reason": self.reason, "detail": display_name(self.detail)}


@dataclass
class SourceListing:
    """Everything under ``src``: the inputs (sorted by ``rel``) and the files left out (sorted)."""

    items: list[SourceItem] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def seen(self) -> int:
        """Entries found: inputs (readable or not) plus skipped files."""
        return len(self.items) + len(self.skipped)


def skipped_records(skipped: Iterable[Skipped]) -> list[dict]:
    """The ``skipped.jsonl`` lines of a listing."""
    return [s.record() for s in skipped]


def _identity(rel: str) -> str:
    parts = PurePosixPath(rel).parts
    return parts[0] if len(parts) > 1 else ""


def _files_under(d: Path, rel: PurePosixPath) -> list[str]:
    """Every entry under folder ``d`` as a rel, without following symlinked folders (a link is
    listed as one entry): what a folder that is not walked holds."""
    out: list[str] = []
    try:
        entries = sorted(os.scandir(d), key=lambda e: e.name)
    except OSError:
        return [rel.as_posix()]  # an unreadable folder: account for it as one entry
    for e in entries:
        try:
            is_dir = e.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if is_dir:
            out += _files_under(Path(e.path), rel / e.name)
        else:
            out.append((rel / e.name).as_posix())
    return out


def _linked_file_duplicates(files: list[tuple[bool, int, str, str]]) -> dict[str, str]:
    """``{rel: detail}`` of the inputs that are a symbolic link to a file another input already is.

    Inputs are grouped by their target (the real path: every link resolved, so hard links, which
    are distinct paths, stay distinct inputs); a group that holds a symbolic link keeps one input
    -- a file that is not a link first (the real file wins over links to it), else the first
    link in walk order (real folders before linked ones, names sorted) -- and the others are
    duplicates.

    Args:
        files: ``(is a symlink, walk order, real path, rel)`` of every readable input.
    """
    if not any(f[0] for f in files):
        return {}
    groups: dict[str, list[tuple[bool, int, str, str]]] = {}
    for f in files:
        groups.setdefault(f[2], []).append(f)
    dups: dict[str, str] = {}
    for group in groups.values():
        if len(group) < 2 or not any(f[0] for f in group):
            continue
        keep = min(group)  # (False, ...) first: a file that is not a link; then walk order
        for f in group:
            if f is not keep:
                dups[f[3]] = (f"{'a link to ' if f[0] else ''}the same file as {display_name(keep[3])}, "
                              "which is an input already")
    return dups


def _file_link_error(p: Path) -> tuple[str, str] | None:
    """Why the file link ``p`` cannot be read, as ``(reason, detail)``; None when its target is
    there. A link whose chain comes back to itself (``a.jpg -> b.jpg -> a.jpg``: ``ELOOP``) is a
    ``symlink_loop``, a link to nothing ``broken_link``, any other failure ``read_error``."""
    try:
        os.stat(p)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink_loop", "symbolic link loop (its chain of links leads back to itself); not followed"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "broken_link", "symbolic link to a missing file"
        return "read_error", f"cannot follow symbolic link: {exc.strerror or exc}"
    return None


def list_sources(src_dir: str | os.PathLike, exclude: Iterable[str | os.PathLike] = ()) -> SourceListing:
    """List the image inputs under ``src_dir`` and every file that is not one.

    Args:
        src_dir: root folder (or a single image file, taken whatever its extension).
        exclude: folders whose files are not inputs (the output folder when it lies inside
            ``src``); their files are listed as skipped ``inside_out``.

    Returns:
        :class:`SourceListing`: items sorted by ``rel`` (failed entries -- loops, unreadable
        folders, dangling links -- included with ``error`` set) and skipped files sorted by ``rel``.
    """
    root = Path(src_dir)
    if root.is_file():
        return SourceListing([SourceItem(root, root.name, "")])
    excl = set()
    for e in exclude:
        try:
            excl.add(Path(e).resolve())
        except OSError:
            pass
    items: list[SourceItem] = []
    skipped: list[Skipped] = []
    files: list[tuple[bool, int, str, str]] = []  # (a file symlink?, walk order, real path, rel): readable inputs
    first_rel: dict[tuple[int, int], str] = {}
    # symlinked folders wait until every real folder is walked, so a folder's files are named by
    # their real place and a link to it is the duplicate, whatever the names sort like
    pending: deque[tuple[Path, PurePosixPath, frozenset]] = deque()

    def walk(d: Path, rel: PurePosixPath, ancestors: frozenset) -> None:
        try:
            st = d.stat()
        except OSError as exc:
            items.append(SourceItem(d, rel.as_posix(), _identity(rel.as_posix() + "/x"), "read_error", str(exc)))
            return
        key = (st.st_dev, st.st_ino)
        if key in ancestors:
            items.append(SourceItem(d, rel.as_posix(), _identity(rel.as_posix() + "/x"), "symlink_loop",
                                    f"{display_name(rel.as_posix())} links back to one of its parent folders; "
                                    "not followed"))
            return
        if key in first_rel:  # another link to a folder already walked: its files are already listed
            why = f"the same folder as {display_name(first_rel[key] or '.')}/, whose files are inputs already"
            skipped.extend(Skipped(r, "duplicate_via_link", why) for r in _files_under(d, rel))
            return
        first_rel[key] = rel.as_posix() if rel.parts else ""
        real_d = os.path.realpath(d)
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
                    inside_out = p.resolve() in excl
                except (OSError, RuntimeError):
                    inside_out = False
                if inside_out:
                    skipped.extend(Skipped(f, "inside_out", "under the output folder, which lies inside --src")
                                   for f in _files_under(p, r))
                elif e.is_symlink():
                    pending.append((p, r, ancestors | {key}))
                else:
                    walk(p, r, ancestors | {key})
                continue
            rs = r.as_posix()
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append(Skipped(rs, "not_an_image", f"no image extension ({' '.join(sorted(IMAGE_EXTENSIONS))})"))
                continue
            bad = _file_link_error(p) if e.is_symlink() else None
            if bad:
                items.append(SourceItem(p, rs, _identity(rs), *bad))
            else:
                items.append(SourceItem(p, rs, _identity(rs)))
                link = e.is_symlink()
                # the real path: a link's resolved target; a file's, its folder's real path + its name
                # (one realpath per folder, not per file)
                files.append((link, len(files), os.path.realpath(p) if link else os.path.join(real_d, e.name), rs))

    walk(root, PurePosixPath(""), frozenset())
    while pending:
        walk(*pending.popleft())
    dups = _linked_file_duplicates(files)
    if dups:
        items = [it for it in items if it.rel not in dups]
        skipped.extend(Skipped(r, "duplicate_via_link", why) for r, why in dups.items())
    items.sort(key=lambda it: it.rel)
    skipped.sort(key=lambda s: s.rel)
    return SourceListing(items, skipped)


def log_skipped(listing: SourceListing, root: str | os.PathLike) -> None:
    """One warning line per skip reason, with a count and up to three examples (display names)."""
    by: dict[str, list[str]] = {}
    for s in listing.skipped:
        by.setdefault(s.reason, []).append(display_name(s.rel))
    for reason, rels in sorted(by.items()):
        log.warning("%d file(s) under %s are not inputs (%s), e.g. %s", len(rels), display_name(str(root)),
                    reason, ", ".join(rels[:3]))


def iter_sources(src_dir: str | os.PathLike, exclude: Iterable[str | os.PathLike] = ()) -> list[SourceItem]:
    """The inputs of :func:`list_sources` (skipped files are logged, one warning per reason)."""
    listing = list_sources(src_dir, exclude)
    log_skipped(listing, src_dir)
    return listing.items


def require_inputs(listing: SourceListing, src: str | os.PathLike) -> None:
    """Raise :class:`maskkit.util.outcome.NoInputError` (exit status 2) when ``listing`` holds no
    input, with the one message every command gives (:func:`maskkit.util.outcome.no_input_message`)."""
    from maskkit.util.outcome import NoInputError, no_input_message

    if not listing.items:
        raise NoInputError(no_input_message(display_name(str(src)),
                                            [(display_name(s.rel), s.reason) for s in listing.skipped]))
