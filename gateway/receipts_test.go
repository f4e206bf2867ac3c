package gateway_test

import (
	"encoding/json"
	"net/http"
	"strconv"
	"testing"

	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/anchor/anchortest"
	"github.com/fhirgate/fhirgate/gateway"
	"github.com/fhirgate/fhirgate/internal/auth"
	"github.com/fhirgate/fhirgate/internal/store"
)

// logServer is an authenticating server with a transparency log anchored
// on a simulated chain.
type logServer struct {
	*authServer
	log      *anchor.Log
	anchorer *anchor.Anchorer
	chain    anchor.Chain
}

func newLogServer(t *testing.T) *logServer {
	t.Helper()
	st := boltStore(t)
	backend := st.(interface{ Backend() store.Store }).Backend()
	log := anchor.NewLog(backend.(anchor.Storage))
	key, err := auth.GenerateDevKey()
	if err != nil {
		t.Fatal(err)
	}
	sim := anchortest.Simulated(t, nil)
	chain := sim.Chain(t, sim.Key)
	return &logServer{
		authServer: newAuthServerKey(t, st, key, func(c *gateway.Config) { c.Log = log }),
		log:        log, chain: chain,
		anchorer: anchor.NewAnchorer(anchor.AnchorerConfig{Log: log, Chain: chain}),
	}
}

func (s *logServer) anchor(t *testing.T) {
	t.Helper()
	if _, err := s.anchorer.Step(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func decodeReceipt(t *testing.T, r response) *anchor.Receipt {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("receipt Content-Type %q", ct)
	}
	var rc anchor.Receipt
	if err := json.Unmarshal(r.body, &rc); err != nil {
		t.Fatal(err)
	}
	return &rc
}

// TestReceipts: a version's receipt is pending until anchored, then
// verifies against the chain with the version vread serves; the salt is
// given to callers who may read the version only; AuditEvents and
// deletes have receipts too.
func TestReceipts(t *testing.T) {
	s := newLogServer(t)
	patientA := s.tok(t, "Patient/A", "patient/*.cruds", "")
	patientB := s.tok(t, "Patient/B", "patient/*.cruds", "")
	sys := s.tok(t, "", "system/*.cruds", "")
	compliance := s.tok(t, "", "system/AuditEvent.rs", "")
	other := s.tok(t, "", "system/Practitioner.rs", "")
	s.as(t, sys, http.MethodPut, "/Patient/A", matrixPatient("A")).want(t, http.StatusCreated)
	id := s.createAs(t, sys, "Observation", obsFor("Patient/A"))
	path := "/Observation/" + id + "/_history/1/$receipt"

	r := s.as(t, patientA, http.MethodGet, path, "").want(t, http.StatusAccepted)
	if string(r.body) != "{\"status\":\"pending\"}\n" {
		t.Fatalf("pending receipt body %s", r.body)
	}
	s.anchor(t)
	rc := decodeReceipt(t, s.as(t, patientA, http.MethodGet, path, "").want(t, http.StatusOK))
	version := s.as(t, patientA, http.MethodGet, "/Observation/"+id+"/_history/1", "").want(t, http.StatusOK).body
	if rc.Salt == "" {
		t.Fatal("the owner's receipt has no salt")
	}
	if err := anchor.Verify(t.Context(), rc, version, s.chain); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	// A compliance system that reads AuditEvents, not records, gets the
	// receipt without the salt: the leaf's inclusion verifies, the
	// content cannot be checked (or guessed) from it.
	rc2 := decodeReceipt(t, s.as(t, compliance, http.MethodGet, path, "").want(t, http.StatusOK))
	if rc2.Salt != "" {
		t.Fatal("the salt was given to a caller who may not read the version")
	}
	if err := anchor.Verify(t.Context(), rc2, nil, s.chain); err != nil {
		t.Fatalf("Verify without resource: %v", err)
	}
	s.as(t, patientB, http.MethodGet, path, "").wantOutcome(t, http.StatusForbidden)
	s.as(t, other, http.MethodGet, path, "").wantOutcome(t, http.StatusForbidden)
	s.as(t, sys, http.MethodGet, "/Observation/"+id+"/_history/9/$receipt", "").wantOutcome(t, http.StatusNotFound)
	s.as(t, sys, http.MethodGet, "/Observation/nope/_history/1/$receipt", "").wantOutcome(t, http.StatusNotFound)

	// A delete is a version with a leaf; its receipt commits to no content.
	s.as(t, sys, http.MethodDelete, "/Observation/"+id, "").want(t, http.StatusNoContent)
	s.anchor(t)
	rc3 := decodeReceipt(t, s.as(t, sys, http.MethodGet, "/Observation/"+id+"/_history/2/$receipt", "").want(t, http.StatusOK))
	if err := anchor.Verify(t.Context(), rc3, nil, s.chain); err != nil {
		t.Fatalf("Verify delete: %v", err)
	}
	if l, _ := anchor.ParseLeaf(rc3.LeafData); l.VersionID != "2" || l.ID != id {
		t.Fatalf("delete leaf %+v", l)
	}

	// Every access is an AuditEvent with its own leaf and receipt.
	b := s.as(t, sys, http.MethodGet, "/AuditEvent?entity="+"Observation/"+id, "").want(t, http.StatusOK).bundle(t)
	if len(b.Entry) == 0 {
		t.Fatal("no AuditEvents for the observation")
	}
	s.anchor(t)
	var ev struct{ ID string }
	json.Unmarshal(b.Entry[0].Resource, &ev)
	ae := ev.ID
	rc4 := decodeReceipt(t, s.as(t, sys, http.MethodGet, "/AuditEvent/"+ae+"/_history/1/$receipt", "").want(t, http.StatusOK))
	aeBody := s.as(t, sys, http.MethodGet, "/AuditEvent/"+ae+"/_history/1", "").want(t, http.StatusOK).body
	if err := anchor.Verify(t.Context(), rc4, aeBody, s.chain); err != nil {
		t.Fatalf("Verify AuditEvent: %v", err)
	}
}

// TestLogConsistency checks $log-consistency proofs against the roots
// the chain holds, and its refusals.
func TestLogConsistency(t *testing.T) {
	s := newLogServer(t)
	sys := s.tok(t, "", "system/*.cruds", "")
	var sizes []uint64
	for range 3 {
		for range 3 {
			s.createAs(t, sys, "Patient", matrixPatient("x"))
		}
		s.anchor(t)
	}
	if sizes = anchortest.Sizes(t, s.chain); len(sizes) != 3 {
		t.Fatalf("anchors %v", sizes)
	}
	for i := 1; i < len(sizes); i++ {
		// No token needed: it carries hashes only.
		r := s.do(t, http.MethodGet, "/$log-consistency?first="+strconv.FormatUint(sizes[i-1], 10)+"&second="+strconv.FormatUint(sizes[i], 10), "").want(t, http.StatusOK)
		var p anchor.ConsistencyProof
		if err := json.Unmarshal(r.body, &p); err != nil {
			t.Fatal(err)
		}
		r1, _ := s.chain.RootAt(t.Context(), sizes[i-1])
		r2, _ := s.chain.RootAt(t.Context(), sizes[i])
		if p.First != int64(sizes[i-1]) || p.Second != int64(sizes[i]) {
			t.Fatalf("proof for %d→%d, asked %d→%d", p.First, p.Second, sizes[i-1], sizes[i])
		}
		if err := p.Check(r1, r2); err != nil {
			t.Fatalf("consistency %d→%d: %v", sizes[i-1], sizes[i], err)
		}
	}
	for _, q := range []string{"", "?first=0&second=2", "?first=3&second=2", "?first=a&second=2", "?first=1&second=100000"} {
		s.do(t, http.MethodGet, "/$log-consistency"+q, "").wantOutcome(t, http.StatusBadRequest)
	}
	var info struct {
		HashedSize int64  `json:"hashedSize"`
		TreeSize   uint64 `json:"treeSize"`
		Contract   string `json:"contract"`
	}
	if err := json.Unmarshal(s.do(t, http.MethodGet, "/$log", "").want(t, http.StatusOK).body, &info); err != nil {
		t.Fatal(err)
	}
	if info.TreeSize != sizes[2] || info.HashedSize < int64(sizes[2]) || info.Contract == "" {
		t.Fatalf("$log = %+v", info)
	}
}
