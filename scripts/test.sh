#!/usr/bin/env bash
# README command two: the whole test suite. Installs the pinned Python tools into ./.venv and Chromium with
# playwright-core for the browser tests, checks formatting and lints, then runs every Rust test (unit and
# integration; the integration tests start real controller and agent processes with real TLS and the real `datahub`
# CLI; the browser tests drive the status page in headless Chromium), then every deployment check (deploy/test.sh:
# images, Helm chart, CloudFormation stack). `.ci/run` calls exactly this.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# Never let an AWS SDK reach for instance metadata, whatever a test does.
export AWS_EC2_METADATA_DISABLED=true
export DATAHUB_TELEMETRY_ENABLED=false

scripts/setup-python.sh
scripts/setup-browser.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-tests=pass "$@"
else
    cargo test --workspace "$@"
fi
# The deployment artifacts: lints, the chart against Kubernetes schemas, and the images running a recipe.
deploy/test.sh
