#!/usr/bin/env bash
# Builds release binaries and runs the benchmarks. Usage: bench/run.sh [heartbeats] [-- extra args]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cargo build --release --workspace --bins --quiet
bench="${1:-heartbeats}"
shift || true
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ), commit: $(git rev-parse --short HEAD)"
target/release/outpost-bench "$bench" "$@"
