"""Verification runs (``maskkit eval --bin`` / ``--pairs``): mask per side, embed, score
(cosine and MLS, insightface's 10 folds), and the report (metrics.json, roc.png, histograms,
worst_pairs.png, embeddings.npz)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maskkit.training.eval.embeddings import Embeddings, extract_embeddings
from maskkit.training.eval.evalsets.masking import apply_masks, mask_side_flags
from maskkit.training.eval.evalsets.sets import PairSet
from maskkit.training.eval.finite import MIN_PAIRS, NotScorable, finite_rows, left_out_pairs, one_sided, take_embeddings
from maskkit.training.eval.plots import _branch_hists, contact_sheet, pair_caption, plot_roc
from maskkit.training.eval.record import (
    VERIFICATION_FILES,
    EvalConfig,
    EvalInputError,
    _by_branch,
    _failure_summary,
    _flag_mls,
    _input_counts,
    _model_info,
    write_json,
)
from maskkit.training.eval.uncertainty import mls_flags, mutual_likelihood_score
from maskkit.training.eval.verification import NonFiniteScores, evaluate, evaluate_scores, pair_distances, val_far_note

log = logging.getLogger(__name__)


@dataclass
class VerificationRun:
    """Everything one verification run produced (also returned by :func:`evaluate_pairset`)."""

    metrics: dict
    pairs: PairSet
    images: np.ndarray = field(repr=False)
    emb: Embeddings = field(repr=False)
    dist: np.ndarray = field(repr=False)
    mls: np.ndarray | None = field(repr=False, default=None)
    all_emb: Embeddings | None = field(repr=False, default=None)  # every embedded image (None: emb)


def pairset_masks(pairs: PairSet, cfg: EvalConfig, renderer=None):
    """The synthetic masks ``cfg.mask_side`` asks for on ``pairs``
    (:class:`~maskkit.training.eval.evalsets.MaskOutcome`): each image's mask is drawn from its
    own key (file name / ``.bin`` index), never its position. They depend on the set, the side,
    the seed and the style only, so validation while training draws them once."""
    requested = mask_side_flags(len(pairs.images), cfg.mask_side)
    return apply_masks(pairs.images, requested, cfg.seed, cfg.mask_style, pairs.landmarks68, pairs.names,
                       renderer=renderer, progress=cfg.progress, keys=pairs.mask_keys)


def evaluate_pairset(model, pairs: PairSet, cfg: EvalConfig, renderer=None, masks=None) -> VerificationRun:
    """Mask (per ``cfg.mask_side``; ``masks``: :func:`pairset_masks`' result, already drawn),
    embed and score a :class:`PairSet`; no files written.

    Pairs whose score is not finite (the model's μ is NaN or inf for one of their images) are
    left out of the figures, each keeping the fold of its position in the source, and are counted
    (``counts.non_finite_pairs``), named (``failures.non_finite``) and noted
    (:mod:`maskkit.training.eval.finite`).

    Raises:
        EvalInputError: fewer than :data:`~maskkit.training.eval.finite.MIN_PAIRS` pairs loaded,
            or the pairs loaded are all same-identity or all different-identity pairs
            (:func:`~maskkit.training.eval.finite.one_sided`).
        NotScorable: fewer than that many pairs with finite scores; it carries the partial metrics.
    """
    if pairs.n_pairs < MIN_PAIRS:
        raise EvalInputError(f"{pairs.n_pairs} usable pair(s): the 10-fold protocol needs at least {MIN_PAIRS}"
                             f"{_failure_summary(pairs.failures, len(pairs.skipped_pairs))}")
    if why := one_sided(pairs.issame):
        raise EvalInputError(f"{pairs.source}: {why}{_failure_summary(pairs.failures, len(pairs.skipped_pairs))}")
    mo = masks if masks is not None else pairset_masks(pairs, cfg, renderer)
    emb_all = extract_embeddings(model, mo.images, mo.masked, cfg.batch_size, cfg.flip, cfg.progress)
    fin = finite_rows(emb_all.mu)
    keep = fin[0::2] & fin[1::2]  # a pair's distance is finite iff both its μ are
    left = left_out_pairs(~keep, pairs.pair_index, pairs.names)
    loaded = pairs
    # each image once, however many pairs name it (as its input failure would be)
    inputs, templates, notes = _input_counts({loaded.names[i]: n for i, n in loaded.notes.items()},
                                             listed=loaded.templates)
    counts = {"listed_pairs": loaded.n_listed, "loaded_pairs": loaded.n_pairs, left.count_key: left.count,
              "images": int(len(loaded.images)), "input_failures": len(loaded.failures),  # images, once each
              "pairs_skipped": len(loaded.skipped_pairs),  # pairs left out for a failed image
              **inputs,  # realigned, used as given, brought from another template
              "mask_requested": mo.n_requested, "masked": mo.n_masked, "mask_failures": len(mo.failures)}
    head = {
        "task": "verification", "set": cfg.set_name, "source": loaded.source, "model": str(cfg.model),
        **_model_info(model),
        "protocol": {"mask_side": cfg.mask_side, "mask_style": cfg.mask_style, "seed": cfg.seed, "flip": cfg.flip,
                     "folds": 10, "distance": "squared L2 of L2-normalised flip-summed mu",
                     "thresholds": "arange(0, 4, 0.01)", "listed_pairs": loaded.n_listed},
        "input_templates": templates,  # crops of another template size: {what was done: images}
        "mask_styles": {s: mo.styles.count(s) for s in sorted({s for s in mo.styles if s})},
        "sigma_norm": _by_branch(emb_all.sigma_norm, emb_all.masked),  # every embedded image
        "magnitude": _by_branch(emb_all.magnitude, emb_all.masked),
    }
    failures = {"inputs": loaded.failures, "pairs_skipped": loaded.skipped_pairs, "masking": mo.failures,
                "non_finite": left.records,
                "alignment_notes": {loaded.names[i]: n for i, n in sorted(loaded.notes.items())}}
    if left.count:
        notes.append(left.note())
        log.warning("%s", notes[-1])
        n_finite = left.total - left.count
        if n_finite < MIN_PAIRS:
            reason = (f"{left.count} of {left.total} pairs have non-finite scores (the model's μ is NaN or inf: a "
                      f"diverged or broken checkpoint?); {n_finite} finite pair(s) left, the 10-fold protocol "
                      f"needs at least {MIN_PAIRS}")
            m = {**head, "counts": {**counts, "pairs": n_finite}, "error": reason, "cosine": None, "mls": None,
                 "notes": notes, "failures": failures}
            raise NotScorable(reason, m, emb_all.sigma_norm, emb_all.magnitude, emb_all.masked)
    pairs = loaded.subset(keep)  # each kept pair stays at its position in the source: same folds
    images = mo.images[np.repeat(keep, 2)]
    emb = take_embeddings(emb_all, np.repeat(keep, 2))
    e1, e2 = emb.mu[0::2], emb.mu[1::2]
    # folds from the source's full pair list, so a pair that failed to load (or scored NaN) moves no other pair
    folds, fold_rule = pairs.folds(10)
    res = evaluate(e1, e2, pairs.issame, folds=folds, fold_rule=fold_rule)
    dist = pair_distances(e1, e2)
    mls = res_mls = None
    mls_flag: dict[str, str] = {}
    if emb.sigma_unit is not None:
        mls = mutual_likelihood_score(e1, emb.sigma_unit[0::2], e2, emb.sigma_unit[1::2])
        try:
            res_mls = evaluate_scores(mls, pairs.issame, folds=folds, fold_rule=fold_rule, what="MLS scores")
        except NonFiniteScores as exc:
            notes.append(f"MLS figures left out: {exc} (σ of a barely trained model overflows); cosine figures "
                         "are unaffected")
            log.warning("%s", notes[-1])
        else:  # σ = 0 (MLS undefined) or one σ for all (MLS = the distance): flagged, not read as a result
            mls_flag = _flag_mls(mls_flags(emb.sigma_unit[0::2], emb.sigma_unit[1::2]))
    threshold = float(np.mean(res.best_thresholds))
    same, diff = np.flatnonzero(pairs.issame), np.flatnonzero(~pairs.issame)
    k = cfg.worst_k
    fm = diff[np.argsort(dist[diff], kind="stable")][:k]  # different identities, closest
    fnm = same[np.argsort(-dist[same], kind="stable")][:k]  # same identity, farthest

    def _pair_rec(p):
        rec = {"pair": int(p), "a": pairs.names[2 * p], "b": pairs.names[2 * p + 1], "dist": float(dist[p]),
               "cosine": float(1.0 - dist[p] / 2.0), "masked": [bool(emb.masked[2 * p]), bool(emb.masked[2 * p + 1])],
               "mls": None if mls is None else float(mls[p])}
        for side, i in (("a", 2 * p), ("b", 2 * p + 1)):  # a file name that is not UTF-8: its bytes too
            if pairs.names_bytes and pairs.names_bytes[i]:
                rec[side + "_bytes"] = pairs.names_bytes[i]
        return rec

    metrics = {
        **head,
        "protocol": {
            **head["protocol"], "far_target": res.far_target, "fold_rule": res.fold_rule,
            "fold_sizes_same_diff": res.fold_sizes,
            "auc": "auc: over all pairs (rank statistic); auc_folds: insightface's, under the fold-averaged ROC",
        },
        "counts": {
            **counts, "pairs": pairs.n_pairs, "same": int(pairs.issame.sum()), "diff": int((~pairs.issame).sum()),
            "false_matches_at_threshold": int(np.sum(dist[diff] < threshold)),
            "false_non_matches_at_threshold": int(np.sum(dist[same] >= threshold)),
        },
        "cosine": res.summary(),
        "mls": None if res_mls is None else res_mls.summary(),
        "mls_flags": mls_flag,
        "val_note": val_far_note(int((~pairs.issame).sum()), res.far_target),
        "notes": notes,
        "roc": {
            "cosine": {"fpr": res.fpr, "tpr": res.tpr, "thresholds": res.thresholds},
            "mls": None if res_mls is None else {"fpr": res_mls.fpr, "tpr": res_mls.tpr},
        },
        "mean_threshold": threshold,
        "worst": {"false_matches": [_pair_rec(p) for p in fm], "false_non_matches": [_pair_rec(p) for p in fnm]},
        "failures": failures,
    }
    return VerificationRun(metrics, pairs, images, emb, dist, mls, all_emb=emb_all)


def write_verification_report(run: VerificationRun, out: Path, worst_k: int = 8) -> list[str]:
    """Write metrics.json, roc.png, sigma_hist.png, magnitude_hist.png, worst_pairs.png, embeddings.npz."""
    out.mkdir(parents=True, exist_ok=True)
    m = run.metrics
    title = f"{m['set']} | {m.get('method')} | mask side {m['protocol']['mask_side']}"
    # the plotted curve is the fold-averaged one: label it with its own area (auc_folds)
    curves = {"cosine": (m["roc"]["cosine"]["fpr"], m["roc"]["cosine"]["tpr"], m["cosine"]["auc_folds"])}
    if m["mls"] is not None:
        curves["MLS"] = (m["roc"]["mls"]["fpr"], m["roc"]["mls"]["tpr"], m["mls"]["auc_folds"])
    plot_roc(out / "roc.png", curves, title)
    every = run.all_emb or run.emb  # pairs left out for non-finite scores too (their values counted, not drawn)
    _branch_hists(out, every.sigma_norm, every.magnitude, every.masked, title)
    imgs = run.images

    def _entries(recs):
        return [([imgs[2 * r["pair"]], imgs[2 * r["pair"] + 1]], pair_caption(r["dist"], r["a"], r["b"]))
                for r in recs[:worst_k]]

    contact_sheet(out / "worst_pairs.png", [
        ("false matches (different id, closest)", _entries(m["worst"]["false_matches"])),
        ("false non-matches (same id, farthest)", _entries(m["worst"]["false_non_matches"])),
    ], f"worst pairs | {title} | mean threshold {m['mean_threshold']:.2f}")
    none = np.zeros((0,))
    np.savez_compressed(
        out / "embeddings.npz", mu=run.emb.mu, sigma=run.emb.sigma if run.emb.sigma is not None else none,
        sigma_unit=run.emb.sigma_unit if run.emb.sigma_unit is not None else none,
        magnitude=run.emb.magnitude, masked=run.emb.masked, issame=run.pairs.issame, names=np.array(run.pairs.names),
        pair_dist=run.dist, pair_mls=run.mls if run.mls is not None else none,
        pair_fold=run.pairs.folds(10)[0], pair_index=run.pairs.pair_index,
    )
    files = list(VERIFICATION_FILES)
    m["files"] = files
    write_json(out / "metrics.json", m)
    return files
