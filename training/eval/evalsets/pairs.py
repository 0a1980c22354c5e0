"""LFW-style pairs files: parsing them (:func:`parse_pairs_txt`) and loading their images
(:func:`load_pairs`)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from maskkit.training.eval.evalsets.aligner import FaceAligner, _load_or_fail
from maskkit.training.eval.evalsets.sets import IMAGE_EXTS, IMAGE_SIZE, PairSet, failure_record, skipped_pair


#: The line forms a pairs file may hold, as named in its parse errors.
PAIRS_FORMS = ("'path_a path_b 0|1' (two paths under --root; 1 same, 0 different)",
               "insightface/LFW 'name n1 n2' (same) or 'name1 n1 name2 n2' (different)")


class PairsFormatError(ValueError):
    """A pairs-file line that is none of the accepted forms: the message is one line,
    ``<file>:<line>: cannot parse pairs line '...'; expected ...`` (:data:`PAIRS_FORMS`)."""


def parse_pairs_txt(path: str | Path) -> list[tuple[str, str, bool]]:
    """Parse a pairs file into ``(rel_path_a, rel_path_b, issame)`` triples, in file order.

    Accepted line forms (whitespace separated; blank lines and ``#`` comments skipped):

    * ``name n1 n2`` -- LFW same pair: ``name/name_000n1.jpg`` vs ``name/name_000n2.jpg``;
    * ``name1 n1 name2 n2`` -- LFW different pair;
    * ``path_a path_b label`` -- explicit relative paths and a 1 (same) / 0 (different) label.

    A leading LFW header line of integers (``10 300``) is skipped.

    The file is read as bytes and each line decoded with :func:`os.fsdecode` (UTF-8 with
    ``surrogateescape`` on Linux), so a name that is not valid UTF-8 (a Latin-1 ``café.jpg``)
    maps back to the same bytes on disk when opened. A leading UTF-8 byte-order mark is dropped
    and CRLF (or CR) line ends count as LF: a file saved by a Windows editor gives the same pairs.

    Raises:
        PairsFormatError: (a ``ValueError``) a line that is none of the forms above, or a line of
            numbers after the first pair (``path:line: ...``, one line naming the forms).
    """
    import codecs
    import os

    out = []
    # a UTF-8 byte-order mark (Windows editors) is not part of the first name; CRLF / CR line
    # ends split like LF (bytes.splitlines), so a file saved on Windows lists the same pairs
    data = Path(path).read_bytes().removeprefix(codecs.BOM_UTF8)
    lines = [os.fsdecode(ln) for ln in data.splitlines()]
    for lineno, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if all(re.fullmatch(r"\d+", p) for p in parts):
            if not out:
                continue  # header
            raise PairsFormatError(_bad_line(path, lineno, raw, "unexpected line of numbers"))
        if len(parts) == 3 and re.fullmatch(r"\d+", parts[1]) and re.fullmatch(r"\d+", parts[2]):
            name, n1, n2 = parts
            out.append((f"{name}/{name}_{int(n1):04d}", f"{name}/{name}_{int(n2):04d}", True))
        elif len(parts) == 4 and re.fullmatch(r"\d+", parts[1]) and re.fullmatch(r"\d+", parts[3]):
            a, n1, b, n2 = parts
            out.append((f"{a}/{a}_{int(n1):04d}", f"{b}/{b}_{int(n2):04d}", False))
        elif len(parts) == 3 and parts[2] in ("0", "1"):
            out.append((parts[0], parts[1], parts[2] == "1"))
        else:
            raise PairsFormatError(_bad_line(path, lineno, raw, "cannot parse pairs line"))
    return out


def _bad_line(path, lineno: int, raw: str, what: str) -> str:
    from maskkit.util.names import safe_text

    return safe_text(f"{path}:{lineno}: {what} {raw.strip()!r}; expected {PAIRS_FORMS[0]}, or {PAIRS_FORMS[1]}")


def _resolve(root: Path, rel: str) -> Path | None:
    p = root / rel
    if p.suffix.lower() in IMAGE_EXTS and p.is_file():
        return p
    for ext in IMAGE_EXTS:
        q = root / (rel + ext)
        if q.is_file():
            return q
    return p if p.is_file() else None


def load_pairs(
    pairs_txt: str | Path, root: str | Path, aligner: FaceAligner | None = None, progress: bool = True
) -> PairSet:
    """Load the pairs of an LFW-style ``pairs.txt`` from the images under ``root``.

    Each distinct image is read and aligned once (via ``aligner`` when not already 112x112).
    An image that is missing, unreadable or un-alignable is one ``failures`` record with the
    reason, however many pairs name it; each pair it belongs to is left out and recorded in
    ``skipped_pairs``. The set keeps each pair's position in the file (``pair_index``) and every
    listed flag, so the folds stay the file's. Each image's mask key is its exact file name
    under ``root`` (:attr:`PairSet.mask_keys`).
    """
    from maskkit.util.progress import track

    root = Path(root)
    aligner = aligner or FaceAligner()
    triples = parse_pairs_txt(pairs_txt)
    cache: dict[str, tuple] = {}
    failures: list[dict] = []
    from maskkit.util.names import display_name, name_b64

    images, names, lms, keep, notes, index, names_b64, keys, skipped = [], [], [], [], {}, [], [], [], []
    for p_idx, (a, b, same) in enumerate(track(triples, desc="pairs", unit="pair", disable=not progress)):
        got = []
        for rel in (a, b):
            if rel not in cache:
                p = _resolve(root, rel)
                if p is None:
                    cache[rel] = (None, failure_record(rel, "missing", f"no image file for {rel} under {root}"))
                else:
                    face, failure = _load_or_fail(p, rel, aligner)
                    cache[rel] = (face, failure or p.relative_to(root).as_posix())  # the exact name
                if cache[rel][0] is None:
                    failures.append(cache[rel][1])
            got.append(cache[rel])
        if any(g[0] is None for g in got):
            skipped.append(skipped_pair(p_idx, a, b))
            continue
        for (img, lm, note), name in got:
            if note:
                notes[len(images)] = note
            images.append(img)
            lms.append(lm)
            names.append(display_name(name))  # text; the bytes of a name that is not UTF-8 beside it
            names_b64.append(name_b64(name) or "")
            keys.append(name)  # the exact file name: the image's mask never depends on the line order
        keep.append(same)
        index.append(p_idx)
    arr = np.stack(images) if images else np.zeros((0, *IMAGE_SIZE, 3), np.uint8)
    return PairSet(arr, np.array(keep, bool), names, lms, failures, notes, source=str(pairs_txt),
                   pair_index=np.array(index, int), listed_issame=np.array([t[2] for t in triples], bool),
                   names_bytes=names_b64 if any(names_b64) else [], mask_keys=keys, skipped_pairs=skipped)

