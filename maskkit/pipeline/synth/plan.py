"""Synth planning: list the inputs (identity tree or insightface ``.rec``) and cut them into per-identity work units."""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from maskkit.io.shards import Sample
from maskkit.pipeline.synth.config import SynthConfig
from maskkit.util.names import display_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputItem:
    """One input file (or one record of a ``.rec``).

    Attributes:
        rel: source path relative to ``--src`` (POSIX, exactly as the file system names it: lone
            surrogates for bytes that are not UTF-8), or ``train.rec#<key>``.
        identity: class name (the identity folder's name, as exact as ``rel``; files directly in
            ``--src`` take :func:`loose_class_name`).
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
    """One work unit: all inputs of one identity.

    ``display`` is the class name written to text (shard JSON ``identity``, the manifest's
    ``classes``): the identity itself when it is valid UTF-8, else its unique display form
    (:func:`maskkit.util.names.unique_display_names`); empty means ``identity``.
    """

    index: int
    label: int
    identity: str
    items: list[InputItem]
    display: str = ""


@dataclass
class ChunkResult:
    """What a worker returns for a :class:`Chunk` (samples in their final order).

    ``variants``: when the identity has leftover styles (``stats["extra_styles"] > 0``) and was
    processed without knowing the run's style offset, the result for every offset (this object
    is offset 0's); the driver keeps the one for its offset (:meth:`pick`). Variants share their
    unchanged :class:`Sample` objects, so they travel between processes at little cost.
    ``rejected``: the ``rejected.jsonl`` lines of the faces left out of files that give samples
    (the same in every variant).
    ``unverified``: the identity's ``--aligned`` crops kept without a checked fit
    (``unverified.jsonl`` lines, :mod:`maskkit.pipeline.unverified`).
    """

    index: int
    samples: list[Sample]
    failures: list[dict]
    mask_skips: list[dict]
    stats: dict
    variants: dict[int, "ChunkResult"] | None = None
    rejected: list[dict] = field(default_factory=list)  # rejected.jsonl lines (faces left out of kept files)
    unverified: list[dict] = field(default_factory=list)  # --aligned crops kept unverified (unverified.jsonl)

    def pick(self, style_offset: int) -> "ChunkResult":
        """The result for the run's leftover-style offset when this identity comes up."""
        return self.variants[style_offset] if self.variants else self


def _rec_inputs(rec_path: Path) -> list[InputItem]:
    from maskkit.io.recordio import RecError, RecReader, RecTruncatedError
    from maskkit.pipeline.synth.config import SynthError

    try:
        with RecReader(rec_path) as r:
            labels = r.scan_labels()
            offsets = dict(r.offsets)
            masked = r.masked_keys
    except RecTruncatedError as exc:  # refused: the records past the cut would vanish unrecorded
        raise SynthError(str(exc)) from exc
    except RecError as exc:
        raise SynthError(f"cannot read {rec_path}: {exc}") from exc
    names = _sidecar_class_names(r.sidecar, labels.values())
    if names is None:
        width = max(len(str(max(labels.values(), default=0))), 1)
        names = {lab: f"{lab:0{width}d}" for lab in set(labels.values())}
    # a maskkit export (export-rec) marks its masked faces: never mask a face twice
    why = (f"record already holds a maskkit-masked face (id2 = 1, see {r.sidecar.name}); "
           "export with `maskkit export-rec --only plain` to mask a set again")
    return [InputItem(f"{rec_path.name}#{k}", names[labels[k]], str(rec_path), k, offsets[k],
                      error="already_masked" if k in masked else None, detail=why if k in masked else "")
            for k in sorted(labels)]


def _sidecar_class_names(sidecar: Path, labels: Iterable[int]) -> dict[int, str] | None:
    """``{class index: name}`` from a maskkit export's sidecar (``classes``: the shard set's
    class names, by index), so ``export-rec`` -> ``synth`` keeps the names; None (numbered
    classes) without a sidecar, or when its list does not fit (a warning says why)."""
    import json

    if not sidecar.is_file():
        return None
    try:
        classes = json.loads(sidecar.read_text(encoding="utf-8")).get("classes")
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("%s is not readable (%s): classes are numbered", sidecar, exc)
        return None
    if classes is None:
        return None
    used = set(labels)
    ok = (isinstance(classes, list) and all(isinstance(c, str) and c and "/" not in c and "\0" not in c
                                            for c in classes)
          and len(set(classes)) == len(classes) and all(0 <= lab < len(classes) for lab in used))
    if not ok:
        log.warning("%s: its class list does not fit the labels of the records (or holds names that are not "
                    "folder names): classes are numbered", sidecar)
        return None
    return {lab: classes[lab] for lab in used}


#: The class of the files directly in ``--src`` (beside the identity folders).
LOOSE_CLASS = "_root"


def loose_class_name(folders: Iterable[str]) -> str:
    """The class name of the files directly in ``--src``: :data:`LOOSE_CLASS`, or -- when an
    identity folder already has that name (compared as output names are,
    :func:`maskkit.pipeline.naming.name_key`: NFC, casefold) -- ``_root~2`` (``~3``, ...), the
    first that no folder has. So loose files never join a real folder's class (the ``~N``
    suffix is the output-name rule of :mod:`maskkit.pipeline.naming`).

    Args:
        folders: the identity folder names (first path components under ``--src``).
    """
    from maskkit.pipeline.naming import name_key

    taken = {name_key(f) for f in folders}
    name, n = LOOSE_CLASS, 1
    while name_key(name) in taken:
        n += 1
        name = f"{LOOSE_CLASS}~{n}"
    return name


def _dir_inputs(src: Path, out: Path) -> tuple[list[InputItem], list]:
    from maskkit.io.sources import list_sources

    listing = list_sources(src, exclude=[out])
    loose = [it for it in listing.items if it.identity in ("", ".")]
    root_class = loose_class_name({it.identity for it in listing.items} - {"", "."}) if loose else LOOSE_CLASS
    if loose:  # said at run time (it was only in the docs): one identity per sub-folder of --src
        folders = len({it.identity for it in listing.items} - {"", "."})
        where = display_name(str(src))
        if not folders:
            log.warning("all %d input(s) lie directly in %s: they form one identity, class %r (synth reads one "
                        "identity per sub-folder of --src)", len(loose), where, root_class)
        else:
            log.warning("%d file(s) directly in %s form one more identity, class %r, beside the %d identity "
                        "folder(s)%s", len(loose), where, root_class, folders,
                        f" (a folder is already named {LOOSE_CLASS!r})" if root_class != LOOSE_CLASS else "")
    items = []
    for it in listing.items:
        ident = it.identity if it.identity not in ("", ".") else root_class
        items.append(InputItem(str(it.rel), str(ident), str(it.path), error=getattr(it, "error", None),
                               detail=getattr(it, "detail", "")))
    return items, listing.skipped


def list_sources_for(cfg: SynthConfig) -> tuple[list[InputItem], list[str], list]:
    """:func:`list_inputs`, plus the files under ``--src`` that are not inputs.

    Returns:
        ``(items, classes, skipped)``: ``skipped`` holds :class:`maskkit.io.sources.Skipped`
        entries (``skipped.jsonl``; always empty for a ``.rec``).
    """
    if cfg.src.is_file():
        items, skipped = _rec_inputs(cfg.src), []
    else:
        items, skipped = _dir_inputs(cfg.src, cfg.out)
    classes = sorted({it.identity for it in items})
    order = {c: i for i, c in enumerate(classes)}
    items.sort(key=lambda it: (order[it.identity], it.rec_key if it.rec_key is not None else -1, it.rel))
    return items, classes, skipped


def list_inputs(cfg: SynthConfig) -> tuple[list[InputItem], list[str]]:
    """All inputs in their canonical order and the class list (sorted identity names).

    Returns:
        ``(items, classes)``: items sorted by (class, rel).
    """
    items, classes, _ = list_sources_for(cfg)
    return items, classes


def class_display_names(classes: Sequence[str]) -> list[str]:
    """The class names as written to text (manifest ``classes``, shard JSON ``identity``): each
    name itself when valid UTF-8, else a unique display form (docs/FORMAT.md)."""
    from maskkit.util.names import unique_display_names

    disp = unique_display_names(classes)
    return [disp[c] for c in classes]


def plan_chunks(items: Sequence[InputItem], classes: Sequence[str]) -> list[Chunk]:
    """Group items (already in canonical order) into one :class:`Chunk` per identity."""
    order = {c: i for i, c in enumerate(classes)}
    display = dict(zip(classes, class_display_names(classes)))
    by: "OrderedDict[str, list[InputItem]]" = OrderedDict()
    for it in items:
        by.setdefault(it.identity, []).append(it)
    return [Chunk(i, order[ident], ident, its, display[ident]) for i, (ident, its) in enumerate(by.items())]
