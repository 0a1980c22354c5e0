"""``maskkit train``: train MaskDUL or a baseline on maskkit shards (see maskkit.training.engine).

The validation callback (:mod:`maskkit.training.eval.validation`) is built here, where commands are
wired, and handed to the loop; ``python -m maskkit.cli._rank CONFIG.json`` (:mod:`maskkit.cli._rank`) is
the rank entry that ``--nproc N`` launches, so every rank builds it too.
"""
from __future__ import annotations

import sys

import click

from maskkit.cli.options import _POSITIVE, _finite, _deprecated, _epoch_list, _device, _out, _quiet, _verify
from maskkit.training.config import AMP_MODES, BACKBONES, METHODS


def _parse_set(values: tuple[str, ...]) -> dict:
    """``KEY=VALUE`` items -> values coerced by each field's type (a JSON value, else the text:
    ``two_stream=no`` -> False, ``milestones=5`` -> (5,)); a value its field does not take is one
    usage error naming ``--set`` (an unknown key is refused later, by ``TrainConfig.from_dict``)."""
    import json

    from maskkit.training.config import field_types
    from maskkit.training.config_values import ConfigValueError, coerce

    types = field_types()
    out = {}
    for item in values:
        if "=" not in item:
            raise click.BadParameter(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        k = k.strip().replace("-", "_")
        try:
            value = json.loads(v)
        except json.JSONDecodeError:
            value = v
        try:
            out[k] = coerce(k, types[k], value) if k in types else value
        except ConfigValueError as exc:
            raise click.UsageError(f"--set {item}: {exc}") from None
    return out


def _load_config(path, option: str, strict: bool = False):
    """The config in ``path`` (``strict``: user input, ``--config``: an unknown key or a value its
    field does not take is refused; else a saved run's ``config.json``, read as
    :meth:`TrainConfig.load` does), or one usage error naming the option and the file (a file
    that is not UTF-8 JSON, or whose values no TrainConfig takes)."""
    import json
    from pathlib import Path

    from maskkit.training.config import TrainConfig

    try:
        return TrainConfig.from_json(Path(path).read_text(), strict=True) if strict else TrainConfig.load(path)
    except UnicodeDecodeError:
        raise click.UsageError(f"{option} {path}: not a config JSON file (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise click.UsageError(f"{option} {path}: not a config JSON file ({exc})") from None
    except (ValueError, TypeError) as exc:
        raise click.UsageError(f"{option} {path}: {exc}") from None


def _file_keys(path) -> set:
    """The keys a ``--config`` file sets (its errors name the file)."""
    import json
    from pathlib import Path

    d = json.loads(Path(path).read_text())
    return set(d) | ({"mag_easy_margin", "arc_easy_margin"} if "easy_margin" in d else set())


def _interrupted(out) -> SystemExit:
    """Ctrl-C during training: one line naming the checkpoint that is kept (its step) and how to
    continue from it (``--resume``), or that none was written yet (exit status 130)."""
    from pathlib import Path

    from maskkit.cli._exit import _interrupted as stopped

    ck = Path(out) / "checkpoints" / "last.pt"
    step = None
    if ck.is_file():
        try:  # mmap: the step is read without loading the weights
            import torch

            step = torch.load(ck, map_location="cpu", mmap=True, weights_only=False).get("step")
        except Exception:  # noqa: BLE001 - a checkpoint being replaced at the moment of the interrupt
            step = None
    if not ck.is_file():
        return stopped("no checkpoint was written yet (the first comes after --ckpt-every steps or an epoch)",
                       f"rerun the same command with --overwrite to start again (--out {out} holds its config)")
    at = f" (step {int(step):,})" if isinstance(step, int) else ""
    return stopped(f"the last checkpoint{at} is kept in {ck}; the steps after it are lost",
                   f"rerun with --resume to continue from it: maskkit train --out {out} --resume")


# options that change the model's shape: fixed once a run exists
_SHAPE_KEYS = ("method", "backbone", "width", "embedding_size", "two_stream", "split_point")


@click.command("train")
@click.option("--data", type=click.Path(file_okay=False), help="Shard folder (manifest.json + train-*.tar).")
@_out("Run directory (config.json, checkpoints/last.pt, log.jsonl).", required=False, default="runs/train",
      show_default=True, type=click.Path(file_okay=False))
@click.option("--method", type=click.Choice(METHODS), default="maskdul",
              show_default=True, help="Paper baselines (arcface, magface, dul, dul-mag) or the full model.")
@click.option("--backbone", type=click.Choice(BACKBONES), default="r50", show_default=True)
@click.option("--width", type=_POSITIVE, callback=_finite, default=1.0, show_default=True,
              help="Channel multiplier (narrow nets for CPU; >= 0.125, a stem of 8 channels).")
@click.option("--two-stream/--single-stream", "two_stream", default=None,
              help="Separate start blocks for faces / masked faces (default: only for maskdul).")
@click.option("--split-point", default="layer1.0", show_default=True,
              help="Last branch-specific unit: stem, layer1.0, layer1, layerK.J.")
@click.option("--batch-size", type=click.IntRange(1, None), default=128, show_default=True, help="Per-process batch.")
@click.option("--lr", type=_POSITIVE, callback=_finite, default=0.05, show_default=True,
              help="lr at global batch 128 (scaled linearly).")
@click.option("--epochs", type=click.IntRange(1, None), default=30, show_default=True)
@click.option("--milestones", callback=_epoch_list, default="10,18,25", show_default=True,
              help="Epochs (whole numbers >= 1, comma-separated; empty: none) where lr is divided by 10.")
@click.option("--num-workers", type=click.IntRange(0, None), default=None, show_default="min(4, usable CPU cores)",
              help="DataLoader workers per process (--resume reuses the checkpoint's count).")
@click.option("--amp", type=click.Choice(AMP_MODES), default="auto", show_default=True,
              help="auto: bf16 autocast on a GPU (fp16 where bf16 is missing), off on CPU.")
@click.option("--tensorboard/--no-tensorboard", "tensorboard", default=None,
              help="TensorBoard scalars in RUN/tb (default: when the package, in the train extra, is installed).")
@click.option("--compile/--no-compile", "compile_", default=False, show_default=True, help="torch.compile the model.")
@_device()
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("--max-steps", type=click.IntRange(1, None), default=None, show_default="none: --epochs x steps per epoch",
              help="Stop after this many optimiser steps.")
@click.option("--steps-per-epoch", type=click.IntRange(1, None), default=None, show_default="samples // global batch (one pass)",
              help="Override the epoch length.")
@click.option("--ckpt-every", type=click.IntRange(0, None), default=1000, show_default=True,
              help="Checkpoint every N steps (also at each epoch end, validation and the end; 0: only there).")
@click.option("--log-every", type=click.IntRange(1, None), default=50, show_default=True,
              help="Log a line every N steps.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from checkpoints/last.pt (exactly).")
@click.option("--val", "val", multiple=True, metavar="SET",
              help="Validate while training on a verification set as `maskkit eval` reads it: FILE.bin, "
                   "PAIRS_FILE:IMAGES_DIR or a folder with pairs.txt (repeat for more sets; default: none, no validation).")
@click.option("--val-every", type=click.IntRange(1, None), default=None,
              help="Validate every N steps (default: at the end of every epoch); always at the end.")
@click.option("--val-sides", default="none,one", show_default=True,
              help="Mask sides to report (none, one = the 2nd image of each pair masked (M-LFW), both).")
@click.option("--val-best", metavar="SET:SIDE[:METRIC]", default=None,
              help="Keep checkpoints/best.pt by this figure (default: the first --val set, side one, accuracy).")
@click.option("--online-masks", is_flag=True,
              help="Draw masks in the loader workers (new ones every epoch) on an unmasked set (synth --ratio 0).")
@click.option("--mask-ratio", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="With --online-masks: the share of each identity masked per epoch.")
@_verify("Check every shard's sha256 against the manifest before step 0 (sizes are always checked).")
@click.option("--init", "init", type=click.Path(exists=True),
              help="Start from weights: arcface_torch backbone.pth / model.pt / checkpoint_gpu_N.pt, a MagFace "
                   "checkpoint, or a maskkit run. Architecture and input preprocessing come from the file.")
@click.option("--finetune-lr-mult", type=click.FloatRange(0, None), callback=_finite, default=0.1, show_default=True,
              help="With --init: lr multiplier of the loaded parameters (new ones: 1.0).")
@click.option("--freeze-steps", type=click.IntRange(0, None), default=0, show_default=True,
              help="With --init: the loaded parameters get lr 0, weight decay 0 and eval-mode BatchNorm "
                   "for this many steps.")
@click.option("--overwrite", is_flag=True,
              help="--out holds a run: replace it (its checkpoints, log and eval/ records are removed). "
                   "Without --resume or --overwrite such a folder is refused.")
@click.option("--nproc", type=click.IntRange(1, None), default=1, show_default=True,
              help="Launch N local DDP processes with torch.distributed.run (or run under torchrun yourself).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True),
              help="Start from a config JSON (TrainConfig); explicit options override it.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any other TrainConfig field, e.g. --set kl_reduction=mean --set xi_detach=false.")
@_quiet("No progress bar (log lines only).")
@_deprecated("--no-progress", dest="quiet", new="-q/--quiet", is_flag=True)
@click.pass_context
def train_cmd(ctx: click.Context, data, out, method, backbone, width, two_stream, split_point, batch_size, lr, epochs,
              milestones, num_workers, amp, tensorboard, compile_, device, seed, max_steps, steps_per_epoch,
              ckpt_every, log_every, resume, val, val_every, val_sides, val_best, online_masks, mask_ratio, verify,
              init, finetune_lr_mult, freeze_steps, overwrite, nproc, config_path, sets, quiet) -> None:
    """Train MaskDUL (two-stream IResNet + DUL head + MagFace + H-KLD) or a baseline on shards.

    \b
    Examples:
      maskkit train --data shards/ --out runs/maskdul --method maskdul
      maskkit train --data shards/ --out runs/arc --method arcface --nproc 8
      maskkit train --out runs/maskdul --resume
      maskkit train --data shards/ --out runs/ft --method maskdul --init backbone.pth --freeze-steps 2000
      maskkit train --data plain/ --out runs/online --online-masks --val lfw.bin --val cfp_fp.bin --val-every 2000
      torchrun --nproc_per_node 8 -m maskkit.cli train --data shards/ --out runs/maskdul

    The set is checked against its manifest before step 0 (sizes, and sha256 unless --no-verify),
    as export-rec does: a damaged set is refused. A sample that still fails during training is
    counted per epoch (log.jsonl "data" records, the summary); past max_data_loss (default 1 %
    of an epoch, --set max_data_loss=...) the run stops with an error.
    """
    from pathlib import Path

    from click.core import ParameterSource

    from maskkit.training.config import TrainConfig, claim_run_dir
    from maskkit.util.files import OutputExistsError

    try:
        claim_run_dir(out, resume, overwrite, remove=False)  # refuse first; remove only once the data opens
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    except OutputExistsError as exc:
        raise click.ClickException(str(exc)) from exc
    given = {name for name in ctx.params if ctx.get_parameter_source(name) not in
             (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)}
    values = {"data": data, "out": out, "method": method, "backbone": backbone, "width": width,
              "two_stream": two_stream, "split_point": split_point, "batch_size": batch_size, "lr": lr,
              "epochs": epochs, "milestones": list(milestones),
              "num_workers": num_workers, "amp": amp, "compile": compile_, "device": device, "seed": seed,
              "max_steps": max_steps, "steps_per_epoch": steps_per_epoch, "ckpt_every": ckpt_every,
              "log_every": log_every, "init": str(Path(init).resolve()) if init else None,
              "finetune_lr_mult": finetune_lr_mult, "freeze_steps": freeze_steps, "tensorboard": tensorboard,
              "val": list(val), "val_every": val_every, "val_best": val_best,
              "val_sides": [x.strip() for x in str(val_sides).split(",") if x.strip()],
              "online_masks": online_masks, "mask_ratio": mask_ratio, "verify_data": verify}
    renamed = {"compile_": "compile", "verify": "verify_data"}
    explicit = {renamed.get(k, k): values[renamed.get(k, k)] for k in given if renamed.get(k, k) in values}
    explicit.update(_parse_set(sets))
    if quiet:
        explicit["progress"] = False

    from_file: set = set()
    try:
        if resume:
            stored = Path(out) / "config.json"
            if not stored.exists():
                raise click.UsageError(f"--resume: {stored} not found")
            base = _load_config(stored, "--resume").to_dict()
            for k in _SHAPE_KEYS:
                if k in explicit and explicit[k] != base.get(k):
                    raise click.UsageError(f"--resume: {k} cannot change ({base.get(k)!r} -> {explicit[k]!r})")
        elif config_path:
            base = _load_config(config_path, "--config", strict=True).to_dict()
            from_file = _file_keys(config_path)
        else:
            base = dict(values)
        if resume and "init" in explicit:
            if explicit["init"] != base.get("init"):
                click.echo(f"note: --resume: the checkpoint wins; --init {explicit['init']} is ignored "
                           f"(the run started from {base.get('init') or 'scratch'})", err=True)
            explicit.pop("init")
        base.update(explicit)
        base["out"] = out
        base.setdefault("extra", {})
        base["extra"] = dict(base["extra"] or {}, command=" ".join(["maskkit"] + sys.argv[1:]))
        cfg = TrainConfig.from_dict(base)
        if cfg.init and not resume:
            from maskkit.training.checkpoints.finetune import apply_init_config
            from maskkit.training.checkpoints.read import read_weights

            # architecture and preprocessing from the weights; an explicit different value is an error
            cfg = apply_init_config(cfg, read_weights(cfg.init), explicit=set(explicit))
        cfg.check()  # e.g. width 0, split_point layer9.9, val_best without val
    except FileNotFoundError as exc:
        raise click.ClickException(f"--init: {exc}") from exc
    except (ValueError, TypeError) as exc:
        key = getattr(exc, "key", None) or str(exc).split(" ", 1)[0]  # check()'s lines start with the key
        where = f"--config {config_path}: " if key in from_file and key not in explicit else ""
        raise click.UsageError(where + str(exc)) from exc
    if not cfg.data:
        raise click.UsageError("--data is required")
    validator = _validator(cfg)
    _check_data(cfg, out, keep_note=overwrite)  # before an old run is removed or a process starts
    if overwrite:
        claim_run_dir(out, resume, overwrite)

    if nproc > 1:
        from maskkit.training.distributed import launch

        try:
            rc = launch(cfg, nproc, resume=resume, entry="maskkit.cli._rank", extra_args=["--verified"])
        except KeyboardInterrupt:
            raise _interrupted(out) from None
        if rc != 0:
            raise click.ClickException(f"torch.distributed.run exited with code {rc}")
        return

    from maskkit.io.crop_template import TemplateRefused
    from maskkit.training.errors import NonFiniteLoss, TrainError
    from maskkit.training.eval.validation import ValidationError
    from maskkit.training.loop import train

    try:
        summary = train(cfg, resume=resume, callbacks=[validator] if validator else [], verified=True,
                        closing_line=False)
    except (NonFiniteLoss, TrainError, ValidationError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    except TemplateRefused as exc:  # shards whose crops cannot be brought onto image_size's template
        raise click.ClickException(f"--data {cfg.data}: {exc.detail}") from exc
    except KeyboardInterrupt:
        raise _interrupted(out) from None
    finally:
        from maskkit.training.distributed import finish_rank

        finish_rank()
    if summary.get("nothing_to_do"):
        click.echo(f"nothing to do: {summary.get('reason', 'the run is already complete')}; "
                   f"checkpoint {summary['checkpoint']} unchanged (raise --max-steps or --epochs to train on)")
        return
    done = summary.get("steps_trained", summary["step"])
    if not quiet:
        _summary_table(summary, validator)
    click.echo(f"trained {done} steps (now at step {summary['step']}); checkpoint {summary['checkpoint']}"
               + (f"; {summary['data_failed']} sample(s) failed to load" if summary.get("data_failed") else ""))


def _validator(cfg):
    """The validation callback ``cfg.val`` asks for (None without sets); a bad set is a usage error."""
    from maskkit.training.eval.validation import ValidationError, Validator

    try:
        validator = Validator.from_config(cfg)
        if validator is not None:
            validator.check_files()
        return validator
    except ValidationError as exc:
        raise click.UsageError(str(exc)) from exc


def _check_data(cfg, out, keep_note: bool = False) -> None:
    """Open the set and check it against its manifest (sha256 unless --no-verify) on rank 0, and its
    crops' size (16 px floor, a template that covers the input's); with --online-masks refuse a
    set with stored masks. One line each, before anything is written."""
    import os

    from maskkit.io.crop_template import TemplateRefused
    from maskkit.training.data import check_crop_size, open_shards
    from maskkit.training.errors import TrainError
    from maskkit.training.sources import verify_shards

    kept = f" (the run in {out} is kept)" if keep_note else ""
    try:
        shards = open_shards(cfg.data, cfg.split)
        check_crop_size(shards, cfg.image_size)  # crops under 16 px, or a template that misses the input's
        if cfg.online_masks:
            from maskkit.training.online_masks import check_unmasked

            check_unmasked(shards.root, shards.manifest)
        if int(os.environ.get("RANK", "0") or 0) == 0:
            verify_shards(shards.root, shards.manifest, hash=cfg.verify_data)
    except TemplateRefused as exc:
        raise click.ClickException(f"--data {cfg.data}: {exc.detail}" + kept) from exc
    except (OSError, ValueError) as exc:  # TrainError is a ValueError
        msg = str(exc) if isinstance(exc, TrainError) else f"--data: {exc}"
        raise click.ClickException(msg + kept) from exc


def _summary_table(summary: dict, validator) -> None:
    from maskkit.util.progress import print_summary

    rows = {"steps trained": summary.get("steps_trained"), "now at step": summary["step"],
            "checkpoint": summary["checkpoint"], "last loss": summary.get("last_loss"),
            "samples failed to load": summary.get("data_failed", 0)}
    by_epoch = {f"epoch {e}": n for e, n in (summary.get("data_failed_by_epoch") or {}).items() if n}
    if by_epoch:
        rows["failed samples by epoch"] = by_epoch
        rows["first failed samples"] = summary.get("data_failed_samples", "")
    if validator is not None:
        rows.update(validator.summary())
    print_summary("maskkit train", rows)


COMMANDS = [train_cmd]
