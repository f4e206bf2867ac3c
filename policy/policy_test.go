package policy

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/open-policy-agent/opa/v1/ast"
)

func TestParseScopes(t *testing.T) {
	for _, test := range []struct {
		name string
		in   string
		want []Scope
	}{
		{"v1 read", "user/Observation.read", []Scope{{Raw: "user/Observation.read", Context: "user", Type: "Observation", Perms: "rs"}}},
		{"v1 write", "patient/*.write", []Scope{{Raw: "patient/*.write", Context: "patient", Type: "*", Perms: "cud"}}},
		{"v1 all", "system/*.*", []Scope{{Raw: "system/*.*", Context: "system", Type: "*", Perms: "cruds"}}},
		{"v2 rs", "patient/Observation.rs", []Scope{{Raw: "patient/Observation.rs", Context: "patient", Type: "Observation", Perms: "rs", V2: true}}},
		{"v2 cruds", "system/*.cruds", []Scope{{Raw: "system/*.cruds", Context: "system", Type: "*", Perms: "cruds", V2: true}}},
		{"v2 single", "user/Patient.d", []Scope{{Raw: "user/Patient.d", Context: "user", Type: "Patient", Perms: "d", V2: true}}},
		{"v2 out of order", "user/Observation.sr", nil},
		{"v2 repeated", "user/Observation.rrs", nil},
		{"v2 unknown letter", "user/Observation.rx", nil},
		{"granular dropped", "patient/Observation.rs?category=laboratory", nil},
		{"bad context", "admin/Observation.rs", nil},
		{"bad type", "user/observation.rs", nil},
		{"no perms", "user/Observation.", nil},
		{"ignored", "openid fhirUser launch launch/patient offline_access online_access", nil},
		{"empty", "", nil},
		{"several", " openid  user/Observation.rs\tpatient/*.read\nsystem/Patient.c ", []Scope{
			{Raw: "user/Observation.rs", Context: "user", Type: "Observation", Perms: "rs", V2: true},
			{Raw: "patient/*.read", Context: "patient", Type: "*", Perms: "rs"},
			{Raw: "system/Patient.c", Context: "system", Type: "Patient", Perms: "c", V2: true},
		}},
	} {
		t.Run(test.name, func(t *testing.T) {
			got := ParseScopes(test.in)
			if diff := cmp.Diff(test.want, got); diff != "" {
				t.Errorf("ParseScopes(%q) mismatch (-want +got):\n%s", test.in, diff)
			}
		})
	}
}

func TestSubjectKind(t *testing.T) {
	for in, want := range map[string]string{
		"":                                   "system",
		"Patient/a":                          "patient",
		"https://ehr.example/fhir/Patient/a": "patient",
		"Practitioner/p1":                    "practitioner",
		"PractitionerRole/r1":                "practitioner",
		"Practitioner/p1/_history/2":         "practitioner",
		"RelatedPerson/rp1":                  "other",
		"Person/x":                           "other",
		"urn:uuid:1234":                      "other",
		"Patient":                            "other",
		"#contained":                         "other",
	} {
		if got := SubjectKind(in); got != want {
			t.Errorf("SubjectKind(%q) = %q, want %q", in, got, want)
		}
	}
}

func testInput() Input {
	return Input{
		Subject: Subject{
			Sub: "u1", ClientID: "app", Kind: "practitioner", FHIRUser: "Practitioner/p1", Patient: "Patient/a",
			Scopes: ParseScopes("user/*.rs patient/Observation.read"), PurposeOfUse: "TREAT",
			Organizations: []string{"Organization/o1"}, Roles: []string{"PractitionerRole/r1"},
		},
		Action:    "read",
		Operation: "",
		Resource:  Resource{Type: "Observation", ID: "o1", Compartments: []string{"Patient/a"}, CompartmentType: true},
		Time:      time.Date(2026, 11, 21, 10, 0, 0, 123, time.UTC),
	}
}

func TestInputJSON(t *testing.T) {
	in := testInput()
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if got, want := doc["time"], "2026-11-21T10:00:00.000000123Z"; got != want {
		t.Errorf("time = %v, want %v", got, want)
	}
	if got, want := doc["time_ns"], float64(in.Time.UnixNano()); got != want {
		t.Errorf("time_ns = %v, want %v", got, want)
	}
	var back Input
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(in, back); diff != "" {
		t.Errorf("round trip mismatch (-want +got):\n%s", diff)
	}

	// Absent lists are empty arrays for the policy.
	b, _ = json.Marshal(Input{Subject: Subject{Kind: "system"}, Action: "read", Resource: Resource{Type: "Patient"}, Time: in.Time})
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if got := doc["resource"].(map[string]any)["compartments"]; got == nil {
		t.Errorf("compartments = null, want []")
	}

	// time_ns alone sets the time.
	var fromNS Input
	if err := json.Unmarshal([]byte(`{"action":"read","time_ns":1795255200000000000}`), &fromNS); err != nil {
		t.Fatal(err)
	}
	if want := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC); !fromNS.Time.Equal(want) {
		t.Errorf("time from time_ns = %v, want %v", fromNS.Time, want)
	}
	if err := json.Unmarshal([]byte(`{"time":"yesterday"}`), &fromNS); err == nil {
		t.Errorf("bad time: no error")
	}
}

// TestInputValue checks that the value Decide builds is the JSON document
// the policy is documented to see, with and without the subject cache.
func TestInputValue(t *testing.T) {
	for _, in := range []Input{testInput(), {Subject: Subject{Kind: "system"}, Action: "search-type", Resource: Resource{Type: "Patient"}, Time: time.Unix(0, 5)}} {
		b, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		want, err := ast.ValueFromReader(bytesReader(b))
		if err != nil {
			t.Fatal(err)
		}
		cache := newSubjectCache()
		for range 2 { // the second time from the cache
			if got := in.value(cache); got.Compare(want) != 0 {
				t.Errorf("value() =\n%v\nwant\n%v", got, want)
			}
		}
		if got := in.value(nil); got.Compare(want) != 0 {
			t.Errorf("value(nil) =\n%v\nwant\n%v", got, want)
		}
	}
}

func TestSubjectCacheTellsSubjectsApart(t *testing.T) {
	cache := newSubjectCache()
	a := testInput().Subject
	b := a
	b.Organizations = []string{"Organization/o2"}
	ta, tb := cache.term(&a), cache.term(&b)
	if ta.Equal(tb) {
		t.Fatalf("subjects with different organizations share a value")
	}
	// The cache keeps its own copy of a subject: changing the caller's
	// slices does not change what it answers.
	orig := testInput().Subject
	a.Organizations[0] = "Organization/o3"
	if got := cache.term(&orig); !got.Equal(ta) {
		t.Errorf("cached value of the original subject changed")
	}
	if got := cache.term(&a); got.Equal(ta) {
		t.Errorf("changed subject got the cached value of the original")
	}
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
