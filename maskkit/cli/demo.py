"""``maskkit demo``: click wiring (align -> synth -> contact sheet) over :mod:`maskkit.pipeline.demo`."""
from __future__ import annotations

import time
from pathlib import Path

import click

from maskkit.cli.options import _detector, _jobs, _out, _overwrite, _quiet
from maskkit.pipeline.demo import DemoError, build_demo_tree, claim_demo, demo_info, finish_demo, write_sheet


@click.command("demo")
@_out("Folder for src/, aligned/, shards/ and preview.png.", required=False, default="demo", show_default=True)
@_jobs()
@_detector()
@_quiet("No progress bars.")
@_overwrite("Replace what --out holds at the demo's names (another demo's output, or any src/, aligned/, "
            "shards/, preview.png); otherwise refused.")
def demo(out: Path, jobs: int, detector: str, quiet: bool, overwrite: bool) -> None:
    """Run align -> synth -> preview on real faces shipped with scikit-image and matplotlib.

    Exit status 0 when done, also "already complete" when OUT holds this finished demo (nothing
    is redone); an unfinished demo in OUT is continued. Anything else at the demo's names in
    OUT is refused unless --overwrite, which removes it first.

    \b
    Example:
      maskkit demo --out demo/
    """
    from maskkit.cli import main as cli_main
    from maskkit.cli._exit import _finish
    from maskkit.pipeline.synth import SynthConfig, SynthError, run_synth, summary_rows

    t0 = time.perf_counter()
    out = Path(out)
    info = demo_info(detector)
    try:
        done = claim_demo(out, info, overwrite)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from exc
    if done:
        _finish(out, 0, 0, already_complete=True)
        click.echo(str(out))
        return
    src, aligned, shards, sheet = out / "src", out / "aligned", out / "shards", out / "preview.png"
    n = build_demo_tree(src)
    click.echo(f"[1/4] identity tree: {n} photos of 2 identities -> {src}", err=True)

    args = ["align", "--src", str(src), "--out", str(aligned), "--jobs", str(jobs), "--detector", detector] \
        + (["-q"] if quiet else [])
    try:
        cli_main.main(args=args, prog_name="maskkit", standalone_mode=False)
    except click.ClickException as exc:
        raise click.ClickException(f"align failed: {exc.format_message()}") from exc
    n_al = len(list(aligned.rglob("*.jpg"))) if aligned.exists() else 0
    click.echo(f"[2/4] maskkit align: {n_al} aligned 112x112 crops -> {aligned}", err=True)

    cfg = SynthConfig(src=src, out=shards, ratio=0.5, paired=True, seed=0, jobs=jobs, shard_samples=8,
                      detector=detector, overwrite=False, progress=not quiet,  # claimed above: ours
                      command=f"maskkit synth --src {src} --out {shards} --ratio 0.5 --paired --shard-samples 8")
    from maskkit.cli._exit import _stopped
    from maskkit.util.outcome import STOPPED

    try:
        res = run_synth(cfg)
    except SynthError as exc:
        raise click.ClickException(str(exc)) from exc
    except STOPPED as exc:  # Ctrl-C or a full disk: what is kept; `maskkit demo` again continues
        raise _stopped(exc) from None
    man = res.manifest
    if not quiet:
        from maskkit.util.progress import print_summary

        print_summary("maskkit synth (demo)", dict(summary_rows(man, res.stage_seconds, res.seconds, res.files_done)))
    click.echo(f"[3/4] maskkit synth --ratio 0.5 --paired: {man['num_samples']} samples "
               f"({man['num_masked']} masked) in {len(man['shards'])} shards -> {shards}", err=True)

    try:
        rows = write_sheet(src, shards, sheet)
        click.echo(f"[4/4] contact sheet ({rows} masked faces: photo, aligned, masked, coverage) -> {sheet}", err=True)
    except Exception as exc:  # noqa: BLE001 - the sheet is a convenience; the data are done
        click.echo(f"[4/4] contact sheet skipped: {exc}", err=True)
    finish_demo(out, info)
    click.echo(f"done in {time.perf_counter() - t0:.1f} s. Inspect: maskkit stats {shards}", err=True)
    click.echo(str(out))


COMMANDS = [demo]
