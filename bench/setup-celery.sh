#!/usr/bin/env bash
# Installs what the Celery + Redis comparison needs: Debian's redis-server and a venv (bench/.venv-celery) with
# Celery and its Redis client. Idempotent. Used by `bench/run.sh celery`; the test suite does not need it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! command -v redis-server >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y --no-install-recommends redis-server >/dev/null 2>&1 \
        || { $sudo apt-get update -qq && $sudo apt-get install -y --no-install-recommends redis-server >/dev/null; }
fi
venv="$root/bench/.venv-celery"
stamp="$venv/.requirements"
if [ ! -f "$stamp" ] || ! cmp -s "$stamp" "$root/bench/requirements-celery.txt"; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/bench/requirements-celery.txt"
    cp "$root/bench/requirements-celery.txt" "$stamp"
fi
echo "redis-server: $(redis-server --version | awk '{print $3}'), celery: $("$venv/bin/celery" --version | awk '{print $1}')"
