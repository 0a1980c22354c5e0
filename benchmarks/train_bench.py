"""Training-step throughput and memory per method and backbone (prints a table; no assertions).

CPU (default)::

    python benchmarks/train_bench.py                       # r18 (width 0.25), batch 8
    -> img/s and peak RSS per method, and the ratio MaskDUL step / ArcFace step (target <= 1.10)
       on grouped batches (unmasked first, as the shard loader delivers them) and, for
       comparison, on the same flags interleaved (index_select routing)
    python benchmarks/train_bench.py --backbones r50 --width 1 --methods arcface,maskdul \
        --steps 2 --repeats 1 --ratio-rounds 6           # the full r50 (about 2 s per step)

GPU::

    python benchmarks/train_bench.py --gpu                 # r50, bf16 autocast, batch 256, channels_last
    python benchmarks/train_bench.py --gpu --compile       # + torch.compile
    python benchmarks/train_bench.py --gpu --compile --compile-mode max-autotune

MFU counts ``3 x 6.31 GMACs x 2 FLOP`` per image (forward + backward of IResNet-50 at 112x112;
scaled by the backbone's own MAC count for others) against the device's dense bf16 peak
(H100/H200: 989 TFLOP/s spec; ``--peak-tflops`` to override). Anchor: arcface_torch r50 fp16
runs ~690 img/s per V100.

Imports only torch/numpy (+ maskkit.training's torch-only modules), so it runs on a bare GPU box.
Timings on a shared machine are noisy: repeat and take the best (``--repeats``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

from maskkit.training.config import AMP_MODES, COMPILE_MODES, TrainConfig  # noqa: E402  (gpu.sh puts a shim on PYTHONPATH)
from maskkit.training.engine import TrainModule
from maskkit.training.iresnet import count_macs
from maskkit.training.losses import build_criterion
from maskkit.training.model import FaceModel, build_model

PEAKS_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "V100": 125.0, "L40S": 362.0, "A10": 125.0,
                "4090": 165.0}


def device_peak(name: str) -> float | None:
    for k, v in PEAKS_TFLOPS.items():
        if k in name:
            return v
    return None


def make_step(method: str, backbone: str, width: float, batch: int, device: torch.device, amp: str,
              channels_last: bool, compile_: bool, num_classes: int, masked_ratio: float = 0.5,
              index_routing: bool = False, compile_mode: str = "default"):
    """One training step of ``method`` on a fixed synthetic batch: ``(step_fn, gmacs_per_img, amp_used)``."""
    cfg = TrainConfig(method=method, backbone=backbone, width=width, batch_size=batch, amp=amp)
    torch.manual_seed(0)
    model = build_model(cfg)
    macs = model_macs(model)
    tm = TrainModule(model, build_criterion(cfg, num_classes), channels_last and device.type == "cuda").to(device)
    if channels_last and device.type == "cuda":
        tm = tm.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD([p for p in tm.parameters() if p.requires_grad], lr=0.01, momentum=0.9, weight_decay=5e-4)
    runner = torch.compile(tm, mode=compile_mode) if compile_ else tm
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp) if device.type == "cuda" else None
    scaler = torch.amp.GradScaler("cuda", enabled=(dtype == torch.float16))
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(0, 256, (batch, 112, 112, 3), dtype=torch.uint8, device=device, generator=g)
    y = torch.randint(0, num_classes, (batch,), device=device, generator=g)
    n_masked = int((torch.rand(batch, generator=torch.Generator().manual_seed(0)) < masked_ratio).sum())
    m_cpu = torch.arange(batch) >= batch - n_masked  # loader flags: on the CPU, grouped (unmasked first)
    if index_routing:  # the same flags interleaved: routed by index_select / index_copy
        m_cpu = m_cpu[torch.randperm(batch, generator=torch.Generator().manual_seed(1))]
    if device.type == "cuda":
        m_cpu = m_cpu.pin_memory()  # as the DataLoader (pin_memory=True) delivers them

    def step() -> None:
        route = FaceModel.route(m_cpu, device)  # as the engine does: no device sync
        m = m_cpu.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, _ = runner(x, y, m, route)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(tm.parameters(), 5.0)
        scaler.step(opt)
        scaler.update()

    return step, macs / 1e9, (amp if dtype else "fp32")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(method: str, backbone: str, width: float, batch: int, steps: int, warmup: int, device: torch.device,
              amp: str, channels_last: bool, compile_: bool, num_classes: int, repeats: int = 1,
              profile: bool = False, compile_mode: str = "default") -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    step, gmacs, amp_used = make_step(method, backbone, width, batch, device, amp, channels_last, compile_,
                                      num_classes, compile_mode=compile_mode)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    warm_s = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        best = min(best, (time.perf_counter() - t) / steps)
    mem = (torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda"
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as tprofile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with tprofile(activities=acts) as prof:
            for _ in range(3):
                step()
            _sync(device)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"--- profile {backbone} {method} (3 steps), top ops by {key}")
        print(prof.key_averages().table(sort_by=key, row_limit=14, max_name_column_width=60))
    return {"method": method, "backbone": backbone, "width": width, "batch": batch, "amp": amp_used,
            "compile": compile_mode if compile_ else False, "step_s": best, "img_s": batch / best,
            "peak_mem_gb": mem, "warmup_s": warm_s,
            "gmacs_per_img": gmacs}


def interleaved_ratio(backbone: str, width: float, batch: int, rounds: int, device: torch.device, amp: str,
                      channels_last: bool, num_classes: int) -> dict:
    """MaskDUL step / ArcFace step with the steps alternated (robust to a noisy shared CPU).

    MaskDUL runs twice: on a grouped batch (unmasked first, as the shard loader delivers it:
    the start blocks run on slices) and on the same flags interleaved (``index_select`` routing).
    """
    steps = {"arcface": make_step("arcface", backbone, width, batch, device, amp, channels_last, False,
                                  num_classes)[0],
             "maskdul": make_step("maskdul", backbone, width, batch, device, amp, channels_last, False,
                                  num_classes)[0],
             "maskdul_index": make_step("maskdul", backbone, width, batch, device, amp, channels_last, False,
                                        num_classes, index_routing=True)[0]}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for fn in steps.values():  # warm-up
        fn()
    for _ in range(rounds):
        for k, fn in steps.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    return {"arcface_median_s": med["arcface"], "maskdul_median_s": med["maskdul"],
            "ratio_median": med["maskdul"] / med["arcface"], "ratio_of_best": best["maskdul"] / best["arcface"],
            "ratio_median_index_routing": med["maskdul_index"] / med["arcface"], "rounds": rounds}


def _one_stream_forward(net, x):
    """One image through the start block (once), the trunk, the mu head [and the sigma head]."""
    h = net.trunk(net.branch_face(x))
    net.mu_head(h)
    if net.logvar_head is not None:
        net.logvar_head(h)


def model_macs(model) -> int:
    """MACs of one image through the model (start block once + trunk + mu head [+ sigma head])."""
    return count_macs(model, forward=_one_stream_forward)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="GPU mode: r50, bf16, batch 256")
    ap.add_argument("--methods", default="arcface,magface,dul,dul-mag,maskdul")
    ap.add_argument("--backbones", default=None, help="default r18 on CPU, r50 on GPU")
    ap.add_argument("--width", type=float, default=None, help="default 0.25 on CPU, 1.0 on GPU")
    ap.add_argument("--batch", type=int, default=None, help="default 8 on CPU, 256 on GPU")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--amp", default="bf16", choices=AMP_MODES)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                    help="torch.compile mode (max-autotune: tuned kernels, minutes of compile)")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--num-classes", type=int, default=None, help="default 1000 on CPU, 10000 on GPU")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--json", default=None, help="write results here")
    ap.add_argument("--profile", action="store_true", help="print the top kernels of 3 profiled steps per row")
    ap.add_argument("--ratio-rounds", type=int, default=None,
                    help="alternated ArcFace/MaskDUL steps for the ratio (default 8 on CPU, 0 on GPU)")
    a = ap.parse_args(argv)

    gpu = a.gpu
    if gpu and not torch.cuda.is_available():
        print("--gpu: CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device("cuda") if gpu else torch.device("cpu")
    if gpu:  # as the engine sets them
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    backbones = (a.backbones or ("r50" if gpu else "r18")).split(",")
    width = a.width if a.width is not None else (1.0 if gpu else 0.25)
    batch = a.batch or (256 if gpu else 8)
    steps = a.steps or (20 if gpu else 3)
    warmup = a.warmup if a.warmup is not None else (5 if gpu else 1)
    repeats = a.repeats or (2 if gpu else 3)
    ncls = a.num_classes or (10000 if gpu else 1000)
    name = torch.cuda.get_device_name(0) if gpu else f"CPU x{torch.get_num_threads()} threads"
    peak = a.peak_tflops or (device_peak(name) if gpu else None)
    print(f"device: {name}; torch {torch.__version__}; batch {batch}; width {width}; steps {steps} x {repeats}"
          f"{'; compile ' + a.compile_mode if a.compile else ''}", flush=True)

    rows = []
    for bb in backbones:
        for method in a.methods.split(","):
            try:
                r = bench_one(method, bb, width, batch, steps, warmup, device, a.amp, not a.no_channels_last,
                              a.compile, ncls, repeats, profile=a.profile, compile_mode=a.compile_mode)
            except Exception as exc:  # keep going: one failure must not hide the other rows
                print(f"{bb} {method}: FAILED {type(exc).__name__}: {exc}", flush=True)
                continue
            flops = 3 * 2 * r["gmacs_per_img"] * 1e9
            r["tflops"] = r["img_s"] * flops / 1e12
            r["mfu"] = r["tflops"] / peak if peak else None
            r["mfu_vs_790"] = r["tflops"] / 790.0 if gpu else None
            rows.append(r)
            print(f"{bb:5s} {method:8s} {r['img_s']:9.1f} img/s  step {r['step_s'] * 1e3:8.1f} ms  "
                  f"peak mem {r['peak_mem_gb']:6.2f} GB  {r['tflops']:7.2f} TFLOP/s"
                  + (f"  MFU {100 * r['mfu']:5.1f}% (spec {peak:.0f})  {100 * r['mfu_vs_790']:5.1f}% (790)"
                     if r["mfu"] is not None else ""), flush=True)
    by = {(r["backbone"], r["method"]): r for r in rows}
    print("\nsummary")
    print(f"{'backbone':8s} {'method':8s} {'img/s':>9s} {'ms/step':>9s} {'mem GB':>7s} {'vs arcface':>10s}"
          + (f" {'MFU':>6s}" if gpu else ""))
    for r in rows:
        base = by.get((r["backbone"], "arcface"))
        ratio = r["step_s"] / base["step_s"] if base else float("nan")
        r["ratio_vs_arcface"] = ratio
        print(f"{r['backbone']:8s} {r['method']:8s} {r['img_s']:9.1f} {r['step_s'] * 1e3:9.1f} "
              f"{r['peak_mem_gb']:7.2f} {ratio:10.3f}" + (f" {100 * r['mfu']:5.1f}%" if r.get("mfu") else ""))
    ratios = {}
    for bb in backbones:
        if (bb, "maskdul") in by and (bb, "arcface") in by:
            ratio = by[(bb, "maskdul")]["ratio_vs_arcface"]
            print(f"{bb}: MaskDUL step / ArcFace step = {ratio:.3f} (best-of-{repeats} timings; target <= 1.10)")
        rounds = a.ratio_rounds if a.ratio_rounds is not None else (0 if gpu else 8)
        if rounds > 0:
            r = interleaved_ratio(bb, width, batch, rounds, device, a.amp, not a.no_channels_last, ncls)
            ratios[bb] = r
            print(f"{bb}: MaskDUL / ArcFace, {rounds} alternated steps: median {r['ratio_median']:.3f} "
                  f"(arcface {r['arcface_median_s'] * 1e3:.0f} ms, maskdul {r['maskdul_median_s'] * 1e3:.0f} ms; "
                  f"ratio of best steps {r['ratio_of_best']:.3f}; target <= 1.10); with index routing "
                  f"(an ungrouped batch): median {r['ratio_median_index_routing']:.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": name, "rows": rows, "ratios": ratios}, indent=2))
    out = os.environ.get("OUT")
    if out and gpu:
        Path(out, "train_bench.json").write_text(json.dumps({"device": name, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
