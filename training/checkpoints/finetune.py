"""Fine-tuning from foreign weights (``maskkit train --init``): the config the weights fix, and
loading them into a two-stream FaceModel."""
from __future__ import annotations

from dataclasses import dataclass

from maskkit.training.checkpoints.layout import WeightsError, _norm
from maskkit.training.checkpoints.read import SourceWeights, read_weights, sha256_file

ARCH_KEYS = ("backbone", "width", "embedding_size", "image_size")


def apply_init_config(cfg, src: SourceWeights, explicit: set[str] | frozenset[str] = frozenset()):
    """``cfg`` with the architecture and preprocessing of ``src`` (``maskkit train --init``).

    Keys in ``explicit`` (given by the user) must agree with the weights.

    Raises:
        WeightsError: an explicit value differs from the weights'.
    """
    vals = src.config_values()
    clash = [f"{k} {getattr(cfg, k)!r} (the weights have {vals[k]!r})" for k in vals
             if k in explicit and _norm(getattr(cfg, k)) != _norm(vals[k])]
    if clash:
        raise WeightsError(f"--init {src.path} is {src.label}: {'; '.join(clash)}")
    return cfg.replace(**vals)



def check_init_config(cfg, src: SourceWeights) -> None:
    """Raise a one-line :class:`WeightsError` when ``cfg`` does not fit ``src`` (architecture or
    preprocessing); :func:`apply_init_config` makes a config that does."""
    vals = src.config_values()
    bad = [f"{k} {getattr(cfg, k)!r} (weights: {vals[k]!r})" for k in vals if _norm(getattr(cfg, k)) != _norm(vals[k])]
    if bad:
        raise WeightsError(f"--init {src.path} is {src.label} but the config has {'; '.join(bad)}")


@dataclass
class InitReport:
    """What :func:`init_model` did."""

    label: str
    sha256: str
    loaded: list[str]
    fresh: list[str]
    sigma_head: bool
    notes: list[str]


def init_model(model, cfg, src: SourceWeights | None = None) -> InitReport:
    """Load ``cfg.init`` into ``model`` (a FaceModel built from ``cfg``).

    The face branch, trunk and mu head take the backbone; a two-stream model's masked branch
    takes the same start block; a DUL model's log sigma^2 head stays fresh unless the source is
    a maskkit DUL run (its sigma head is copied). See :mod:`~maskkit.training.model` for the
    fresh sigma head's initial ``||sigma||``.

    Raises:
        WeightsError: unreadable file, or a config that does not fit the weights.
    """
    src = src or read_weights(cfg.init)
    check_init_config(cfg, src)
    state, fresh = src.facemodel_state(model)
    model.load_state_dict(state)
    notes = []
    if src.dropped:
        notes.append(f"dropped {', '.join(src.dropped)} (MagFace's classifier, not the backbone)")
    if src.sigma is not None and model.logvar_head is None:
        notes.append("the source's sigma head is not used (this method has none)")
    if fresh:
        notes.append(f"sigma head fresh ({len(fresh)} tensors, lr x1.0)")
    sha = sha256_file(src.path)
    return InitReport(src.label, sha, [k for k in state if k not in fresh], fresh, sigma_head=bool(
        model.logvar_head is not None and not fresh), notes=notes)


def pretrained_names(model, cfg) -> set[str]:
    """Names (``model.named_parameters``) of the parameters that came from ``cfg.init``: all but
    a fresh sigma head's. Empty without ``init``. Depends on the config only, so a resumed run
    rebuilds the same parameter groups without reading the file again."""
    if not cfg.init:
        return set()
    fresh_sigma = not cfg.init_sigma_head
    return {n for n, _ in model.named_parameters() if not (fresh_sigma and n.startswith("logvar_head."))}

