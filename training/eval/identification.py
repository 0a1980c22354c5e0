"""Closed-set face identification (MFI): unmasked gallery, masked probes, Rank-k and CMC.

Protocol:

* the gallery holds one or more (unmasked) images per identity. With several images, the
  identity's **template** is the mean of its L2-normalised embeddings, re-normalised (the
  usual IJB-style template pooling);
* each probe (a masked face) is compared with every template by cosine similarity (or, with
  ``score="mls"``, by the mutual likelihood score of the probe's and the template's Gaussians;
  for MLS the template is PFE's fusion of its images' Gaussians (unit-sphere units):
  ``σ_t² = 1 / Σ_i σ_i⁻²`` and ``μ_t = σ_t² Σ_i μ_i / σ_i²`` per dimension, i.e. the
  precision-weighted mean, as in Shi & Jain, ICCV 2019, sec. 3.3);
* the rank of a probe is 1 + the number of templates scoring strictly higher than its true
  identity's template (ties count in the probe's favour);
* Rank-k accuracy = fraction of probes with rank <= k; the CMC curve is Rank-k for k = 1..G.

Probes whose identity has no gallery template cannot be identified in a closed set: they are
left out of the accuracies and counted in ``n_probes_unknown`` (never silently dropped).

Figures that look like results but are not are flagged (:attr:`IdentificationResult.flags`):
``no_known_probe`` when no probe identity is in the gallery (Rank-k is then undefined: None, not
0), ``probes_unknown`` when some are not, and ``rank1_trivial`` / ``rank5_trivial`` when k is at
least the number of gallery identities (Rank-k is then 100% whatever the model does).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from maskkit.training.eval.uncertainty import mutual_likelihood_score


@dataclass
class Templates:
    """Per-identity gallery templates.

    Attributes:
        identities: G identity names (sorted).
        mu: (G, D) unit templates (mean of normalised embeddings, re-normalised; cosine).
        sigma: (G, D) fused template σ (unit-sphere units, PFE fusion) or None.
        counts: (G,) images per identity.
        mu_fused: (G, D) PFE-fused template means (for MLS) or None.
    """

    identities: list[str]
    mu: np.ndarray
    sigma: np.ndarray | None
    counts: np.ndarray
    mu_fused: np.ndarray | None = None


def build_templates(mu: np.ndarray, identities: list[str], sigma_unit: np.ndarray | None = None) -> Templates:
    """Mean-pool normalised gallery embeddings per identity, re-normalised.

    Args:
        mu: (N, D) L2-normalised embeddings.
        identities: N identity names.
        sigma_unit: (N, D) σ in unit-sphere units (optional); when given, the PFE fusion of each
            identity's Gaussians is computed too (``mu_fused``, ``sigma``).
    """
    mu = np.asarray(mu, np.float64)
    names = sorted(set(identities))
    ids = np.array(identities)
    t_mu = np.zeros((len(names), mu.shape[1]))
    t_sig = None if sigma_unit is None else np.zeros((len(names), mu.shape[1]))
    t_fused = None if sigma_unit is None else np.zeros((len(names), mu.shape[1]))
    counts = np.zeros(len(names), int)
    for g, name in enumerate(names):
        sel = ids == name
        counts[g] = int(sel.sum())
        m = mu[sel].mean(axis=0)
        t_mu[g] = m / max(np.linalg.norm(m), 1e-12)
        if t_sig is not None:
            prec = 1.0 / np.maximum(np.square(np.asarray(sigma_unit, np.float64)[sel]), 1e-24)
            var = 1.0 / prec.sum(axis=0)
            t_sig[g] = np.sqrt(var)
            t_fused[g] = var * (prec * mu[sel]).sum(axis=0)
    return Templates(names, t_mu, t_sig, counts, t_fused)


@dataclass
class IdentificationResult:
    """Outcome of closed-set identification.

    Attributes:
        rank1, rank5: accuracies (0..1) over probes with a known identity; None when no probe
            identity is in the gallery.
        cmc: Rank-k accuracy for k = 1..G (empty when no probe identity is in the gallery).
        n_gallery_images, n_identities, n_probes, n_probes_unknown: counts.
        score: ``cosine`` or ``mls``.
        per_identity: ``{identity: {"probes", "rank1_hits", "rank1", "failures": [...]}}`` where
            each failure is ``{"probe", "rank", "predicted", "score_true", "score_predicted"}``.
        ranks: the rank of each probe (0 for unknown identities), in probe order.
        predicted: the top-1 identity of each probe.
        flags: ``{code: message}`` for figures that must not be read as results (see the module
            docstring); empty when there is nothing to flag.
    """

    rank1: float | None
    rank5: float | None
    cmc: list[float]
    n_gallery_images: int
    n_identities: int
    n_probes: int
    n_probes_unknown: int
    score: str = "cosine"
    per_identity: dict = field(default_factory=dict)
    ranks: list[int] = field(default_factory=list, repr=False)
    predicted: list[str] = field(default_factory=list, repr=False)
    flags: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict:
        """Headline figures (no per-probe lists), JSON-serialisable."""
        d = asdict(self)
        d.pop("ranks")
        d.pop("predicted")
        d.pop("per_identity")
        return d


def similarity_matrix(
    probe_mu: np.ndarray, templates: Templates, score: str = "cosine", probe_sigma_unit: np.ndarray | None = None
) -> np.ndarray:
    """(P, G) similarity of every probe to every template (higher = more similar)."""
    probe_mu = np.asarray(probe_mu, np.float64)
    if score == "cosine":
        return probe_mu @ templates.mu.T
    if score == "mls":
        if probe_sigma_unit is None or templates.sigma is None:
            raise ValueError("score='mls' needs σ for probes and gallery (a model with a σ head)")
        ps = np.asarray(probe_sigma_unit, np.float64)
        out = np.empty((len(probe_mu), len(templates.identities)))
        for g in range(len(templates.identities)):
            out[:, g] = mutual_likelihood_score(
                probe_mu, ps, np.broadcast_to(templates.mu_fused[g], probe_mu.shape),
                np.broadcast_to(templates.sigma[g], ps.shape)
            )
        return out
    raise ValueError(f"score must be 'cosine' or 'mls', got {score!r}")


def identify(
    gallery_mu: np.ndarray,
    gallery_ids: list[str],
    probe_mu: np.ndarray,
    probe_ids: list[str],
    probe_names: list[str] | None = None,
    score: str = "cosine",
    gallery_sigma_unit: np.ndarray | None = None,
    probe_sigma_unit: np.ndarray | None = None,
    max_failures_per_identity: int = 20,
) -> IdentificationResult:
    """Rank-1/Rank-5, CMC and per-identity failures of probes against gallery templates.

    Args:
        gallery_mu, probe_mu: L2-normalised embeddings (N, D) and (P, D).
        gallery_ids, probe_ids: identity names.
        probe_names: names for the failure lists (default: probe index).
        score: ``cosine`` or ``mls`` (needs the σ arguments, unit-sphere units).
        max_failures_per_identity: failures listed per identity (all are counted).
    """
    if len(gallery_mu) == 0:
        raise ValueError("empty gallery")
    templates = build_templates(gallery_mu, list(gallery_ids), gallery_sigma_unit if score == "mls" else None)
    names = probe_names or [str(i) for i in range(len(probe_ids))]
    index = {name: g for g, name in enumerate(templates.identities)}
    G = len(templates.identities)
    sims = similarity_matrix(probe_mu, templates, score, probe_sigma_unit) if len(probe_mu) else np.zeros((0, G))
    bad = np.flatnonzero(~np.all(np.isfinite(sims), axis=1))
    if len(bad):
        from maskkit.training.eval.verification import NonFiniteScores

        raise NonFiniteScores(f"probes' {score} scores", len(bad), len(sims), [int(i) for i in bad[:5]])
    ranks, predicted = [], []
    per_identity: dict[str, dict] = {}
    for p, true_id in enumerate(probe_ids):
        top = templates.identities[int(np.argmax(sims[p]))] if G else ""
        predicted.append(top)
        if true_id not in index:
            ranks.append(0)
            continue
        t = sims[p, index[true_id]]
        rank = 1 + int(np.sum(sims[p] > t))
        ranks.append(rank)
        rec = per_identity.setdefault(true_id, {"probes": 0, "rank1_hits": 0, "rank1": 0.0, "failures": [], "n_failures": 0})
        rec["probes"] += 1
        if rank == 1:
            rec["rank1_hits"] += 1
        else:
            rec["n_failures"] += 1
            if len(rec["failures"]) < max_failures_per_identity:
                rec["failures"].append(
                    {
                        "probe": names[p],
                        "rank": rank,
                        "predicted": top,
                        "score_true": float(t),
                        "score_predicted": float(np.max(sims[p])),
                    }
                )
    for rec in per_identity.values():
        rec["rank1"] = rec["rank1_hits"] / rec["probes"] if rec["probes"] else 0.0
    r = np.array([k for k in ranks if k > 0], int)
    n_known = len(r)
    cmc = [float(np.mean(r <= k)) for k in range(1, G + 1)] if n_known else []
    flags = identification_flags(len(probe_ids), n_known, G)
    return IdentificationResult(
        rank1=cmc[0] if cmc else None,
        rank5=cmc[min(5, G) - 1] if cmc else None,
        cmc=cmc,
        n_gallery_images=int(len(gallery_mu)),
        n_identities=G,
        n_probes=int(len(probe_ids)),
        n_probes_unknown=int(len(probe_ids) - n_known),
        score=score,
        per_identity=dict(sorted(per_identity.items())),
        ranks=[int(k) for k in ranks],
        predicted=predicted,
        flags=flags,
    )


def identification_flags(n_probes: int, n_known: int, n_identities: int) -> dict[str, str]:
    """``{code: message}`` for Rank-k figures that are not results (module docstring).

    Args:
        n_probes: probes scored.
        n_known: probes whose identity has a gallery template.
        n_identities: gallery identities (templates), G.
    """
    flags: dict[str, str] = {}
    if n_probes and n_known == 0:
        flags["no_known_probe"] = (f"none of the {n_probes} probes has its identity in the gallery: Rank-k is "
                                   "undefined (closed-set identification needs every probe identity in the gallery)")
    elif n_known < n_probes:
        flags["probes_unknown"] = (f"{n_probes - n_known} of {n_probes} probes have no identity in the gallery "
                                   "and are left out of Rank-k")
    for k in (1, 5):
        if n_known and k >= n_identities:
            flags[f"rank{k}_trivial"] = (f"Rank-{k} is 100% whatever the model: the gallery holds only "
                                         f"{n_identities} identit{'y' if n_identities == 1 else 'ies'} (k >= G)")
    return flags
