"""What every ``maskkit eval`` record shares: :class:`EvalConfig`, the report files of each task,
the metrics' head (σ / ‖μ‖ statistics by branch, how the inputs became template crops, the
model), the failure summary, :func:`write_json` and :func:`report_paths`.

The tasks' runs and reports are :mod:`~maskkit.training.eval.pair_report` (verification) and
:mod:`~maskkit.training.eval.id_report` (identification); :mod:`~maskkit.training.eval.report`
runs the command.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskkit.training.checkpoints.read import eval_home
from maskkit.training.eval.compare import trusts_crops
from maskkit.training.eval.evalsets.sets import note_counts, templates_of

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
