#!/usr/bin/env bash
# Peak memory and throughput of `layerlens extract` over a directory of 1 000
# and of 10 000 real Fashion-MNIST PNGs (the dataset-size bound of the CLI
# issue: the 10 000-image run must stay within 1.2x of the 1 000-image one).
# Peak memory is the process's maximum resident set size as reported by GNU
# time (%M, from wait4's ru_maxrss). Prints a markdown table.
# Usage: scripts/bench/extract-memory.sh      (LAYERS="conv2d_1 all" to choose)
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/install-fashion-mnist.sh >&2
DIR=${LAYERLENS_BENCH_DIR:-$HOME/.cache/layerlens/bench}/fashion-png
for n in 1000 10000; do
  if [ ! -f "$DIR/$n.done" ]; then
    rm -rf "${DIR:?}/$n"
    python3 scripts/bench/export_fashion_png.py "$DIR/$n" "$n"
    touch "$DIR/$n.done"
  fi
done
cargo build --release -q -p layerlens-cli
BIN=target/release/layerlens
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "machine: $(lscpu | sed -n 's/^Model name: *//p') x $(nproc) cores, $(date -u +%F), commit $(git rev-parse --short HEAD)"
echo
echo "| layers | images | peak RSS (MB) | wall (s) | images/s | output (MB) |"
echo "|---|---:|---:|---:|---:|---:|"
for layers in ${LAYERS:-conv2d_1 all}; do
  for n in 1000 10000; do
    out="$WORK/out-$layers-$n"
    /usr/bin/time -f "%M %e" -o "$WORK/time" \
      "$BIN" extract zoo:seed_cnn --input "$DIR/$n" --layers "$layers" --out "$out" 2>"$WORK/log" \
      || { cat "$WORK/log" >&2; exit 1; }
    read -r kb secs < "$WORK/time"
    mb=$(du -sm "$out" | cut -f1)
    awk -v l="$layers" -v n="$n" -v kb="$kb" -v s="$secs" -v mb="$mb" \
      'BEGIN { printf "| %s | %d | %.1f | %.2f | %.0f | %d |\n", l, n, kb / 1024, s, n / s, mb }'
    rm -rf "$out"
  done
done
