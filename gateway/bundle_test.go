package gateway_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/gateway"
	"github.com/fhirgate/fhirgate/internal/auth"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/boltstore"
	"github.com/fhirgate/fhirgate/internal/store/redisstore"
	"github.com/fhirgate/fhirgate/internal/store/redisstore/redistest"
	"github.com/fhirgate/fhirgate/internal/store/sealed/sealedtest"
	"github.com/fhirgate/fhirgate/policy"
)

// txResponse is a batch-response or transaction-response Bundle.
type txResponse struct {
	ResourceType string `json:"resourceType"`
	Type         string `json:"type"`
	Entry        []struct {
		FullURL  string          `json:"fullUrl"`
		Resource json.RawMessage `json:"resource"`
		Response struct {
			Status       string          `json:"status"`
			Location     string          `json:"location"`
			Etag         string          `json:"etag"`
			LastModified string          `json:"lastModified"`
			Outcome      json.RawMessage `json:"outcome"`
		} `json:"response"`
	} `json:"entry"`
}

func (r response) txResponse(t *testing.T, typ string) txResponse {
	t.Helper()
	r.want(t, http.StatusOK)
	var b txResponse
	if err := json.Unmarshal(r.body, &b); err != nil {
		t.Fatalf("body is not JSON: %v: %s", err, r.body)
	}
	if b.ResourceType != "Bundle" || b.Type != typ {
		t.Fatalf("not a %s Bundle: %.300s", typ, r.body)
	}
	return b
}

// syntheaSeeds are the Practitioners, Locations and Organizations the
// Synthea bundles of newer Synthea versions name by conditional reference
// (Synthea exports them in separate practitioner and hospital bundles).
const syntheaSeeds = `{"resourceType": "Bundle", "type": "batch", "entry": [
 {"resource": {"resourceType": "Practitioner", "id": "npi-9999955949", "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "9999955949"}]},
  "request": {"method": "PUT", "url": "Practitioner/npi-9999955949"}},
 {"resource": {"resourceType": "Practitioner", "id": "npi-9999999569", "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "9999999569"}]},
  "request": {"method": "PUT", "url": "Practitioner/npi-9999999569"}},
 {"resource": {"resourceType": "Location", "id": "loc-633b4209", "identifier": [{"system": "https://github.com/synthetichealth/synthea", "value": "633b4209-91a0-36dd-94c3-5d0ce0399fec"}]},
  "request": {"method": "PUT", "url": "Location/loc-633b4209"}},
 {"resource": {"resourceType": "Location", "id": "loc-d9f89f72", "identifier": [{"system": "https://github.com/synthetichealth/synthea", "value": "d9f89f72-a505-397c-8d37-70be5f437342"}]},
  "request": {"method": "PUT", "url": "Location/loc-d9f89f72"}},
 {"resource": {"resourceType": "Organization", "id": "org-753f3c32", "identifier": [{"system": "https://github.com/synthetichealth/synthea", "value": "753f3c32-49b3-34ed-a40d-420ac433ec96"}]},
  "request": {"method": "PUT", "url": "Organization/org-753f3c32"}},
 {"resource": {"resourceType": "Organization", "id": "org-f4e7709c", "identifier": [{"system": "https://github.com/synthetichealth/synthea", "value": "f4e7709c-02f6-37ca-aeea-8247d74e88e7"}]},
  "request": {"method": "PUT", "url": "Organization/org-f4e7709c"}}
]}`

func syntheaBundles(t *testing.T) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob("../testdata/synthea/*_*.json")
	if err != nil || len(files) != 3 {
		t.Fatalf("Synthea bundles: %v %v", files, err)
	}
	out := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(f)] = b
	}
	return out
}

// walkRefs calls fn for every Reference.reference in v that is not a
// contained (#) reference.
func walkRefs(v any, fn func(ref string)) {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			if s, ok := e.(string); ok && k == "reference" && !strings.HasPrefix(s, "#") {
				fn(s)
				continue
			}
			walkRefs(e, fn)
		}
	case []any:
		for _, e := range t {
			walkRefs(e, fn)
		}
	}
}

// TestSyntheaBundles loads the Synthea transaction bundles, and checks
// that every reference of every stored resource, contained resources and
// extensions included, resolves to a stored resource.
func TestSyntheaBundles(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		s := newServer(t, gateway.Config{Store: st})
		seeds := s.do(t, http.MethodPost, "", syntheaSeeds).txResponse(t, "batch-response")
		for i, e := range seeds.Entry {
			if e.Response.Status != "201 Created" {
				t.Fatalf("seed %d: %s", i, e.Response.Status)
			}
		}
		for name, body := range syntheaBundles(t) {
			var in struct {
				Entry []struct {
					FullURL  string
					Resource struct{ ResourceType string }
				}
			}
			if err := json.Unmarshal(body, &in); err != nil {
				t.Fatal(err)
			}
			out := s.do(t, http.MethodPost, "", string(body)).txResponse(t, "transaction-response")
			if len(out.Entry) != len(in.Entry) {
				t.Fatalf("%s: %d response entries for %d entries", name, len(out.Entry), len(in.Entry))
			}
			var locations []string
			for i, e := range out.Entry {
				if e.Response.Status != "201 Created" || e.Response.Etag != `W/"1"` || e.Response.LastModified == "" {
					t.Fatalf("%s entry %d: response %+v", name, i, e.Response)
				}
				typ, _, _ := strings.Cut(e.Response.Location, "/")
				if typ != in.Entry[i].Resource.ResourceType || !strings.HasSuffix(e.Response.Location, "/_history/1") {
					t.Fatalf("%s entry %d: location %q for a %s", name, i, e.Response.Location, in.Entry[i].Resource.ResourceType)
				}
				locations = append(locations, e.Response.Location)
			}
			checked, resolved := 0, map[string]bool{}
			for _, loc := range locations {
				rec := s.do(t, http.MethodGet, "/"+loc, "").want(t, http.StatusOK)
				if strings.Contains(string(rec.body), "urn:uuid:") {
					t.Fatalf("%s: %s still holds a urn:uuid: %.300s", name, loc, rec.body)
				}
				walkRefs(rec.resource(t), func(ref string) {
					parts := strings.Split(ref, "/")
					if len(parts) != 2 {
						t.Errorf("%s: %s has reference %q, not Type/id", name, loc, ref)
						return
					}
					checked++
					if !resolved[ref] {
						s.do(t, http.MethodGet, "/"+ref, "").want(t, http.StatusOK)
						resolved[ref] = true
					}
				})
			}
			if checked < len(locations) {
				t.Fatalf("%s: only %d references checked", name, checked)
			}
			t.Logf("%s: %d resources, %d references resolved", name, len(locations), checked)
		}
	})
}

// TestTransactionRewritesEverywhere checks urn:uuid and relative fullUrl
// references are rewritten in references, uri elements, extensions,
// contained resources and narrative links.
func TestTransactionRewritesEverywhere(t *testing.T) {
	s := newServer(t, gateway.Config{Store: boltStore(t)})
	body := `{"resourceType": "Bundle", "type": "transaction", "entry": [
	 {"fullUrl": "http://example.org/fhir/Patient/p1", "resource": {"resourceType": "Patient", "id": "p1"}, "request": {"method": "POST", "url": "Patient"}},
	 {"fullUrl": "urn:uuid:0b0e5b9c-8c79-4d0f-9d0b-5c1a9e1f2a33", "resource": {"resourceType": "Practitioner"}, "request": {"method": "POST", "url": "Practitioner"}},
	 {"fullUrl": "urn:uuid:7d3c7e0c-1f7e-4b0e-a3f5-6c1d2b3a4e55", "request": {"method": "POST", "url": "Observation"}, "resource": {
	   "resourceType": "Observation", "status": "final",
	   "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"urn:uuid:0b0e5b9c-8c79-4d0f-9d0b-5c1a9e1f2a33\">by</a></div>"},
	   "contained": [{"resourceType": "Provenance", "id": "prov", "recorded": "2020-01-01T00:00:00Z", "target": [{"reference": "Patient/p1"}], "agent": [{"who": {"reference": "urn:uuid:0b0e5b9c-8c79-4d0f-9d0b-5c1a9e1f2a33"}}]}],
	   "extension": [{"url": "http://example.org/ext", "valueReference": {"reference": "urn:uuid:0b0e5b9c-8c79-4d0f-9d0b-5c1a9e1f2a33"}},
	                 {"url": "http://example.org/ext-uri", "valueUri": "urn:uuid:0b0e5b9c-8c79-4d0f-9d0b-5c1a9e1f2a33"}],
	   "code": {"text": "x"}, "subject": {"reference": "Patient/p1"},
	   "performer": [{"reference": "urn:uuid:0b0e5b9c-8c79-4d0f-9d0b-5c1a9e1f2a33"}]}}
	]}`
	out := s.do(t, http.MethodPost, "", body).txResponse(t, "transaction-response")
	pat, prac, obs := out.Entry[0].Response.Location, out.Entry[1].Response.Location, out.Entry[2].Response.Location
	patRef := strings.Join(strings.Split(pat, "/")[:2], "/")
	pracRef := strings.Join(strings.Split(prac, "/")[:2], "/")
	if patRef == "Patient/p1" {
		t.Fatalf("a POST kept the id in the body: %s", pat)
	}
	got := string(s.do(t, http.MethodGet, "/"+obs, "").want(t, http.StatusOK).body)
	if strings.Contains(got, "urn:uuid:") || strings.Contains(got, `"Patient/p1"`) {
		t.Fatalf("not rewritten: %s", got)
	}
	if n := strings.Count(got, `"`+pracRef+`"`); n != 4 {
		t.Errorf("%d rewritten references to the Practitioner, want 4 (performer, extension reference and uri, contained): %s", n, got)
	}
	if !strings.Contains(got, `href=\"`+pracRef+`\"`) {
		t.Errorf("narrative link not rewritten: %s", got)
	}
	if n := strings.Count(got, `"`+patRef+`"`); n != 2 {
		t.Errorf("%d references to %s, want 2 (subject, contained target): %s", n, patRef, got)
	}
}

// TestBundleEntryLimit checks the entry limit answers 413.
func TestBundleEntryLimit(t *testing.T) {
	s := newServer(t, gateway.Config{Store: boltStore(t), MaxBundleEntries: 3})
	var entries []string
	for i := range 4 {
		entries = append(entries, fmt.Sprintf(`{"resource": %s, "request": {"method": "POST", "url": "Patient"}}`, patient(fmt.Sprint("Limit", i))))
	}
	for _, typ := range []string{"batch", "transaction"} {
		body := `{"resourceType": "Bundle", "type": "` + typ + `", "entry": [` + strings.Join(entries, ",") + `]}`
		s.do(t, http.MethodPost, "", body).wantOutcome(t, http.StatusRequestEntityTooLarge)
		ok := `{"resourceType": "Bundle", "type": "` + typ + `", "entry": [` + strings.Join(entries[:3], ",") + `]}`
		s.do(t, http.MethodPost, "", ok).txResponse(t, typ+"-response")
	}
	if n := s.typeHistoryTotal(t, "Patient"); n != 6 {
		t.Fatalf("%d Patient versions, want 6", n)
	}
}

// TestBundleRejects checks malformed Bundles are refused with 400 and
// store nothing.
func TestBundleRejects(t *testing.T) {
	s := newServer(t, gateway.Config{Store: boltStore(t)})
	for name, body := range map[string]string{
		"not JSON":        `{"resourceType": "Bundle",`,
		"not a Bundle":    patient("X"),
		"collection":      `{"resourceType": "Bundle", "type": "collection", "entry": []}`,
		"no type":         `{"resourceType": "Bundle"}`,
		"no request":      `{"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": ` + patient("X") + `}]}`,
		"bad method":      `{"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": ` + patient("X") + `, "request": {"method": "FETCH", "url": "Patient"}}]}`,
		"no resource":     `{"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "POST", "url": "Patient"}}]}`,
		"dup fullUrl":     `{"resourceType": "Bundle", "type": "transaction", "entry": [{"fullUrl": "urn:uuid:1", "resource": ` + patient("X") + `, "request": {"method": "POST", "url": "Patient"}}, {"fullUrl": "urn:uuid:1", "resource": ` + patient("X") + `, "request": {"method": "POST", "url": "Patient"}}]}`,
		"same resource":   `{"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Patient", "id": "a"}, "request": {"method": "PUT", "url": "Patient/a"}}, {"request": {"method": "DELETE", "url": "Patient/a"}}]}`,
		"type mismatch":   `{"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": ` + patient("X") + `, "request": {"method": "POST", "url": "Observation"}}]}`,
		"invalid":         `{"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Patient", "gender": 7}, "request": {"method": "POST", "url": "Patient"}}]}`,
		"PATCH":           `{"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Parameters"}, "request": {"method": "PATCH", "url": "Patient/a"}}]}`,
		"operation":       `{"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Parameters"}, "request": {"method": "POST", "url": "ValueSet/$lookup"}}]}`,
		"unknown type":    `{"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "GET", "url": "Nonsense/1"}}]}`,
		"entries object":  `{"resourceType": "Bundle", "type": "batch", "entry": {"request": {}}}`,
		"unresolved uuid": `{"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "urn:uuid:f00"}}, "request": {"method": "POST", "url": "Observation"}}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			r := s.do(t, http.MethodPost, "", body)
			if r.status < 400 || r.status >= 500 {
				t.Fatalf("status %d, want 4xx: %s", r.status, r.body)
			}
			r.wantOutcome(t, r.status)
		})
	}
	for _, typ := range []string{"Patient", "Observation"} {
		if n := s.typeHistoryTotal(t, typ); n != 0 {
			t.Fatalf("%d %s versions stored by refused Bundles", n, typ)
		}
	}
}

// txSnapshot is what a transaction could change, read from the store
// itself (reading through the API would add AuditEvents).
type txSnapshot struct {
	versions map[string]int // per type
	leaves   int64
	calendar int64 // the booked practitioner's calendar cell version
}

var txTypes = []string{"Patient", "Observation", "Appointment", "Practitioner", "AuditEvent"}

func snapshotTx(t *testing.T, st store.Store, log *anchor.Log) txSnapshot {
	t.Helper()
	s := txSnapshot{versions: map[string]int{}}
	for _, typ := range txTypes {
		_, n, err := st.History(t.Context(), store.HistoryQuery{Type: typ, Count: 1})
		if err != nil {
			t.Fatal(err)
		}
		s.versions[typ] = n
	}
	size, err := log.Integrate(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	s.leaves = size
	cell, err := st.GetCell(t.Context(), "calendar/Practitioner/tx-doc/2030-01-07")
	if err != nil {
		t.Fatal(err)
	}
	s.calendar = cell.Version
	return s
}

// atomicityEntries are the entries of the atomicity test's transaction:
// each good, and as it fails (bad) in a way of its own.
var atomicityEntries = []struct{ good, bad string }{
	{ // 0: a new patient
		`{"fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111", "resource": {"resourceType": "Patient", "name": [{"family": "Atom"}]}, "request": {"method": "POST", "url": "Patient"}}`,
		`{"fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111", "resource": {"resourceType": "Patient", "gender": 7}, "request": {"method": "POST", "url": "Patient"}}`,
	},
	{ // 1: an observation of the new patient
		`{"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "hr"}, "subject": {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"}}, "request": {"method": "POST", "url": "Observation"}}`,
		`{"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "hr"}, "bogus": true, "subject": {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"}}, "request": {"method": "POST", "url": "Observation"}}`,
	},
	{ // 2: an update of an existing patient, at the version expected
		`{"resource": {"resourceType": "Patient", "id": "tx-keep", "name": [{"family": "Kept"}]}, "request": {"method": "PUT", "url": "Patient/tx-keep", "ifMatch": "W/\"1\""}}`,
		`{"resource": {"resourceType": "Patient", "id": "tx-keep", "name": [{"family": "Kept"}]}, "request": {"method": "PUT", "url": "Patient/tx-keep", "ifMatch": "W/\"9\""}}`,
	},
	{ // 3: a delete
		`{"request": {"method": "DELETE", "url": "Observation/tx-old", "ifMatch": "W/\"1\""}}`,
		`{"request": {"method": "DELETE", "url": "Observation/tx-old", "ifMatch": "W/\"9\""}}`,
	},
	{ // 4: a booking (commit hook: the practitioner's calendar cell)
		`{"resource": {"resourceType": "Appointment", "status": "booked", "start": "2030-01-07T10:00:00Z", "end": "2030-01-07T10:30:00Z", "participant": [{"actor": {"reference": "Practitioner/tx-doc"}, "status": "accepted"}, {"actor": {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"}, "status": "accepted"}]}, "request": {"method": "POST", "url": "Appointment"}}`,
		`{"resource": {"resourceType": "Appointment", "status": "booked", "start": "2030-01-07T10:00:00Z", "end": "2030-01-07T09:30:00Z", "participant": [{"actor": {"reference": "Practitioner/tx-doc"}, "status": "accepted"}, {"actor": {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"}, "status": "accepted"}]}, "request": {"method": "POST", "url": "Appointment"}}`,
	},
	{ // 5: a conditional create, with a conditional reference
		`{"resource": {"resourceType": "Practitioner", "identifier": [{"system": "urn:tx", "value": "new-doc"}], "extension": [{"url": "urn:tx:colleague", "valueReference": {"reference": "Practitioner?identifier=urn:tx|doc"}}]}, "request": {"method": "POST", "url": "Practitioner", "ifNoneExist": "identifier=urn:tx|new-doc"}}`,
		`{"resource": {"resourceType": "Practitioner", "identifier": [{"system": "urn:tx", "value": "new-doc"}], "extension": [{"url": "urn:tx:colleague", "valueReference": {"reference": "Practitioner?identifier=urn:tx|nobody"}}]}, "request": {"method": "POST", "url": "Practitioner", "ifNoneExist": "identifier=urn:tx|new-doc"}}`,
	},
	{ // 6: a conditional update that creates
		`{"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "bp"}, "identifier": [{"system": "urn:tx", "value": "obs"}], "subject": {"reference": "Patient/tx-keep"}}, "request": {"method": "PUT", "url": "Observation?identifier=urn:tx|obs"}}`,
		`{"resource": {"resourceType": "Patient", "identifier": [{"system": "urn:tx", "value": "obs"}]}, "request": {"method": "PUT", "url": "Observation?identifier=urn:tx|obs"}}`,
	},
	{ // 7: a read, after the writes
		`{"request": {"method": "GET", "url": "Patient/tx-keep"}}`,
		`{"request": {"method": "GET", "url": "Patient/tx-keep"}}`,
	},
}

func atomicityBundle(bad int) string {
	var es []string
	for i, e := range atomicityEntries {
		if i == bad {
			es = append(es, e.bad)
		} else {
			es = append(es, e.good)
		}
	}
	return `{"resourceType": "Bundle", "type": "transaction", "entry": [` + strings.Join(es, ",") + `]}`
}

// TestTransactionAtomicity fails a transaction at each of its write
// entries in turn (invalid resource, unknown element, ifMatch, delete
// ifMatch, booking invariant, unresolvable conditional reference, type
// mismatch): each time nothing is stored, no leaf appended, no calendar
// changed, and only the failure's AuditEvent is written. Then the
// transaction succeeds as a whole: every version, its leaf and the
// AuditEvents naming each version are stored together.
func TestTransactionAtomicity(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		backend := st.(interface{ Backend() store.Store }).Backend()
		log := anchor.NewLog(backend.(anchor.Storage))
		s := newServer(t, gateway.Config{Store: st})
		s.do(t, http.MethodPut, "/Patient/tx-keep", `{"resourceType": "Patient", "id": "tx-keep"}`).want(t, http.StatusCreated)
		s.do(t, http.MethodPut, "/Observation/tx-old", `{"resourceType": "Observation", "id": "tx-old", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/tx-keep"}}`).want(t, http.StatusCreated)
		s.do(t, http.MethodPut, "/Practitioner/tx-doc", `{"resourceType": "Practitioner", "id": "tx-doc", "identifier": [{"system": "urn:tx", "value": "doc"}]}`).want(t, http.StatusCreated)
		before := snapshotTx(t, st, log)
		for i, e := range atomicityEntries {
			if e.good == e.bad {
				continue
			}
			r := s.do(t, http.MethodPost, "", atomicityBundle(i))
			if r.status < 400 || r.status >= 500 {
				t.Fatalf("entry %d failing: status %d: %s", i, r.status, r.body)
			}
			r.wantOutcome(t, r.status)
			if !strings.Contains(string(r.body), fmt.Sprintf("entry %d ", i)) {
				t.Errorf("entry %d failing: the outcome does not name it: %s", i, r.body)
			}
			after := snapshotTx(t, st, log)
			want := before
			want.versions = maps.Clone(before.versions)
			want.versions["AuditEvent"]++ // the failure's own
			want.leaves++
			if !reflect.DeepEqual(after, want) {
				t.Fatalf("entry %d failing (%d): state %+v, want %+v", i, r.status, after, want)
			}
			before = after
		}
		out := s.do(t, http.MethodPost, "", atomicityBundle(-1)).txResponse(t, "transaction-response")
		after := snapshotTx(t, st, log)
		for typ, n := range map[string]int{"Patient": 2, "Observation": 3, "Appointment": 1, "Practitioner": 1} {
			if d := after.versions[typ] - before.versions[typ]; d != n {
				t.Errorf("%d new %s versions, want %d", d, typ, n)
			}
		}
		audits := after.versions["AuditEvent"] - before.versions["AuditEvent"]
		written := 0
		for typ := range after.versions {
			written += after.versions[typ] - before.versions[typ]
		}
		// The GET entry's own AuditEvent is committed after the write.
		if audits < 2 || after.leaves-before.leaves != int64(written) {
			t.Errorf("%d versions (%d AuditEvents) but %d leaves", written, audits, after.leaves-before.leaves)
		}
		if after.calendar != before.calendar+1 {
			t.Errorf("calendar cell version %d, want %d", after.calendar, before.calendar+1)
		}
		wantStatus := []string{"201 Created", "201 Created", "200 OK", "204 No Content", "201 Created", "201 Created", "201 Created", "200 OK"}
		var versions []string
		for i, e := range out.Entry {
			if e.Response.Status != wantStatus[i] {
				t.Errorf("entry %d: status %q, want %q", i, e.Response.Status, wantStatus[i])
			}
			if e.Response.Location != "" {
				versions = append(versions, e.Response.Location)
			}
		}
		if len(out.Entry[7].Resource) == 0 || !strings.Contains(string(out.Entry[7].Resource), `"versionId":"2"`) {
			t.Errorf("the GET entry does not see the update: %s", out.Entry[7].Resource)
		}
		// Every written version is named by an AuditEvent.
		evs := s.do(t, http.MethodGet, "/AuditEvent?_count=100&_sort=-_lastUpdated", "").bundle(t)
		var all strings.Builder
		for _, e := range evs.Entry {
			all.Write(e.Resource)
		}
		for _, v := range versions[:len(versions)-1] {
			if !strings.Contains(all.String(), `"`+v+`"`) {
				t.Errorf("no AuditEvent names %s", v)
			}
		}
		// The booking holds.
		s.do(t, http.MethodPost, "/Appointment", `{"resourceType": "Appointment", "status": "booked", "start": "2030-01-07T10:15:00Z", "end": "2030-01-07T10:45:00Z", "participant": [{"actor": {"reference": "Practitioner/tx-doc"}, "status": "accepted"}]}`).wantOutcome(t, http.StatusConflict)
	})
}

// TestTransactionDoubleBooking: two overlapping bookings of one
// practitioner in one transaction fail it (the second sees the first).
func TestTransactionDoubleBooking(t *testing.T) {
	s := newServer(t, gateway.Config{Store: boltStore(t)})
	appt := func(start, end string) string {
		return `{"resource": {"resourceType": "Appointment", "status": "booked", "start": "` + start + `", "end": "` + end + `", "participant": [{"actor": {"reference": "Practitioner/dd"}, "status": "accepted"}]}, "request": {"method": "POST", "url": "Appointment"}}`
	}
	body := `{"resourceType": "Bundle", "type": "transaction", "entry": [` + appt("2030-02-01T09:00:00Z", "2030-02-01T10:00:00Z") + `,` + appt("2030-02-01T09:30:00Z", "2030-02-01T10:30:00Z") + `]}`
	s.do(t, http.MethodPost, "", body).wantOutcome(t, http.StatusConflict)
	body = `{"resourceType": "Bundle", "type": "transaction", "entry": [` + appt("2030-02-01T09:00:00Z", "2030-02-01T10:00:00Z") + `,` + appt("2030-02-01T10:00:00Z", "2030-02-01T10:30:00Z") + `]}`
	s.do(t, http.MethodPost, "", body).txResponse(t, "transaction-response")
	if n := s.typeHistoryTotal(t, "Appointment"); n != 2 {
		t.Fatalf("%d appointments, want 2", n)
	}
}

// TestBundlePolicy: the policy decides each entry as its own request. A
// denied entry fails a transaction with 403 naming it, and nothing is
// stored; in a batch only that entry fails.
func TestBundlePolicy(t *testing.T) {
	a := newAuthServer(t, boltStore(t))
	sys := a.tok(t, "", "system/*.*", "")
	for _, p := range []string{"A", "B"} {
		a.as(t, sys, http.MethodPut, "/Patient/"+p, matrixPatient(p)).want(t, http.StatusCreated)
	}
	a.createAs(t, sys, "Consent", consent("Patient/A", "Practitioner/P1", "2020-01-01", "2100-01-01", ""))
	doc := a.tok(t, "Practitioner/P1", "user/*.cruds", "")
	entry := func(p string) string {
		return `{"resource": ` + obsFor("Patient/"+p) + `, "request": {"method": "POST", "url": "Observation"}}`
	}
	body := func(typ string) string {
		return `{"resourceType": "Bundle", "type": "` + typ + `", "entry": [` + entry("A") + `,` + entry("B") + `]}`
	}
	r := a.as(t, doc, http.MethodPost, "", body("transaction"))
	r.wantOutcome(t, http.StatusForbidden)
	if !strings.Contains(string(r.body), "entry 1 (POST Observation)") {
		t.Errorf("the 403 does not name the denied entry: %s", r.body)
	}
	count := func() int {
		return a.as(t, sys, http.MethodGet, "/Observation?_summary=count", "").bundle(t).total(t)
	}
	if n := count(); n != 0 {
		t.Fatalf("a denied transaction stored %d Observations", n)
	}
	// The denial is audited, naming the patient whose record was refused.
	evs := a.auditEvents(t, sys, "patient=Patient/B&outcome=4")
	if len(evs) != 1 {
		t.Fatalf("%d AuditEvents of the denied entry, want 1", len(evs))
	}
	out := a.as(t, doc, http.MethodPost, "", body("batch")).txResponse(t, "batch-response")
	if out.Entry[0].Response.Status != "201 Created" || out.Entry[1].Response.Status != "403 Forbidden" || len(out.Entry[1].Response.Outcome) == 0 {
		t.Fatalf("batch entries: %+v %+v", out.Entry[0].Response, out.Entry[1].Response)
	}
	if n := count(); n != 1 {
		t.Fatalf("%d Observations after the batch, want 1", n)
	}
	a.as(t, doc, http.MethodPost, "", `{"resourceType": "Bundle", "type": "transaction", "entry": [`+entry("A")+`]}`).txResponse(t, "transaction-response")
}

// TestSpecTransactionExample runs R4's transaction example
// (Bundle-bundle-transaction.json) against the state it presumes. It
// posts ValueSet/$lookup, an operation fhirgate does not serve, so as a
// transaction it fails as a whole (400 naming entry 7, nothing stored);
// without that entry it succeeds, each entry as the spec describes; as a
// batch every other entry succeeds.
func TestSpecTransactionExample(t *testing.T) {
	raw, err := os.ReadFile("../testdata/conformance/r4-examples/Bundle-bundle-transaction.json")
	if err != nil {
		t.Fatal(err)
	}
	var b map[string]any
	if err := json.Unmarshal(raw, &b); err != nil {
		t.Fatal(err)
	}
	entries := b["entry"].([]any)
	without := func(typ string, skip int) string {
		c := maps.Clone(b)
		c["type"] = typ
		var es []any
		for i, e := range entries {
			if i != skip {
				es = append(es, e)
			}
		}
		c["entry"] = es
		out, _ := json.Marshal(c)
		return string(out)
	}
	s := newServer(t, gateway.Config{Store: boltStore(t)})
	// The state the example presumes.
	s.create(t, "Patient", `{"resourceType": "Patient", "identifier": [{"system": "http:/example.org/fhir/ids", "value": "234234"}]}`)
	updated := s.create(t, "Patient", `{"resourceType": "Patient", "identifier": [{"system": "http:/example.org/fhir/ids", "value": "456456"}]}`)
	s.do(t, http.MethodPut, "/Patient/123a", `{"resourceType": "Patient", "id": "123a"}`).want(t, http.StatusCreated)
	s.do(t, http.MethodPut, "/Patient/123a", `{"resourceType": "Patient", "id": "123a", "active": true}`).want(t, http.StatusOK)
	s.do(t, http.MethodPut, "/Patient/234", `{"resourceType": "Patient", "id": "234"}`).want(t, http.StatusCreated)
	s.create(t, "Patient", `{"resourceType": "Patient", "identifier": [{"value": "123456"}]}`)
	for v := range 4 {
		s.do(t, http.MethodPut, "/Patient/12334", fmt.Sprintf(`{"resourceType": "Patient", "id": "12334", "birthDate": "2000-01-0%d"}`, v+1))
	}
	s.create(t, "Patient", `{"resourceType": "Patient", "name": [{"given": ["Peter"]}]}`)
	patients := s.typeHistoryTotal(t, "Patient")

	r := s.do(t, http.MethodPost, "", string(raw))
	r.wantOutcome(t, http.StatusBadRequest)
	if !strings.Contains(string(r.body), "entry 7") || !strings.Contains(string(r.body), "$lookup") {
		t.Errorf("the failure does not name the $lookup entry: %s", r.body)
	}
	if n := s.typeHistoryTotal(t, "Patient"); n != patients {
		t.Fatalf("the failed transaction changed Patients: %d versions, were %d", n, patients)
	}

	out := s.do(t, http.MethodPost, "", without("transaction", 7)).txResponse(t, "transaction-response")
	want := []string{"201 Created", "200 OK", "201 Created", "200 OK", "200 OK", "204 No Content", "204 No Content", "200 OK", "304 Not Modified"}
	for i, e := range out.Entry {
		if e.Response.Status != want[i] {
			t.Errorf("entry %d: %s, want %s (%s)", i, e.Response.Status, want[i], e.Response.Outcome)
		}
	}
	if got := out.Entry[3].Response.Location; !strings.HasPrefix(got, "Patient/"+updated+"/_history/2") {
		t.Errorf("the conditional update went to %s, want Patient/%s", got, updated)
	}
	if got := out.Entry[4].Response.Etag; got != `W/"3"` {
		t.Errorf("Patient/123a etag %s, want W/\"3\"", got)
	}
	var search struct {
		Type  string
		Total int
	}
	json.Unmarshal(out.Entry[7].Resource, &search)
	// The read runs after the writes: it sees the Peters they stored.
	if search.Type != "searchset" || search.Total != 5 || !strings.Contains(string(out.Entry[7].Resource), `"id":"123"`) {
		t.Errorf("GET Patient?name=peter: %s", out.Entry[7].Resource)
	}
	s.do(t, http.MethodGet, "/Patient/234", "").wantOutcome(t, http.StatusGone)

	// As a batch, the $lookup entry fails alone (the conditional create
	// now matches, the ifMatch no longer does).
	batch := s.do(t, http.MethodPost, "", without("batch", -1)).txResponse(t, "batch-response")
	if st := batch.Entry[7].Response.Status; !strings.HasPrefix(st, "4") || len(batch.Entry[7].Response.Outcome) == 0 {
		t.Errorf("batch $lookup entry: %s %s", st, batch.Entry[7].Response.Outcome)
	}
	if st := batch.Entry[0].Response.Status; st != "201 Created" {
		t.Errorf("batch entry 0: %s", st)
	}
	if st := batch.Entry[4].Response.Status; st != "412 Precondition Failed" {
		t.Errorf("batch entry 4 (ifMatch W/\"2\" of version 3): %s", st)
	}
}

// txBody is a transaction of n entries: Patients, each followed by an
// Observation referring to it by urn:uuid (as fhirbench's transaction
// workload).
func txBody(tag string, n int) string {
	var es []string
	for i := 0; i < n; i += 2 {
		u := fmt.Sprintf("urn:uuid:%08x-0000-4000-8000-%012x", i, i)
		es = append(es, fmt.Sprintf(`{"fullUrl": %q, "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:bench", "value": "%s-%d"}], "name": [{"family": "Bench", "given": ["T%d"]}], "gender": "female", "birthDate": "1980-01-01"}, "request": {"method": "POST", "url": "Patient"}}`, u, tag, i, i))
		if i+1 < n {
			es = append(es, fmt.Sprintf(`{"resource": {"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}, "valueQuantity": {"value": 72, "unit": "/min"}, "subject": {"reference": %q}}, "request": {"method": "POST", "url": "Observation"}}`, u))
		}
	}
	return `{"resourceType": "Bundle", "type": "transaction", "entry": [` + strings.Join(es, ",") + `]}`
}

// BenchmarkTransaction100 is a 100-entry transaction with every feature
// on (tokens, policy, audit, sealing) on Redis and on bbolt:
// go test ./gateway -run '^$' -bench Transaction100 -cpuprofile cpu.out
func BenchmarkTransaction100(b *testing.B) {
	for _, backend := range []string{"redis", "bolt"} {
		b.Run(backend, func(b *testing.B) {
			var st store.Store
			if backend == "redis" {
				srv := redistest.Start(b)
				rs, err := redisstore.New(b.Context(), redisstore.Config{URL: srv.URL(), Prefix: "bench"})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { rs.Close() })
				st = sealedtest.Wrap(b, rs)
			} else {
				bs, err := boltstore.New(b.Context(), boltstore.Config{Dir: b.TempDir()})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { bs.Close() })
				st = sealedtest.Wrap(b, bs)
			}
			key, err := auth.GenerateDevKey()
			if err != nil {
				b.Fatal(err)
			}
			v, err := auth.NewVerifier(b.Context(), auth.Config{JWKS: key.PublicJWKS(), Issuer: auth.DevIssuer, Audience: auth.DevAudience})
			if err != nil {
				b.Fatal(err)
			}
			eng, err := policy.New(b.Context(), policy.Config{})
			if err != nil {
				b.Fatal(err)
			}
			gw := gateway.New(gateway.Config{Store: st, Auth: v, Policy: eng, BaseURL: "http://x/fhir"})
			b.Cleanup(func() { gw.Close() })
			tok, err := key.Sign(auth.Claims{Subject: "bench", Scope: "system/*.*"}, time.Hour)
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				req := httptest.NewRequest(http.MethodPost, "http://x/fhir", strings.NewReader(txBody(fmt.Sprint(i), 100)))
				req.Header.Set("Content-Type", "application/fhir+json")
				req.Header.Set("Authorization", "Bearer "+tok)
				w := httptest.NewRecorder()
				gw.ServeHTTP(w, req)
				if w.Code != http.StatusOK {
					b.Fatalf("%d %s", w.Code, w.Body)
				}
			}
		})
	}
}

// TestTransactionRepeatedConditionalCreate: two entries creating the
// resource that matches the same criteria create it once, and references
// to either entry name it.
func TestTransactionRepeatedConditionalCreate(t *testing.T) {
	s := newServer(t, gateway.Config{Store: boltStore(t)})
	org := func(u string) string {
		return `{"fullUrl": "` + u + `", "resource": {"resourceType": "Organization", "identifier": [{"system": "urn:org", "value": "h1"}]}, "request": {"method": "POST", "url": "Organization", "ifNoneExist": "identifier=urn:org|h1"}}`
	}
	obs := func(u string) string {
		return `{"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "performer": [{"reference": "` + u + `"}]}, "request": {"method": "POST", "url": "Observation"}}`
	}
	a, b := "urn:uuid:aaaaaaaa-0000-4000-8000-000000000001", "urn:uuid:aaaaaaaa-0000-4000-8000-000000000002"
	body := `{"resourceType": "Bundle", "type": "transaction", "entry": [` + org(a) + `,` + org(b) + `,` + obs(a) + `,` + obs(b) + `]}`
	out := s.do(t, http.MethodPost, "", body).txResponse(t, "transaction-response")
	if out.Entry[0].Response.Status != "201 Created" || out.Entry[1].Response.Status != "200 OK" || out.Entry[0].Response.Location != out.Entry[1].Response.Location {
		t.Fatalf("entries: %+v / %+v", out.Entry[0].Response, out.Entry[1].Response)
	}
	if n := s.typeHistoryTotal(t, "Organization"); n != 1 {
		t.Fatalf("%d Organizations, want 1", n)
	}
	orgRef := strings.Join(strings.Split(out.Entry[0].Response.Location, "/")[:2], "/")
	for _, i := range []int{2, 3} {
		got := s.do(t, http.MethodGet, "/"+out.Entry[i].Response.Location, "").want(t, http.StatusOK)
		if !strings.Contains(string(got.body), `"reference":"`+orgRef+`"`) {
			t.Errorf("entry %d does not name %s: %s", i, orgRef, got.body)
		}
	}
}

// TestTransactionEnforcedReferences: with EnforceReferences, a reference
// to a resource an earlier entry of the transaction creates is held.
func TestTransactionEnforcedReferences(t *testing.T) {
	s := newServer(t, gateway.Config{Store: boltStore(t), EnforceReferences: true})
	u := "urn:uuid:bbbbbbbb-0000-4000-8000-000000000001"
	body := `{"resourceType": "Bundle", "type": "transaction", "entry": [
	 {"fullUrl": "` + u + `", "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
	 {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "` + u + `"}}, "request": {"method": "POST", "url": "Observation"}}]}`
	s.do(t, http.MethodPost, "", body).txResponse(t, "transaction-response")
	dangling := `{"resourceType": "Bundle", "type": "transaction", "entry": [
	 {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/nobody"}}, "request": {"method": "POST", "url": "Observation"}}]}`
	s.do(t, http.MethodPost, "", dangling).wantOutcome(t, http.StatusUnprocessableEntity)
}
