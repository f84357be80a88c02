#!/usr/bin/env bash
# Long fuzzing runs, one target after the other, at the lowest priority:
#   [RUNS=N] fuzz/campaign.sh SECONDS TARGET [TARGET...]
# Each target runs for SECONDS (only on idle CPU: see the autogroup note below),
# or N executions when RUNS is set, whichever comes first (or until a crash), on fuzz/corpus/TARGET with
# -rss_limit_mb=2048; its log goes to fuzz/logs/TARGET-DATE.log (git-ignored
# with the corpus) and one summary line per target is printed: date,
# executions, seconds, peak RSS, and the crash/OOM/timeout artifacts found
# (in fuzz/artifacts/TARGET/). Build first: cd fuzz && cargo +nightly fuzz build -O
set -uo pipefail
self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")"
# With autogroup scheduling (kernel.sched_autogroup_enabled=1) `nice` only orders
# processes within one session: a niced fuzzer still takes a whole core from
# builds and benchmarks in other sessions. Run in a session of our own whose
# autogroup is niced, so the campaign only gets idle CPU.
if [ -z "${LAYERLENS_FUZZ_SESSION:-}" ] && [ -w /proc/self/autogroup ]; then
    export LAYERLENS_FUZZ_SESSION=1
    exec setsid sh -c 'echo 19 > /proc/self/autogroup; exec "$0" "$@"' "$self" "$@"
fi
secs=$1
shift
mkdir -p logs
for t in "$@"; do
    log="logs/$t-$(date -u +%Y%m%dT%H%M%S).log"
    mkdir -p "corpus/$t" "artifacts/$t"
    before=$(ls "artifacts/$t" | wc -l)
    nice -n 19 cargo +nightly fuzz run -O "$t" "corpus/$t" -- \
        -max_total_time="$secs" ${RUNS:+-runs="$RUNS"} -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1
    rc=$?
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' | tail -1)
    rss=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    after=$(ls "artifacts/$t" | wc -l)
    echo "$(date -u +%Y-%m-%d) $t runs=${runs:-?} seconds=${took:-?} peak_rss_mb=${rss:-?} new_artifacts=$((after - before)) rc=$rc log=fuzz/$log"
done
