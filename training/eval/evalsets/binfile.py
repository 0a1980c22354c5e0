"""insightface verification ``.bin`` files: ``pickle.dump((bins, issame_list))`` where ``bins``
is a list of ``2 * P`` encoded images (JPEG/PNG bytes) and ``issame_list`` a list of ``P`` bools.

:func:`write_bin` writes one and :func:`load_bin` reads one (also the ``encoding="bytes"``
pickles made by Python 2).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from maskkit.training.eval.evalsets.sets import IMAGE_SIZE, PairSet, failure_record, skipped_pair


def encode_image(rgb: np.ndarray, ext: str = ".jpg", quality: int = 95) -> bytes:
    """Encode RGB uint8 as JPEG (``quality``, :func:`maskkit.io.image_io.encode_jpeg`) or PNG bytes."""
    if ext.lower() in (".jpg", ".jpeg"):
        from maskkit.io.image_io import encode_jpeg

        return encode_jpeg(np.asarray(rgb), quality)
    import cv2

    ok, buf = cv2.imencode(ext, cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode image as {ext}")
    return buf.tobytes()


def load_bin(path: str | Path, size: tuple[int, int] = IMAGE_SIZE) -> PairSet:
    """Read an insightface verification ``.bin`` (``pickle`` of ``(bins, issame_list)``).

    An image that cannot be decoded is one ``failures`` record (reason ``decode_error``, named
    ``<file>:<image index>``); its pair is left out and recorded in ``skipped_pairs``. Each
    image's mask key is its index in the file (:attr:`PairSet.mask_keys`).

    A crop of another size is on the template its size says (insightface also builds ``.bin``
    sets of 128x128 crops on its 128 template): it is brought onto the template of ``size``
    (:func:`maskkit.io.image_io.read_crop`) and counted in :attr:`PairSet.templates` under what
    was done; one that cannot be (a size of no template, a crop that does not cover ``size``'s:
    112x96) is a failure with reason ``no_template`` / ``other_template``.
    """
    path = Path(path)
    with open(path, "rb") as f:
        try:
            bins, issame_list = pickle.load(f)
        except UnicodeDecodeError:  # a Python 2 pickle
            f.seek(0)
            bins, issame_list = pickle.load(f, encoding="bytes")
    if len(bins) != 2 * len(issame_list):
        raise ValueError(f"{path}: {len(bins)} images for {len(issame_list)} pairs (need exactly 2 per pair)")
    from maskkit.io.crop_template import TemplateRefused
    from maskkit.io.image_io import read_crop

    images, keep, failures, names, index, keys, skipped = [], [], [], [], [], [], []
    templates: dict[str, int] = {}
    for p, same in enumerate(issame_list):
        got = []
        for j in (2 * p, 2 * p + 1):
            try:
                img, change = read_crop(bins[j], size)
            except TemplateRefused as exc:
                failures.append(failure_record(f"{path.name}:{j}", exc.reason, exc.detail))
                got.append(None)
                continue
            except ValueError as exc:
                failures.append(failure_record(f"{path.name}:{j}", "decode_error", str(exc)))
                got.append(None)
                continue
            if change is not None:
                templates[change.describe()] = templates.get(change.describe(), 0) + 1
            got.append(img)
        if any(g is None for g in got):
            skipped.append(skipped_pair(p, f"{path.name}:{2 * p}", f"{path.name}:{2 * p + 1}"))
            continue
        images += got
        names += [f"{path.name}:{2 * p}", f"{path.name}:{2 * p + 1}"]
        keys += [2 * p, 2 * p + 1]
        keep.append(bool(same))
        index.append(p)
    arr = np.stack(images) if images else np.zeros((0, *size, 3), np.uint8)
    return PairSet(images=arr, issame=np.array(keep, bool), names=names, failures=failures, source=str(path),
                   pair_index=np.array(index, int), listed_issame=np.array([bool(x) for x in issame_list], bool),
                   mask_keys=keys, skipped_pairs=skipped, templates=templates)


def write_bin(path: str | Path, images, issame, quality: int = 95, ext: str = ".jpg") -> Path:
    """Write an insightface ``.bin``: ``pickle.dump((bins, issame_list), protocol=HIGHEST)``.

    Args:
        images: 2P RGB uint8 images (an array or a list), pair ``i`` at ``2i`` and ``2i+1``.
        issame: P bools.
        quality: JPEG quality (insightface's sets are JPEG).
        ext: ``.jpg`` or ``.png``.
    """
    issame_list = [bool(s) for s in issame]
    if len(images) != 2 * len(issame_list):
        raise ValueError(f"{len(images)} images for {len(issame_list)} pairs (need exactly 2 per pair)")
    from maskkit.util.files import write_atomic

    bins = [encode_image(im, ext, quality) for im in images]
    path = Path(path)
    write_atomic(path, pickle.dumps((bins, issame_list), protocol=pickle.HIGHEST_PROTOCOL))
    return path

