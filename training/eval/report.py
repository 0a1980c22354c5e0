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

The parts: :mod:`~maskkit.training.eval.record` (config, shared record fields),
:mod:`~maskkit.training.eval.pair_report` (verification), :mod:`~maskkit.training.eval.id_report`
(identification); their names are importable from here too.
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from maskkit.training.eval.compare import metrics_table
from maskkit.training.eval.evalsets.aligner import FaceAligner
from maskkit.training.eval.evalsets.binfile import BinFormatError, load_bin
from maskkit.training.eval.evalsets.folders import load_image_folder
from maskkit.training.eval.evalsets.pairs import PairsFormatError, load_pairs
from maskkit.training.eval.finite import NotScorable
from maskkit.training.eval.id_report import (
    IdentificationRun,
    evaluate_identification,
    split_gallery_probes,
    write_identification_report,
)
from maskkit.training.eval.pair_report import (
    VerificationRun,
    evaluate_pairset,
    pairset_masks,
    write_verification_report,
)
from maskkit.training.eval.plots import _branch_hists
from maskkit.training.eval.record import (
    IDENTIFICATION_FILES,
    MASK_SIDES,
    VERIFICATION_FILES,
    EvalConfig,
    EvalInputError,
    _failure_summary,
    report_paths,
    write_json,
)

# the names callers import from here, as before the split
__all__ = ["run_eval", "EvalConfig", "EvalInputError", "MASK_SIDES", "VERIFICATION_FILES", "IDENTIFICATION_FILES",
           "report_paths", "write_json", "VerificationRun", "evaluate_pairset", "pairset_masks",
           "write_verification_report", "IdentificationRun", "evaluate_identification", "split_gallery_probes",
           "write_identification_report"]

log = logging.getLogger(__name__)


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
