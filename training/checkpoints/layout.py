"""The IResNet checkpoint layout as data: arcface_torch's keys and shapes, maskkit's key maps.

The canonical form of every weights file maskkit reads or writes is the **arcface_torch key
layout** of the IResNet (stem ``conv1``/``bn1``/``prelu``, blocks ``layerS.B.*``, head
``bn2``/``fc``/``features``). maskkit's own modules rename those keys:
:class:`~maskkit.training.iresnet.IResNet` as ``stem.{0,1,2}`` / ``head.*``, and
:class:`~maskkit.training.model.FaceModel` as ``branch_face.I.*`` / ``branch_masked.I.*`` (the
start block, units ``0..k``), ``trunk.J.*`` (unit ``k + 1 + J``) and ``mu_head.*`` /
``logvar_head.*``, where unit 0 is the stem and units 1.. are the residual blocks in order.

**Architecture inferred from the weights** (:func:`infer_arch`): depth from the number of blocks
per stage, width from the stem's channels (``conv1.weight`` rows / 64), embedding size from
``fc`` rows, input side from ``fc`` columns (``C4 x (side / 16)^2``). The full key and shape list
is then checked against :func:`arcface_torch_layout` (:func:`check_layout`); any difference is a
one-line :class:`WeightsError` naming the missing and unexpected keys.

Reference (read through the project's search tool; no code copied): insightface
``recognition/arcface_torch/backbones/iresnet.py`` (commit 04a433f154de): module names,
registration order, BN eps 1e-05, ``fc_scale = 7 * 7``, ``features`` BN1d scale frozen at 1;
MagFace ``models/iresnet.py`` (commit 719001a07b3c): the same module names.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

from maskkit.training.iresnet import LAYERS, stage_channels

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

MAGFACE_BACKBONE = "features."
"""MagFace's builder holds the IResNet as ``features`` (``module.features.`` under ``run/trainer.py``'s
``DataParallel``, ``features.module.`` under ``run/trainer_dist.py``'s DDP around it)."""
MAGFACE_CLASSIFIERS = ("fc.weight", "parallel_fc.weight")
"""MagFace's MagLinear classifier beside ``features`` (once the wrappers are stripped): not the
backbone's ``fc``; read and dropped."""


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

    cfg = TrainConfig.from_dict(config, strict=False) if isinstance(config, dict) else config  # a saved run
    return resolve_split(unit_names(cfg.backbone), cfg.split_point) if cfg.uses_two_stream else 0


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
        raise WeightsError(f"not an IResNet state_dict: no {', '.join(missing)}")
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
    fc_in = int(sd["fc.weight"].shape[1]) if sd["fc.weight"].dim() == 2 else 0
    # the embedding size most head tensors agree on, so one damaged tensor is the one named as
    # wrong (fc.weight cut to 100 rows blamed the intact fc.bias and features.*); a tie: fc.weight
    heads = [int(sd[k].shape[0]) for k in ("fc.weight", "fc.bias", "features.weight", "features.bias",
                                            "features.running_mean", "features.running_var")
             if k in sd and sd[k].dim() >= 1]
    emb = Counter(heads).most_common(1)[0][0]
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


def model_depth(model) -> str:
    """The IResNet depth (``r18``...) of a FaceModel, from its number of units."""
    n = len(model.branch_names) + len(model.trunk)
    for name, lay in LAYERS.items():
        if 1 + sum(lay) == n:
            return name
    raise WeightsError(f"a FaceModel with {n} units is no IResNet")


def _norm(v: Any) -> Any:
    """A config value comparable across list / tuple / int / float spellings."""
    return tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else v
