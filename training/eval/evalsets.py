"""Evaluation sets: insightface ``.bin`` pairs, LFW-style ``pairs.txt``, gallery/probe folders,
and on-the-fly synthetic masking of their faces.

Three sources, one in-memory shape:

* :class:`PairSet` -- verification pairs, images interleaved ``[a0, b0, a1, b1, ...]`` (the
  insightface layout) with one is-same flag per pair;
* :class:`ImageSet` -- an identity-labelled image folder (gallery, probes, ``maskkit embed``).

All images are 112x112 RGB uint8 aligned to the ArcFace template. Sources that are not already
112x112 go through maskkit's own detector and aligner (:class:`FaceAligner`); 112x112 sources are
checked against the template and re-aligned when off (unless trusted with ``--aligned``).

The insightface ``.bin`` format is ``pickle.dump((bins, issame_list))`` where ``bins`` is a list
of ``2 * P`` encoded images (JPEG/PNG bytes) and ``issame_list`` a list of ``P`` bools;
:func:`write_bin` writes it and :func:`load_bin` reads it (also the ``encoding="bytes"``
pickles made by Python 2).

No input is dropped silently: images that cannot be read or aligned are recorded in the
``failures`` list of the set (``{"src", "reason", "detail"}``), pairs that lose an image are
recorded there too, and :func:`apply_masks` reports every face it could not mask (the face is
kept unmasked and goes through the face branch).

Length: the three sources share the aligner, the failure records and the PairSet / ImageSet
shapes that the report, the folds and the masking step read; the pairs file's parser, its
position bookkeeping (``pair_index``) and the ``.bin`` reader are kept beside the shape they fill.
"""
from __future__ import annotations

import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

IMAGE_SIZE = (112, 112)
#: Every extension maskkit takes as an image (:data:`maskkit.io.sources.IMAGE_EXTENSIONS`), in the
#: order a pairs file's extension-less name is tried: the JPEG aliases last.
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jfif", ".jpe", ".jif")


@dataclass
class PairSet:
    """Verification pairs.

    Attributes:
        images: (2P, 112, 112, 3) uint8, pair ``i`` is ``images[2i]``, ``images[2i+1]``.
        issame: (P,) bool.
        names: 2P strings naming each image (source path or ``"bin:<index>"``), as valid UTF-8
            text (:func:`maskkit.util.names.display_name`).
        landmarks68: per image (68, 2) float32 landmarks in aligned pixels when the aligner
            produced them, else None (found later on the aligned crop when masking).
        failures: inputs that produced no pair, with reasons.
        notes: per-image alignment notes keyed by index (``FaceAligner`` adds none: an image
            without a detected face is a ``no_face`` failure instead).
        source: a short description of where the pairs came from.
        pair_index: (P,) int, the position of each kept pair in the source's list (a ``.bin``'s
            ``issame_list``, a pairs file's pair lines); default ``0..P-1``.
        names_bytes: per image, the base64 of its file name's bytes when the name is not UTF-8
            (``""`` otherwise); empty when no name needs it.
        listed_issame: the is-same flag of *every* pair the source lists, kept or dropped; the
            folds are made from it (:meth:`folds`). Default: ``issame``.
        mask_keys: per image, what its synthetic mask is drawn from (:func:`image_rng`): the
            image's index in a ``.bin`` (an ``int``), or its exact file name under the root for
            a pairs file (a ``str``, surrogate-escaped where not UTF-8). So a mask depends on the
            image alone, never on where its pair line sits in the file, and an image named in
            several pairs gets the same mask in each. Default: ``0..2P-1``.
        skipped_pairs: one record per listed pair left out because an image of it failed
            (``{"pair", "a", "b", "reason": "pair_skipped", "detail"}``); the image failures
            themselves are in ``failures``, once per image.
    """

    images: np.ndarray
    issame: np.ndarray
    names: list[str]
    landmarks68: list[np.ndarray | None] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    notes: dict[int, str] = field(default_factory=dict)
    source: str = ""
    pair_index: np.ndarray | None = None
    listed_issame: np.ndarray | None = None
    names_bytes: list[str] = field(default_factory=list)
    mask_keys: list = field(default_factory=list)
    skipped_pairs: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.issame = np.asarray(self.issame, dtype=bool)
        if len(self.images) != 2 * len(self.issame):
            raise ValueError(f"{len(self.images)} images for {len(self.issame)} pairs (need 2 per pair)")
        if not self.landmarks68:
            self.landmarks68 = [None] * len(self.images)
        if not self.mask_keys:
            self.mask_keys = list(range(len(self.images)))
        if len(self.mask_keys) != len(self.images):
            raise ValueError(f"{len(self.mask_keys)} mask keys for {len(self.images)} images")
        if self.pair_index is None:
            self.pair_index = np.arange(len(self.issame))
        self.pair_index = np.asarray(self.pair_index, dtype=int)
        if self.listed_issame is None:
            self.listed_issame = self.issame.copy()
        self.listed_issame = np.asarray(self.listed_issame, dtype=bool)
        if len(self.pair_index) != len(self.issame) or (
                len(self.pair_index) and not np.array_equal(self.listed_issame[self.pair_index], self.issame)):
            raise ValueError("pair_index must name, for each kept pair, a listed pair with the same is-same flag")

    @property
    def n_pairs(self) -> int:
        return int(len(self.issame))

    @property
    def n_listed(self) -> int:
        """Pairs the source lists (kept + dropped)."""
        return int(len(self.listed_issame))

    def folds(self, n_folds: int = 10) -> tuple[np.ndarray, str]:
        """``(fold index per kept pair, rule)``: the folds of the source's full pair list
        (:func:`maskkit.training.eval.folds.assign_folds`), so a dropped pair never moves a
        later pair to another fold."""
        from maskkit.training.eval.folds import assign_folds

        folds, rule = assign_folds(self.listed_issame, n_folds)
        return folds[self.pair_index], rule

    def subset(self, keep) -> "PairSet":
        """The pairs where ``keep`` (a (P,) bool mask) is True, each still at its position in the
        source (``pair_index``, ``listed_issame`` kept), so :meth:`folds` gives every kept pair
        the fold it had; ``failures`` carried, ``notes`` re-indexed."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != self.issame.shape:
            raise ValueError(f"{keep.shape} keep flags for {self.n_pairs} pairs")
        img = np.repeat(keep, 2)
        new_index = np.cumsum(img) - 1  # old image index -> new one (where kept)
        pick = lambda xs: [x for x, k in zip(xs, img) if k]  # noqa: E731
        return PairSet(self.images[img], self.issame[keep], pick(self.names), pick(self.landmarks68),
                       list(self.failures), {int(new_index[i]): n for i, n in self.notes.items() if img[i]},
                       self.source, self.pair_index[keep], self.listed_issame,
                       pick(self.names_bytes) if self.names_bytes else [], pick(self.mask_keys),
                       list(self.skipped_pairs))


@dataclass
class ImageSet:
    """Identity-labelled aligned faces (a gallery, probes, or any folder to embed).

    Attributes:
        images: (N, 112, 112, 3) uint8.
        identities: N identity names (the sub-folder; ``""`` for loose files), as valid UTF-8
            text, distinct folders distinct (:func:`maskkit.util.names.unique_display_names`).
        paths: N source paths relative to the folder (POSIX), as valid UTF-8 text
            (:func:`maskkit.util.names.display_name`).
        landmarks68: per image (68, 2) aligned landmarks or None.
        failures: inputs that produced no image, with reasons.
        notes: per-image alignment notes keyed by index.
        paths_bytes: per image, the base64 of its path's bytes when the name is not UTF-8
            (``""`` otherwise); empty when no name needs it.
    """

    images: np.ndarray
    identities: list[str]
    paths: list[str]
    landmarks68: list[np.ndarray | None] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    notes: dict[int, str] = field(default_factory=dict)
    paths_bytes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.landmarks68:
            self.landmarks68 = [None] * len(self.images)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def mask_keys(self) -> list[str]:
        """Per image, its exact path relative to the folder (surrogate-escaped where not
        UTF-8): what its synthetic mask is drawn from (:func:`image_rng`), so a mask depends on
        the image's name, not on its position in the set."""
        import base64
        import os

        if not self.paths_bytes:
            return list(self.paths)
        return [os.fsdecode(base64.b64decode(b)) if b else p for p, b in zip(self.paths, self.paths_bytes)]

    def subset(self, idx) -> "ImageSet":
        """The images at ``idx`` (failures and notes are not carried)."""
        idx = [int(i) for i in idx]
        return ImageSet(
            images=self.images[idx] if idx else np.zeros((0, *IMAGE_SIZE, 3), np.uint8),
            identities=[self.identities[i] for i in idx],
            paths=[self.paths[i] for i in idx],
            paths_bytes=[self.paths_bytes[i] for i in idx] if self.paths_bytes else [],
            landmarks68=[self.landmarks68[i] for i in idx],
        )


# --------------------------------------------------------------------------------------------
# decoding / alignment
# --------------------------------------------------------------------------------------------


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


class AlignFailure(ValueError):
    """An image that cannot be aligned: ``reason`` is a short token (``no_face``,
    ``bad_landmarks``), ``detail`` explains it."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class FaceAligner:
    """Bring any face photo to a 112x112 ArcFace-template crop with maskkit's aligner.

    * Images already at ``size`` are checked against the template
      (``maskkit.face.crop_check.check_aligned_crop``): a crop on the template is used as it is; a
      crop whose face is off the template is re-aligned from its checked landmarks (note
      ``realigned: ...``); a crop with a face whose landmarks cannot be verified (profiles) is
      kept as given (note ``unverified: ...``); a crop without a face fails ``no_face``, one of
      the wrong size ``not_aligned``. ``trust_aligned`` (the commands' ``--aligned``) skips the
      check and takes every ``size`` crop as it is (insightface ``.bin`` sets never come here:
      they are aligned by construction).
    * Others go through ``maskkit.face.selection.find_faces`` (HOG detector by default, the
      largest face, landmarks checked) and ``maskkit.face.align.align_face``. No face fails
      ``no_face``, landmarks that are not on the face ``bad_landmarks``: guessing would embed and
      score photos without a usable face.

    Models load once, on first use.
    """

    def __init__(self, detector: str = "hog", size: tuple[int, int] = IMAGE_SIZE, policy: str = "largest",
                 trust_aligned: bool = False):
        self.detector_name = detector
        self.size = tuple(size)
        self.policy = policy
        self.trust_aligned = bool(trust_aligned)
        self._detector = None

    def _get_detector(self):
        if self._detector is None:
            from maskkit.face.detect import get_detector

            self._detector = get_detector(self.detector_name)
        return self._detector

    def _crop(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, str | None]:
        from maskkit.face.align import align_face
        from maskkit.face.crop_check import check_aligned_crop

        chk = check_aligned_crop(rgb, self.size)
        if chk.ok:
            lm = None if chk.landmarks68 is None else np.asarray(chk.landmarks68, np.float32)
            if chk.how == "unverified":  # the numbers as in maskkit.pipeline.unverified.crop_record
                fit = "" if chk.rms is None else f"; its unstable fit {chk.rms:.1f} px RMS from the template"
                return rgb, None, (f"unverified: a face whose landmarks cannot be checked against the template "
                                   f"(profile or occlusion{fit}); used as given")
            return rgb, lm, None
        if chk.reason == "not_aligned" and chk.landmarks68 is not None:
            aligned = align_face(rgb, chk.landmarks68, size=self.size)
            return aligned.image, np.asarray(aligned.landmarks68, np.float32), f"realigned: {chk.detail}"
        raise AlignFailure(chk.reason or "not_aligned", chk.detail)

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, str | None]:
        """Align one RGB image.

        Returns:
            ``(aligned_rgb, landmarks68_in_aligned_pixels_or_None, note_or_None)``; the note says
            what was done when it was not the default for the image's kind (``realigned: ...``,
            ``unverified: ...``).

        Raises:
            AlignFailure: (a ``ValueError``) reason ``no_face`` when there is no face,
                ``bad_landmarks`` when its landmarks are not on the face, ``not_aligned`` for a
                crop-sized image that is not a crop.
        """
        if rgb.shape[:2] == self.size:
            if self.trust_aligned:
                return rgb, None, None
            return self._crop(rgb)
        from maskkit.face.align import align_face
        from maskkit.face.selection import find_faces

        faces = find_faces(self._get_detector(), rgb, self.policy)
        if not faces:
            raise AlignFailure("no_face", f"no face found ({self.detector_name} detector) in a "
                               f"{rgb.shape[1]}x{rgb.shape[0]} image")
        face = faces[0]
        if face.fit is not None and not face.fit.ok:
            raise AlignFailure("bad_landmarks", face.fit.detail)
        lm = None if face.landmarks68 is None else np.asarray(face.landmarks68, np.float32)
        if lm is None or not np.all(np.isfinite(lm)):
            raise AlignFailure("bad_landmarks", "no finite landmarks for the detected face")
        aligned = align_face(rgb, lm, size=self.size)
        return aligned.image, np.asarray(aligned.landmarks68, np.float32), None


def _load_and_align(path: Path, aligner: FaceAligner) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    from maskkit.io.image_io import load_image

    rgb = load_image(path)
    return aligner(rgb)


def _load_or_fail(path: Path, rel: str, aligner: FaceAligner) -> tuple[tuple | None, dict | None]:
    """``((aligned, landmarks68, note), None)``, or ``(None, failure)`` with the reason."""
    try:
        return _load_and_align(path, aligner), None
    except Exception as exc:  # noqa: BLE001 - recorded with its reason
        return None, _failure(rel, *_exc_reason(exc))


def _failure(src: str, reason: str, detail: str = "") -> dict:
    """A failure record: ``src`` as text (+ ``src_bytes`` for a name that is not UTF-8)."""
    from maskkit.util.names import name_fields, safe_text

    return {**name_fields(src), "reason": reason, "detail": safe_text(detail)}


def _exc_reason(exc: Exception) -> tuple[str, str]:
    reason = getattr(exc, "reason", None)
    if reason:
        return str(reason), str(getattr(exc, "detail", "") or exc)
    return type(exc).__name__, str(exc)


# --------------------------------------------------------------------------------------------
# insightface .bin
# --------------------------------------------------------------------------------------------


def load_bin(path: str | Path, size: tuple[int, int] = IMAGE_SIZE) -> PairSet:
    """Read an insightface verification ``.bin`` (``pickle`` of ``(bins, issame_list)``).

    An image that cannot be decoded is one ``failures`` record (reason ``decode_error``, named
    ``<file>:<image index>``); its pair is left out and recorded in ``skipped_pairs``. Each
    image's mask key is its index in the file (:attr:`PairSet.mask_keys`).
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
    from maskkit.io.image_io import decode_crop

    images, keep, failures, names, index, keys, skipped = [], [], [], [], [], [], []
    for p, same in enumerate(issame_list):
        got = []
        for j in (2 * p, 2 * p + 1):
            try:
                got.append(decode_crop(bins[j], size))
            except ValueError as exc:
                failures.append(_failure(f"{path.name}:{j}", "decode_error", str(exc)))
                got.append(None)
        if any(g is None for g in got):
            skipped.append(_skipped_pair(p, f"{path.name}:{2 * p}", f"{path.name}:{2 * p + 1}"))
            continue
        images += got
        names += [f"{path.name}:{2 * p}", f"{path.name}:{2 * p + 1}"]
        keys += [2 * p, 2 * p + 1]
        keep.append(bool(same))
        index.append(p)
    arr = np.stack(images) if images else np.zeros((0, *size, 3), np.uint8)
    return PairSet(images=arr, issame=np.array(keep, bool), names=names, failures=failures, source=str(path),
                   pair_index=np.array(index, int), listed_issame=np.array([bool(x) for x in issame_list], bool),
                   mask_keys=keys, skipped_pairs=skipped)


def _skipped_pair(p: int, a: str, b: str) -> dict:
    """The record of listed pair ``p`` left out because an image of it failed (the image's own
    failure is recorded once, in ``failures``)."""
    from maskkit.util.names import name_fields

    return {"pair": int(p), **name_fields(a, "a"), **name_fields(b, "b"), "reason": "pair_skipped",
            "detail": "an image of the pair could not be loaded (see the image failures)"}


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


# --------------------------------------------------------------------------------------------
# LFW-style pairs.txt
# --------------------------------------------------------------------------------------------


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
                    cache[rel] = (None, _failure(rel, "missing", f"no image file for {rel} under {root}"))
                else:
                    face, failure = _load_or_fail(p, rel, aligner)
                    cache[rel] = (face, failure or p.relative_to(root).as_posix())  # the exact name
                if cache[rel][0] is None:
                    failures.append(cache[rel][1])
            got.append(cache[rel])
        if any(g[0] is None for g in got):
            skipped.append(_skipped_pair(p_idx, a, b))
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


# --------------------------------------------------------------------------------------------
# identity folders (gallery / probes / embed)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# synthetic masks
# --------------------------------------------------------------------------------------------


@dataclass
class MaskOutcome:
    """Result of :func:`apply_masks`.

    Attributes:
        images: the images, masked where requested and possible (a new array).
        masked: (N,) bool, True where a mask was actually drawn (these use the masked branch).
        requested: (N,) bool, where a mask was asked for.
        styles: per image the mask style drawn, or None.
        failures: one ``{"index", "name", "reason", "detail"}`` per requested face left unmasked.
    """

    images: np.ndarray
    masked: np.ndarray
    requested: np.ndarray
    styles: list[str | None]
    failures: list[dict]

    @property
    def n_requested(self) -> int:
        return int(self.requested.sum())

    @property
    def n_masked(self) -> int:
        return int(self.masked.sum())


def image_rng(seed: int, key: int | str) -> np.random.Generator:
    """The generator of one image's synthetic mask (its style and every random draw).

    Args:
        seed: the run's mask seed.
        key: what identifies the image: an ``int`` -- its index in a ``.bin`` (or in an
            array) -- seeds ``default_rng([seed, key])``; a ``str`` -- its file name -- seeds
            from ``sha256("<seed>\\x1f" + os.fsencode(key))`` (eight 32-bit words; the UTF-8
            bytes of a valid name, the file system's bytes of one that is not).

    The same ``(seed, key)`` always draws the same mask, whatever the batching, the order of
    the images or the other images in the set.
    """
    if isinstance(key, (int, np.integer)):
        return np.random.default_rng([int(seed), int(key)])
    import hashlib

    from maskkit.util.names import name_bytes

    h = hashlib.sha256(str(int(seed)).encode("ascii") + b"\x1f" + name_bytes(key)).digest()
    return np.random.default_rng([int.from_bytes(h[i:i + 4], "little") for i in range(0, 32, 4)])


def aligned_landmarks(rgb: np.ndarray) -> np.ndarray:
    """68 landmarks on an already aligned ArcFace crop: dlib's predictor in the box that
    ``maskkit.face.detect`` uses for pre-aligned crops (``landmarks_in_box(rgb, None)``)."""
    from maskkit.face.landmarks import landmarks_in_box

    return np.asarray(landmarks_in_box(rgb, None), np.float32)


def apply_masks(
    images: np.ndarray,
    requested,
    seed: int = 0,
    style: str = "random",
    landmarks68: list | None = None,
    names: list[str] | None = None,
    renderer=None,
    progress: bool = True,
    keys: list | None = None,
) -> MaskOutcome:
    """Draw a synthetic mask on the requested faces with maskkit's renderer, reproducibly.

    Args:
        images: (N, H, W, 3) uint8 aligned faces.
        requested: (N,) bool, which faces to mask.
        seed: run seed; image ``i`` renders with :func:`image_rng` ``(seed, keys[i])``
            (``(seed, i)`` without ``keys``), so the same call reproduces the same masks
            whatever the batching.
        style: one of ``maskkit.render.STYLES`` or ``"random"`` (the renderer draws the style).
        landmarks68: per image aligned landmarks when known (from the aligner); None entries are
            found on the crop with :func:`aligned_landmarks`.
        renderer: a ``MaskRenderer`` (one is made if None; templates load once).
        keys: per image, what its mask is drawn from (:attr:`PairSet.mask_keys`,
            :attr:`ImageSet.mask_keys`: a ``.bin`` index or the file name); with keys, an image
            gets the same mask wherever it sits in ``images`` and however often it appears.

    Raises:
        ValueError: flags, keys and images differ in number, or an unknown style.

    A face that cannot be masked (no landmarks, or the renderer raises ``CannotFit``) is kept
    unmasked, reported in ``failures``, and goes through the face branch.
    """
    from maskkit.render import STYLES, CannotFit, MaskRenderer
    from maskkit.util.progress import track

    requested = np.asarray(requested, dtype=bool)
    if len(requested) != len(images):
        raise ValueError(f"{len(requested)} mask flags for {len(images)} images")
    if keys is not None and len(keys) != len(images):
        raise ValueError(f"{len(keys)} mask keys for {len(images)} images")
    if style != "random" and style not in STYLES:
        raise ValueError(f"unknown mask style {style!r}; expected 'random' or one of {STYLES}")
    renderer = renderer or MaskRenderer()
    out = np.array(images, copy=True)
    masked = np.zeros(len(images), bool)
    styles: list[str | None] = [None] * len(images)
    failures = []
    idx = np.flatnonzero(requested)
    for i in track(idx, desc="masking", unit="face", disable=not progress or len(idx) == 0):
        rng = image_rng(seed, i if keys is None else keys[i])
        name = names[i] if names else str(i)
        lm = landmarks68[i] if landmarks68 is not None and landmarks68[i] is not None else None
        if lm is None:
            try:
                lm = aligned_landmarks(out[i])
            except Exception as exc:  # noqa: BLE001 - no landmarks: kept unmasked, reported
                failures.append({"index": int(i), "name": name, "reason": "no_landmarks",
                                 "detail": f"{type(exc).__name__}: {exc}"})
                continue
        try:
            res = renderer.render(out[i], lm, style, rng)
        except CannotFit as exc:  # the renderer's only failure for bad faces; anything else is a bug
            failures.append({"index": int(i), "name": name, "reason": "cannot_fit", "detail": str(exc)})
            continue
        out[i] = res.image
        masked[i] = True
        styles[i] = str(res.params.get("style", style))
    if failures:
        log.warning("%d of %d faces could not be masked; kept unmasked (face branch)", len(failures), len(idx))
    return MaskOutcome(out, masked, requested, styles, failures)


def mask_side_flags(n_images: int, side: str) -> np.ndarray:
    """Which images of an interleaved pair list to mask: ``none``, ``one`` (the second image of
    every pair as written, the M-LFW protocol) or ``both``.

    The rule looks at each pair alone (its second image), never at the pair's position, so
    moving a pair's line in the file changes neither which of its images is masked nor (with
    :attr:`PairSet.mask_keys`) the mask drawn; swapping the two names within a line does."""
    flags = np.zeros(n_images, bool)
    if side == "one":
        flags[1::2] = True
    elif side == "both":
        flags[:] = True
    elif side != "none":
        raise ValueError(f"mask side must be none|one|both, got {side!r}")
    return flags
