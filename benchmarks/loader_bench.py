"""The training data loader alone: samples per second per worker core, with and without online masks.

What one loader worker does per sample -- read the tar member, decode the 112x112 JPEG, draw the
epoch's planned mask (``--online-masks``, ratio 0.5: about every other face) and augment
(RandomCrop + flip) -- measured three ways:

* **per core**: the stream run in this process on one thread (``torch`` and OpenCV set to one
  thread), samples per CPU-second of the process (``time.process_time``): what one worker
  core delivers, independent of how loaded the machine is;
* **workers**: a real ``DataLoader`` with ``W`` worker processes, samples per wall-second, and
  per CPU-second of the workers (``resource.getrusage(RUSAGE_CHILDREN)`` once they are joined);
* **plan**: the main process's share with online masks -- reading the set's index once per run
  and planning each epoch (``plan_epoch``).

From the per-core figure with online masks it prints the workers a GPU needs to be fed at 1,000
and 5,000 img/s (the README's table).

    python benchmarks/loader_bench.py                       # makes a synth --ratio 0 set of celeb-aligned
    python benchmarks/loader_bench.py --data SHARDS --samples 4000 --workers 1,2

Nothing is written into the repository; the set goes to ``--work``.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CELEB = REPO.parent / "shared" / "data" / "celeb-aligned"


def make_set(work: Path, per_id: int) -> Path:
    """``maskkit synth --aligned --ratio 0`` on celeb-aligned (``per_id`` images per identity)."""
    from maskkit.pipeline.synth import SynthConfig, run_synth

    out = work / "plain"
    if (out / "manifest.json").exists():
        return out
    src = work / "faces"
    src.mkdir(parents=True, exist_ok=True)
    for d in sorted(p for p in CELEB.iterdir() if p.is_dir()):
        (src / d.name).mkdir(exist_ok=True)
        for f in sorted(d.iterdir())[:per_id]:
            if not (src / d.name / f.name).exists():
                (src / d.name / f.name).symlink_to(f)
    run_synth(SynthConfig(src=src, out=out, ratio=0.0, aligned=True, shard_samples=500, jobs=0, progress=True))
    return out


def stream_for(data: Path, ratio: float | None, batch: int):
    from maskkit.training.data import ShardStream, open_shards
    from maskkit.training.online_masks import OnlineMasks, read_index

    ss = open_shards(data)
    masker = None if ratio is None else OnlineMasks(read_index(ss, (112, 112)), ratio, seed=0)
    if masker is not None:
        masker.set_epoch(0)
    return ShardStream(ss, batch, seed=0, shuffle_buffer=500, masker=masker)


def per_core(data: Path, ratio: float | None, samples: int, batch: int) -> dict:
    """One thread, in this process: samples per CPU-second."""
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    stream = stream_for(data, ratio, batch)
    stream.set_epoch(0)
    it = iter(stream)
    next(it)  # warm-up: the first batch fills the shuffle buffer
    n, masked = 0, 0
    c0, w0 = time.process_time(), time.perf_counter()
    while n < samples:
        b = next(it)
        n += len(b["keys"])
        masked += int(b["masked"].sum())
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return {"samples": n, "masked_share": round(masked / n, 3), "cpu_s": round(cpu, 3),
            "per_core": round(n / cpu, 1), "wall_per_s": round(n / wall, 1)}


def with_workers(data: Path, ratio: float | None, samples: int, batch: int, workers: int) -> dict:
    """A DataLoader with ``workers`` processes: samples per wall-second and per worker CPU-second."""
    from maskkit.training.data import make_loader

    stream = stream_for(data, ratio, batch)
    stream.set_epoch(0)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    w0 = time.perf_counter()
    it = iter(make_loader(stream, workers))
    n = 0
    while n < samples:
        n += len(next(it)["keys"])
    wall = time.perf_counter() - w0
    del it  # joins the workers: their CPU time is counted in RUSAGE_CHILDREN
    time.sleep(0.5)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"workers": workers, "samples": n, "wall_per_s": round(n / wall, 1),
            "per_worker_cpu_s": round(n / cpu, 1) if cpu > 0 else None,
            "note": "includes start-up and prefetched batches not consumed"}


def plan_cost(data: Path, epochs: int = 5) -> dict:
    from maskkit.training.data import open_shards
    from maskkit.training.online_masks import plan_epoch, read_index

    ss = open_shards(data)
    t = time.process_time()
    index = read_index(ss, (112, 112))
    t_index = time.process_time() - t
    t = time.process_time()
    for e in range(epochs):
        plan_epoch(index, 0.5, 0, e, ("surgical", "n95", "kn95", "cloth", "gas"))
    t_plan = (time.process_time() - t) / epochs
    n = len(index.keys)
    return {"samples": n, "index_cpu_s": round(t_index, 3), "index_us_per_sample": round(1e6 * t_index / n, 1),
            "plan_cpu_s_per_epoch": round(t_plan, 4), "plan_us_per_sample": round(1e6 * t_plan / n, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="an unmasked shard set (synth --ratio 0); default: made from celeb-aligned")
    ap.add_argument("--work", default="/tmp/maskkit_loader_bench")
    ap.add_argument("--per-id", type=int, default=200, help="images per celeb-aligned identity for the made set")
    ap.add_argument("--samples", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--workers", default="1,2", help="worker counts for the DataLoader runs ('' to skip)")
    a = ap.parse_args(argv)

    data = Path(a.data) if a.data else make_set(Path(a.work), a.per_id)
    print(f"set: {data} ({json.loads((data / 'manifest.json').read_text())['num_samples']} samples)")
    res = {"plain": per_core(data, None, a.samples, a.batch), "online": per_core(data, a.ratio, a.samples, a.batch)}
    for k, v in res.items():
        print(f"per core, {k:6s}: {v['per_core']:8.1f} samples/CPU-s  ({v['samples']} samples, masked share "
              f"{v['masked_share']}, {v['wall_per_s']} samples/wall-s)")
    plan = plan_cost(data)
    print(f"main process, online masks: index {plan['index_cpu_s']} CPU-s once ({plan['index_us_per_sample']} us/"
          f"sample), plan {plan['plan_cpu_s_per_epoch']} CPU-s per epoch ({plan['plan_us_per_sample']} us/sample)")
    for w in [int(x) for x in a.workers.split(",") if x.strip()]:
        for k, ratio in (("plain", None), ("online", a.ratio)):
            r = with_workers(data, ratio, a.samples, a.batch, w)
            print(f"{w} worker(s), {k:6s}: {r['wall_per_s']:8.1f} samples/wall-s, {r['per_worker_cpu_s']} samples/"
                  "worker-CPU-s")
    core = res["online"]["per_core"]
    print(f"\nworkers per GPU with online masks at ratio {a.ratio} ({core:.0f} samples/s per worker core):")
    print("| GPU speed | worker cores |")
    print("|---|---|")
    for target in (1000, 5000):
        print(f"| {target:,} img/s | {math.ceil(target / core)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
