#!/usr/bin/env bash
# The Python package against the CLI, and Ray Data with 1 and 2 actors, in one
# run (docs/performance.md, "Python and Ray"). Uses the test venv and wheel of
# scripts/test-python.sh (run that first); Ray binds loopback only.
set -euo pipefail
cd "$(dirname "$0")/../.."
ENV=${LAYERLENS_PY_ENV:-$HOME/.cache/layerlens/pyenv}
cargo build --release -q -p layerlens-cli
export RAY_USAGE_STATS_ENABLED=0
grep -m1 'model name' /proc/cpuinfo; grep -m1 'cpu family' /proc/cpuinfo; grep -m1 '^model\s' /proc/cpuinfo; nproc
echo "kernels: $(target/release/layerlens --version)"
unshare -n sh -c 'ip link set lo up && exec "$0" scripts/bench/python_bench.py' "$ENV/bin/python"
