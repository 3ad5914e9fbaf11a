#!/usr/bin/env bash
# README command one: builds Outpost, sets up DataHub's CLI in ./.venv, makes a dev CA, starts a controller
# (SQLite file, local queue, a join listener) and two agents that join with a join token (no certificate made for
# them: each makes its own key and gets a short-lived certificate, as in production), runs the example recipes in
# examples/ as real `datahub ingest` runs, shows which worker ran each and the result, then keeps the fleet running
# (with its status page) until Ctrl-C, printing the page's address, a login token and the `outpostctl` environment.
# `scripts/quickstart.sh --exit` stops at once after the examples (for scripts). No AWS account and no DataHub
# server needed. State lives in ./.quickstart.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
state="$root/.quickstart"
stay=1
[[ "${1:-}" == --exit ]] && stay=0
certs="$state/certs"
bin="$root/target/debug"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "Building (the first build takes about two minutes)"
cargo build --workspace --bins --quiet
say "Checking the Python venv with DataHub's CLI"
scripts/setup-python.sh

mkdir -p "$state"
if [[ ! -f "$certs/ca.pem" ]]; then
    say "Making development certificates in $certs"
    "$bin/outpost-controller" certs init --out "$certs"
fi
# Issued at every start (a certificate kept from before roles would be refused).
"$bin/outpost-controller" certs admin --out "$certs" --name quickstart --role admin >/dev/null

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

say "Starting the controller (logs: $state/controller.log)"
rm -rf "$state/addr" "$state"/outpost.db* "$state"/agent-state-*
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
join_port="$(free_port)"
ui_port="$(free_port)"
"$bin/outpost-controller" run --listen 127.0.0.1:0 --listen-addr-file "$state/addr" --db "$state/outpost.db" \
    --tls-cert "$certs/controller.pem" --tls-key "$certs/controller.key" --tls-ca "$certs/ca.pem" \
    --join-listen "127.0.0.1:$join_port" --ca-key "$certs/ca.key" --ui-listen "127.0.0.1:$ui_port" \
    > "$state/controller.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do [[ -s "$state/addr" ]] && break; sleep 0.1; done
[[ -s "$state/addr" ]] || { echo "the controller did not start; see $state/controller.log" >&2; exit 1; }
controller="https://$(cat "$state/addr")"
echo "controller at $controller"

ctl() {
    "$bin/outpostctl" --controller "$controller" --tls-cert "$certs/admin-quickstart.pem" \
        --tls-key "$certs/admin-quickstart.key" --tls-ca "$certs/ca.pem" "$@"
}
say "Making a join token for two agents of pool default"
created="$(ctl tokens create --pool default --uses 2 --ttl 1h --description quickstart)"
token="$(head -1 <<<"$created")"   # the secret: kept in this shell only, handed to the agents' environment
tail -1 <<<"$created"

for worker in w-1 w-2; do
    say "Starting agent $worker with the join token only (logs: $state/agent-$worker.log)"
    PATH="$root/.venv/bin:$PATH" DATAHUB_TELEMETRY_ENABLED=false OUTPOST_EXAMPLES="$root/examples" \
        OUTPOST_JOIN_TOKEN="$token" \
        "$bin/outpost-agent" --controller "$controller" --join-url "https://127.0.0.1:$join_port" \
        --worker-id "$worker" --pool default --slots 2 --state-dir "$state/agent-state-$worker" \
        --work-dir "$state/work-$worker" > "$state/agent-$worker.log" 2>&1 &
    pids+=($!)
done
for _ in $(seq 300); do
    [[ "$(ctl --json workers | grep -c '"state": "READY"')" == 2 ]] && break
    sleep 0.1
done
ctl workers
ctl tokens list

say "Submitting examples/file-to-blackhole.yml and examples/mock-data.yml"
ctl submit --recipe examples/file-to-blackhole.yml --id quickstart-file --wait > "$state/quickstart-file.txt" &
file_pid=$!
ctl submit --recipe examples/mock-data.yml --id quickstart-mock-data --wait > "$state/quickstart-mock-data.txt" &
mock_pid=$!
status=0
wait "$file_pid" || status=1
wait "$mock_pid" || status=1

say "Which worker ran each task"
ctl tasks
for id in quickstart-file quickstart-mock-data; do
    say "Task $id (full report: $state/$id.txt)"
    sed -n '1,/^$/p' "$state/$id.txt" | grep -E '^(ID|STATE|WORKER|EXIT CODE|DURATION) '
    grep -m1 -E '^Execution (finished|was)' "$state/$id.txt" || true
done
for id in quickstart-file quickstart-mock-data; do
    grep -q '^STATE     SUCCEEDED' "$state/$id.txt" || status=1
done
if [[ $status != 0 ]]; then say "A task did not succeed"; exit $status; fi
say "Both recipes ran."
[[ $stay == 1 ]] || exit 0
ui_token="$(ctl ui-tokens create --ttl 12h --description quickstart | head -1)"
cat <<EOF

The fleet keeps running until you press Ctrl-C.

  Status page:  http://127.0.0.1:$ui_port
  Log in with:  $ui_token

  outpostctl, from another terminal in $root:
    export OUTPOST_CONTROLLER=$controller OUTPOST_TLS_CA=$certs/ca.pem \\
           OUTPOST_TLS_CERT=$certs/admin-quickstart.pem OUTPOST_TLS_KEY=$certs/admin-quickstart.key
    target/debug/outpostctl workers      # also: tasks, task ID --follow, submit --recipe F --wait, --help
EOF
trap 'echo; say "Stopping the fleet"; exit 0' INT TERM
while true; do
    sleep 3600 &
    pids+=($!)
    wait $! || true
done
