package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/internal/auth"
)

// crashTx is a transaction of n Patients, each with an Observation
// referring to it by urn:uuid, all tagged with identifier system|tag.
func crashTx(tag string, n int) string {
	var es []string
	for i := range n {
		u := fmt.Sprintf("urn:uuid:%08x-0000-4000-8000-%012x", i, i)
		es = append(es,
			fmt.Sprintf(`{"fullUrl": %q, "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:crash", "value": %q}], "name": [{"family": "Crash%d"}]}, "request": {"method": "POST", "url": "Patient"}}`, u, tag, i),
			fmt.Sprintf(`{"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "hr"}, "identifier": [{"system": "urn:crash", "value": %q}], "subject": {"reference": %q}}, "request": {"method": "POST", "url": "Observation"}}`, tag, u))
	}
	return `{"resourceType": "Bundle", "type": "transaction", "entry": [` + strings.Join(es, ",") + `]}`
}

// TestCrashTransaction kills the gateway with SIGKILL while transactions
// are in flight, and restarts it: each transaction is then stored
// completely (every entry, readable, with an AuditEvent naming it and a
// log leaf) or not at all; each acknowledged one completely.
func TestCrashTransaction(t *testing.T) {
	if testing.Short() {
		t.Skip("starts gateway processes")
	}
	dir := t.TempDir()
	args := []string{"--data-dir", dir, "--chain-listen", freeAddr(t), "--anchor-interval", "1h", "--log-level", "warn"}
	key, err := auth.LoadOrCreateDevKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	token, err := key.Sign(auth.Claims{Subject: "crash", Scope: "system/*.cruds"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	const perTx = 50 // Patients; 100 entries
	var (
		mu    sync.Mutex
		sent  []string
		acked = map[string]bool{}
	)
	rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 9))
	acksBefore := make([]int, 4)
	for round := range 4 {
		mu.Lock()
		acksBefore[round] = len(acked)
		mu.Unlock()
		g := startGateway(t, args...)
		ctx, cancel := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		for w := range 3 {
			wg.Go(func() {
				for i := 0; ctx.Err() == nil; i++ {
					tag := fmt.Sprintf("r%d-w%d-%d", round, w, i)
					mu.Lock()
					sent = append(sent, tag)
					mu.Unlock()
					status, b, err := request(ctx, http.MethodPost, g.base+"/fhir", token, crashTx(tag, perTx))
					if err == nil && status != http.StatusOK {
						t.Errorf("transaction %s: %d %s", tag, status, b)
					}
					if err == nil && status == http.StatusOK {
						mu.Lock()
						acked[tag] = true
						mu.Unlock()
					}
				}
			})
		}
		// Kill once the round has had a transaction through (the others
		// are in flight then), at a random moment after it.
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			mu.Lock()
			n := len(acked)
			mu.Unlock()
			if n > 0 && acksBefore[round] < n {
				break
			}
		}
		time.Sleep(time.Duration(rnd.IntN(400)) * time.Millisecond)
		g.kill()
		cancel()
		wg.Wait()
	}
	if len(acked) == 0 {
		t.Fatal("no transaction was acknowledged")
	}
	g := startGateway(t, args...)
	get := func(path string) []byte {
		t.Helper()
		status, b, err := request(t.Context(), http.MethodGet, g.base+"/fhir/"+path, token, "")
		if err != nil || status != http.StatusOK {
			t.Fatalf("GET %s: %d %v %s", path, status, err, b)
		}
		return b
	}
	type searchset struct {
		Total int
		Entry []struct{ Resource struct{ ID string } }
	}
	complete, none := 0, 0
	for _, tag := range sent {
		var pats, obs searchset
		json.Unmarshal(get("Patient?identifier=urn:crash|"+tag+"&_count=1"), &pats)
		json.Unmarshal(get("Observation?identifier=urn:crash|"+tag+"&_summary=count"), &obs)
		switch {
		case pats.Total == perTx && obs.Total == perTx:
			complete++
			// Its AuditEvent was committed with it, and its leaf: a
			// receipt is pending (202) or ready (200), never missing.
			id := pats.Entry[0].Resource.ID
			var evs searchset
			json.Unmarshal(get("AuditEvent?entity=Patient/"+id+"&_summary=count"), &evs)
			if evs.Total == 0 {
				t.Errorf("transaction %s stored without its AuditEvent", tag)
			}
			status, b, err := request(t.Context(), http.MethodGet, g.base+"/fhir/Patient/"+id+"/_history/1/$receipt", token, "")
			if err != nil || (status != http.StatusOK && status != http.StatusAccepted) {
				t.Errorf("transaction %s: receipt of Patient/%s: %d %v %s", tag, id, status, err, b)
			}
		case pats.Total == 0 && obs.Total == 0:
			none++
			if acked[tag] {
				t.Errorf("acknowledged transaction %s is not stored", tag)
			}
		default:
			t.Errorf("transaction %s stored in part: %d Patients, %d Observations of %d", tag, pats.Total, obs.Total, perTx)
		}
	}
	t.Logf("%d transactions sent: %d stored completely (%d acknowledged), %d not at all", len(sent), complete, len(acked), none)
}
