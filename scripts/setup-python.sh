#!/usr/bin/env bash
# Creates (or refreshes) the project-local Python venv at ./.venv with the pinned tools the quickstart and the
# tests use: DataHub's CLI (acryl-datahub) and grpcurl. Idempotent: does nothing when the venv already matches
# scripts/requirements-test.txt.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
requirements="$root/scripts/requirements-test.txt"
stamp="$venv/.requirements.sha256"
python="${PYTHON:-python3}"

want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [[ -x "$venv/bin/datahub" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi
echo "setting up the Python venv in $venv (acryl-datahub and friends; about 30 s)..." >&2
if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
echo "$want" > "$stamp"
"$venv/bin/datahub" version >&2
