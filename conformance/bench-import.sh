#!/usr/bin/env bash
# Measures `fhirgate import` on this machine: N synthetic resources (a
# tenth Patients, the rest Observations referring to them, every one with
# an id) as NDJSON, imported into the embedded and the Redis backends with
# every feature on, then imported again (nothing changes: the idempotent
# re-run). Prints each run's summary and the CPU seconds the client and the
# server spent.
# Usage: conformance/bench-import.sh [resources] [workers] [batch]
# FHIRGATE_BENCH_FLAGS adds serve flags (e.g. --anchor=false to compare).
set -euo pipefail
N=${1:-30000}
WORKERS=${2:-8}
BATCH=${3:-200}
BIN=bin/fhirgate
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 1 100); do "$BIN" healthcheck --url "http://$1/readyz" 2>/dev/null && return 0; sleep 0.1; done; return 1; }
# cpu PID: the user+system CPU seconds the process has used.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }

mkdir -p "$WORK/data"
python3 - "$N" "$WORK/data" <<'EOF'
import json, random, sys
n, out = int(sys.argv[1]), sys.argv[2]
rng = random.Random(500)
patients = max(1, n // 10)
given = ["Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gia", "Hugo", "Iris", "Jon"]
family = ["Smith", "Jones", "Garcia", "Chen", "Okafor", "Novak", "Silva", "Kim", "Haddad", "Berg"]
with open(f"{out}/Patient.ndjson", "w") as f:
    for i in range(patients):
        f.write(json.dumps({
            "resourceType": "Patient", "id": f"bench-p{i}",
            "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": f"MRN{100000 + i}"}],
            "active": True,
            "name": [{"use": "official", "family": rng.choice(family), "given": [rng.choice(given)]}],
            "gender": rng.choice(["male", "female"]),
            "birthDate": f"{rng.randint(1930, 2020)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            "address": [{"city": "Springfield", "postalCode": f"{rng.randint(10000, 99999)}", "country": "US"}],
        }, separators=(",", ":")) + "\n")
codes = [("8867-4", "Heart rate", "/min", 50, 120), ("8310-5", "Body temperature", "Cel", 35, 40),
         ("29463-7", "Body weight", "kg", 3, 150), ("8302-2", "Body height", "cm", 45, 200),
         ("9279-1", "Respiratory rate", "/min", 8, 30)]
with open(f"{out}/Observation.ndjson", "w") as f:
    for i in range(n - patients):
        code, text, unit, lo, hi = rng.choice(codes)
        f.write(json.dumps({
            "resourceType": "Observation", "id": f"bench-o{i}", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": text}], "text": text},
            "subject": {"reference": f"Patient/bench-p{rng.randrange(patients)}"},
            "effectiveDateTime": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00Z",
            "valueQuantity": {"value": round(rng.uniform(lo, hi), 1), "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
        }, separators=(",", ":")) + "\n")
EOF
echo "data: $N resources, $(du -sh "$WORK/data" | cut -f1) of NDJSON; --workers $WORKERS --batch $BATCH"

# import_twice BASE NAME DATA-DIR SERVER-PID: import, then import again,
# as a system client (a token from the dev issuer whose key is in DATA-DIR).
import_twice() {
  "$BIN" token --data-dir "$3" --scope 'system/*.*' >"$WORK/token"
  for run in first re-run; do
    echo "-- $2: import ($run)"
    local s0 c0 t0 t1
    s0=$(cpu "$4")
    TIMEFORMAT="client-cpu %U user %S sys"
    t0=$(date +%s.%N)
    { time "$BIN" import --base "$1" --token-file "$WORK/token" --workers "$WORKERS" --batch "$BATCH" --quiet \
        --failures "$WORK/failures-$2.ndjson" "$WORK/data" ; } 2>"$WORK/time" || { cat "$WORK/time"; head -3 "$WORK/failures-$2.ndjson" 2>/dev/null; return 1; }
    t1=$(date +%s.%N)
    awk -v s0="$s0" -v s1="$(cpu "$4")" -v t0="$t0" -v t1="$t1" -v cores="$(nproc)" '
      /^client-cpu/ { printf "cpu        client %.2fs (%.2f user + %.2f sys), server %.2fs, in %.2fs wall on %d cores\n", $2 + $4, $2, $4, s1 - s0, t1 - t0, cores }' "$WORK/time"
  done
}

P=$(free_port)
"$BIN" serve --addr "127.0.0.1:$P" --data-dir "$WORK/bolt" --chain-listen "127.0.0.1:$(free_port)" --log-level warn ${FHIRGATE_BENCH_FLAGS:-} &
PIDS+=($!)
wait_ready "127.0.0.1:$P"
import_twice "http://127.0.0.1:$P/fhir" embedded "$WORK/bolt" "${PIDS[-1]}"
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --dir "$WORK" --save "" --appendonly yes --appendfsync everysec --daemonize no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
REDIS_PID=$!
for _ in $(seq 1 100); do redis-cli -p "$RP" ping >/dev/null 2>&1 && break; sleep 0.1; done
A=$(free_port)
"$BIN" keys init --kek-file "$WORK/kek.keys" >/dev/null
"$BIN" serve --addr "127.0.0.1:$A" --redis-url "redis://127.0.0.1:$RP/0" --kek-file "$WORK/kek.keys" --data-dir "$WORK/gw" \
  --chain-listen "127.0.0.1:$(free_port)" --log-level warn ${FHIRGATE_BENCH_FLAGS:-} &
PIDS+=($!)
wait_ready "127.0.0.1:$A"
r0=$(cpu "$REDIS_PID")
import_twice "http://127.0.0.1:$A/fhir" redis "$WORK/gw" "${PIDS[-1]}"
echo "redis-server cpu over both runs: $(awk -v a="$r0" -v b="$(cpu "$REDIS_PID")" 'BEGIN { printf "%.2f", b - a }')s"
