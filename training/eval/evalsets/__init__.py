"""Evaluation sets: insightface ``.bin`` pairs, LFW-style pairs files, gallery/probe folders,
and on-the-fly synthetic masking of their faces.

One concern per module:

=============  ==================================================================================
``sets``       the in-memory shapes (:class:`PairSet`, :class:`ImageSet`) and failure records
``aligner``    :class:`FaceAligner`: any face image -> a 112x112 ArcFace-template crop (112x112
               crops checked against the template; crops of another template size brought onto
               it; other images through maskkit's detector and aligner)
``binfile``    insightface ``.bin`` files (:func:`load_bin`, :func:`write_bin`)
``pairs``      LFW-style pairs files (:func:`parse_pairs_txt`, :func:`load_pairs`)
``folders``    identity-labelled image folders (:func:`load_image_folder`)
``masking``    reproducible synthetic masks (:func:`apply_masks`, :func:`image_rng`)
=============  ==================================================================================

No input is dropped silently: images that cannot be read or aligned are recorded in the
``failures`` list of the set (``{"src", "reason", "detail"}``), pairs that lose an image are
recorded too, and :func:`apply_masks` reports every face it could not mask (the face is kept
unmasked and goes through the face branch).

Every public name is importable from here (``from maskkit.training.eval.evalsets import
load_bin``), as before the split.
"""
from maskkit.training.eval.evalsets.aligner import AlignFailure, FaceAligner
from maskkit.training.eval.evalsets.binfile import BinFormatError, encode_image, load_bin, read_bin_lists, write_bin
from maskkit.training.eval.evalsets.folders import list_images, load_image_folder
from maskkit.training.eval.evalsets.masking import (
    MaskOutcome,
    aligned_landmarks,
    apply_masks,
    image_rng,
    mask_side_flags,
)
from maskkit.training.eval.evalsets.pairs import PAIRS_FORMS, PairsFormatError, load_pairs, parse_pairs_txt
from maskkit.training.eval.evalsets.sets import IMAGE_EXTS, IMAGE_SIZE, ImageSet, PairSet

__all__ = [
    "AlignFailure", "FaceAligner", "BinFormatError", "encode_image", "load_bin", "read_bin_lists", "write_bin", "list_images", "load_image_folder",
    "MaskOutcome", "aligned_landmarks", "apply_masks", "image_rng", "mask_side_flags", "PAIRS_FORMS",
    "PairsFormatError", "load_pairs", "parse_pairs_txt", "IMAGE_EXTS", "IMAGE_SIZE", "ImageSet", "PairSet",
]
