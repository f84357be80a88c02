#!/usr/bin/env bash
# The benchmark harness, side by side: layerlens (crates/layerlens/benches/harness.rs)
# and, when the reference env exists (scripts/setup-reference-env.sh), PyTorch
# and ONNX Runtime (scripts/bench/reference.py) on the same ResNet-18 weights,
# the same inputs' shapes and the same thread count. Prints a markdown table
# (medians of $REPS runs, peak RSS per case) for docs/performance.md.
# The layerlens side runs once per kernel path in $ISAS (default: every path
# this CPU supports above portable, e.g. "avx512 avx2"), through LAYERLENS_ISA.
# Usage: scripts/bench.sh            THREADS=2 REPS=20 CASES=a,b ISAS="avx2" (optional)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-$(nproc)}
export THREADS RAYON_NUM_THREADS=$THREADS REPS=${REPS:-20}
DIR=${LAYERLENS_BENCH_DIR:-$HOME/.cache/layerlens/bench}
PY=${LAYERLENS_REF_ENV:-$HOME/.cache/layerlens/refenv}/bin/python
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
if [ -x "$PY" ] && [ ! -f "$DIR/mobilenet_v2.onnx" ]; then
  "$PY" scripts/bench/reference.py prepare "$DIR" >&2
fi
echo "machine: $(lscpu | sed -n 's/^Model name: *//p') x $(nproc) cores, threads=$THREADS, $(date -u +%F), commit $(git rev-parse --short HEAD)"
cargo bench -q -p layerlens --bench harness --no-run 2>/dev/null
if [ -z "${ISAS:-}" ]; then
  ISAS=$(grep -q avx512f /proc/cpuinfo && echo "avx512 avx2" || echo "avx2")
fi
for isa in $ISAS; do
  LAYERLENS_ISA=$isa cargo bench -q -p layerlens --bench harness -- "$DIR" 2>/dev/null | tee -a "$OUT"
done
if [ -x "$PY" ]; then
  "$PY" scripts/bench/reference.py run "$DIR" 2>/dev/null | tee -a "$OUT"
else
  echo "pytorch / onnxruntime: not installed (scripts/setup-reference-env.sh)"
fi
python3 - "$OUT" <<'PY'
import json, sys
rows, versions = {}, {}
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if "versions" in r:
        versions = r["versions"]
        continue
    if "machine" in r:
        print(f"# {r['machine']}")
        continue
    rows.setdefault(r["case"], {})[r["framework"]] = r
fws = sorted({f for r in rows.values() for f in r if f.startswith("layerlens")}, reverse=True) + ["pytorch", "onnxruntime"]
print()
print("| case | " + " | ".join(f"{f} ms (peak MB)" for f in fws) + " |")
print("|---|" + "---:|" * len(fws))
for case, r in rows.items():
    cells = []
    for f in fws:
        x = r.get(f)
        cells.append(f"{x['median_ms']:.1f} ({x['peak_rss_mb']:.0f})" if x else "")
    print(f"| {case} | " + " | ".join(cells) + " |")
if versions:
    print(f"\nversions: {versions}")
PY
