package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/internal/store"
)

// auditEvent is the part of an AuditEvent the tests look at.
type auditEvent struct {
	ResourceType string `json:"resourceType"`
	ID           string `json:"id"`
	Action       string `json:"action"`
	Outcome      string `json:"outcome"`
	Subtype      []struct{ Code string }
	Agent        []struct {
		Who struct {
			Reference  string
			Identifier struct{ System, Value string }
		}
		Requestor bool
	}
	PurposeOfEvent []struct{ Coding []struct{ Code string } }
	Entity         []struct {
		What   struct{ Reference string }
		Query  string
		Detail []struct {
			Type        string
			ValueString string
		}
	}
}

func (e auditEvent) who() string {
	if len(e.Agent) == 0 {
		return ""
	}
	if e.Agent[0].Who.Reference != "" {
		return e.Agent[0].Who.Reference
	}
	return e.Agent[0].Who.Identifier.Value
}

func (e auditEvent) entities() []string {
	var out []string
	for _, en := range e.Entity {
		if en.What.Reference != "" {
			out = append(out, en.What.Reference)
		}
	}
	return out
}

func (e auditEvent) detail(typ string) []string {
	var out []string
	for _, en := range e.Entity {
		for _, d := range en.Detail {
			if d.Type == typ {
				out = append(out, d.ValueString)
			}
		}
	}
	return out
}

func (a *authServer) auditEvents(t *testing.T, token, query string) []auditEvent {
	t.Helper()
	b := a.as(t, token, http.MethodGet, "/AuditEvent?"+query+"&_count=1000", "").bundle(t)
	var out []auditEvent
	for _, e := range b.Entry {
		var ev auditEvent
		if err := json.Unmarshal(e.Resource, &ev); err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

// TestAuditTrail: every access, allowed or denied, is an AuditEvent in
// the patient's compartment that the patient — and only they — can read.
func TestAuditTrail(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		a := newAuthServer(t, st)
		w := setupMatrix(t, a)
		obsA, obsB := w.ids["obsA"], w.ids["obsB"]
		p1 := a.tok(t, "Practitioner/P1", "user/*.read", "")
		p2 := a.tok(t, "Practitioner/P2", "user/*.read", "")
		glass := a.tok(t, "Practitioner/P6", "user/*.read", "ETREAT")
		a.as(t, p1, http.MethodGet, "/"+obsA, "").want(t, http.StatusOK)
		a.as(t, p2, http.MethodGet, "/"+obsA, "").want(t, http.StatusForbidden)
		a.as(t, glass, http.MethodGet, "/"+obsB, "").want(t, http.StatusOK)

		patA := a.tok(t, "Patient/A", "patient/*.read", "")
		patB := a.tok(t, "Patient/B", "patient/*.read", "")
		evA := a.auditEvents(t, patA, "patient=Patient/A")
		var sawRead, sawDenied bool
		for _, ev := range evA {
			for _, e := range ev.entities() {
				if e == "Patient/B" || strings.HasPrefix(e, obsB) {
					t.Errorf("patient A's audit trail names B's records: %v", ev.entities())
				}
			}
			if ev.who() == "Practitioner/P1" && slicesHasPrefix(ev.entities(), obsA) && ev.Outcome == "0" && ev.Action == "R" {
				sawRead = true
				if got := ev.detail("decision"); len(got) != 1 || got[0] != "allow" {
					t.Errorf("decision detail = %v, want [allow]", got)
				}
				if len(ev.detail("reason")) == 0 {
					t.Errorf("allowed read has no reasons")
				}
			}
			if ev.who() == "Practitioner/P2" && ev.Outcome == "4" {
				sawDenied = true
				if got := ev.detail("decision"); len(got) != 1 || got[0] != "deny" {
					t.Errorf("denied read: decision detail = %v, want [deny]", got)
				}
			}
		}
		if !sawRead || !sawDenied {
			t.Errorf("patient A's audit trail: read by P1 seen %v, denial of P2 seen %v (%d events)", sawRead, sawDenied, len(evA))
		}
		// B cannot read A's trail: the search is filtered to nothing.
		if got := a.auditEvents(t, patB, "patient=Patient/A"); len(got) != 0 {
			t.Errorf("patient B sees %d of A's AuditEvents", len(got))
		}
		// Break-glass is flagged in B's trail.
		var glassSeen bool
		for _, ev := range a.auditEvents(t, patB, "patient=Patient/B") {
			if ev.who() == "Practitioner/P6" {
				glassSeen = true
				if got := ev.detail("break-glass"); len(got) != 1 || got[0] != "true" {
					t.Errorf("break-glass read: detail %v, want [true]", got)
				}
				if len(ev.PurposeOfEvent) == 0 || ev.PurposeOfEvent[0].Coding[0].Code != "ETREAT" {
					t.Errorf("break-glass read: purposeOfEvent %v, want ETREAT", ev.PurposeOfEvent)
				}
			}
		}
		if !glassSeen {
			t.Errorf("break-glass read of B's record not in B's audit trail")
		}
	})
}

func slicesHasPrefix(xs []string, prefix string) bool {
	for _, x := range xs {
		if strings.HasPrefix(x, prefix+"/") || x == prefix {
			return true
		}
	}
	return false
}

// TestAuditPerPatient: a search returning several patients' records writes
// one AuditEvent per patient, each naming only that patient (IHE BALP).
// Every AuditEvent the gateway writes is valid R4.
func TestAuditPerPatient(t *testing.T) {
	a := newAuthServer(t, boltStore(t))
	w := setupMatrix(t, a)
	sys := a.tok(t, "", "system/*.*", "")
	a.as(t, sys, http.MethodGet, "/Observation?_id="+strings.TrimPrefix(w.ids["obsA"], "Observation/")+","+strings.TrimPrefix(w.ids["obsB"], "Observation/"), "").want(t, 200)
	all := a.as(t, sys, http.MethodGet, "/AuditEvent?subtype=search-type&_count=1000", "").bundle(t)
	perPatient := map[string]int{}
	for _, e := range all.Entry {
		if _, err := fhir.Parse(e.Resource, fhir.ParseOptions{}); err != nil {
			t.Fatalf("stored AuditEvent is not valid R4: %v\n%s", err, e.Resource)
		}
		var ev auditEvent
		json.Unmarshal(e.Resource, &ev)
		var pats []string
		for _, r := range ev.entities() {
			if strings.HasPrefix(r, "Patient/") && !strings.Contains(r, "/_history/") {
				pats = append(pats, r)
			}
		}
		if len(pats) > 1 {
			t.Errorf("one AuditEvent names several patients: %v", pats)
		}
		for _, p := range pats {
			for _, r := range ev.entities() {
				if strings.HasPrefix(r, "Observation/") && r != p {
					if (p == "Patient/A") != strings.HasPrefix(r, w.ids["obsA"]) {
						t.Errorf("the event of %s names %s", p, r)
					}
				}
			}
			perPatient[p]++
		}
	}
	if perPatient["Patient/A"] == 0 || perPatient["Patient/B"] == 0 {
		t.Errorf("search of two patients' records: events per patient %v, want both", perPatient)
	}
	// AuditEvents are append-only.
	ev := a.createAs(t, sys, "AuditEvent", `{"resourceType":"AuditEvent","type":{"code":"rest"},"recorded":"2024-01-01T00:00:00Z","agent":[{"requestor":true,"who":{"display":"x"}}],"source":{"observer":{"display":"ehr"}}}`)
	a.as(t, sys, http.MethodDelete, "/AuditEvent/"+ev, "").wantOutcome(t, http.StatusMethodNotAllowed)
	cur := a.as(t, sys, http.MethodGet, "/AuditEvent/"+ev, "").want(t, 200)
	a.as(t, sys, http.MethodPut, "/AuditEvent/"+ev, string(cur.body)).wantOutcome(t, http.StatusMethodNotAllowed)
	// A request without a valid token is audited too.
	a.do(t, http.MethodGet, "/Observation", "").want(t, http.StatusUnauthorized)
	var unauth int
	for _, ev := range a.auditEvents(t, sys, "outcome=4") {
		if ev.who() == "unauthenticated" {
			unauth++
		}
	}
	if unauth == 0 {
		t.Errorf("the 401 was not audited")
	}
}

// failingAudits is a store whose AuditEvent writes fail.
type failingAudits struct{ store.Store }

func (f failingAudits) Put(ctx context.Context, r store.Record, o store.PutOptions) error {
	if r.Type == "AuditEvent" {
		return errors.New("audit disk full")
	}
	return f.Store.Put(ctx, r, o)
}

// TestAuditFailureRefuses: when the AuditEvent cannot be stored, the
// request fails and the record is not served.
func TestAuditFailureRefuses(t *testing.T) {
	st := boltStore(t)
	ok := newAuthServer(t, st)
	sys := ok.tok(t, "", "system/*.*", "")
	ok.as(t, sys, http.MethodPut, "/Patient/F", matrixPatient("F")).want(t, 201)
	broken := newAuthServerKey(t, failingAudits{st}, ok.key)
	r := broken.as(t, sys, http.MethodGet, "/Patient/F", "")
	r.wantOutcome(t, http.StatusInternalServerError)
	if strings.Contains(string(r.body), "Matrix") {
		t.Errorf("the record was served although its access was not audited: %s", r.body)
	}
	if r.header.Get("ETag") != "" {
		t.Errorf("headers of the withheld response leaked: ETag %q", r.header.Get("ETag"))
	}
}

// TestEraseAuditTrail: a patient's AuditEvents are in their compartment and
// are erased with it; the erasure's own AuditEvent survives, and accesses
// to resources shared with an erased patient are still audited.
func TestEraseAuditTrail(t *testing.T) {
	a := newAuthServer(t, boltStore(t))
	sys := a.tok(t, "", "system/*.*", "")
	a.as(t, sys, http.MethodPut, "/Patient/A", matrixPatient("A")).want(t, 201)
	a.as(t, sys, http.MethodPut, "/Patient/B", matrixPatient("B")).want(t, 201)
	shared := a.createAs(t, sys, "Appointment", `{"resourceType":"Appointment","status":"booked","start":"2030-01-01T10:00:00Z","end":"2030-01-01T10:30:00Z","participant":[{"actor":{"reference":"Patient/B"},"status":"accepted"},{"actor":{"reference":"Patient/A"},"status":"accepted"}]}`)
	a.as(t, sys, http.MethodGet, "/Patient/A", "").want(t, 200)
	trail := a.auditEvents(t, sys, "patient=Patient/A")
	if len(trail) == 0 {
		t.Fatal("no AuditEvents in A's compartment")
	}
	r := a.as(t, sys, http.MethodPost, "/Patient/A/$erase", "").want(t, 200)
	var params struct {
		Parameter []struct {
			Name           string
			ValueReference struct{ Reference string }
		}
	}
	json.Unmarshal(r.body, &params)
	var erasure string
	for _, p := range params.Parameter {
		if p.Name == "auditEvent" {
			erasure = p.ValueReference.Reference
		}
	}
	for _, ev := range trail {
		a.as(t, sys, http.MethodGet, "/AuditEvent/"+ev.ID, "").wantOutcome(t, http.StatusGone)
	}
	a.as(t, sys, http.MethodGet, "/"+erasure, "").want(t, http.StatusOK)
	// The shared Appointment is still readable, and its read audited.
	a.as(t, sys, http.MethodGet, "/Appointment/"+shared, "").want(t, http.StatusOK)
	a.as(t, sys, http.MethodGet, "/Appointment?patient=Patient/B", "").want(t, http.StatusOK)
}

// TestDecisionMetrics: /metrics counts decisions by result and times them,
// with labels that carry no resource ids or patients.
func TestDecisionMetrics(t *testing.T) {
	a := newAuthServer(t, boltStore(t))
	w := setupMatrix(t, a)
	a.as(t, a.tok(t, "Practitioner/P1", "user/*.read", ""), http.MethodGet, "/"+w.ids["obsA"], "").want(t, 200)
	a.as(t, a.tok(t, "Practitioner/P2", "user/*.read", ""), http.MethodGet, "/"+w.ids["obsA"], "").want(t, 403)
	a.as(t, a.tok(t, "Practitioner/P6", "user/*.read", "ETREAT"), http.MethodGet, "/"+w.ids["obsB"], "").want(t, 200)
	m := string(a.do(t, http.MethodGet, strings.TrimSuffix(a.base, "/fhir")+"/metrics", "").want(t, 200).body)
	for _, want := range []string{
		`fhirgate_policy_decisions_total{result="allow"}`,
		`fhirgate_policy_decisions_total{result="deny"}`,
		`fhirgate_policy_decisions_total{result="break_glass"}`,
		`fhirgate_policy_decision_seconds_count`,
		`fhirgate_requests_total{code="403",interaction="read",type="Observation"}`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	for _, phi := range []string{"Patient/A", strings.TrimPrefix(w.ids["obsA"], "Observation/"), "Practitioner/P1"} {
		if strings.Contains(m, phi) {
			t.Errorf("/metrics contains %q", phi)
		}
	}
}

// hangUp is a store whose Patient writes succeed only after the client
// that sent them has hung up.
type hangUp struct {
	store.Store
	client context.CancelFunc
}

func (h hangUp) Put(ctx context.Context, r store.Record, o store.PutOptions) error {
	if err := h.Store.Put(ctx, r, o); err != nil || r.Type != "Patient" {
		return err
	}
	h.client()
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
	}
	return nil
}

// TestAuditAfterHangUp: a write whose client hung up is audited all the
// same.
func TestAuditAfterHangUp(t *testing.T) {
	st := boltStore(t)
	ctx, cancel := context.WithCancel(t.Context())
	a := newAuthServer(t, hangUp{st, cancel})
	sys := a.tok(t, "", "system/*.*", "")
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, a.base+"/Patient/H", strings.NewReader(matrixPatient("H")))
	req.Header.Set("Content-Type", "application/fhir+json")
	req.Header.Set("Authorization", "Bearer "+sys)
	if res, err := a.hc.Do(req); err == nil {
		res.Body.Close()
		t.Fatal("the client did not hang up")
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(a.auditEvents(t, sys, "entity=Patient/H")) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no AuditEvent for the write whose client hung up")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
