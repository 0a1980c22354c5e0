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


class BinFormatError(ValueError):
    """The file is not an insightface verification ``.bin``: ``str()`` is one line, the path and
    ``detail`` (what is wrong)."""

    def __init__(self, path, detail: str):
        self.path, self.detail = str(path), detail
        super().__init__(f"{path}: {detail}")


#: What a ``.bin``'s pickle may ask to build, beyond lists, tuples, bytes and bools: the bytes of
#: a Python 2 pickle read under Python 3 (``_codecs.encode``), numpy booleans and byte arrays.
#: Anything else (``os.system``, a class of some package) is refused before it is called: a
#: pickle runs whatever it names, and a downloaded ``.bin`` is someone else's file.
_BIN_GLOBALS = frozenset({
    ("_codecs", "encode"), ("numpy", "dtype"), ("numpy", "ndarray"), ("numpy", "bool_"),
    ("numpy.core.multiarray", "scalar"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy._core.multiarray", "_reconstruct"),
})


class _BinUnpickler(pickle.Unpickler):
    def __init__(self, f, **kw):
        super().__init__(f, **kw)
        self.name = getattr(f, "name", "<.bin>")

    def find_class(self, module: str, name: str):
        if (module, name) in _BIN_GLOBALS:
            return super().find_class(module, name)
        raise BinFormatError(self.name, f"its pickle asks to build {module}.{name} (refused: a .bin holds "
                             "only encoded images and same/different flags)")


def read_bin_lists(path: str | Path) -> tuple[list, list]:
    """``(bins, issame_list)`` of a ``.bin``, read without running anything it names (no image
    is decoded: a cheap check of the file's form).

    Raises:
        BinFormatError: not a pickle, not a pair of lists, a count that is not 2 images per
            pair, an entry that is no encoded image, or a pickle naming anything else.
        OSError: the file cannot be read.
    """
    path = Path(path)
    with open(path, "rb") as f:
        try:
            try:
                data = _BinUnpickler(f).load()
            except UnicodeDecodeError:  # a Python 2 pickle
                f.seek(0)
                data = _BinUnpickler(f, encoding="bytes").load()
        except BinFormatError as exc:
            raise BinFormatError(path, f"not an insightface .bin: {exc.detail}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
            raise BinFormatError(path, "not an insightface .bin (a pickle of (images, issame)): "
                                 f"{type(exc).__name__}: {exc}") from None
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(x, (list, tuple, np.ndarray))
                                                                       for x in data)):
        raise BinFormatError(path, f"not an insightface .bin: it holds a {type(data).__name__}, "
                             "not the pair (images, issame)")
    bins, issame_list = data
    if len(bins) != 2 * len(issame_list):
        raise BinFormatError(path, f"{len(bins)} images for {len(issame_list)} pairs (need exactly 2 per pair)")
    bad = next((k for k, b in enumerate(bins) if not isinstance(b, (bytes, bytearray, np.ndarray))), None)
    if bad is not None:
        raise BinFormatError(path, f"image {bad} is a {type(bins[bad]).__name__}, not encoded image bytes")
    return list(bins), list(issame_list)


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

    Raises:
        BinFormatError: the file is no such pickle (nothing it names is run).
    """
    path = Path(path)
    bins, issame_list = read_bin_lists(path)
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

