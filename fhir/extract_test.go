package fhir_test

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestNormalizeString(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"Müller", "muller"},
		{"MÜLLER", "muller"},
		{"Zürich", "zurich"},
		{"Ærøskøbing", "ærøskøbing"}, // ø and æ are letters, not marks
		{"José  María\tPérez ", "jose maria perez"},
		{"Ñandú", "nandu"},
		{"", ""},
	}
	for _, test := range tests {
		t.Run(test.in, func(t *testing.T) {
			if got := fhir.NormalizeString(test.in); got != test.want {
				t.Errorf("NormalizeString(%q) = %q, want %q", test.in, got, test.want)
			}
		})
	}
}

func TestParseDate(t *testing.T) {
	utc := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return v.UTC()
	}
	tests := []struct {
		in     string
		lo, hi string
		ok     bool
	}{
		{"2013", "2013-01-01T00:00:00Z", "2014-01-01T00:00:00Z", true},
		{"2013-01", "2013-01-01T00:00:00Z", "2013-02-01T00:00:00Z", true},
		{"2013-12", "2013-12-01T00:00:00Z", "2014-01-01T00:00:00Z", true},
		{"2013-01-14", "2013-01-14T00:00:00Z", "2013-01-15T00:00:00Z", true},
		{"2013-01-14T10:00:00+01:00", "2013-01-14T09:00:00Z", "2013-01-14T09:00:01Z", true},
		{"2013-01-14T10:00:00Z", "2013-01-14T10:00:00Z", "2013-01-14T10:00:01Z", true},
		{"2013-01-14T10:00:00.250Z", "2013-01-14T10:00:00.25Z", "2013-01-14T10:00:00.251Z", true},
		{"2013-01-14T10:00:00.5-05:00", "2013-01-14T15:00:00.5Z", "2013-01-14T15:00:00.6Z", true},
		{"2013-01-14T10:00Z", "2013-01-14T10:00:00Z", "2013-01-14T10:01:00Z", true},
		{"notadate", "", "", false},
		{"2013-13", "", "", false},
		{"2013-02-30", "", "", false},
		{"", "", "", false},
	}
	for _, test := range tests {
		t.Run(test.in, func(t *testing.T) {
			lo, hi, ok := fhir.ParseDate(test.in)
			if ok != test.ok {
				t.Fatalf("ParseDate(%q) ok = %v, want %v", test.in, ok, test.ok)
			}
			if !ok {
				return
			}
			if want := utc(test.lo); !lo.Equal(want) {
				t.Errorf("lo = %v, want %v", lo, want)
			}
			if want := utc(test.hi); !hi.Equal(want) {
				t.Errorf("hi = %v, want %v", hi, want)
			}
		})
	}
}

func TestParseReference(t *testing.T) {
	tests := []struct {
		ref  string
		want fhir.Value
	}{
		{"Patient/123", fhir.Value{RefType: "Patient", RefID: "123"}},
		{"Patient/123/_history/4", fhir.Value{RefType: "Patient", RefID: "123"}},
		{testBase + "/Patient/123", fhir.Value{RefType: "Patient", RefID: "123"}},
		{testBase + "/Patient/123/_history/4", fhir.Value{RefType: "Patient", RefID: "123"}},
		{"http://other.example.com/fhir/Patient/123", fhir.Value{RefURL: "http://other.example.com/fhir/Patient/123"}},
		{testBase + "x/Patient/123", fhir.Value{RefURL: testBase + "x/Patient/123"}},
		{"urn:uuid:04121321-4af5-424c-a0e1-ed3aab1c349d", fhir.Value{RefURL: "urn:uuid:04121321-4af5-424c-a0e1-ed3aab1c349d"}},
		{"Foo/123", fhir.Value{RefURL: "Foo/123"}},
	}
	for _, test := range tests {
		t.Run(test.ref, func(t *testing.T) {
			if diff := cmp.Diff(test.want, fhir.ParseReference(test.ref, testBase)); diff != "" {
				t.Errorf("ParseReference(%q) (-want +got):\n%s", test.ref, diff)
			}
		})
	}
}

func TestExtract(t *testing.T) {
	obs := `{
	  "resourceType": "Observation", "id": "o1", "status": "final",
	  "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body Weight"}], "text": "Body weight"},
	  "subject": {"reference": "Group/1"},
	  "performer": [{"reference": "#contained"}, {"display": "no reference"}, {"reference": "Practitioner/pr1"}],
	  "effectivePeriod": {"start": "2013-01-10"},
	  "valueQuantity": {"value": 5.40, "unit": "milligram", "system": "http://unitsofmeasure.org", "code": "mg"},
	  "component": [{"code": {"text": "c"}, "valueString": "n/a"}, {"code": {"text": "d"}, "valueQuantity": {"value": 7}}]
	}`
	tests := []struct {
		name  string
		typ   string
		doc   string
		param string
		want  []fhir.Value
	}{
		{"CodeableConcept", "Observation", obs, "code", []fhir.Value{
			{System: "http://loinc.org", Code: "29463-7", HasSystem: true, Text: "Body Weight"},
			{Text: "Body weight"},
		}},
		{"Identifier with use keeps its system", "Patient", patientDoc, "identifier", []fhir.Value{
			{System: "http://hospital.example.org/mrn", Code: "MRN-123", HasSystem: true, Text: "Medical record number"},
			{Code: "NOSYS-9"},
			{System: "http://example.org/ids", Code: "A,B", HasSystem: true},
		}},
		{"ContactPoint has no system", "Patient", patientDoc, "telecom", []fhir.Value{{Code: "044-555-0100"}, {Code: "anna@example.org"}}},
		{"ContactPoint filtered", "Patient", patientDoc, "email", []fhir.Value{{Code: "anna@example.org"}}},
		{"code with implicit system", "Patient", patientDoc, "gender", []fhir.Value{{System: "http://hl7.org/fhir/administrative-gender", Code: "female", HasSystem: true}}},
		{"boolean", "Patient", patientDoc, "active", []fhir.Value{{Code: "true"}}},
		{"reference restricted to Patient", "Observation", obs, "patient", nil},
		{"reference", "Observation", obs, "subject", []fhir.Value{{RefType: "Group", RefID: "1"}}},
		{"contained and display-only references skipped", "Observation", obs, "performer", []fhir.Value{{RefType: "Practitioner", RefID: "pr1"}}},
		{"open Period", "Observation", obs, "date", []fhir.Value{{
			Lo: time.Date(2013, 1, 10, 0, 0, 0, 0, time.UTC), Hi: time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		}}},
		{"Quantity", "Observation", obs, "value-quantity", []fhir.Value{{Num: 5.4, HasNum: true, Unit: "milligram", UnitSys: "http://unitsofmeasure.org", UCode: "mg"}}},
		{"choice type only of the parameter's type", "Observation", obs, "component-value-quantity", []fhir.Value{{Num: 7, HasNum: true}}},
		{"string choice", "Observation", obs, "value-string", nil},
		{"not a choice element", "AuditEvent", `{"resourceType": "AuditEvent", "id": "a1", "outcomeDesc": "failed badly"}`, "outcome", nil},
		{"instant", "Slot", slotDoc, "start", []fhir.Value{{
			Lo: time.Date(2013, 12, 25, 9, 15, 0, 0, time.UTC), Hi: time.Date(2013, 12, 25, 9, 15, 1, 0, time.UTC),
		}}},
		{"Period element", "Schedule", scheduleDoc, "date", []fhir.Value{{
			Lo: time.Date(2013, 12, 25, 9, 15, 0, 0, time.UTC), Hi: time.Date(2013, 12, 25, 9, 30, 1, 0, time.UTC),
		}}},
		{"nested code with implicit system", "Subscription", subscriptionDoc, "type", []fhir.Value{
			{System: "http://hl7.org/fhir/subscription-channel-type", Code: "rest-hook", HasSystem: true},
		}},
		{"nested code without a system", "Subscription", subscriptionDoc, "payload", []fhir.Value{{Code: "application/fhir+json"}}},
		{"plain string", "Subscription", subscriptionDoc, "criteria", []fhir.Value{
			{Str: "Observation?code=http://loinc.org|1975-2", Norm: "observation?code=http://loinc.org|1975-2"},
		}},
		{"url", "Subscription", subscriptionDoc, "url", []fhir.Value{{Str: "https://biliwatch.com/customers/mount-auburn-miu/on-result"}}},
		{"canonical reference", "Communication", `{"resourceType": "Communication", "instantiatesCanonical": ["http://example.org/PlanDefinition/p"]}`,
			"instantiates-canonical", []fhir.Value{{RefURL: "http://example.org/PlanDefinition/p"}}},
		{"display-only reference", "Communication", communicationDoc, "part-of", nil},
		{"HumanName parts", "Patient", patientDoc, "name", []fhir.Value{
			{Str: "Müller", Norm: "muller"}, {Str: "Anna", Norm: "anna"}, {Str: "Maria", Norm: "maria"}, {Str: "Dr.", Norm: "dr."},
			{Str: "Johnny Mueller", Norm: "johnny mueller"},
		}},
		{"Address parts", "Patient", patientDoc, "address", []fhir.Value{
			{Str: "Bahnhofstrasse 1", Norm: "bahnhofstrasse 1"}, {Str: "Zürich", Norm: "zurich"}, {Str: "ZH", Norm: "zh"},
			{Str: "8001", Norm: "8001"}, {Str: "CH", Norm: "ch"},
		}},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			sp := testParams[test.typ][test.param]
			if sp == nil {
				t.Fatalf("no parameter %s.%s", test.typ, test.param)
			}
			got := fhir.Extract(decode(t, test.doc), sp, testBase)
			if diff := cmp.Diff(test.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Extract %s (-want +got):\n%s", test.param, diff)
			}
		})
	}
}

func TestIndexTerms(t *testing.T) {
	doc := decode(t, `{
	  "resourceType": "Observation", "id": "o1", "status": "final",
	  "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
	  "subject": {"reference": "`+testBase+`/Patient/123"},
	  "effectiveDateTime": "2013-01-14T10:00:00+01:00",
	  "valueQuantity": {"value": 5.4, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}
	}`)
	keep := map[string]bool{"code": true, "subject": true, "patient": true, "date": true, "value-quantity": true, "_id": true, "status": true}
	var got []fhir.Term
	for _, term := range fhir.IndexTerms(doc, testParams["Observation"], testBase) {
		if keep[term.Param] {
			got = append(got, term)
		}
	}
	sort.Slice(got, func(i, j int) bool {
		if got[i].Param != got[j].Param {
			return got[i].Param < got[j].Param
		}
		return got[i].Value < got[j].Value
	})
	want := []fhir.Term{
		{Param: "_id", Value: "c:o1"}, // not n:o1: no _id query looks it up
		{Param: "code", Value: "c:29463-7"},
		{Param: "code", Value: "s:http://loinc.org"},
		{Param: "code", Value: "sc:http://loinc.org|29463-7"},
		{Param: "date", Value: "d:2013-01-14"},
		{Param: "date", Value: "m:2013-01"},
		{Param: "date", Value: "y:2013"},
		{Param: "patient", Value: "i:123"},
		{Param: "patient", Value: "r:Patient/123"},
		{Param: "status", Value: "c:final"}, // not s:: every status has that system
		{Param: "status", Value: "sc:http://hl7.org/fhir/observation-status|final"},
		{Param: "subject", Value: "i:123"},
		{Param: "subject", Value: "r:Patient/123"},
		{Param: "value-quantity", Value: "qc:mg"},
		{Param: "value-quantity", Value: "qsc:http://unitsofmeasure.org|mg"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("IndexTerms (-want +got):\n%s", diff)
	}
}

// TestAuditEventTerms: AuditEvents, written on every access, get few
// index terms: no system-only terms, and an address by its 8-rune prefix.
func TestAuditEventTerms(t *testing.T) {
	doc := decode(t, `{"resourceType": "AuditEvent", "id": "a1",
	  "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
	  "action": "R", "outcome": "0", "recorded": "2026-11-22T01:02:03.5Z",
	  "agent": [{"requestor": true, "network": {"address": "192.0.2.17", "type": "2"}}]}`)
	var got []string
	for _, term := range fhir.IndexTerms(doc, fhir.DefaultParams()["AuditEvent"], testBase) {
		got = append(got, term.Param+"="+term.Value)
	}
	sort.Strings(got)
	want := []string{
		"_id=c:a1",
		"action=c:R", "action=sc:http://hl7.org/fhir/audit-event-action|R",
		"address=p:192.0.2.",
		"date=d:2026-11-22", "date=m:2026-11", "date=y:2026",
		"outcome=c:0", "outcome=sc:http://hl7.org/fhir/audit-event-outcome|0",
		"type=c:rest", "type=sc:http://terminology.hl7.org/CodeSystem/audit-event-type|rest",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("AuditEvent terms (-want +got):\n%s", diff)
	}
}

func TestDeceasedDateTimeIsTrue(t *testing.T) {
	doc, _ := fhir.DecodeStored([]byte(`{"resourceType":"Patient","deceasedDateTime":"2020-01-01"}`))
	sp := fhir.DefaultParams()["Patient"]["deceased"]
	got := fhir.Extract(doc, sp, "")
	if len(got) != 1 || got[0].Code != "true" {
		t.Errorf("Extract(deceased) = %+v, want one value true", got)
	}
}

func TestNormalizeStringASCII(t *testing.T) {
	// The ASCII fast path must agree with the general rule.
	ref := func(s string) string { return strings.Join(strings.Fields(strings.ToLower(s)), " ") }
	for _, s := range []string{"", " ", "a", "A", "abc", "already normal", " lead", "trail ", "two  spaces", "Tab\there",
		"\v\f\r\n x \x1c y", "MiXeD CaSe 123 !@#", "a\x00b", "\x7f", "  ", "x\ty", "O'Brien-Smith"} {
		if got, want := fhir.NormalizeString(s), ref(s); got != want {
			t.Errorf("NormalizeString(%q) = %q, want %q", s, got, want)
		}
	}
}

func TestNormalizeStringConcurrent(t *testing.T) {
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 200; j++ {
				if got := fhir.NormalizeString("  Müller  Çelik "); got != "muller celik" {
					t.Errorf("NormalizeString = %q", got)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestStringPrefixTerms(t *testing.T) {
	doc := decode(t, `{"resourceType": "Patient", "id": "p1",
	  "name": [{"family": "Ó Briain", "given": ["Maximiliano"]}]}`)
	var got []string
	for _, term := range fhir.IndexTerms(doc, testParams["Patient"], testBase) {
		if term.Param == "family" || term.Param == "given" {
			got = append(got, term.Param+"="+term.Value)
		}
	}
	sort.Strings(got)
	want := []string{
		// "o briain" is 8 runes: its prefixes of 2, 3, 4, 5 and 8.
		"family=p:o ", "family=p:o b", "family=p:o br", "family=p:o bri", "family=p:o briain",
		// "maximiliano" is 11: no longer prefix than 8.
		"given=p:ma", "given=p:max", "given=p:maxi", "given=p:maxim", "given=p:maximili",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("string prefix terms (-want +got):\n%s", diff)
	}
}

func TestOwner(t *testing.T) {
	tests := []struct {
		name, typ, id, doc, want string
	}{
		{"patient is its own", "Patient", "p1", `{"resourceType": "Patient", "id": "p1"}`, "Patient/p1"},
		{"observation subject", "Observation", "o1", `{"resourceType": "Observation", "subject": {"reference": "Patient/p2"}}`, "Patient/p2"},
		{"absolute local reference", "Observation", "o1", `{"resourceType": "Observation", "subject": {"reference": "` + testBase + `/Patient/p3"}}`, "Patient/p3"},
		{"group subject is tenant", "Observation", "o1", `{"resourceType": "Observation", "subject": {"reference": "Group/g1"}}`, ""},
		{"first of two patients", "Appointment", "a1", `{"resourceType": "Appointment", "participant": [
		  {"actor": {"reference": "Practitioner/x"}}, {"actor": {"reference": "Patient/p4"}}, {"actor": {"reference": "Patient/p5"}}]}`, "Patient/p4"},
		{"subject-only type", "AdverseEvent", "e1", `{"resourceType": "AdverseEvent", "subject": {"reference": "Patient/p6"}}`, "Patient/p6"},
		{"practitioner is tenant", "Practitioner", "d1", `{"resourceType": "Practitioner"}`, ""},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			if got := testParams.Owner(test.typ, test.id, decode(t, test.doc), testBase); got != test.want {
				t.Errorf("Owner = %q, want %q", got, test.want)
			}
		})
	}
}

func BenchmarkIndexTerms(b *testing.B) {
	body, err := os.ReadFile(filepath.Join(dataDir, "r4-examples", "Patient-example.json"))
	if err != nil {
		b.Fatal(err)
	}
	r, err := fhir.Parse(body, fhir.ParseOptions{})
	if err != nil {
		b.Fatal(err)
	}
	params := fhir.DefaultParams()["Patient"]
	b.ReportAllocs()
	for b.Loop() {
		fhir.IndexTerms(r.Doc, params, "http://x/fhir")
	}
}

// TestIndexTermsDeduplicates holds IndexTerms to its definition: the terms
// of every parameter's values, without duplicates (and _id by its c: term
// only), on the conformance examples and on a resource with many values.
func TestIndexTermsDeduplicates(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(dataDir, "r4-examples", "*.json"))
	var docs []map[string]any
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if doc, err := fhir.DecodeStored(b); err == nil {
			docs = append(docs, doc)
		}
	}
	var ids []string
	for i := range 100 {
		ids = append(ids, `{"system":"urn:s","value":"v`+strings.Repeat("x", i%40)+`"}`)
	}
	docs = append(docs, decode(t, `{"resourceType":"Patient","id":"p","identifier":[`+strings.Join(ids, ",")+`],
	  "name":[{"family":"Smith","given":["Ann","Ann","Annabel"]},{"family":"Smith"}]}`))
	reg := fhir.DefaultParams()
	for _, doc := range docs {
		rt, _ := doc["resourceType"].(string)
		params := reg[rt]
		want := map[fhir.Term]bool{}
		for name, sp := range params {
			if name == fhir.ParamLastUpdated || sp.SameAs != "" {
				continue
			}
			for _, v := range fhir.Extract(doc, sp, testBase) {
				for _, term := range fhir.Terms(sp, v) {
					if name == fhir.ParamID && !strings.HasPrefix(term.Value, "c:") {
						continue
					}
					term.Param = name
					want[term] = true
				}
			}
		}
		got := fhir.IndexTerms(doc, params, testBase)
		seen := map[fhir.Term]bool{}
		for _, term := range got {
			if seen[term] {
				t.Errorf("%s: duplicate term %v", rt, term)
			}
			seen[term] = true
		}
		if diff := cmp.Diff(want, seen); diff != "" {
			t.Errorf("%s: IndexTerms (-want +got):\n%s", rt, diff)
		}
	}
}
