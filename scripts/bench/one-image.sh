#!/usr/bin/env bash
# End-to-end time of extracting one layer for one image, from process start to
# file written: `layerlens extract` vs a Python + PyTorch script doing the same
# (scripts/bench/one_image_torch.py): ResNet-18 (the same weights, from
# scripts/bench/reference.py prepare), chelsea.png (scikit-image, via
# scripts/fetch-models.sh), ImageNet preprocessing, layer2 to safetensors.
# Medians of $REPS runs (default 7) after one warm-up run each (warm page cache).
# Needs the reference env (scripts/setup-reference-env.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS=${THREADS:-$(nproc)}
export THREADS RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
REPS=${REPS:-7}
DIR=${LAYERLENS_BENCH_DIR:-$HOME/.cache/layerlens/bench}
PY=${LAYERLENS_REF_ENV:-$HOME/.cache/layerlens/refenv}/bin/python
IMG=${LAYERLENS_ASSETS:-$HOME/.cache/layerlens/assets}/chelsea.png
scripts/fetch-models.sh >/dev/null
[ -f "$DIR/resnet18.safetensors" ] || "$PY" scripts/bench/reference.py prepare "$DIR" >&2
cargo build --release -q -p layerlens-cli
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
timeit() { # command... -> median wall ms
  "$@" >/dev/null 2>&1
  for _ in $(seq "$REPS"); do
    local t0 t1
    t0=$(date +%s%N); "$@" >/dev/null 2>&1; t1=$(date +%s%N)
    echo $(( (t1 - t0) / 1000000 ))
  done | median
}
ll=$(timeit target/release/layerlens extract "zoo:resnet18=$DIR/resnet18.safetensors" \
  --input "$IMG" --layers layer2 --preprocess imagenet --out "$WORK/ll.safetensors")
pt=$(timeit "$PY" scripts/bench/one_image_torch.py "$DIR/resnet18.safetensors" "$IMG" "$WORK/pt.safetensors")
# Same activation from both (the PyTorch file is the reference); they differ by the
# resamplers' last bit (PIL fixed point vs f32: at most one 8-bit level per pixel).
"$PY" - "$WORK/ll.safetensors" "$WORK/pt.safetensors" <<'PY'
import sys
from safetensors.numpy import load_file
a, b = load_file(sys.argv[1])["layer2"], load_file(sys.argv[2])["layer2"]
print(f"max |layerlens - pytorch| on layer2 {a.shape}: {abs(a - b).max():.2e}")
PY
echo "machine: $(lscpu | sed -n 's/^Model name: *//p') x $(nproc) cores, threads=$THREADS, $(date -u +%F), commit $(git rev-parse --short HEAD)"
echo "| one image, ResNet-18 layer2 -> safetensors | median wall ms (process start to file written) |"
echo "|---|---:|"
echo "| layerlens extract | $ll |"
echo "| Python + PyTorch $("$PY" -c 'import torch; print(torch.__version__)') | $pt |"
