#!/usr/bin/env bash
# Runs one benchmark on release binaries. Usage: bench/run.sh BENCH [args]
#   BENCH: heartbeats | dispatch | throughput | fleet | detection | overhead | pickup | joins | pinned  (outpost-bench; `--help` for args)
#          nemesis  (the fault-injection soak over seeds: --seeds N)
#          celery   (the Celery + Redis peer; installs redis-server and Celery first, see bench/setup-celery.sh)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bench="${1:-heartbeats}"
shift || true
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ), commit: $(git rev-parse --short HEAD)"
if [ "$bench" = nemesis ]; then
    # The fault-injection soak: the nemesis test (tests/tests/nemesis.rs) over seeds 1..N, counting the faults each
    # run survived. Usage: bench/run.sh nemesis [--seeds N]
    seeds=10
    [ "${1:-}" = --seeds ] && seeds="$2"
    scripts/setup-python.sh
    start=$(date +%s); faults=0; failed=0
    for seed in $(seq 1 "$seeds"); do
        out="$(NEMESIS_SEED=$seed cargo nextest run --workspace --no-tests=pass -E 'test(nemesis_seed_a)' --no-capture 2>&1)" || failed=$((failed + 1))
        n="$(grep -o 'faults \[.*\]' <<<"$out" | head -1 | tr ',' '\n' | grep -c '"' || true)"
        faults=$((faults + n))
        echo "seed $seed: $n faults, $(grep -q 'test result: ok' <<<"$out" && echo survived || echo FAILED)"
    done
    elapsed=$(( $(date +%s) - start ))
    echo "nemesis: $seeds seeds, $failed failed, $faults faults survived in $elapsed s = $(( faults * 3600 / (elapsed > 0 ? elapsed : 1) )) faults/hour"
    exit "$failed"
fi
if [ "$bench" = celery ]; then
    bench/setup-celery.sh
    exec bench/.venv-celery/bin/python bench/celery_bench.py "$@"
fi
if [ "$bench" = overhead ] || [ "$bench" = pickup ] || [ "$bench" = pinned ]; then
    scripts/setup-python.sh  # the datahub CLI, DataHub's executor engine and the GMS stand-in's venv
fi
cargo build --release --workspace --bins --quiet
exec target/release/outpost-bench "$bench" "$@"
