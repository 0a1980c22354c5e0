"""Uncertainty-aware scores from probabilistic embeddings (μ, σ).

MaskDUL (like DUL) predicts for each face a Gaussian ``N(μ, diag(σ²))`` in embedding space.
The mutual likelihood score of Probabilistic Face Embeddings (Shi & Jain, ICCV 2019, eq. 3)
compares two such Gaussians::

    MLS(i, j) = -1/2 * sum_l [ (μ_i,l - μ_j,l)² / (σ²_i,l + σ²_j,l) + log(σ²_i,l + σ²_j,l) ]
                - D/2 * log(2π)

Higher is more similar. It is reported beside the cosine score of ``maskkit eval``.

Units: the verification protocol L2-normalises μ. :func:`normalized_gaussian` moves σ into the
same units by dividing it by ‖μ‖ (the first-order effect of the normalisation on the
tangential directions), so MLS is computed on the unit hypersphere as in PFE.
"""
from __future__ import annotations

import numpy as np

_LOG_2PI = float(np.log(2.0 * np.pi))


def mutual_likelihood_score(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-12
) -> np.ndarray:
    """Mutual likelihood score of matching rows (PFE eq. 3).

    Args:
        mu1, mu2: (P, D) means.
        sigma1, sigma2: (P, D) standard deviations (not variances), > 0.
        eps: floor on the summed variance.

    Returns:
        (P,) float64 scores; higher = more likely the same identity.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    var = np.square(np.asarray(sigma1, np.float64)) + np.square(np.asarray(sigma2, np.float64))
    var = np.maximum(var, eps)
    d = mu1.shape[-1]
    return -0.5 * np.sum(np.square(mu1 - mu2) / var + np.log(var), axis=-1) - 0.5 * d * _LOG_2PI


def normalized_gaussian(mu: np.ndarray, sigma: np.ndarray, eps: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Project ``N(μ, σ²)`` onto the unit sphere: ``(μ/‖μ‖, σ/‖μ‖)`` row-wise."""
    mu = np.asarray(mu, np.float64)
    norm = np.maximum(np.linalg.norm(mu, axis=-1, keepdims=True), eps)
    return mu / norm, np.asarray(sigma, np.float64) / norm


def sigma_norm(sigma: np.ndarray) -> np.ndarray:
    """‖σ‖ per row (the uncertainty magnitude plotted in MaskDUL's Fig. 4)."""
    return np.linalg.norm(np.asarray(sigma, np.float64), axis=-1)


def cosine_similarity(a: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Cosine similarity of matching rows."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num = np.sum(a * b, axis=-1)
    return num / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), eps)
