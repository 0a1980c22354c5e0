"""What a weights file holds: the state_dict inside its containers, the wrappers around its
keys, and the IResNet layout that is left.

Training code saves a backbone in many wrappings; maskkit strips what is a wrapper and then
identifies the layout from the keys that are left (:func:`identify`):

* **containers** (:data:`CONTAINER_KEYS`): a dict whose ``state_dict_backbone`` (arcface_torch's
  ``checkpoint_gpu_N.pt``), ``state_dict`` (MagFace, Lightning), ``model_state_dict``,
  ``model``, ``backbone``, ``net``, ``network``, ``weights`` or ``params`` is a dict is opened,
  in that order, at any depth (``{"model": {"state_dict": sd}}``); a dict with none of them but
  exactly one sub-dict that holds tensors is opened too (its key is named in the record).
* **wrapper prefixes** (:data:`WRAPPER_PREFIXES`), stripped while *every* key starts with the
  same one, so nested wrappers come off in turn (``module._orig_mod.conv1.weight``):
  ``module.`` (``torch.nn.DataParallel`` / ``DistributedDataParallel``), ``_orig_mod.``
  (``torch.compile``), and ``model.`` / ``backbone.`` / ``net.`` / ``network.`` (a parent module
  that holds nothing but the backbone, e.g. a Lightning module's ``self.model``).
* **layouts** left: arcface_torch (``conv1.weight``, ``layerS.B.*``, ``bn2``/``fc``/``features``
  at the top) or the MagFace builder (the same backbone under ``features.``, itself possibly
  wrapped, beside only its MagLinear classifier ``fc.weight`` / ``parallel_fc.weight``, which is
  dropped with a note). The keys and shapes are then checked against the full layout
  (:func:`~maskkit.training.checkpoints.layout.check_layout`).

When nothing matches, the one-line :class:`~maskkit.training.checkpoints.layout.WeightsError`
names what was found (the number of tensors and a few keys), the nearest layout (the depth and
the key prefix under which most of an IResNet's keys are present) and what it lacks
(:func:`describe_mismatch`).

References (read through the project's search tool; no code copied): PyTorch
``torch.nn.DataParallel`` / ``DistributedDataParallel`` register the wrapped model as
``self.module``; ``torch.compile``'s ``OptimizedModule`` holds it as ``_orig_mod``; MagFace
``run/trainer.py`` / ``run/trainer_dist.py`` and arcface_torch ``train_v2.py`` as cited in
:mod:`~maskkit.training.checkpoints.read`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from maskkit.training.checkpoints.layout import (
    MAGFACE_BACKBONE,
    MAGFACE_CLASSIFIERS,
    Arch,
    WeightsError,
    _short,
    arcface_torch_layout,
)
from maskkit.training.iresnet import LAYERS

#: Keys of a checkpoint dict that hold the model's weights, tried in this order.
CONTAINER_KEYS = ("state_dict_backbone", "state_dict", "model_state_dict", "model", "backbone", "net", "network",
                  "weights", "params")

#: Key prefixes a wrapper module adds: stripped while every key of the state_dict starts with one.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.", "net.", "network.")

#: How deep containers may nest before the file is refused.
MAX_DEPTH = 4

#: The first keys of maskkit's own FaceModel (a state_dict saved without its run's config).
_FACEMODEL_HEADS = ("branch_face.", "trunk.", "mu_head.")


@dataclass
class Found:
    """What :func:`identify` found: ``layout`` (``arcface_torch`` or ``magface``), the backbone in
    arcface_torch keys, the keys read and not used (``dropped``, as named in the file) and where
    the weights sat (``containers`` opened, ``prefixes`` stripped, outermost first)."""

    layout: str
    backbone: dict[str, Any]
    dropped: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        """``state_dict['model'], wrapper module._orig_mod. stripped`` (for records and errors)."""
        return describe_place(self.containers, self.prefixes)


def describe_place(containers: list[str], prefixes: list[str] = ()) -> str:
    """``state_dict`` / ``checkpoint['state_dict']`` plus the wrappers stripped, if any."""
    where = "state_dict" if not containers else "checkpoint" + "".join(f"[{c!r}]" for c in containers)
    if prefixes:
        where += f", wrapper {''.join(prefixes)} stripped"
    return where


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def _holds_tensors(obj: Any, depth: int = 2) -> bool:
    if torch.is_tensor(obj):
        return True
    if depth and isinstance(obj, dict):
        return any(_holds_tensors(v, depth - 1) for v in obj.values())
    return False


def _plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _keys_text(obj: dict, n: int = 6) -> str:
    keys = [str(k) for k in obj]
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def open_containers(obj: Any) -> tuple[dict[str, Any], list[str]]:
    """The state_dict inside ``obj`` and the container keys opened to reach it (outermost first).

    Raises:
        WeightsError: ``obj`` is no dict, or no state_dict is found within :data:`MAX_DEPTH`
            containers (the message names the keys found).
    """
    path: list[str] = []
    for _ in range(MAX_DEPTH + 1):
        if _is_state_dict(obj):
            return obj, path
        if not isinstance(obj, dict):
            place = describe_place(path) if path else "the file"
            raise WeightsError(f"{place} holds a {type(obj).__name__}, not a state_dict or checkpoint dict")
        key = next((k for k in CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            subs = [k for k, v in obj.items() if isinstance(v, dict) and _holds_tensors(v)]
            key = subs[0] if len(subs) == 1 else None
        if key is None:
            tensors = sum(torch.is_tensor(v) for v in obj.values())
            place = describe_place(path) if path else "the file"
            raise WeightsError(f"no state_dict found: {place} is a dict of {len(obj)} entries "
                               f"({_plural(tensors, 'tensor')}; keys {_keys_text(obj)}), none of them a dict of "
                               f"tensors under a known name ({', '.join(CONTAINER_KEYS)})")
        obj, path = obj[key], path + [str(key)]
    raise WeightsError(f"no state_dict found within {MAX_DEPTH} nested containers ({describe_place(path)})")


def strip_wrappers(sd: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``sd`` without the wrapper prefixes that *every* key shares, and those prefixes (outermost
    first): ``module._orig_mod.conv1.weight`` -> ``conv1.weight``, ``["module.", "_orig_mod."]``."""
    prefixes: list[str] = []
    while sd:
        first = {str(k).split(".", 1)[0] + "." for k in sd}
        p = next(iter(first))
        if len(first) != 1 or p not in WRAPPER_PREFIXES or not all("." in str(k) for k in sd):
            break
        sd = {str(k)[len(p):]: v for k, v in sd.items()}
        prefixes.append(p)
    return sd, prefixes


def _iresnet_like(sd: dict[str, Any]) -> bool:
    return "conv1.weight" in sd or any(str(k).startswith("layer1.") for k in sd)


def identify(obj: Any) -> Found:
    """Find the IResNet backbone in a loaded weights file (a state_dict or a checkpoint dict).

    Returns:
        :class:`Found`: the layout, its backbone in arcface_torch keys (not yet checked against
        the full layout), what was dropped and where the weights sat.

    Raises:
        WeightsError: one line: no state_dict in the containers, or no layout in its keys (with
            the keys found, the nearest layout and what it lacks, :func:`describe_mismatch`).
    """
    sd, containers = open_containers(obj)
    sd, outer = strip_wrappers(sd)
    inner_all = {k[len(MAGFACE_BACKBONE):]: v for k, v in sd.items() if str(k).startswith(MAGFACE_BACKBONE)}
    rest = [k for k in sd if not str(k).startswith(MAGFACE_BACKBONE)]
    if inner_all:
        inner, inner_prefixes = strip_wrappers(inner_all)
        if _iresnet_like(inner) and set(rest) <= set(MAGFACE_CLASSIFIERS):
            return Found("magface", inner, ["".join(outer) + k for k in rest], containers,
                         outer + [MAGFACE_BACKBONE] + inner_prefixes)
    if _iresnet_like(sd):
        return Found("arcface_torch", sd, [], containers, outer)
    raise WeightsError(f"no arcface_torch or MagFace IResNet in {describe_place(containers, outer)}: "
                       + describe_mismatch(sd))


def _layout_keys(depth: str) -> list[str]:
    return [k for k in arcface_torch_layout(Arch(depth)) if not k.endswith("num_batches_tracked")]


def describe_mismatch(sd: dict[str, Any]) -> str:
    """What was found and how far it is from the nearest IResNet layout, for a one-line error:
    ``475 tensors (keys a, b, c, ...); nearest: arcface_torch r50 under 'backbone.', 473 of 475
    keys, lacking fc.weight, fc.bias; 2 other keys (head.weight, head.bias)``.

    The nearest layout is the depth and key prefix (none, or one first key component, itself
    stripped of wrappers) under which most of an IResNet's keys (``num_batches_tracked`` aside)
    are present; ties go to fewer other keys.
    """
    keys = [str(k) for k in sd]
    found = f"{_plural(len(keys), 'tensor')} (keys {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
    if any(k.startswith(_FACEMODEL_HEADS) for k in keys):
        return (f"{found}: a maskkit FaceModel state_dict without its config; give the run folder or its "
                "checkpoints/last.pt (they carry the config)")
    firsts = dict.fromkeys(k.split(".", 1)[0] + "." for k in keys if "." in k)
    best = None
    for prefix in [""] + list(firsts):
        mine = [k for k in keys if k.startswith(prefix)]
        sub, wrappers = strip_wrappers({k[len(prefix):]: k for k in mine})  # stripped key -> the file's key
        for depth in LAYERS:
            want = _layout_keys(depth)
            wanted = set(want)
            used = {orig for k, orig in sub.items() if k in wanted or k.endswith("num_batches_tracked")}
            have = sum(k in sub for k in want)
            others = [k for k in keys if k not in used]
            score = (have / len(want), -len(others))
            if have and (best is None or score > best[0]):
                best = (score, prefix + "".join(wrappers), depth, have, want, sub, others)
    if best is None:
        return f"{found}; nearest: none (no key of an IResNet layout, e.g. conv1.weight, layer1.0.bn1.weight, fc.weight)"
    _, prefix, depth, have, want, sub, others = best
    family = "MagFace" if prefix.startswith(MAGFACE_BACKBONE) else "arcface_torch"
    under = f" under {prefix!r}" if prefix else ""
    lacking = [k for k in want if k not in sub]
    text = f"{found}; nearest: {family} {depth}{under}, {have} of {len(want)} keys"
    if lacking:
        text += f", lacking {_short(lacking, 3)}"
    if others:
        text += f"; {_plural(len(others), 'other key')} ({_short(others, 3)})"
    return text
