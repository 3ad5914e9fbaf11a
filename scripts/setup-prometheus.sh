#!/usr/bin/env bash
# Installs Debian's prometheus package (prometheus and promtool) when either is missing: the alert rules are checked
# and unit-tested with promtool, and an integration test runs a real Prometheus against a fleet. Idempotent.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    "$here/apt-install.sh" prometheus
fi
