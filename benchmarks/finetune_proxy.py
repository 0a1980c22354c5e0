"""Fine-tuning proxy on CPU: pretrain a small ArcFace, save it in arcface_torch's layout, fine-tune
every method from it (``--init``), compare on held-out masked pairs.

    OMP_NUM_THREADS=2 python benchmarks/finetune_proxy.py [--out runs/finetune_proxy]

Protocol (deterministic; every figure printed and written to ``OUT/results.json``):

1. **Split** (``benchmarks/celeb_eval.py``'s ``prepare``): celeb-aligned identities sorted by
   name, the last 4 held out; 8 training identities (1,466 faces, every other one given a
   synthetic mask); 600 held-out pairs (300 same, 300 different) in ``heldout.bin``.
2. **Pretrain** ``arcface`` on the training identities' *unmasked* faces (the original of every
   face, none masked): ``--pre-steps`` steps of ``--batch``, lr ``--pre-lr`` with a 10 % warm-up
   and x0.1 at 60 % and 85 %. Saved with ``write_arcface_torch`` as ``pretrained.pth``
   (arcface_torch's key layout). It must beat chance on the held-out pairs (mask side none) by
   ``--min-margin`` points, or the script stops.
3. **Fine-tune** each of arcface, magface, dul, dul-mag, maskdul from ``pretrained.pth`` with the
   same budget: ``--steps`` steps of ``--batch`` on celeb_eval's training set (half masked), lr
   ``--lr`` (constant) with the pretrained parameters at ``finetune_lr_mult`` 0.1, frozen for the
   first ``--freeze`` steps (new parts: class centres, a fresh sigma head, at the full lr), for each
   seed of ``--seeds``. The data source is in memory (no loader workers: ``num_workers`` 0 for
   every run).
4. **Evaluate** each fine-tuned model and the pretrained file unchanged (``load_model`` on the
   arcface_torch file) with maskkit eval's protocol (flip-summed, L2-normalised mu, 10-fold
   accuracy, insightface's ``verification.py``) at mask side ``none`` and ``one`` (the second image
   of every pair masked with maskkit's renderer, seed 0, routed to the masked branch), and the
   mean ``||sigma||`` of the masked and unmasked held-out faces for the methods with sigma.

Faces are resized to ``--size`` px (default 64, a multiple of 16: the IResNet head takes
``C x (size/16)^2``) after masking, to fit the CPU budget; r18 width 0.25, embedding 128.
Wall times are measured per run (training only; evaluation timed separately).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "celeb-aligned"
METHODS = ("arcface", "magface", "dul", "dul-mag", "maskdul")


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if images.shape[1] == size:
        return images
    return np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images])


# ------------------------------------------------------------------------------------------------
def prepare(args) -> dict:
    """celeb_eval's split, plus the unmasked originals of the training faces and the held-out
    pairs masked on the second side; all resized to ``args.size``. Cached in ``OUT/data.npz``."""
    out = Path(args.out)
    cache = out / f"data{args.size}.npz"
    if cache.exists():
        z = np.load(cache)
        return {k: z[k] for k in z.files}
    import celeb_eval

    from maskkit.io.image_io import load_image
    from maskkit.training.eval.evalsets.binfile import load_bin
    from maskkit.training.eval.evalsets.masking import apply_masks, mask_side_flags

    if not (out / "train.npz").exists() or not (out / "heldout.bin").exists():
        celeb_eval.prepare(SimpleNamespace(data=args.data, out=str(out), holdout=4, same=75, seed=0,
                                           progress=args.progress))
    tr = np.load(out / "train.npz")
    originals = np.stack([load_image(Path(args.data) / p) for p in tr["paths"]])
    pairs = load_bin(out / "heldout.bin")
    mo = apply_masks(pairs.images, mask_side_flags(len(pairs.images), "one"), seed=0, progress=args.progress)
    d = {"pre_images": _resize(originals, args.size), "labels": tr["labels"].astype(np.int64),
         "ft_images": _resize(tr["images"], args.size), "ft_masked": tr["masked"], "classes": tr["classes"],
         "held_images": _resize(pairs.images, args.size), "held_masked_images": _resize(mo.images, args.size),
         "held_masked": mo.masked, "issame": pairs.issame, "mask_failures": np.array(len(mo.failures))}
    d["folds"], rule = pairs.folds(10)  # maskkit eval's folds (from the file's pair order)
    d["fold_rule"] = np.array(rule)
    np.savez(cache, **d)
    return d


class ArraySource:
    """An engine data source over in-memory uint8 faces: per epoch a seeded permutation, random
    horizontal flip (p 0.5) and one pad-4 random crop offset per batch; batches grouped
    (unmasked first) as the shard loader delivers them."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, masked: np.ndarray, classes, batch: int, seed: int):
        import torch

        self.images = torch.from_numpy(images)
        self.labels = torch.from_numpy(labels)
        self.masked = torch.from_numpy(masked.astype(bool))
        self.classes = [str(c) for c in classes]
        self.num_samples, self.num_workers = len(labels), 0
        self.batch, self.seed, self.size = batch, seed, images.shape[1]

    def epoch_iter(self, epoch, skip_batches, positions):
        import torch

        g = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        order = torch.randperm(self.num_samples, generator=g)
        s = self.size
        for b in range(self.num_samples // self.batch):
            idx = order[b * self.batch:(b + 1) * self.batch]
            idx = idx[torch.argsort(self.masked[idx].to(torch.int8), stable=True)]  # unmasked first
            x = self.images[idx].clone()
            flip = torch.rand(len(idx), generator=g) < 0.5
            x[flip] = x[flip].flip(2)
            pad = torch.nn.functional.pad(x.permute(0, 3, 1, 2), (4, 4, 4, 4)).permute(0, 2, 3, 1)
            dy, dx = torch.randint(0, 9, (2,), generator=g).tolist()
            if b < skip_batches:
                continue
            yield {"images": pad[:, dy:dy + s, dx:dx + s].contiguous(), "labels": self.labels[idx],
                   "masked": self.masked[idx], "worker": 0, "stream_pos": b + 1}


# ------------------------------------------------------------------------------------------------
def evaluate_model(model, d: dict, batch: int = 128) -> dict:
    """Held-out 10-fold accuracy at mask side none and one; mean ||sigma|| masked / unmasked."""
    from maskkit.training.eval.verification import evaluate, extract_embeddings

    t = time.perf_counter()
    n = len(d["held_images"])
    e_none = extract_embeddings(model, d["held_images"], np.zeros(n, bool), batch, True, False)
    # side one: the first images are the unmasked ones already embedded; embed the masked seconds
    e_two = extract_embeddings(model, d["held_masked_images"][1::2], d["held_masked"][1::2], batch, True, False)
    kw = {"folds": d["folds"], "fold_rule": str(d["fold_rule"])}
    acc_none = evaluate(e_none.mu[0::2], e_none.mu[1::2], d["issame"], **kw).summary()["accuracy"]
    acc_one = evaluate(e_none.mu[0::2], e_two.mu, d["issame"], **kw).summary()["accuracy"]
    rec = {"acc_none": acc_none, "acc_one": acc_one, "eval_s": time.perf_counter() - t}
    if e_none.sigma is not None:
        rec["sigma_unmasked"] = float(e_none.sigma_norm.mean())
        rec["sigma_masked"] = float(e_two.sigma_norm[e_two.masked].mean())
    return rec


def base_config(args, **kw):
    from maskkit.training.config import TrainConfig

    return TrainConfig(data="memory", backbone="r18", width=0.25, embedding_size=128, image_size=(args.size, args.size),
                       batch_size=args.batch, lr_base_batch=args.batch, num_workers=0, device="cpu", amp="none",
                       progress=False, tensorboard=False, ckpt_every=0, log_every=10_000,
                       extra={"benchmark": "benchmarks/finetune_proxy.py"}, **kw)


def pretrain(args, d: dict) -> Path:
    from maskkit.training.api import load_model
    from maskkit.training.checkpoints.write import write_arcface_torch
    from maskkit.training.engine import train

    out = Path(args.out)
    path = out / "pretrained.pth"
    if path.exists():
        return path
    n = len(d["labels"])
    spe = n // args.batch
    epochs = max(1, math.ceil(args.pre_steps / spe))
    cfg = base_config(args, out=str(out / "pretrain"), method="arcface", lr=args.pre_lr, epochs=epochs,
                      milestones=(max(1, round(0.6 * epochs)), max(2, round(0.85 * epochs))),
                      warmup_epochs=0.1 * epochs, max_steps=args.pre_steps, steps_per_epoch=spe, seed=0)
    src = ArraySource(d["pre_images"], d["labels"], np.zeros(n, bool), d["classes"], args.batch, 0)
    t = time.perf_counter()
    s = train(cfg, source=src)
    print(f"pretrain: arcface, {s['step']} steps of {args.batch} on {n} unmasked faces, "
          f"{time.perf_counter() - t:.0f} s, last loss {s['last_loss']:.3f}", flush=True)
    _, notes = write_arcface_torch(load_model(out / "pretrain"), path)
    print(f"wrote {path} ({'; '.join(notes)})", flush=True)
    return path


def finetune(args, d: dict, weights: Path, method: str, seed: int) -> dict:
    from maskkit.training.api import load_model
    from maskkit.training.checkpoints.finetune import apply_init_config
    from maskkit.training.checkpoints.read import read_weights
    from maskkit.training.engine import train

    n = len(d["labels"])
    spe = n // args.batch
    epochs = math.ceil(args.steps / spe) + 1
    cfg = base_config(args, out=str(Path(args.out) / f"ft_{method}_s{seed}"), method=method, lr=args.lr,
                      epochs=epochs, milestones=(epochs + 1,), max_steps=args.steps, steps_per_epoch=spe, seed=seed,
                      init=str(weights), finetune_lr_mult=0.1, freeze_steps=args.freeze)
    cfg = apply_init_config(cfg, read_weights(weights))
    src = ArraySource(d["ft_images"], d["labels"], d["ft_masked"], d["classes"], args.batch, seed)
    t = time.perf_counter()
    s = train(cfg, source=src)
    wall = time.perf_counter() - t
    rec = evaluate_model(load_model(cfg.out), d)
    rec.update(method=method, seed=seed, train_s=wall, last_loss=s["last_loss"])
    return rec


# ------------------------------------------------------------------------------------------------
def _ms(xs: list[float], scale: float = 100.0, fmt: str = ".1f") -> str:
    xs = [x * scale for x in xs]
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):{fmt}} ± {sd:{fmt}}"


def table(pre: dict, runs: list[dict], args) -> str:
    lines = ["| model | acc none % | acc one % | ‖σ‖ unmasked | ‖σ‖ masked | train s / run |",
             "|---|---|---|---|---|---|",
             f"| pretrained arcface (unchanged) | {100 * pre['acc_none']:.1f} | {100 * pre['acc_one']:.1f} | – | – | "
             f"{pre.get('train_s', float('nan')):.0f} (pretraining) |"]
    for m in METHODS:
        rs = [r for r in runs if r["method"] == m]
        if not rs:
            continue
        sig = ("–", "–") if "sigma_masked" not in rs[0] else (
            _ms([r["sigma_unmasked"] for r in rs], 1.0, ".2f"), _ms([r["sigma_masked"] for r in rs], 1.0, ".2f"))
        lines.append(f"| {m} (n={len(rs)}) | {_ms([r['acc_none'] for r in rs])} | {_ms([r['acc_one'] for r in rs])} | "
                     f"{sig[0]} | {sig[1]} | {statistics.mean(r['train_s'] for r in rs):.0f} |")
    return "\n".join(lines)


def spread_notes(pre: dict, runs: list[dict]) -> list[str]:
    """Which differences exceed the seed spread: |mean difference| > 2 x its standard error."""
    notes = []
    by = {m: [r for r in runs if r["method"] == m] for m in METHODS}
    for side in ("acc_none", "acc_one"):
        for m, rs in by.items():
            if len(rs) < 2:
                continue
            xs = [r[side] for r in rs]
            se = statistics.stdev(xs) / math.sqrt(len(xs))
            dlt = statistics.mean(xs) - pre[side]
            notes.append(f"{side} {m} vs pretrained: {100 * dlt:+.1f} pts (seed s.e. {100 * se:.1f}) "
                         f"{'EXCEEDS' if abs(dlt) > 2 * se else 'within'} 2 s.e.")
        ref = by.get("arcface") or []
        for m, rs in by.items():
            if m == "arcface" or len(rs) < 2 or len(ref) < 2:
                continue
            a, b = [r[side] for r in rs], [r[side] for r in ref]
            se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
            dlt = statistics.mean(a) - statistics.mean(b)
            notes.append(f"{side} {m} vs arcface: {100 * dlt:+.1f} pts (s.e. {100 * se:.1f}) "
                         f"{'EXCEEDS' if abs(dlt) > 2 * se else 'within'} 2 s.e.")
    for m, rs in by.items():
        if rs and "sigma_masked" in rs[0]:
            diffs = [r["sigma_masked"] - r["sigma_unmasked"] for r in rs]
            notes.append(f"||sigma|| masked - unmasked, {m}: " + ", ".join(f"{x:+.2f}" for x in diffs))
    return notes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default=str(REPO / "runs" / "finetune_proxy"))
    ap.add_argument("--size", type=int, default=64, help="face side in px after masking (multiple of 16)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--pre-steps", type=int, default=500)
    ap.add_argument("--pre-lr", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=120, help="fine-tuning steps per run")
    ap.add_argument("--freeze", type=int, default=20, help="steps with the pretrained parameters frozen")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--min-margin", type=float, default=5.0, help="points above 50 %% the pretrained model must reach")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args(argv)
    if args.size % 16:
        ap.error("--size must be a multiple of 16")
    if not Path(args.data).exists():
        print(f"celeb-aligned data not found at {args.data}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    d = prepare(args)
    print(f"data: {len(d['pre_images'])} training faces ({int(d['ft_masked'].sum())} masked in the fine-tuning set), "
          f"{len(d['issame'])} held-out pairs ({int(d['held_masked'][1::2].sum())} second images masked, "
          f"{int(d['mask_failures'])} could not be), {args.size} px; {time.perf_counter() - t0:.0f} s", flush=True)
    t = time.perf_counter()
    weights = pretrain(args, d)
    pre_train_s = time.perf_counter() - t
    from maskkit.training.api import load_model

    pm = load_model(weights)
    pre = evaluate_model(pm, d)
    pre["train_s"] = pre_train_s
    print(f"pretrained model, {pm.meta['label']}: acc none {100 * pre['acc_none']:.1f} %, one {100 * pre['acc_one']:.1f} % "
          f"(eval {pre['eval_s']:.0f} s)", flush=True)
    if 100 * pre["acc_none"] < 50 + args.min_margin:
        print(f"the pretrained model does not beat chance by {args.min_margin} points: stopping", file=sys.stderr)
        return 3
    runs = []
    for seed in args.seeds:
        for m in args.methods:
            r = finetune(args, d, weights, m, seed)
            runs.append(r)
            extra = (f", ||sigma|| unmasked {r['sigma_unmasked']:.2f} masked {r['sigma_masked']:.2f}"
                     if "sigma_masked" in r else "")
            print(f"{m:8s} seed {seed}: acc none {100 * r['acc_none']:.1f} %, one {100 * r['acc_one']:.1f} %{extra}; "
                  f"train {r['train_s']:.0f} s, eval {r['eval_s']:.0f} s", flush=True)
    tab = table(pre, runs, args)
    notes = spread_notes(pre, runs)
    settings = (f"r18 width 0.25, embedding 128, {args.size} px; pretrain {args.pre_steps} steps of {args.batch}; "
                f"fine-tune {args.steps} steps of {args.batch} (lr {args.lr}, pretrained x0.1, frozen {args.freeze} "
                f"steps), seeds {args.seeds}, num_workers 0, {args.threads} threads; total "
                f"{time.perf_counter() - t0:.0f} s")
    print("\n" + settings + "\n\n" + tab + "\n\n" + "\n".join(notes))
    (out / "results.json").write_text(json.dumps({"settings": settings, "args": vars(args), "pretrained": pre,
                                                  "runs": runs, "table": tab, "notes": notes}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
