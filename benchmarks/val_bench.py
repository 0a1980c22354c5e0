"""What one validation while training costs (``maskkit train --val``): seconds per ``.bin``.

Builds a verification ``.bin`` of ``--pairs`` pairs from ``../shared/data/celeb-aligned`` (or
takes ``--bin``), then runs the validation callback exactly as the training loop does
(:class:`maskkit.training.eval.validation.Validator`, sides ``none`` and ``one``) on a freshly
initialised model of the given architecture:

* *start* (once per run): read the set and draw the side-``one`` masks (dlib landmarks + the
  renderer on every second image);
* *validation* (every ``--val-every`` steps): embed every image and its mirror once per side,
  score 10 folds.

Both are printed for the set measured and scaled linearly to a 12,000-image ``.bin`` (LFW,
CFP-FP and AgeDB-30 hold 12,000 to 14,000 images): the work is per image.

    python benchmarks/val_bench.py --pairs 600 --backbone r50          # about 1/10 of LFW
    python benchmarks/val_bench.py --bin lfw.bin --device cuda
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CELEB = REPO.parent / "shared" / "data" / "celeb-aligned"
TARGET_IMAGES = 12_000


def make_bin(path: Path, n_pairs: int, seed: int = 0) -> Path:
    import cv2

    from maskkit.training.eval.evalsets import write_bin

    rng = np.random.default_rng(seed)
    ids = {d.name: sorted(d.iterdir()) for d in sorted(CELEB.iterdir()) if d.is_dir()}
    names = list(ids)
    images, issame = [], []
    for p in range(n_pairs):
        a = names[rng.integers(len(names))]
        same = p % 2 == 0
        b = a if same else names[(names.index(a) + 1 + rng.integers(len(names) - 1)) % len(names)]
        fa, fb = ids[a][rng.integers(len(ids[a]))], ids[b][rng.integers(len(ids[b]))]
        images += [cv2.imread(str(fa))[:, :, ::-1].copy(), cv2.imread(str(fb))[:, :, ::-1].copy()]
        issame.append(same)
    write_bin(path, images, issame)
    return path


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin")
    ap.add_argument("--pairs", type=int, default=600)
    ap.add_argument("--work", default="/tmp/maskkit_val_bench")
    ap.add_argument("--backbone", default="r50")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--method", default="maskdul")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=64)
    a = ap.parse_args(argv)

    import torch

    from maskkit.training.callbacks import CallbackContext
    from maskkit.training.config import TrainConfig
    from maskkit.training.eval.validation import Validator
    from maskkit.training.model import build_model

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    bin_path = Path(a.bin) if a.bin else make_bin(work / f"celeb{a.pairs}.bin", a.pairs)
    cfg = TrainConfig(method=a.method, backbone=a.backbone, width=a.width)
    model = build_model(cfg).to(a.device)
    v = Validator([str(bin_path)], ("none", "one"), batch_size=a.batch_size)
    t, c = time.perf_counter(), cpu()
    v.start(0)
    start_s, start_c = time.perf_counter() - t, cpu() - c
    n_img = len(v.load()[0].pairs.images)
    ctx = CallbackContext(1, 1.0, model, cfg.to_dict(), torch.device(a.device), work, work / "last.pt")
    t, c = time.perf_counter(), cpu()
    res = v(ctx)
    val_s, val_c = time.perf_counter() - t, cpu() - c
    scale = TARGET_IMAGES / n_img
    print(f"set: {bin_path} ({n_img} images); model {a.method} {a.backbone} width {a.width} on {a.device}, "
          f"{torch.get_num_threads()} threads, batch {a.batch_size}")
    print(res.lines[0])
    print(f"start (read + masks, once per run): {start_s:.1f} s wall, {start_c:.1f} CPU-s "
          f"-> {start_s * scale:.0f} s for {TARGET_IMAGES:,} images")
    print(f"one validation (sides none + one):  {val_s:.1f} s wall, {val_c:.1f} CPU-s "
          f"-> {val_s * scale:.0f} s ({val_s * scale / 60:.1f} min) for {TARGET_IMAGES:,} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
