package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/fhirgate/fhirgate/gateway"
	"github.com/fhirgate/fhirgate/internal/store/boltstore"
)

// TestTransactionBody posts the transaction workload's Bundle to a real
// gateway: every entry is created, the Observations referring to the
// Patients created with them.
func TestTransactionBody(t *testing.T) {
	st, err := boltstore.New(t.Context(), boltstore.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	gw := gateway.New(gateway.Config{Store: st})
	defer gw.Close()
	srv := httptest.NewServer(gw)
	defer srv.Close()
	tmpl, err := newBodyTemplate(defaultPatientJSON)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{1, 9, 10} {
		b := &bench{tmpl: tmpl, runID: "fb-tx", cfg: config{TxEntries: n}}
		resp, err := http.Post(srv.URL+"/fhir", "application/fhir+json", bytes.NewReader(b.transaction()))
		if err != nil {
			t.Fatal(err)
		}
		var out struct {
			Type  string
			Entry []struct {
				Response struct{ Status, Location string }
			}
		}
		json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || out.Type != "transaction-response" || len(out.Entry) != n {
			t.Fatalf("%d entries: %d %+v", n, resp.StatusCode, out)
		}
		for i, e := range out.Entry {
			if e.Response.Status != "201 Created" {
				t.Fatalf("%d entries: entry %d %+v", n, i, e.Response)
			}
		}
	}
}
