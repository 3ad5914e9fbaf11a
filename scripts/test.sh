#!/usr/bin/env bash
# README command two: the whole test suite. Installs the pinned Python tools into ./.venv (and fetches what the
# venv tests build into their uv cache), Chromium with playwright-core for the browser tests, checks formatting and
# lints, then runs every Rust test (unit and integration; the integration tests start real controller and agent
# processes with real TLS and the real `datahub` CLI; the browser tests drive the status page in headless
# Chromium), then every deployment check (deploy/test.sh: images, Helm chart, CloudFormation stack). Nothing stops
# at the first failure: every failing test is named at the end, with where its logs are kept. `.ci/run` calls
# exactly this.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# Never let an AWS SDK reach for instance metadata, whatever a test does.
export AWS_EC2_METADATA_DISABLED=true
export DATAHUB_TELEMETRY_ENABLED=false

scripts/setup-python.sh --warm-venv-cache
scripts/setup-browser.sh
scripts/setup-prometheus.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

rm -rf target/test-logs target/nextest/default/junit.xml
rust=0
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-tests=pass --no-fail-fast "$@" || rust=$?
else
    cargo test --workspace --no-fail-fast "$@" || rust=$?
fi
# The deployment artifacts: lints, the chart against Kubernetes schemas, and the images running a recipe.
deploy=0
deploy/test.sh || deploy=$?

echo
if [[ $rust -eq 0 && $deploy -eq 0 ]]; then
    echo "test command: everything passed"
    exit 0
fi
echo "test command: FAILED"
if [[ $rust -ne 0 ]]; then
    junit=target/nextest/default/junit.xml
    if [[ -f $junit ]]; then
        echo "Rust tests that failed (their output: $junit; their processes' logs: target/test-logs/):"
        .venv/bin/python - "$junit" <<'PY'
import sys, xml.etree.ElementTree as ET
for case in ET.parse(sys.argv[1]).iter("testcase"):
    if case.find("failure") is not None or case.find("error") is not None:
        print(f"  {case.get('classname')} {case.get('name')}")
PY
    else
        echo "Rust tests: failed (exit $rust), see above"
    fi
fi
[[ $deploy -ne 0 ]] && echo "deploy/test.sh failed (exit $deploy), see above"
exit 1
