"""Evaluation figures: ROC and CMC curves, masked-vs-unmasked histograms, captioned contact sheets (matplotlib / PIL)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, ax, path: Path, title: str, grid: bool) -> None:
    """The common end of every plot: title, optional grid, tight layout, save, close."""
    ax.set_title(title, fontsize=9)
    if grid:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    _plt().close(fig)


def _legend(ax, **kwargs) -> None:
    """A legend only when something is labelled (matplotlib warns on an empty one, e.g. a
    histogram whose values are all non-finite)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def plot_roc(path: Path, curves: dict[str, tuple[list, list, float]], title: str) -> None:
    """ROC curves ``{label: (fpr, tpr, auc)}``, FAR on a log axis."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    for label, (fpr, tpr, auc) in curves.items():
        f = np.asarray(fpr)
        t = np.asarray(tpr)
        order = np.argsort(f, kind="stable")
        ax.plot(np.maximum(f[order], 1e-4), t[order], label=f"{label} (AUC {auc:.4f})")
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1.0)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate (log)")
    ax.set_ylabel("true accept rate")
    _legend(ax, loc="lower right", fontsize=8)
    _save(fig, ax, path, title, grid=True)


def plot_cmc(path: Path, curves: dict[str, list[float]], title: str) -> None:
    """CMC curves ``{label: [rank-1, rank-2, ...]}``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    for label, cmc in curves.items():
        ax.plot(np.arange(1, len(cmc) + 1), np.asarray(cmc) * 100, marker="o", ms=3, label=label)
    ax.set_xlabel("rank")
    ax.set_ylabel("identification rate (%)")
    ax.set_ylim(0, 101)
    _legend(ax, loc="lower right", fontsize=8)
    _save(fig, ax, path, title, grid=True)


def plot_branch_hist(path: Path, values: np.ndarray | None, masked: np.ndarray, xlabel: str, title: str) -> None:
    """Histogram of a per-face value for unmasked vs masked faces (MaskDUL Fig. 4 style).

    ``values`` None (e.g. no σ head) writes a figure saying so, so the report is complete.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=120)
    if values is None:
        ax.text(0.5, 0.5, "this model has no σ head\n(method without uncertainty)", ha="center", va="center")
        ax.set_axis_off()
    else:
        values = np.asarray(values, np.float64)
        fin = np.isfinite(values)
        bins = np.histogram_bin_edges(values[fin], bins=40) if fin.any() else 40
        for sel, label, colour in ((~masked & fin, "unmasked", "tab:blue"), (masked & fin, "masked", "tab:red")):
            if sel.any():
                v = values[sel]
                ax.hist(v, bins=bins, alpha=0.55, density=True, color=colour,
                        label=f"{label} (n={sel.sum()}, mean {v.mean():.3g})")
        if not fin.all():
            xlabel += f"  ({int((~fin).sum())} not finite, not shown)"
        if not fin.any():
            ax.text(0.5, 0.5, "no finite value to draw", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("density")
        _legend(ax, fontsize=8)
    _save(fig, ax, path, title, grid=values is not None)


def _branch_hists(out: Path, sigma_norm: np.ndarray | None, magnitude: np.ndarray, masked: np.ndarray,
                  title: str) -> None:
    """``sigma_hist.png`` (‖σ‖) and ``magnitude_hist.png`` (‖μ‖), masked vs unmasked faces."""
    plot_branch_hist(out / "sigma_hist.png", sigma_norm, masked, "‖σ‖", f"‖σ‖ masked vs unmasked | {title}")
    plot_branch_hist(out / "magnitude_hist.png", magnitude, masked, "‖μ‖ (feature magnitude)",
                     f"‖μ‖ masked vs unmasked | {title}")


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def short_label(name: str, width: int) -> str:
    """``name`` shortened to at most ``width`` characters for a contact-sheet caption.

    An image extension is dropped, then an over-long name keeps its start and its end with an
    ellipsis in the middle, so ``Arnold_Schwarzenegger_0006.jpg`` and ``..._0007.jpg`` stay
    distinguishable (cutting the end would make them the same label).
    """
    # a name that is not UTF-8 (surrogate-escaped bytes) is shown with U+FFFD: fonts cannot draw it
    name = os.fsencode(str(name)).decode("utf-8", "replace")
    if name.lower().endswith(_IMAGE_SUFFIXES):
        name = name[: name.rfind(".")]
    if len(name) <= width:
        return name
    keep = max(2, width - 1)
    head = (keep + 1) // 2
    return name[:head] + "\u2026" + name[len(name) - (keep - head):]


def identity_and_stem(name: str) -> tuple[str, str]:
    """``(identity, file stem)`` of an image name: the identity is the folder the image sits in
    (one folder per identity: LFW, CASIA-WebFace, VGGFace2, celeb-aligned), ``""`` for a loose
    file or a ``.bin`` image (``lfw.bin:12``: a ``.bin`` holds no identity)."""
    p = Path(str(name))
    stem = p.stem if p.suffix.lower() in _IMAGE_SUFFIXES else p.name
    return (p.parent.name if len(p.parts) > 1 else ""), stem


def pair_caption(dist: float, a: str, b: str, width: int = 20) -> str:
    """Caption of a worst-pair cell: the distance, both identities, both file stems (each
    middle-ellipsised to ``width``; ``-`` for an image without identity, and no identity line
    when neither has one, as in a ``.bin``)."""
    (ia, sa), (ib, sb) = identity_and_stem(a), identity_and_stem(b)
    ids = f"{short_label(ia or '-', width)} | {short_label(ib or '-', width)}\n" if ia or ib else ""
    return f"d={dist:.3f}\n{ids}{short_label(sa, width)} | {short_label(sb, width)}"


def probe_caption(rank: int, ident: str, pred: str, width: int = 28) -> str:
    """Caption of a mis-identified probe cell: its rank, true and predicted identity."""
    return f"rank {rank}: {short_label(ident, width)}\n-> {short_label(pred, width)}"


def contact_sheet(path: Path, panels: list[tuple[str, list[tuple[list[np.ndarray], str]]]], title: str,
                  cols: int = 4) -> None:
    """A grid of image groups: ``panels = [(panel_title, [(images, caption), ...]), ...]``.

    Each entry's images are placed side by side (a pair, or probe | predicted | true); each
    panel is a block of ``cols`` entries per row under its own heading.
    """
    plt = _plt()
    width_imgs = max([len(imgs) for _, entries in panels for imgs, _ in entries] + [2])
    rows = [max(1, -(-len(entries) // cols)) for _, entries in panels] or [1]
    head = 0.6  # inches above each panel for its heading
    fig = plt.figure(figsize=(1.3 * width_imgs * cols, 1.55 * sum(rows) + head * len(rows)), dpi=110)
    subs = fig.subfigures(len(rows), 1, height_ratios=rows, squeeze=False)[:, 0] if rows else []
    for sub, (ptitle, entries), nr in zip(subs, panels, rows):
        axes = sub.subplots(nr, cols, squeeze=False)
        sub.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=1.0 - head / (1.55 * nr + head), wspace=0.05, hspace=0.3)
        for k, ax in enumerate(axes.ravel()):
            ax.set_axis_off()
            if k < len(entries):
                imgs, caption = entries[k]
                ax.imshow(np.concatenate([np.asarray(i, np.uint8) for i in imgs], axis=1))
                ax.set_title(caption, fontsize=7)
        sub.suptitle(ptitle + ("" if entries else ": none"), fontsize=9, fontweight="bold")
    fig.suptitle(title, fontsize=9, y=1.0, va="bottom")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
