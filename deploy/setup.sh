#!/usr/bin/env bash
# Installs what the deployment checks need, idempotently: Debian's podman, buildah, skopeo, mmdebstrap and runc, and
# prometheus for promtool (apt; needs root), and the pinned Python tools of deploy/requirements.txt (cfn-lint, Helm's
# library, Kubernetes schemas, hadolint) into deploy/.venv.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
missing=()
for tool in podman buildah skopeo mmdebstrap runc; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    "$here/../scripts/apt-install.sh" "${missing[@]}"
fi
"$here/../scripts/setup-prometheus.sh"
venv="$here/.venv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [[ -x "$venv/bin/cfn-lint" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi
echo "setting up deploy/.venv (cfn-lint, Helm's library, Kubernetes schemas, hadolint; about a minute)..." >&2
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
echo "$want" > "$stamp"
