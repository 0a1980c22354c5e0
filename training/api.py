"""Load a trained model for inference: ``load_model(run_dir_or_ckpt, device) -> InferenceModel``.

A run directory ``RUN/`` holds ``config.json``, ``checkpoints/last.pt`` and ``log.jsonl``; a
checkpoint file carries its own config too, so either can be given.

Example::

    >>> m = load_model("runs/maskdul", device="cpu")            # doctest: +SKIP
    >>> mu, sigma = m.embed(images_uint8_nhwc, masked=flags)     # doctest: +SKIP
    >>> mu.shape, sigma.shape                                    # doctest: +SKIP
    ((N, 512), (N, 512))

Input normalisation is ``(x - 127.5) / 127.5`` on RGB, as in training (:func:`normalize`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskkit.training.model import FaceModel, build_model

MEAN = 127.5
STD = 127.5


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC (or NCHW float 0..255) -> float32 NCHW in [-1, 1]: ``(x - 127.5) / 127.5``."""
    if images.dtype == torch.uint8:
        if images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"uint8 images must be NHWC RGB, got shape {tuple(images.shape)}")
        images = images.permute(0, 3, 1, 2)
    return (images.float() - MEAN) / STD


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


class InferenceModel:
    """A trained model in eval mode.

    Attributes:
        config: the run's config dict (``TrainConfig.to_dict()``).
        torch_module: the :class:`~maskkit.training.model.FaceModel` in eval mode; its
            ``forward(x, masked) -> (mu, sigma)`` takes normalised float NCHW input (ONNX export).
        device: torch device.
        meta: checkpoint metadata (step, epoch, classes).
    """

    def __init__(self, module: FaceModel, config: dict[str, Any], device: str | torch.device = "cpu",
                 meta: dict[str, Any] | None = None):
        self.device = torch.device(device)
        self.torch_module = module.to(self.device).eval()
        self.config = config
        self.meta = meta or {}

    @property
    def has_sigma(self) -> bool:
        return self.torch_module.dul

    @torch.no_grad()
    def embed(self, images: np.ndarray | torch.Tensor, masked: np.ndarray | torch.Tensor | None = None,
              batch_size: int = 256):
        """Embed a batch of aligned faces.

        Args:
            images: uint8 NHWC RGB (112x112) numpy/tensor, or float NCHW tensor already
                normalised by ``(x - 127.5) / 127.5``.
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
        mus, sigmas = [], []
        for i in range(0, n, batch_size):
            xb = normalize(x[i:i + batch_size].to(self.device))
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
    """Load ``RUN/`` or a checkpoint file written by ``maskkit train`` into an :class:`InferenceModel`.

    ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N`` (:func:`check_device`).
    """
    device = check_device(device)
    ck_path = find_checkpoint(run_dir_or_ckpt)
    ck = torch.load(ck_path, map_location="cpu", weights_only=False)
    if "config" not in ck or "model" not in ck:
        raise ValueError(f"{ck_path} is not a maskkit training checkpoint (keys: {sorted(ck)[:8]})")
    config = ck["config"]
    module = build_model(config)
    module.load_state_dict(ck["model"])
    meta = {k: ck.get(k) for k in ("step", "epoch", "classes", "num_classes") if k in ck}
    meta["checkpoint"] = str(ck_path)
    return InferenceModel(module, config, device=device, meta=meta)
