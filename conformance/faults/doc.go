// Package faults holds the fault tests of the hardening issue, run by
// `make test-faults` (go test -tags faults ./conformance/faults/). They
// start real processes — bin/fhirgate ($FHIRGATE_BIN), redis-server and
// bin/geth ($GETH) — and break them while a load runs:
//
//   - TestKillUnderLoad: kill -9 of the gateway at random moments under a
//     mixed write load, on bbolt and on Redis; acknowledged writes survive,
//     get receipts that verify against the chain, the log holds each
//     version once and the search index points only at live resources.
//   - TestRedisOutage: Redis killed for 10 s, then hung (SIGSTOP) for
//     6 s, under load: 503 with Retry-After within 5 s; /readyz 503; the
//     gateway recovers by itself (anchoring and Subscriptions too).
//   - TestChainOutage: the chain node (geth --dev) stopped for 60 s:
//     writes go on, /readyz reports the anchoring lag, anchors catch up
//     afterwards and receipts verify.
//   - TestSlowClients: slowloris, slow bodies, oversized bodies and the
//     connection limit.
//   - TestLargeBinary: a 200 MiB Binary uploaded and downloaded (whole and
//     by range) on bbolt and on Redis, the gateway's VmRSS growing by less
//     than 64 MiB; it logs the MB/s published in bench/README.md.
//
// Without the faults build tag the package has no tests.
package faults
