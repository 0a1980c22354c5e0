"""``maskkit eval`` runs and their reports.

:func:`run_eval` is the whole command as a function: load the model, load the pairs (or the
gallery and probes), draw the synthetic masks, embed, score, write the report.

Report folder (``--out``, default ``RUN/eval/<set>-<mask side>/``):

* ``metrics.json`` -- every figure, the protocol, counts and failure lists;
* ``roc.png`` (verification; cosine and MLS curves) or ``cmc.png`` (identification);
* ``sigma_hist.png`` -- ‖σ‖ of masked vs unmasked faces (MaskDUL Fig. 4 style);
* ``magnitude_hist.png`` -- ‖μ‖ of masked vs unmasked faces;
* ``worst_pairs.png`` / ``worst_probes.png`` -- contact sheet of the worst false matches and
  false non-matches (or of mis-identified probes);
* ``embeddings.npz`` -- the per-image μ, σ, σ/‖μ‖, ‖μ‖, branch flags, and for pairs the is-same
  flags, per-pair squared-L2 distance and MLS, each pair's fold and its position in the source
  (``pair_fold``, ``pair_index``), for recomputation.

A copy of ``metrics.json`` goes to ``RUN/eval/<set>-<task>-<mask side>.json`` so that
``maskkit eval --compare RUN_A RUN_B`` can put runs side by side without re-evaluating
(:func:`compare_runs`). ``maskkit eval`` refuses to replace any of these files (an earlier run's
report or record, :func:`report_paths`) unless told ``--overwrite``, which removes them first so
that no stale figure stays beside the new ones.

Entries whose scores are not finite (a diverged checkpoint's NaN / inf μ) are left out of the
figures, counted and named (:mod:`maskkit.training.eval.finite`); when too few remain,
``metrics.json`` holds the counts, the reason (``error``) and the σ / ‖μ‖ statistics, and
:func:`run_eval` raises :class:`EvalInputError`.

Length: the two tasks share :class:`EvalConfig`, the metrics' head (model, protocol, counts,
failures, σ / ‖μ‖ statistics) and the writing of the record; each task's ``evaluate_*`` and
``write_*`` sit beside each other so that the whole ``metrics.json`` schema is read in one file.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from maskkit.training.checkpoints.read import eval_home
from maskkit.training.eval.compare import metrics_table, trusts_crops
from maskkit.training.eval.evalsets.aligner import FaceAligner
from maskkit.training.eval.evalsets.binfile import BinFormatError, load_bin
from maskkit.training.eval.evalsets.folders import load_image_folder
from maskkit.training.eval.evalsets.masking import apply_masks, mask_side_flags
from maskkit.training.eval.evalsets.pairs import PairsFormatError, load_pairs
from maskkit.training.eval.evalsets.sets import ImageSet, PairSet, note_counts, templates_of
from maskkit.training.eval.finite import (
    MIN_PAIRS,
    NotScorable,
    finite_rows,
    joint_note,
    left_out_images,
    left_out_pairs,
    take_embeddings,
)
from maskkit.training.eval.identification import IdentificationResult, build_templates, identify
from maskkit.training.eval.plots import (
    _branch_hists,
    contact_sheet,
    pair_caption,
    plot_cmc,
    plot_roc,
    probe_caption,
)
from maskkit.training.eval.uncertainty import mls_flags, mutual_likelihood_score
from maskkit.training.eval.verification import (
    Embeddings,
    NonFiniteScores,
    evaluate,
    evaluate_scores,
    extract_embeddings,
    pair_distances,
    val_far_note,
)

log = logging.getLogger(__name__)


MASK_SIDES = ("none", "one", "both")
#: The files of a report folder, per task (``metrics.json`` first).
VERIFICATION_FILES = ("metrics.json", "roc.png", "sigma_hist.png", "magnitude_hist.png", "worst_pairs.png",
                      "embeddings.npz")
IDENTIFICATION_FILES = ("metrics.json", "cmc.png", "sigma_hist.png", "magnitude_hist.png", "worst_probes.png",
                        "embeddings.npz")


@dataclass
class EvalConfig:
    """Settings of one ``maskkit eval`` run.

    Exactly one source: ``bin``, or ``pairs`` + ``root``, or ``gallery`` + ``probes``.

    Attributes:
        model: run folder (``RUN/``), checkpoint, or a weights file (arcface_torch, MagFace).
        mask_side: ``none`` | ``one`` (second image of each pair / the probes; M-LFW
            protocol) | ``both`` (both images / gallery too).
        mask_style: renderer style or ``random``.
        seed: mask seed: each image's mask is drawn from ``(seed, key)``, the key being its
            file name (a pairs file, a gallery or probe folder) or its index in a ``.bin``
            (:func:`~maskkit.training.eval.evalsets.masking.image_rng`), so the order of a pairs file
            never changes a mask and an image named in several pairs gets the same one.
        flip: add the horizontal mirror's embedding (insightface protocol).
        out: report folder (default :attr:`home` ``/ <set>-<task>-mask<side>``, and ``-aligned``
            with ``aligned`` on a folder source: :attr:`key`).
        name: set name in reports (default from the file/folder names).
        probes_masked: the probes are real masked photos: no synthetic mask, masked branch.
        gallery_per_id: when ``gallery`` and ``probes`` are the same folder, the first K images
            (sorted) of each identity form the gallery and the rest are probes.
        scores: ``cosine`` and, for models with σ, ``mls`` as well.
        worst_k: entries per contact-sheet panel.
        aligned: trust 112x112 images under ``root``/``gallery``/``probes`` as aligned crops
            (default: each is checked against the ArcFace template and re-aligned when off;
            ``.bin`` sets are always trusted).
    """

    model: str
    bin: str | None = None
    pairs: str | None = None
    root: str | None = None
    gallery: str | None = None
    probes: str | None = None
    mask_side: str = "one"
    mask_style: str = "random"
    seed: int = 0
    flip: bool = True
    out: str | None = None
    name: str | None = None
    batch_size: int = 64
    device: str = "cpu"
    detector: str = "hog"
    aligned: bool = False
    probes_masked: bool = False
    gallery_per_id: int = 1
    worst_k: int = 8
    save_to_run: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.mask_side not in MASK_SIDES:
            raise ValueError(f"mask_side must be one of {MASK_SIDES}, got {self.mask_side!r}")
        sources = [self.bin is not None, self.pairs is not None, self.gallery is not None or self.probes is not None]
        if sum(sources) != 1:
            raise ValueError("give exactly one source: --bin, or --pairs with --root, or --gallery with --probes")
        if self.pairs is not None and self.root is None:
            raise ValueError("--pairs needs --root (the image folder)")
        if (self.gallery is None) != (self.probes is None):
            raise ValueError("identification needs both --gallery and --probes")
        from maskkit.render import STYLES

        if self.mask_style != "random" and self.mask_style not in STYLES:
            raise ValueError(f"mask style must be 'random' or one of {STYLES}, got {self.mask_style!r}")
        if self.batch_size < 1 or self.gallery_per_id < 1:
            raise ValueError("batch size and gallery-per-id must be >= 1")

    @property
    def task(self) -> str:
        return "identification" if self.gallery is not None else "verification"

    @property
    def set_name(self) -> str:
        if self.name:
            return self.name
        if self.bin:
            return Path(self.bin).stem
        if self.pairs:
            stem = Path(self.pairs).stem
            return Path(self.root).name if stem.lower() == "pairs" else stem
        return Path(self.probes).name

    @property
    def key(self) -> str:
        """``<set>-<task>-mask<side>``, plus ``-aligned`` when ``aligned`` trusts the crops of a
        folder source (a ``.bin`` is always trusted: no suffix), so the same set evaluated with and
        without ``--aligned`` keeps two records. Older records have no suffix: not aligned."""
        return f"{self.set_name}-{self.task}-mask{self.mask_side}" + ("-aligned" if self.trusts_crops else "")

    @property
    def trusts_crops(self) -> bool:
        """``aligned`` changes what is read: a folder source (pairs, gallery/probes), not a ``.bin``
        (the rule is :func:`~maskkit.training.eval.compare.trusts_crops`, shared with ``--compare``)."""
        return trusts_crops({"aligned": self.aligned, "bin": self.bin})

    @property
    def home(self) -> Path:
        """``RUN/eval``, or ``<stem>-eval/`` beside a weights file (:func:`~maskkit.training.checkpoints.eval_home`)."""
        return eval_home(self.model)

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else self.home / self.key


def _stats(x: np.ndarray | None) -> dict | None:
    if x is None or len(x) == 0:
        return None
    x = np.asarray(x, np.float64)
    fin = np.isfinite(x)
    out = {"n": int(len(x))}
    if not fin.all():  # e.g. σ of a barely trained model: the figures are over the finite values
        out["non_finite"] = int((~fin).sum())
        x = x[fin]
        if len(x) == 0:
            return {**out, "mean": None, "std": None, "median": None, "min": None, "max": None}
    return {**out, "mean": float(x.mean()), "std": float(x.std()), "median": float(np.median(x)),
            "min": float(x.min()), "max": float(x.max())}


def _by_branch(values: np.ndarray | None, masked: np.ndarray) -> dict | None:
    if values is None:
        return None
    return {"unmasked": _stats(values[~masked]), "masked": _stats(values[masked])}


def _input_counts(*notes: dict, listed: dict[str, int] | None = None) -> tuple[dict, dict[str, int], list[str]]:
    """``(counts, templates, notes)`` of how the inputs became 112x112 template crops, from the
    per-image alignment notes (each dict keyed by image) and a ``.bin``'s ``listed`` templates.

    counts: ``realigned`` (112x112 crops off the template, re-aligned from their landmarks),
    ``used_as_given`` (crops whose face cannot be checked: profiles, occlusion; also
    ``alignment_unverified``), ``template_converted`` (crops of another template size brought
    onto the 112 template, :mod:`maskkit.io.crop_template`), and ``alignment_fallbacks``
    (= realigned + used as given, the name older records carry). templates: ``{what was done:
    images}``; notes: one line per entry of it, for the report's notes.
    """
    kinds = note_counts(*notes)
    templates = templates_of(*notes, listed=listed)
    counts = {"realigned": kinds["realigned"], "used_as_given": kinds["unverified"],
              "template_converted": sum(templates.values()),
              "alignment_fallbacks": kinds["realigned"] + kinds["unverified"], "alignment_unverified": kinds["unverified"]}
    lines = [f"{n} image{'s' if n != 1 else ''}: {what}" for what, n in templates.items()]
    for line in lines:
        log.info("%s", line)
    return counts, templates, lines


def _model_info(model) -> dict:
    cfg = getattr(model, "config", {}) or {}
    meta = getattr(model, "meta", {}) or {}
    return {
        "method": cfg.get("method"),
        "backbone": cfg.get("backbone"),
        "width": cfg.get("width"),
        "two_stream": cfg.get("two_stream"),
        "step": meta.get("step"),
        "checkpoint": meta.get("checkpoint"),
        "layout": meta.get("layout"), "label": meta.get("label"),  # foreign files: "<stem> (<layout>)"
    }


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o)}")


def write_json(path: Path, obj: Any) -> None:
    """Indented JSON (numpy values converted), written atomically (:func:`maskkit.util.files.write_atomic`).
    Every string is valid UTF-8 (:func:`maskkit.util.names.text_safe`: a stray file name that is
    not UTF-8 is written in its display form, never as a lone-surrogate escape)."""
    from maskkit.util.files import write_atomic
    from maskkit.util.names import text_safe

    write_atomic(path, (json.dumps(text_safe(obj), indent=2, default=_json_default) + "\n").encode("utf-8"))


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
        EvalInputError: fewer than :data:`~maskkit.training.eval.finite.MIN_PAIRS` pairs loaded.
        NotScorable: fewer than that many pairs with finite scores; it carries the partial metrics.
    """
    if pairs.n_pairs < MIN_PAIRS:
        raise EvalInputError(f"{pairs.n_pairs} usable pair(s): the 10-fold protocol needs at least {MIN_PAIRS}"
                             f"{_failure_summary(pairs.failures, len(pairs.skipped_pairs))}")
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


def _flag_mls(flags: dict[str, str]) -> dict[str, str]:
    """``metrics["mls_flags"]``: MLS figures that are no uncertainty-aware result
    (:func:`~maskkit.training.eval.uncertainty.mls_flags`), each logged once."""
    for code, msg in flags.items():
        log.warning("%s (mls_flags.%s)", msg, code)
    return flags


class EvalInputError(ValueError):
    """The evaluation set cannot be scored (an empty gallery or probe set); the CLI shows the
    message as a one-line error."""


def _failure_summary(failures: list[dict], skipped_pairs: int = 0) -> str:
    """`` (N image(s) failed: reason n, ...; P pair(s) left out)`` -- each image counted once."""
    if not failures and not skipped_pairs:
        return ""
    by = Counter(f.get("reason", "?") for f in failures)
    parts = [f"{len(failures)} image(s) failed: " + ", ".join(f"{r} {n}" for r, n in sorted(by.items()))] \
        if failures else []
    if skipped_pairs:
        parts.append(f"{skipped_pairs} pair(s) left out")
    return " (" + "; ".join(parts) + ")"


def report_paths(cfg: EvalConfig) -> list[Path]:
    """Every file a run of ``cfg`` writes or would leave stale: the report files of either task in
    :attr:`EvalConfig.out_dir` and, with ``save_to_run``, the record ``home/<key>.json`` that
    ``maskkit eval --compare`` reads. The command refuses to replace any of them without
    ``--overwrite``, which removes them first (:func:`maskkit.util.files.claim_outputs`)."""
    names = dict.fromkeys(VERIFICATION_FILES + IDENTIFICATION_FILES)  # ordered union
    paths = [cfg.out_dir / n for n in names]
    return paths + ([cfg.home / f"{cfg.key}.json"] if cfg.save_to_run else [])


def run_eval(cfg: EvalConfig, model=None, console=None) -> dict:
    """Run ``maskkit eval`` for one model and one set; write the report; return metrics.

    Args:
        cfg: the run's settings.
        model: an already loaded ``InferenceModel`` (default: ``load_model(cfg.model)``).
        console: a ``rich.console.Console`` for the summary table (None: no table).

    Raises:
        EvalInputError: a pairs-file line is none of the accepted forms, the gallery or the
            probe set holds no usable face, fewer than 10 pairs loaded, or too few entries have
            finite scores (:class:`~maskkit.training.eval.finite.NotScorable`); in the last
            case ``metrics.json`` (counts, the reason, σ / ‖μ‖ statistics) and the branch
            histograms are written first.
    """
    if model is None:
        from maskkit.training.api import load_model

        model = load_model(cfg.model, device=cfg.device)
    aligner = FaceAligner(cfg.detector, trust_aligned=cfg.aligned)
    out = cfg.out_dir
    failed = None
    try:
        if cfg.task == "verification":
            try:
                pairs = load_bin(cfg.bin) if cfg.bin else load_pairs(cfg.pairs, cfg.root, aligner, cfg.progress)
            except (PairsFormatError, BinFormatError) as exc:  # one line: file:line and the forms, or what the .bin is not
                raise EvalInputError(str(exc)) from exc
            if pairs.n_pairs == 0:
                src = cfg.bin or cfg.pairs
                raise EvalInputError(f"no usable pair in {src}"
                                     f"{_failure_summary(pairs.failures, len(pairs.skipped_pairs))}")
            run = evaluate_pairset(model, pairs, cfg)
            write_verification_report(run, out, cfg.worst_k)
        else:
            if Path(cfg.gallery).resolve() == Path(cfg.probes).resolve():
                both = load_image_folder(cfg.gallery, aligner, cfg.progress, desc="gallery+probes")
                gallery, probes = split_gallery_probes(both, cfg.gallery_per_id)
                gallery.failures = both.failures
            else:
                gallery = load_image_folder(cfg.gallery, aligner, cfg.progress, desc="gallery")
                probes = load_image_folder(cfg.probes, aligner, cfg.progress, desc="probes")
            for what, s, src in (("gallery", gallery, cfg.gallery), ("probe set", probes, cfg.probes)):
                if len(s) == 0:
                    raise EvalInputError(f"the {what} is empty: no usable face under {src}{_failure_summary(s.failures)}")
            run = evaluate_identification(model, gallery, probes, cfg)
            write_identification_report(run, out, cfg.worst_k)
        m = run.metrics
    except NotScorable as exc:  # write what can be written, then a one-line error
        failed, m = exc, exc.metrics
        out.mkdir(parents=True, exist_ok=True)
        _branch_hists(out, exc.sigma_norm, exc.magnitude, exc.masked,
                      f"{m['set']} | {m.get('method')} | mask side {m['protocol']['mask_side']}")
        m["files"] = ["metrics.json", "sigma_hist.png", "magnitude_hist.png"]
    m["config"] = asdict(cfg)
    m["report_dir"] = str(out)
    write_json(out / "metrics.json", m)
    if cfg.save_to_run:
        try:
            write_json(cfg.home / f"{cfg.key}.json", m)
        except OSError as exc:
            log.warning("could not save metrics into %s: %s", cfg.home, exc)
    if failed is not None:
        raise EvalInputError(f"{failed}; counts and σ statistics in {out / 'metrics.json'}") from failed
    if console is not None:
        console.print(metrics_table(m))
        console.print(f"report: {out}")
    return m
