"""The training loop of ``maskkit train``: AMP, channels_last, torch.compile, DDP, callbacks.

:func:`train` runs one :class:`~maskkit.training.config.TrainConfig` in the current process;
under ``torchrun`` every process runs it as one DDP rank (:mod:`~maskkit.training.distributed`).
Checkpoints and exact resume: :mod:`~maskkit.training.resume`; the recipe (model + loss module,
optimizer, schedule): :mod:`~maskkit.training.recipe`; the data: :mod:`~maskkit.training.sources`.

**Step.** uint8 NHWC batch -> device -> preprocess -> autocast -> model -> loss -> NaN/Inf guard
-> backward -> optional global-norm clipping -> SGD step.

**Mixed precision** (``cfg.amp``): ``auto`` (the default) is bf16 autocast on a GPU that has
bf16, fp16 with a GradScaler on one that does not, and off on CPU, without a note; an explicit
``bf16`` / ``fp16`` on CPU is off and said once (``resolved.amp`` in ``config.json`` is what ran).

**Guard.** A non-finite loss on any rank stops every rank with
:class:`~maskkit.training.errors.NonFiniteLoss`, naming the step, and leaves the last good
checkpoint in place: nothing is written after a bad step. On CPU the flag is checked before the
optimizer step; on CUDA it is read one step later (so the loop never stalls the kernel launch
queue) and always before a checkpoint is written or a callback runs.

**Data failures.** Samples that fail to load after the check before step 0 are counted per epoch
(:class:`~maskkit.training.sources.EpochAccount`): a ``data`` record in ``log.jsonl`` at each
epoch end names them, the summary returns the totals, and once an epoch loses more than
``max_data_loss`` of its samples every rank stops with
:class:`~maskkit.training.errors.DataLossError` (the flag rides on the guard's all-reduce).

**Callbacks** (:mod:`~maskkit.training.callbacks`, e.g. validation) run on rank 0 at the steps
they are due, on the model in eval mode; a checkpoint follows, holding their state, and a copy of
it when a callback asks to keep one (``best.pt``).

**No hidden syncs.** The two-stream route is computed from the loader's pinned CPU flags; the KL
uses host scalars; metrics accumulate on the device and are read only at log intervals.

**Threads.** Each process runs ``cfg.threads`` CPU threads (None: its current count), recorded
per rank; :func:`train` gives the caller its own count back when it returns.

This module imports only torch / numpy at module level (the GPU benchmark runs it on a machine
without webdataset or OpenCV, with a :class:`~maskkit.training.sources.SyntheticSource`).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

from maskkit.training.api import Preprocess
from maskkit.training.callbacks import CallbackContext, CallbackResult
from maskkit.training.config import TrainConfig
from maskkit.training.distributed import all_gather_object, setup_distributed
from maskkit.training.errors import DataLossError, NonFiniteLoss, TrainError
from maskkit.training.losses import build_criterion
from maskkit.training.model import FaceModel, build_model
from maskkit.training.recipe import METRIC_KEYS, StepSchedule, TrainModule, build_optimizer, log_line
from maskkit.training.resume import (
    atomic_save,
    checkpoint_payload,
    keep_copy,
    restore_state,
    resume_point,
    rng_state,
    seed_everything,
)
from maskkit.training.runlog import RunLog
from maskkit.training.sources import EpochAccount, ShardSource, resolve_num_workers

log = logging.getLogger(__name__)


def resolve_amp(requested: str, device: torch.device) -> tuple[torch.dtype | None, str | None]:
    """``(autocast dtype or None, note)`` for ``cfg.amp`` on ``device``; the note says why an
    explicitly requested mode is off (None when nothing was asked that is not done)."""
    if device.type != "cuda":
        return None, (f"amp {requested} requested: off on {device.type} (fp32)" if requested in ("bf16", "fp16")
                      else None)
    if requested == "auto":
        return (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16), None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(requested), None


def _amp_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "none")


def train(cfg: TrainConfig, resume: bool = False, source: Any = None, callbacks: Sequence[Any] = (),
          verified: bool = False, closing_line: bool = True) -> dict:
    """Train ``cfg`` (in this process; under torchrun, as one DDP rank). Returns a summary dict.

    Args:
        cfg: the run configuration; ``cfg.out`` is the run directory.
        resume: continue from ``cfg.out/checkpoints/last.pt`` (exactly: :mod:`~maskkit.training.resume`).
        source: a data source (default :class:`~maskkit.training.sources.ShardSource` over
            ``cfg.data``); the benchmarks pass a :class:`~maskkit.training.sources.SyntheticSource`.
        callbacks: :class:`~maskkit.training.callbacks.Callback` objects; ``cfg.val`` needs one
            named ``val`` (``maskkit train`` builds it: :mod:`maskkit.training.eval.validation`).
        verified: the caller already checked the shards' sha256 (sizes are checked again).
        closing_line: print ``done: step N, checkpoint ...`` at the end (``maskkit train`` prints
            its summary table and line instead).

    Raises:
        NonFiniteLoss: the loss became NaN/Inf (the last good checkpoint is kept).
        DataLossError: an epoch lost more than ``cfg.max_data_loss`` of its samples.
        TrainError: the data or options cannot train (a damaged or refused set, one identity...).
    """
    try:
        cfg.check()  # settings no run can train with: one line before anything is written
    except ValueError as exc:
        raise TrainError(str(exc)) from exc
    caller_threads = torch.get_num_threads()
    try:
        return _train(cfg, resume, source, list(callbacks), verified, closing_line)
    finally:  # cfg.threads changes this process's count: give the caller its own back
        torch.set_num_threads(caller_threads)


def _train(cfg: TrainConfig, resume: bool, source: Any, callbacks: list, verified: bool,
           closing_line: bool) -> dict:
    threads = int(cfg.threads) if cfg.threads else torch.get_num_threads()
    # CPU kernels sum in a thread-count-dependent order: the count is set and logged per rank, so two
    # launches (e.g. --nproc 2 and two one-process nodes) compute the same thing when they agree on it
    torch.set_num_threads(threads)
    if cfg.val and not any(getattr(cb, "name", None) == "val" for cb in callbacks):
        raise TrainError("the config names validation sets (val) but no validation callback was given: run "
                         "`maskkit train`, which builds it, or pass maskkit.training.eval.validation.Validator")
    info = setup_distributed(cfg)
    run = Path(cfg.out)
    ck_path = run / "checkpoints" / "last.pt"
    ckpt = None
    if resume:
        if not ck_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ck_path}")
        ckpt = torch.load(ck_path, map_location="cpu", weights_only=False)
    if info.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = not cfg.deterministic
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    src = source if source is not None else ShardSource(cfg, info, resolve_num_workers(cfg.num_workers, ckpt),
                                                        verified=verified)
    num_classes = len(src.classes)
    if num_classes < 2:
        raise TrainError(f"{cfg.data} has {num_classes} identit{'y' if num_classes == 1 else 'ies'}: "
                         "a classification loss needs at least 2 (one sub-folder per identity in the synth "
                         "source); with 1 class the cls loss is 0 and nothing is learned")
    world, gb = info.world, cfg.batch_size * info.world
    spe = cfg.steps_per_epoch or max(1, src.num_samples // gb)
    nw = max(1, src.num_workers)
    use_cuda = info.device.type == "cuda"
    amp_dtype, amp_note = resolve_amp(cfg.amp, info.device)
    channels_last = cfg.channels_last and use_cuda

    # identical init on every rank, then a per-rank RNG stream for dropout / eps
    seed_everything(cfg.seed)
    model = build_model(cfg)
    init_report = None
    if cfg.init and ckpt is None:  # --init: read once at the start; a resumed run takes its checkpoint
        from maskkit.training.checkpoints import WeightsError, init_model

        try:
            init_report = init_model(model, cfg)
        except (WeightsError, FileNotFoundError) as exc:
            raise TrainError(str(exc)) from exc
        cfg = cfg.replace(init_sha256=init_report.sha256, init_layout=init_report.label,
                          init_sigma_head=init_report.sigma_head)
    criterion = build_criterion(cfg, num_classes)
    tm = TrainModule(model, criterion, channels_last, Preprocess.from_config(cfg)).to(info.device)
    if channels_last:
        tm = tm.to(memory_format=torch.channels_last)
    base_lr = cfg.lr * gb / cfg.lr_base_batch
    params = [p for p in tm.parameters() if p.requires_grad]
    optimizer, frozen_bns = build_optimizer(tm, cfg, base_lr)
    new_params = [p for g in optimizer.param_groups if not g.get("freeze_steps") for p in g["params"]]
    sched = StepSchedule(base_lr, cfg.milestones, cfg.gamma, cfg.warmup_epochs)
    scaler = torch.amp.GradScaler("cuda", enabled=(use_cuda and amp_dtype == torch.float16))
    seed_everything(cfg.seed * 1_000_003 + info.rank + 1)

    if ckpt is not None:
        if ckpt.get("num_classes") != num_classes:
            raise TrainError(f"--resume: the checkpoint was trained on {ckpt.get('num_classes')} classes, "
                             f"{cfg.data} has {num_classes}")
        restore_state(ckpt, model, criterion, optimizer, sched, scaler)
        for cb in callbacks:
            cb.load_state_dict((ckpt.get("callbacks") or {}).get(cb.name) or {})
    start = resume_point(ckpt, cfg, info.rank, world, info.device, nw, spe, gb)
    global_step = start.step
    if ckpt is not None and ((cfg.max_steps is not None and global_step >= cfg.max_steps)
                             or start.epoch >= cfg.epochs):
        # nothing to train: leave the run folder (config, log, checkpoint) untouched
        limit = (f"--max-steps {cfg.max_steps}" if cfg.max_steps is not None and global_step >= cfg.max_steps
                 else f"{cfg.epochs} epochs")
        return {"step": global_step, "epoch": start.epoch, "checkpoint": str(ck_path), "last_loss": None,
                "world": world, "steps_per_epoch": spe, "steps_trained": 0, "nothing_to_do": True,
                "reason": f"the run is already at step {global_step}, which reaches {limit}"}

    runner: nn.Module = tm
    if world > 1:
        runner = nn.parallel.DistributedDataParallel(tm, device_ids=[info.device.index] if use_cuda else None)
    if cfg.compile:
        runner = torch.compile(runner, mode=cfg.compile_mode)

    total_steps = spe * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    if info.is_main:
        run.mkdir(parents=True, exist_ok=True)
        (run / "checkpoints").mkdir(exist_ok=True)
    rl = RunLog(run, info.is_main, cfg.tensorboard, total_steps, global_step, cfg.progress)
    if amp_note:
        rl.skipped.insert(0, ("amp", amp_note))
    rank_threads = all_gather_object(threads, info)  # every rank's CPU threads (a collective: all ranks)
    if info.is_main:  # what was asked, and what this run does (config.json "resolved")
        resolved = {"device": str(info.device), "amp": _amp_name(amp_dtype), "tensorboard": rl.tensorboard,
                    "num_workers": src.num_workers, "threads": rank_threads}
        for cb in callbacks:
            resolved.update(getattr(cb, "resolved", None) or {})
        cfg.save(run / "config.json", resolved=resolved)

    def handle(res: CallbackResult, step: int) -> None:
        for rec in res.records:
            rl.write(rec)
        for line in res.lines:
            rl.emit(line)
        rl.scalars(res.scalars, step)

    def check_flags(e) -> None:
        """Stop on a non-finite loss or too many failed samples (``e = (step, epoch, batch, flags,
        loss)``; ``flags`` summed over the ranks); nothing is saved after it."""
        if e is None:
            return
        flags = e[3].tolist()
        step_no, ep, bb, _, lval = e
        if flags[0]:
            msg = (f"non-finite loss ({lval.item()}) at step {step_no} (epoch {ep}, batch {bb}); "
                   f"stopping. The last good checkpoint is kept: "
                   f"{ck_path if last_saved >= 0 else 'none written yet'}"
                   f"{f' (step {last_saved})' if last_saved >= 0 else ''}. Try a lower lr, grad_clip, "
                   f"or amp=bf16 instead of fp16.")
            rl.emit(msg)
            rl.write({"event": "nonfinite", "step": step_no, "epoch": ep, "batch": bb})
            raise NonFiniteLoss(msg)
        if len(flags) > 1 and flags[1]:
            data_stop()

    def data_stop() -> None:
        rl.write(account.record(global_step))
        msg = (account.error_message() if account.over else
               f"another rank lost more than max_data_loss {cfg.max_data_loss:g} of epoch {account.epoch}'s "
               "samples; stopping (its names are in that rank's output). The last good checkpoint is kept")
        rl.emit(msg)
        raise DataLossError(msg)

    def save(epoch: int, b: int, pos: list[int]) -> None:
        nonlocal pending, last_saved
        check_flags(pending)
        pending = None
        rngs = all_gather_object(rng_state(info.device), info)
        all_pos = all_gather_object(list(pos), info)
        if info.is_main:
            data = {"epoch": epoch, "batches_in_epoch": b, "positions": all_pos, "world": world, "num_workers": nw,
                    "loader_workers": src.num_workers, "batch_size": cfg.batch_size, "global_batch": gb,
                    "steps_per_epoch": spe}
            atomic_save(checkpoint_payload(cfg=cfg, model=model, criterion=criterion, optimizer=optimizer,
                                           sched=sched, scaler=scaler, rngs=rngs, data=data, step=global_step,
                                           epoch=epoch + b / spe, classes=src.classes, num_classes=num_classes,
                                           callbacks={cb.name: cb.state_dict() for cb in callbacks}), ck_path)
        last_saved = global_step

    if info.is_main:
        rl.emit(f"maskkit train: {cfg.method} {cfg.backbone} (width {cfg.width}) on {info.device}, world {world}, "
                f"global batch {gb}, {spe} steps/epoch x {cfg.epochs} epochs, {num_classes} classes, "
                f"lr {base_lr:g}, amp {_amp_name(amp_dtype)}, threads/process {'/'.join(map(str, rank_threads))}"
                + (f", resumed at step {global_step}" if ckpt else ""))
        rl.write({"event": "start", "step": global_step, "world": world, "global_batch": gb,
                  "steps_per_epoch": spe, "device": str(info.device), "resumed": ckpt is not None,
                  "threads": rank_threads})
        rl.say_skipped(global_step)
        masker = getattr(src, "masker", None)
        if masker is not None:
            rl.emit(masker.describe())
        if init_report is not None:
            pre = Preprocess.from_config(cfg).describe()
            rl.emit(f"init: {cfg.init} ({init_report.label}, sha256 {init_report.sha256[:12]}), input {pre}, "
                    f"BN eps {cfg.bn_eps:g}; pretrained lr x{cfg.finetune_lr_mult:g}"
                    + (f", frozen for the first {cfg.freeze_steps} steps" if cfg.freeze_steps else "")
                    + "".join(f"; {n}" for n in init_report.notes))
            rl.write({"event": "init", "step": global_step, "path": cfg.init, "sha256": init_report.sha256,
                      "layout": init_report.label, "fresh": init_report.fresh, "notes": init_report.notes})
        note = getattr(getattr(src, "stream", None), "template_note", None)
        if note:  # crops of another template size, brought onto this run's (training.data.ShardStream)
            rl.emit(f"data: {note}")
            rl.write({"event": "data_template", "step": global_step, "note": note})
        if start.inexact:
            rl.emit(start.inexact)
            rl.write({"event": "resume_inexact", "step": global_step, "message": start.inexact})
        for cb in callbacks:
            handle(cb.start(global_step), global_step)

    pending = None  # CUDA: the last step's guard flags, read one step later
    acc = torch.zeros(len(METRIC_KEYS), dtype=torch.float64, device=info.device)
    zero = torch.zeros((), dtype=torch.float64, device=info.device)  # a metric the method lacks
    one = torch.ones((), dtype=torch.float64, device=info.device)  # the step count
    t_last, n_img = time.perf_counter(), 0
    last_saved = global_step if ckpt is not None else -1
    first_step = global_step
    last_loss = float("nan")
    stop = cfg.max_steps is not None and global_step >= cfg.max_steps
    epoch = start.epoch
    failed: dict[int, int] = {}  # epoch -> samples lost (all ranks)
    account = EpochAccount(epoch, spe * cfg.batch_size, cfg.max_data_loss)
    try:
        for epoch in range(start.epoch, cfg.epochs):
            if stop:
                break
            b0 = start.batch if epoch == start.epoch else 0
            resume_pos = start.positions if epoch == start.epoch and start.positions else None
            pos = list(resume_pos) if resume_pos else [0] * nw
            plan = src.epoch_plan(epoch)
            if plan is not None and info.is_main:
                rl.write({**plan, "step": global_step})
            it = src.epoch_iter(epoch, b0, resume_pos)
            account = EpochAccount(epoch, spe * cfg.batch_size, cfg.max_data_loss)
            tm.train()
            for b in range(b0, spe):
                batch = next(it)
                account.add(batch)
                pos[batch["worker"]] = batch["stream_pos"]
                lr = sched.set(optimizer, epoch + b / spe, global_step)
                frozen = bool(cfg.init) and global_step < cfg.freeze_steps
                for m in frozen_bns:  # the pretrained BatchNorms: running statistics kept while frozen
                    m.train(not frozen)
                if world == 1 and account.over:
                    data_stop()  # before the update: the last checkpoint stays the last good one
                images = batch["images"].to(info.device, non_blocking=True)
                labels = batch["labels"].to(info.device, non_blocking=True)
                route = FaceModel.route(batch["masked"], info.device)  # on the CPU flags: no sync
                masked = batch["masked"].to(info.device, non_blocking=True)
                with torch.autocast(info.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    loss, parts = runner(images, labels, masked, route)
                flags = (~torch.isfinite(loss.detach())).float().reshape(1)
                if world > 1:  # the data flag rides on the guard's all-reduce (a fill: no host copy)
                    flags = torch.cat([flags, torch.full((1,), float(account.over), device=info.device)])
                    dist.all_reduce(flags)
                entry = (global_step + 1, epoch, b, flags, loss.detach())
                if not use_cuda:
                    check_flags(entry)  # CPU: immediately, before the update
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip:
                    scaler.unscale_(optimizer)
                    # while the pretrained groups are frozen, their gradients do not count
                    torch.nn.utils.clip_grad_norm_(new_params if frozen else params, cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                global_step += 1
                n_img += images.shape[0]
                if use_cuda:
                    # CUDA: read the previous step's flags (long computed: no stall of the launch queue);
                    # the current ones are checked before any checkpoint is written
                    check_flags(pending)
                    pending = entry
                with torch.no_grad():
                    vals = [loss.detach()] + [parts.get(k, zero) for k in METRIC_KEYS[1:-1]]
                    acc += torch.stack([v.double().reshape(()) for v in vals] + [one])
                rl.step_done()
                done = cfg.max_steps is not None and global_step >= cfg.max_steps
                epoch_end = b == spe - 1
                if global_step % cfg.log_every == 0 or done or epoch_end:
                    if world > 1:
                        dist.all_reduce(acc)
                    a = dict(zip(METRIC_KEYS, acc.tolist()))
                    n = max(a["steps"], 1.0)
                    dt = time.perf_counter() - t_last
                    rec = {"step": global_step, "epoch": round(epoch + (b + 1) / spe, 4), "lr": lr,
                           "loss": a["loss"] / n, "cls": a["cls"] / n, "g": a["g"] / n, "kl": a["kl"] / n,
                           "mag": a["mag"] / n,
                           "sigma_masked": a["sigma_m_sum"] / a["sigma_m_n"] if a["sigma_m_n"] else None,
                           "sigma_unmasked": a["sigma_u_sum"] / a["sigma_u_n"] if a["sigma_u_n"] else None,
                           "img_s": n_img * world / dt if dt > 0 else None}
                    if use_cuda:
                        rec["mem_gb"] = torch.cuda.max_memory_allocated(info.device) / 2 ** 30
                    last_loss = rec["loss"]
                    rl.write(rec)
                    rl.emit(log_line(rec, cfg.method, lr))
                    rl.postfix(rec["loss"], lr)
                    acc.zero_()
                    t_last, n_img = time.perf_counter(), 0
                if epoch_end or done:
                    failed[epoch] = _epoch_record(rl, account, global_step, info)
                last = done or (epoch_end and epoch == cfg.epochs - 1)
                due = [cb for cb in callbacks if cb.due(global_step, epoch_end, last)]
                keep: list[str] = []
                if due:
                    check_flags(pending)  # never evaluate (or keep) a model after a non-finite step
                    pending = None
                    if info.is_main:
                        ctx = CallbackContext(global_step, epoch + (b + 1) / spe, model, cfg.to_dict(), info.device,
                                              run, ck_path)
                        for cb in due:
                            res = cb(ctx)
                            handle(res, global_step)
                            keep += [res.keep] if res.keep else []
                        tm.train()
                if epoch_end:
                    save(epoch + 1, 0, [0] * nw)
                elif done or due or (cfg.ckpt_every and global_step % cfg.ckpt_every == 0):
                    save(epoch, b + 1, pos)
                for name in keep:  # the checkpoint the figure was measured on
                    kept = keep_copy(ck_path, name)
                    rl.write({"event": "checkpoint_kept", "step": global_step, "name": name, "path": str(kept)})
                if done:
                    stop = True
                    break
            del it
        check_flags(pending)
    finally:
        rl.close()
    lost = sum(failed.values())
    if info.is_main and closing_line:
        rl.emit(f"done: step {global_step}, checkpoint {ck_path}"
                + (f"; {lost} sample(s) failed to load ({', '.join(f'epoch {e}: {n}' for e, n in failed.items() if n)})"
                   if lost else ""))
    return {"step": global_step, "epoch": epoch, "checkpoint": str(ck_path), "last_loss": last_loss,
            "world": world, "steps_per_epoch": spe, "steps_trained": global_step - first_step,
            "nothing_to_do": False, "data_failed": lost, "data_failed_by_epoch": failed,
            "data_failed_samples": account.names() if account.failed else "",
            "callbacks": {cb.name: cb.state_dict() for cb in callbacks} if info.is_main else {}}


def _epoch_record(rl: RunLog, account: EpochAccount, step: int, info: Any) -> int:
    """Write the epoch's ``data`` record (every rank's failures; a collective) and return the
    samples it lost."""
    recs = all_gather_object(account.record(step), info)
    if len(recs) > 1:
        merged = dict(recs[0], failed=sum(r["failed"] for r in recs),
                      failed_samples=[f for r in recs for f in r["failed_samples"]][:20])
        merged["failed_by_reason"] = {}
        for r in recs:
            for k, v in r["failed_by_reason"].items():
                merged["failed_by_reason"][k] = merged["failed_by_reason"].get(k, 0) + v
    else:
        merged = recs[0]
    rl.write(merged)
    if merged["failed"] or merged.get("mask_failed"):
        rl.emit(f"epoch {account.epoch}: {merged['failed']} sample(s) failed to load"
                + (f" ({account.names(5)})" if account.failed else "")
                + (f"; {merged['mask_failed']} planned mask(s) could not be fitted" if merged.get("mask_failed") else ""))
    return int(merged["failed"])
