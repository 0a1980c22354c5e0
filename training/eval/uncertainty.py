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
#: The floor on the summed variance ``σ²_i,l + σ²_j,l`` in :func:`mutual_likelihood_score`.
VAR_FLOOR = 1e-12


def mutual_likelihood_score(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = VAR_FLOOR
) -> np.ndarray:
    """Mutual likelihood score of matching rows (PFE eq. 3).

    Args:
        mu1, mu2: (P, D) means.
        sigma1, sigma2: (P, D) standard deviations (not variances), > 0.
        eps: floor on the summed variance. Where σ₁² + σ₂² is below it (σ = 0) PFE's MLS is
            undefined (−∞ for any difference in μ); the score is then computed at the floor,
            which is no likelihood: :func:`mls_flags` says when that happened.

    Returns:
        (P,) float64 scores; higher = more likely the same identity.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    var = np.square(np.asarray(sigma1, np.float64)) + np.square(np.asarray(sigma2, np.float64))
    var = np.maximum(var, eps)
    d = mu1.shape[-1]
    return -0.5 * np.sum(np.square(mu1 - mu2) / var + np.log(var), axis=-1) - 0.5 * d * _LOG_2PI


def mls_flags(sigma_a: np.ndarray, sigma_b: np.ndarray, paired: bool = True, eps: float = VAR_FLOOR,
              rtol: float = 1e-6) -> dict[str, str]:
    """``{code: message}`` for MLS figures that must not be read as an uncertainty-aware result.

    From PFE eq. 3 (module docstring), per compared pair and dimension ``l`` with
    ``v_l = σ²_1,l + σ²_2,l``:

    * ``sigma_zero`` -- ``v_l <= eps`` (σ is 0 on both sides) in some dimension of some pair.
      MLS is then undefined: ``(Δμ_l)² / v_l`` -> ∞ as ``v_l`` -> 0, so MLS -> −∞ for any pair
      whose μ differ in that dimension (0/0 where they agree). The reported score is computed
      at the floor, ``MLS ≈ −Σ (Δμ_l)² / (2 eps)`` + const: a rescaled squared L2 distance.
    * ``sigma_constant`` -- every σ (every image, every dimension) is the same ``s > 0``: then
      ``MLS = −‖μ₁ − μ₂‖² / (4 s²) − D/2 · log(4π s²)``, a strictly decreasing function of the
      squared L2 distance, so MLS ranks the pairs exactly as the distance does and σ adds
      nothing. Well defined, but not a second result.

    Args:
        sigma_a, sigma_b: σ in the units MLS is computed in (unit sphere). ``paired``: (P, D)
            each, row ``i`` of one compared with row ``i`` of the other (verification pairs);
            else (Na, D) and (Nb, D), every row of one against every row of the other (gallery
            templates against probes; counts are of ``sigma_b``'s rows).
        eps: the variance floor of :func:`mutual_likelihood_score`.
        rtol: relative spread below which σ counts as constant: models give μ and σ in
            float32 (relative resolution 6e-8), so a constant σ divided by ‖μ‖ of unit-length
            μ spreads by a few 1e-8; 1e-6 absorbs that rounding and nothing a model means.

    Returns:
        At most one of the two codes (``sigma_zero`` first); empty when MLS is informative.
    """
    a, b = np.asarray(sigma_a, np.float64), np.asarray(sigma_b, np.float64)
    if a.size == 0 or b.size == 0:
        return {}
    sq_a, sq_b = np.square(a), np.square(b)
    if paired:
        at_floor = np.any(sq_a + sq_b <= eps, axis=-1)
        unit = "pairs"
    else:  # a probe row meets the floor against some template iff, in some dimension, it does with the smallest
        at_floor = np.any(sq_b + np.min(sq_a, axis=0) <= eps, axis=-1)
        unit = "probes"
    if at_floor.any():
        return {"sigma_zero": (
            f"MLS is degenerate: σ is 0 (σ₁² + σ₂² <= {eps:g}) in some dimension for {int(at_floor.sum())} of "
            f"{len(at_floor)} {unit}, where PFE's MLS is undefined (−∞ for any difference in μ); those scores are "
            f"taken at the variance floor, MLS ≈ −Σ(Δμ)²/(2·{eps:g}), a rescaled squared L2 distance, not an "
            "uncertainty-aware score")}
    both = np.concatenate([a.ravel(), b.ravel()])
    if np.all(np.isfinite(both)):
        top = float(np.max(np.abs(both)))
        if float(np.max(both) - np.min(both)) <= rtol * top:
            return {"sigma_constant": (
                f"MLS adds nothing to the distance: σ is {top:.4g} for every image and dimension, so "
                "MLS = −‖μ₁ − μ₂‖²/(4σ²) + const ranks exactly as the squared L2 distance; its figures "
                "are not a second, uncertainty-aware result")}
    return {}


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
