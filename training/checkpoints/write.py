"""Weights out: a FaceModel's mu network as arcface_torch's ``backbone.pth``
(``maskkit export --format arcface-torch``)."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from maskkit.training.checkpoints.layout import (
    ARCFACE_TORCH_PREPROCESS,
    Arch,
    WeightsError,
    _norm,
    check_layout,
    facemodel_to_arcface_key,
    model_depth,
)

def to_arcface_torch_state(model, branch: str = "face") -> dict[str, torch.Tensor]:
    """A FaceModel's mu network as a plain fp32 arcface_torch ``state_dict`` (layout order).

    ``branch``: which start block a two-stream model contributes (``face`` or ``masked``). The
    sigma head is not part of the layout and is left out.
    """
    if branch not in ("face", "masked"):
        raise ValueError(f"branch must be 'face' or 'masked', got {branch!r}")
    if branch == "masked" and not model.two_stream:
        raise WeightsError("--branch masked: the model is single-stream (it has no masked branch)")
    depth = model_depth(model)
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
    return Arch(model_depth(model), int(model.branch_face[0][0].weight.shape[0]) / 64.0, int(fc.out_features),
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
