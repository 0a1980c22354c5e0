"""Load a trained model for inference: ``load_model(run_dir_or_ckpt, device) -> InferenceModel``.

A run directory ``RUN/`` holds ``config.json``, ``checkpoints/last.pt`` and ``log.jsonl``; a
checkpoint file carries its own config too, so either can be given.

Example::

    >>> m = load_model("runs/maskdul", device="cpu")            # doctest: +SKIP
    >>> mu, sigma = m.embed(images_uint8_nhwc, masked=flags)     # doctest: +SKIP
    >>> mu.shape, sigma.shape                                    # doctest: +SKIP
    ((N, 512), (N, 512))

Input normalisation is the model's :class:`Preprocess`, stored in its config: ``(x - 127.5) /
127.5`` on RGB for maskkit and arcface_torch models (:func:`normalize`), ``x / 255`` on BGR for a
MagFace-initialised model. ``embed`` always takes RGB uint8 faces and applies it.

``load_model`` also takes a foreign weights file (arcface_torch ``backbone.pth`` / ``model.pt`` /
``checkpoint_gpu_N.pt``, a MagFace checkpoint; :mod:`~maskkit.training.checkpoints`), read as a
single-stream, mu-only model with the source's preprocessing and BatchNorm eps.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskkit.training.model import FaceModel, build_model
from maskkit.training.checkpoints.read import find_checkpoint  # noqa: F401  (public here too: maskkit.training.api.find_checkpoint)

MEAN = 127.5
STD = 127.5


@dataclass(frozen=True)
class Preprocess:
    """How RGB uint8 faces become the network's input: ``(x[color] * scale - mean) / std``.

    Attributes:
        color: channel order the network takes, ``RGB`` or ``BGR`` (channels swapped first).
        scale: multiplies the 0..255 values (1/255 gives [0, 1], as torchvision's ``ToTensor``).
        mean, std: per channel, in the network's channel order, after ``scale``.

    maskkit / arcface_torch: ``RGB, 1, 127.5, 127.5`` (arcface_torch's ``inference.py`` writes it
    ``x / 255 - 0.5) / 0.5``, the same map). MagFace (``inference/gen_feat.py``: ``cv2.imread``,
    ``ToTensor``, ``Normalize(0, 1)``): ``BGR, 1/255, 0, 1``.
    """

    color: str = "RGB"
    scale: float = 1.0
    mean: tuple[float, float, float] = (MEAN, MEAN, MEAN)
    std: tuple[float, float, float] = (STD, STD, STD)

    @classmethod
    def from_config(cls, config: Any) -> "Preprocess":
        """From a :class:`~maskkit.training.config.TrainConfig` or its dict (old configs without
        the ``input_*`` keys get maskkit's default)."""
        get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
        three = lambda v: tuple(float(x) for x in ([v] * 3 if isinstance(v, (int, float)) else v))  # noqa: E731
        return cls(color=str(get("input_color", "RGB") or "RGB"), scale=float(get("input_scale", 1.0) or 1.0),
                   mean=three(get("input_mean", MEAN)), std=three(get("input_std", STD)))

    def describe(self) -> str:
        """One line, e.g. ``RGB (x - 127.5) / 127.5`` or ``BGR x * 0.00392`` (for logs)."""
        m = self.mean[0] if len(set(self.mean)) == 1 else list(self.mean)
        sd = self.std[0] if len(set(self.std)) == 1 else list(self.std)
        x = "x" if self.scale == 1 else f"x * {self.scale:.6g}"
        return f"{self.color} ({x} - {m}) / {sd}"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC RGB (or float NCHW RGB 0..255) -> the network's float32 NCHW input."""
        if images.dtype == torch.uint8:
            if images.dim() != 4 or images.shape[-1] != 3:
                raise ValueError(f"uint8 images must be NHWC RGB, got shape {tuple(images.shape)}")
            images = images.permute(0, 3, 1, 2)
        x = images.float()
        if self.color == "BGR":
            x = x.flip(1)
        if self.scale != 1.0:
            x = x * self.scale
        if len(set(self.mean)) == 1 and len(set(self.std)) == 1:
            return (x - self.mean[0]) / self.std[0]  # maskkit's default: exactly (x - 127.5) / 127.5
        shape = (1, 3, 1, 1)
        return (x - torch.tensor(self.mean, device=x.device).view(shape)) / torch.tensor(self.std, device=x.device).view(shape)


DEFAULT_PREPROCESS = Preprocess()


def normalize(images: torch.Tensor, preprocess: Preprocess | None = None) -> torch.Tensor:
    """uint8 NHWC (or NCHW float 0..255) RGB -> float32 NCHW network input.

    Default (``preprocess=None``): ``(x - 127.5) / 127.5`` in [-1, 1], maskkit's and
    arcface_torch's input.
    """
    return (preprocess or DEFAULT_PREPROCESS)(images)


def check_device(name: str | torch.device) -> torch.device:
    """Parse a device name (``auto``, ``cpu``, ``cuda``, ``cuda:N``) and check that it exists on this machine.

    ``auto`` is ``cuda`` when a GPU is visible, else ``cpu``.

    Raises:
        ValueError: a one-line reason (unknown name, CUDA not available, GPU index out of range).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"--device {name!r} is not a device name (auto, cpu, cuda, cuda:N)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(f"--device {name}: CUDA is not available here ({why}); use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"--device {name}: only {n} GPU{'s' if n != 1 else ''} visible (cuda:0..cuda:{n - 1})")
    return dev


class InferenceModel:
    """A trained model in eval mode.

    Attributes:
        config: the run's config dict (``TrainConfig.to_dict()``).
        torch_module: the :class:`~maskkit.training.model.FaceModel` in eval mode; its
            ``forward(x, masked) -> (mu, sigma)`` takes normalised float NCHW input (ONNX export).
        device: torch device.
        meta: checkpoint metadata (step, epoch, classes; for a foreign weights file also
            ``layout`` and ``label``, e.g. ``backbone (arcface_torch r50)``).
        preprocess: the input normalisation (:class:`Preprocess`, from the config).
    """

    def __init__(self, module: FaceModel, config: dict[str, Any], device: str | torch.device = "cpu",
                 meta: dict[str, Any] | None = None):
        self.device = torch.device(device)
        self.torch_module = module.to(self.device).eval()
        self.config = config
        self.meta = meta or {}
        self.preprocess = Preprocess.from_config(config or {})

    @property
    def has_sigma(self) -> bool:
        return self.torch_module.dul

    @torch.no_grad()
    def embed(self, images: np.ndarray | torch.Tensor, masked: np.ndarray | torch.Tensor | None = None,
              batch_size: int = 256):
        """Embed a batch of aligned faces.

        Args:
            images: uint8 NHWC RGB (112x112) numpy/tensor, or float NCHW RGB tensor with
                values 0..255; the model's :attr:`preprocess` is applied.
            masked: bool (N,) choosing the branch of a two-stream model (None: all unmasked).
            batch_size: chunk size of the forward passes.

        Returns:
            ``(mu, sigma)``, float32 (N, 512), numpy if ``images`` was numpy else tensors on CPU;
            ``sigma`` (the standard-deviation vector) is None for non-DUL methods.
        """
        as_numpy = isinstance(images, np.ndarray)
        x = torch.from_numpy(np.ascontiguousarray(images)) if as_numpy else images
        n = x.shape[0]
        if masked is None:
            m = torch.zeros(n, dtype=torch.bool)
        else:
            m = torch.as_tensor(np.asarray(masked) if not torch.is_tensor(masked) else masked).to(torch.bool).reshape(-1)
            if m.shape[0] != n:
                raise ValueError(f"masked has {m.shape[0]} flags for {n} images")
        size = tuple((self.config or {}).get("image_size") or (112, 112))
        hw = tuple(x.shape[1:3]) if x.dtype == torch.uint8 else tuple(x.shape[2:4])
        if n and hw != size:
            raise ValueError(f"the model takes {size[0]}x{size[1]} faces, got {hw[0]}x{hw[1]}")
        mus, sigmas = [], []
        for i in range(0, n, batch_size):
            xb = self.preprocess(x[i:i + batch_size].to(self.device))
            mu, sigma = self.torch_module(xb, m[i:i + batch_size])  # CPU flags: routed without a device sync
            mus.append(mu.float().cpu())
            if sigma is not None:
                sigmas.append(sigma.float().cpu())
        mu = torch.cat(mus) if mus else torch.zeros(0, self.torch_module.embedding_size)
        sigma = torch.cat(sigmas) if sigmas else (None if not self.has_sigma else torch.zeros(0, mu.shape[1]))
        if as_numpy:
            return mu.numpy(), (sigma.numpy() if sigma is not None else None)
        return mu, sigma


def load_model(run_dir_or_ckpt: str | Path, device: str | torch.device = "cpu") -> InferenceModel:
    """Load ``RUN/``, a checkpoint written by ``maskkit train``, or a foreign weights file.

    ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N`` (:func:`check_device`).
    Foreign files (arcface_torch, MagFace; :func:`~maskkit.training.checkpoints.read_weights`)
    become single-stream, mu-only models with the source's preprocessing and BatchNorm eps;
    ``meta["label"]`` is ``<file stem> (<layout>)``.

    Raises:
        FileNotFoundError: no such file / no checkpoint in the run folder.
        ValueError (:class:`~maskkit.training.checkpoints.WeightsError`): a one-line reason
            (not loadable with ``weights_only=True``, not an IResNet layout, missing/unexpected keys).
    """
    from maskkit.training.checkpoints.read import load_file, read_weights

    device = check_device(device)
    ck_path = find_checkpoint(run_dir_or_ckpt)
    ck = load_file(ck_path)
    if not (isinstance(ck, dict) and "config" in ck and "model" in ck):
        src = read_weights(ck_path, obj=ck)
        module = src.build_model()
        module.load_state_dict(src.facemodel_state(module)[0])
        meta = {"checkpoint": str(ck_path), "layout": src.label, "label": f"{ck_path.stem} ({src.label})",
                "dropped_keys": list(src.dropped)}
        return InferenceModel(module, src.inference_config(), device=device, meta=meta)
    from maskkit.training.checkpoints.identify import strip_wrappers

    config = ck["config"]
    module = build_model(config)
    module.load_state_dict(strip_wrappers(ck["model"])[0])  # a compiled / DataParallel model's keys too
    meta = {k: ck.get(k) for k in ("step", "epoch", "classes", "num_classes") if k in ck}
    meta["checkpoint"] = str(ck_path)
    meta["layout"] = "maskkit"
    return InferenceModel(module, config, device=device, meta=meta)
