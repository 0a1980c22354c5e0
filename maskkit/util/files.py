"""Atomic file writes, and the rules that keep a command from replacing files it did not write.

:func:`write_atomic` writes through a per-process temporary name (safe when several workers
write beside each other); :func:`write_bytes_atomic` / :func:`write_json_atomic` also fsync the
file and its folder, and use ``NAME.tmp`` (which ``maskkit synth`` cleans up on resume).

:func:`claim_outputs` refuses to replace existing outputs without ``--overwrite``;
:func:`claim_folder` refuses an output folder that holds other files than maskkit's own output
(a folder of the user's) unless ``--overwrite`` -- which lets the run write *beside* those files
and never replaces or removes any of them (a run whose output would land on one is refused).

:class:`OutputLock` lets one maskkit run at a time write into an output folder (``align``,
``mask``, ``synth``, ``export-rec``): a second run started while the first writes is refused
with one line (:class:`OutputBusyError`) instead of mixing its records into the first one's.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["write_atomic", "write_bytes_atomic", "write_json_atomic", "OutputExistsError", "claim_outputs",
           "SYSTEM_FILES", "foreign_files", "existing_names", "claim_folder", "LOCK_FILE", "OutputLock",
           "OutputBusyError"]


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


#: Entries an operating system leaves in any folder: never counted as somebody's files.
SYSTEM_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", ".directory", "lost+found"})


def foreign_files(out: Path, ours, limit: int = 5) -> list[str]:
    """Up to ``limit`` entries under ``out`` that ``ours`` does not claim (files, and links of any
    kind; empty folders and :data:`SYSTEM_FILES` are nothing), as POSIX paths relative to ``out``
    (display form), in walk order. Stops at ``limit``: a large folder is not walked through.

    Args:
        out: the output folder (may not exist: nothing).
        ours: ``ours(rel) -> bool`` for a file the command may hold there as its own output.
    """
    from maskkit.util.names import display_name

    found: list[str] = []
    for dp, dns, fns in os.walk(out):
        rel_dir = os.path.relpath(dp, out)
        links = [d for d in dns if os.path.islink(os.path.join(dp, d))]  # not walked: counted as entries
        dns[:] = sorted(d for d in dns if d not in SYSTEM_FILES and d not in links)
        for name in sorted(fns) + sorted(links):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            if name in SYSTEM_FILES or rel in _LOCK_FILES or ours(rel):
                continue
            found.append(display_name(rel))
            if len(found) >= limit:
                return found
    return found


def existing_names(out: Path, rels, numbered: bool = False) -> list[str]:
    """The files of ``out`` at the names among ``rels`` (POSIX paths relative to ``out``).

    Args:
        numbered: each ``BASE.EXT`` stands for ``BASE_<k>.EXT`` for any k (``--faces all`` crops).
    """
    import re

    listed: dict[str, tuple[set, dict]] = {}

    def names_in(d: str) -> tuple[set, dict]:
        if d not in listed:
            try:
                names = set(os.listdir(out / d)) if d else set(os.listdir(out))
            except OSError:
                names = set()
            stems: dict = {}
            for n in sorted(names):
                if m := re.fullmatch(r"(.*)_(\d+)(\.[^.]*)", n):
                    stems.setdefault((m.group(1), m.group(3)), []).append(n)
            listed[d] = (names, stems)
        return listed[d]

    hits = []
    for rel in rels:
        d, _, name = rel.rpartition("/")
        names, stems = names_in(d)
        if numbered:
            stem, dot, ext = name.rpartition(".")
            hits += [f"{d}/{n}" if d else n for n in stems.get((stem, dot + ext), [])]
        elif name in names:
            hits.append(rel)
    return hits


def claim_folder(out: Path, ours, overwrite: bool, taken=lambda: [], what: str = "maskkit output") -> None:
    """Refuse an output folder that holds files other than the command's own output.

    A folder that holds anything ``ours`` does not claim (:func:`foreign_files`) is refused
    unless ``overwrite``. With ``overwrite`` the run writes beside those files and never replaces
    or removes one: when an output would land on one (``taken()``: the run's outputs that exist
    already) it is refused all the same, naming them.

    Args:
        out: the output folder (may not exist).
        ours: ``ours(rel) -> bool``, a file the command may hold there as its own.
        overwrite: ``--overwrite`` was given.
        taken: the outputs of this run that exist in ``out`` already (called with ``overwrite`` only).
        what: what the command writes, for the message.

    Raises:
        OutputExistsError: with the reason and the way out, in one line.
    """
    from maskkit.util.names import safe_text

    foreign = foreign_files(out, ours)
    if not foreign:
        return
    eg = ", ".join(foreign) + (", ..." if len(foreign) >= 5 else "")
    if not overwrite:
        raise OutputExistsError(safe_text(
            f"--out {out} is not empty: it holds files that are not {what} ({eg}); choose a new or empty "
            "folder, or pass --overwrite to write beside them (they are kept: never replaced or removed)"))
    hit = taken()
    if hit:
        more = f" and {len(hit) - 4} more" if len(hit) > 4 else ""
        raise OutputExistsError(safe_text(
            f"--out {out} holds files that are not {what} where this run would write "
            f"({', '.join(hit[:4])}{more}); --overwrite never replaces a file maskkit did not write: "
            "move them, or choose another --out"))


#: The lock file a running command holds in its output folder (:class:`OutputLock`); removed
#: when the run ends. ``.synth.lock`` is the name maskkit synth used before, left by a killed run.
LOCK_FILE = ".maskkit.lock"
_LOCK_FILES = frozenset({LOCK_FILE, ".synth.lock"})


class OutputBusyError(RuntimeError):
    """Another maskkit run is writing to the output folder right now (it holds :data:`LOCK_FILE`)."""


class OutputLock:
    """One writer per output folder: a second maskkit run into the same folder fails fast.

    The lock is an advisory ``flock`` on ``OUT/.maskkit.lock``, which the operating system
    releases when its holder ends in any way (even ``kill -9`` or a power loss on a local disk):
    a lock file left by a killed run never blocks the rerun. The file holds the holder's command
    and process id, for the message. Released and removed by :meth:`release` (or the ``with``
    block's end). On a system without ``fcntl`` (Windows) nothing is locked.

    Args:
        out: the output folder (it must exist when :meth:`acquire` is called).
        command: the holder, for another run's message (``"maskkit align"``).

    Example:
        >>> with OutputLock(out, "maskkit align"):  # doctest: +SKIP
        ...     write_the_outputs()
    """

    def __init__(self, out: str | os.PathLike, command: str) -> None:
        self.out, self.command = Path(out), command
        self.path = self.out / LOCK_FILE
        self._fh = None

    def acquire(self) -> "OutputLock":
        """Take the lock.

        Raises:
            OutputBusyError: another run holds it; the message names the folder and that run.
            OSError: the lock file cannot be created (the folder is not writable).
        """
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX: no locking
            return self
        while True:
            # never through a link: a .maskkit.lock planted as a link to another file must not be
            # truncated and written (ELOOP); a folder at the name is not the folder's fault
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except OSError as exc:
                if os.path.islink(self.path) or os.path.isdir(self.path):
                    raise OutputBusyError(f"{self.path} is a {'link' if os.path.islink(self.path) else 'folder'}, "
                                          "not maskkit's lock file: remove it, then rerun") from None
                raise exc
            fh = os.fdopen(fd, "r+b")
            try:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    raise OutputBusyError(self._busy_message()) from None
                try:  # the holder before us removed the file while we waited on it: lock the new one
                    same = os.stat(self.path).st_ino == os.fstat(fh.fileno()).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    fh.seek(0)
                    fh.truncate()
                    fh.write(f"{self.command} pid {os.getpid()}\n".encode("utf-8", "replace"))
                    fh.flush()
                    self._fh = fh
                    return self
            except BaseException:
                fh.close()
                raise
            fh.close()

    def _busy_message(self) -> str:
        from maskkit.util.names import safe_text

        try:
            holder = self.path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            holder = ""
        who, _, pid = holder.partition(" pid ")
        who = who if who.startswith("maskkit") else "maskkit run"
        return safe_text(f"another {who}{f' (pid {pid})' if pid.isdigit() else ''} is writing to {self.out} "
                         "right now; wait for it to end, or choose another output")

    def release(self) -> None:
        """Remove the lock file and release the lock (finished, refused or stopped: no trace is left)."""
        if self._fh is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:  # pragma: no cover - the folder turned read-only: the OS still releases the lock
            pass
        self._fh.close()
        self._fh = None

    def __enter__(self) -> "OutputLock":
        return self if self._fh is not None else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
