"""Online masks on a GPU box: the loader per core, and the training loop fed by it (``gpu.sh`` part ``online``).

No face data travels to the GPU machine, so the set is made here: smooth random 112x112 images,
each with the ArcFace frame's mean 68 landmarks (``masks/generate.py``'s ``MEAN_FACE_112``) jittered
by ~1 px, written as an unmasked FORMAT.md set (what ``synth --ratio 0`` writes: ``landmarks68``
per sample). The renderer draws real masks on them; the images are not faces, so the losses mean
nothing -- this measures speed only:

1. the loader alone, one thread (``loader_bench.per_core``): samples per CPU-second with and
   without online masks at ratio 0.5;
2. ``maskkit.training.loop.train`` on the device with ``--online-masks`` and the same run without
   (same set, same workers): img/s from ``log.jsonl`` after the warm-up steps.

    python benchmarks/online_gpu.py --out /tmp/online --workers 8 --batch 256 --steps 40
    python benchmarks/online_gpu.py --device cpu --backbone r18 --width 0.25 --batch 16 --steps 6  # dry run
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def make_set(out: Path, n: int, classes: int, seed: int = 0) -> Path:
    import cv2
    import numpy as np

    from maskkit.io.image_io import encode_jpeg
    from maskkit.io.shards import FORMAT_NAME, FORMAT_VERSION, Sample, ShardSink
    from maskkit.masks.generate import MEAN_FACE_112
    from maskkit.util.files import write_bytes_atomic, write_json_atomic

    if (out / "manifest.json").exists():
        return out
    rng = np.random.default_rng(seed)
    names = [f"id{c:04d}" for c in range(classes)]
    per_class = {c: {"samples": 0, "masked": 0} for c in names}
    with ShardSink(out, shard_samples=1000) as sink:
        for i in range(n):
            label = i % classes
            img = cv2.resize(rng.integers(40, 220, (8, 8, 3), dtype=np.uint8), (112, 112),
                             interpolation=cv2.INTER_CUBIC)
            lm = MEAN_FACE_112 + rng.normal(0, 1.0, MEAN_FACE_112.shape)
            meta = {"label": label, "identity": names[label], "src": f"synthetic/{i}", "face": 0, "masked": False,
                    "style": None, "mask": None, "landmarks5": None, "landmarks68": np.round(lm, 3).tolist(),
                    "score": None, "twin": None}
            sink.add(Sample(f"{label:06d}_{i:08d}_0", encode_jpeg(img, 95), meta))
            per_class[names[label]]["samples"] += 1
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "image_size": [112, 112], "template": "arcface",
                "classes": names, "num_samples": n, "num_masked": 0, "ratio": 0.0, "paired": False, "seed": seed,
                "styles": {}, "per_class": per_class, "shards": sink.shards,
                "inputs": {"files": n, "ok": n, "failed": 0}, "created_by": "benchmarks/online_gpu.py"}
    write_bytes_atomic(out / "failures.jsonl", b"")
    write_json_atomic(out / "manifest.json", manifest)
    return out


def run_train(data: Path, out: Path, online: bool, a) -> dict:
    from maskkit.training.config import TrainConfig
    from maskkit.training.loop import train

    cfg = TrainConfig(data=str(data), out=str(out), method="maskdul", backbone=a.backbone, width=a.width,
                      batch_size=a.batch, num_workers=a.workers, device=a.device, max_steps=a.steps,
                      log_every=max(1, a.steps // 8), ckpt_every=10 ** 6, online_masks=online, mask_ratio=0.5,
                      progress=False, tensorboard=False, shuffle_buffer=1000)
    t = time.perf_counter()
    s = train(cfg)
    recs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "img_s" in r and r.get("img_s")]
    tail = steps[len(steps) // 2:] or steps  # after the warm-up (first workers' start, cudnn autotune)
    return {"online": online, "steps": s["step"], "seconds": round(time.perf_counter() - t, 1),
            "img_s": round(sum(r["img_s"] for r in tail) / len(tail), 1) if tail else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/maskkit_online_gpu")
    ap.add_argument("--samples", type=int, default=8192)
    ap.add_argument("--classes", type=int, default=512)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--backbone", default="r50")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)

    import shutil

    from loader_bench import per_core

    out = Path(a.out)
    data = make_set(out / "plain", a.samples, a.classes)
    rows = {"plain": per_core(data, None, 2000, 64), "online": per_core(data, 0.5, 2000, 64)}
    for k, v in rows.items():
        print(f"loader per core, {k:6s}: {v['per_core']:8.1f} samples/CPU-s (masked share {v['masked_share']})")
    res = []
    for online in (False, True):
        run = out / ("run_online" if online else "run_plain")
        shutil.rmtree(run, ignore_errors=True)
        res.append(run_train(data, run, online, a))
        print(f"train {'with' if online else 'without'} online masks: {res[-1]}")
    (out / "online_gpu.json").write_text(json.dumps({"loader": rows, "train": res}, indent=2))
    ok = all(r["steps"] == a.steps for r in res)
    print("ONLINE", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
