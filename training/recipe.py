"""The training recipe: model + loss in one module, the SGD optimizer, the lr schedule, the log line.

**Step.** uint8 NHWC batch -> device -> the run's :class:`~maskkit.training.api.Preprocess`
(``(x - 127.5) / 127.5`` by default; NCHW, channels_last on CUDA) -> autocast -> model -> loss
(:class:`TrainModule`). lr follows the epoch-based step schedule (:class:`StepSchedule`:
``lr x global_batch / 128``, x0.1 at the milestones), set every step from the fractional epoch,
so it survives a change of world size.

**Fine-tuning** (``cfg.init``, ``maskkit train --init``): the optimizer has two groups, the
loaded parameters (``lr x finetune_lr_mult``, frozen for the first ``freeze_steps`` steps: lr 0,
weight decay 0, their BatchNorm layers in eval mode) and the new ones (:func:`build_optimizer`).
"""
from __future__ import annotations

import torch
from torch import nn

from maskkit.training.api import Preprocess, normalize
from maskkit.training.config import TrainConfig
from maskkit.training.model import FaceModel, Route

METRIC_KEYS = ("loss", "cls", "g", "kl", "mag", "sigma_m_sum", "sigma_m_n", "sigma_u_sum", "sigma_u_n", "steps")


class TrainModule(nn.Module):
    """Model + criterion in one module (what DDP wraps): ``forward(images_u8, labels, masked)``.

    ``images`` are uint8 NHWC (as the loader yields them) or already-normalised float NCHW.
    """

    def __init__(self, model: FaceModel, criterion: nn.Module, channels_last: bool = False,
                 preprocess: Preprocess | None = None):
        super().__init__()
        self.model, self.criterion, self.channels_last = model, criterion, channels_last
        self.preprocess = preprocess

    def forward(self, images: torch.Tensor, labels: torch.Tensor, masked: torch.Tensor, route: Route | None = None):
        """``route`` (optional): the two-stream route, precomputed from the loader's CPU flags by
        :meth:`FaceModel.route` so the forward never syncs the device. uint8 images get the run's
        :class:`~maskkit.training.api.Preprocess` (default ``(x - 127.5) / 127.5`` on RGB)."""
        x = normalize(images, self.preprocess) if images.dtype == torch.uint8 else images
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        mu, logvar = self.model.encode(x, masked, route)
        return self.criterion(mu, logvar, labels, masked)


class StepSchedule:
    """Epoch-based step decay with optional linear warm-up; ``state_dict`` for checkpoints.

    ``lr(e) = base x gamma^(#milestones <= e)`` (x ``e / warmup`` during warm-up), ``e`` the
    fractional epoch.
    """

    def __init__(self, base_lr: float, milestones: tuple[int, ...], gamma: float = 0.1, warmup_epochs: float = 0.0):
        self.base_lr, self.milestones, self.gamma, self.warmup = base_lr, tuple(milestones), gamma, warmup_epochs
        self.last_epoch, self.last_lr = 0.0, base_lr

    def lr_at(self, epoch: float) -> float:
        lr = self.base_lr * self.gamma ** sum(epoch >= m for m in self.milestones)
        if self.warmup > 0 and epoch < self.warmup:
            lr *= max(epoch / self.warmup, 1e-3)
        return lr

    def set(self, optimizer: torch.optim.Optimizer, epoch: float, step: int = 0) -> float:
        """Set every group's lr for the step ``step`` (0-based) at fractional epoch ``epoch``.

        A group's ``lr_mult`` (default 1) scales the schedule's lr; a group with
        ``freeze_steps`` N is frozen while ``step < N``: lr 0 and weight decay 0 (its
        ``base_weight_decay`` afterwards). Returns the schedule's lr.
        """
        self.last_epoch, self.last_lr = float(epoch), self.lr_at(epoch)
        for g in optimizer.param_groups:
            frozen = step < g.get("freeze_steps", 0)
            g["lr"] = 0.0 if frozen else self.last_lr * g.get("lr_mult", 1.0)
            if "base_weight_decay" in g:
                g["weight_decay"] = 0.0 if frozen else g["base_weight_decay"]
        return self.last_lr

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "milestones": list(self.milestones), "gamma": self.gamma,
                "warmup": self.warmup, "last_epoch": self.last_epoch, "last_lr": self.last_lr}

    def load_state_dict(self, d: dict) -> None:
        self.last_epoch, self.last_lr = float(d["last_epoch"]), float(d["last_lr"])


def build_optimizer(tm: TrainModule, cfg: TrainConfig, base_lr: float) -> tuple[torch.optim.SGD, list[nn.Module]]:
    """SGD over the trainable parameters, and the BatchNorm layers to hold in eval mode while frozen.

    Without ``cfg.init``: one group (as every run before fine-tuning existed, so their optimizer
    states still load). With it: group 0 holds the parameters loaded from the file
    (:func:`~maskkit.training.checkpoints.pretrained_names`), ``lr_mult = cfg.finetune_lr_mult``,
    ``freeze_steps = cfg.freeze_steps``; group 1 the new ones (a fresh sigma head, the class
    centres), ``lr_mult = 1``. Freezing is lr 0 and weight decay 0 for group 0
    (:meth:`StepSchedule.set`) with its BatchNorm layers in eval mode; ``requires_grad`` is never
    toggled (the optimizer state and DDP's buckets stay the same across the unfreeze step). SGD's
    momentum buffer still accumulates the frozen parameters' gradients, so at the unfreeze step
    it holds their steady-state velocity at the pretrained weights.
    """
    from maskkit.training.checkpoints import pretrained_names

    pre = {f"model.{n}" for n in pretrained_names(tm.model, cfg)}
    named = [(n, p) for n, p in tm.named_parameters() if p.requires_grad]
    if not pre:
        return torch.optim.SGD([p for _, p in named], lr=base_lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay), []
    groups = [
        {"params": [p for n, p in named if n in pre], "name": "pretrained", "lr_mult": cfg.finetune_lr_mult,
         "freeze_steps": cfg.freeze_steps, "base_weight_decay": cfg.weight_decay},
        {"params": [p for n, p in named if n not in pre], "name": "new", "lr_mult": 1.0, "freeze_steps": 0,
         "base_weight_decay": cfg.weight_decay},
    ]
    bns = [m for n, m in tm.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and any(f"{n}.{pn}" in pre for pn, _ in m.named_parameters())] if cfg.freeze_steps else []
    return torch.optim.SGD(groups, lr=base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay), bns



def log_line(rec: dict, method: str, lr: float) -> str:
    """The human-readable training log line of one log record.

    Only the parts ``method`` has are shown: ``g`` (the MagFace regulariser) for magface,
    dul-mag and maskdul; ``kl`` and the mean ``|sigma|`` for the DUL methods (dul, dul-mag,
    maskdul). ArcFace shows neither.
    """
    fm = lambda v, f=".3g": "-" if v is None else format(v, f)  # noqa: E731
    parts = [f"step {rec['step']} ep {rec['epoch']:.2f} loss {fm(rec['loss'], '.4f')} cls {fm(rec['cls'], '.4f')}"]
    if method in ("magface", "dul-mag", "maskdul"):
        parts.append(f"g {fm(rec.get('g'), '.4f')}")
    if method in ("dul", "dul-mag", "maskdul"):
        parts.append(f"kl {fm(rec.get('kl'))} |sigma| m {fm(rec.get('sigma_masked'))} u {fm(rec.get('sigma_unmasked'))}")
    parts.append(f"|f| {fm(rec.get('mag'))} lr {lr:.3g} img/s {fm(rec.get('img_s'), '.1f')}")
    return " ".join(parts)

