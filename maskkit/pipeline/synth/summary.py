"""The synth summary table (rows for :func:`maskkit.util.progress.print_summary`), and the note
that says why the overall masked share departs from ``--ratio`` (:func:`ratio_departure`)."""
from __future__ import annotations

import json

#: The overall masked share of faces may depart from ``--ratio`` by this much (one percentage
#: point) before the summary says so and why. The rule is exact per identity
#: (``round_half_up(ratio * n)``), so a set of large identities stays within ``1 / (2 n)`` of the
#: ratio (n >= 50: within a point); a departure beyond a point comes from identities whose count
#: does not split exactly (25 faces at 0.5: 13 masked, 52 %; one face: 100 %) or from faces that
#: cannot take a mask (``mask_shortfall``).
RATIO_TOLERANCE = 0.01

#: The worker stages in the order a sample goes through them (the summary's "stages" row).
STAGE_ORDER = ("decode", "detect", "landmarks", "align", "render", "encode", "write")


def ratio_departure(man: dict) -> dict | None:
    """Why the set's masked share of faces departs from ``--ratio`` by more than
    :data:`RATIO_TOLERANCE`, or ``None`` when it does not (or the set has no face).

    Returns:
        ``{"share", "ratio", "faces", "masked", "identities", "too_small", "too_small_faces",
        "never_plain", "never_masked", "shortfall"}``: ``share`` = masked / faces (rounded to 4
        places); ``too_small``: identities whose own share ``round_half_up(ratio * n) / n`` departs
        from the ratio by more than the tolerance (``too_small_faces``: the largest such n);
        ``never_plain`` / ``never_masked``: identities with every face masked / none masked
        (without ``--paired``, the first are never seen unmasked); ``shortfall``: masked faces
        missing because the renderer could not fit them (``mask_shortfall``).
    """
    from maskkit.io.shards import expected_masked

    ratio = man.get("ratio")
    per = {c: pc for c, pc in (man.get("per_class") or {}).items() if pc.get("faces")}
    faces = sum(int(pc["faces"]) for pc in per.values())
    if ratio is None or not faces:
        return None
    masked = sum(int(pc["masked"]) for pc in per.values())
    share = masked / faces
    if abs(share - float(ratio)) <= RATIO_TOLERANCE:
        return None
    small = [int(pc["faces"]) for pc in per.values()
             if abs(expected_masked(float(ratio), int(pc["faces"])) / int(pc["faces"]) - float(ratio)) > RATIO_TOLERANCE]
    return {"share": round(share, 4), "ratio": float(ratio), "faces": faces, "masked": masked,
            "identities": len(per), "too_small": len(small), "too_small_faces": max(small, default=0),
            "never_plain": sum(int(pc["masked"]) == int(pc["faces"]) for pc in per.values()),
            "never_masked": sum(int(pc["masked"]) == 0 for pc in per.values()),
            "shortfall": int(sum((man.get("mask_shortfall") or {}).values()))}


def ratio_hint(dep: dict, paired: bool = False) -> str:
    """The line printed after the summary for a :func:`ratio_departure` record."""
    from maskkit.io.shards import expected_masked

    r = dep["ratio"]
    why = []
    if dep["too_small"]:
        n = dep["too_small_faces"]  # the largest such identity: an example of the rounding
        k = expected_masked(r, n)
        why.append(f"{dep['too_small']:,} of {dep['identities']:,} identities cannot be split exactly at {r:g} "
                   f"(each masks round-half-up of ratio x its faces: {n} face{'s' if n > 1 else ''} -> {k} masked, "
                   f"{100 * k / n:.0f}%)")
    if dep["shortfall"]:
        why.append(f"{dep['shortfall']:,} chosen faces could not take a mask (mask_shortfall)")
    seen = []
    if dep["never_plain"] and not paired:
        n = dep["never_plain"]
        seen.append(f"{n:,} identit{'y is' if n == 1 else 'ies are'} never seen unmasked")
    if dep["never_masked"]:
        seen.append(f"{dep['never_masked']:,} never masked")
    return (f"masked share {100 * dep['share']:.1f}% of {dep['faces']:,} faces departs from --ratio {r:g} by "
            f"{100 * abs(dep['share'] - r):.1f} points: " + "; ".join(why or ["per-identity rounding"])
            + (f" ({', '.join(seen)})" if seen else "")
            + (". --paired also writes every masked face plain" if dep["never_plain"] and not paired else "."))


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
    dep = man.get("ratio_departure")
    if dep:  # the overall share is off --ratio by more than a point (why: printed as a hint below)
        rows.append(("masked share vs --ratio", f"{100 * dep['share']:.1f}% of faces vs {dep['ratio']:g}: "
                                                f"{dep['too_small']:,} of {dep['identities']:,} identities cannot "
                                                f"be split exactly (ratio x faces rounded half up)"))
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
        # in pipeline order (a resumed run's totals come back from the journal sorted by name)
        order = sorted(stage_seconds, key=lambda k: (STAGE_ORDER.index(k) if k in STAGE_ORDER else len(STAGE_ORDER), k))
        rows.append(("stages (worker s)", ", ".join(f"{k} {stage_seconds[k]:.1f} ({100 * stage_seconds[k] / tot:.0f}%)"
                                                    for k in order)))
    return rows
