"""``maskkit mask`` and ``maskkit preview``: click wiring over :mod:`maskkit.pipeline.mask` and :mod:`maskkit.pipeline.preview`."""
from __future__ import annotations

import json
from pathlib import Path

import click

from maskkit.cli.options import (
    _aligned,
    _detector,
    _jobs,
    _max_pixels,
    _max_side,
    _out,
    _overwrite,
    _quiet,
    _upsample,
    _detector_opts,
)
from maskkit.pipeline.mask import FACE_POLICIES, MaskConfig, MaskError, run_mask
from maskkit.render import COLOURS, TEXTURES


@click.command("mask")
@click.option("--src", required=True, type=click.Path(exists=True, path_type=Path),
              help="Input folder (walked recursively) or one image.")
@_out("Output folder (mirrors the input tree).")
@click.option("--style", default="random", show_default=True,
              type=click.Choice(["surgical", "n95", "kn95", "cloth", "gas", "random"]), help="Mask style.")
@click.option("--colour", "--color", "colour", default="random", show_default=True,
              type=click.Choice(("random",) + tuple(COLOURS)),
              help="Mask colour, one of the style's palette (the one synth draws from); random: drawn from "
                   "it, seeded like the rest of the mask.")
@click.option("--texture", default="random", show_default=True, type=click.Choice(("random",) + TEXTURES),
              help="Fabric texture: cloth masks come in every one, the other styles are plain.")
@click.option("--seed", default=0, show_default=True, type=int, help="Base seed (per file and face).")
@_detector()
@_upsample()
@_max_side()
@click.option("--faces", default="all", show_default=True, type=click.Choice(FACE_POLICIES),
              help="Which faces to mask per image.")
@_aligned()
@_jobs()
@_max_pixels()
@click.option("--quality", default=95, show_default=True, type=click.IntRange(1, 100), help="JPEG quality.")
@click.option("--coverage", is_flag=True, help="Also write <stem>.mask.png (mask coverage, 255 = mask).")
@_overwrite()
@_quiet()
def mask(src, out, style, colour, texture, seed, detector, upsample, max_side, faces, aligned, jobs, max_pixels, quality,
         coverage, overwrite, quiet):
    """Draw a mask on every face of every image under SRC, writing the result to OUT.

    Style, colour and texture are drawn per face (seeded by --seed, the file and the face) from
    the palettes synth uses, unless chosen. A face cut by the image edge gets the part of its
    mask that lies inside the image.

    Writes the masked images (same relative paths), manifest.jsonl (one line per face with
    the render parameters), failures.jsonl (one line per input with no masked face, with a
    reason), rejected.jsonl (one line per face left unmasked because its landmarks are not on
    the face) and skipped.jsonl (every other file under SRC, with a reason); with --aligned,
    unverified.jsonl lists crops kept whose face could not be checked. Exit status 0 when
    the run completes (also "already complete" when OUT holds this finished run), 1 when every
    input failed, 2 when SRC holds no input file.
    """
    cfg = MaskConfig(src=src, out=out, style=style, colour=colour, texture=texture, seed=seed, detector=detector,
                     detector_opts=_detector_opts(detector, upsample, max_side), faces=faces, aligned=aligned,
                     jobs=jobs, max_pixels=max_pixels, quality=quality, coverage=coverage, progress=not quiet,
                     overwrite=overwrite)
    from maskkit.cli._exit import _finish, _quiet_json, _run_stage

    summary = _run_stage(run_mask, cfg, MaskError)
    if quiet:
        _quiet_json(summary, ("seen", "files", "ok", "failed", "skipped", "faces", "faces_rejected", "faces_unfit",
                              "errors", "styles", "hints", "unverified"))
    _finish(out, summary["ok"], summary["failed"], summary.get("already_complete", False))


@click.command("preview")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@_out("Output PNG.", file=True, suffixes=(".png",))
@click.option("--styles", default=",".join(("surgical", "n95", "kn95", "cloth", "gas")), show_default=True,
              help="Comma-separated styles (columns).")
@click.option("--n", "n", default=6, show_default=True, type=click.IntRange(1, 64), help="Faces (rows).")
@click.option("--seed", default=0, show_default=True, type=int)
@_aligned("Images are ArcFace crops: skip detection.")
@_detector()
@_quiet("Accepted for a uniform vocabulary; preview shows no progress (its JSON summary is its result).")
@_overwrite("Replace the output PNG when it exists (otherwise refused).")
def preview_cmd(src, out, styles, n, seed, aligned, detector, quiet, overwrite):
    """Contact sheet (styles x faces) from SRC: a folder of images, a shard set or `mask` output."""
    from maskkit.pipeline.preview import preview as _preview
    from maskkit.render import STYLES

    from maskkit.cli._exit import _claim

    _claim([out], overwrite, "a contact sheet")
    chosen = [s.strip() for s in styles.split(",") if s.strip()]
    bad = [s for s in chosen if s not in STYLES]
    if bad or not chosen:
        raise click.BadParameter(f"unknown styles {bad}; choose from {STYLES}", param_hint="--styles")
    try:
        summary = _preview(src, out, chosen, n=n, seed=seed, aligned=aligned, detector=detector)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(summary))


COMMANDS = [mask, preview_cmd]
