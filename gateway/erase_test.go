package gateway_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/gateway"
	"github.com/fhirgate/fhirgate/internal/store"
)

// put PUTs body to path (relative to the FHIR base), expects 200 or 201
// and returns the response.
func (s *server) put(t *testing.T, path, body string) response {
	t.Helper()
	r := s.do(t, http.MethodPut, path, body)
	if r.status != http.StatusOK && r.status != http.StatusCreated {
		t.Fatalf("PUT %s: %s", path, r)
	}
	return r
}

// erase POSTs a $erase without a body. (The negotiate middleware wants a
// FHIR Content-Type on every POST but _search, even a bodiless one.)
func (s *server) erase(t *testing.T, path string) response {
	t.Helper()
	return s.do(t, http.MethodPost, path, "", "Content-Type", "application/fhir+json")
}

// wantErased checks a 410 whose OperationOutcome says the resource was
// erased (not merely deleted).
func (r response) wantErased(t *testing.T, what string) {
	t.Helper()
	if r.status != http.StatusGone {
		t.Errorf("%s: status = %d, want 410; body %s", what, r.status, r.body)
		return
	}
	var oo struct {
		ResourceType string
		Issue        []struct {
			Code    string
			Details struct{ Text string }
		}
	}
	if err := json.Unmarshal(r.body, &oo); err != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 {
		t.Errorf("%s: 410 body is not an OperationOutcome: %s", what, r.body)
		return
	}
	if !strings.Contains(oo.Issue[0].Details.Text, "erased") {
		t.Errorf("%s: 410 outcome does not say erased: %s", what, r.body)
	}
}

// bundleIDs returns Type/id of every entry of a search or history Bundle,
// taken from fullUrl so that history entries of deletions count too.
func bundleIDs(t *testing.T, r response) []string {
	t.Helper()
	b := r.bundle(t)
	var out []string
	for _, e := range b.Entry {
		parts := strings.Split(e.FullURL, "/")
		if len(parts) < 2 {
			t.Fatalf("entry without a fullUrl: %s", r.body)
		}
		out = append(out, parts[len(parts)-2]+"/"+parts[len(parts)-1])
	}
	return out
}

// eraseResult decodes the Parameters an $erase answers.
func eraseResult(t *testing.T, r response) (erased int, audit string) {
	t.Helper()
	r.want(t, http.StatusOK)
	var p struct {
		ResourceType string
		Parameter    []struct {
			Name           string
			ValueInteger   *int
			ValueReference *struct{ Reference string }
		}
	}
	if err := json.Unmarshal(r.body, &p); err != nil || p.ResourceType != "Parameters" {
		t.Fatalf("$erase did not answer Parameters: %s", r.body)
	}
	erased = -1
	for _, pp := range p.Parameter {
		switch {
		case pp.Name == "erased" && pp.ValueInteger != nil:
			erased = *pp.ValueInteger
		case pp.Name == "auditEvent" && pp.ValueReference != nil:
			audit = pp.ValueReference.Reference
		}
	}
	if erased < 0 || audit == "" {
		t.Fatalf("$erase Parameters lack erased or auditEvent: %s", r.body)
	}
	return erased, audit
}

const (
	obsA = `{"resourceType": "Observation", "id": "obs-a", "status": "final", "code": {"text": "weight v%d"}, "subject": {"reference": "Patient/A"}, "valueQuantity": {"value": %d, "unit": "kg"}}`
	obsB = `{"resourceType": "Observation", "id": "obs-b", "status": "final", "code": {"text": "height"}, "subject": {"reference": "Patient/B"}, "valueQuantity": {"value": 170, "unit": "cm"}}`
	encA = `{"resourceType": "Encounter", "id": "enc-a", "status": "finished", "class": {"code": "AMB"}, "subject": {"reference": "Patient/A"}}`
	conA = `{"resourceType": "Condition", "id": "con-a", "code": {"text": "asthma"}, "subject": {"reference": "Patient/A"}}`
	// appointment: participants in the order given (the first owns it).
	appt     = `{"resourceType": "Appointment", "id": %q, "status": "booked", "start": "2030-01-01T10:00:00Z", "end": "2030-01-01T10:30:00Z", "participant": [{"actor": {"reference": "Patient/%s"}, "status": "accepted"}, {"actor": {"reference": "Patient/%s"}, "status": "accepted"}]}`
	practDoc = `{"resourceType": "Practitioner", "id": "doc", "name": [{"family": "Welby"}]}`
)

// TestErasePatientCompartment: after POST /fhir/Patient/{id}/$erase no
// version of any resource in the patient's compartment opens, while other
// patients' resources and tenant resources are unaffected.
func TestErasePatientCompartment(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		// Audit off: the counts below are of the clinical resources. (With
		// audit on, A's AuditEvents are in A's compartment and go too:
		// TestEraseAuditTrail.)
		s := newServer(t, gateway.Config{Store: st, NoAudit: true})

		s.put(t, "/Patient/A", `{"resourceType": "Patient", "id": "A", "name": [{"family": "Erased"}]}`)
		patB := s.put(t, "/Patient/B", `{"resourceType": "Patient", "id": "B", "name": [{"family": "Kept"}]}`).body
		for v := 1; v <= 3; v++ {
			s.put(t, "/Observation/obs-a", fmt.Sprintf(obsA, v, 60+v))
		}
		s.put(t, "/Encounter/enc-a", encA)
		s.put(t, "/Condition/con-a", conA)
		s.do(t, http.MethodDelete, "/Condition/con-a", "").want(t, http.StatusNoContent)
		s.put(t, "/Appointment/appt-a", fmt.Sprintf(appt, "appt-a", "A", "B"))
		apptB := s.put(t, "/Appointment/appt-b", fmt.Sprintf(appt, "appt-b", "B", "A")).body
		obsBBody := s.put(t, "/Observation/obs-b", obsB).body
		practBody := s.put(t, "/Practitioner/doc", practDoc).body

		// A's resources and how many versions each has.
		owned := map[string]int{
			"Patient/A":          1,
			"Observation/obs-a":  3,
			"Encounter/enc-a":    1,
			"Condition/con-a":    2, // created, then deleted
			"Appointment/appt-a": 1,
		}
		// Sanity: everything opens before the erasure.
		for ref, n := range owned {
			want := http.StatusOK
			if ref == "Condition/con-a" {
				want = http.StatusGone
			}
			s.do(t, http.MethodGet, "/"+ref, "").want(t, want)
			s.do(t, http.MethodGet, "/"+ref+"/_history/"+strconv.Itoa(n), "").want(t, want)
		}

		erased, audit := eraseResult(t, s.erase(t, "/Patient/A/$erase"))
		if erased != len(owned) {
			t.Errorf("$erase erased %d resources, want %d (the A-owned ones)", erased, len(owned))
		}
		ev := s.do(t, http.MethodGet, "/"+audit, "").want(t, http.StatusOK).resource(t)
		if ev["resourceType"] != "AuditEvent" || ev["action"] != "D" {
			t.Errorf("audit event %s = %v, want an AuditEvent with action D", audit, ev)
		}

		// No version of A's resources opens.
		for ref, n := range owned {
			s.do(t, http.MethodGet, "/"+ref, "").wantErased(t, "read "+ref)
			for v := 1; v <= n; v++ {
				s.do(t, http.MethodGet, fmt.Sprintf("/%s/_history/%d", ref, v), "").wantErased(t, fmt.Sprintf("vread %s v%d", ref, v))
			}
			s.do(t, http.MethodGet, "/"+ref+"/_history", "").wantErased(t, "history of "+ref)
		}

		// Searches and type histories no longer find A's resources, and
		// still find B's.
		for _, c := range []struct {
			query string
			want  []string
		}{
			{"/Observation?subject=Patient/A", nil},
			{"/Observation?patient=A", nil},
			{"/Encounter?subject=Patient/A", nil},
			{"/Patient?_id=A", nil},
			{"/Patient?_id=B", []string{"Patient/B"}},
			{"/Observation?subject=Patient/B", []string{"Observation/obs-b"}},
			{"/Observation?patient=B", []string{"Observation/obs-b"}},
			{"/Observation", []string{"Observation/obs-b"}},
			{"/Appointment?patient=B", []string{"Appointment/appt-b"}},
			{"/Observation/_history", []string{"Observation/obs-b"}},
			{"/Patient/_history", []string{"Patient/B"}},
			{"/Encounter/_history", nil},
			{"/Condition/_history", nil},
			{"/Appointment/_history", []string{"Appointment/appt-b"}},
		} {
			got := bundleIDs(t, s.do(t, http.MethodGet, c.query, ""))
			if !slices.Equal(got, c.want) {
				t.Errorf("GET %s = %v, want %v", c.query, got, c.want)
			}
		}

		// The compartment stays closed to writes.
		s.do(t, http.MethodPut, "/Observation/obs-a2", strings.Replace(fmt.Sprintf(obsA, 1, 1), `"obs-a"`, `"obs-a2"`, 1)).wantErased(t, "PUT a new Observation of A")
		s.do(t, http.MethodPost, "/Observation", fmt.Sprintf(obsA, 1, 1)).wantErased(t, "POST an Observation of A")
		s.do(t, http.MethodPut, "/Observation/obs-a", strings.Replace(obsB, `"obs-b"`, `"obs-a"`, 1)).wantErased(t, "PUT to A's erased Observation id")

		// Others are unaffected.
		for ref, body := range map[string][]byte{
			"Patient/B":          patB,
			"Observation/obs-b":  obsBBody,
			"Appointment/appt-b": apptB,
			"Practitioner/doc":   practBody,
		} {
			r := s.do(t, http.MethodGet, "/"+ref, "").want(t, http.StatusOK)
			if string(r.body) != string(body) {
				t.Errorf("GET %s = %s, want %s", ref, r.body, body)
			}
			s.do(t, http.MethodGet, "/"+ref+"/_history/1", "").want(t, http.StatusOK)
		}
		s.put(t, "/Observation/obs-b2", strings.Replace(obsB, `"obs-b"`, `"obs-b2"`, 1))

		// Idempotent; unknown patients are 404.
		again, _ := eraseResult(t, s.erase(t, "/Patient/A/$erase"))
		t.Logf("second $erase erased %d", again)
		s.erase(t, "/Patient/nobody/$erase").wantOutcome(t, http.StatusNotFound)
		s.do(t, http.MethodGet, "/Patient/B", "").want(t, http.StatusOK)
	})
}

// TestEraseAcrossProcesses: an erasure by one gateway takes effect in
// another that shares the Redis store and the key ring, including one that
// has the patient's data key cached.
func TestEraseAcrossProcesses(t *testing.T) {
	var gws [2]*server
	for i, st := range sharedRedis(t, len(gws)) {
		gws[i] = newServer(t, gateway.Config{Store: st, NoAudit: true})
	}
	g1, g2 := gws[0], gws[1]

	g1.put(t, "/Patient/A", `{"resourceType": "Patient", "id": "A"}`)
	g1.put(t, "/Patient/B", `{"resourceType": "Patient", "id": "B"}`)
	for v := 1; v <= 2; v++ {
		g1.put(t, "/Observation/obs-a", fmt.Sprintf(obsA, v, 60+v))
	}
	g1.put(t, "/Observation/obs-b", obsB)

	// Gateway 2 opens A's data key and caches it.
	g2.do(t, http.MethodGet, "/Observation/obs-a", "").want(t, http.StatusOK)
	g2.do(t, http.MethodGet, "/Observation/obs-a/_history/1", "").want(t, http.StatusOK)

	erased, _ := eraseResult(t, g1.erase(t, "/Patient/A/$erase"))
	if erased != 2 {
		t.Errorf("$erase erased %d resources, want 2", erased)
	}

	// At once: the stored versions are gone.
	g2.do(t, http.MethodGet, "/Observation/obs-a", "").wantErased(t, "gateway 2 read")
	g2.do(t, http.MethodGet, "/Patient/A", "").wantErased(t, "gateway 2 read of the Patient")
	// After the data key recheck interval (keys.Options.Recheck, 1s) even
	// an old version does not open.
	time.Sleep(1100 * time.Millisecond)
	g2.do(t, http.MethodGet, "/Observation/obs-a/_history/1", "").wantErased(t, "gateway 2 vread")
	g2.do(t, http.MethodPut, "/Observation/obs-a3", strings.Replace(fmt.Sprintf(obsA, 1, 1), `"obs-a"`, `"obs-a3"`, 1)).wantErased(t, "gateway 2 write into A's compartment")
	g2.do(t, http.MethodGet, "/Observation/obs-b", "").want(t, http.StatusOK)
	g2.do(t, http.MethodGet, "/Patient/B", "").want(t, http.StatusOK)
}
