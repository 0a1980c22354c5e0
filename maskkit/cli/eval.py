"""``maskkit eval``, ``maskkit embed`` and ``maskkit export``.

Heavy imports (torch, onnx, the renderer) happen inside the commands.
"""
from __future__ import annotations

import sys

import click

from maskkit.cli._exit import _claim
from maskkit.cli.options import _deprecated, _detector, _device, _out, _overwrite, _quiet, _verify

_SIDES = click.Choice(["none", "one", "both"])
_NO_PROGRESS = dict(dest="quiet", new="-q/--quiet", convert=lambda progress: not progress, default=None)


def _check_writable(path, what: str, is_dir: bool) -> None:
    """Fail at once, with a one-line error, when ``path`` (a folder, or a file's folder) cannot be
    written -- before a model is loaded or any face is embedded."""
    from pathlib import Path

    from maskkit.pipeline.runner import check_writable

    target = Path(path)
    try:
        check_writable(target if is_dir else target.parent)
    except OSError as exc:
        raise click.ClickException(f"{what} {path} is not writable: {exc.strerror or exc}") from exc


def _check_device(device: str) -> None:
    """A one-line error for a device that does not exist here (e.g. ``cuda`` on a CPU-only torch)."""
    from maskkit.training.api import check_device

    try:
        check_device(device)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


def _check_model(model) -> None:
    """A one-line error when ``model`` is neither a run folder with ``checkpoints/last.pt`` nor a
    PyTorch file (``torch.save`` writes a zip archive; files from torch < 1.6 start with a pickle
    opcode). What is inside is checked when it is loaded (:func:`_load`)."""
    import zipfile

    from maskkit.training.api import find_checkpoint

    try:
        ck = find_checkpoint(model)
    except FileNotFoundError as exc:
        raise click.ClickException(f"--model: {exc}") from exc
    with open(ck, "rb") as f:
        legacy = f.read(1) == b"\x80"
    if not zipfile.is_zipfile(ck) and not legacy:
        raise click.ClickException(f"--model: {ck} is not a PyTorch checkpoint or weights file (maskkit train "
                                   "writes RUN/checkpoints/last.pt; arcface_torch backbone.pth and MagFace "
                                   "checkpoints are read too)")


def _check_pairs(pairs) -> None:
    """A pairs-file line that is none of the accepted forms: a one-line error naming file:line and
    the forms, before a model loads or an output is claimed."""
    if pairs is None:
        return
    from maskkit.training.eval.evalsets.pairs import PairsFormatError, parse_pairs_txt

    try:
        parse_pairs_txt(pairs)
    except PairsFormatError as exc:
        raise click.ClickException(str(exc)) from exc


def _load(model, device: str = "cpu"):
    """``load_model`` with its errors (a file that is no model we can read) as one line."""
    from maskkit.training.api import load_model
    from maskkit.training.checkpoints.layout import WeightsError

    try:
        return load_model(model, device=device)
    except WeightsError as exc:
        raise click.ClickException(f"--model: {exc}") from exc


@click.command("eval")
@click.option("--model", "model", type=click.Path(exists=True),
              help="Run folder (RUN/), checkpoint, or a foreign weights file (arcface_torch backbone.pth / "
                   "model.pt / checkpoint_gpu_N.pt, MagFace checkpoint: single-stream, mu only).")
@click.option("--bin", "bin_path", type=click.Path(exists=True, dir_okay=False), help="insightface verification .bin.")
@click.option("--pairs", type=click.Path(exists=True, dir_okay=False),
              help="Pairs file (with --root), one pair per line: 'path_a path_b 1|0' (paths under --root; "
                   "1 same, 0 different), or LFW's 'name n1 n2' / 'name1 n1 name2 n2'; see below.")
@click.option("--root", type=click.Path(exists=True, file_okay=False), help="Image folder for --pairs.")
@click.option("--gallery", type=click.Path(exists=True, file_okay=False), help="Gallery folder (identity sub-folders).")
@click.option("--probes", type=click.Path(exists=True, file_okay=False), help="Probe folder (identity sub-folders).")
@click.option("--mask-side", type=_SIDES, default="one", show_default=True,
              help="Synthetic masks: none; one = 2nd image of each pair as written / the probes (M-LFW); both.")
@click.option("--mask-style", default="random", show_default=True,
              help="surgical|n95|kn95|cloth|gas or random.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Mask seed: each image's mask comes from the seed and the image's own name (a .bin: its "
                   "index), never its position, so reordering a pairs file changes no mask.")
@click.option("--flip/--no-flip", default=True, show_default=True, help="Sum the embeddings of image and mirror.")
@_out("Report folder (default RUN/eval/<set>-<task>-mask<side>[-aligned]; <stem>-eval/... beside "
      "a weights file; -aligned with --aligned on a folder source).", required=False, type=click.Path(file_okay=False))
@click.option("--name", help="Set name in reports (default from the file names).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@_device()
@_detector("Face detector for images not already 112x112.")
@click.option("--aligned", is_flag=True,
              help="Trust 112x112 images as ArcFace-aligned crops (default: check each against the template "
                   "and re-align it when off); crops of another template size (insightface's 128x128) are "
                   "brought onto the 112 template first.")
@click.option("--probes-masked", is_flag=True, help="Probes already wear real masks: no synthetic mask, masked branch.")
@click.option("--gallery-per-id", type=int, default=1, show_default=True,
              help="When --gallery and --probes are the same folder: first K images per identity form the gallery.")
@click.option("--worst-k", type=int, default=8, show_default=True, help="Entries per contact-sheet panel.")
@click.option("--compare", "compare", is_flag=True,
              help="Compare the runs given as arguments (from their saved metrics, or on the given set).")
@_quiet("No progress bars or summary table: one JSON line (set, task, headline figures, report folder).")
@_overwrite("Replace an earlier report in --out and its saved record RUN/eval/<set>-<task>-mask<side>[-aligned].json "
            "(their files are removed first; otherwise refused).")
@click.argument("runs", nargs=-1, type=click.Path(exists=True))
@_deprecated("--progress/--no-progress", **_NO_PROGRESS)
def eval_cmd(model, bin_path, pairs, root, gallery, probes, mask_side, mask_style, seed, flip, out, name, batch_size,
             device, detector, aligned, probes_masked, gallery_per_id, worst_k, compare, quiet, overwrite, runs):
    """Masked face verification / identification of a trained model, with a report.

    \b
    maskkit eval --model RUN/ --bin lfw.bin --mask-side one --out report/
    maskkit eval --model RUN/ --pairs pairs.txt --root lfw/ --mask-side both
    maskkit eval --model RUN/ --gallery gal/ --probes probes/ --mask-side one
    maskkit eval --compare RUN_A RUN_B                  # saved metrics side by side
    maskkit eval --compare RUN_A RUN_B --bin lfw.bin    # evaluate each, then compare

    Verification follows insightface's verification.py (flip-sum, squared L2, thresholds
    0..4 step 0.01, 10 folds); identification reports Rank-1/Rank-5 and CMC. Faces that cannot
    be masked are kept unmasked and counted in the report.

    \b
    Pairs file (--pairs FILE --root DIR), one pair per line, whitespace separated:
      path_a path_b 1|0     two images under --root; 1 = same identity, 0 = different
      name n1 n2            LFW same pair: name/name_000n1.* vs name/name_000n2.*
      name1 n1 name2 n2     LFW different pair
    Blank lines and # comments are skipped, and so is a first line of integers (LFW's
    '10 300'). Paths may not hold spaces; names need not be UTF-8. Any other line is an error
    naming file:line. A failed image counts once; its pairs are counted as left out.

    Folds follow the file's order (insightface's contiguous folds when each holds same and
    different pairs, else stratified runs; metrics.json says which). AUC is over all pairs,
    insightface's fold-averaged AUC beside it.

    Pairs, gallery images and probes whose scores are not finite (a diverged model's NaN/inf
    embeddings) are left out of the figures, counted and named in the table and metrics.json;
    when too few remain, metrics.json holds the counts and the reason, and eval exits 1.

    A report already in --out (default RUN/eval/<set>-<task>-mask<side>/, -aligned appended
    with --aligned on a folder source, so also a second run on the same set, mask side and
    alignment mode), or its saved record RUN/eval/<set>-<task>-mask<side>[-aligned].json
    that --compare reads, is never replaced without --overwrite, which removes them first.
    """
    from rich.console import Console

    from maskkit.training.eval.compare import compare_table
    from maskkit.training.eval.report import EvalInputError, run_eval

    console = Console()
    progress = not quiet
    has_set = any(v is not None for v in (bin_path, pairs, gallery, probes))
    if compare:
        if model:
            runs = (model, *runs)
        if len(runs) < 1:
            raise click.UsageError("--compare needs at least one run folder")
        records = None
        if has_set:
            _check_pairs(pairs)
            _check_device(device)
            records = {}
            cfgs = {}
            for r in runs:  # every run's outputs are claimed before any is evaluated
                _check_model(r)
                cfgs[r] = _config(r, bin_path, pairs, root, gallery, probes, mask_side, mask_style, seed, flip,
                                  None, name, batch_size, device, detector, probes_masked, gallery_per_id, worst_k,
                                  progress, aligned)
                _claim_report(cfgs[r], overwrite)
            for r, cfg in cfgs.items():
                try:
                    records[str(r)] = [run_eval(cfg, model=_load(r, device), console=console)]
                except EvalInputError as exc:
                    raise click.ClickException(str(exc)) from exc
                except KeyboardInterrupt:
                    raise _eval_interrupted(list(cfgs.values())) from None
        console.print(compare_table(list(runs), records))
        return
    if runs:
        raise click.UsageError(f"unexpected arguments {runs} (run folders are only taken with --compare)")
    if not model:
        raise click.UsageError("--model is required (or use --compare RUN_A RUN_B ...)")
    if not has_set:
        raise click.UsageError("give a set: --bin, or --pairs with --root, or --gallery with --probes")
    _check_pairs(pairs)
    _check_model(model)
    _check_device(device)
    if out is not None:
        _check_writable(out, "--out", is_dir=True)
    cfg = _config(model, bin_path, pairs, root, gallery, probes, mask_side, mask_style, seed, flip, out, name,
                  batch_size, device, detector, probes_masked, gallery_per_id, worst_k, progress, aligned)
    _claim_report(cfg, overwrite)
    try:
        m = run_eval(cfg, model=_load(model, device), console=None if quiet else console)
    except EvalInputError as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        raise _eval_interrupted([cfg]) from None
    if quiet:
        click.echo(_headline_json(m))


def _round(v):
    """A figure for ``eval -q``'s line: 6 decimals (0.5000000000000001 is 0.5); anything else as is."""
    return round(v, 6) if isinstance(v, float) else v


def _headline_json(m: dict) -> str:
    """``eval -q``'s one line: the set, the task and the cosine headline figures (fractions, as in
    ``metrics.json``, to 6 decimals), the counts and the report folder."""
    import json

    cos, c = m.get("cosine") or {}, m.get("counts") or {}
    keys = (("accuracy", "accuracy_std", "val", "far_target", "auc") if m.get("task") == "verification"
            else ("rank1", "rank5"))
    return json.dumps({"set": m.get("set"), "task": m.get("task"), "mask_side": (m.get("protocol") or {}).get("mask_side"),
                       **{k: _round(cos.get(k)) for k in keys}, "input_failures": c.get("input_failures"),
                       "report": m.get("report_dir")})


def _eval_interrupted(cfgs) -> SystemExit:
    """Ctrl-C during eval: nothing part-way is kept (faces and embeddings are computed again); a
    report whose writing was cut short is named, since the rerun then needs --overwrite."""
    from maskkit.cli._exit import _interrupted
    from maskkit.training.eval.report import report_paths

    partial = [p for cfg in cfgs for p in report_paths(cfg) if p.exists()]
    if partial:
        return _interrupted(f"eval keeps nothing part-way, and {partial[0].parent} holds a report cut short",
                            "rerun the same command with --overwrite to start again")
    return _interrupted("eval keeps nothing part-way (its report is written when the run ends)",
                        "rerun the same command to start again")


def _claim_report(cfg, overwrite: bool) -> None:
    """Refuse to replace an earlier eval's report or saved record (``--overwrite`` removes them first)."""
    from maskkit.training.eval.report import report_paths
    from maskkit.util.files import OutputExistsError, claim_folder

    paths = report_paths(cfg)
    names = {p.name for p in paths if p.parent == cfg.out_dir}
    try:  # a folder of other files (another command's output, the user's): refused unless --overwrite
        claim_folder(cfg.out_dir, lambda rel: rel in names, overwrite, what="an eval report")
    except OutputExistsError as exc:
        raise click.ClickException(str(exc)) from None
    _claim(paths, overwrite, "an eval report", remove=True)


def _config(model, bin_path, pairs, root, gallery, probes, mask_side, mask_style, seed, flip, out, name, batch_size,
            device, detector, probes_masked, gallery_per_id, worst_k, progress, aligned=False):
    from maskkit.training.eval.report import EvalConfig

    try:
        return EvalConfig(model=str(model), bin=bin_path, pairs=pairs, root=root, gallery=gallery, probes=probes,
                          mask_side=mask_side, mask_style=mask_style, seed=seed, flip=flip, out=out, name=name,
                          batch_size=batch_size, device=device, detector=detector, probes_masked=probes_masked,
                          gallery_per_id=gallery_per_id, worst_k=worst_k, progress=progress, aligned=aligned)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


@click.command("embed")
@click.option("--model", required=True, type=click.Path(exists=True),
              help="Run folder (RUN/), checkpoint, or a foreign weights file (arcface_torch backbone.pth / "
                   "model.pt / checkpoint_gpu_N.pt, MagFace checkpoint: single-stream, mu only).")
@click.option("--src", required=True, type=click.Path(exists=True, file_okay=False), help="Image folder.")
@_out("Output .npz (mu, sigma, magnitude, masked, paths, identities, failures).", file=True,
      type=click.Path(dir_okay=False), suffixes=(".npz",))
@click.option("--masked", is_flag=True, help="Send every face through the masked-face branch.")
@click.option("--flip/--no-flip", default=True, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@_device()
@_detector("Face detector for images not already 112x112.")
@_quiet("No progress bars or summary table (errors and warnings still go to stderr).")
@_deprecated("--progress/--no-progress", **_NO_PROGRESS)
@_overwrite("Replace --out when it exists (otherwise refused).")
@click.option("--aligned", is_flag=True,
              help="Trust 112x112 images as ArcFace-aligned crops (default: check each against the template "
                   "and re-align it when off); crops of another template size (insightface's 128x128) are "
                   "brought onto the 112 template first.")
def embed(model, src, out, masked, flip, batch_size, device, detector, quiet, overwrite, aligned):
    """Embed every face under SRC into an .npz (mu, sigma, magnitude, paths).

    \b
    mu          (N, D) float32, L2-normalised (unit length); with --flip the
                embeddings of the image and its mirror are averaged first
    magnitude   (N,) the norm of mu before normalisation, stored apart
                (MagFace's quality signal: multiply it back to get the raw mu)
    sigma       (N, D) float32 uncertainty (shape (0,) for models without sigma)
    masked, paths, identities (N,); failures (one JSON string per input left out);
    skipped     one JSON string per file under SRC that is not an image input
                (reason not_an_image, ...): files = embedded + failed + skipped

    Identity = first sub-folder. Images not already 112x112 are aligned first; 112x112 images
    are checked against the ArcFace template and re-aligned when off (--aligned trusts them);
    crops of another template size (insightface's 128x128...) are brought onto the 112 template
    and used when the face is found on it; what was done is in the archive's ``notes``. Files that cannot be read or aligned are
    listed in the archive's ``failures``. Exit status 0 when done,
    1 when every image failed, 2 when SRC holds no image file; an existing OUT needs --overwrite.
    """
    from maskkit.training.eval.embed import run_embed
    from maskkit.util.progress import print_summary

    from maskkit.cli._exit import _finish, _interrupted, _no_input
    from maskkit.util.outcome import NoInputError

    _claim([out], overwrite, "an embeddings file")
    _check_model(model)
    _check_device(device)
    _check_writable(out, "--out", is_dir=False)
    try:
        s = run_embed(model, src, out, masked=masked, flip=flip, batch_size=batch_size, device=device,
                      detector=detector, progress=not quiet, aligned=aligned, model=_load(model, device))
    except NoInputError as exc:
        raise _no_input(exc) from exc
    except KeyboardInterrupt:
        raise _interrupted(f"embed keeps nothing part-way ({out} is written when every image is embedded)",
                           "rerun the same command to start again") from None
    if not quiet:
        # files = embedded + failed + skipped; alignment_fallbacks (= realigned + unverified, the
        # legacy name run_embed still returns) would count those two rows twice: not printed
        print_summary("maskkit embed", {k: v for k, v in s.items() if k != "alignment_fallbacks"}, file=sys.stdout)
    # the failure records are inside the archive, not in a failures.jsonl beside it
    _finish(out, s["embedded"], s["failed"], failures_at=f"the 'failures' array in {out} (one JSON record per input)")


@click.command("export")
@click.option("--model", required=True, type=click.Path(exists=True),
              help="Run folder (RUN/), checkpoint, or a foreign weights file (arcface_torch, MagFace).")
@click.option("--format", "fmt", type=click.Choice(["onnx", "arcface-torch"]), default="onnx", show_default=True,
              help="onnx: one graph, inputs image + masked, outputs mu (+ sigma); arcface-torch: a plain fp32 "
                   "state_dict in arcface_torch's key layout (mu network only).")
@_out("Output file (.onnx, or .pth with --format arcface-torch).", required=False, file=True,
      type=click.Path(dir_okay=False))
@click.option("--branch", type=click.Choice(["face", "masked"]), default="face", show_default=True,
              help="arcface-torch: which start block of a two-stream model goes into the file.")
@click.option("--opset", type=int, default=17, show_default=True,
              help="onnx: the ONNX opset, 9 up to the installed torch exporter's highest (23 in torch 2.13); "
                   "checked before the model is read.")
@_verify("onnx: check onnxruntime against PyTorch at batch sizes 1 and 7.")
@_quiet("Print nothing but errors.")
@_deprecated("--onnx", dest="out", new="-o/--out", type=click.Path(dir_okay=False))
@_overwrite("Replace the output file when it exists (otherwise refused).")
def export(model, fmt, out, branch, opset, verify, quiet, overwrite):
    """Export a model to ONNX (one graph, dynamic batch axis) or to arcface_torch's backbone.pth.

    \b
    onnx inputs   image   float32 (N, 3, H, W), preprocessed as the file's metadata
                          says (maskkit / arcface_torch: RGB, (x - 127.5) / 127.5;
                          a MagFace model: BGR, x / 255; keys color/scale/mean/std)
                  masked  float32 (N,): 1.0 = masked-face branch, 0.0 = face
                          branch (> 0.5 selects; cast a bool array to float32)
    onnx outputs  mu      float32 (N, D), not normalised (D: embedding size, 512)
                  sigma   float32 (N, D) (DUL methods only)
    arcface-torch         plain fp32 state_dict in arcface_torch's key layout; sigma is
                          dropped; a two-stream model gives its --branch start block

    \b
    maskkit export --model runs/maskdul -o maskdul.onnx
    maskkit export --model runs/maskdul --format arcface-torch --branch masked -o backbone.pth
    maskkit export --model backbone.pth -o backbone.onnx     # an arcface_torch / MagFace file
    """
    import numpy as np

    from maskkit.training.checkpoints.layout import WeightsError

    if out is None:
        raise click.UsageError("Missing option '-o' / '--out'.")
    if fmt == "onnx":
        from maskkit.training.eval.export import check_opset

        try:
            check_opset(opset)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--opset") from exc
    _claim([out], overwrite, "an exported model")
    _check_model(model)
    _check_writable(out, "--out", is_dir=False)
    m = _load(model)
    say = (lambda *a, **k: None) if quiet else click.echo
    if fmt == "arcface-torch":
        from maskkit.training.checkpoints.write import write_arcface_torch

        try:
            path, notes = write_arcface_torch(m, out, branch=branch)
        except WeightsError as exc:
            raise click.ClickException(str(exc)) from exc
        say(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, arcface_torch key layout, fp32)")
        for n in notes:
            if n.startswith("warning"):
                click.echo(f"maskkit export: {n}", err=True)
            else:
                say(f"note: {n}")
        return
    from maskkit.training.eval.export import export_onnx, verify_onnx

    try:
        path = export_onnx(m, out, opset=opset)
    except ValueError as exc:  # the exporter refused the graph at this opset
        raise click.ClickException(str(exc)) from exc
    say(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB; input {m.preprocess.describe()})")
    if verify:
        # a smooth random image stands in for faces here; tests check real faces
        rng = np.random.default_rng(0)
        import cv2

        h, w = (m.config or {}).get("image_size") or (112, 112)
        imgs = np.stack([cv2.resize(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8), (w, h))
                         for _ in range(7)])
        flags = np.arange(7) % 2 == 1
        for c in verify_onnx(m, path, imgs, flags):
            sig = "-" if c.max_abs_diff_sigma is None else f"{c.max_abs_diff_sigma:.2e}"
            say(f"batch {c.batch_size}: max |mu diff| {c.max_abs_diff_mu:.2e}, max |sigma diff| {sig}, "
                f"relative to output scale {c.relative():.2e}")
            if c.relative() > 1e-4:
                raise click.ClickException("onnxruntime disagrees with PyTorch (relative difference > 1e-4)")


COMMANDS = [eval_cmd, embed, export]
