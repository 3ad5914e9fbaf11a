#!/usr/bin/env bash
# Installs Debian packages for the setup scripts (deploy/setup.sh, scripts/setup-browser.sh): `apt-get install`,
# and when a package has no install candidate in the machine's lists (lists old or empty, as on a fresh image),
# one `apt-get update` first. Needs root; says what to run otherwise.
set -euo pipefail
(($#)) || { echo "usage: scripts/apt-install.sh PACKAGE..." >&2; exit 2; }
if [[ "$(id -u)" != 0 ]]; then
    echo "$*: not installed; install them (apt-get install $*) or run as root" >&2
    exit 1
fi
unknown=()
for package in "$@"; do
    candidate="$(apt-cache policy "$package" 2>/dev/null | awk '/Candidate:/ {print $2}')"
    [[ -n "$candidate" && "$candidate" != "(none)" ]] || unknown+=("$package")
done
if ((${#unknown[@]})); then
    echo "${unknown[*]}: not in this machine's package lists; running apt-get update once..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
fi
echo "installing $* from Debian (about a minute)..." >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
