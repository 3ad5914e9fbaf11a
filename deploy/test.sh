#!/usr/bin/env bash
# Every check of the deployment artifacts; each step fails the run:
#   hadolint on the Containerfiles, cfn-lint on the ECS stack (errors and warnings fail), promtool on the alert rules
#   (checked, and unit tests that fire and clear every alert), the Helm chart rendered
#   offline with Helm's own library and validated strictly against Kubernetes 1.28 and 1.37 (deploy/check_chart.py),
#   then the images really run with nothing made by hand: a controller container on an empty volume with a bootstrap
#   token file makes its own trust, two agent containers given only that token join (read-only root file systems),
#   the example recipe (submitted with outpostctl inside the controller's container, as an operator's first look
#   goes) succeeds on each; the controller restarts on its volume with the same CA, the agents reconnect without
#   joining again and a third run succeeds; SIGTERM drains an agent container to exit 0 in time; and a pod of a
#   controller and one agent on loopback (mode standalone) runs the recipe alone.
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
step "alert rules (promtool check rules, promtool test rules)"
promtool check rules deploy/monitoring/outpost-rules.yaml
(cd deploy/monitoring && promtool test rules outpost-rules.test.yaml)
step "Helm chart"
deploy/.venv/bin/python deploy/check_chart.py 2>&1 | grep -v 'INFO funcMap fail'

step "images"
[[ -x target/debug/outpost-agent ]] || cargo build --workspace --bins --quiet
mapfile -t images < <(deploy/images/build.sh --profile debug)
controller_image="${images[0]}" agent_image="${images[1]}"
echo "built $controller_image and $agent_image"
# outpostctl's man pages and completions are in the controller image, and they are its own.
podman run --rm --read-only --entrypoint /bin/sh "$controller_image" -c \
    'test -s /usr/share/man/man1/outpostctl.1 && test -s /usr/share/man/man1/outpostctl-tasks.1 &&
     grep -q "_outpostctl()" /usr/share/bash-completion/completions/outpostctl &&
     test -s /usr/share/zsh/vendor-completions/_outpostctl && test -s /usr/share/fish/vendor_completions.d/outpostctl.fish' \
    || { echo "the controller image lacks outpostctl's man pages or completions" >&2; exit 1; }
echo "the controller image carries outpostctl's man pages and bash, zsh and fish completions"

step "the images run with nothing made by hand: a controller on an empty volume, two agents given only its bootstrap token"
work="$(mktemp -d)"
run_id="outpost-deploy-$$"
cleanup() {
    podman rm -f --ignore --time 5 "$run_id-agent-1" "$run_id-agent-2" "$run_id-controller" \
        "$run_id-solo-agent" "$run_id-solo-controller" >/dev/null 2>&1 || true
    podman pod rm -f --ignore "$run_id-pod" >/dev/null 2>&1 || true
    podman volume rm -f "$run_id-data" "$run_id-solo-data" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
# The bootstrap token as the chart makes it (<id>.<secret> of a-z0-9); readable by the containers' user, as a
# mounted Secret is.
python3 -c 'import secrets, string; a = string.ascii_lowercase + string.digits
print("".join(secrets.choice(a) for _ in range(6)) + "." + "".join(secrets.choice(a) for _ in range(16)))' > "$work/token"
chmod 0644 "$work/token"
token="$(cat "$work/token")"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
grpc="$(port)" join="$(port)" metrics="$(port)"
podman volume create "$run_id-data" >/dev/null
# As the chart runs it: an empty volume for SQLite and the trust the controller makes, the bootstrap token file,
# OUTPOST_TRUST_DIR for outpostctl inside the container.
podman run -d --name "$run_id-controller" --network host --read-only --tmpfs /tmp \
    -v "$run_id-data:/var/lib/outpost" -v "$work/token:/etc/outpost/bootstrap/token:ro" -v "$root/examples:/examples:ro" \
    -e OUTPOST_TRUST_DIR=/var/lib/outpost/trust "$controller_image" run \
    --listen "127.0.0.1:$grpc" --join-listen "127.0.0.1:$join" --metrics-listen "127.0.0.1:$metrics" \
    --bootstrap-token-file /etc/outpost/bootstrap/token --bootstrap-token-pool default >/dev/null
ready() {
    for _ in $(seq 300); do
        python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$metrics/readyz').status == 200 else 1)" 2>/dev/null && return 0
        sleep 0.2
    done
    podman logs "$run_id-controller" | tail -20; echo "the controller container never became ready" >&2; return 1
}
ready
logged() {  # waits (up to 20 s) for a container's log to show a line the docs tell operators to look for
    for _ in $(seq 100); do podman logs "$1" 2>&1 | grep -q "$2" && return 0; sleep 0.2; done
    echo "$1 never logged '$2'" >&2; podman logs "$1" 2>&1 | tail -20 >&2; return 1
}
logged "$run_id-controller" "controller listening"
# outpostctl as an operator runs it first: inside the controller's container, with its local admin identity.
ctl_in() { local container="$1" url="$2"; shift 2; podman exec "$container" outpostctl --controller "$url" "$@"; }
ctl() { ctl_in "$run_id-controller" "https://127.0.0.1:$grpc" "$@"; }
for n in 1 2; do
    podman run -d --name "$run_id-agent-$n" --network host --read-only --tmpfs /tmp \
        -e OUTPOST_JOIN_TOKEN="$token" -e OUTPOST_EXAMPLES=/examples -v "$root/examples:/examples:ro" \
        "$agent_image" --controller "https://127.0.0.1:$grpc" --join-url "https://127.0.0.1:$join" \
        --pool default --slots 1 --worker-id "container-agent-$n" --drain-timeout 20s >/dev/null
done
ready_workers() {  # waits (up to 2 min) until `ctl` (or $1) lists $2 READY workers
    local list="$1" want="$2"
    for _ in $(seq 600); do
        [[ "$($list --json workers 2>/dev/null | grep -c '"state": "READY"')" == "$want" ]] && return 0
        sleep 0.2
    done
    $list workers >&2 || true; return 1
}
ready_workers ctl 2 || { podman logs "$run_id-agent-1" | tail -20; echo "the agent containers did not both join" >&2; exit 1; }
for n in 1 2; do logged "$run_id-agent-$n" "Starting datahub executor worker"; done
submit_all() {  # submits the example recipe once per id, at once, waiting for each
    local list="$1" pids=() id; shift
    for id in "$@"; do $list submit --recipe /examples/file-to-blackhole.yml --id "$id" --wait >/dev/null & pids+=($!); done
    for pid in "${pids[@]}"; do wait "$pid"; done
}
check() {  # check.py TASKS_JSON TOKENS_JSON IDS WORKERS JOINS: every id SUCCEEDED, on those workers, that many joins
    python3 - "$@" <<'PY'
import json, sys
tasks = {t["id"]: t for t in json.loads(sys.argv[1])["tasks"]}
tokens, ids, workers, joins = json.loads(sys.argv[2]), sys.argv[3].split(), set(sys.argv[4].split()), int(sys.argv[5])
states = {i: (tasks[i]["state"], tasks[i]["workerId"]) for i in ids}
assert all(s == "SUCCEEDED" for s, _ in states.values()), states
assert {w for _, w in states.values()} <= workers, f"ran on {states}, expected {workers}"
used = [u["workerId"] for t in tokens for u in t.get("used", [])]
assert len(used) == joins, f"{len(used)} joins ({used}), expected {joins}"
print(f"SUCCEEDED: {states}; joins with the bootstrap token: {used}")
PY
}
submit_all ctl deploy-a deploy-b
check "$(ctl --json tasks)" "$(ctl --json tokens list)" "deploy-a deploy-b" "container-agent-1 container-agent-2" 2
[[ "$(ctl --json tasks | python3 -c 'import json,sys; print(len({t["workerId"] for t in json.load(sys.stdin)["tasks"]}))')" == 2 ]] \
    || { echo "the two runs did not go one to each agent" >&2; exit 1; }
ca_before="$(podman exec "$run_id-controller" cat /var/lib/outpost/trust/ca.pem)"

step "the controller container restarts on its volume: the same CA, the agents reconnect without joining again"
podman restart --time 30 "$run_id-controller" >/dev/null
ready
[[ "$(podman exec "$run_id-controller" cat /var/lib/outpost/trust/ca.pem)" == "$ca_before" ]] \
    || { echo "the controller made a new CA after a restart" >&2; exit 1; }
ready_workers ctl 2 || { echo "the agents did not reconnect after the controller's restart" >&2; exit 1; }
submit_all ctl deploy-c
check "$(ctl --json tasks)" "$(ctl --json tokens list)" "deploy-a deploy-b deploy-c" "container-agent-1 container-agent-2" 2

step "SIGTERM drains an agent container"
stop_started=$SECONDS
podman stop --time 40 "$run_id-agent-1" >/dev/null
code="$(podman inspect --format '{{.State.ExitCode}}' "$run_id-agent-1")"
[[ "$code" == 0 ]] || { podman logs "$run_id-agent-1" | tail -20; echo "the agent exited $code after SIGTERM" >&2; exit 1; }
echo "agent container stopped with exit 0 in $((SECONDS - stop_started)) s"
step "mode standalone: one pod, the controller and one agent on loopback, nothing made by hand"
podman pod create --name "$run_id-pod" >/dev/null
podman volume create "$run_id-solo-data" >/dev/null
podman run -d --pod "$run_id-pod" --name "$run_id-solo-controller" --read-only --tmpfs /tmp \
    -v "$run_id-solo-data:/var/lib/outpost" -v "$work/token:/etc/outpost/bootstrap/token:ro" \
    -v "$root/examples:/examples:ro" -e OUTPOST_TRUST_DIR=/var/lib/outpost/trust "$controller_image" run \
    --listen 127.0.0.1:7443 --join-listen 127.0.0.1:7444 --metrics-listen 127.0.0.1:9464 \
    --bootstrap-token-file /etc/outpost/bootstrap/token --bootstrap-token-pool default >/dev/null
# Started at once, as a pod's containers are: the agent waits for the controller's join listener.
podman run -d --pod "$run_id-pod" --name "$run_id-solo-agent" --read-only --tmpfs /tmp \
    -e OUTPOST_JOIN_TOKEN="$token" -e OUTPOST_EXAMPLES=/examples -v "$root/examples:/examples:ro" \
    "$agent_image" --controller https://127.0.0.1:7443 --join-url https://127.0.0.1:7444 \
    --pool default --slots 1 --worker-id solo --drain-timeout 20s >/dev/null
solo() { ctl_in "$run_id-solo-controller" https://127.0.0.1:7443 "$@"; }
ready_workers solo 1 || { podman logs "$run_id-solo-agent" | tail -20; echo "the standalone agent did not join" >&2; exit 1; }
submit_all solo solo-a
check "$(solo --json tasks)" "$(solo --json tokens list)" "solo-a" "solo" 1

step "deploy checks passed in $((SECONDS - started)) s"
