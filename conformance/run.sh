#!/usr/bin/env bash
# Runs the conformance suite against real fhirgate processes:
#   1. the embedded (bbolt) server;
#   2. two gateway processes sharing one redis-server (the 64-way
#      conditional-create race is spread over both), and one transparency
#      log: the first runs the embedded dev chain, the second anchors on it
#      through its JSON-RPC (only the lease holder anchors).
# Usage: conformance/run.sh path/to/fhirgate
set -euo pipefail
BIN=${1:-bin/fhirgate}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

wait_ready() {
  for _ in $(seq 1 100); do
    if "$BIN" healthcheck --url "http://$1/readyz" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "server $1 did not become ready"; cat "$WORK"/*.log; return 1
}

status=0

echo "== conformance: embedded store"
P1=$(free_port); C1=$(free_port)
"$BIN" serve --addr "127.0.0.1:$P1" --data-dir "$WORK/bolt" --chain-listen "127.0.0.1:$C1" --anchor-interval 1s >"$WORK/bolt.log" 2>&1 &
PIDS+=($!)
wait_ready "127.0.0.1:$P1"
# A system client's token from the dev issuer whose key serve generated.
TOKEN=$("$BIN" token --data-dir "$WORK/bolt" --scope "system/*.*")
"$BIN" conformance --base-url "http://127.0.0.1:$P1/fhir" --token "$TOKEN" --rpc "http://127.0.0.1:$C1" || status=1

echo "== conformance: Redis store, two gateway processes"
command -v redis-server >/dev/null || { echo "redis-server missing (run make deps)"; exit 1; }
RP=$(free_port)
mkdir -p "$WORK/redis"
redis-server --port "$RP" --bind 127.0.0.1 --dir "$WORK/redis" --save "" --appendonly yes --daemonize no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do redis-cli -p "$RP" ping >/dev/null 2>&1 && break; sleep 0.1; done
A=$(free_port); B=$(free_port); C=$(free_port)
# Both gateways share one key-encryption key file, and one dev token
# issuer key (in the shared data dir).
"$BIN" keys init --kek-file "$WORK/kek.keys" >/dev/null
"$BIN" serve --addr "127.0.0.1:$A" --redis-url "redis://127.0.0.1:$RP/0" --kek-file "$WORK/kek.keys" --data-dir "$WORK/shared" \
  --chain-listen "127.0.0.1:$C" --anchor-interval 1s >"$WORK/gw-a.log" 2>&1 &
PIDS+=($!)
wait_ready "127.0.0.1:$A"
# The second gateway anchors on the first one's dev chain, with its key and
# contract, when it holds the lease.
"$BIN" serve --addr "127.0.0.1:$B" --redis-url "redis://127.0.0.1:$RP/0" --kek-file "$WORK/kek.keys" --data-dir "$WORK/shared" \
  --chain-rpc "http://127.0.0.1:$C" --chain-key-file "$WORK/shared/chain/dev.key" --anchor-contract "$(cat "$WORK/shared/chain/anchor-contract")" \
  --anchor-interval 1s >"$WORK/gw-b.log" 2>&1 &
PIDS+=($!)
wait_ready "127.0.0.1:$B"
TOKEN=$("$BIN" token --data-dir "$WORK/shared" --scope "system/*.*")
"$BIN" conformance --base-url "http://127.0.0.1:$A/fhir" --race-url "http://127.0.0.1:$B/fhir" --token "$TOKEN" --rpc "http://127.0.0.1:$C" || status=1

if [ "$status" -ne 0 ]; then
  echo "conformance FAILED"
fi
exit $status
