#!/usr/bin/env bash
# Runs one benchmark on release binaries. Usage: bench/run.sh BENCH [args]
#   BENCH: heartbeats | dispatch | throughput | fleet | detection | overhead | pickup | joins  (outpost-bench; `--help` for args)
#          celery   (the Celery + Redis peer; installs redis-server and Celery first, see bench/setup-celery.sh)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bench="${1:-heartbeats}"
shift || true
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ), commit: $(git rev-parse --short HEAD)"
if [ "$bench" = celery ]; then
    bench/setup-celery.sh
    exec bench/.venv-celery/bin/python bench/celery_bench.py "$@"
fi
if [ "$bench" = overhead ] || [ "$bench" = pickup ]; then
    scripts/setup-python.sh  # the datahub CLI, DataHub's executor engine and the GMS stand-in's venv
fi
cargo build --release --workspace --bins --quiet
exec target/release/outpost-bench "$bench" "$@"
