package policy

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/open-policy-agent/opa/v1/ast"
)

func ns(s string) *int64 {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	n := t.UnixNano()
	return &n
}

// readConsent reads a Consent from testdata, decoding numbers as
// json.Number when useNumber is set.
func readConsent(t *testing.T, name string, useNumber bool) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if useNumber {
		dec.UseNumber()
	}
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil {
		t.Fatal(err)
	}
	return doc
}

// TestNormalizeHL7Examples normalizes the HL7 R4 Consent examples.
func TestNormalizeHL7Examples(t *testing.T) {
	org := Cond{Kind: "actor", Values: []string{"Organization/f001"}}
	access := Cond{Kind: "action", Values: []string{"access"}}
	label := Cond{Kind: "unsupported", What: "securityLabel"}
	pkbChild := Rule{Type: "permit", Depth: 1, NamesActor: true, Conds: []Cond{org, access, label, org, access, label}}
	pkb := []Rule{{Type: "permit", Depth: 0, NamesActor: true, Conds: []Cond{org, access, label}}}
	for range 11 { // its 11 nested provisions
		pkb = append(pkb, pkbChild)
	}
	smartPeriod := Cond{Kind: "period", StartNS: ns("2016-06-23T17:02:33+10:00"), EndNS: ns("2016-06-23T17:32:34+10:00")}

	for _, test := range []struct {
		file string
		want Consent
	}{
		{"Consent-consent-example-basic.json", Consent{
			ID: "Consent/consent-example-basic", Patient: "Patient/f001",
			Rules: []Rule{{Type: "permit", Depth: 0, Conds: []Cond{
				// end "2016-01-01" is widened to the whole day
				{Kind: "period", StartNS: ns("1964-01-01T00:00:00Z"), EndNS: ns("2016-01-02T00:00:00Z")},
			}}},
		}},
		{"Consent-consent-example-notOrg.json", Consent{
			ID: "Consent/consent-example-notOrg", Patient: "Patient/f001",
			Rules: []Rule{{Type: "deny", Depth: 0, NamesActor: true, Conds: []Cond{
				org, {Kind: "action", Values: []string{"access", "correct"}},
			}}},
		}},
		{"Consent-consent-example-grantor.json", Consent{
			ID: "Consent/consent-example-grantor", Patient: "Patient/f001",
			Rules: []Rule{{Type: "permit", Depth: 0, NamesActor: true, Conds: []Cond{
				{Kind: "actor", Values: []string{"Organization/f001", "Patient/example"}}, access,
			}}},
		}},
		{"Consent-consent-example-Emergency.json", Consent{
			ID: "Consent/consent-example-Emergency", Patient: "Patient/f001",
			Rules: []Rule{
				{Type: "permit", Depth: 0, NamesActor: true, Conds: []Cond{org, {Kind: "purpose", Values: []string{"ETREAT"}}}},
				{Type: "deny", Depth: 1, NamesActor: true, Conds: []Cond{org, {Kind: "purpose", Values: []string{"ETREAT"}}, org}},
			},
		}},
		{"Consent-consent-example-smartonfhir.json", Consent{
			ID: "Consent/consent-example-smartonfhir", Patient: "Patient/xcda",
			Rules: []Rule{
				{Type: "permit", Depth: 0, Conds: []Cond{smartPeriod}},
				{Type: "permit", Depth: 1, Conds: []Cond{smartPeriod, access, {Kind: "class", Values: []string{"MedicationRequest"}}}},
			},
		}},
		{"Consent-consent-example-pkb.json", Consent{ID: "Consent/consent-example-pkb", Patient: "Patient/example", Rules: pkb}},
	} {
		for _, useNumber := range []bool{false, true} {
			t.Run(test.file, func(t *testing.T) {
				doc := readConsent(t, test.file, useNumber)
				got, applies, err := NormalizeConsent("Consent/"+doc["id"].(string), doc)
				if err != nil || !applies {
					t.Fatalf("NormalizeConsent = %v, %v; want applies", applies, err)
				}
				if diff := cmp.Diff(test.want, got); diff != "" {
					t.Errorf("NormalizeConsent mismatch (-want +got):\n%s", diff)
				}
			})
		}
	}
}

// consentDoc is a minimal active patient-privacy Consent with provision.
func consentDoc(provision map[string]any) map[string]any {
	doc := map[string]any{
		"resourceType": "Consent",
		"id":           "c1",
		"status":       "active",
		"scope": map[string]any{"coding": []any{map[string]any{
			"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy",
		}}},
		"patient": map[string]any{"reference": "Patient/a"},
	}
	if provision != nil {
		doc["provision"] = provision
	}
	return doc
}

func ref(r string) map[string]any { return map[string]any{"reference": r} }

func actorOf(r string) map[string]any {
	return map[string]any{"role": map[string]any{"text": "x"}, "reference": ref(r)}
}

func TestNormalizeNested(t *testing.T) {
	doc := consentDoc(map[string]any{
		"actor": []any{actorOf("https://ehr.example/fhir/Organization/o1/_history/3")},
		"provision": []any{
			map[string]any{ // no type: the parent's (permit), no actor: inherits names_actor
				"class": []any{map[string]any{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}},
				"provision": []any{
					map[string]any{
						"type": "deny",
						"data": []any{map[string]any{"meaning": "instance", "reference": ref("Observation/o9")}},
					},
				},
			},
			map[string]any{
				"type":  "deny",
				"actor": []any{actorOf("Practitioner/p9")},
				"code":  []any{map[string]any{"text": "HIV"}},
			},
		},
	})
	got, applies, err := NormalizeConsent("Consent/c1", doc)
	if err != nil || !applies {
		t.Fatalf("NormalizeConsent = %v, %v", applies, err)
	}
	o1 := Cond{Kind: "actor", Values: []string{"Organization/o1"}}
	obs := Cond{Kind: "class", Values: []string{"Observation"}}
	want := Consent{ID: "Consent/c1", Patient: "Patient/a", Rules: []Rule{
		{Type: "permit", Depth: 0, NamesActor: true, Conds: []Cond{o1}},
		{Type: "permit", Depth: 1, NamesActor: true, Conds: []Cond{o1, obs}},
		{Type: "deny", Depth: 2, NamesActor: true, Conds: []Cond{o1, obs, {Kind: "data", Values: []string{"Observation/o9"}}}},
		{Type: "deny", Depth: 1, NamesActor: true, Conds: []Cond{o1, {Kind: "actor", Values: []string{"Practitioner/p9"}}, {Kind: "unsupported", What: "code"}}},
	}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("NormalizeConsent mismatch (-want +got):\n%s", diff)
	}
}

func TestNormalizeUnreadable(t *testing.T) {
	for _, test := range []struct {
		name      string
		provision map[string]any
		want      []Cond
	}{
		{"class of another system", map[string]any{
			"class": []any{map[string]any{"system": "urn:oid:1.2.3", "code": "x"}},
		}, []Cond{{Kind: "unsupported", What: "class"}}},
		{"mixed classes on a permit keep the readable ones", map[string]any{
			"class": []any{
				map[string]any{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"},
				map[string]any{"system": "urn:oid:1.2.3", "code": "x"},
			},
		}, []Cond{{Kind: "class", Values: []string{"Observation"}}}},
		{"mixed classes on a deny are unsupported", map[string]any{
			"type": "deny",
			"class": []any{
				map[string]any{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"},
				map[string]any{"system": "urn:oid:1.2.3", "code": "x"},
			},
		}, []Cond{{Kind: "unsupported", What: "class"}}},
		{"contained actor on a deny", map[string]any{
			"type":  "deny",
			"actor": []any{actorOf("#p1"), actorOf("Practitioner/p2")},
		}, []Cond{{Kind: "unsupported", What: "actor"}}},
		{"contained actor on a permit", map[string]any{
			"actor": []any{actorOf("#p1"), actorOf("Practitioner/p2")},
		}, []Cond{{Kind: "actor", Values: []string{"Practitioner/p2"}}}},
		{"action of another system", map[string]any{
			"action": []any{map[string]any{"coding": []any{map[string]any{"system": "urn:x", "code": "access"}}}},
		}, []Cond{{Kind: "unsupported", What: "action"}}},
		{"security label, data period and code", map[string]any{
			"securityLabel": []any{map[string]any{"code": "N"}},
			"dataPeriod":    map[string]any{"start": "2020"},
			"code":          []any{map[string]any{"text": "x"}},
		}, []Cond{{Kind: "unsupported", What: "securityLabel"}, {Kind: "unsupported", What: "dataPeriod"}, {Kind: "unsupported", What: "code"}}},
		{"bad period", map[string]any{"period": map[string]any{"start": "last week"}}, []Cond{{Kind: "unsupported", What: "period"}}},
		{"empty lists are no condition", map[string]any{"actor": []any{}, "securityLabel": []any{}}, []Cond{}},
	} {
		t.Run(test.name, func(t *testing.T) {
			got, applies, err := NormalizeConsent("c1", consentDoc(test.provision))
			if err != nil || !applies {
				t.Fatalf("NormalizeConsent = %v, %v", applies, err)
			}
			if diff := cmp.Diff(test.want, got.Rules[0].Conds); diff != "" {
				t.Errorf("conds mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNormalizePeriods(t *testing.T) {
	for _, test := range []struct {
		start, end string
		want       Cond
	}{
		{"2020", "2020", Cond{Kind: "period", StartNS: ns("2020-01-01T00:00:00Z"), EndNS: ns("2021-01-01T00:00:00Z")}},
		{"2020-02", "2020-02", Cond{Kind: "period", StartNS: ns("2020-02-01T00:00:00Z"), EndNS: ns("2020-03-01T00:00:00Z")}},
		{"2020-12-31", "2020-12-31", Cond{Kind: "period", StartNS: ns("2020-12-31T00:00:00Z"), EndNS: ns("2021-01-01T00:00:00Z")}},
		{"2020-05-10T08:30:00+02:00", "2020-05-10T09:00:00Z", Cond{Kind: "period", StartNS: ns("2020-05-10T06:30:00Z"), EndNS: ns("2020-05-10T09:00:01Z")}},
		{"2020-05-10T08:30:00.5Z", "2020-05-10T08:30:00.25Z", Cond{Kind: "period", StartNS: ns("2020-05-10T08:30:00.5Z"), EndNS: ns("2020-05-10T08:30:00.26Z")}},
		{"2020-05-10T08:30:00", "", Cond{Kind: "period", StartNS: ns("2020-05-10T08:30:00Z")}}, // no zone: UTC
		{"", "2020-05-10", Cond{Kind: "period", EndNS: ns("2020-05-11T00:00:00Z")}},
		{"1200", "9999-12-31", Cond{Kind: "period", StartNS: ptr(int64(-1 << 63)), EndNS: ptr(int64(1<<63 - 1))}}, // beyond int64 ns: no bound
		{"2021-02-30", "", Cond{Kind: "unsupported", What: "period"}},
		{"2021-13", "", Cond{Kind: "unsupported", What: "period"}},
		{"", "2021-01-01T25:00:00Z", Cond{Kind: "unsupported", What: "period"}},
	} {
		period := map[string]any{}
		if test.start != "" {
			period["start"] = test.start
		}
		if test.end != "" {
			period["end"] = test.end
		}
		got, _, err := NormalizeConsent("c1", consentDoc(map[string]any{"period": period}))
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]Cond{test.want}, got.Rules[0].Conds); diff != "" {
			t.Errorf("period %q..%q mismatch (-want +got):\n%s", test.start, test.end, diff)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestNormalizeApplies(t *testing.T) {
	with := func(key string, v any) map[string]any {
		doc := consentDoc(map[string]any{"actor": []any{actorOf("Practitioner/p1")}})
		if v == nil {
			delete(doc, key)
		} else {
			doc[key] = v
		}
		return doc
	}
	for _, test := range []struct {
		name    string
		doc     map[string]any
		applies bool
		patient string
	}{
		{"active", with("status", "active"), true, "Patient/a"},
		{"draft", with("status", "draft"), false, ""},
		{"inactive", with("status", "inactive"), false, ""},
		{"rejected", with("status", "rejected"), false, ""},
		{"no status", with("status", nil), false, ""},
		{"treatment scope", with("scope", map[string]any{"coding": []any{map[string]any{
			"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "treatment"}}}), true, "Patient/a"},
		{"research scope", with("scope", map[string]any{"coding": []any{map[string]any{
			"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}}}), false, ""},
		{"adr scope", with("scope", map[string]any{"coding": []any{map[string]any{
			"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "adr"}}}), false, ""},
		{"no scope", with("scope", nil), false, ""},
		{"absolute patient", with("patient", ref("https://ehr.example/fhir/Patient/a")), true, "Patient/a"},
		{"no patient", with("patient", nil), false, ""},
		{"patient is a group", with("patient", ref("Group/g1")), false, ""},
		{"contained patient", with("patient", ref("#p")), false, ""},
	} {
		t.Run(test.name, func(t *testing.T) {
			c, applies, err := NormalizeConsent("Consent/c1", test.doc)
			if err != nil {
				t.Fatal(err)
			}
			if applies != test.applies || (applies && c.Patient != test.patient) {
				t.Errorf("NormalizeConsent = %v (patient %q), want %v (%q)", applies, c.Patient, test.applies, test.patient)
			}
			if c.ID != "Consent/c1" {
				t.Errorf("ID = %q", c.ID)
			}
		})
	}
}

func TestNormalizeIDsAndErrors(t *testing.T) {
	for id, want := range map[string]string{"Consent/c1": "Consent/c1", "c1": "Consent/c1", "": "Consent/c1"} {
		c, _, err := NormalizeConsent(id, consentDoc(nil))
		if err != nil || c.ID != want {
			t.Errorf("NormalizeConsent(%q) = %q, %v; want %q", id, c.ID, err, want)
		}
	}
	c, applies, err := NormalizeConsent("c1", consentDoc(nil))
	if err != nil || !applies || c.Rules == nil || len(c.Rules) != 0 {
		t.Errorf("consent without provision = %+v, %v, %v; want applies with no rules", c, applies, err)
	}
	for _, doc := range []map[string]any{nil, {}, {"resourceType": "Patient", "id": "c1"}} {
		if _, _, err := NormalizeConsent("c1", doc); err == nil {
			t.Errorf("NormalizeConsent(%v): no error", doc)
		}
	}
}

// TestConsentJSON checks the JSON form of a normalized consent: the
// contract's field names, no null lists.
func TestConsentJSON(t *testing.T) {
	c, _, _ := NormalizeConsent("c1", consentDoc(map[string]any{"period": map[string]any{"end": "2020"}}))
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"id":"Consent/c1","patient":"Patient/a","rules":[{"type":"permit","depth":0,"names_actor":false,"conds":[{"kind":"period","end_ns":1609459200000000000}]}]}`
	if string(b) != want {
		t.Errorf("JSON =\n%s\nwant\n%s", b, want)
	}
}

// TestConsentValue: the OPA value the store keeps is the consent's JSON.
func TestConsentValue(t *testing.T) {
	for _, name := range []string{"Consent-consent-example-pkb.json", "Consent-consent-example-smartonfhir.json", "Consent-consent-example-Emergency.json"} {
		doc := readConsent(t, name, false)
		c, _, err := NormalizeConsent("", doc)
		if err != nil {
			t.Fatal(err)
		}
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		want, err := ast.ValueFromReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		if got := c.value(); got.Compare(want) != 0 {
			t.Errorf("%s: value() =\n%v\nwant\n%v", name, got, want)
		}
	}
}
