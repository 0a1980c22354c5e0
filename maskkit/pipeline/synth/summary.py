"""The synth summary table (rows for :func:`maskkit.util.progress.print_summary`)."""
from __future__ import annotations

import json


def summary_rows(man: dict, stage_seconds: dict | None = None, seconds: float | None = None,
                 files_done: int | None = None) -> list[tuple[str, str]]:
    """``(name, value)`` rows of the end-of-run summary table.

    ``files_done``: the input files this invocation processed (``SynthResult.files_done``); the
    speed is measured over them, so a resumed run does not count the files it skipped. ``None``:
    every input file.
    """
    inp = man["inputs"]
    rows = [("seen", f"{inp.get('seen', inp['files']):,}"), ("inputs", f"{inp['files']:,}"), ("ok", f"{inp['ok']:,}"),
            ("failed", f"{inp['failed']:,}")]
    for r, v in sorted(inp.get("failed_by_reason", {}).items()):
        rows.append((f"  failed: {r}", f"{v:,}"))
    rows.append(("skipped (not inputs)", f"{inp.get('skipped', 0):,}"))
    for r, v in sorted(inp.get("skipped_by_reason", {}).items()):
        rows.append((f"  skipped: {r}", f"{v:,}"))
    rows.append(("faces", f"{man.get('num_faces', man['num_samples']):,}"))
    # faces left out of files that gave samples (rejected.jsonl); a set from an older maskkit has none
    rows.append(("faces rejected", f"{man.get('faces_rejected', 0):,}"))
    for r, v in sorted(man.get("faces_rejected_by_reason", {}).items()):
        rows.append((f"  rejected: {r}", f"{v:,}"))
    rows.append(("samples", f"{man['num_samples']:,}"))
    nm = man["num_masked"]
    rows.append(("masked", f"{nm:,} ({100.0 * nm / max(1, man['num_samples']):.1f}% of samples)"))
    for s, v in man["styles"].items():
        rows.append((f"  {s}", f"{v:,} ({100.0 * v / max(1, nm):.1f}%)"))
    if man.get("aligned_input"):  # how the --aligned crop check kept the faces (maskkit.pipeline.unverified)
        from maskkit.pipeline.unverified import summary_value

        by = man.get("crop_check") or {}
        rows.append(("crop check", ", ".join(f"{k} {v:,}" for k, v in by.items()) or "-"))
        cell = summary_value(man.get("unverified", 0))
        if man.get("unverified_masked"):
            cell += f"; {man['unverified_masked']:,} masked"
        rows.append(("kept unverified", cell))
    if man.get("mask_skips"):
        rows.append(("mask skips (cannot fit)", f"{man['mask_skips']:,}"))
    if man.get("mask_shortfall"):
        rows.append(("ratio shortfall", json.dumps(man["mask_shortfall"])))
    rows.append(("classes", f"{len(man['classes']):,}"))
    rows.append(("shards", f"{len(man['shards']):,}"))
    rows.append(("bytes", f"{sum(s['bytes'] for s in man['shards']):,}"))
    if seconds:
        rows.append(("seconds", f"{seconds:.1f}"))
        done = inp["files"] if files_done is None else files_done
        rows.append(("img/s", f"{done / seconds:.1f}" + ("" if done == inp["files"] else
                                                         f" (over the {done:,} files this run processed)")))
    if stage_seconds:
        tot = sum(stage_seconds.values()) or 1.0
        rows.append(("stages (worker s)", ", ".join(f"{k} {v:.1f} ({100 * v / tot:.0f}%)"
                                                    for k, v in stage_seconds.items())))
    return rows
