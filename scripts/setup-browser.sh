#!/usr/bin/env bash
# Installs what the browser tests need, idempotently: Debian's Chromium (apt; needs root the first time) and the
# pinned playwright-core (npm ci into tests/browser/node_modules). Playwright drives the system Chromium; it never
# downloads a browser of its own.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! command -v chromium >/dev/null 2>&1; then
    "$root/scripts/apt-install.sh" chromium
fi
browser="$root/tests/browser"
stamp="$browser/node_modules/.package-lock.sha256"
want="$(sha256sum "$browser/package-lock.json" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi
echo "installing playwright-core into tests/browser/node_modules..." >&2
(cd "$browser" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
echo "$want" > "$stamp"
