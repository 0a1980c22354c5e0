#!/usr/bin/env bash
# sha256 of every output a pure refactor must leave unchanged (issue 10 step 2): synth shards of
# celeb-aligned (--aligned) and lfw-johns (detection), the export-rec .rec/.idx, align and mask on
# the demo faces, and masks/*. Usage: bash benchmarks/output_hashes.sh WORKDIR > hashes.txt
# Needs ../shared/data (or MASKKIT_SHARED_DATA). Prints "sha256  name" lines, sorted.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:?workdir}; rm -rf "$W"; mkdir -p "$W"
D=${MASKKIT_SHARED_DATA:-../shared/data}
MK="${MASKKIT:-.venv/bin/maskkit}"
PY="${PYTHON:-.venv/bin/python}"
$MK synth -q --src "$D/celeb-aligned" --aligned --out "$W/celeb" --ratio 0.5 --jobs 2 >/dev/null
$MK synth -q --src "$D/lfw-johns" --out "$W/johns" --ratio 0.5 --jobs 2 >/dev/null
$MK export-rec "$W/celeb" -o "$W/rec" >/dev/null
$PY - "$W/demo-src" <<'PY'
import sys
from pathlib import Path
from PIL import Image
import matplotlib.cbook as cbook
from skimage import data
out = Path(sys.argv[1]); out.mkdir(parents=True)
Image.fromarray(data.astronaut()).save(out / "astronaut.png")
Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB").save(out / "grace_hopper.png")
PY
$MK align -q --src "$W/demo-src" --out "$W/align" --jobs 1 >/dev/null
$MK mask -q --src "$W/demo-src" --out "$W/mask" --jobs 1 >/dev/null
{
  (cd "$W" && sha256sum celeb/*.tar johns/*.tar rec/*.rec rec/*.idx)
  (cd "$W" && find align mask -type f ! -name '*.json' ! -name '*.jsonl' -print0 | sort -z | xargs -0 sha256sum)
  sha256sum masks/*.png masks/*.json
} | sort -k2
