#!/usr/bin/env bash
# Measures fhirgate with cmd/fhirbench on this machine: create, read, search,
# mixed, book and 100-entry transaction workloads against the embedded and
# the Redis backends, with the gateway's (and redis-server's) CPU per
# request; then redis-benchmark SET/GET of the create body's size on the
# same redis-server, the ceiling for a store round trip.
# Usage: conformance/bench.sh [duration] [concurrency]
# FHIRGATE_BENCH_WORKLOADS picks workloads (e.g. "book"); FHIRGATE_BENCH_ARGS
# adds fhirbench flags (e.g. "--booking-days 1").
set -euo pipefail
DUR=${1:-10s}
C=${2:-32}
BIN=bin/fhirgate
BENCH=bin/fhirbench
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 1 100); do "$BIN" healthcheck --url "http://$1/readyz" 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# run_all BASE NAME DATA-DIR CPU-PIDS...: every workload as a system client
# (a token from the dev issuer whose key is in DATA-DIR), measuring the CPU
# of the name=PID processes given.
run_all() {
  local base=$1 name=$2 dir=$3 token
  shift 3
  local cpu=()
  for p in "$@"; do cpu+=(--cpu-pid "$p"); done
  token=$("$BIN" token --data-dir "$dir" --scope 'system/*.*')
  for w in ${FHIRGATE_BENCH_WORKLOADS:-create read search mixed book transaction}; do
    echo "-- $name: $w"
    "$BENCH" --base-url "$base" --token "$token" --workload "$w" -c "$C" --duration "$DUR" --seed 500 "${cpu[@]}" ${FHIRGATE_BENCH_ARGS:-}
  done
}

# Every feature on: auth, policy, audit, sealing, and the log anchored on
# the embedded dev chain (default interval); FHIRGATE_BENCH_FLAGS adds
# serve flags (e.g. --anchor=false to compare).
P=$(free_port)
"$BIN" serve --addr "127.0.0.1:$P" --data-dir "$WORK/bolt" --chain-listen "127.0.0.1:$(free_port)" --log-level warn ${FHIRGATE_BENCH_FLAGS:-} &
PIDS+=($!)
GW=$!
wait_ready "127.0.0.1:$P"
run_all "http://127.0.0.1:$P/fhir" embedded "$WORK/bolt" "gateway=$GW"

RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --dir "$WORK" --save "" --appendonly yes --appendfsync everysec --daemonize no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
RS=$!
for _ in $(seq 1 100); do redis-cli -p "$RP" ping >/dev/null 2>&1 && break; sleep 0.1; done
A=$(free_port)
"$BIN" keys init --kek-file "$WORK/kek.keys" >/dev/null
"$BIN" serve --addr "127.0.0.1:$A" --redis-url "redis://127.0.0.1:$RP/0" --kek-file "$WORK/kek.keys" --data-dir "$WORK/gw" \
  --chain-listen "127.0.0.1:$(free_port)" --log-level warn ${FHIRGATE_BENCH_FLAGS:-} &
PIDS+=($!)
GW=$!
wait_ready "127.0.0.1:$A"
run_all "http://127.0.0.1:$A/fhir" redis "$WORK/gw" "gateway=$GW" "redis=$RS"

# The ceiling: the same redis-server (AOF everysec), SET and GET of values
# the size of fhirbench's create body, at the same concurrency.
SIZE=$(wc -c <cmd/fhirbench/default_patient.json)
echo "-- redis-benchmark: SET/GET of $SIZE bytes, $C clients"
redis-benchmark -h 127.0.0.1 -p "$RP" -t set,get -d "$SIZE" -c "$C" -n 200000 -q | tr '\r' '\n' | grep "requests per second"
