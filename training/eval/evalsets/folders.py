"""Identity-labelled image folders (gallery, probes, ``maskkit embed``): :func:`load_image_folder`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from maskkit.training.eval.evalsets.aligner import FaceAligner, _load_or_fail
from maskkit.training.eval.evalsets.sets import IMAGE_SIZE, ImageSet


def list_images(src: str | Path) -> list[tuple[Path, str, str]]:
    """``(path, rel, identity)`` for every file under ``src``, sorted; identity is the first
    sub-folder (``""`` for files directly in ``src``). The walk is ``maskkit.io.sources.iter_sources``
    (symlink-loop safe; unreadable entries come back too, and fail with their reason on load)."""
    from maskkit.io.sources import iter_sources

    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder")
    return [(it.path, it.rel, it.identity) for it in iter_sources(src)]


def load_image_folder(
    src: str | Path, aligner: FaceAligner | None = None, progress: bool = True, desc: str = "images"
) -> ImageSet:
    """Read (and align when needed) every image under ``src``; identity = sub-folder name.

    Files that cannot be decoded or aligned are listed in ``failures`` with a reason.
    """
    from maskkit.util.progress import track

    from maskkit.util.names import display_name, name_b64, unique_display_names

    aligner = aligner or FaceAligner()
    images, ids, rels, lms, failures, notes, rels_b64 = [], [], [], [], [], {}, []
    listed = list_images(src)
    shown = unique_display_names(identity for _, _, identity in listed)  # text names, distinct folders distinct
    for path, rel, identity in track(listed, desc=desc, unit="img", disable=not progress):
        face, failure = _load_or_fail(Path(path), rel, aligner)
        if face is None:
            failures.append(failure)
            continue
        img, lm, note = face
        if note:
            notes[len(images)] = note
        images.append(img)
        ids.append(shown[identity])
        rels.append(display_name(rel))
        rels_b64.append(name_b64(rel) or "")
        lms.append(lm)
    arr = np.stack(images) if images else np.zeros((0, *IMAGE_SIZE, 3), np.uint8)
    return ImageSet(arr, ids, rels, lms, failures, notes, paths_bytes=rels_b64 if any(rels_b64) else [])

