"""Masked-face verification and identification of a short-trained model on celeb-aligned.

Three stages (``all`` runs them in a row, on CPU by default)::

    python benchmarks/celeb_eval.py prepare   # split identities, mask half the training faces,
                                              # write train.npz and the held-out heldout.bin
    python benchmarks/celeb_eval.py train     # engine.train from train.npz (torch + numpy only:
                                              # runs on a bare GPU box with --device cuda)
    python benchmarks/celeb_eval.py evaluate  # maskkit eval: MFV with mask side none/one/both,
                                              # MFI with unmasked gallery and masked probes
    python benchmarks/celeb_eval.py all --steps 300

Protocol (deterministic):

* identities sorted by name; the last ``--holdout`` (default 4) are held out, the others train;
* training faces: every face once, every other face (by sorted path) with a synthetic mask;
* verification (held-out identities only): for each identity, ``--same`` same pairs (image k
  vs k+1 of a seeded permutation) and as many different pairs with the other held-out
  identities, written as an insightface ``.bin``; 10-fold protocol;
* identification: gallery = the first ``--gallery-per-id`` images of every identity (held-out
  ones plus the training identities as distractors; the distractors' images were seen in
  training, no probe belongs to them), probes = the other images of the held-out identities,
  synthetically masked (``--mask-side one``); Rank-1/Rank-5 over the whole gallery.

Prints figures; writes everything under ``--out`` (default ``runs/celeb_eval``, git-ignored).
Timings are not measured here.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "celeb-aligned"


# ------------------------------------------------------------------------------------------------
def prepare(args) -> None:
    from maskkit.io.image_io import load_image
    from maskkit.render import MaskRenderer
    from maskkit.training.eval.evalsets.binfile import write_bin
    from maskkit.training.eval.evalsets.masking import apply_masks

    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ids = sorted(p.name for p in data.iterdir() if p.is_dir())
    train_ids, held = ids[: -args.holdout], ids[-args.holdout:]
    files = {i: sorted((data / i).glob("*.jpg"), key=lambda p: (len(p.stem), p.stem)) for i in ids}
    print(f"train identities ({len(train_ids)}): {train_ids}\nheld-out ({len(held)}): {held}")

    # training set: all faces of the training identities, every other one masked
    imgs, labels, paths = [], [], []
    for li, i in enumerate(train_ids):
        for p in files[i]:
            imgs.append(load_image(p))
            labels.append(li)
            paths.append(f"{i}/{p.name}")
    imgs = np.stack(imgs)
    want = np.arange(len(imgs)) % 2 == 1
    mo = apply_masks(imgs, want, seed=args.seed, renderer=MaskRenderer(), names=paths, progress=args.progress)
    np.savez_compressed(out / "train.npz", images=mo.images, labels=np.array(labels), masked=mo.masked,
                        classes=np.array(train_ids), paths=np.array(paths))
    print(f"train.npz: {len(imgs)} faces, {mo.n_masked} masked ({len(mo.failures)} could not be masked)")

    # held-out verification pairs
    rng = np.random.default_rng(args.seed)
    perm = {i: rng.permutation(len(files[i])) for i in held}
    pair_imgs, same = [], []
    cache: dict[tuple[str, int], np.ndarray] = {}

    def img(i, k):
        if (i, k) not in cache:
            cache[(i, k)] = load_image(files[i][perm[i][k % len(files[i])]])
        return cache[(i, k)]

    for j, i in enumerate(held):
        others = [h for h in held if h != i]
        for k in range(args.same):
            pair_imgs += [img(i, 2 * k), img(i, 2 * k + 1)]
            same.append(True)
            o = others[k % len(others)]
            pair_imgs += [img(i, 2 * k), img(o, 2 * k + 1 + j)]
            same.append(False)
    write_bin(out / "heldout.bin", pair_imgs, same)
    (out / "split.json").write_text(json.dumps({"train": train_ids, "heldout": held, "seed": args.seed}, indent=2))
    print(f"heldout.bin: {len(same)} pairs ({sum(same)} same)")


# ------------------------------------------------------------------------------------------------
class MemorySource:
    """An engine data source over an in-memory uint8 array (random flip + pad-4 random crop)."""

    def __init__(self, npz: Path, batch: int, device, seed: int = 0):
        import torch

        z = np.load(npz)
        self.classes = [str(c) for c in z["classes"]]
        self.images = torch.from_numpy(z["images"]).to(device)
        self.labels = torch.from_numpy(z["labels"].astype(np.int64)).to(device)
        self.masked = torch.from_numpy(z["masked"]).to(device)
        self.num_samples, self.num_workers = len(self.labels), 0
        self.batch, self.device, self.seed = batch, device, seed

    def epoch_iter(self, epoch, skip_batches, positions):
        import torch

        g = torch.Generator(device="cpu").manual_seed(self.seed * 1000 + epoch)
        n = self.num_samples
        b = skip_batches
        while True:
            order = torch.randperm(n, generator=g)
            for s in range(0, n - self.batch + 1, self.batch):
                idx = order[s:s + self.batch].to(self.device)
                x = self.images[idx]
                flip = (torch.rand(len(idx), generator=g) < 0.5).to(self.device)
                x[flip] = x[flip].flip(2)
                pad = torch.nn.functional.pad(x.permute(0, 3, 1, 2), (4, 4, 4, 4)).permute(0, 2, 3, 1)
                dy, dx = torch.randint(0, 9, (2,), generator=g).tolist()  # one offset per batch
                x = pad[:, dy:dy + 112, dx:dx + 112].contiguous()
                b += 1
                yield {"images": x, "labels": self.labels[idx], "masked": self.masked[idx], "worker": 0,
                       "stream_pos": b}


def train_stage(args) -> None:
    import torch

    from maskkit.training.config import TrainConfig
    from maskkit.training.engine import train

    out = Path(args.out)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    src = MemorySource(out / "train.npz", args.batch, device, args.seed)
    spe = src.num_samples // args.batch
    epochs = max(1, math.ceil(args.steps / spe))
    cfg = TrainConfig(data=str(out / "train.npz"), out=str(out / f"run_{args.method}"), method=args.method,
                      backbone=args.backbone, width=args.width, batch_size=args.batch, lr=args.lr,
                      lr_base_batch=args.batch, epochs=epochs,
                      milestones=(max(1, int(0.6 * epochs)), max(2, int(0.85 * epochs))), warmup_epochs=min(1.0, epochs / 10),
                      max_steps=args.steps, steps_per_epoch=spe, num_workers=0, device=str(device),
                      amp="bf16" if device.type == "cuda" else "none", progress=args.progress, tensorboard=False,
                      log_every=max(1, spe), ckpt_every=0, seed=args.seed,
                      extra={"benchmark": "benchmarks/celeb_eval.py", "train_npz": "train.npz"})
    t = time.time()
    s = train(cfg, source=src)
    print(f"trained {args.method} {args.backbone} x{args.width}: {s['step']} steps ({epochs} epochs of {spe}) "
          f"on {device} in {time.time() - t:.0f} s, last loss {s['last_loss']:.3f}")


# ------------------------------------------------------------------------------------------------
def evaluate_stage(args) -> None:
    from rich.console import Console

    from maskkit.training.eval.evalsets.folders import load_image_folder
    from maskkit.training.eval.compare import compare_table, metrics_table
    from maskkit.training.eval.report import EvalConfig, evaluate_identification, run_eval, write_identification_report

    out = Path(args.out)
    run = out / f"run_{args.method}"
    console = Console()
    from maskkit.training.api import load_model

    model = load_model(run)
    results = {}
    for side in ("none", "one", "both"):
        cfg = EvalConfig(model=str(run), bin=str(out / "heldout.bin"), mask_side=side, seed=args.seed,
                         batch_size=args.eval_batch, out=str(out / f"report_mfv_{side}"), progress=args.progress)
        results[f"mfv_{side}"] = run_eval(cfg, model=model, console=console)

    split = json.loads((out / "split.json").read_text())
    data = Path(args.data)
    faces = load_image_folder(data, progress=args.progress, desc="celeb-aligned")
    g_idx, p_idx, seen = [], [], {}
    order = sorted(range(len(faces)), key=lambda i: (faces.identities[i], len(Path(faces.paths[i]).stem), faces.paths[i]))
    for i in order:
        ident = faces.identities[i]
        if seen.get(ident, 0) < args.gallery_per_id:
            g_idx.append(i)
            seen[ident] = seen.get(ident, 0) + 1
        elif ident in split["heldout"]:
            p_idx.append(i)
    gallery, probes = faces.subset(g_idx), faces.subset(p_idx)
    cfg = EvalConfig(model=str(run), gallery=str(data), probes=str(data), mask_side="one", seed=args.seed,
                     batch_size=args.eval_batch, out=str(out / "report_mfi"), name="celeb-heldout",
                     gallery_per_id=args.gallery_per_id, progress=args.progress)
    ir = evaluate_identification(model, gallery, probes, cfg)
    write_identification_report(ir, Path(cfg.out))
    m = ir.metrics
    m["protocol"]["gallery"] = (f"first {args.gallery_per_id} images of all {len(set(gallery.identities))} identities "
                                f"({len(split['train'])} training identities as distractors)")
    from maskkit.training.eval.report import write_json

    write_json(Path(cfg.out) / "metrics.json", m)
    write_json(run / "eval" / f"{cfg.key}.json", m)
    console.print(metrics_table(m))
    # held-out-only closed set (4-way)
    held_g = [k for k, i in enumerate(g_idx) if faces.identities[i] in split["heldout"]]
    from maskkit.training.eval.identification import identify

    r4 = identify(ir.gallery_emb.mu[held_g], [gallery.identities[k] for k in held_g], ir.probe_emb.mu,
                  probes.identities)
    results["mfi"] = m
    console.print(compare_table([run]))
    summary = {
        "model": {"method": args.method, "run": str(run)},
        "mfv": {side: {"acc": results[f"mfv_{side}"]["cosine"]["accuracy"],
                       "std": results[f"mfv_{side}"]["cosine"]["accuracy_std"],
                       "auc": results[f"mfv_{side}"]["cosine"]["auc"],
                       "val_far1e-3": results[f"mfv_{side}"]["cosine"]["val"],
                       "mls_acc": (results[f"mfv_{side}"]["mls"] or {}).get("accuracy"),
                       "masked": results[f"mfv_{side}"]["counts"]["masked"],
                       "mask_failures": results[f"mfv_{side}"]["counts"]["mask_failures"],
                       "sigma_norm_mean": {k: (v or {}).get("mean") for k, v in
                                           (results[f"mfv_{side}"]["sigma_norm"] or {}).items()}}
                for side in ("none", "one", "both")},
        "mfi": {"rank1": m["cosine"]["rank1"], "rank5": m["cosine"]["rank5"],
                "mls_rank1": (m["mls"] or {}).get("rank1"), "gallery_ids": m["counts"]["identities"],
                "probes": m["counts"]["probes"], "masked": m["counts"]["masked"],
                "heldout_only_rank1": r4.rank1, "heldout_only_ids": r4.n_identities},
    }
    write_json(out / f"summary_{args.method}.json", summary)
    print(json.dumps(summary, indent=1, default=float))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["prepare", "train", "evaluate", "all"])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default=str(REPO / "runs" / "celeb_eval"))
    ap.add_argument("--holdout", type=int, default=4)
    ap.add_argument("--same", type=int, default=75, help="same pairs per held-out identity (as many different)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", default="maskdul")
    ap.add_argument("--backbone", default="r18")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--eval-batch", type=int, default=64)
    ap.add_argument("--gallery-per-id", type=int, default=3)
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args(argv)
    if args.stage in ("prepare", "all"):
        prepare(args)
    if args.stage in ("train", "all"):
        train_stage(args)
    if args.stage in ("evaluate", "all"):
        evaluate_stage(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
