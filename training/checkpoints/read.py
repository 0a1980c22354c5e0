"""Reading weights files: ``torch.load(weights_only=True)``, the file's layout identified,
checked against the IResNet layout, in the canonical (arcface_torch) keys.

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

**Preprocessing and BatchNorm eps travel with the weights** (stored in the run's config as
``input_color`` / ``input_scale`` / ``input_mean`` / ``input_std`` / ``bn_eps``, applied by
``embed``, ``eval``, ``export`` and the ONNX metadata):

==============  =====  =====================================  ========
source          order  network input from uint8 x             BN eps
==============  =====  =====================================  ========
arcface_torch   RGB    (x / 255 - 0.5) / 0.5 = (x - 127.5) / 127.5  1e-5
MagFace         BGR    x / 255 (``ToTensor``, mean 0, std 1)  2e-5
==============  =====  =====================================  ========

References (read through the project's search tool; no code copied):

* insightface ``recognition/arcface_torch/train_v2.py`` (commit 0696141697f7): ``model.pt`` is
  ``backbone.module.state_dict()``; ``checkpoint_gpu_{rank}.pt`` holds ``epoch``,
  ``global_step``, ``state_dict_backbone``, ``state_dict_softmax_fc``, ``state_optimizer``,
  ``state_lr_scheduler``;
* insightface ``recognition/arcface_torch/inference.py`` (commit 6c268de606fc): BGR->RGB,
  ``div(255).sub(0.5).div(0.5)``;
* MagFace ``models/iresnet.py`` (commit 719001a07b3c): BN eps 2e-05 everywhere (momentum 0.9 in
  PyTorch's convention: a training-time detail maskkit does not copy), ``Dropout2d`` before the
  flatten, trainable ``features`` scale, an ``avgpool`` without parameters;
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskkit.training.checkpoints.identify import describe_mismatch, identify, strip_wrappers
from maskkit.training.checkpoints.layout import (
    ARCFACE_TORCH_PREPROCESS,
    MAGFACE_PREPROCESS,
    PREPROCESS_KEYS,
    Arch,
    WeightsError,
    _short,
    check_layout,
    facemodel_to_arcface_key,
    infer_arch,
    model_depth,
    split_index_of,
)

log = logging.getLogger(__name__)



def find_checkpoint(run_dir_or_ckpt: str | Path) -> Path:
    """``RUN/`` -> ``RUN/checkpoints/last.pt``; a file is returned as is."""
    p = Path(run_dir_or_ckpt)
    if p.is_dir():
        ck = p / "checkpoints" / "last.pt"
        if not ck.exists():
            raise FileNotFoundError(f"no checkpoint in run dir {p} (expected {ck})")
        return ck
    if not p.exists():
        raise FileNotFoundError(f"checkpoint or run dir not found: {p}")
    return p


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


@dataclass
class SourceWeights:
    """Weights read from a file, in the canonical (arcface_torch) key layout.

    Attributes:
        path: the file read.
        layout: ``arcface_torch``, ``magface`` or ``maskkit``.
        container: where they were stored (``state_dict``, ``checkpoint['state_dict_backbone']``,
            ``checkpoint['state_dict'], wrapper module.features. stripped``,
            ``maskkit checkpoint``).
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
        depth = model_depth(model)
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


def read_weights(path: str | Path, obj: Any = None) -> SourceWeights:
    """Read a weights file (or a maskkit run folder) into :class:`SourceWeights`.

    The state_dict is found inside its containers and its wrappers are stripped
    (:func:`~maskkit.training.checkpoints.identify.identify`: ``module.`` from DataParallel / DDP,
    ``_orig_mod.`` from ``torch.compile``, ``{"model": sd}``, ``{"state_dict": sd}``...), then the
    layout left is checked key by key and shape by shape.

    Args:
        path: arcface_torch ``backbone.pth`` / ``model.pt`` / ``checkpoint_gpu_N.pt``, a MagFace
            checkpoint (``state_dict`` under ``module.features.`` / ``features.module.``, or such
            a plain state_dict), either saved through a wrapper, a maskkit run folder or checkpoint.
        obj: the already loaded content of ``path`` (:func:`load_file`), to avoid a second read.

    Raises:
        FileNotFoundError: no such file / no checkpoint in the run folder.
        WeightsError: one line: unreadable with ``weights_only=True``, no IResNet found (the
            message names the keys found, the nearest layout and what it lacks), or its
            keys/shapes differ from the layout of the inferred architecture.
    """
    path = find_checkpoint(path)
    if obj is None:
        obj = load_file(path)
    if isinstance(obj, dict) and "config" in obj and "model" in obj:
        return _from_maskkit(obj, path)
    try:
        found = identify(obj)
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}") from None
    where = f"{path} ({found.where})"
    sd = _fp32(found.backbone)
    try:
        arch = infer_arch(sd)
    except WeightsError as exc:
        raise WeightsError(f"{where}: {exc}: {describe_mismatch(sd)}") from None
    sd = check_layout(sd, arch, where)
    layout, dropped = found.layout, found.dropped
    pre = dict(MAGFACE_PREPROCESS if layout == "magface" else ARCFACE_TORCH_PREPROCESS)
    if layout == "arcface_torch" and not torch.all(sd["features.weight"] == 1):
        # arcface_torch freezes the BN1d scale at 1; MagFace trains it
        log.warning("%s: features.weight is not 1 (arcface_torch keeps it at 1): if this is a MagFace backbone "
                    "saved without its module.features. prefix, its input would be BGR [0, 1] and BN eps 2e-5, "
                    "not arcface_torch's", path)
    if found.prefixes:
        log.info("%s: read through its wrappers (%s)", path, found.where)
    if dropped:
        log.info("%s: dropped %s (MagFace's MagLinear classifier, not the backbone's fc)", path, ", ".join(dropped))
    return SourceWeights(path=path, layout=layout, container=found.where, arch=arch, backbone=sd,
                         preprocess=pre, dropped=dropped)


def _from_maskkit(ck: dict, path: Path) -> SourceWeights:
    from maskkit.training.config import TrainConfig

    try:
        cfg = TrainConfig.from_dict(dict(ck["config"]), strict=False)  # a saved run: as it was trained
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{path}: its maskkit config does not load ({exc})") from exc
    k = split_index_of(cfg)
    face: dict[str, torch.Tensor] = {}
    masked: dict[str, torch.Tensor] = {}
    sigma: dict[str, torch.Tensor] = {}
    for key, v in _fp32(strip_wrappers(ck["model"])[0]).items():  # a compiled / DataParallel model's keys too
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

