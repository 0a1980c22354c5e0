"""Checkpoint layouts of arcface_torch and MagFace IResNets, as data; conversion to and from maskkit.

A user's own model comes in (``maskkit train --init``, ``maskkit eval/embed/export --model``) and
maskkit's go out (``maskkit export --format arcface-torch``) through one canonical form: the
**arcface_torch key layout** of the IResNet (stem ``conv1``/``bn1``/``prelu``, blocks
``layerS.B.*``, head ``bn2``/``fc``/``features``). maskkit's own modules rename those keys:
:class:`~maskkit.training.iresnet.IResNet` as ``stem.{0,1,2}`` / ``head.*``, and
:class:`~maskkit.training.model.FaceModel` as ``branch_face.I.*`` / ``branch_masked.I.*`` (the
start block, units ``0..k``), ``trunk.J.*`` (unit ``k + 1 + J``) and ``mu_head.*`` /
``logvar_head.*``, where unit 0 is the stem and units 1.. are the residual blocks in order.

**What is read** (:func:`read_weights`), always with ``torch.load(weights_only=True)``, floating
tensors cast to fp32:

==========================  ==============================================================
arcface_torch               ``backbone.pth`` / ``model.pt``: the backbone's plain
                            ``state_dict``; ``checkpoint_gpu_N.pt``: a dict whose
                            ``state_dict_backbone`` is that ``state_dict`` (its partial-fc
                            classifier, optimizer and scheduler are ignored).
MagFace                     a dict whose ``state_dict`` holds the backbone under
                            ``module.features.`` (``run/trainer.py``: ``DataParallel`` around
                            the whole builder) or ``features.module.`` (``run/trainer_dist.py``:
                            DDP around ``features``), plus the MagLinear classifier,
                            ``module.fc.weight`` (512 x C) or ``parallel_fc.weight`` (C x 512),
                            which is *not* the backbone's ``fc`` and is dropped (with a note).
maskkit                     a run folder or ``checkpoints/last.pt`` (``config`` + ``model``).
==========================  ==============================================================

**Architecture inferred from the weights** (:func:`infer_arch`): depth from the number of blocks
per stage, width from the stem's channels (``conv1.weight`` rows / 64), embedding size from
``fc`` rows, input side from ``fc`` columns (``C4 x (side / 16)^2``). The full key and shape list
is then checked against :func:`arcface_torch_layout`; any difference is a one-line
:class:`WeightsError` naming the missing and unexpected keys.

**Preprocessing and BatchNorm eps travel with the weights** (stored in the run's config as
``input_color`` / ``input_scale`` / ``input_mean`` / ``input_std`` / ``bn_eps``, applied by
``embed``, ``eval``, ``export`` and the ONNX metadata):

==============  =====  =====================================  ========
source          order  network input from uint8 x             BN eps
==============  =====  =====================================  ========
arcface_torch   RGB    (x / 255 - 0.5) / 0.5 = (x - 127.5) / 127.5  1e-5
MagFace         BGR    x / 255 (``ToTensor``, mean 0, std 1)  2e-5
==============  =====  =====================================  ========

Length: one concern, the layout, in its three directions (read and check foreign files, map keys
to and from maskkit's modules for ``--init``, write arcface_torch files); the key map is shared by
all three, and each public function documents the reference it follows.

References (read through the project's search tool; no code copied):

* insightface ``recognition/arcface_torch/backbones/iresnet.py`` (commit 04a433f154de): module
  names, registration order, BN eps 1e-05, ``fc_scale = 7 * 7``, ``features`` BN1d scale
  frozen at 1;
* insightface ``recognition/arcface_torch/train_v2.py`` (commit 0696141697f7): ``model.pt`` is
  ``backbone.module.state_dict()``; ``checkpoint_gpu_{rank}.pt`` holds ``epoch``,
  ``global_step``, ``state_dict_backbone``, ``state_dict_softmax_fc``, ``state_optimizer``,
  ``state_lr_scheduler``;
* insightface ``recognition/arcface_torch/inference.py`` (commit 6c268de606fc): BGR->RGB,
  ``div(255).sub(0.5).div(0.5)``;
* MagFace ``models/iresnet.py`` (commit 719001a07b3c): same module names, BN eps 2e-05
  everywhere (momentum 0.9 in PyTorch's convention: a training-time detail maskkit does not
  copy), ``Dropout2d`` before the flatten, trainable ``features`` scale, an ``avgpool`` without
  parameters;
* MagFace ``models/magface.py`` (commit 719001a07b3c): ``MagLinear.weight`` is
  ``(embedding_size, num_classes)``; ``models/parallel_maglinear.py`` (commit 74891108621d):
  ``(num_classes, embedding_size)``;
* MagFace ``run/trainer.py`` (commit 2952266cea54) and ``run/trainer_dist.py`` (commit
  74891108621d): saved dict ``epoch``, ``arch``, ``state_dict``, ``optimizer``;
  ``parallel_module_name = 'parallel_fc'``;
* MagFace ``inference/network_inf.py`` (commit a1311fb10154) strips either prefix;
  ``inference/gen_feat.py`` (commit 4fa5bc63227d): ``cv2.imread`` (BGR), ``ToTensor``,
  ``Normalize(mean 0, std 1)``.
"""
from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskkit.training.iresnet import LAYERS, stage_channels

log = logging.getLogger(__name__)

LAYOUTS = ("arcface_torch", "magface", "maskkit")

# ------------------------------------------------------------------------------------------------
# the layout, as data
# ------------------------------------------------------------------------------------------------
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
"""A BatchNorm's state_dict entries, in order; ``num_batches_tracked`` is a 0-d int64 buffer
(optional when reading: files written by old torch versions lack it)."""

# Entries of each part, in arcface_torch's registration order. ``(name, "X")`` is a BatchNorm
# over X channels (its five BN_KEYS); ``(name, shape)`` is one tensor. Symbols: C = the part's
# channels, I / P = a block's inplanes / planes, D = embedding size, F = fc inputs (C4 x side^2).
STEM = (("conv1.weight", ("C", 3, 3, 3)), ("bn1", "C"), ("prelu.weight", ("C",)))
BLOCK = (("bn1", "I"), ("conv1.weight", ("P", "I", 3, 3)), ("bn2", "P"), ("prelu.weight", ("P",)),
         ("conv2.weight", ("P", "P", 3, 3)), ("bn3", "P"))
DOWNSAMPLE = (("downsample.0.weight", ("P", "I", 1, 1)), ("downsample.1", "P"))
"""Only the first block of each stage has it (stride 2, and the channels change)."""
HEAD = (("bn2", "C"), ("fc.weight", ("D", "F")), ("fc.bias", ("D",)), ("features", "D"))

# maskkit's Stem is an nn.Sequential(conv, bn, prelu): arcface_torch name -> index
_STEM_INDEX = {"conv1": "0", "bn1": "1", "prelu": "2"}
_STEM_NAME = {v: k for k, v in _STEM_INDEX.items()}
_HEAD_NAMES = ("bn2", "fc", "features")

ARCFACE_TORCH_PREPROCESS = {"input_color": "RGB", "input_scale": 1.0, "input_mean": (127.5, 127.5, 127.5),
                            "input_std": (127.5, 127.5, 127.5), "bn_eps": 1e-5}
"""arcface_torch ``inference.py``: RGB, ``(x / 255 - 0.5) / 0.5`` (= maskkit's default); BN eps 1e-5."""
MAGFACE_PREPROCESS = {"input_color": "BGR", "input_scale": 1.0 / 255.0, "input_mean": (0.0, 0.0, 0.0),
                      "input_std": (1.0, 1.0, 1.0), "bn_eps": 2e-5}
"""MagFace ``inference/gen_feat.py``: ``cv2.imread`` (BGR), ``ToTensor`` (x / 255), mean 0, std 1; BN eps 2e-5."""
PREPROCESS_KEYS = ("input_color", "input_scale", "input_mean", "input_std", "bn_eps")

MAGFACE_PREFIXES = ("module.features.", "features.module.")
MAGFACE_CLASSIFIERS = ("module.fc.weight", "parallel_fc.weight")


class WeightsError(ValueError):
    """A weights file cannot be used: the message is one line (the CLI prints it as is)."""


@dataclass(frozen=True)
class Arch:
    """An IResNet's shape: ``depth`` (``r18``...), ``width`` (stem channels / 64),
    ``embedding_size`` (fc rows) and ``input_size`` (square side; fc columns = C4 x (side/16)^2)."""

    depth: str
    width: float = 1.0
    embedding_size: int = 512
    input_size: int = 112

    def describe(self) -> str:
        extra = "" if self.width == 1 else f" w{self.width:g}"
        extra += "" if self.embedding_size == 512 else f" d{self.embedding_size}"
        extra += "" if self.input_size == 112 else f" {self.input_size}px"
        return f"{self.depth}{extra}"


def unit_names(depth: str) -> list[str]:
    """``["stem", "layer1.0", ..., "layer4.K"]``: the trunk units in order (as ``IResNet.units``)."""
    if depth not in LAYERS:
        raise WeightsError(f"unknown IResNet depth {depth!r}; one of {sorted(LAYERS)}")
    return ["stem"] + [f"layer{s + 1}.{b}" for s, n in enumerate(LAYERS[depth]) for b in range(n)]


def _expand(entries, sym: dict[str, int], prefix: str = "") -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for name, spec in entries:
        if isinstance(spec, str):  # a BatchNorm over sym[spec] channels
            c = sym[spec]
            out += [(f"{prefix}{name}.{k}", () if k == "num_batches_tracked" else (c,)) for k in BN_KEYS]
        else:
            out.append((prefix + name, tuple(sym[d] if isinstance(d, str) else d for d in spec)))
    return out


def arcface_torch_layout(arch: Arch | str = "r50", **kw: Any) -> dict[str, tuple[int, ...]]:
    """The ordered ``{key: shape}`` of an arcface_torch IResNet's ``state_dict``.

    ``arcface_torch_layout("r50")`` has 475 entries (the 43,590,848 parameters and BN buffers of
    ``iresnet50``); ``kw`` builds an :class:`Arch` (``width``, ``embedding_size``, ``input_size``).
    A MagFace backbone has the same layout (under its prefix).
    """
    if isinstance(arch, str):
        arch = Arch(arch, **kw)
    if arch.input_size % 16:
        raise WeightsError(f"input size {arch.input_size} is not a multiple of 16")
    chans = stage_channels(arch.width)
    side = arch.input_size // 16
    out = _expand(STEM, {"C": chans[0]})
    inplanes = chans[0]
    for s, n in enumerate(LAYERS[arch.depth]):
        planes = chans[s]
        for b in range(n):
            sym = {"I": inplanes if b == 0 else planes, "P": planes}
            out += _expand(BLOCK + (DOWNSAMPLE if b == 0 else ()), sym, f"layer{s + 1}.{b}.")
        inplanes = planes
    out += _expand(HEAD, {"C": chans[3], "D": arch.embedding_size, "F": chans[3] * side * side})
    return dict(out)


# ------------------------------------------------------------------------------------------------
# key renaming
# ------------------------------------------------------------------------------------------------
def _arc_unit(key: str) -> tuple[str, str]:
    """arcface_torch key -> ``(unit, rest)``: unit ``stem`` (rest uses maskkit's Sequential
    index), ``layerS.B`` or ``head``."""
    first, _, rest = key.partition(".")
    if first.startswith("layer"):
        b, _, rest2 = rest.partition(".")
        return f"{first}.{b}", rest2
    if first in _STEM_INDEX:
        return "stem", f"{_STEM_INDEX[first]}.{rest}"
    if first in _HEAD_NAMES:
        return "head", key
    raise WeightsError(f"{key!r} is not an arcface_torch IResNet key")


def _unit_arc(unit: str, rest: str) -> str:
    if unit == "head":
        return rest
    if unit == "stem":
        idx, _, tail = rest.partition(".")
        return f"{_STEM_NAME[idx]}.{tail}"
    return f"{unit}.{rest}"


def arcface_to_iresnet_key(key: str) -> str:
    """arcface_torch key -> :class:`~maskkit.training.iresnet.IResNet` key (``conv1.weight`` ->
    ``stem.0.weight``, ``fc.bias`` -> ``head.fc.bias``, blocks unchanged)."""
    unit, rest = _arc_unit(key)
    return f"{unit}.{rest}"


def iresnet_to_arcface_key(key: str) -> str:
    """Inverse of :func:`arcface_to_iresnet_key`."""
    first, _, rest = key.partition(".")
    if first in ("stem", "head"):
        return _unit_arc(first, rest)
    b, _, tail = rest.partition(".")
    return _unit_arc(f"{first}.{b}", tail)


def arcface_to_facemodel_key(key: str, depth: str, split_index: int, branch: str = "face") -> str:
    """arcface_torch key -> :class:`~maskkit.training.model.FaceModel` key.

    ``split_index``: the last branch-specific unit (0 = the stem only; ``len(branch_names) - 1``).
    Units ``<= split_index`` go to ``branch_<branch>``, later ones to ``trunk``, the head to ``mu_head``.
    """
    unit, rest = _arc_unit(key)
    if unit == "head":
        return f"mu_head.{rest}"
    i = unit_names(depth).index(unit)
    return f"branch_{branch}.{i}.{rest}" if i <= split_index else f"trunk.{i - split_index - 1}.{rest}"


def facemodel_to_arcface_key(key: str, depth: str, split_index: int) -> tuple[str, str]:
    """FaceModel key -> ``(arcface_torch key, part)``; part is ``face`` (the face branch, trunk
    and mu head), ``masked`` (the masked branch) or ``sigma`` (the log sigma^2 head, whose keys
    are given in the head's arcface_torch names ``bn2``/``fc``/``features``)."""
    first, _, rest = key.partition(".")
    if first in ("mu_head", "logvar_head"):
        return rest, ("face" if first == "mu_head" else "sigma")
    idx, _, tail = rest.partition(".")
    names = unit_names(depth)
    if first in ("branch_face", "branch_masked"):
        i = int(idx)
        if i > split_index:
            raise WeightsError(f"{key!r}: unit {i} is past the split point (unit {split_index})")
        return _unit_arc(names[i], tail), ("face" if first == "branch_face" else "masked")
    if first == "trunk":
        return _unit_arc(names[split_index + 1 + int(idx)], tail), "face"
    raise WeightsError(f"{key!r} is not a FaceModel key")


def split_index_of(config: Any) -> int:
    """The last branch-specific unit of a maskkit config (0 for single-stream models)."""
    from maskkit.training.config import TrainConfig
    from maskkit.training.model import resolve_split

    cfg = TrainConfig.from_dict(config) if isinstance(config, dict) else config
    return resolve_split(unit_names(cfg.backbone), cfg.split_point) if cfg.uses_two_stream else 0


# ------------------------------------------------------------------------------------------------
# reading files
# ------------------------------------------------------------------------------------------------
def _numpy_safe_globals() -> list:
    """What a maskkit checkpoint's numpy RNG state needs under ``weights_only=True``."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    out = [np.ndarray, np.dtype, core.multiarray._reconstruct]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out.append(dtypes.UInt32DType)
    return out


def load_file(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU (numpy RNG states of maskkit
    checkpoints allowed), memory-mapped when the file is a zip archive.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        WeightsError: the file is not a PyTorch file, or holds objects ``weights_only`` refuses.
    """
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    kw: dict[str, Any] = {"map_location": "cpu", "weights_only": True}
    if zipfile.is_zipfile(path):
        kw["mmap"] = True
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, **kw)
    except Exception as exc:  # noqa: BLE001 - unpickling raises many kinds; one line for all
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path} cannot be read by torch.load(weights_only=True): {first[:200]}") from exc


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def _fp32(sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if not torch.is_tensor(v):
            raise WeightsError(f"entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k] = v.float() if v.is_floating_point() else v
    return out


def _short(keys, n: int = 4) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def infer_arch(sd: dict[str, torch.Tensor]) -> Arch:
    """Depth, width, embedding size and input side of an arcface_torch-keyed IResNet ``state_dict``.

    Raises:
        WeightsError: a key it needs is missing, or the shapes fit no IResNet.
    """
    need = ("conv1.weight", "fc.weight", "layer4.0.conv1.weight")
    missing = [k for k in need if k not in sd]
    if missing:
        raise WeightsError(f"not an IResNet state_dict: no {', '.join(missing)} (first keys: {_short(list(sd)[:6], 6)})")
    blocks = []
    for s in range(1, 5):
        idx = {int(m.group(1)) for k in sd for m in [re.match(rf"layer{s}\.(\d+)\.", k)] if m}
        blocks.append(max(idx) + 1 if idx else 0)
    depth = next((name for name, lay in LAYERS.items() if tuple(lay) == tuple(blocks)), None)
    if depth is None:
        raise WeightsError(f"blocks per stage {tuple(blocks)} match no IResNet "
                           f"({', '.join(f'{n} {tuple(v)}' for n, v in LAYERS.items())})")
    c0 = int(sd["conv1.weight"].shape[0])
    width = c0 / 64.0
    found = [c0] + [int(sd[f"layer{s}.0.conv1.weight"].shape[0]) for s in range(2, 5) if f"layer{s}.0.conv1.weight" in sd]
    if found != stage_channels(width)[: len(found)]:
        raise WeightsError(f"stage channels {found} do not follow one width multiplier "
                           f"(stem {c0} -> width {width:g} -> {stage_channels(width)})")
    emb, fc_in = (int(x) for x in sd["fc.weight"].shape)
    c4 = stage_channels(width)[3]
    side = math.isqrt(fc_in // c4) if fc_in % c4 == 0 else 0
    if side == 0 or side * side * c4 != fc_in:
        raise WeightsError(f"fc.weight has {fc_in} inputs, not {c4} x side^2 for a square input")
    return Arch(depth, width, emb, side * 16)


def check_layout(sd: dict[str, torch.Tensor], arch: Arch, what: str) -> dict[str, torch.Tensor]:
    """Check ``sd`` against :func:`arcface_torch_layout` ``(arch)``; fill missing
    ``num_batches_tracked`` with 0. Returns the state_dict in layout order.

    Raises:
        WeightsError: one line naming the missing / unexpected keys and shape mismatches.
    """
    layout = arcface_torch_layout(arch)
    missing = [k for k in layout if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in layout]
    wrong = [f"{k} {tuple(sd[k].shape)} (want {layout[k]})" for k in layout
             if k in sd and tuple(sd[k].shape) != layout[k]]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected {_short(unexpected)}")
        if wrong:
            parts.append(f"shape {_short(wrong, 2)}")
        raise WeightsError(f"{what} does not match the arcface_torch {arch.describe()} layout: " + "; ".join(parts))
    return {k: sd[k] if k in sd else torch.zeros((), dtype=torch.long) for k in layout}


@dataclass
class SourceWeights:
    """Weights read from a file, in the canonical (arcface_torch) key layout.

    Attributes:
        path: the file read.
        layout: ``arcface_torch``, ``magface`` or ``maskkit``.
        container: how they were stored (``state_dict``, ``checkpoint_gpu (state_dict_backbone)``,
            ``MagFace checkpoint (module.features.)``, ``maskkit checkpoint``...).
        arch: the inferred :class:`Arch`.
        backbone: the face branch, trunk and mu head, fp32, arcface_torch keys.
        masked: the masked branch's start-block units (maskkit two-stream runs), else empty.
        sigma: the log sigma^2 head in head keys (``bn2.*``, ``fc.*``, ``features.*``), or None.
        preprocess: the ``input_*`` / ``bn_eps`` config values of the source.
        dropped: keys read and not used (MagFace's classifier), for a note.
        config: the source's maskkit config (maskkit runs only).
    """

    path: Path
    layout: str
    container: str
    arch: Arch
    backbone: dict[str, torch.Tensor]
    masked: dict[str, torch.Tensor] = field(default_factory=dict)
    sigma: dict[str, torch.Tensor] | None = None
    preprocess: dict[str, Any] = field(default_factory=lambda: dict(ARCFACE_TORCH_PREPROCESS))
    dropped: list[str] = field(default_factory=list)
    config: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        """``arcface_torch r50``, ``magface r100``, ``maskkit maskdul r18 w0.25``."""
        if self.layout == "maskkit" and self.config:
            return f"maskkit {self.config.get('method')} {self.arch.describe()}"
        return f"{self.layout} {self.arch.describe()}"

    def config_values(self) -> dict[str, Any]:
        """The TrainConfig values the weights fix: architecture and preprocessing."""
        return {"backbone": self.arch.depth, "width": self.arch.width, "embedding_size": self.arch.embedding_size,
                "image_size": (self.arch.input_size, self.arch.input_size), **self.preprocess}

    def inference_config(self) -> dict[str, Any]:
        """A single-stream, mu-only TrainConfig dict for evaluating these weights as they are."""
        from maskkit.training.config import TrainConfig

        method = "magface" if self.layout == "magface" else "arcface"
        if self.layout == "maskkit" and self.config:
            method = "magface" if self.config.get("method") in ("magface", "dul-mag", "maskdul") else "arcface"
        cfg = TrainConfig(method=method, dropout=0.0, two_stream=False, init=str(self.path),
                          init_layout=self.label, **self.config_values())
        return cfg.to_dict()

    def build_model(self):
        """A single-stream, mu-only :class:`~maskkit.training.model.FaceModel` of this shape
        (random weights; load :meth:`facemodel_state` into it)."""
        from maskkit.training.model import build_model

        return build_model(self.inference_config())

    def facemodel_state(self, model) -> tuple[dict[str, torch.Tensor], list[str]]:
        """The ``state_dict`` for ``model`` (a FaceModel of the same :class:`Arch`) and the keys
        left at their fresh values (the log sigma^2 head when the source has none).

        Both branches of a two-stream model take the source's start block (a maskkit two-stream
        source gives its masked branch to the masked branch).

        Raises:
            WeightsError: the model's shape differs from the weights'.
        """
        from maskkit.training.model import FaceModel

        if not isinstance(model, FaceModel):
            raise TypeError("facemodel_state needs a FaceModel")
        target = model.state_dict()
        depth = _model_depth(model)
        if depth != self.arch.depth:
            raise WeightsError(f"{self.path}: the weights are {self.label}, the model is {depth}")
        k = len(model.branch_names) - 1
        out, fresh, wrong = {}, [], []
        for key, t in target.items():
            arc, part = facemodel_to_arcface_key(key, depth, k)
            if part == "sigma":
                val = None if self.sigma is None else self.sigma.get(arc)
            elif part == "masked":
                val = self.masked.get(arc, self.backbone.get(arc))
            else:
                val = self.backbone.get(arc)
            if val is None:
                if part != "sigma":
                    raise WeightsError(f"{self.path}: no weights for {key} ({arc})")
                fresh.append(key)
                out[key] = t
                continue
            if tuple(val.shape) != tuple(t.shape):
                wrong.append(f"{key} {tuple(val.shape)} vs {tuple(t.shape)}")
            out[key] = val.to(t.dtype)
        if wrong:
            raise WeightsError(f"{self.path} ({self.label}) does not fit the model: {_short(wrong, 2)}")
        return out, fresh


def _model_depth(model) -> str:
    n = len(model.branch_names) + len(model.trunk)
    for name, lay in LAYERS.items():
        if 1 + sum(lay) == n:
            return name
    raise WeightsError(f"a FaceModel with {n} units is no IResNet")


def _from_state_dict(sd: dict[str, Any], path: Path, container: str) -> tuple[str, dict, list[str], str]:
    """Detect arcface_torch vs MagFace keys; return ``(layout, backbone_sd, dropped, container)``."""
    keys = list(sd)
    for prefix in MAGFACE_PREFIXES:
        if any(k.startswith(prefix) for k in keys):
            backbone = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            dropped = [k for k in keys if not k.startswith(prefix) and k in MAGFACE_CLASSIFIERS]
            other = [k for k in keys if not k.startswith(prefix) and k not in MAGFACE_CLASSIFIERS]
            if other:
                raise WeightsError(f"{path}: MagFace checkpoint ({prefix}) with unexpected keys {_short(other)}")
            return "magface", backbone, dropped, f"{container} ({prefix})"
    if "conv1.weight" in sd or any(k.startswith("layer1.") for k in keys):
        return "arcface_torch", dict(sd), [], container
    raise WeightsError(f"{path}: not an arcface_torch or MagFace IResNet state_dict (first keys: {_short(keys[:6], 6)})")


def read_weights(path: str | Path, obj: Any = None) -> SourceWeights:
    """Read a weights file (or a maskkit run folder) into :class:`SourceWeights`.

    Args:
        path: arcface_torch ``backbone.pth`` / ``model.pt`` / ``checkpoint_gpu_N.pt``, a MagFace
            checkpoint (``state_dict`` under ``module.features.`` / ``features.module.``, or such
            a plain state_dict), a maskkit run folder or checkpoint.
        obj: the already loaded content of ``path`` (:func:`load_file`), to avoid a second read.

    Raises:
        FileNotFoundError: no such file / no checkpoint in the run folder.
        WeightsError: one line: unreadable with ``weights_only=True``, not an IResNet, or its
            keys/shapes differ from the layout of the inferred architecture.
    """
    from maskkit.training.api import find_checkpoint

    path = find_checkpoint(path)
    if obj is None:
        obj = load_file(path)
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state_dict or checkpoint dict")
    if "config" in obj and "model" in obj:
        return _from_maskkit(obj, path)
    if isinstance(obj.get("state_dict_backbone"), dict):
        layout, sd, dropped, container = _from_state_dict(obj["state_dict_backbone"], path,
                                                          "arcface_torch checkpoint (state_dict_backbone)")
    elif isinstance(obj.get("state_dict"), dict):
        layout, sd, dropped, container = _from_state_dict(obj["state_dict"], path, "checkpoint (state_dict)")
    else:
        layout, sd, dropped, container = _from_state_dict(obj, path, "state_dict")
    sd = _fp32(sd)
    arch = infer_arch(sd)
    sd = check_layout(sd, arch, str(path))
    pre = dict(MAGFACE_PREPROCESS if layout == "magface" else ARCFACE_TORCH_PREPROCESS)
    if layout == "arcface_torch" and not torch.all(sd["features.weight"] == 1):
        # arcface_torch freezes the BN1d scale at 1; MagFace trains it
        log.warning("%s: features.weight is not 1 (arcface_torch keeps it at 1): if this is a MagFace backbone "
                    "saved without its module.features. prefix, its input would be BGR [0, 1] and BN eps 2e-5, "
                    "not arcface_torch's", path)
    if dropped:
        log.info("%s: dropped %s (MagFace's MagLinear classifier, not the backbone's fc)", path, ", ".join(dropped))
    return SourceWeights(path=path, layout=layout, container=container, arch=arch, backbone=sd,
                         preprocess=pre, dropped=dropped)


def _from_maskkit(ck: dict, path: Path) -> SourceWeights:
    from maskkit.training.config import TrainConfig

    try:
        cfg = TrainConfig.from_dict(dict(ck["config"]))
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{path}: its maskkit config does not load ({exc})") from exc
    k = split_index_of(cfg)
    face: dict[str, torch.Tensor] = {}
    masked: dict[str, torch.Tensor] = {}
    sigma: dict[str, torch.Tensor] = {}
    for key, v in _fp32(ck["model"]).items():
        arc, part = facemodel_to_arcface_key(key, cfg.backbone, k)
        {"face": face, "masked": masked, "sigma": sigma}[part][arc] = v
    arch = Arch(cfg.backbone, cfg.width, cfg.embedding_size, cfg.image_size[0])
    face = check_layout(face, arch, str(path))
    pre = {key: getattr(cfg, key) for key in PREPROCESS_KEYS}
    pre["input_mean"], pre["input_std"] = tuple(pre["input_mean"]), tuple(pre["input_std"])
    return SourceWeights(path=path, layout="maskkit", container="maskkit checkpoint", arch=arch, backbone=face,
                         masked=masked, sigma=sigma or None, preprocess=pre, config=cfg.to_dict())


def maskkit_run_of(path: str | Path) -> Path | None:
    """The maskkit run folder of ``path`` (``RUN/`` itself, or ``RUN/checkpoints/X.pt`` beside a
    ``RUN/config.json``), or None for any other file (a foreign weights file, a stray checkpoint)."""
    p = Path(path)
    if p.is_dir():
        return p
    if p.parent.name == "checkpoints" and (p.parent.parent / "config.json").is_file():
        return p.parent.parent
    return None


def eval_home(path: str | Path) -> Path:
    """Where ``maskkit eval`` keeps a model's reports and saved metrics: ``RUN/eval`` for a maskkit
    run, else ``<stem>-eval/`` beside the file (``backbone.pth`` -> ``backbone-eval/``)."""
    run = maskkit_run_of(path)
    if run is not None:
        return run / "eval"
    p = Path(path)
    return p.parent / f"{p.stem}-eval"


# ------------------------------------------------------------------------------------------------
# fine-tuning: --init
# ------------------------------------------------------------------------------------------------
ARCH_KEYS = ("backbone", "width", "embedding_size", "image_size")


def apply_init_config(cfg, src: SourceWeights, explicit: set[str] | frozenset[str] = frozenset()):
    """``cfg`` with the architecture and preprocessing of ``src`` (``maskkit train --init``).

    Keys in ``explicit`` (given by the user) must agree with the weights.

    Raises:
        WeightsError: an explicit value differs from the weights'.
    """
    vals = src.config_values()
    clash = [f"{k} {getattr(cfg, k)!r} (the weights have {vals[k]!r})" for k in vals
             if k in explicit and _norm(getattr(cfg, k)) != _norm(vals[k])]
    if clash:
        raise WeightsError(f"--init {src.path} is {src.label}: {'; '.join(clash)}")
    return cfg.replace(**vals)


def _norm(v: Any) -> Any:
    return tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else v


def check_init_config(cfg, src: SourceWeights) -> None:
    """Raise a one-line :class:`WeightsError` when ``cfg`` does not fit ``src`` (architecture or
    preprocessing); :func:`apply_init_config` makes a config that does."""
    vals = src.config_values()
    bad = [f"{k} {getattr(cfg, k)!r} (weights: {vals[k]!r})" for k in vals if _norm(getattr(cfg, k)) != _norm(vals[k])]
    if bad:
        raise WeightsError(f"--init {src.path} is {src.label} but the config has {'; '.join(bad)}")


@dataclass
class InitReport:
    """What :func:`init_model` did."""

    label: str
    sha256: str
    loaded: list[str]
    fresh: list[str]
    sigma_head: bool
    notes: list[str]


def init_model(model, cfg, src: SourceWeights | None = None) -> InitReport:
    """Load ``cfg.init`` into ``model`` (a FaceModel built from ``cfg``).

    The face branch, trunk and mu head take the backbone; a two-stream model's masked branch
    takes the same start block; a DUL model's log sigma^2 head stays fresh unless the source is
    a maskkit DUL run (its sigma head is copied). See :mod:`~maskkit.training.model` for the
    fresh sigma head's initial ``||sigma||``.

    Raises:
        WeightsError: unreadable file, or a config that does not fit the weights.
    """
    src = src or read_weights(cfg.init)
    check_init_config(cfg, src)
    state, fresh = src.facemodel_state(model)
    model.load_state_dict(state)
    notes = []
    if src.dropped:
        notes.append(f"dropped {', '.join(src.dropped)} (MagFace's classifier, not the backbone)")
    if src.sigma is not None and model.logvar_head is None:
        notes.append("the source's sigma head is not used (this method has none)")
    if fresh:
        notes.append(f"sigma head fresh ({len(fresh)} tensors, lr x1.0)")
    sha = sha256_file(src.path)
    return InitReport(src.label, sha, [k for k in state if k not in fresh], fresh, sigma_head=bool(
        model.logvar_head is not None and not fresh), notes=notes)


def pretrained_names(model, cfg) -> set[str]:
    """Names (``model.named_parameters``) of the parameters that came from ``cfg.init``: all but
    a fresh sigma head's. Empty without ``init``. Depends on the config only, so a resumed run
    rebuilds the same parameter groups without reading the file again."""
    if not cfg.init:
        return set()
    fresh_sigma = not cfg.init_sigma_head
    return {n for n, _ in model.named_parameters() if not (fresh_sigma and n.startswith("logvar_head."))}


# ------------------------------------------------------------------------------------------------
# weights out
# ------------------------------------------------------------------------------------------------
def to_arcface_torch_state(model, branch: str = "face") -> dict[str, torch.Tensor]:
    """A FaceModel's mu network as a plain fp32 arcface_torch ``state_dict`` (layout order).

    ``branch``: which start block a two-stream model contributes (``face`` or ``masked``). The
    sigma head is not part of the layout and is left out.
    """
    if branch not in ("face", "masked"):
        raise ValueError(f"branch must be 'face' or 'masked', got {branch!r}")
    if branch == "masked" and not model.two_stream:
        raise WeightsError("--branch masked: the model is single-stream (it has no masked branch)")
    depth = _model_depth(model)
    k = len(model.branch_names) - 1
    face, masked = {}, {}
    for key, v in model.state_dict().items():
        arc, part = facemodel_to_arcface_key(key, depth, k)
        if part == "sigma":
            continue
        (masked if part == "masked" else face)[arc] = v.detach().float().cpu().clone() \
            if v.is_floating_point() else v.detach().cpu().clone()
    if branch == "masked":
        face.update(masked)
    return check_layout(face, model_arch(model), "the exported state_dict")


def model_arch(model) -> Arch:
    """The :class:`Arch` of a FaceModel (from its modules' shapes)."""
    fc = model.mu_head.fc
    c4 = int(model.mu_head.bn2.num_features)
    return Arch(_model_depth(model), int(model.branch_face[0][0].weight.shape[0]) / 64.0, int(fc.out_features),
                16 * math.isqrt(int(fc.in_features) // c4))


def write_arcface_torch(model, path: str | Path, branch: str = "face") -> tuple[Path, list[str]]:
    """Write ``model`` (an ``InferenceModel`` or FaceModel) as arcface_torch's ``backbone.pth``.

    Returns:
        ``(path, notes)``: notes say what was left out (sigma) and, for width != 1, that
        arcface_torch's own ``iresnet`` cannot build the layout (it has no width option).
    """
    import os

    module = getattr(model, "torch_module", model)
    state = to_arcface_torch_state(module, branch)
    notes = []
    if module.logvar_head is not None:
        notes.append("sigma head dropped: arcface_torch's layout has the mu network only")
    if module.two_stream:
        notes.append(f"two-stream model: wrote the {branch} branch's start block (--branch face|masked)")
    width = model_arch(module).width
    if width != 1:
        notes.append(f"warning: width {width:g}: arcface_torch's iresnet builds width 1 only, so it cannot "
                     "load this file (maskkit can: --model / --init)")
    pre = preprocess_note(model)
    if pre:
        notes.append(f"input preprocessing of this model: {pre} (keep it when you use the file)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path, notes


def preprocess_note(model) -> str | None:
    """The input preprocessing of an ``InferenceModel`` when it is not arcface_torch's, else None."""
    config = getattr(model, "config", None)
    if not config:
        return None
    if all(_norm(config.get(k, v)) == _norm(v) for k, v in ARCFACE_TORCH_PREPROCESS.items()):
        return None
    from maskkit.training.api import Preprocess

    return f"{Preprocess.from_config(config).describe()}, BN eps {config.get('bn_eps', 1e-5):g}"
