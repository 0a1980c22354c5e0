#!/usr/bin/env bash
# GPU checks of maskkit train in one command (< 8 minutes on one H100/H200 for parts 1-4):
#   1. train_bench --gpu: r50, bf16 autocast, channels_last, batch 256: img/s, peak memory, MFU
#      per method, and MaskDUL / ArcFace step ratio (alternated steps, on a grouped batch as the
#      loader delivers it and on the same flags interleaved: index_select routing);
#   2. the same for arcface + maskdul with torch.compile;
#   3. fp16 + GradScaler path (a few steps);
#   4. the real training loop (engine.train) on synthetic CUDA batches: maskdul r50 bf16, a few
#      dozen steps, checkpoint, exact-resume continuation, reload with api.load_model, embeddings;
#   5. online masks (benchmarks/online_gpu.py): the loader per core with and without masks drawn
#      in the workers, and the real loop fed by it (maskdul r50, --online-masks vs without).
#      Needs opencv, webdataset and pillow (pip install -e ".[gpu]"); skipped, and said, without.
# Parts 1-4 need only python3 + torch (+ numpy): the package is made importable through a
# PYTHONPATH shim (no pip install). Every part runs under `timeout` and its failure is reported, not fatal.
# Results: printed tables; JSON + logs under $OUT when that variable is set.
#
#   opt-in: PARTS="... autotune" adds arcface + maskdul with torch.compile mode max-autotune
#   (tuned conv/GEMM kernels; several minutes of compile, so not in the default 8-minute set).
# usage: bash benchmarks/gpu.sh            (from anywhere; env: PY=python3, BATCH=256, OUT=dir,
#        PARTS="eager compile fp16 loop online", WORKERS=8 loader workers of part 5,
#        PROFILE=1 to print the top CUDA kernels per method)
set -u
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-python3}"
BATCH="${BATCH:-256}"
PARTS="${PARTS:-eager compile fp16 loop online}"
PROF=""; [ "${PROFILE:-0}" = "1" ] && PROF="--profile"
has() { case " $PARTS " in *" $1 "*) return 0;; esac; return 1; }
OUT="${OUT:-}"
SHIM="$(mktemp -d)"
mkdir -p "$SHIM/maskkit"
cp "$REPO/maskkit/__init__.py" "$SHIM/maskkit/__init__.py"
ln -s "$REPO/training" "$SHIM/maskkit/training"
# the rest of the package (io, util, render, ...) and the mask templates, for part 5
for p in "$REPO"/maskkit/*; do
  n=$(basename "$p"); [ "$n" = "__init__.py" ] || [ -e "$SHIM/maskkit/$n" ] || ln -s "$p" "$SHIM/maskkit/$n"
done
ln -s "$REPO/masks" "$SHIM/maskkit/masks"
export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
LOGDIR="${OUT:-$SHIM/out}"
mkdir -p "$LOGDIR"
declare -a SUMMARY=()

part() {  # part NAME SECONDS CMD...
  local name="$1" secs="$2"; shift 2
  echo; echo "=== $name (limit ${secs}s) ==="
  local t0=$(date +%s)
  timeout "$secs" "$@" 2>&1 | tee "$LOGDIR/$name.log"
  local rc=${PIPESTATUS[0]}
  local dt=$(( $(date +%s) - t0 ))
  if [ "$rc" -eq 0 ]; then SUMMARY+=("$name: ok (${dt}s)"); else SUMMARY+=("$name: FAILED rc=$rc (${dt}s), see $LOGDIR/$name.log"); fi
}

echo "maskkit gpu.sh  repo=$REPO  python=$($PY -c 'import sys; print(sys.version.split()[0])')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: n/a"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"

has eager && part bench_eager 180 $PY "$REPO/benchmarks/train_bench.py" --gpu --batch "$BATCH" --steps 15 --warmup 5 \
  --repeats 2 --ratio-rounds 10 $PROF --json "$LOGDIR/bench_eager.json"
has compile && part bench_compile 200 $PY "$REPO/benchmarks/train_bench.py" --gpu --batch "$BATCH" --methods arcface,maskdul \
  --compile --steps 15 --warmup 4 --repeats 2 --json "$LOGDIR/bench_compile.json"
has autotune && part bench_autotune 420 $PY "$REPO/benchmarks/train_bench.py" --gpu --batch "$BATCH" \
  --methods arcface,maskdul --compile --compile-mode max-autotune --steps 15 --warmup 4 --repeats 2 \
  --json "$LOGDIR/bench_autotune.json"
has fp16 && part bench_fp16 60 $PY "$REPO/benchmarks/train_bench.py" --gpu --batch "$BATCH" --methods maskdul --amp fp16 \
  --steps 5 --warmup 2 --repeats 1 --json "$LOGDIR/bench_fp16.json"

cat > "$SHIM/loop.py" <<'EOF'
"""engine.train on synthetic CUDA batches: run, interrupt, resume, reload, embed."""
import json, os, sys, time
import torch
from maskkit.training.config import TrainConfig
from maskkit.training.engine import SyntheticSource, setup_distributed, train
from maskkit.training.api import load_model

out = sys.argv[1]
batch = int(sys.argv[2])
cfg = TrainConfig(data="synthetic", out=os.path.join(out, "run"), method="maskdul",
                  backbone=os.environ.get("LOOP_BACKBONE", "r50"), width=float(os.environ.get("LOOP_WIDTH", "1")),
                  batch_size=batch, amp="bf16", channels_last=True, steps_per_epoch=20, epochs=30,
                  max_steps=30, log_every=10, ckpt_every=15, progress=False, tensorboard=False,
                  num_workers=0, seed=0)
info = setup_distributed(cfg)
src = SyntheticSource(cfg, info, num_classes=10000, num_samples=20 * batch)
t = time.time()
s1 = train(cfg, source=src)
print("run to step", s1["step"], "in", round(time.time() - t, 1), "s; last loss", s1["last_loss"])
s2 = train(cfg.replace(max_steps=40), resume=True, source=src)
print("resumed to step", s2["step"], "last loss", s2["last_loss"])
recs = [json.loads(l) for l in open(os.path.join(cfg.out, "log.jsonl")) if '"loss"' in l]
for r in recs:
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
m = load_model(cfg.out, device=str(info.device))
x = torch.randint(0, 256, (8, 112, 112, 3), dtype=torch.uint8).numpy()
mu, sigma = m.embed(x, masked=[True, False] * 4)
print("embed:", mu.shape, sigma.shape, "finite", bool(abs(mu).sum() > 0), "sigma mean", float(sigma.mean()))
ok = s2["step"] == 40 and all(r["loss"] == r["loss"] for r in recs) and mu.shape == (8, 512)
print("LOOP", "OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
EOF
has loop && part train_loop 150 $PY "$SHIM/loop.py" "$SHIM/loop" "$BATCH"
if has online; then
  if $PY -c "import cv2, webdataset, PIL" 2>/dev/null; then
    part online 300 $PY "$REPO/benchmarks/online_gpu.py" --out "$SHIM/online" --batch "$BATCH" \
      --workers "${WORKERS:-8}" --steps 40
    [ -n "$OUT" ] && cp "$SHIM/online/online_gpu.json" "$OUT/" 2>/dev/null
  else
    SUMMARY+=("online: skipped (needs opencv-python-headless, webdataset, pillow: pip install -e '.[gpu]')")
  fi
fi

echo; echo "=== summary ==="
for s in "${SUMMARY[@]}"; do echo "  $s"; done
$PY - "$LOGDIR" <<'EOF' || true
import json, sys, os
d = sys.argv[1]
print(f"\n{'run':8s} {'method':8s} {'amp':5s} {'img/s':>9s} {'mem GB':>7s} {'TFLOP/s':>8s} {'MFU spec':>9s} {'MFU 790':>8s} {'vs arc':>7s}")
for name in ("bench_eager", "bench_compile", "bench_autotune", "bench_fp16"):
    p = os.path.join(d, name + ".json")
    if not os.path.exists(p):
        continue
    for r in json.load(open(p))["rows"]:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        m790 = f"{100 * r['mfu_vs_790']:.1f}%" if r.get("mfu_vs_790") else "-"
        print(f"{name[6:]:8s} {r['method']:8s} {r['amp']:5s} {r['img_s']:9.1f} {r['peak_mem_gb']:7.2f} "
              f"{r['tflops']:8.1f} {mfu:>9s} {m790:>8s} {r.get('ratio_vs_arcface', float('nan')):7.3f}")
print("anchor: arcface_torch r50 fp16 ~690 img/s per V100; MFU target >= 45%")
EOF
[ -n "$OUT" ] && printf '%s\n' "${SUMMARY[@]}" > "$OUT/summary.txt"
rm -rf "$SHIM/maskkit" 2>/dev/null || true
exit 0
