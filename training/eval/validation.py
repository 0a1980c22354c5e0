"""Validation while training: ``maskkit train --val lfw.bin --val cfp_fp.bin [--val-every N]``.

:class:`Validator` is a training-loop callback (:mod:`maskkit.training.callbacks`) that
``maskkit train`` builds where commands are wired and hands to the loop, as arcface_torch's
``train.py`` builds its verification callback; the loop itself never imports this package.

**Exactly as ``maskkit eval``.** Each set is read as ``eval`` reads it (:func:`load_bin`, or
:func:`load_pairs` with eval's default aligner) and scored by the same function
(:func:`~maskkit.training.eval.report.evaluate_pairset`): synthetic masks drawn per image key
with eval's default seed and style, flip-summed embeddings, squared L2, 10 folds. The masks
depend on the set and the side only, so they are drawn once, when training starts. A figure
logged at step ``S`` therefore equals ``maskkit eval`` of the checkpoint written at step ``S``
(``last.pt`` then, ``best.pt`` while it is the best) on the same set and mask side.

**When.** Every ``val_every`` optimiser steps (default: at the end of every epoch) and at the
run's last step, on rank 0 under DDP (the other ranks wait at the checkpoint that follows).

**What is recorded.** Per set and mask side (default ``none`` and ``one``) an ``event: "val"``
record in ``log.jsonl`` (accuracy ± std, AUC, VAL@FAR, pairs, masked faces, seconds, the best
accuracy so far and its step), TensorBoard scalars ``val/<set>/mask<side>/<metric>`` and one
console line. The *rule* (``val_best``: ``SET:SIDE[:METRIC]``, default the first set at mask side
``one``, accuracy) picks ``RUN/checkpoints/best.pt``: a copy of the checkpoint of the step that
gave the best figure so far (ties keep the earlier step). The rule is recorded (``config.json``
``resolved.val_best``, the ``val_setup`` record, every ``val_best`` record and the checkpoints),
and the history travels in the checkpoints, so ``--resume`` keeps it; a resumed run with another
rule starts a new best (and says so).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from maskkit.training.callbacks import CallbackContext, CallbackResult

#: Figures a rule may choose by (higher is better), as the ``cosine`` block of ``metrics.json`` names them.
METRICS = ("accuracy", "auc", "val")


class ValidationError(ValueError):
    """A ``--val`` set or rule that cannot be used (one line)."""


def _set_error(spec, exc: Exception) -> ValidationError:
    """A set that cannot be read, as one line naming it (a ``.bin``'s error without its path again)."""
    return ValidationError(f"--val {spec.text}: {getattr(exc, 'detail', exc)}")


@dataclass
class ValSpec:
    """One ``--val`` set: a ``.bin``, or a pairs file with its image folder."""

    text: str
    bin: str | None = None
    pairs: str | None = None
    root: str | None = None

    @property
    def name(self) -> str:
        return self.eval_config("none").set_name

    def eval_config(self, side: str, batch_size: int = 64, device: str = "cpu", seed: int = 0):
        """The :class:`~maskkit.training.eval.report.EvalConfig` ``maskkit eval`` would build for
        this set and ``side`` (its defaults: seed 0, random style, flip, hog, not ``--aligned``)."""
        from maskkit.training.eval.report import EvalConfig

        return EvalConfig(model="<training>", bin=self.bin, pairs=self.pairs, root=self.root, mask_side=side,
                          seed=seed, batch_size=batch_size, device=str(device), progress=False, save_to_run=False)


def parse_val(text: str) -> ValSpec:
    """``--val`` value -> :class:`ValSpec`: ``FILE.bin``, ``PAIRS_FILE:ROOT_DIR``, or a folder
    holding ``pairs.txt`` (its images under it).

    Raises:
        ValidationError: none of these (one line naming the value).
    """
    p = Path(text)
    if p.is_file():
        if p.suffix.lower() == ".bin":
            return ValSpec(text, bin=str(p.resolve()))
        raise ValidationError(f"--val {text}: a pairs file needs its image folder: --val {text}:IMAGES_DIR")
    if p.is_dir() and (p / "pairs.txt").is_file():
        return ValSpec(text, pairs=str((p / "pairs.txt").resolve()), root=str(p.resolve()))
    head, sep, tail = text.rpartition(":")
    if sep and Path(head).is_file() and Path(tail).is_dir():
        return ValSpec(text, pairs=str(Path(head).resolve()), root=str(Path(tail).resolve()))
    raise ValidationError(f"--val {text}: not a .bin file, PAIRS_FILE:IMAGES_DIR or a folder with pairs.txt")


@dataclass(frozen=True)
class BestRule:
    """Which figure picks ``best.pt``: set name, mask side, metric (higher is better)."""

    set: str
    side: str
    metric: str = "accuracy"

    @property
    def text(self) -> str:
        return f"{self.set}:{self.side}:{self.metric}"

    @classmethod
    def parse(cls, text: str | None, sets: Sequence[str], sides: Sequence[str]) -> "BestRule":
        """``SET:SIDE[:METRIC]``; None: the first set at side ``one`` (or the first side), accuracy.

        Raises:
            ValidationError: a set, side or metric that is not validated.
        """
        if text is None:
            return cls(sets[0], "one" if "one" in sides else sides[0], "accuracy")
        parts = str(text).split(":")
        if len(parts) not in (2, 3):
            raise ValidationError(f"--val-best {text}: expected SET:SIDE or SET:SIDE:METRIC")
        rule = cls(*parts)
        if rule.set not in sets:
            raise ValidationError(f"--val-best {text}: no --val set is named {rule.set!r} (sets: {', '.join(sets)})")
        if rule.side not in sides:
            raise ValidationError(f"--val-best {text}: side {rule.side!r} is not validated (sides: {', '.join(sides)})")
        if rule.metric not in METRICS:
            raise ValidationError(f"--val-best {text}: metric must be one of {', '.join(METRICS)}")
        return rule


@dataclass
class _Loaded:
    spec: ValSpec
    pairs: Any
    masks: dict[str, Any] = field(default_factory=dict)


class Validator:
    """The validation callback (see the module docstring).

    Args:
        sets: ``--val`` values (:func:`parse_val`).
        sides: mask sides to evaluate each set at.
        every: validate every N steps (None: at each epoch end); always at the run's last step.
        best: the rule (:meth:`BestRule.parse`).
        batch_size: images per forward pass.
        seed: the mask seed (``maskkit eval --seed``; 0 as its default).

    Raises:
        ValidationError: a set that is no set, two sets with one name, a bad rule.
    """

    name = "val"

    def __init__(self, sets: Sequence[str], sides: Sequence[str] = ("none", "one"), every: int | None = None,
                 best: str | None = None, batch_size: int = 64, seed: int = 0):
        self.specs = [parse_val(s) for s in sets]
        names = [s.name for s in self.specs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValidationError(f"--val: two sets are named {dup[0]!r} (the set name is the file's stem or, "
                                  "for pairs.txt, its folder's name): rename one")
        self.sides, self.every, self.batch_size, self.seed = tuple(sides), every, int(batch_size), int(seed)
        self.rule = BestRule.parse(best, names, self.sides)
        self.history: list[dict] = []
        self.best: dict | None = None
        self.notes: list[str] = []
        self._sets: list[_Loaded] | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> "Validator | None":
        """The validator ``cfg.val`` asks for (None when it names no set)."""
        if not cfg.val:
            return None
        return cls(cfg.val, cfg.val_sides, cfg.val_every, cfg.val_best, cfg.val_batch_size)

    @property
    def resolved(self) -> dict:
        """What ``config.json`` records beside the requested values."""
        return {"val_best": self.rule.text}

    def check_files(self) -> None:
        """Read each set's file for its form before training starts (a ``.bin``'s pickle, a pairs
        file's lines; no image decoded), so a set that is none is refused before anything is written.

        Raises:
            ValidationError: one line naming the set and what is wrong (also a set whose pairs are
                all same-identity or all different-identity pairs: no figure exists for it).
        """
        from maskkit.training.eval.evalsets import BinFormatError, PairsFormatError, parse_pairs_txt, read_bin_lists
        from maskkit.training.eval.finite import one_sided

        for spec in self.specs:
            try:
                issame = read_bin_lists(spec.bin)[1] if spec.bin else [p[2] for p in parse_pairs_txt(spec.pairs)]
            except (BinFormatError, PairsFormatError, OSError) as exc:
                raise _set_error(spec, exc) from exc
            if len(issame) and (why := one_sided(issame)):
                raise ValidationError(f"--val {spec.text}: {why.replace('usable ', 'listed ')}")

    # -- the callback protocol -------------------------------------------------------------------
    def load(self) -> list[_Loaded]:
        """Read every set and draw its masks, once (``maskkit eval``'s readers)."""
        if self._sets is None:
            from maskkit.training.eval.evalsets import BinFormatError, FaceAligner, PairsFormatError, load_bin, load_pairs
            from maskkit.training.eval.finite import MIN_PAIRS, one_sided
            from maskkit.training.eval.report import pairset_masks

            loaded = []
            for spec in self.specs:
                cfg = spec.eval_config("none")
                try:
                    pairs = (load_bin(spec.bin) if spec.bin else
                             load_pairs(spec.pairs, spec.root, FaceAligner(cfg.detector, trust_aligned=cfg.aligned),
                                        progress=False))
                except (BinFormatError, PairsFormatError) as exc:
                    raise _set_error(spec, exc) from exc
                if pairs.n_pairs < MIN_PAIRS:
                    raise ValidationError(f"--val {spec.text}: {pairs.n_pairs} usable pair(s); the 10-fold protocol "
                                          f"needs at least {MIN_PAIRS}")
                if why := one_sided(pairs.issame):
                    raise ValidationError(f"--val {spec.text}: {why}")
                item = _Loaded(spec, pairs)
                for side in self.sides:
                    item.masks[side] = pairset_masks(pairs, spec.eval_config(side, seed=self.seed))
                loaded.append(item)
            self._sets = loaded
        return self._sets

    def start(self, step: int) -> CallbackResult:
        t0 = time.perf_counter()
        sets = self.load()
        when = f"every {self.every} steps" if self.every else "at the end of every epoch"
        desc = ", ".join(f"{s.spec.name} ({s.pairs.n_pairs} pairs"
                         + "".join(f"; mask {side}: {s.masks[side].n_masked} drawn, {len(s.masks[side].failures)} failed"
                                   for side in self.sides if side != "none") + ")" for s in sets)
        lines = [f"validation: {desc}; sides {', '.join(self.sides)}, {when} and at the end; best.pt by "
                 f"{self.rule.text} (loaded in {time.perf_counter() - t0:.1f} s)"] + self.notes
        if self.best is not None:
            lines.append(f"validation history: {len(self.history)} figures; best {self.rule.text} "
                         f"{self.best['value']:.4f} at step {self.best['step']}")
        rec = {"event": "val_setup", "step": step, "rule": self.rule.text, "sides": list(self.sides),
               "every": self.every, "sets": [{"name": s.spec.name, "source": s.spec.bin or s.spec.pairs,
                                              "pairs": s.pairs.n_pairs,
                                              "masked": {side: s.masks[side].n_masked for side in self.sides},
                                              "mask_failures": {side: len(s.masks[side].failures)
                                                                for side in self.sides}} for s in sets],
               "resumed_history": len(self.history), "notes": list(self.notes)}
        return CallbackResult(records=[rec], lines=lines)

    def due(self, step: int, epoch_end: bool, last: bool) -> bool:
        return last or (step % self.every == 0 if self.every else epoch_end)

    def __call__(self, ctx: CallbackContext) -> CallbackResult:
        from maskkit.training.api import InferenceModel
        from maskkit.training.eval.finite import NotScorable
        from maskkit.training.eval.report import evaluate_pairset

        model = InferenceModel(ctx.model, ctx.config, ctx.device, meta={"step": ctx.step,
                                                                        "checkpoint": str(ctx.checkpoint)})
        out = CallbackResult()
        parts, t_all = [], time.perf_counter()
        for s in self.load():
            shown = []
            for side in self.sides:
                t0 = time.perf_counter()
                rec = {"event": "val", "step": ctx.step, "epoch": round(ctx.epoch, 4), "set": s.spec.name,
                       "mask_side": side}
                try:
                    run = evaluate_pairset(model, s.pairs, s.spec.eval_config(side, self.batch_size, ctx.device,
                                                                              self.seed), masks=s.masks[side])
                except NotScorable as exc:
                    rec.update(error=str(exc), seconds=round(time.perf_counter() - t0, 3))
                    out.records.append(rec)
                    shown.append(f"{side} -")
                    continue
                m = run.metrics
                c = m["cosine"]
                rec.update({k: None if c.get(k) is None else float(c[k])
                            for k in ("accuracy", "accuracy_std", "auc", "val", "far")},
                           pairs=m["counts"]["pairs"], masked=m["counts"]["masked"],
                           mask_failures=m["counts"]["mask_failures"], seconds=round(time.perf_counter() - t0, 3))
                prev = [h for h in self.history if h["set"] == s.spec.name and h["mask_side"] == side
                        and h.get("accuracy") is not None]
                top = max(prev + [rec], key=lambda h: (h["accuracy"], -h["step"]))
                rec.update(best_accuracy=top["accuracy"], best_step=top["step"])
                out.records.append(rec)
                for k in ("accuracy", "auc", "val"):
                    if rec.get(k) is not None:
                        out.scalars[f"val/{s.spec.name}/mask{side}/{k}"] = float(rec[k])
                shown.append(f"{side} {rec['accuracy']:.4f}±{rec['accuracy_std']:.3f} (best {top['accuracy']:.4f}"
                             f" @{top['step']})")
            parts.append(f"{s.spec.name} " + ", ".join(shown))
        self.history += [{k: r.get(k) for k in ("step", "epoch", "set", "mask_side", "accuracy", "accuracy_std",
                                                "auc", "val", "error")} for r in out.records]
        out.records.append(self._best(ctx.step, ctx.epoch, out))
        b = self.best
        parts.append(f"best.pt {self.rule.text} " + (f"{b['value']:.4f} @ step {b['step']}" if b else "-")
                     + (" (new)" if out.keep else ""))
        out.lines.append(f"val step {ctx.step} ep {ctx.epoch:.2f} ({time.perf_counter() - t_all:.1f} s): "
                         + " | ".join(parts))
        return out

    def _best(self, step: int, epoch: float, out: CallbackResult) -> dict:
        """Update the best figure by the rule; ask the loop to keep this checkpoint when it improved."""
        r = self.rule
        rec = next((x for x in out.records if x["set"] == r.set and x["mask_side"] == r.side), None)
        value = None if rec is None else rec.get(r.metric)
        if value is not None and (self.best is None or value > self.best["value"]):
            self.best = {"rule": r.text, "value": float(value), "step": step, "epoch": round(epoch, 4)}
            out.keep = "best"
        return {"event": "val_best", "step": step, "rule": r.text, "value": value, "improved": out.keep == "best",
                "best": dict(self.best) if self.best else None}

    def state_dict(self) -> dict:
        return {"rule": self.rule.text, "history": list(self.history), "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history") or [])
        best = state.get("best")
        if best and state.get("rule") not in (None, self.rule.text):
            self.notes.append(f"note: the best-checkpoint rule changed ({state.get('rule')} -> {self.rule.text}): "
                              f"best.pt is replaced at the next validation")
            best = None
        self.best = best

    def summary(self) -> dict:
        """The final summary rows: the best figure and the last figure of every set and side."""
        rows: dict = {"best.pt rule": self.rule.text}
        if self.best:
            rows["best.pt"] = f"{self.best['value']:.4f} at step {self.best['step']}"
        last = {(h["set"], h["mask_side"]): h for h in self.history if h.get("accuracy") is not None}
        for (name, side), h in last.items():
            rows[f"val {name} mask {side} (step {h['step']})"] = f"{h['accuracy']:.4f}"
        return rows
