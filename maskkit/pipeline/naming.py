"""Output names: two inputs never write one file (``maskkit align`` and ``maskkit mask``).

Every name a command writes is decided here, from the whole input list, before any worker
starts. Names are unique under :func:`name_key` (Unicode NFC, then ``casefold``), so two outputs
never land on one file on a case-insensitive or normalising file system (macOS, Windows)
either, and the outputs of one input never overwrite those of another.

Each input ``rel`` gets a *base* (its path without the extension); the files it writes are
``base + ext(rel)`` (or ``base + "_<k>" + ext`` for every face ``k`` with ``multi``), plus
``base + e`` for each extra suffix ``e`` (``mask --coverage`` writes ``base + ".mask.png"``).
The base is chosen by these rules, in order:

1. the input's own path without its extension (``a/x.png`` -> ``a/x``);
2. when several inputs would write the same primary file (``x.jpg`` and ``x.png`` both to
   ``x.jpg`` in ``align``; ``x.png`` and ``x.bmp`` both to ``x.png`` in ``mask``; ``X.jpg`` and
   ``x.jpg``), every one of them folds its extension into the base: ``x_jpg``, ``x_png``;
3. names are then claimed with inputs that kept their own name first (so a real input
   ``x_png.jpg`` keeps its name against a folded ``x.png``), primary files before extra ones (so
   a real input ``x.mask.png`` keeps its name against the coverage file of ``x.png``), each tier
   in path order; an input any of whose files is taken gets ``~2`` (``~3``, ...) appended to its
   base, the smallest number that frees all its files.

The ``_<k>`` face suffix of ``--faces all`` is claimed as a pattern: ``x`` claims
``x_0.jpg, x_1.jpg, ...``, which a real input ``x_0.jpg`` (whose own faces are ``x_0_<k>.jpg``)
never equals; a fixed name of that form is checked against every pattern.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from pathlib import PurePosixPath
from typing import Callable, Iterable, Sequence

__all__ = ["name_key", "plan_output_names"]

_FACE = re.compile(r"(.*)_(0|[1-9][0-9]*)(\.[^./]*)", re.S)


def name_key(name: str) -> str:
    """The form two names are compared in: NFC-normalised, then casefolded."""
    return unicodedata.normalize("NFC", name).casefold()


class _Claims:
    """Names taken so far: fixed names, and ``base_<k>ext`` patterns (``multi``)."""

    def __init__(self) -> None:
        self.fixed: set[str] = set()
        self.patterns: set[tuple[str, str]] = set()
        self.pattern_hits: Counter = Counter()  # (base, ext) of taken fixed names shaped like a face name

    @staticmethod
    def _split(key: str) -> tuple[str, str] | None:
        m = _FACE.fullmatch(key)
        return (m.group(1), m.group(3)) if m else None

    def free(self, files: Sequence[tuple]) -> bool:
        keys = [(kind, tuple(name_key(x) for x in parts)) for kind, *parts in files]
        if len({k for k in keys}) != len(keys):
            return False
        for kind, parts in keys:
            if kind == "fixed":
                k = parts[0]
                if k in self.fixed or self._split(k) in self.patterns:
                    return False
            elif parts in self.patterns or self.pattern_hits[parts]:
                return False
        return True

    def _apply(self, files: Sequence[tuple], sign: int) -> None:
        for kind, *parts in files:
            parts = tuple(name_key(x) for x in parts)
            if kind == "fixed":
                (self.fixed.add if sign > 0 else self.fixed.discard)(parts[0])
                sp = self._split(parts[0])
                if sp is not None:
                    self.pattern_hits[sp] += sign
            else:
                (self.patterns.add if sign > 0 else self.patterns.discard)(parts)

    def take(self, files: Sequence[tuple]) -> None:
        self._apply(files, +1)

    def drop(self, files: Sequence[tuple]) -> None:
        self._apply(files, -1)


def plan_output_names(rels: Iterable[str], ext: Callable[[str], str], extras: Sequence[str] = (),
                      multi: bool = False, reserved: Iterable[str] = ()) -> dict[str, str]:
    """Choose every input's output base so that no two written files share a name.

    Args:
        rels: input paths relative to ``--src`` (POSIX; may hold lone surrogates for bytes that
            are not UTF-8 -- outputs keep the input's bytes).
        ext: the primary output's extension for an input (``".jpg"`` for ``align``).
        extras: suffixes of the other files each input writes (``(".mask.png",)`` for
            ``mask --coverage``).
        multi: the primary output is ``base_<k><ext>`` for every face ``k`` (``align --faces all``).
        reserved: names the command writes itself (``manifest.jsonl``, ...), never given to an input.

    Returns:
        ``{rel: base}``; the files of ``rel`` are ``base + ext(rel)`` (or ``f"{base}_{k}{ext(rel)}"``)
        and ``base + e`` for ``e`` in ``extras``. Deterministic: depends only on the set of ``rels``.
    """
    rels = sorted(dict.fromkeys(rels))

    def natural(rel: str) -> str:
        p = PurePosixPath(rel)
        return (p.parent / p.stem).as_posix()  # a top-level file has parent ".": just the stem

    def primary(rel: str, base: str) -> list[tuple]:
        e = ext(rel)
        return [("pattern", base, e)] if multi else [("fixed", base + e)]

    def extra(base: str) -> list[tuple]:
        return [("fixed", base + e) for e in extras]

    # rule 2: inputs that would write the same primary file fold their extension into the base
    first_key = {rel: name_key(natural(rel) + ext(rel)) for rel in rels}
    clash = Counter(first_key.values())
    base = {}
    folded = set()
    for rel in rels:
        base[rel] = natural(rel)
        if clash[first_key[rel]] > 1:
            base[rel] += "_" + PurePosixPath(rel).suffix.lstrip(".").lower()
            folded.add(rel)

    # rule 3: claim, own names first, primaries before extras; a loser takes the first free ~n
    order = [r for r in rels if r not in folded] + [r for r in rels if r in folded]
    claims = _Claims()
    claims.take([("fixed", n) for n in reserved])
    placed: list[str] = []
    pending: list[str] = []
    for rel in order:
        files = primary(rel, base[rel])
        if claims.free(files):
            claims.take(files)
            placed.append(rel)
        else:
            pending.append(rel)
    for rel in placed:
        files = extra(base[rel])
        if claims.free(files):
            claims.take(files)
        else:
            claims.drop(primary(rel, base[rel]))
            pending.append(rel)
    out = {rel: base[rel] for rel in placed if rel not in pending}
    for rel in pending:
        n = 2
        while True:
            b = f"{base[rel]}~{n}"
            files = primary(rel, b) + extra(b)
            if claims.free(files):
                claims.take(files)
                out[rel] = b
                break
            n += 1
    return {rel: out[rel] for rel in rels}
