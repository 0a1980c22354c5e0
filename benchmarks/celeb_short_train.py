"""A short MaskDUL training on ../shared/data/celeb-aligned, with held-out verification.

12 identities of ArcFace-aligned 112x112 faces: 2 are held out for verification, the other 10
are written as maskkit shards (FORMAT.md) with about half of the faces given a synthetic mask
(maskkit.render on dlib landmarks; a face the renderer cannot fit stays unmasked and is
counted). A narrow IResNet-18 is trained on CPU for a few minutes; the script prints the loss per
epoch and the held-out 10-fold verification accuracy (insightface protocol: flip-summed,
L2-normalised embeddings, squared-L2 distance, 10 folds) before and after training, on
unmasked-unmasked pairs and unmasked-masked pairs (the masked face routed to the masked branch).

    python benchmarks/celeb_short_train.py [--epochs 4] [--width 0.25] [--work /tmp/maskkit_celeb]

Nothing is written into the repository; shards and the run go to ``--work``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "celeb-aligned"


def load_faces(root: Path) -> dict[str, list[tuple[str, np.ndarray]]]:
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        out[d.name] = [(f.name, cv2.imread(str(f))[:, :, ::-1].copy()) for f in sorted(d.iterdir())
                       if f.suffix.lower() in (".jpg", ".jpeg", ".png")]
    return out


def masker(seed: int):
    """``fn(rgb, i) -> (masked_rgb, style) | None`` using maskkit.render + dlib landmarks."""
    from maskkit.face.landmarks import landmarks_in_box
    from maskkit.render import CannotFit, MaskRenderer

    renderer = MaskRenderer()

    def fn(rgb: np.ndarray, i: int):
        try:
            lm = landmarks_in_box(rgb, None)
            res = renderer.render(rgb, lm, "random", np.random.default_rng([seed, i]))
        except CannotFit:
            return None
        return res.image, res.params.get("style")

    return fn


def embed(model, images: np.ndarray, masked: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """insightface protocol: embedding(x) + embedding(flip(x)), L2-normalised; and sigma(x)."""
    mu, sigma = model.embed(images, masked)
    mu_f, _ = model.embed(np.ascontiguousarray(images[:, :, ::-1]), masked)
    e = mu + mu_f
    return e / np.linalg.norm(e, axis=1, keepdims=True), sigma


def make_pairs(labels: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    same, diff = [], []
    idx = np.arange(len(labels))
    while len(same) < n or len(diff) < n:
        a, b = rng.choice(idx, 2, replace=False)
        if labels[a] == labels[b] and len(same) < n:
            same.append((a, b))
        elif labels[a] != labels[b] and len(diff) < n:
            diff.append((a, b))
    pairs = np.array(same + diff)
    issame = np.array([True] * n + [False] * n)
    perm = rng.permutation(len(pairs))  # mix positives and negatives across the 10 folds
    return pairs[perm], issame[perm]


def verify(ea: np.ndarray, eb: np.ndarray, pairs: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    from maskkit.training.eval.verification import evaluate_distances

    dist = ((ea[pairs[:, 0]] - eb[pairs[:, 1]]) ** 2).sum(1)
    r = evaluate_distances(dist, issame)
    return r.accuracy, r.accuracy_std


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--work", default="/tmp/maskkit_celeb")
    ap.add_argument("--holdout", default="Hugh_Laurie,Tina_Fey")
    ap.add_argument("--method", default="maskdul")
    ap.add_argument("--backbone", default="r18")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.1, help="at batch 128 (scaled linearly)")
    ap.add_argument("--ratio", type=float, default=0.5, help="share of training faces given a mask")
    ap.add_argument("--pairs", type=int, default=600, help="positive (= negative) held-out pairs")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    import torch

    from maskkit.training.api import InferenceModel, load_model, normalize
    from maskkit.training.config import TrainConfig
    from maskkit.training.data import write_shards
    from maskkit.training.engine import train
    from maskkit.training.model import build_model

    t_all = time.time()
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    faces = load_faces(Path(a.data))
    hold = a.holdout.split(",")
    train_ids = [i for i in faces if i not in hold]
    rng = np.random.default_rng(a.seed)
    mask_fn = masker(a.seed)

    # -- training shards ------------------------------------------------------------------------
    samples, n_fail = [], 0
    t = time.time()
    for li, ident in enumerate(train_ids):
        for j, (fname, img) in enumerate(faces[ident]):
            s = {"key": f"{ident}_{j:04d}", "image": img, "label": li, "src": f"{ident}/{fname}"}
            if rng.random() < a.ratio:
                m = mask_fn(img, len(samples))
                if m is None:
                    n_fail += 1
                else:
                    s.update(image=m[0], masked=True, style=m[1])
            samples.append(s)
    order = rng.permutation(len(samples))
    samples = [samples[i] for i in order]
    ss = write_shards(work / "shards", samples, train_ids, shard_samples=256, command="celeb_short_train.py")
    print(f"shards: {ss.num_samples} training faces of {len(train_ids)} identities, {ss.num_masked} masked "
          f"({n_fail} could not be fitted, kept unmasked), {len(ss.urls)} shards, {time.time() - t:.0f}s")

    # -- held-out set: every face unmasked, and masked --------------------------------------------
    h_imgs, h_lab, h_mimgs, h_ok = [], [], [], []
    for li, ident in enumerate(hold):
        for j, (fname, img) in enumerate(faces[ident]):
            m = mask_fn(img, 10_000_000 + len(h_imgs))
            h_imgs.append(img), h_lab.append(li)
            h_mimgs.append(m[0] if m is not None else img), h_ok.append(m is not None)
    h_imgs, h_mimgs, h_lab, h_ok = np.stack(h_imgs), np.stack(h_mimgs), np.array(h_lab), np.array(h_ok)
    pairs, issame = make_pairs(h_lab, a.pairs, np.random.default_rng(a.seed + 1))
    print(f"held out: {len(h_imgs)} faces of {hold}, {int(h_ok.sum())} masked versions; "
          f"{len(pairs)} pairs ({int(issame.sum())} same)")

    cfg = TrainConfig(data=str(work / "shards"), out=str(work / "run"), method=a.method, backbone=a.backbone,
                      width=a.width, batch_size=a.batch, lr=a.lr, epochs=a.epochs,
                      milestones=(max(1, a.epochs - 2), a.epochs - 1), num_workers=a.workers,
                      shuffle_buffer=512, log_every=10, ckpt_every=10_000, seed=a.seed, progress=False,
                      tensorboard=False)

    def evaluate(model: InferenceModel) -> dict:
        zeros, ones = np.zeros(len(h_imgs), bool), h_ok.copy()
        e, su = embed(model, h_imgs, zeros)
        em, sm = embed(model, h_mimgs, ones)
        acc_u = verify(e, e, pairs, issame)
        acc_m = verify(e, em, pairs, issame)
        out = {"acc_unmasked": acc_u, "acc_unmasked_vs_masked": acc_m}
        if model.has_sigma:
            out["sigma_norm_unmasked"] = float(np.linalg.norm(su, axis=1).mean())
            out["sigma_norm_masked"] = float(np.linalg.norm(sm[h_ok], axis=1).mean())
        return out

    # baseline: the same network at initialisation (BN stats from one pass over training data)
    torch.manual_seed(a.seed)
    init = build_model(cfg)
    bns = [m for m in init.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.momentum = None  # cumulative average
    init.train()
    with torch.no_grad():
        imgs = np.stack([s["image"] for s in samples[:256]])
        flags = torch.tensor([bool(s.get("masked", False)) for s in samples[:256]])
        for i in range(0, 256, 64):
            x = normalize(torch.from_numpy(imgs[i:i + 64]))
            init(x, flags[i:i + 64])
    before = evaluate(InferenceModel(init, cfg.to_dict()))

    t = time.time()
    summary = train(cfg)
    train_s = time.time() - t
    after = evaluate(load_model(cfg.out))

    recs = [json.loads(line) for line in open(Path(cfg.out) / "log.jsonl") if '"loss"' in line]
    print(f"\ntraining: {summary['step']} steps ({summary['steps_per_epoch']}/epoch x {a.epochs} epochs, batch "
          f"{a.batch}) in {train_s / 60:.1f} min; {a.method} {a.backbone} width {a.width}")
    print(f"{'step':>5s} {'epoch':>6s} {'loss':>8s} {'cls':>8s} {'g':>7s} {'kl':>8s} {'|s| m':>6s} {'|s| u':>6s} "
          f"{'|f|':>6s} {'lr':>7s} {'img/s':>6s}")
    f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
    for r in recs:
        print(f"{r['step']:5d} {r['epoch']:6.2f} {r['loss']:8.3f} {r['cls']:8.3f} {r['g']:7.4f} {f(r['kl'], '8.1f')} "
              f"{f(r.get('sigma_masked'), '6.2f')} {f(r.get('sigma_unmasked'), '6.2f')} {r['mag']:6.2f} "
              f"{r['lr']:7.4f} {f(r.get('img_s'), '6.1f')}")
    first, last = recs[0], recs[-1]
    print(f"\nloss {first['loss']:.3f} (first {cfg.log_every} steps) -> {last['loss']:.3f} (last interval); "
          f"cls {first['cls']:.3f} -> {last['cls']:.3f}")
    print(f"\nheld-out 10-fold verification ({len(pairs)} pairs, {hold}), chance = 0.500")
    print(f"{'':14s} {'unmasked':>16s} {'unmasked-masked':>16s}")
    for name, r in (("at init", before), ("trained", after)):
        print(f"{name:14s} {r['acc_unmasked'][0]:8.3f} +- {r['acc_unmasked'][1]:.3f} "
              f"{r['acc_unmasked_vs_masked'][0]:8.3f} +- {r['acc_unmasked_vs_masked'][1]:.3f}")
    if "sigma_norm_masked" in after:
        print(f"held-out mean ||sigma||: unmasked {after['sigma_norm_unmasked']:.2f}, "
              f"masked {after['sigma_norm_masked']:.2f}")
    res = {"before": before, "after": after, "steps": summary["step"], "train_minutes": train_s / 60,
           "loss_first": first["loss"], "loss_last": last["loss"], "num_train": ss.num_samples,
           "num_masked": ss.num_masked}
    (work / "result.json").write_text(json.dumps(res, indent=2))
    print(f"total {(time.time() - t_all) / 60:.1f} min; result in {work / 'result.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
