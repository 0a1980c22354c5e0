"""Identification runs (``maskkit eval --gallery --probes``): split, mask the probes, embed,
rank (Rank-1/5, CMC), and the report (metrics.json, cmc.png, histograms, worst_probes.png,
embeddings.npz)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maskkit.training.eval.embeddings import Embeddings, extract_embeddings
from maskkit.training.eval.evalsets.masking import apply_masks
from maskkit.training.eval.evalsets.sets import ImageSet
from maskkit.training.eval.finite import NotScorable, finite_rows, joint_note, left_out_images, take_embeddings
from maskkit.training.eval.identification import IdentificationResult, build_templates, identify
from maskkit.training.eval.plots import _branch_hists, contact_sheet, plot_cmc, probe_caption
from maskkit.training.eval.record import (
    IDENTIFICATION_FILES,
    EvalConfig,
    _by_branch,
    _flag_mls,
    _input_counts,
    _model_info,
    write_json,
)
from maskkit.training.eval.uncertainty import mls_flags
from maskkit.training.eval.verification import NonFiniteScores

log = logging.getLogger(__name__)


@dataclass
class IdentificationRun:
    metrics: dict
    gallery: ImageSet
    probes: ImageSet
    gallery_images: np.ndarray = field(repr=False)
    probe_images: np.ndarray = field(repr=False)
    gallery_emb: Embeddings = field(repr=False)
    probe_emb: Embeddings = field(repr=False)
    result: IdentificationResult = field(repr=False)
    result_mls: IdentificationResult | None = field(repr=False, default=None)
    gallery_all: Embeddings | None = field(repr=False, default=None)  # every embedded image (None: *_emb)
    probe_all: Embeddings | None = field(repr=False, default=None)


def split_gallery_probes(images: ImageSet, per_id: int) -> tuple[ImageSet, ImageSet]:
    """First ``per_id`` images (in path order) of each identity -> gallery, the rest -> probes."""
    if per_id < 1:
        raise ValueError("gallery_per_id must be >= 1")
    order = sorted(range(len(images)), key=lambda i: images.paths[i])
    seen: dict[str, int] = {}
    g, p = [], []
    for i in order:
        ident = images.identities[i]
        if seen.get(ident, 0) < per_id:
            g.append(i)
            seen[ident] = seen.get(ident, 0) + 1
        else:
            p.append(i)
    return images.subset(g), images.subset(p)


def evaluate_identification(model, gallery: ImageSet, probes: ImageSet, cfg: EvalConfig, renderer=None) -> IdentificationRun:
    """Mask, embed and identify; no files written.

    Gallery faces are masked only with ``mask_side="both"``; probes with ``one``/``both``
    (synthetic masks) unless ``cfg.probes_masked`` says they already wear real masks (then they
    only go through the masked branch).
    """
    if len(gallery) == 0 or len(probes) == 0:
        raise ValueError(f"identification needs a non-empty gallery and probe set (got {len(gallery)} and {len(probes)})")
    g_req = np.full(len(gallery), cfg.mask_side == "both")
    p_req = np.full(len(probes), cfg.mask_side in ("one", "both") and not cfg.probes_masked)
    # masks keyed by each image's path (never its position); probes use another seed stream than
    # the gallery so that a/1.jpg in each folder does not share a mask
    gm = apply_masks(gallery.images, g_req, cfg.seed, cfg.mask_style, gallery.landmarks68, gallery.paths,
                     renderer=renderer, progress=cfg.progress, keys=gallery.mask_keys)
    pm = apply_masks(probes.images, p_req, cfg.seed + 1_000_003, cfg.mask_style, probes.landmarks68, probes.paths,
                     renderer=renderer, progress=cfg.progress, keys=probes.mask_keys)
    p_branch = pm.masked | (np.ones(len(probes), bool) if cfg.probes_masked else False)
    ge_all = extract_embeddings(model, gm.images, gm.masked, cfg.batch_size, cfg.flip, cfg.progress, desc="gallery")
    pe_all = extract_embeddings(model, pm.images, p_branch, cfg.batch_size, cfg.flip, cfg.progress, desc="probes")
    # an image whose μ is not finite scores NaN against everything (a gallery one poisons its
    # identity's template): left out, counted and named (maskkit.training.eval.finite)
    g_keep, p_keep = finite_rows(ge_all.mu), finite_rows(pe_all.mu)
    left_g = left_out_images("gallery images", ~g_keep, gallery.paths, gallery.identities)
    left_p = left_out_images("probes", ~p_keep, probes.paths, probes.identities)
    inputs, templates, notes = _input_counts(gallery.notes, probes.notes)
    note = joint_note([left_g, left_p])
    if note:
        notes.append(note)
        log.warning("%s", note)
    all_sigma = None if ge_all.sigma_norm is None else np.concatenate([ge_all.sigma_norm, pe_all.sigma_norm])
    all_mag = np.concatenate([ge_all.magnitude, pe_all.magnitude])
    all_masked = np.concatenate([ge_all.masked, pe_all.masked])
    counts = {
        "input_failures": len(gallery.failures) + len(probes.failures),
        **inputs,  # realigned, used as given, brought from another template
        left_g.count_key: left_g.count, left_p.count_key: left_p.count,
        "mask_requested": gm.n_requested + pm.n_requested, "masked": gm.n_masked + pm.n_masked,
        "mask_failures": len(gm.failures) + len(pm.failures),
        "probes_masked_branch": int(p_branch.sum()),
    }
    head = {
        "task": "identification",
        "set": cfg.set_name,
        "source": {"gallery": cfg.gallery, "probes": cfg.probes},
        "model": str(cfg.model),
        **_model_info(model),
        "protocol": {
            "mask_side": cfg.mask_side, "mask_style": cfg.mask_style, "seed": cfg.seed, "flip": cfg.flip,
            "probes_masked": cfg.probes_masked, "gallery_per_id": cfg.gallery_per_id,
            "template": "cosine: mean of L2-normalised gallery embeddings per identity, re-normalised; "
                        "MLS: PFE precision-weighted fusion of the gallery Gaussians",
            "score": "cosine (and MLS with σ)",
        },
        "input_templates": templates,  # crops of another template size: {what was done: images}
        "sigma_norm": _by_branch(all_sigma, all_masked),  # every embedded image
        "magnitude": _by_branch(all_mag, all_masked),
    }
    failures = {"inputs": gallery.failures + probes.failures, "masking": gm.failures + pm.failures,
                "non_finite": left_g.records + left_p.records}
    if not g_keep.any() or not p_keep.any():
        reason = (f"no {'gallery image' if not g_keep.any() else 'probe'} has a finite score ({left_g.count} of "
                  f"{left_g.total} gallery images and {left_p.count} of {left_p.total} probes have a μ that is NaN "
                  "or inf: a diverged or broken checkpoint?)")
        m = {**head, "counts": {**counts, "gallery_images": int(g_keep.sum()), "probes": int(p_keep.sum())},
             "error": reason, "cosine": None, "mls": None, "flags": {}, "notes": notes, "failures": failures}
        raise NotScorable(reason, m, all_sigma, all_mag, all_masked)
    loaded_g, loaded_p = gallery, probes
    gallery, probes = loaded_g.subset(np.flatnonzero(g_keep)), loaded_p.subset(np.flatnonzero(p_keep))
    g_images, p_images = gm.images[g_keep], pm.images[p_keep]
    ge, pe = take_embeddings(ge_all, g_keep), take_embeddings(pe_all, p_keep)
    res = identify(ge.mu, gallery.identities, pe.mu, probes.identities, probes.paths)
    res_mls = None
    mls_flag: dict[str, str] = {}
    if ge.sigma_unit is not None and pe.sigma_unit is not None:
        try:
            res_mls = identify(ge.mu, gallery.identities, pe.mu, probes.identities, probes.paths, score="mls",
                               gallery_sigma_unit=ge.sigma_unit, probe_sigma_unit=pe.sigma_unit)
        except NonFiniteScores as exc:
            notes.append(f"MLS figures left out: {exc} (σ of a barely trained model overflows); cosine figures "
                         "are unaffected")
            log.warning("%s", notes[-1])
        else:  # the probes meet the templates' fused σ (PFE fusion), as MLS scores them
            templ = build_templates(ge.mu, gallery.identities, ge.sigma_unit)
            mls_flag = _flag_mls(mls_flags(templ.sigma, pe.sigma_unit, paired=False))
    metrics = {
        **head,
        "counts": {"gallery_images": len(gallery), "identities": res.n_identities, "probes": len(probes),
                   "probes_unknown_identity": res.n_probes_unknown, **counts},
        "cosine": res.summary(),
        "mls": None if res_mls is None else res_mls.summary(),
        "mls_flags": mls_flag,
        "flags": res.flags,
        "notes": notes,
        "per_identity": res.per_identity,
        "failures": failures,
    }
    return IdentificationRun(metrics, gallery, probes, g_images, p_images, ge, pe, res, res_mls, ge_all, pe_all)


def write_identification_report(run: IdentificationRun, out: Path, worst_k: int = 8) -> list[str]:
    """Write metrics.json, cmc.png, sigma_hist.png, magnitude_hist.png, worst_probes.png, embeddings.npz."""
    out.mkdir(parents=True, exist_ok=True)
    m = run.metrics
    title = f"{m['set']} | {m.get('method')} | mask side {m['protocol']['mask_side']}"
    curves = {"cosine": m["cosine"]["cmc"]}
    if m["mls"] is not None:
        curves["MLS"] = m["mls"]["cmc"]
    plot_cmc(out / "cmc.png", curves, title)
    g, p = run.gallery_all or run.gallery_emb, run.probe_all or run.probe_emb  # images left out too
    sig = None if g.sigma_norm is None else np.concatenate([g.sigma_norm, p.sigma_norm])
    _branch_hists(out, sig, np.concatenate([g.magnitude, p.magnitude]), np.concatenate([g.masked, p.masked]), title)
    # worst probes: rank > 1, largest margin of the wrong top-1 over the true template
    first = {}
    for i, ident in enumerate(run.gallery.identities):
        first.setdefault(ident, i)
    fails = []
    for p, (rank, pred) in enumerate(zip(run.result.ranks, run.result.predicted)):
        if rank > 1:
            ident = run.probes.identities[p]
            fails.append((p, rank, pred, ident))
    fails.sort(key=lambda t: -t[1])
    entries = [([run.probe_images[p], run.gallery_images[first[pred]], run.gallery_images[first[ident]]],
                probe_caption(rank, ident, pred)) for p, rank, pred, ident in fails[: 2 * worst_k]]
    contact_sheet(out / "worst_probes.png", [("mis-identified probes, worst rank first (probe | predicted | true)", entries)],
                  f"{len(fails)} of {len(run.probes)} probes not at rank 1 | {title}")
    np.savez_compressed(
        out / "embeddings.npz", gallery_mu=run.gallery_emb.mu, probe_mu=run.probe_emb.mu,
        gallery_ids=np.array(run.gallery.identities), probe_ids=np.array(run.probes.identities),
        probe_paths=np.array(run.probes.paths), probe_masked=run.probe_emb.masked,
        gallery_sigma=run.gallery_emb.sigma if run.gallery_emb.sigma is not None else np.zeros((0,)),
        probe_sigma=run.probe_emb.sigma if run.probe_emb.sigma is not None else np.zeros((0,)),
    )
    files = list(IDENTIFICATION_FILES)
    m["files"] = files
    write_json(out / "metrics.json", m)
    return files
