"""Embedding faces for evaluation (insightface's ``verification.py`` step 1): each image with its
horizontal flip, the two μ summed then L2-normalised, σ kept per branch (:func:`extract_embeddings`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Embeddings:
    """Per-image test-time embeddings.

    Attributes:
        mu: (N, D) float64, L2-normalised; with ``flip`` the normalised *sum* of the
            embeddings of the image and of its horizontal mirror (insightface).
        magnitude: (N,) ‖μ‖ before normalisation (with ``flip``: ‖(μ + μ_flip) / 2‖), the
            MagFace quality indicator.
        sigma: (N, D) float64 σ (mean of the two views with ``flip``) or None for models
            without a σ head.
        sigma_unit: σ in the units of the normalised μ (σ / ‖mean μ‖, see
            :func:`maskkit.training.eval.uncertainty.normalized_gaussian`) or None.
        masked: (N,) bool, the branch each image went through.
    """

    mu: np.ndarray
    magnitude: np.ndarray
    sigma: np.ndarray | None
    sigma_unit: np.ndarray | None
    masked: np.ndarray

    def __len__(self) -> int:
        return len(self.mu)

    @property
    def sigma_norm(self) -> np.ndarray | None:
        """‖σ‖ per image (raw σ units), or None."""
        return None if self.sigma is None else np.linalg.norm(self.sigma.astype(np.float64), axis=1)


def _as_numpy(x) -> np.ndarray | None:
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def extract_embeddings(
    model,
    images: np.ndarray,
    masked,
    batch_size: int = 64,
    flip: bool = True,
    progress: bool = True,
    desc: str = "embedding",
) -> Embeddings:
    """Embed aligned faces with an ``InferenceModel`` (``.embed(uint8 NHWC, masked) -> (mu, sigma)``).

    Args:
        model: anything with ``embed(images_uint8_nhwc, masked_bool) -> (mu, sigma_or_None)``.
        images: (N, 112, 112, 3) uint8.
        masked: (N,) bool; True sends the image through the masked-face branch.
        batch_size: images per forward pass (with ``flip`` each pass holds 2x this).
        flip: add the embedding of the horizontal mirror before normalising (insightface);
            σ is then the mean of the two views' σ.
    """
    from maskkit.util.progress import track

    images = np.asarray(images)
    masked = np.asarray(masked, dtype=bool)
    n = len(images)
    if len(masked) != n:
        raise ValueError(f"{len(masked)} branch flags for {n} images")
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    mus, sigmas = [], []
    has_sigma = True
    starts = range(0, n, max(1, int(batch_size)))
    for s in track(starts, desc=desc, unit="batch", disable=not progress or n == 0):
        x = images[s : s + batch_size]
        m = masked[s : s + batch_size]
        if flip:
            x = np.concatenate([x, np.ascontiguousarray(x[:, :, ::-1])], axis=0)
            m = np.concatenate([m, m])
        mu, sigma = model.embed(np.ascontiguousarray(x), m)
        mu, sigma = _as_numpy(mu), _as_numpy(sigma)
        # all arithmetic from here on in float64 (MLS is sensitive to rounding when σ is small)
        mu = mu.astype(np.float64)
        sigma = None if sigma is None else sigma.astype(np.float64)
        if flip:
            k = len(mu) // 2
            mu = (mu[:k] + mu[k:]) / 2.0  # same direction as the sum
            sigma = None if sigma is None else (sigma[:k] + sigma[k:]) / 2.0
        mus.append(mu)
        if sigma is None:
            has_sigma = False
        else:
            sigmas.append(sigma)
    if n == 0:
        return Embeddings(np.zeros((0, 0)), np.zeros(0), None, None, masked)
    mu = np.concatenate(mus)
    magnitude = np.linalg.norm(mu, axis=1)
    norm = np.maximum(magnitude, 1e-12)[:, None]
    mu_n = mu / norm
    if has_sigma:
        sigma = np.concatenate(sigmas)
        return Embeddings(mu_n, magnitude, sigma, sigma / norm, masked)
    return Embeddings(mu_n, magnitude, None, None, masked)
