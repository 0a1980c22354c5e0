"""Metric tables and ``maskkit eval --compare``: read the saved ``RUN/eval/*.json`` records and put runs side by side."""
from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def metrics_table(m: dict):
    """A rich table of one run's headline figures."""
    from rich.table import Table

    c = m["counts"]
    t = Table(title=f"maskkit eval: {m['set']} ({m['task']}, mask side {m['protocol']['mask_side']}, {m.get('method')})")
    t.add_column("metric", no_wrap=True)  # a label on one line: every label fits 80 columns (<= 29 chars)
    t.add_column("cosine", justify="right")
    cos, mls = m["cosine"], m.get("mls") or {}
    mls_flags = m.get("mls_flags") or {}  # σ = 0 or one σ for all: MLS is no σ-aware result (older records: none)
    t.add_column("MLS (σ-aware)" + (" (†)" if mls and mls_flags else ""), justify="right")
    if m["task"] == "verification":
        t.add_row("accuracy % (10-fold)", f"{_pct(cos['accuracy'])} ± {_pct(cos['accuracy_std'])}",
                  f"{_pct(mls['accuracy'])} ± {_pct(mls['accuracy_std'])}" if mls else "-")
        note = m.get("val_note")
        t.add_row(f"VAL@FAR={cos['far_target']:g} %" + (" (*)" if note else ""), _pct(cos["val"]),
                  _pct(mls.get("val")) if mls else "-")
        t.add_row("AUC all pairs (fold-averaged)", _auc_cell(cos), _auc_cell(mls) if mls else "-")
        t.add_row("pairs (same/diff)", f"{c['pairs']} ({c['same']}/{c['diff']})", "")
        rule = cos.get("fold_rule")
        if rule:
            t.add_row("folds", "insightface (contiguous)" if rule == "kfold" else f"{rule} (see docs)", "")
    else:
        flags = m.get("flags") or {}
        for k in (1, 5):
            mark = " (trivial)" if f"rank{k}_trivial" in flags else " (undefined)" if "no_known_probe" in flags else ""
            t.add_row(f"Rank-{k} %{mark}", _pct(cos[f"rank{k}"]), _pct(mls.get(f"rank{k}")) if mls else "-")
        t.add_row("gallery ids / images", f"{c['identities']} / {c['gallery_images']}", "")
        t.add_row("probes (unknown id)", f"{c['probes']} ({c['probes_unknown_identity']})", "")
    t.add_row("faces masked / requested", f"{c['masked']} / {c['mask_requested']}", "")
    t.add_row("mask failures (kept unmasked)", str(c["mask_failures"]), "")
    t.add_row("input failures", str(c["input_failures"]), "")
    if (m.get("config") or {}).get("bin"):  # a .bin's crops are aligned by construction: none is checked
        t.add_row("crops read as aligned (.bin)", str(c["images"] - c.get("template_converted", 0)), "")
    else:
        given = c.get("used_as_given", c.get("alignment_unverified", 0))  # older records: the unverified count
        t.add_row("crops re-aligned", str(c.get("realigned", c.get("alignment_fallbacks", 0) - given)), "")
        t.add_row("crops used as given", str(given), "")  # a face that cannot be checked: profile, occlusion
    if c.get("template_converted"):  # crops of another template size (the notes say which and how)
        t.add_row("crops from another template", str(c["template_converted"]), "")
    if c.get("pairs_skipped"):  # pairs left out because one of their images failed (counted above, once)
        t.add_row("pairs left out (image failed)", str(c["pairs_skipped"]), "")
    left = {k[len("non_finite_"):].replace("_", " "): v for k, v in c.items() if k.startswith("non_finite_") and v}
    if left:  # entries whose scores are NaN / inf (maskkit.training.eval.finite): named in the caption
        t.add_row("left out: non-finite scores", ", ".join(f"{v} {k}" for k, v in left.items()), "")
    for key, label in (("sigma_norm", "‖σ‖ mean unmasked / masked"), ("magnitude", "‖μ‖ mean unmasked / masked")):
        v = m.get(key)
        if v:
            u = "-" if not v["unmasked"] or v["unmasked"]["mean"] is None else f"{v['unmasked']['mean']:.3g}"
            k = "-" if not v["masked"] or v["masked"]["mean"] is None else f"{v['masked']['mean']:.3g}"
            t.add_row(label, f"{u} / {k}", "")
    caption = []
    if m["task"] == "verification" and m.get("val_note"):
        caption.append(f"(*) {m['val_note']}")
    caption += [f"{code}: {msg}" for code, msg in (m.get("flags") or {}).items()]
    if mls:
        caption += [f"(†) {code}: {msg}" for code, msg in mls_flags.items()]
    caption += list(m.get("notes") or [])
    if caption:
        t.caption = "\n".join(caption)
    return t


def _auc_cell(r: dict) -> str:
    """``all-pairs AUC (insightface's fold-averaged AUC)``; older metrics have only ``auc``."""
    a, f = r.get("auc"), r.get("auc_folds")
    cell = "-" if a is None else f"{a:.4f}"
    return cell if f is None else f"{cell} ({f:.4f})"


def load_run_metrics(run_dir: str | Path) -> list[dict]:
    """All saved eval metrics of a run (``RUN/eval/*.json``) or of a foreign weights file
    (``<stem>-eval/*.json`` beside it), sorted by key."""
    from maskkit.training.checkpoints.read import eval_home

    d = eval_home(run_dir)
    out = []
    for p in sorted(d.glob("*.json")):
        try:
            m = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("skipping unreadable metrics %s: %s", p, exc)
            continue
        if isinstance(m, dict) and "task" in m and "cosine" in m:
            out.append(m)
    return out


def _config_method(run: str | Path) -> str | None:
    """The ``method`` in ``RUN/config.json`` (of a run folder or ``RUN/checkpoints/X.pt``), or None."""
    from maskkit.training.checkpoints.read import maskkit_run_of

    p = maskkit_run_of(run)
    if p is None:
        return None
    for cand in (p / "config.json",):
        if cand.is_file():
            try:
                method = json.loads(cand.read_text(encoding="utf-8")).get("method")
            except (OSError, ValueError, AttributeError):
                return None
            return str(method) if method else None
    return None


def trusts_crops(config: dict | None) -> bool:
    """The one rule for whether ``--aligned`` changed an evaluation, so whether it gets its own
    record (``<key>-aligned``) and its own ``--compare`` column (`` aligned``).

    ``--aligned`` changes what is read only for a folder source (pairs, gallery/probes): a
    ``.bin`` is aligned by construction and always trusted, so with or without the flag it is one
    evaluation, one record. ``config`` is an :class:`~maskkit.training.eval.report.EvalConfig` as
    a dict (a saved record's ``config``); ``None`` or missing keys (records written before
    ``config`` was saved, or before the flag existed) read as not aligned.
    """
    cfg = config if isinstance(config, dict) else {}
    return bool(cfg.get("aligned")) and not cfg.get("bin")


def compare_rows(runs: list[str | Path], records: dict[str, list[dict]] | None = None) -> tuple[list[str], list[dict]]:
    """Rows for a methods-side-by-side table (the paper's Tables II-III layout).

    Returns:
        ``(columns, rows)``: columns are ``"<set> <task> mask=<side>"`` (`` aligned`` appended
        for a record made with ``--aligned`` on a folder source); each row is
        ``{"run", "method", <column>: "cell text"}``; verification cells hold the 10-fold
        accuracy (%, cosine; MLS in brackets when present), identification cells Rank-1/Rank-5.
    """
    cols: list[str] = []
    rows = []
    for run in runs:
        recs = records.get(str(run)) if records else None
        recs = recs if recs is not None else load_run_metrics(run)
        row = {"run": Path(run).name, "method": _config_method(run) or "-"}
        for m in recs:
            if m.get("label"):  # a foreign weights file: "<stem> (<layout>)", e.g. backbone (arcface_torch r50)
                row["run"] = m["label"]
            col = f"{m['set']} {'MFV' if m['task'] == 'verification' else 'MFI'} mask={m['protocol']['mask_side']}"
            if trusts_crops(m.get("config")):  # `--aligned` on a folder source: its own column (older records: not aligned)
                col += " aligned"
            if col not in cols:
                cols.append(col)
            row["method"] = m.get("method") or row["method"]
            cos, mls = m["cosine"], m.get("mls")
            if cos is None:  # a run that could not be scored (metrics.json's "error" says why)
                cell = "failed"
            elif m["task"] == "verification":
                cell = f"{_pct(cos['accuracy'])}"
                if mls:
                    cell += f" ({_pct(mls['accuracy'])})"
            else:
                cell = f"{_pct(cos['rank1'])} / {_pct(cos['rank5'])}"
            row[col] = cell
        rows.append(row)
    side_order = {"none": 0, "one": 1, "both": 2}

    def order(c: str) -> tuple:
        aligned = c.endswith(" aligned")
        c = c.removesuffix(" aligned")
        return c.rsplit(" ", 2)[0], c.rsplit(" ", 2)[1], side_order.get(c.rsplit("=", 1)[1], 3), aligned

    cols.sort(key=order)
    return cols, rows


def compare_table(runs: list[str | Path], records: dict[str, list[dict]] | None = None):
    """A rich table comparing runs from their saved eval metrics."""
    from rich.table import Table

    cols, rows = compare_rows(runs, records)
    t = Table(title="maskkit eval --compare  (MFV: 10-fold acc %, cosine (MLS); MFI: Rank-1 / Rank-5 %)")
    t.add_column("run")
    t.add_column("method")
    for c in cols:
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(r["run"], str(r["method"]), *[r.get(c, "-") for c in cols])
    return t
