#!/usr/bin/env bash
# Every check of the deployment artifacts; each step fails the run:
#   hadolint on the Containerfiles, cfn-lint on the ECS stack (errors and warnings fail), the Helm chart rendered
#   offline with Helm's own library and validated strictly against Kubernetes 1.28 and 1.37 (deploy/check_chart.py),
#   then the images really run: both are built, a controller container and two agent containers start on loopback
#   (read-only root file systems; the agents have nothing but a join token), the example recipe is submitted from
#   outside with outpostctl and must succeed on each agent, and SIGTERM drains an agent container to exit 0 in time.
# Tools come from deploy/setup.sh. Uses the debug binaries of the test build (deploy/images/build.sh --profile debug).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CONTAINERS_CONF="$root/deploy/containers.conf"
step() { printf '\n==> deploy: %s\n' "$*"; }
started=$SECONDS

deploy/setup.sh
step "hadolint"
deploy/.venv/bin/hadolint deploy/images/*.Containerfile
step "cfn-lint"
deploy/.venv/bin/cfn-lint deploy/cloudformation/outpost-ecs.yaml
step "Helm chart"
deploy/.venv/bin/python deploy/check_chart.py 2>&1 | grep -v 'INFO funcMap fail'

step "images"
[[ -x target/debug/outpost-agent ]] || cargo build --workspace --bins --quiet
mapfile -t images < <(deploy/images/build.sh --profile debug)
controller_image="${images[0]}" agent_image="${images[1]}"
echo "built $controller_image and $agent_image"

step "the images run: a controller, two agents joining with a token, the example recipe"
work="$(mktemp -d)"
run_id="outpost-deploy-$$"
cleanup() {
    podman rm -f --ignore --time 5 "$run_id-agent-1" "$run_id-agent-2" "$run_id-controller" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
target/debug/outpost-controller certs init --out "$work/certs" >/dev/null
target/debug/outpost-controller certs admin --out "$work/certs" --name deploy-test >/dev/null
chmod 0644 "$work"/certs/*   # test-only material, readable by the containers' user
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
grpc="$(port)" join="$(port)" metrics="$(port)"
podman run -d --name "$run_id-controller" --network host --read-only --tmpfs /tmp \
    -v "$work/certs:/certs:ro" "$controller_image" run \
    --listen "127.0.0.1:$grpc" --join-listen "127.0.0.1:$join" --metrics-listen "127.0.0.1:$metrics" \
    --tls-cert /certs/controller.pem --tls-key /certs/controller.key --tls-ca /certs/ca.pem --ca-key /certs/ca.key \
    >/dev/null
ready=""
for _ in $(seq 300); do
    if python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$metrics/readyz').status == 200 else 1)" 2>/dev/null; then
        ready=yes; break
    fi
    sleep 0.2
done
[[ -n "$ready" ]] || { podman logs "$run_id-controller"; echo "the controller container never became ready" >&2; exit 1; }
logged() {  # waits (up to 20 s) for a container's log to show a line
    for _ in $(seq 100); do podman logs "$1" 2>&1 | grep -q "$2" && return 0; sleep 0.2; done
    echo "$1 never logged '$2'" >&2; podman logs "$1" 2>&1 | tail -20 >&2; return 1
}
logged "$run_id-controller" "controller listening"
ctl() {
    target/debug/outpostctl --controller "https://127.0.0.1:$grpc" --tls-cert "$work/certs/admin-deploy-test.pem" \
        --tls-key "$work/certs/admin-deploy-test.key" --tls-ca "$work/certs/ca.pem" "$@"
}
token="$(ctl tokens create --pool default --uses 2 --ttl 10m --description deploy-test | head -1)"
for n in 1 2; do
    podman run -d --name "$run_id-agent-$n" --network host --read-only --tmpfs /tmp \
        -e OUTPOST_JOIN_TOKEN="$token" -e OUTPOST_EXAMPLES=/examples -v "$root/examples:/examples:ro" \
        "$agent_image" --controller "https://127.0.0.1:$grpc" --join-url "https://127.0.0.1:$join" \
        --pool default --slots 1 --worker-id "container-agent-$n" --drain-timeout 20s >/dev/null
done
for _ in $(seq 600); do
    [[ "$(ctl --json workers | grep -c '"state": "READY"')" == 2 ]] && break
    sleep 0.2
done
[[ "$(ctl --json workers | grep -c '"state": "READY"')" == 2 ]] || {
    podman logs "$run_id-agent-1" | tail -20; echo "the agent containers did not both join" >&2; exit 1; }
for n in 1 2; do logged "$run_id-agent-$n" "Starting datahub executor worker"; done
ctl submit --recipe examples/file-to-blackhole.yml --id deploy-a --wait >/dev/null &
a=$!
ctl submit --recipe examples/file-to-blackhole.yml --id deploy-b --wait >/dev/null &
b=$!
wait "$a"; wait "$b"
summary="$(ctl --json tasks)"
python3 - "$summary" <<'PY'
import json, sys
tasks = {t["id"]: t for t in json.loads(sys.argv[1])["tasks"]}
states = {i: (tasks[i]["state"], tasks[i]["workerId"]) for i in ("deploy-a", "deploy-b")}
assert all(s == "SUCCEEDED" for s, _ in states.values()), states
assert {w for _, w in states.values()} == {"container-agent-1", "container-agent-2"}, f"each agent runs one: {states}"
print(f"example recipe SUCCEEDED on each agent container: {states}")
PY

step "SIGTERM drains an agent container"
stop_started=$SECONDS
podman stop --time 40 "$run_id-agent-1" >/dev/null
code="$(podman inspect --format '{{.State.ExitCode}}' "$run_id-agent-1")"
[[ "$code" == 0 ]] || { podman logs "$run_id-agent-1" | tail -20; echo "the agent exited $code after SIGTERM" >&2; exit 1; }
echo "agent container stopped with exit 0 in $((SECONDS - stop_started)) s"
step "deploy checks passed in $((SECONDS - started)) s"
