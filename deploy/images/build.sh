#!/usr/bin/env bash
# Builds the two images with podman and no daemon, pulling nothing from a registry:
#   localhost/outpost-controller:<version> (outpost-controller, outpostctl) and localhost/outpost-agent:<version>
#   (outpost-agent, Python, uv, a default venv with the pinned acryl-datahub).
# The base root file system is made once from Debian packages (mmdebstrap, ~25 s) and kept as
# localhost/outpost-base:bookworm. Usage: deploy/images/build.sh [--profile release|debug]
#   release (default): builds the shipped binaries (`-p`, so the test build's fail points are left out);
#   debug: packs the binaries the test suite just built (deploy/test.sh uses this to stay fast).
# Prints the two image names. Needs deploy/setup.sh's tools (podman, mmdebstrap, runc).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
export CONTAINERS_CONF="$root/deploy/containers.conf"
profile=release
while (($#)); do
    case "$1" in
        --profile) profile="$2"; shift 2 ;;
        *) echo "usage: $0 [--profile release|debug]" >&2; exit 2 ;;
    esac
done
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

if ! podman image exists localhost/outpost-base:bookworm; then
    echo "making the base root file system from Debian packages (mmdebstrap, about 30 s)..." >&2
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates,tini bookworm - \
        | podman import --quiet - localhost/outpost-base:bookworm >/dev/null
fi

case "$profile" in
    release) cargo build --release --quiet -p outpost-controller -p outpost-ctl -p outpost-agent; bin="$root/target/release" ;;
    debug) bin="$root/target/debug" ;;
    *) echo "--profile must be release or debug" >&2; exit 2 ;;
esac
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/bin"
for b in outpost-controller outpostctl outpost-agent; do
    [[ -x "$bin/$b" ]] || { echo "$bin/$b is missing: build it first" >&2; exit 1; }
    cp "$bin/$b" "$context/bin/"
done
# outpostctl's man pages and shell completions, generated from its own flags, for the controller image.
"$bin/outpostctl" man --out "$context/share/man/man1" >/dev/null
mkdir -p "$context/share/completions"
"$bin/outpostctl" completion bash > "$context/share/completions/outpostctl.bash"
"$bin/outpostctl" completion zsh > "$context/share/completions/_outpostctl"
"$bin/outpostctl" completion fish > "$context/share/completions/outpostctl.fish"
build() {
    local name="$1"; shift
    podman build --quiet --pull=never --layers -f "deploy/images/$name.Containerfile" \
        --build-arg "VERSION=$version" --build-arg "COMMIT=$commit" -t "localhost/$name:$version" "$@" "$context" >/dev/null
    echo "localhost/$name:$version"
}
build outpost-controller
# pip inside the build needs the host's CA bundle (HTTPS to the package registry is re-signed on these machines).
build outpost-agent -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro
