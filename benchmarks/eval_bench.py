"""Cost of the parts of ``maskkit eval`` (prints a table; no assertions).

    python benchmarks/eval_bench.py [--pairs 6000] [--faces 200]

* the 10-fold protocol on LFW-sized random data (6000 pairs, 512-D): accuracy/ROC grid
  (400 thresholds) + VAL grid (4000 thresholds), and the MLS score protocol;
* synthetic masking of real aligned faces (dlib landmarks on the crop + renderer), faces/s;
* embedding throughput of a narrow random two-stream model with and without flip, img/s.

Timings on a shared machine are noisy; repeat and take the best.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _best(fn, repeats=2):
    best = float("inf")
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=6000)
    ap.add_argument("--faces", type=int, default=200)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "celeb-aligned"))
    args = ap.parse_args()
    rows = []

    from maskkit.training.eval.uncertainty import mutual_likelihood_score
    from maskkit.training.eval.verification import evaluate, evaluate_scores

    rng = np.random.default_rng(0)
    same = np.arange(args.pairs) % 2 == 0
    a = rng.normal(size=(args.pairs, 512))
    b = np.where(same[:, None], a + 5.0 * rng.normal(size=a.shape), rng.normal(size=a.shape))
    t, r = _best(lambda: evaluate(a, b, same))
    rows.append(("10-fold protocol, squared L2", f"{args.pairs} pairs", f"{t:.2f} s", f"acc {100 * r.accuracy:.2f}%"))
    s = mutual_likelihood_score(a / 20, np.full(a.shape, 0.05), b / 20, np.full(b.shape, 0.05))
    t, r = _best(lambda: evaluate_scores(s, same))
    rows.append(("10-fold protocol, MLS scores", f"{args.pairs} pairs", f"{t:.2f} s", f"acc {100 * r.accuracy:.2f}%"))

    data = Path(args.data)
    if data.exists():
        from maskkit.io.image_io import load_image
        from maskkit.render import MaskRenderer
        from maskkit.training.eval.evalsets.masking import apply_masks

        files = sorted(data.rglob("*.jpg"))[: args.faces]
        imgs = np.stack([load_image(p) for p in files])
        ren = MaskRenderer()
        t, mo = _best(lambda: apply_masks(imgs, np.ones(len(imgs), bool), seed=0, renderer=ren, progress=False))
        rows.append(("synthetic masks (landmarks + render)", f"{len(imgs)} faces", f"{len(imgs) / t:.1f} faces/s",
                     f"{mo.n_masked} masked, {len(mo.failures)} failed"))
    else:
        imgs = np.random.default_rng(1).integers(0, 256, (args.faces, 112, 112, 3), dtype=np.uint8)
        rows.append(("synthetic masks", "skipped", "-", f"{data} absent"))

    import torch

    from maskkit.training.api import InferenceModel
    from maskkit.training.config import TrainConfig
    from maskkit.training.model import build_model
    from maskkit.training.eval.embeddings import extract_embeddings

    cfg = TrainConfig(method="maskdul", backbone="r18", width=0.25, dropout=0.0)
    model = InferenceModel(build_model(cfg), cfg.to_dict())
    flags = np.arange(len(imgs)) % 2 == 1
    for flip in (False, True):
        t, _ = _best(lambda: extract_embeddings(model, imgs, flags, 64, flip, progress=False), repeats=1)
        rows.append((f"embed r18 x0.25 maskdul, flip={flip}", f"{len(imgs)} faces", f"{len(imgs) / t:.1f} img/s",
                     f"torch threads {torch.get_num_threads()}"))

    from rich.console import Console
    from rich.table import Table

    tab = Table(title="maskkit eval costs (CPU; noisy on a shared machine)")
    for c in ("part", "size", "time / rate", "note"):
        tab.add_column(c)
    for r in rows:
        tab.add_row(*r)
    Console().print(tab)


if __name__ == "__main__":
    main()
