// Package anchor is fhirgate's transparency log: one append-only RFC 6962
// Merkle log with a leaf for every resource version and every AuditEvent,
// whose roots are anchored on an EVM chain, and the receipts that let
// anyone check a version against the chain without trusting the gateway.
//
// The store assigns each version's leaf index in the same atomic commit
// as the version (Storage.LogSize counts them). A Log integrates the
// leaves into stored tree hashes (golang.org/x/mod/sumdb/tlog's layout),
// so roots and proofs are O(log n) reads at any size; an Anchorer anchors
// the root every interval or batch of leaves through a Chain.
package anchor
