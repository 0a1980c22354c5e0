"""Configuration of ``maskkit train``: one dataclass, JSON round-trip.

The defaults are the MaskDUL paper's recipe (ICASSP 2023): IResNet-50, SGD with momentum 0.9
and weight decay 5e-4, dropout 0.4, batch 128, lr 0.05 (scaled linearly with the global batch
over 128) divided by 10 at epochs 10, 18 and 25, 30 epochs, RandomCrop + horizontal flip,
inputs normalised as ``(x - 127.5) / 127.5``. Choices the paper leaves open are options here,
each documented on its field.

Example::

    >>> cfg = TrainConfig(data="shards/", out="runs/maskdul", method="maskdul")
    >>> TrainConfig.from_json(cfg.to_json()) == cfg
    True
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maskkit.training.config_values import ConfigValueError, coerce_fields
from maskkit.training.config_values import check_numbers as _check_numbers, three as _three

METHODS = ("arcface", "magface", "dul", "dul-mag", "maskdul")
BACKBONES = ("r18", "r34", "r50", "r100")
#: Residual blocks in each of the four stages of every backbone (insightface arcface_torch iresnet).
BACKBONE_BLOCKS = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3)}
AMP_MODES = ("auto", "bf16", "fp16", "none")
#: Mask sides a validation set can be read at (``maskkit eval --mask-side``).
VAL_SIDES = ("none", "one", "both")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: keys of older ``config.json`` files -> the keys that replaced them (each gets the old value,
#: so an old run keeps the loss it was trained with).
#: ``seed`` range: numpy's ``default_rng``/``RandomState`` take 0..2**32 - 1.
SEED_MAX = 2**32 - 1
#: ``width``'s floor: the stem (64 channels at width 1) keeps at least this many channels, so
#: width >= 0.125 (``--width 1e-9`` built a net of 1 channel per stage; 0.25, 16 channels, is the
#: narrow net of the tests).
MIN_STEM_CHANNELS = 8
LEGACY_KEYS = {"easy_margin": ("mag_easy_margin", "arc_easy_margin")}


def usable_cores() -> int:
    """CPU cores this process may run on: ``os.sched_getaffinity`` (honours taskset and cgroup
    CPU sets), ``os.cpu_count`` where that is missing (macOS, Windows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def default_num_workers() -> int:
    """``min(4, usable_cores())``: the default loader workers (more workers than cores only make
    torch warn and the loader slower)."""
    return min(4, usable_cores())


@dataclass
class TrainConfig:
    """All settings of one training run (stored as ``RUN/config.json``).

    ``config.json`` holds the requested values plus ``resolved``: what the run actually used
    (``device``; ``amp``, ``none`` when autocast is off, e.g. on CPU; ``tensorboard``, false when
    it is not installed; ``num_workers``; ``val_best``, the rule that keeps ``best.pt``). Old files load: missing keys take their defaults,
    unknown keys are ignored with a warning (:meth:`load`).

    Method table (the paper's baselines, its ablation and the full model):

    ========  ============  ==========================  ===========
    method    head          loss                        streams
    ========  ============  ==========================  ===========
    arcface   mu only       ArcFace(mu)                 1
    magface   mu only       MagFace(mu)                 1
    dul       mu, sigma     ArcFace(s) + lambda KL      1
    dul-mag   mu, sigma     MagFace(s) + lambda KL      1
    maskdul   mu, sigma     MagFace(s) + lambda H-KLD   2
    ========  ============  ==========================  ===========

    with ``s = mu + eps * sigma`` (eps ~ N(0, I)) in training and ``mu`` at test time.
    """

    # -- data / run ---------------------------------------------------------------------------
    data: str = ""
    """Shard folder (FORMAT.md): ``manifest.json`` + ``<split>-%06d.tar``."""
    out: str = "runs/train"
    """Run directory: ``config.json``, ``checkpoints/last.pt``, ``log.jsonl``, ``tb/``."""
    split: str = "train"
    """Shard name prefix to read (``train-*.tar``)."""
    method: str = "maskdul"
    backbone: str = "r50"
    width: float = 1.0
    """Channel multiplier of the IResNet (1.0 = insightface; 0.25 gives a narrow net for tests/CPU)."""
    embedding_size: int = 512
    dropout: float = 0.4
    two_stream: bool | None = None
    """Separate start blocks for face / masked face. ``None``: True for ``maskdul`` only."""
    split_point: str = "layer1.0"
    """Last module that is branch-specific in the two-stream model. ``"stem"`` (conv-BN-PReLU
    only), ``"layer1.0"`` (default: the stem plus the first residual block, our reading of the
    paper's "start ResBlock"), ``"layer1"`` (the whole first stage), or any ``"layerK.J"``."""

    # -- optimisation (paper recipe) -----------------------------------------------------------
    batch_size: int = 128
    """Per-process batch; global batch = batch_size x world size."""
    lr: float = 0.05
    lr_base_batch: int = 128
    """lr is scaled by global_batch / lr_base_batch (linear scaling rule)."""
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 30
    milestones: tuple[int, ...] = (10, 18, 25)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    """Linear warm-up (not in the paper; 0 keeps the paper's recipe)."""
    grad_clip: float | None = 5.0
    """Clip the global gradient L2 norm (None: off). Not in the paper; a guard for the MagFace
    g-term at initialisation and for large-batch GPU runs."""

    # -- losses --------------------------------------------------------------------------------
    arc_scale: float = 64.0
    arc_margin: float = 0.5
    mag_la: float = 10.0
    mag_ua: float = 110.0
    mag_lm: float = 0.45
    mag_um: float = 0.8
    mag_lambda_g: float = 35.0
    mag_easy_margin: bool = True
    """Margin mode of ``magface``, ``dul-mag`` and ``maskdul``: easy (default, as MagFace's code:
    ``MagLinear(easy_margin=True)`` in IrvingMeng/MagFace ``models/magface.py``, never overridden
    by ``run/trainer.py``) applies ``cos(theta + m)`` only where ``cos theta > 0``. False: the
    ``cos(pi - m)`` threshold of :func:`~maskkit.training.losses.margin_logits`."""
    arc_easy_margin: bool = False
    """Margin mode of ``arcface`` and ``dul``: False (default, insightface's original ArcFace) or
    easy. Old ``config.json`` files carry one ``easy_margin`` key: it sets both (``LEGACY_KEYS``)."""
    kl_lambda: float = 0.01
    kl_reduction: str = "sum"
    """``"sum"`` over the 512 dimensions (default, as DUL's reference code) or ``"mean"``. With
    ``mean`` the same lambda weighs the KL 512x less."""
    xi_detach: bool = True
    """Detach xi = h(||sigma||) in H-KLD (default): xi is a per-sample prior width, a target."""
    hkl_l_xi: float = 0.5
    hkl_u_xi: float = 1.0
    hkl_l_sigma: float = 10.0
    hkl_u_sigma: float = 25.0

    # -- augmentation / input ------------------------------------------------------------------
    crop_pad: int = 4
    """RandomCrop: zero-pad by this many pixels then crop back to the input size (0: off)."""
    hflip: bool = True
    image_size: tuple[int, int] = (112, 112)

    # -- input preprocessing / BatchNorm (travel with the model: embed, eval, export apply them) --
    input_color: str = "RGB"
    """Channel order the network takes: ``RGB`` (maskkit, arcface_torch) or ``BGR`` (MagFace's
    inference feeds ``cv2.imread`` output). Images are always given to maskkit as RGB."""
    input_scale: float = 1.0
    """Input ``x`` (uint8 values 0..255) -> ``(x * input_scale - input_mean) / input_std``."""
    input_mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    """Per channel, in the network's channel order, after ``input_scale``."""
    input_std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    bn_eps: float = 1e-5
    """Epsilon of every BatchNorm (arcface_torch 1e-5; MagFace 2e-5)."""

    # -- fine-tuning (maskkit train --init) ------------------------------------------------------
    init: str | None = None
    """Weights the run starts from (``--init``): arcface_torch ``backbone.pth`` / ``model.pt`` /
    ``checkpoint_gpu_N.pt``, a MagFace checkpoint, or a maskkit run (see
    :mod:`~maskkit.training.checkpoints`). Read once, when the run starts; ``--resume`` never
    reads it again (the checkpoint wins)."""
    init_sha256: str | None = None
    """SHA-256 of the ``init`` file, recorded when the run starts."""
    init_layout: str | None = None
    """What ``init`` was read as, e.g. ``arcface_torch r50`` (recorded when the run starts)."""
    init_sigma_head: bool = False
    """The ``init`` file carried a sigma head (a maskkit DUL run) and it was copied; False: the
    sigma head started fresh and trains at the full lr as a new part."""
    finetune_lr_mult: float = 0.1
    """lr multiplier of the parameters loaded from ``init`` (the new ones, a fresh sigma head and
    the class centres, use 1.0). Ignored without ``init``."""
    freeze_steps: int = 0
    """Freeze the parameters loaded from ``init`` for the first N optimiser steps: lr 0 and weight
    decay 0 for their parameter groups and their BatchNorm layers in eval mode (``requires_grad``
    is never toggled). Ignored without ``init``."""

    # -- data loading --------------------------------------------------------------------------
    num_workers: int | None = None
    """DataLoader worker processes per rank. ``None`` (default): :func:`default_num_workers`,
    ``min(4, usable CPU cores)``, resolved when the run starts (``config.json`` keeps ``None`` and
    records the count under ``resolved``); a resumed run reuses the checkpoint's count, so resume
    stays exact on a machine with another number of cores."""
    shuffle_buffer: int = 2000
    verify_data: bool = True
    """Check every shard's sha256 against the manifest before step 0 (``--no-verify``: sizes only).
    A damaged set is refused either way; see :mod:`~maskkit.training.sources`."""
    max_data_loss: float = 0.01
    """Stop with an error once more than this share of an epoch's samples (on one rank) failed to
    load during training (a disk error mid-run); each failure is counted and named in
    ``log.jsonl``. 0 stops at the first."""

    # -- masks drawn while training (maskkit train --online-masks) ------------------------------
    online_masks: bool = False
    """Draw masks in the loader workers on an unmasked set (``synth --ratio 0``), new ones every
    epoch (:mod:`~maskkit.training.online_masks`). A set with stored masked samples is refused."""
    mask_ratio: float = 0.5
    """With ``online_masks``: the share of each identity's samples masked per epoch."""
    mask_styles: tuple[str, ...] | None = None
    """With ``online_masks``: the styles to balance (None: all five, as ``synth``)."""

    # -- validation while training (maskkit train --val) ---------------------------------------
    val: tuple[str, ...] = ()
    """Verification sets evaluated while training, as ``maskkit eval`` reads them: a ``.bin``,
    or ``PAIRS_FILE:ROOT`` (a pairs file and its image folder). Needs the validation callback
    that ``maskkit train`` builds (:mod:`maskkit.training.eval.validation`)."""
    val_every: int | None = None
    """Validate every N optimiser steps (None: at the end of every epoch); always at the run's end."""
    val_sides: tuple[str, ...] = ("none", "one")
    """Mask sides of every ``val`` set (``one``: the second image of each pair masked, M-LFW)."""
    val_best: str | None = None
    """Which figure picks ``checkpoints/best.pt``: ``SET:SIDE[:METRIC]`` (METRIC ``accuracy``,
    ``auc`` or ``val``; higher is better). None: the first ``val`` set at side ``one`` (or the
    first side given), ``accuracy``. The rule in effect is recorded in the log and checkpoints."""
    val_batch_size: int = 64
    """Images per forward pass in validation (``maskkit eval --batch-size``)."""

    # -- engine --------------------------------------------------------------------------------
    device: str = "auto"
    """``auto`` (cuda if available), ``cpu``, ``cuda``, ``cuda:N``."""
    amp: str = "auto"
    """``auto`` (default: bf16 autocast on a GPU that has it, else fp16 + GradScaler; off on CPU,
    silently), ``bf16`` autocast, ``fp16`` autocast + GradScaler, or ``none``. An explicit
    ``bf16``/``fp16`` on CPU is off, said once (``config.json``'s ``resolved.amp`` is ``none``)."""
    channels_last: bool = True
    """channels_last memory format on CUDA (CPU runs keep NCHW)."""
    compile: bool = False
    """``torch.compile`` the (DDP-wrapped) model and loss. The whole step traces as one graph with
    no graph break (torch 2.13, both routes); the two-stream branch sizes change from batch to
    batch, so dynamo compiles a second, size-generic graph on the second size it sees (plus one
    each for an all-plain and an all-masked batch) and then reuses them."""
    compile_mode: str = "default"
    """``torch.compile`` mode: ``default``, ``reduce-overhead`` (CUDA graphs), ``max-autotune``
    or ``max-autotune-no-cudagraphs`` (longer compile, tuned GEMM/conv kernels). The modes with
    CUDA graphs record one graph per distinct two-stream split of a batch (up to batch + 1 of
    them, each with its own memory pool), so ``max-autotune-no-cudagraphs`` is the one to try
    for the two-stream methods. None of the non-default modes has been measured on a GPU yet."""
    threads: int | None = None
    """CPU threads of each training process (``torch.set_num_threads``). None: the process's
    current count (``OMP_NUM_THREADS``; ``--nproc N`` sets it to cores // N when unset). The
    engine sets it, records it per rank (``config.json`` ``resolved.threads``, the log's ``start``
    record) and restores the caller's count."""
    seed: int = 0
    deterministic: bool = False
    """Deterministic cuDNN/algorithms (slower); CPU runs are deterministic anyway."""
    ckpt_every: int = 1000
    """Checkpoint every N optimiser steps (and at each epoch end, each validation and the run's
    end); 0: only at those."""
    log_every: int = 50
    max_steps: int | None = None
    """Stop after this many optimiser steps in total (tests, smoke runs)."""
    steps_per_epoch: int | None = None
    """Override the epoch length (default: manifest num_samples // global batch)."""
    progress: bool = True
    tensorboard: bool | None = None
    """Write TensorBoard scalars to ``RUN/tb`` (the ``tensorboard`` package, in the ``train``
    extra). None (default): when the package is installed, silently off otherwise; True: asked
    for, and a run without the package says so once; False: off. ``log.jsonl`` is always written."""

    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes stored with the run (e.g. the command line)."""

    # ------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        _check_numbers(self)
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {self.compile_mode!r}")
        if self.kl_reduction not in ("sum", "mean"):
            raise ValueError(f"kl_reduction must be 'sum' or 'mean', got {self.kl_reduction!r}")
        if self.input_color not in ("RGB", "BGR"):
            raise ValueError(f"input_color must be 'RGB' or 'BGR', got {self.input_color!r}")
        self.input_mean = _three(self.input_mean, "input_mean")  # type: ignore[assignment]
        self.input_std = _three(self.input_std, "input_std")  # type: ignore[assignment]
        if min(self.input_std) <= 0 or self.input_scale <= 0 or self.bn_eps <= 0:
            raise ValueError("input_std, input_scale and bn_eps must be > 0")
        if self.finetune_lr_mult < 0 or self.freeze_steps < 0:
            raise ValueError("finetune_lr_mult and freeze_steps must be >= 0")
        try:
            self.milestones = tuple(int(m) for m in (self.milestones or ()))
        except (TypeError, ValueError):
            raise ValueError(f"milestones must be whole epochs, e.g. [10, 18, 25], got {self.milestones!r}") from None
        self.image_size = tuple(int(s) for s in self.image_size)  # type: ignore[assignment]
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.threads is not None and int(self.threads) < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads!r}")
        if isinstance(self.val, str):
            self.val = (self.val,)
        self.val = tuple(str(v) for v in self.val)
        self.val_sides = tuple(self.val_sides)
        bad = [s for s in self.val_sides if s not in VAL_SIDES]
        if bad or not self.val_sides:
            raise ValueError(f"val_sides must be some of {VAL_SIDES}, got {list(self.val_sides)}")
        if self.val_every is not None and int(self.val_every) < 1:
            raise ValueError(f"val_every must be >= 1 or None, got {self.val_every!r}")
        if self.val_batch_size < 1:
            raise ValueError("val_batch_size must be >= 1")
        if self.mask_styles is not None:
            self.mask_styles = tuple(self.mask_styles)
        if not 0.0 <= float(self.mask_ratio) <= 1.0:
            raise ValueError(f"mask_ratio must be in 0..1, got {self.mask_ratio!r}")
        if not 0.0 <= float(self.max_data_loss) <= 1.0:
            raise ValueError(f"max_data_loss must be in 0..1, got {self.max_data_loss!r}")

    def check(self) -> "TrainConfig":
        """Refuse settings a run cannot train with (``maskkit train`` calls it before anything is
        written; :func:`~maskkit.training.loop.train` again). Kept apart from construction so that
        every old ``config.json`` and checkpoint still loads for eval, embed and export.

        Returns:
            ``self``.

        Raises:
            ValueError: one line naming the first bad key, its value and the allowed range.
        """
        for f in dataclasses.fields(self):  # inf / 1e400 pass every "> 0" below
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{f.name} must be a finite number, got {v!r}")
            if str(f.type).startswith("bool") and not (v is None or isinstance(v, bool)):  # "no" is truthy
                raise ValueError(f"{f.name} must be true or false, got {v!r}")
        if not 0 <= self.seed <= SEED_MAX:
            raise ValueError(f"seed must be in 0..{SEED_MAX} (numpy's seed range), got {self.seed!r}")
        if not self.width * 64 >= MIN_STEM_CHANNELS:  # also refuses 0, negatives and nan
            raise ValueError(f"width must be >= {MIN_STEM_CHANNELS / 64} (the stem's 64 x width channels >= "
                             f"{MIN_STEM_CHANNELS}), got {self.width!r}")
        positive = ("lr", "gamma")
        at_least_1 = ("embedding_size", "lr_base_batch", "epochs", "log_every", "shuffle_buffer",
                      "max_steps", "steps_per_epoch")
        at_least_0 = ("ckpt_every", "momentum", "weight_decay", "warmup_epochs", "crop_pad", "num_workers", "freeze_steps",
                      "finetune_lr_mult")
        for key in positive + at_least_1 + at_least_0:
            v = getattr(self, key)
            if v is None and key in ("max_steps", "steps_per_epoch", "num_workers"):
                continue
            if key in positive and not v > 0:
                raise ValueError(f"{key} must be > 0, got {v!r}")
            if key in at_least_1 and not v >= 1:
                raise ValueError(f"{key} must be >= 1" + (" or unset" if key in ("max_steps", "steps_per_epoch")
                                                         else "") + f", got {v!r}")
            if key in at_least_0 and not v >= 0:
                raise ValueError(f"{key} must be >= 0, got {v!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None (off), got {self.grad_clip!r}")
        if any(m < 1 for m in self.milestones):
            raise ValueError(f"milestones must be epochs >= 1, got {list(self.milestones)}")
        from maskkit.io.crop_template import MAX_SIDE, MIN_SIDE

        h, w = self.image_size if len(self.image_size) == 2 else (0, -1)
        if h != w or not MIN_SIDE <= h <= MAX_SIDE:
            raise ValueError(f"image_size must be a square of side {MIN_SIDE}..{MAX_SIDE} (the network's input), "
                             f"got {list(self.image_size)}")
        if self.uses_two_stream:
            names = ["stem"] + [f"layer{i + 1}.{j}" for i, n in enumerate(BACKBONE_BLOCKS[self.backbone])
                                for j in range(n)]
            stages = {n.split(".")[0] for n in names[1:]}
            if self.split_point not in names and self.split_point not in stages:
                last = names[-1]
                raise ValueError(f"split_point {self.split_point!r} is not a unit of {self.backbone}: use stem, "
                                 f"layer1..layer4 or layerK.J (layer1.0 .. {last})")
        if self.val_best is not None and not self.val:
            raise ValueError(f"val_best {self.val_best!r} needs a validation set (--val)")
        return self

    # -- derived -------------------------------------------------------------------------------
    @property
    def uses_dul(self) -> bool:
        """True when the model has a sigma head (dul, dul-mag, maskdul)."""
        return self.method in ("dul", "dul-mag", "maskdul")

    @property
    def uses_two_stream(self) -> bool:
        return self.method == "maskdul" if self.two_stream is None else bool(self.two_stream)

    # -- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        d["image_size"] = list(self.image_size)
        d["input_mean"] = list(self.input_mean)
        d["input_std"] = list(self.input_std)
        d["val"] = list(self.val)
        d["val_sides"] = list(self.val_sides)
        d["mask_styles"] = None if self.mask_styles is None else list(self.mask_styles)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any], strict: bool = True) -> "TrainConfig":
        """A config from a dict; missing keys take their defaults and ``resolved`` (the run
        record :meth:`save` adds) is dropped. Every value is coerced by its field's type
        (:mod:`~maskkit.training.config_values`: ``"no"`` -> False, ``"5"`` -> 5, ``5`` -> ``(5,)``
        for a list; ``strict=False``, a saved run, reads values as the run was trained with them).
        An old key of :data:`LEGACY_KEYS` sets its new keys
        (``easy_margin`` -> ``mag_easy_margin`` and ``arc_easy_margin``).

        Raises:
            ValueError: ``strict`` and a key that is not a field (with ``strict=False`` such
                keys, from an older or newer maskkit, are ignored with a logged warning), naming
                the nearest known key; ``strict`` and a value its field does not take
                (:class:`~maskkit.training.config_values.ConfigValueError`); an old key beside a
                new one that says otherwise.
        """
        if not isinstance(d, dict):
            raise ValueError(f"a config is a JSON object of TrainConfig keys, not a {type(d).__name__}")
        d = dict(d)
        for old, new in LEGACY_KEYS.items():
            if old in d:
                value = d.pop(old)
                clash = [k for k in new if k in d and d[k] != value]
                if clash:
                    raise ValueError(f"{old}={value!r} (the old name of {', '.join(new)}) conflicts with "
                                     + ", ".join(f"{k}={d[k]!r}" for k in clash))
                d.update({k: value for k in new})
        types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k != "resolved"}
        unknown = sorted(set(d) - set(types))
        if unknown and strict:
            import difflib

            near = difflib.get_close_matches(unknown[0], list(types), n=1)
            raise ConfigValueError(unknown[0], f"unknown TrainConfig key {unknown[0]!r}"
                                   + (f" (did you mean {near[0]!r}?)" if near else "")
                                   + (f" (and {', '.join(unknown[1:])})" if unknown[1:] else ""))
        if unknown:
            logging.getLogger(__name__).warning("ignoring config keys this maskkit does not know: %s",
                                                ", ".join(unknown))
        return cls(**coerce_fields({k: v for k, v in d.items() if k in types}, types, strict))

    @classmethod
    def from_json(cls, text: str, strict: bool = True) -> "TrainConfig":
        return cls.from_dict(json.loads(text), strict=strict)

    def save(self, path: str | Path, resolved: dict[str, Any] | None = None) -> None:
        """Write the config as JSON; ``resolved`` (what a run actually uses, e.g. ``device``,
        ``amp``, ``tensorboard``, ``num_workers``) is stored beside the requested values."""
        d = self.to_dict()
        if resolved is not None:
            d["resolved"] = dict(resolved)
        Path(path).write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        """Read a ``config.json``: an older file (missing keys) or a newer one (unknown keys,
        ignored with a warning) still loads."""
        return cls.from_json(Path(path).read_text(), strict=False)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def field_types() -> dict[str, str]:
    """TrainConfig field name -> its declared type's text (``"float | None"``)."""
    return {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}


#: What ``maskkit train`` writes into its run folder (``--out``), and ``maskkit eval`` adds
#: (``eval/``): a new run into a folder that holds any of these replaces them only with
#: ``--overwrite`` (:func:`claim_run_dir`).
RUN_FILES = ("config.json", "launch_config.json", "log.jsonl", "checkpoints", "tb", "eval")


def claim_run_dir(out: str | Path, resume: bool, overwrite: bool, remove: bool = True) -> list[Path]:
    """Check that a new training run may start in ``out``.

    A folder holding a run (any of :data:`RUN_FILES`) is refused unless ``resume`` (continue it)
    or ``overwrite`` (remove the old run's files first -- its checkpoints, log, TensorBoard
    events and ``eval/`` records, which ``eval --compare`` would otherwise show beside the new
    model; other files in the folder are left alone). Under ``torchrun`` only rank 0 checks and
    removes. ``remove=False`` only checks (the command checks its data before an old run goes).

    Returns:
        The run files found (removed when ``overwrite`` and ``remove``; empty with ``resume``).

    Raises:
        ValueError: both ``resume`` and ``overwrite``.
        maskkit.util.files.OutputExistsError: ``out`` holds a run and neither was given.
    """
    import os

    from maskkit.util.files import claim_outputs

    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    if resume or int(os.environ.get("RANK", "0") or 0) != 0:
        return []
    run = Path(out)
    return claim_outputs([run / n for n in RUN_FILES], overwrite, "a training run", remove=remove,
                         alternatives="--resume to continue it", where=run)
