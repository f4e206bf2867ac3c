package fhir_test

import (
	"encoding/json"
	"testing"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/google/go-cmp/cmp"
)

func TestCompartments(t *testing.T) {
	ps := fhir.DefaultParams()
	for _, tc := range []struct {
		typ, id, doc string
		want         []string
		owner        string
		isType       bool
	}{
		{"Patient", "p1", `{}`, []string{"Patient/p1"}, "Patient/p1", true},
		{"Observation", "o1", `{"subject":{"reference":"Patient/a"}}`, []string{"Patient/a"}, "Patient/a", true},
		{"Observation", "o2", `{"subject":{"reference":"Group/g"}}`, nil, "", true},
		{"Appointment", "ap", `{"participant":[{"actor":{"reference":"Practitioner/d"}},{"actor":{"reference":"Patient/b"}},{"actor":{"reference":"Patient/a"}},{"actor":{"reference":"Patient/b"}}]}`,
			[]string{"Patient/b", "Patient/a"}, "Patient/b", true},
		{"Consent", "c", `{"patient":{"reference":"http://x/fhir/Patient/a"}}`, []string{"Patient/a"}, "Patient/a", true},
		{"AuditEvent", "e", `{"agent":[{"who":{"identifier":{"value":"Patient/z"}}}],"entity":[{"what":{"reference":"Patient/a"}}]}`, []string{"Patient/a"}, "Patient/a", true},
		{"Communication", "m1", `{"sender":{"reference":"Patient/s"},"recipient":[{"reference":"Practitioner/d"}]}`, []string{"Patient/s"}, "Patient/s", true},
		{"Communication", "m2", `{"recipient":[{"reference":"Patient/r"}],"sender":{"reference":"Patient/s"}}`, []string{"Patient/s", "Patient/r"}, "Patient/s", true},
		{"Communication", "m3", `{"recipient":[{"reference":"Patient/r"}],"sender":{"reference":"Patient/s"},"subject":{"reference":"Patient/r"}}`,
			[]string{"Patient/r", "Patient/s"}, "Patient/r", true},
		{"Communication", "m4", `{"subject":{"reference":"Group/g"},"sender":{"reference":"Practitioner/d"},"recipient":[{"reference":"Device/x"}]}`, nil, "", true},
		{"CommunicationRequest", "q1", `{"requester":{"reference":"Patient/q"},"recipient":[{"reference":"Practitioner/d"}]}`, []string{"Patient/q"}, "Patient/q", true},
		{"CommunicationRequest", "q2", `{"requester":{"reference":"Patient/q"},"sender":{"reference":"Patient/s"}}`, []string{"Patient/s", "Patient/q"}, "Patient/s", true},
		{"Subscription", "s", `{"status":"requested"}`, nil, "", false},
		{"Practitioner", "d", `{}`, nil, "", false},
	} {
		var doc map[string]any
		if err := json.Unmarshal([]byte(tc.doc), &doc); err != nil {
			t.Fatal(err)
		}
		got := ps.Compartments(tc.typ, tc.id, doc, "http://x/fhir")
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("Compartments(%s/%s) (-want +got):\n%s", tc.typ, tc.id, diff)
		}
		if o := ps.Owner(tc.typ, tc.id, doc, "http://x/fhir"); o != tc.owner {
			t.Errorf("Owner(%s/%s) = %q, want %q", tc.typ, tc.id, o, tc.owner)
		}
		if ct := ps.CompartmentType(tc.typ); ct != tc.isType {
			t.Errorf("CompartmentType(%s) = %v", tc.typ, ct)
		}
	}
}
