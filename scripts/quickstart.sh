#!/usr/bin/env bash
# README command one: builds Outpost, sets up DataHub's CLI in ./.venv, makes a dev CA, starts a controller
# (SQLite file, local queue, a join listener) and two agents that join with a join token (no certificate made for
# them: each makes its own key and gets a short-lived certificate, as in production), runs the example recipes in
# examples/ as real `datahub ingest` runs, shows which worker ran each and the result, then stops everything.
# No AWS account and no DataHub server needed. State lives in ./.quickstart.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
state="$root/.quickstart"
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
    "$bin/outpost-controller" certs admin --out "$certs" --name quickstart
fi

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

say "Starting the controller (logs: $state/controller.log)"
rm -rf "$state/addr" "$state"/outpost.db* "$state"/agent-state-*
join_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$bin/outpost-controller" run --listen 127.0.0.1:0 --listen-addr-file "$state/addr" --db "$state/outpost.db" \
    --tls-cert "$certs/controller.pem" --tls-key "$certs/controller.key" --tls-ca "$certs/ca.pem" \
    --join-listen "127.0.0.1:$join_port" --ca-key "$certs/ca.key" \
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
if [[ $status == 0 ]]; then say "Both recipes ran. Explore with: outpostctl --help"; else say "A task did not succeed"; fi
exit $status
