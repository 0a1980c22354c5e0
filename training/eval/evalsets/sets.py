"""The in-memory shapes of evaluation sets and their failure records.

* :class:`PairSet` -- verification pairs, images interleaved ``[a0, b0, a1, b1, ...]`` (the
  insightface layout) with one is-same flag per pair;
* :class:`ImageSet` -- an identity-labelled image folder (gallery, probes, ``maskkit embed``).

All images are 112x112 RGB uint8 aligned to the ArcFace template. No input is dropped silently:
an image that cannot be read or aligned is one ``failures`` record (``{"src", "reason",
"detail"}``, :func:`failure_record`), and a listed pair that loses an image is one
``skipped_pairs`` record (:func:`skipped_pair`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

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
        notes: per-image alignment notes keyed by index, ``kind: detail`` (:data:`NOTE_KINDS`).
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
        templates: crops of another template size brought onto the 112 template without a
            per-image note (a ``.bin``'s): ``{what was done: images}``
            (:meth:`~maskkit.io.crop_template.TemplateChange.describe`); see :func:`templates_of`.
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
    templates: dict[str, int] = field(default_factory=dict)

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
                       list(self.skipped_pairs), dict(self.templates))


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
        notes: per-image alignment notes keyed by index, ``kind: detail`` (:data:`NOTE_KINDS`).
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
        """The images at ``idx``, their notes re-indexed (failures are not carried)."""
        idx = [int(i) for i in idx]
        new = {old: k for k, old in enumerate(idx)}
        return ImageSet(
            images=self.images[idx] if idx else np.zeros((0, *IMAGE_SIZE, 3), np.uint8),
            identities=[self.identities[i] for i in idx],
            paths=[self.paths[i] for i in idx],
            paths_bytes=[self.paths_bytes[i] for i in idx] if self.paths_bytes else [],
            landmarks68=[self.landmarks68[i] for i in idx],
            notes={new[i]: n for i, n in self.notes.items() if i in new},
        )


#: The kinds of per-image alignment notes (a note is ``kind: detail``): a 112x112 crop off the
#: template ``realigned`` from its checked landmarks; a crop whose face cannot be checked
#: (profile, occlusion) used as given, ``unverified``; a crop of another ``template`` size
#: brought onto the 112 template (:mod:`maskkit.io.crop_template`) and found on it.
NOTE_KINDS = ("realigned", "unverified", "template")


def note_kind(note: str) -> str | None:
    """The kind of an alignment note (:data:`NOTE_KINDS`), or None."""
    kind = str(note).split(":", 1)[0]
    return kind if kind in NOTE_KINDS else None


def note_counts(*notes: dict) -> dict[str, int]:
    """``{kind: images}`` over the given per-image note dicts, every kind present (0 when none)."""
    out = dict.fromkeys(NOTE_KINDS, 0)
    for d in notes:
        for n in d.values():
            kind = note_kind(n)
            if kind:
                out[kind] += 1
    return out


def template_note(change_text: str, outcome: str) -> str:
    """The note of an image that came from another template: ``template: <what was done>; <outcome>``."""
    return f"template: {change_text}; {outcome}"


def templates_of(*notes: dict, listed: dict[str, int] | None = None) -> dict[str, int]:
    """``{what was done: images}`` for the crops brought from another template: the ``template``
    notes of the given note dicts plus ``listed`` (a ``.bin``'s :attr:`PairSet.templates`)."""
    out = dict(listed or {})
    for d in notes:
        for n in d.values():
            if note_kind(n) == "template":
                text = str(n)[len("template: "):].rsplit("; ", 1)[0]
                out[text] = out.get(text, 0) + 1
    return out


def failure_record(src: str, reason: str, detail: str = "") -> dict:
    """A failure record: ``src`` as text (+ ``src_bytes`` for a name that is not UTF-8)."""
    from maskkit.util.names import name_fields, safe_text

    return {**name_fields(src), "reason": reason, "detail": safe_text(detail)}


def exc_reason(exc: Exception) -> tuple[str, str]:
    """``(reason, detail)`` of an exception: its ``reason`` / ``detail`` attributes when it has them
    (``AlignFailure``, ``ImageError``), else its type name and message."""
    reason = getattr(exc, "reason", None)
    if reason:
        return str(reason), str(getattr(exc, "detail", "") or exc)
    return type(exc).__name__, str(exc)


def skipped_pair(p: int, a: str, b: str) -> dict:
    """The record of listed pair ``p`` left out because an image of it failed (the image's own
    failure is recorded once, in ``failures``)."""
    from maskkit.util.names import name_fields

    return {"pair": int(p), **name_fields(a, "a"), **name_fields(b, "b"), "reason": "pair_skipped",
            "detail": "an image of the pair could not be loaded (see the image failures)"}
