"""``maskkit embed`` as a function: μ, σ, magnitude and paths of every face under a folder, saved as ``.npz``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from maskkit.training.eval.evalsets.aligner import FaceAligner
from maskkit.training.eval.evalsets.folders import load_image_folder
from maskkit.training.eval.evalsets.sets import note_counts
from maskkit.training.eval.embeddings import extract_embeddings


def run_embed(model_path: str, src: str, out: str, masked: bool = False, flip: bool = True, batch_size: int = 64,
              device: str = "cpu", detector: str = "hog", progress: bool = True, model=None,
              aligned: bool = False) -> dict:
    """``maskkit embed``: embed every face under ``src`` into ``out`` (.npz).

    The archive holds ``mu`` (N, D float32, L2-normalised, flip-summed with ``flip``), ``sigma``
    (N, D float32; shape (0,) for models without σ), ``magnitude`` (N,) ‖μ‖ before normalisation,
    ``masked`` (N,) branch used, ``paths`` and ``identities`` (N,) strings (valid UTF-8 text:
    a name that is not UTF-8 is shown with U+FFFD and its exact bytes are in ``paths_bytes``,
    (N,) base64 strings, ``""`` for the others), and ``failures`` (JSON strings, one per input
    left out, with the reason; ``src_bytes`` likewise) and ``notes`` (JSON strings, one per image
    whose alignment was not the default: a 112x112 crop ``realigned`` because it was off the
    template, or kept ``unverified``: a face whose points cannot be checked, with its fit's RMS;
    a crop of another template size (128x128...) brought onto the 112 template, ``template:``
    what was done and whether the face was found on it, :mod:`maskkit.io.crop_template`), and
    ``skipped`` (JSON strings ``{"src", "reason", "detail"}``, one per file under ``src`` that is
    not an input: ``not_an_image`` and the other :data:`maskkit.io.sources.SKIP_REASONS`), so
    every file under ``src`` is in ``paths``, ``failures`` or ``skipped``.
    ``aligned`` trusts 112x112 images (and crops of another template size, brought onto the 112
    template) as aligned crops (unchecked).

    Returns:
        A summary dict: ``out``; ``files`` (every file under ``src``) ``= embedded + failed +
        skipped`` (``skipped``: ``{reason: files}``); ``realigned``, ``unverified``,
        ``template_converted`` (the notes' kinds); ``alignment_fallbacks`` (legacy name of
        ``realigned + unverified``, kept for callers that read it; not printed); ``has_sigma``, ``dim``.

    Raises:
        maskkit.util.outcome.NoInputError: ``src`` holds no image file (exit status 2).
    """
    from maskkit.io.sources import list_sources, require_inputs, skipped_records

    listing = list_sources(src)
    require_inputs(listing, src)  # before the model loads
    if model is None:
        from maskkit.training.api import load_model

        model = load_model(model_path, device=device)
    images = load_image_folder(src, FaceAligner(detector, trust_aligned=aligned), progress, desc="images")
    flags = np.full(len(images), bool(masked))
    emb = extract_embeddings(model, images.images, flags, batch_size, flip, progress)
    outp = Path(out)
    outp.parent.mkdir(parents=True, exist_ok=True)
    dim = emb.mu.shape[1] if len(images) else 0
    tmp = outp.with_name(outp.stem + ".tmp.npz")
    np.savez_compressed(
        tmp,
        mu=emb.mu.astype(np.float32) if len(images) else np.zeros((0, dim), np.float32),
        sigma=emb.sigma.astype(np.float32) if emb.sigma is not None else np.zeros((0,), np.float32),
        magnitude=emb.magnitude,
        masked=flags,
        paths=np.array(images.paths, dtype=str),
        paths_bytes=np.array(images.paths_bytes or [""] * len(images), dtype=str),
        identities=np.array(images.identities, dtype=str),
        failures=np.array([json.dumps(f, ensure_ascii=False) for f in images.failures], dtype=str),
        notes=np.array([json.dumps({"path": images.paths[i], "note": n}, ensure_ascii=False)
                        for i, n in sorted(images.notes.items())], dtype=str),
        skipped=np.array([json.dumps(r, ensure_ascii=False) for r in skipped_records(listing.skipped)], dtype=str),
        flip=np.array(flip),
    )
    tmp.replace(outp)
    kinds = note_counts(images.notes)
    by_reason: dict[str, int] = {}
    for sk in listing.skipped:
        by_reason[sk.reason] = by_reason.get(sk.reason, 0) + 1
    return {"out": str(outp), "files": listing.seen, "embedded": len(images), "failed": len(images.failures),
            "skipped": dict(sorted(by_reason.items())),
            "realigned": kinds["realigned"], "unverified": kinds["unverified"], "template_converted": kinds["template"],
            "alignment_fallbacks": kinds["realigned"] + kinds["unverified"],  # the name older callers read
            "has_sigma": emb.sigma is not None, "dim": int(dim)}
