#!/usr/bin/env bash
# Creates (or refreshes) the project-local Python venv at ./.venv with the pinned tools the quickstart and the
# tests use: DataHub's CLI (acryl-datahub), grpcurl, moto, uv. Idempotent: does nothing when the venv already
# matches scripts/requirements-test.txt. Also puts the tests' own DataHub source (tests/datahub_plugin: runs whose
# length a test decides) on the venv's path, and with --warm-venv-cache fetches what the venv tests build
# (scripts/venv-test-requirements.txt) into their uv cache, so no test waits on a download.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
requirements="$root/scripts/requirements-test.txt"
stamp="$venv/.requirements.sha256"
python="${PYTHON:-python3}"

want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/datahub" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "setting up the Python venv in $venv (acryl-datahub and friends; about 30 s)..." >&2
    if [[ ! -x "$venv/bin/python" ]]; then
        "$python" -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    echo "$want" > "$stamp"
    "$venv/bin/datahub" version >&2
fi

# The tests' source plugin, importable by the venv's `datahub` as `outpost_test_source.HeldSource`.
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
pth="$site/outpost_tests.pth"
if [[ "$(cat "$pth" 2>/dev/null)" != "$root/tests/datahub_plugin" ]]; then
    echo "$root/tests/datahub_plugin" > "$pth"
fi

if [[ "${1:-}" == "--warm-venv-cache" ]]; then
    # The cache the venv tests give agents as UV_CACHE_DIR (tests/src/venvs.rs reads the same path).
    cache="${OUTPOST_TEST_UV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/outpost-tests/uv}"
    venv_requirements="$root/scripts/venv-test-requirements.txt"
    cache_stamp="$cache/.outpost-warm.sha256"
    cache_want="$(cat "$venv_requirements" "$requirements" | sha256sum | cut -d' ' -f1)"
    if [[ "$(cat "$cache_stamp" 2>/dev/null)" != "$cache_want" ]]; then
        echo "fetching the DataHub versions the venv tests build into $cache (once)." >&2
        mkdir -p "$cache"
        scratch="$(mktemp -d)"
        trap 'rm -rf "$scratch"' EXIT
        UV_CACHE_DIR="$cache" "$venv/bin/uv" venv --quiet --python "$venv/bin/python" "$scratch/venv"
        # Each line is one build as a test asks for it: install them one by one, as the agents do.
        grep -v '^\s*\(#\|$\)' "$venv_requirements" | while read -r -a line; do
            UV_CACHE_DIR="$cache" "$venv/bin/uv" pip install --quiet --python "$scratch/venv/bin/python" "${line[@]}"
        done
        echo "$cache_want" > "$cache_stamp"
    fi
fi
