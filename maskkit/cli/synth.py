"""``maskkit synth``, ``maskkit stats`` and ``maskkit export-rec`` (click commands).

Heavy imports (OpenCV, dlib, the renderer) happen inside the commands.
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from maskkit.cli.options import (
    _aligned,
    _deprecated,
    _detector,
    _jobs,
    _max_pixels,
    _max_side,
    _out,
    _overwrite,
    _suffix,
    _quiet,
    _size,
    _upsample,
    _verify,
    _detector_opts,
)

#: synth's --max-side for hog/cnn (align keeps the detector's own: hog 1024, cnn 800): a large
#: photo is searched for faces on a copy this long; landmarks and masks stay at full resolution.
SYNTH_MAX_SIDE = 640

__all__ = ["COMMANDS", "synth", "stats", "export_rec_cmd"]


def _parse_styles(text: str | None) -> tuple[str, ...]:
    from maskkit.pipeline.synth import ALL_STYLES as _STYLES

    if text is None:
        return _STYLES
    styles = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in styles if s not in _STYLES]
    if bad:
        raise click.BadParameter(f"unknown style(s) {', '.join(bad)}; choose from {', '.join(_STYLES)}",
                                 param_hint="--styles")
    twice = sorted({s for s in styles if styles.count(s) > 1})
    if twice:
        raise click.BadParameter(f"{', '.join(twice)} listed twice", param_hint="--styles")
    return styles


def _print_summary(title: str, rows: list[tuple[str, str]]) -> None:
    from maskkit.util.progress import print_summary

    print_summary(title, dict(rows))


@click.command("synth")
@click.option("--src", required=True, type=click.Path(exists=True, path_type=Path),
              help="Identity tree (<identity>/<images>), a folder of aligned crops (with --aligned), "
                   "or an insightface train.rec (with --aligned).")
@_out("Output shard folder.", type=click.Path(path_type=Path))
@click.option("--ratio", default=0.5, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Fraction of each identity's faces that get a mask (exact per identity, rounded half up).")
@click.option("--paired", is_flag=True,
              help="Write every face plain, plus a masked twin for the chosen ones (linked by 'twin'); "
                   "--ratio 1 --paired gives the M-VGGFace2 6.6M layout.")
@click.option("--styles", default=None, metavar="LIST", show_default="surgical,n95,kn95,cloth,gas",
              help="Comma-separated mask styles, balanced.")
@click.option("--seed", default=0, show_default=True, type=int, help="Global seed.")
@_jobs()
@_aligned("Inputs are already aligned 112x112 ArcFace crops (no detection).")
@_size("Output size (16..4096): N or HxW (112, 112x96, 128, 256...). `maskkit train` takes square sets only "
       "(112, 128, 224...): a 112x96 set lacks 8 px on each side of the 112 template and is refused.")
@click.option("--shard-samples", default=10000, show_default=True, type=click.IntRange(1),
              help="Samples per tar shard.")
@click.option("--backend", default="local", show_default=True, type=click.Choice(["local", "dask", "ray"]),
              help="local: joblib processes; dask: a distributed cluster (--address, or a local one); ray.")
@click.option("--address", default=None, show_default="a local cluster of --jobs workers",
              help="Scheduler address for --backend dask (tcp://host:8786) or ray.")
@_detector()
@_upsample()
@_max_side(SYNTH_MAX_SIDE)
@click.option("--faces", default="largest", show_default=True, type=click.Choice(["largest", "central", "all"]),
              help="Which face(s) of each image.")
@click.option("--quality", default=95, show_default=True, type=click.IntRange(1, 100), help="JPEG quality.")
@_max_pixels()
@click.option("--no-mask-png", is_flag=True, help="Do not write KEY.mask.png coverage maps.")
@_overwrite("Replace a different, earlier run found in --out.")
@click.option("--preview", default=None, type=click.Path(dir_okay=False, path_type=Path), show_default="none",
              callback=lambda ctx, param, value: _suffix(value, (".png",), "--preview"),
              help="Also write a contact sheet PNG (an existing file is refused unless --overwrite).")
@_quiet()
def synth(src, out, ratio, paired, styles, seed, jobs, aligned, size, shard_samples, backend, address, detector,
          upsample, max_side, faces, quality, max_pixels, no_mask_png, overwrite, preview, quiet):
    """Build a masked-face training set as WebDataset shards (docs/FORMAT.md).

    Exactly round(ratio*n) of each identity's n faces are masked, styles balanced; the
    shards are byte-identical for any --jobs/--backend; a killed run rerun with the same
    command resumes and ends with exactly the uninterrupted run's samples. With --aligned, crops
    kept whose face could not be checked are listed in unverified.jsonl. Exit status 0 when
    the run completes (also "already complete" when OUT holds this finished run), 1 when every
    input failed, 2 when SRC holds no input file.

    \b
    Example:
      maskkit synth --src vggface2/train --out shards/ --ratio 0.5 --jobs 8
      maskkit synth --src faces_emore/train.rec --aligned --out shards/ --ratio 0.5
    """
    from maskkit.pipeline.synth import SynthConfig, SynthError, run_synth, summary_rows

    det_opts = _detector_opts(detector, upsample, max_side, SYNTH_MAX_SIDE)
    if address and backend == "local":
        raise click.UsageError(f"--address {address} is a cluster's address: give it with --backend dask or ray "
                               "(the local backend runs joblib processes on this machine)")

    chosen = _parse_styles(styles)
    if not chosen and ratio > 0:
        raise click.BadParameter(f"no style listed; --ratio {ratio:g} masks faces, so it needs at least one "
                                 "(an empty list is for --ratio 0)", param_hint="--styles")
    cfg = SynthConfig(src=src, out=out, ratio=ratio, paired=paired, styles=chosen, seed=seed,
                      jobs=jobs, aligned=aligned, size=size, shard_samples=shard_samples,
                      backend=backend, address=address, detector=detector, detector_opts=det_opts, faces=faces, quality=quality,
                      mask_png=not no_mask_png, max_pixels=max_pixels, overwrite=overwrite, progress=not quiet,
                      preview=preview, command="maskkit " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["synth"]
                      else None)
    if cfg.command is None:
        cfg.command = "maskkit synth " + shlex.join(
            ["--src", str(src), "--out", str(out), "--ratio", str(ratio)] + (["--paired"] if paired else [])
            + ["--styles", ",".join(cfg.styles), "--seed", str(seed)] + (["--aligned"] if aligned else [])
            + ["--size", f"{size[0]}x{size[1]}" if size[0] != size[1] else str(size[0]), "--shard-samples", str(shard_samples)])
    from maskkit.cli._exit import _finish, _run_stage

    res = _run_stage(run_synth, cfg, SynthError)
    if res.resumed and not res.already_complete:
        total = (res.manifest.get("inputs") or {}).get("files")
        redo = "" if res.files_done is None or total is None else (
            f"; {res.files_done:,} of {total:,} inputs read again (work is kept per whole identity, and the "
            "samples already written are not written again)")
        click.echo(f"resumed: {res.resumed:,} samples were already in complete shards{redo}", err=True)
    if not quiet:
        _print_summary("maskkit synth", summary_rows(res.manifest, res.stage_seconds or None,
                                                     None if res.already_complete else res.seconds,
                                                     res.files_done))
        from maskkit.util.progress import print_hints

        print_hints(res.manifest.get("hints", []))  # e.g. a forgotten --aligned
    if res.manifest.get("num_samples", 0) == 0:
        reasons = res.manifest.get("inputs", {}).get("failed_by_reason", {})
        top = ", ".join(f"{k} {v:,}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
        click.echo(f"warning: no sample was written: every input is in {out / 'failures.jsonl'}"
                   + (f" ({top})" if top else ""), err=True)
    click.echo(str(out / "manifest.json"))
    inputs = res.manifest.get("inputs", {})
    _finish(out, int(inputs.get("ok", 0)), int(inputs.get("failed", 0)), res.already_complete)


@click.command("stats")
@click.argument("shards", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--deep", is_flag=True, help="Also decode every JPEG and mask PNG and check their sizes "
              "(the summary says how many of each were decoded).")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON on stdout.")
@_quiet("No summary table (mismatches are still printed, and the exit status says the outcome).")
def stats(shards, deep, as_json, quiet):
    """Check a shard folder against its manifest: counts, per-class ratio, styles, sha256.

    Exit status 0 when everything matches, 1 on any mismatch (each one is printed).
    """
    from maskkit.io.shard_verify import style_share_deviation, verify
    from maskkit.io.shards import class_expected_masked

    rep = verify(shards, decode=deep)
    man = rep.manifest
    if as_json:
        click.echo(json.dumps({"ok": rep.ok, "problems": rep.problems, "counted": rep.counted}, indent=2))
    if man and not quiet:
        c = rep.counted
        n, m = c.get("num_samples", 0), c.get("num_masked", 0)
        rows = [("shards", f"{len(man.get('shards', []))}"),
                ("bytes", f"{sum(s.get('bytes', 0) for s in man.get('shards', [])):,}"),
                ("classes", f"{len(man.get('classes', []))}"),
                ("samples", f"{n:,} (manifest {man.get('num_samples', 0):,})"),
                ("masked", f"{m:,} = {100.0 * m / max(1, n):.2f}% (manifest {man.get('num_masked', 0):,}; "
                           f"ratio {man.get('ratio')}, paired {man.get('paired')})")]
        for s, v in c.get("styles", {}).items():
            rows.append((f"  {s}", f"{v:,} = {100.0 * v / max(1, m):.2f}%"))
        rows.append(("style share max |dev|", f"{100 * style_share_deviation(c.get('styles', {})):.2f} points"))
        exact = sum(pc["masked"] == class_expected_masked(man, cls, pc)[1] for cls, pc in c.get("per_class", {}).items())
        rows.append(("classes masked by the rule", f"{exact} / {len(c.get('per_class', {}))} (ratio x faces, "
                                                   "rounded half up)"))
        inp = man.get("inputs", {})
        rows.append(("inputs (files = ok + failed)", f"{inp.get('files')} = {inp.get('ok')} + {inp.get('failed')}"))
        rows.append(("failures.jsonl lines", f"{c.get('failures', 0)}"))
        if "faces_rejected" in man:
            rows.append(("rejected.jsonl lines", f"{c.get('rejected', 0)}"))
        rows.append(("sha256 / sizes / counts", "ok" if rep.ok else "MISMATCH"))
        dec = c.get("decoded")
        h, w = man.get("image_size", (112, 112))
        rows.append(("decoded (--deep)", f"{dec['jpg']:,} JPEGs ({h}x{w} colour) and {dec['mask_png']:,} mask PNGs "
                                         f"({h}x{w} single-channel), each checked" if dec else
                     "nothing (add --deep to decode every JPEG and mask PNG)"))
        _print_summary(f"maskkit stats {shards}", rows)
    for p in rep.problems:
        click.echo(f"MISMATCH: {p}", err=True)
    if not rep.ok:
        raise SystemExit(1)
    if not quiet:
        dec = rep.counted.get("decoded")
        click.echo("ok" + (f" ({dec['jpg']:,} JPEGs and {dec['mask_png']:,} mask PNGs decoded)" if dec else ""),
                   err=True)


@click.command("export-rec")
@click.argument("shards", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_out("Output folder (PREFIX.rec, PREFIX.idx, property, PREFIX.maskkit.json).", required=False)
@click.option("--prefix", default="train", show_default=True, help="File name prefix (train.rec, train.idx).")
@click.option("--only", type=click.Choice(["all", "plain", "masked"]), default="all", show_default=True,
              help="Which samples: all, only plain faces (to mask the .rec again with synth), or only masked.")
@_quiet("No summary table.")
@_deprecated("OUT", dest="out", new="-o/--out OUT", old="the positional OUT", argument=True, metavar="[OUT]",
             type=click.Path(file_okay=False, path_type=Path))
@_overwrite("Replace an export with this prefix in --out (otherwise refused).")
@_verify("Check the set against its manifest first, as `maskkit stats` does (sizes, sha256, counts, labels), "
         "and refuse a damaged set.")
def export_rec_cmd(shards, out, prefix, only, quiet, overwrite, verify):
    """Write a shard folder as insightface train.rec / train.idx / property (no mxnet needed).

    The result loads in arcface_torch's MXFaceDataset; record id2 is 1 for masked faces, and
    PREFIX.maskkit.json says so (synth on this .rec then never masks a masked face again).
    The set is first checked against its manifest as `maskkit stats` checks it: a mismatch is a
    one-line error naming it (exit 1), nothing written, unless --no-verify.
    OUT as a second argument is deprecated: use -o/--out.
    """
    from maskkit.cli._exit import _claim, _stopped
    from maskkit.io.rec_export import export_rec
    from maskkit.io.recordio import sidecar_path
    from maskkit.io.shard_verify import ShardMismatchError
    from maskkit.io.shards import ManifestError
    from maskkit.util.files import OutputBusyError, OutputExistsError, OutputLock, claim_folder
    from maskkit.util.outcome import STOPPED, os_cause, stop_guard

    if out is None:
        raise click.UsageError("Missing option '-o' / '--out'.")
    rec = out / f"{prefix}.rec"
    created = not out.exists()
    lock = OutputLock(out, "maskkit export-rec")
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock.acquire()  # one writer at a time: a second export into OUT is refused
    except OutputBusyError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        # a full disk or Ctrl-C: one line naming the file; the partial files are removed (nothing to resume)
        with lock, stop_guard(lambda: "nothing was exported (the partial files are removed)", lambda: rec,
                              "rerun the same command"):
            outputs = [rec, rec.with_suffix(".idx"), out / "property", sidecar_path(rec)]
            try:  # a folder of other files (the shard set itself, the user's): refused unless --overwrite
                claim_folder(out, lambda rel: rel in {p.name for p in outputs}, overwrite, what="an insightface export")
            except OutputExistsError as exc:
                raise click.ClickException(str(exc)) from None
            _claim(outputs, overwrite, "an insightface export", where=out)  # under the lock: no export in progress replaces it
            try:
                info = export_rec(shards, out, prefix=prefix, only=only, verify=verify)
            except (FileNotFoundError, ManifestError) as exc:
                raise click.ClickException(str(exc)) from exc
            except OSError as exc:  # reading the shards (writes arrive as OutputFull)
                raise click.ClickException(f"{exc.filename or shards}: {os_cause(exc.errno, exc.strerror or str(exc))}") \
                    from None
    except ShardMismatchError as exc:
        raise click.ClickException(f"{exc}; nothing exported (`maskkit stats {shards}` lists every mismatch; "
                                   "--no-verify exports it anyway)") from exc
    except STOPPED as exc:
        raise _stopped(exc) from None
    finally:
        if created and out.is_dir() and not any(out.iterdir()):  # refused or stopped: no empty folder left either
            out.rmdir()
    if quiet:
        return
    _print_summary("maskkit export-rec", [("images", f"{info['images']:,}"), ("classes", f"{info['classes']:,}"),
                                          ("rec", info["rec"]), ("idx", info["idx"]),
                                          ("property", info["property"]), ("sidecar", info["sidecar"]),
                                          ("bytes", f"{info['bytes']:,}")])


COMMANDS = [synth, stats, export_rec_cmd]
