#!/usr/bin/env bash
# One training step of the seed CNN (batch 64): layerlens, then PyTorch when the
# reference env exists, on the same machine with the same thread count.
# Usage: scripts/bench-train-step.sh   (STEPS=30 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-$(nproc)}
export STEPS=${STEPS:-30} THREADS RAYON_NUM_THREADS=$THREADS
echo "machine: $(lscpu | sed -n 's/^Model name: *//p') x $(nproc) cores, threads=$THREADS, $(date -u +%F)"
cargo bench -q -p layerlens-train --bench train_step 2>/dev/null
PY=${LAYERLENS_REF_ENV:-$HOME/.cache/layerlens/refenv}/bin/python
if [ -x "$PY" ]; then
  "$PY" crates/layerlens-train/benches/train_step_torch.py
else
  echo "pytorch: not installed (scripts/setup-reference-env.sh)"
fi
