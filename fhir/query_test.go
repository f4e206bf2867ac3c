package fhir_test

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/google/go-cmp/cmp"
)

// testBase is the server base the tests search against: absolute
// references under it are local.
const testBase = "http://fhir.example.org/fhir"

var testParams = fhir.DefaultParams()

func decode(t *testing.T, doc string) map[string]any {
	t.Helper()
	m, err := fhir.DecodeStored([]byte(doc))
	if err != nil {
		t.Fatalf("DecodeStored(%s): %v", doc, err)
	}
	return m
}

func parseQuery(t *testing.T, typ, rawQuery string) *fhir.Query {
	t.Helper()
	vals, err := url.ParseQuery(rawQuery)
	if err != nil {
		t.Fatalf("url.ParseQuery(%q): %v", rawQuery, err)
	}
	q, err := fhir.ParseQuery(typ, vals, testParams, testBase, false)
	if err != nil {
		t.Fatalf("ParseQuery(%s?%s): %v", typ, rawQuery, err)
	}
	return q
}

// indexHas reports whether the index terms of a resource contain c.
func indexHas(terms []fhir.Term, c fhir.Term) bool {
	for _, t := range terms {
		if t == c {
			return true
		}
	}
	return false
}

// indexFinds reports whether a store holding terms would return the
// resource for the candidate clauses (AND of ORs).
func indexFinds(terms []fhir.Term, cands [][]fhir.Term) bool {
	for _, or := range cands {
		found := false
		for _, c := range or {
			if indexHas(terms, c) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// checkIndex guards the search index: whatever Matches accepts, the
// candidate terms must find (no false negatives); and when the query is
// Exact, the candidate terms must find nothing else.
func checkIndex(t *testing.T, q *fhir.Query, doc map[string]any, matched bool) {
	t.Helper()
	terms := fhir.IndexTerms(doc, testParams[q.Type], testBase)
	cands := q.Candidates()
	found := indexFinds(terms, cands)
	if matched && !found {
		t.Errorf("Matches is true but the index terms %v do not contain any of the candidates %v", terms, cands)
	}
	if q.Exact() && found != matched {
		t.Errorf("Exact query: index finds the resource = %v, Matches = %v (candidates %v, terms %v)", found, matched, cands, terms)
	}
}

type matchTest struct {
	name  string
	typ   string
	doc   string
	query string // URL query string (a '+' must be written %2B)
	want  bool
}

func runMatchTests(t *testing.T, tests []matchTest) {
	t.Helper()
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			doc := decode(t, test.doc)
			q := parseQuery(t, test.typ, test.query)
			got := q.Matches(doc, testBase)
			if got != test.want {
				t.Errorf("%s?%s Matches = %v, want %v", test.typ, test.query, got, test.want)
			}
			checkIndex(t, q, doc, got)
		})
	}
}

const patientDoc = `{
  "resourceType": "Patient", "id": "p1",
  "meta": {"versionId": "1", "lastUpdated": "2024-03-05T10:20:30.000Z"},
  "active": true,
  "identifier": [
    {"use": "official", "type": {"text": "Medical record number"}, "system": "http://hospital.example.org/mrn", "value": "MRN-123"},
    {"value": "NOSYS-9"},
    {"system": "http://example.org/ids", "value": "A,B"}
  ],
  "name": [
    {"use": "official", "family": "Müller", "given": ["Anna", "Maria"], "prefix": ["Dr."]},
    {"text": "Johnny Mueller"}
  ],
  "telecom": [
    {"system": "phone", "value": "044-555-0100", "use": "work"},
    {"system": "email", "value": "anna@example.org"}
  ],
  "gender": "female",
  "birthDate": "1974-12-25",
  "address": [{"line": ["Bahnhofstrasse 1"], "city": "Zürich", "state": "ZH", "postalCode": "8001", "country": "CH"}],
  "managingOrganization": {"reference": "Organization/org1"}
}`

// escapedP has values that need escaping in a search (R4 search.html#escaping).
const escapedP = `{"resourceType": "Patient", "id": "p3",
  "identifier": [{"system": "http://example.org/ids", "value": "a|b"}, {"system": "http://example.org/ids", "value": "x$y"}, {"value": "c\\"}],
  "name": [{"family": "O\\Brien, Jr"}]}`

const bareP = `{"resourceType": "Patient", "id": "p2"}`

func TestMatchesToken(t *testing.T) {
	obs := `{
	  "resourceType": "Observation", "id": "o1", "status": "final",
	  "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs", "display": "Vital Signs"}]}],
	  "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body Weight"}, {"code": "bw-local"}], "text": "Body weight"},
	  "subject": {"reference": "Patient/123"}
	}`
	enc := `{
	  "resourceType": "Encounter", "id": "e1", "status": "finished",
	  "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"}
	}`
	runMatchTests(t, []matchTest{
		// code
		{"code", "Observation", obs, "code=29463-7", true},
		{"code other", "Observation", obs, "code=1234-5", false},
		{"code or", "Observation", obs, "code=1234-5,29463-7", true},
		{"code and", "Observation", obs, "code=29463-7&category=laboratory", false},
		{"code and both", "Observation", obs, "code=29463-7&category=vital-signs", true},
		// system|code
		{"system|code", "Observation", obs, "code=http://loinc.org|29463-7", true},
		{"system|code wrong system", "Observation", obs, "code=http://snomed.info/sct|29463-7", false},
		{"system|code on coding without system", "Observation", obs, "code=http://loinc.org|bw-local", false},
		// |code: the coding has no system
		{"|code no system", "Observation", obs, "code=|bw-local", true},
		{"|code coding has a system", "Observation", obs, "code=|29463-7", false},
		// system|
		{"system|", "Observation", obs, "code=http://loinc.org|", true},
		{"system| other", "Observation", obs, "code=http://snomed.info/sct|", false},
		// :not
		{":not present code", "Observation", obs, "code:not=29463-7", false},
		{":not absent code", "Observation", obs, "code:not=1234-5", true},
		{":not system|code", "Observation", obs, "code:not=http://loinc.org|29463-7", false},
		{":not without any value", "Patient", bareP, "gender:not=male", true},
		// :text on CodeableConcept.text and Coding.display
		{":text CodeableConcept.text", "Observation", obs, "code:text=body w", true},
		{":text case-insensitive", "Observation", obs, "code:text=BODY", true},
		{":text display", "Observation", obs, "category:text=vital", true},
		{":text no match", "Observation", obs, "code:text=height", false},
		// Identifier
		{"identifier value", "Patient", patientDoc, "identifier=MRN-123", true},
		{"identifier system|value", "Patient", patientDoc, "identifier=http://hospital.example.org/mrn|MRN-123", true},
		{"identifier system|", "Patient", patientDoc, "identifier=http://hospital.example.org/mrn|", true},
		{"identifier wrong system", "Patient", patientDoc, "identifier=http://other.example.org|MRN-123", false},
		{"identifier |value without system", "Patient", patientDoc, "identifier=|NOSYS-9", true},
		{"identifier |value with system", "Patient", patientDoc, "identifier=|MRN-123", false},
		{"identifier :text on type.text", "Patient", patientDoc, "identifier:text=medical rec", true},
		{"identifier :not", "Patient", patientDoc, "identifier:not=MRN-123", false},
		{"identifier escaped comma", "Patient", patientDoc, `identifier=http://example.org/ids|A\,B`, true},
		{"identifier escaped comma is not OR", "Patient", patientDoc, `identifier=A\,X`, false},
		{"escaped pipe in the code", "Patient", escapedP, `identifier=http://example.org/ids|a\|b`, true},
		{"escaped pipe in a plain code", "Patient", escapedP, `identifier=a\|b`, true},
		{"escaped pipe, system only", "Patient", escapedP, `identifier=http://example.org/ids|a`, false},
		{"escaped dollar", "Patient", escapedP, `identifier=http://example.org/ids|x\$y`, true},
		{"escaped backslash before a comma", "Patient", escapedP, `identifier=c\\,zzz`, true},
		// choice types: value-concept takes only CodeableConcept values
		{"value-concept CodeableConcept", "Observation", `{"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}, "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "260385009"}]}}`, "value-concept=http://snomed.info/sct|260385009", true},
		{"value-concept on a Quantity", "Observation", `{"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": 5, "system": "http://unitsofmeasure.org", "code": "mg"}}`, "value-concept=http://unitsofmeasure.org|", false},
		// Coding (Encounter.class)
		{"Coding code", "Encounter", enc, "class=AMB", true},
		{"Coding system|code", "Encounter", enc, "class=http://terminology.hl7.org/CodeSystem/v3-ActCode|AMB", true},
		{"Coding other code", "Encounter", enc, "class=IMP", false},
		{"Coding :text display", "Encounter", enc, "class:text=ambul", true},
		// ContactPoint
		{"telecom phone", "Patient", patientDoc, "telecom=044-555-0100", true},
		{"telecom email", "Patient", patientDoc, "telecom=anna@example.org", true},
		{"phone", "Patient", patientDoc, "phone=044-555-0100", true},
		{"phone is not an email", "Patient", patientDoc, "phone=anna@example.org", false},
		{"email", "Patient", patientDoc, "email=anna@example.org", true},
		{"email is not a phone", "Patient", patientDoc, "email=044-555-0100", false},
		// boolean
		{"active=true", "Patient", patientDoc, "active=true", true},
		{"active=false", "Patient", patientDoc, "active=false", false},
		{"active missing", "Patient", bareP, "active=true", false},
		// code with an implicit code system
		{"gender", "Patient", patientDoc, "gender=female", true},
		{"gender other", "Patient", patientDoc, "gender=male", false},
		{"gender implicit system", "Patient", patientDoc, "gender=http://hl7.org/fhir/administrative-gender|female", true},
		{"gender implicit system only", "Patient", patientDoc, "gender=http://hl7.org/fhir/administrative-gender|", true},
		{"gender wrong system", "Patient", patientDoc, "gender=http://example.org/gender|female", false},
		{"gender |code (it has a system)", "Patient", patientDoc, "gender=|female", false},
		{"gender :not", "Patient", patientDoc, "gender:not=male", true},
		{"status implicit system", "Encounter", enc, "status=http://hl7.org/fhir/encounter-status|finished", true},
		// _id
		{"_id", "Patient", patientDoc, "_id=p1", true},
		{"_id other", "Patient", patientDoc, "_id=p2", false},
		{"_id or", "Patient", patientDoc, "_id=p2,p1", true},
		// :missing
		{"gender:missing=true absent", "Patient", bareP, "gender:missing=true", true},
		{"gender:missing=true present", "Patient", patientDoc, "gender:missing=true", false},
		{"gender:missing=false present", "Patient", patientDoc, "gender:missing=false", true},
	})
}

func TestMatchesString(t *testing.T) {
	runMatchTests(t, []matchTest{
		// default: starts-with, case- and accent-insensitive
		{"family prefix", "Patient", patientDoc, "family=mull", true},
		{"family upper with accent", "Patient", patientDoc, "family=MÜLL", true},
		{"family whole", "Patient", patientDoc, "family=muller", true},
		{"family not a prefix", "Patient", patientDoc, "family=ller", false},
		{"family other", "Patient", patientDoc, "family=mue", false},
		{"family or", "Patient", patientDoc, "family=smith,mül", true},
		{"escaped backslash", "Patient", escapedP, `family=o\\b`, true},
		{"escaped comma", "Patient", escapedP, `family:exact=O\\Brien\, Jr`, true},
		{"escaped comma prefix", "Patient", escapedP, `family=o\\brien\,`, true},
		{"given second", "Patient", patientDoc, "given=mar", true},
		{"given is not family", "Patient", patientDoc, "given=mull", false},
		// HumanName parts
		{"name family", "Patient", patientDoc, "name=müller", true},
		{"name given", "Patient", patientDoc, "name=anna", true},
		{"name prefix part", "Patient", patientDoc, "name=dr", true},
		{"name text", "Patient", patientDoc, "name=johnny m", true},
		{"name text not at start", "Patient", patientDoc, "name=mueller", false},
		// :exact: the whole value, case- and accent-sensitive
		{":exact", "Patient", patientDoc, "family:exact=Müller", true},
		{":exact case", "Patient", patientDoc, "family:exact=müller", false},
		{":exact accent", "Patient", patientDoc, "family:exact=Muller", false},
		{":exact prefix", "Patient", patientDoc, "family:exact=Mül", false},
		// :contains
		{":contains", "Patient", patientDoc, "family:contains=ll", true},
		{":contains case and accent", "Patient", patientDoc, "family:contains=ÜLLER", true},
		{":contains no", "Patient", patientDoc, "family:contains=xyz", false},
		{":contains name text", "Patient", patientDoc, "name:contains=mueller", true},
		// Address parts
		{"address city", "Patient", patientDoc, "address=zur", true},
		{"address line", "Patient", patientDoc, "address=bahnhof", true},
		{"address postal code", "Patient", patientDoc, "address=8001", true},
		{"address-city", "Patient", patientDoc, "address-city=ZURICH", true},
		{"address-city is not the line", "Patient", patientDoc, "address-city=bahnhof", false},
		{"address-postalcode", "Patient", patientDoc, "address-postalcode=800", true},
		{"address-country", "Patient", patientDoc, "address-country=ch", true},
		{"address-state", "Patient", patientDoc, "address-state=zh", true},
		// :missing
		{"family:missing=false", "Patient", patientDoc, "family:missing=false", true},
		{"family:missing=true present", "Patient", patientDoc, "family:missing=true", false},
		{"family:missing=true absent", "Patient", bareP, "family:missing=true", true},
		{"name:missing=true absent", "Patient", bareP, "name:missing=true", true},
	})
}

// dateTests lists, for each resource value and query value, the expected
// result of every prefix, worked out by hand from R4 search.html
// (§3.1.1.4.x, date): every value is the implicit range [lo, hi) of its
// precision, and with R the resource range and S the search range:
//
//	eq  R lies within S           ne  not eq
//	gt  R extends above S's end   lt  R starts before S's start
//	ge  gt or eq                  le  lt or eq
//	sa  R starts at/after S's end eb  R ends at/before S's start
//	ap  R overlaps S widened by 10% of the gap between now and S (at
//	    least a day): about 1.4 years for 2013, so everything here but 2000.
//
// Dates without a zone are UTC; "T" is 2013-01-14T10:00:00+01:00, i.e. the
// second from 09:00:00Z.
var dateTests = []struct {
	value string // Observation.effective[x]
	query string
	want  string // eq ne lt gt le ge sa eb ap
}{
	// year 2013 = [2013-01-01, 2014-01-01)
	{`"effectiveDateTime": "2013"`, "2013", "T . . . T T . . T"},
	{`"effectiveDateTime": "2013"`, "2013-01", ". T . T . T . . T"},
	{`"effectiveDateTime": "2013"`, "2013-01-14", ". T T T T T . . T"},
	{`"effectiveDateTime": "2013"`, "T", ". T T T T T . . T"},
	// month 2013-01 = [2013-01-01, 2013-02-01)
	{`"effectiveDateTime": "2013-01"`, "2013", "T . . . T T . . T"},
	{`"effectiveDateTime": "2013-01"`, "2013-01", "T . . . T T . . T"},
	{`"effectiveDateTime": "2013-01"`, "2013-01-14", ". T T T T T . . T"},
	{`"effectiveDateTime": "2013-01"`, "T", ". T T T T T . . T"},
	// day 2013-01-14 = [2013-01-14, 2013-01-15)
	{`"effectiveDateTime": "2013-01-14"`, "2013", "T . . . T T . . T"},
	{`"effectiveDateTime": "2013-01-14"`, "2013-01", "T . . . T T . . T"},
	{`"effectiveDateTime": "2013-01-14"`, "2013-01-14", "T . . . T T . . T"},
	{`"effectiveDateTime": "2013-01-14"`, "T", ". T T T T T . . T"},
	// dateTime with zone, the same second as T
	{`"effectiveDateTime": "2013-01-14T10:00:00+01:00"`, "2013", "T . . . T T . . T"},
	{`"effectiveDateTime": "2013-01-14T10:00:00+01:00"`, "2013-01", "T . . . T T . . T"},
	{`"effectiveDateTime": "2013-01-14T10:00:00+01:00"`, "2013-01-14", "T . . . T T . . T"},
	{`"effectiveDateTime": "2013-01-14T10:00:00+01:00"`, "T", "T . . . T T . . T"},
	// dateTime 10:00:00Z: an hour after T
	{`"effectiveDateTime": "2013-01-14T10:00:00Z"`, "2013", "T . . . T T . . T"},
	{`"effectiveDateTime": "2013-01-14T10:00:00Z"`, "2013-01", "T . . . T T . . T"},
	{`"effectiveDateTime": "2013-01-14T10:00:00Z"`, "2013-01-14", "T . . . T T . . T"},
	{`"effectiveDateTime": "2013-01-14T10:00:00Z"`, "T", ". T . T . T T . T"},
	// Period 2013-01-10..2013-01-20 = [2013-01-10, 2013-01-21)
	{`"effectivePeriod": {"start": "2013-01-10", "end": "2013-01-20"}`, "2013", "T . . . T T . . T"},
	{`"effectivePeriod": {"start": "2013-01-10", "end": "2013-01-20"}`, "2013-01", "T . . . T T . . T"},
	{`"effectivePeriod": {"start": "2013-01-10", "end": "2013-01-20"}`, "2013-01-14", ". T T T T T . . T"},
	{`"effectivePeriod": {"start": "2013-01-10", "end": "2013-01-20"}`, "T", ". T T T T T . . T"},
	// Period without end (ongoing) = [2013-01-14T09:30Z, +inf)
	{`"effectivePeriod": {"start": "2013-01-14T09:30:00Z"}`, "2013", ". T . T . T . . T"},
	{`"effectivePeriod": {"start": "2013-01-14T09:30:00Z"}`, "2013-01", ". T . T . T . . T"},
	{`"effectivePeriod": {"start": "2013-01-14T09:30:00Z"}`, "2013-01-14", ". T . T . T . . T"},
	{`"effectivePeriod": {"start": "2013-01-14T09:30:00Z"}`, "T", ". T . T . T T . T"},
	// Period without start = (-inf, 2013-01-01)
	{`"effectivePeriod": {"end": "2012-12-31"}`, "2013", ". T T . T . . T T"},
	{`"effectivePeriod": {"end": "2012-12-31"}`, "2013-01", ". T T . T . . T T"},
	{`"effectivePeriod": {"end": "2012-12-31"}`, "2013-01-14", ". T T . T . . T T"},
	{`"effectivePeriod": {"end": "2012-12-31"}`, "T", ". T T . T . . T T"},
	// far away: 2000-06-15
	{`"effectiveDateTime": "2000-06-15"`, "2013", ". T T . T . . T ."},
	{`"effectiveDateTime": "2000-06-15"`, "2013-01", ". T T . T . . T ."},
	{`"effectiveDateTime": "2000-06-15"`, "2013-01-14", ". T T . T . . T ."},
	{`"effectiveDateTime": "2000-06-15"`, "T", ". T T . T . . T ."},
}

func TestMatchesDate(t *testing.T) {
	prefixes := strings.Fields("eq ne lt gt le ge sa eb ap")
	for _, test := range dateTests {
		wants := strings.Fields(test.want)
		if len(wants) != len(prefixes) {
			t.Fatalf("bad table row %v", test)
		}
		query := test.query
		if query == "T" {
			query = "2013-01-14T10:00:00%2B01:00"
		}
		doc := decode(t, `{"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}, `+test.value+`}`)
		for i, prefix := range prefixes {
			want := wants[i] == "T"
			t.Run(test.value+"/"+prefix+test.query, func(t *testing.T) {
				q := parseQuery(t, "Observation", "date="+prefix+query)
				got := q.Matches(doc, testBase)
				if got != want {
					t.Errorf("date=%s%s on %s: Matches = %v, want %v", prefix, test.query, test.value, got, want)
				}
				checkIndex(t, q, doc, got)
			})
		}
	}
}

func TestMatchesDateOther(t *testing.T) {
	obs := func(eff string) string {
		return `{"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}, ` + eff + `}`
	}
	runMatchTests(t, []matchTest{
		{"no prefix is eq", "Observation", obs(`"effectiveDateTime": "2013-01-14"`), "date=2013-01", true},
		{"or", "Observation", obs(`"effectiveDateTime": "2013-01-14"`), "date=2012,2013", true},
		{"and range", "Observation", obs(`"effectiveDateTime": "2013-01-14"`), "date=ge2013-01-01&date=lt2013-02-01", true},
		{"and range outside", "Observation", obs(`"effectiveDateTime": "2013-03-14"`), "date=ge2013-01-01&date=lt2013-02-01", false},
		{"instant with millis", "Observation", obs(`"effectiveInstant": "2013-01-14T09:00:00.250Z"`), "date=2013-01-14T10:00:00%2B01:00", true},
		{"timing is not a date", "Observation", obs(`"effectiveTiming": {"event": ["2013-01-14"]}`), "date=2013", false},
		{"no date", "Observation", obs(`"issued": "2013-01-14T00:00:00Z"`), "date=2013", false},
		{"birthdate", "Patient", patientDoc, "birthdate=1974-12", true},
		{"birthdate lt", "Patient", patientDoc, "birthdate=lt1974-12-25", false},
		{"birthdate le", "Patient", patientDoc, "birthdate=le1974-12-25", true},
		{"_lastUpdated day", "Patient", patientDoc, "_lastUpdated=2024-03-05", true},
		{"_lastUpdated other day", "Patient", patientDoc, "_lastUpdated=2024-03-06", false},
		{"_lastUpdated gt", "Patient", patientDoc, "_lastUpdated=gt2024-01-01", true},
		{"_lastUpdated lt", "Patient", patientDoc, "_lastUpdated=lt2024-01-01", false},
	})
}

func TestMatchesReference(t *testing.T) {
	obs := func(subject string) string {
		return `{"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}, "subject": {"reference": "` + subject + `"}}`
	}
	local, absLocal := obs("Patient/123"), obs(testBase+"/Patient/123")
	other, group := obs("http://other.example.com/fhir/Patient/123"), obs("Group/1")
	versioned := obs("Patient/123/_history/2")
	noSubject := `{"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}}`
	runMatchTests(t, []matchTest{
		{"Type/id", "Observation", local, "subject=Patient/123", true},
		{"Type/id other id", "Observation", local, "subject=Patient/124", false},
		{"Type/id other type", "Observation", local, "subject=Group/123", false},
		{"id", "Observation", local, "subject=123", true},
		{"id other", "Observation", local, "subject=12", false},
		{"absolute local query", "Observation", local, "subject=" + testBase + "/Patient/123", true},
		{"absolute local query, versioned", "Observation", local, "subject=" + testBase + "/Patient/123/_history/1", true},
		{"absolute other-server query", "Observation", local, "subject=http://other.example.com/fhir/Patient/123", false},
		{"type modifier", "Observation", local, "subject:Patient=123", true},
		{"type modifier other type", "Observation", local, "subject:Group=123", false},
		{"patient id", "Observation", local, "patient=123", true},
		{"patient Type/id", "Observation", local, "patient=Patient/123", true},
		{"or", "Observation", local, "subject=Patient/9,Patient/123", true},

		{"absolute local resource, Type/id", "Observation", absLocal, "subject=Patient/123", true},
		{"absolute local resource, id", "Observation", absLocal, "subject=123", true},
		{"absolute local resource, patient", "Observation", absLocal, "patient=123", true},
		{"absolute local resource, absolute query", "Observation", absLocal, "subject=" + testBase + "/Patient/123", true},

		{"other server, its URL", "Observation", other, "subject=http://other.example.com/fhir/Patient/123", true},
		{"other server, Type/id", "Observation", other, "subject=Patient/123", false},
		{"other server, id", "Observation", other, "subject=123", false},
		{"other server, patient", "Observation", other, "patient=123", false},

		{"versioned reference", "Observation", versioned, "subject=Patient/123", true},

		{"Group subject, subject id", "Observation", group, "subject=1", true},
		{"Group subject, subject Type/id", "Observation", group, "subject=Group/1", true},
		{"Group subject is not a patient", "Observation", group, "patient=1", false},
		{"Group subject is not Patient/1", "Observation", group, "subject:Patient=1", false},

		{"missing=true absent", "Observation", noSubject, "subject:missing=true", true},
		{"missing=true present", "Observation", local, "subject:missing=true", false},
		{"missing=false present", "Observation", local, "subject:missing=false", true},

		{"Patient.organization", "Patient", patientDoc, "organization=Organization/org1", true},
	})
}

func TestMatchesQuantity(t *testing.T) {
	obs := func(value, unit string) string {
		return `{"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": ` + value + unit + `}}`
	}
	const ucumMg = `, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"`
	runMatchTests(t, []matchTest{
		{"number|system|code", "Observation", obs("5.40", ucumMg), "value-quantity=5.4|http://unitsofmeasure.org|mg", true},
		{"number|system|code other code", "Observation", obs("5.40", `, "system": "http://unitsofmeasure.org", "code": "g"`), "value-quantity=5.4|http://unitsofmeasure.org|mg", false},
		{"number|system|code other system", "Observation", obs("5.40", `, "system": "http://example.org/units", "code": "mg"`), "value-quantity=5.4|http://unitsofmeasure.org|mg", false},
		{"number|system|code no system", "Observation", obs("5.40", `, "unit": "mg"`), "value-quantity=5.4|http://unitsofmeasure.org|mg", false},
		{"number|system|code only unit matches", "Observation", obs("5.40", `, "unit": "mg", "system": "http://unitsofmeasure.org"`), "value-quantity=5.4|http://unitsofmeasure.org|mg", false},
		{"number||code on code", "Observation", obs("5.40", ucumMg), "value-quantity=5.4||mg", true},
		{"number||code on unit", "Observation", obs("5.40", `, "unit": "mg"`), "value-quantity=5.4||mg", true},
		{"number||code other", "Observation", obs("5.40", `, "unit": "g", "code": "g"`), "value-quantity=5.4||mg", false},
		{"number", "Observation", obs("5.40", ucumMg), "value-quantity=5.4", true},
		{"number any unit", "Observation", obs("5.4", `, "unit": "furlong"`), "value-quantity=5.4", true},
		// precision: 5.4 is [5.35, 5.45)
		{"5.4 matches 5.35", "Observation", obs("5.35", ucumMg), "value-quantity=5.4", true},
		{"5.4 matches 5.35 with unit", "Observation", obs("5.35", ucumMg), "value-quantity=5.4|http://unitsofmeasure.org|mg", true},
		{"5.4 matches 5.449", "Observation", obs("5.449", ucumMg), "value-quantity=5.4", true},
		{"5.4 not 5.45", "Observation", obs("5.45", ucumMg), "value-quantity=5.4", false},
		{"5.4 not 5.46", "Observation", obs("5.46", ucumMg), "value-quantity=5.4", false},
		{"5.4 not 5.34", "Observation", obs("5.34", ucumMg), "value-quantity=5.4", false},
		{"5.40 matches 5.395", "Observation", obs("5.395", ucumMg), "value-quantity=5.40", true},
		{"5.40 not 5.41", "Observation", obs("5.41", ucumMg), "value-quantity=5.40", false},
		{"100 matches 99.5", "Observation", obs("99.5", ucumMg), "value-quantity=100", true},
		{"100 not 100.5", "Observation", obs("100.5", ucumMg), "value-quantity=100", false},
		{"0.3 matches 0.25", "Observation", obs("0.25", ucumMg), "value-quantity=0.3", true},
		{"0.3 not 0.35", "Observation", obs("0.35", ucumMg), "value-quantity=0.3", false},
		// prefixes
		{"gt above", "Observation", obs("5.5", ucumMg), "value-quantity=gt5.4", true},
		{"gt equal", "Observation", obs("5.4", ucumMg), "value-quantity=gt5.4", false},
		{"lt below", "Observation", obs("5.3", ucumMg), "value-quantity=lt5.4", true},
		{"lt equal", "Observation", obs("5.4", ucumMg), "value-quantity=lt5.4", false},
		{"ge equal", "Observation", obs("5.4", ucumMg), "value-quantity=ge5.4", true},
		{"ge below", "Observation", obs("5.3", ucumMg), "value-quantity=ge5.4", false},
		{"le equal", "Observation", obs("5.4", ucumMg), "value-quantity=le5.4|http://unitsofmeasure.org|mg", true},
		{"le above", "Observation", obs("5.5", ucumMg), "value-quantity=le5.4", false},
		{"ne", "Observation", obs("5.5", ucumMg), "value-quantity=ne5.4", true},
		{"ne equal", "Observation", obs("5.40", ucumMg), "value-quantity=ne5.4", false},
		{"not a quantity", "Observation", `{"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}, "valueString": "5.4"}`, "value-quantity=5.4", false},
	})
}

func TestMatchesURI(t *testing.T) {
	ae := `{"resourceType": "AuditEvent", "id": "a1", "agent": [{"requestor": true, "policy": ["http://example.org/policy/1"]}]}`
	runMatchTests(t, []matchTest{
		{"uri", "AuditEvent", ae, "policy=http://example.org/policy/1", true},
		{"uri is not a prefix match", "AuditEvent", ae, "policy=http://example.org/policy", false},
	})
}

func TestParseQueryErrors(t *testing.T) {
	tests := []struct {
		name   string
		typ    string
		query  string
		issues int
	}{
		{"unknown parameter", "Patient", "foo=bar", 1},
		{"two unknown parameters", "Patient", "foo=1&bar=2", 2},
		{"unknown parameter of another type", "Patient", "code=1234-5", 1},
		{"bad date", "Patient", "birthdate=notadate", 1},
		{"bad date prefix", "Patient", "birthdate=xx2013", 1},
		{"negative _count", "Patient", "_count=-1", 1},
		{"non-numeric _count", "Patient", "_count=ten", 1},
		{"negative _offset", "Patient", "_offset=-1", 1},
		{"unknown _sort", "Patient", "_sort=shoesize", 1},
		{"unknown descending _sort", "Patient", "_sort=-shoesize", 1},
		{"bad _summary", "Patient", "_summary=yes", 1},
		{"bad _total", "Patient", "_total=all", 1},
		{"string modifier on token", "Patient", "gender:exact=female", 1},
		{"token modifier on string", "Patient", "family:not=smith", 1},
		{"unknown modifier", "Patient", "family:fuzzy=smith", 1},
		{"bad :missing", "Patient", "family:missing=maybe", 1},
		{"empty token", "Patient", "identifier=|", 1},
		{"quantity number|code", "Observation", "value-quantity=5.4|mg", 1},
		{"bad number", "Observation", "value-quantity=five", 1},
		{"bad reference", "Observation", "subject=Foo/1", 1},
		{"_include without param", "Observation", "_include=Observation", 1},
		{"_include of a token", "Observation", "_include=Observation:code", 1},
		{"_include of an unknown param", "Observation", "_include=Observation:nope", 1},
		{"_include of another type", "Observation", "_include=Patient:organization", 1},
		{"_include with too many parts", "Observation", "_include=Observation:patient:Patient:x", 1},
		{"_revinclude of a token", "Patient", "_revinclude=Observation:code", 1},
		{"good and bad", "Patient", "family=smith&birthdate=notadate", 1},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			vals, err := url.ParseQuery(test.query)
			if err != nil {
				t.Fatal(err)
			}
			q, err := fhir.ParseQuery(test.typ, vals, testParams, testBase, false)
			var fe *fhir.Error
			if !errors.As(err, &fe) {
				t.Fatalf("ParseQuery(%s?%s) = %v, %v; want a *fhir.Error", test.typ, test.query, q, err)
			}
			if fe.Status != 400 {
				t.Errorf("Status = %d, want 400", fe.Status)
			}
			if len(fe.Issues) != test.issues {
				t.Errorf("got %d issues, want %d: %v", len(fe.Issues), test.issues, fe.Issues)
			}
			for _, is := range fe.Issues {
				if is.Severity != fhir.SeverityError || is.Code == "" {
					t.Errorf("issue %+v: want severity error and a code", is)
				}
			}
		})
	}
}

func TestParseQueryLenient(t *testing.T) {
	tests := []struct {
		name        string
		query       string
		wantIgnored []string
		wantClauses []string
		wantErr     bool
	}{
		{"unknown ignored", "foo=bar&family=smith", []string{"foo"}, []string{"family"}, false},
		{"unknown _sort ignored", "_sort=shoesize&gender=female", []string{"_sort"}, []string{"gender"}, false},
		{"unknown _include ignored", "_include=Patient:nope", []string{"_include"}, nil, false},
		// lenient handling covers unknown parameters, not bad values
		{"bad value still an error", "foo=bar&birthdate=notadate", nil, nil, true},
		{"bad _count still an error", "_count=-1", nil, nil, true},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			vals, err := url.ParseQuery(test.query)
			if err != nil {
				t.Fatal(err)
			}
			q, err := fhir.ParseQuery("Patient", vals, testParams, testBase, true)
			if test.wantErr {
				var fe *fhir.Error
				if !errors.As(err, &fe) || fe.Status != 400 {
					t.Fatalf("err = %v, want a 400 *fhir.Error", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(test.wantIgnored, q.Ignored); diff != "" {
				t.Errorf("Ignored (-want +got):\n%s", diff)
			}
			var got []string
			for _, c := range q.Clauses {
				got = append(got, c.Name)
			}
			if diff := cmp.Diff(test.wantClauses, got); diff != "" {
				t.Errorf("clauses (-want +got):\n%s", diff)
			}
			if _, ok := q.Canonical[test.wantIgnored[0]]; ok {
				t.Errorf("Canonical %v keeps the ignored parameter", q.Canonical)
			}
		})
	}
}

func TestParseQueryResultParams(t *testing.T) {
	type sortKey struct {
		Name string
		Desc bool
	}
	type result struct {
		Count, Offset  int
		Sort           []sortKey
		Include        []fhir.Include
		RevInclude     []fhir.Include
		Summary, Total string
		Canonical      url.Values
		Clauses        int
	}
	tests := []struct {
		name  string
		typ   string
		query string
		want  result
	}{
		{"paging", "Patient", "_count=2&_offset=4", result{Count: 2, Offset: 4, Canonical: url.Values{"_count": {"2"}}}},
		{"_count=0", "Patient", "_count=0", result{Canonical: url.Values{"_count": {"0"}}}},
		{"sort", "Observation", "_sort=date,-_lastUpdated,_id", result{
			Sort:      []sortKey{{"date", false}, {"_lastUpdated", true}, {"_id", false}},
			Canonical: url.Values{"_sort": {"date,-_lastUpdated,_id"}},
		}},
		{"sort descending", "Observation", "_sort=-date", result{Sort: []sortKey{{"date", true}}, Canonical: url.Values{"_sort": {"-date"}}}},
		{"include", "Observation", "_include=Observation:patient", result{
			Include:   []fhir.Include{{Source: "Observation", Param: "patient"}},
			Canonical: url.Values{"_include": {"Observation:patient"}},
		}},
		{"include with target", "Appointment", "_include=Appointment:actor:Practitioner", result{
			Include:   []fhir.Include{{Source: "Appointment", Param: "actor", Target: "Practitioner"}},
			Canonical: url.Values{"_include": {"Appointment:actor:Practitioner"}},
		}},
		{"include several", "Appointment", "_include=Appointment:patient&_include=Appointment:practitioner", result{
			Include:   []fhir.Include{{Source: "Appointment", Param: "patient"}, {Source: "Appointment", Param: "practitioner"}},
			Canonical: url.Values{"_include": {"Appointment:patient", "Appointment:practitioner"}},
		}},
		{"include iterate", "Observation", "_include=Observation:patient&_include:iterate=Patient:general-practitioner", result{
			Include:   []fhir.Include{{Source: "Observation", Param: "patient"}, {Source: "Patient", Param: "general-practitioner", Iterate: true}},
			Canonical: url.Values{"_include": {"Observation:patient"}, "_include:iterate": {"Patient:general-practitioner"}},
		}},
		{"revinclude", "Patient", "_revinclude=Observation:patient", result{
			RevInclude: []fhir.Include{{Source: "Observation", Param: "patient"}},
			Canonical:  url.Values{"_revinclude": {"Observation:patient"}},
		}},
		{"revinclude with target", "Patient", "_revinclude=Observation:subject:Patient", result{
			RevInclude: []fhir.Include{{Source: "Observation", Param: "subject", Target: "Patient"}},
			Canonical:  url.Values{"_revinclude": {"Observation:subject:Patient"}},
		}},
		{"summary and total", "Patient", "_summary=count&_total=accurate", result{Summary: "count", Total: "accurate", Canonical: url.Values{"_summary": {"count"}, "_total": {"accurate"}}}},
		{"format ignored", "Patient", "_format=json&_pretty=true", result{Canonical: url.Values{"_format": {"json"}, "_pretty": {"true"}}}},
		{"empty value ignored", "Patient", "family=", result{Canonical: url.Values{"family": {""}}}},
		{"clauses", "Patient", "family=a&family=b&gender=female", result{Clauses: 3, Canonical: url.Values{"family": {"a", "b"}, "gender": {"female"}}}},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			q := parseQuery(t, test.typ, test.query)
			got := result{Count: q.Count, Offset: q.Offset, Include: q.Include, RevInclude: q.RevInclude,
				Summary: q.Summary, Total: q.Total, Canonical: q.Canonical, Clauses: len(q.Clauses)}
			for _, k := range q.Sort {
				got.Sort = append(got.Sort, sortKey{k.Name, k.Desc})
				if k.Name != "_id" && k.Name != "_lastUpdated" && (k.Param == nil || k.Param.Name != k.Name) {
					t.Errorf("sort key %q: Param = %v", k.Name, k.Param)
				}
			}
			if diff := cmp.Diff(test.want, got); diff != "" {
				t.Errorf("ParseQuery(%s?%s) (-want +got):\n%s", test.typ, test.query, diff)
			}
		})
	}
}

func TestCandidates(t *testing.T) {
	term := func(param, value string) fhir.Term { return fhir.Term{Param: param, Value: value} }
	prefix := func(param, value string) fhir.Term { return fhir.Term{Param: param, Value: "p:" + value} }
	tests := []struct {
		name      string
		typ       string
		query     string
		want      [][]fhir.Term
		wantExact bool
	}{
		{"empty", "Patient", "", nil, true},
		{"code", "Patient", "gender=female", [][]fhir.Term{{term("gender", "c:female")}}, true},
		{"system|code", "Patient", "gender=http://hl7.org/fhir/administrative-gender|female", [][]fhir.Term{{term("gender", "sc:http://hl7.org/fhir/administrative-gender|female")}}, true},
		{"|code", "Patient", "identifier=|X1", [][]fhir.Term{{term("identifier", "n:X1")}}, true},
		{"system|", "Patient", "identifier=http://x.org|", [][]fhir.Term{{term("identifier", "s:http://x.org")}}, true},
		{"escapes", "Observation", `code=a\|b,s|c\,d`, [][]fhir.Term{{term("code", "c:a|b"), term("code", "sc:s|c,d")}}, true},
		{"or", "Observation", "code=a,b", [][]fhir.Term{{term("code", "c:a"), term("code", "c:b")}}, true},
		{"and", "Observation", "code=a&category=b", [][]fhir.Term{{term("category", "c:b")}, {term("code", "c:a")}}, true},
		{"_id", "Patient", "_id=abc", [][]fhir.Term{{term("_id", "c:abc")}}, true},
		{"token :not", "Observation", "code:not=a", nil, false},
		{"token :text", "Observation", "code:text=a", nil, false},
		{"token :missing", "Patient", "gender:missing=true", nil, false},
		{"string", "Patient", "family=Mül", [][]fhir.Term{{prefix("family", "mul")}}, true},
		{"string :exact", "Patient", "family:exact=Mül", [][]fhir.Term{{prefix("family", "mul")}}, false},
		{"string of an indexed length", "Patient", "family=Müllerin", [][]fhir.Term{{prefix("family", "mullerin")}}, true},
		{"string between indexed lengths", "Patient", "family=Müller", [][]fhir.Term{{prefix("family", "mulle")}}, false},
		{"string longer than indexed", "Patient", "family=Müllerinnen", [][]fhir.Term{{prefix("family", "mullerin")}}, false},
		{"string of one rune", "Patient", "family=M", nil, false},
		{"phonetic shares name's terms", "Patient", "phonetic=Mül", [][]fhir.Term{{prefix("name", "mul")}}, true},
		{"string :contains", "Patient", "family:contains=ul", nil, false},
		{"string :missing", "Patient", "family:missing=true", nil, false},
		{"reference Type/id", "Observation", "subject=Patient/1", [][]fhir.Term{{term("subject", "r:Patient/1")}}, true},
		{"reference absolute local", "Observation", "subject=" + testBase + "/Patient/1", [][]fhir.Term{{term("subject", "r:Patient/1")}}, true},
		{"reference id", "Observation", "subject=1", [][]fhir.Term{{term("subject", "i:1")}}, true},
		{"reference type modifier", "Observation", "subject:Patient=1", [][]fhir.Term{{term("subject", "r:Patient/1")}}, true},
		{"reference other server", "Observation", "subject=http://other.org/fhir/Patient/1", [][]fhir.Term{{term("subject", "u:http://other.org/fhir/Patient/1")}}, true},
		{"reference :missing", "Observation", "subject:missing=true", nil, false},
		{"date year", "Observation", "date=2013", [][]fhir.Term{{term("date", "y:2013")}}, true},
		{"date month", "Observation", "date=eq2013-01", [][]fhir.Term{{term("date", "m:2013-01")}}, true},
		{"date day", "Observation", "date=2013-01-14", [][]fhir.Term{{term("date", "d:2013-01-14")}}, true},
		{"date dateTime", "Observation", "date=2013-01-14T10:00:00%2B01:00", [][]fhir.Term{{term("date", "d:2013-01-14")}}, false},
		{"date gt", "Observation", "date=gt2013", nil, false},
		{"date or with gt", "Observation", "date=2013,gt2014", nil, false},
		{"_lastUpdated", "Patient", "_lastUpdated=2024-03-05", nil, false},
		{"quantity system|code", "Observation", "value-quantity=5.4|http://unitsofmeasure.org|mg", [][]fhir.Term{{term("value-quantity", "qsc:http://unitsofmeasure.org|mg")}}, false},
		{"quantity ||code", "Observation", "value-quantity=5.4||mg", [][]fhir.Term{{term("value-quantity", "qc:mg")}}, false},
		{"quantity number", "Observation", "value-quantity=5.4", nil, false},
		{"uri", "AuditEvent", "policy=http://x.org/p", [][]fhir.Term{{term("policy", "u:http://x.org/p")}}, true},
		{"coded system| scans", "Patient", "gender=http://hl7.org/fhir/administrative-gender|", nil, false},
		{"AuditEvent coding system| scans", "AuditEvent", "type=http://x.org|", nil, false},
		{"AuditEvent coding system|code", "AuditEvent", "type=http://x.org|rest", [][]fhir.Term{{term("type", "sc:http://x.org|rest")}}, true},
		{"AuditEvent address of 8", "AuditEvent", "address=10.0.0.1", [][]fhir.Term{{prefix("address", "10.0.0.1")}}, true},
		{"AuditEvent address longer", "AuditEvent", "address=192.168.1.20", [][]fhir.Term{{prefix("address", "192.168.")}}, false},
		{"AuditEvent address shorter scans", "AuditEvent", "address=10.0", nil, false},
		{"mixed", "Observation", "code=a&date=gt2013", [][]fhir.Term{{term("code", "c:a")}}, false},
		{"exact and not exact", "Patient", "gender=female&family:contains=x", [][]fhir.Term{{term("gender", "c:female")}}, false},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			q := parseQuery(t, test.typ, test.query)
			if diff := cmp.Diff(test.want, q.Candidates()); diff != "" {
				t.Errorf("Candidates (-want +got):\n%s", diff)
			}
			if got := q.Exact(); got != test.wantExact {
				t.Errorf("Exact = %v, want %v", got, test.wantExact)
			}
		})
	}
}

func TestSortValue(t *testing.T) {
	doc := func(lastUpdated, effective string) map[string]any {
		return decode(t, `{"resourceType": "Observation", "id": "o", "meta": {"lastUpdated": "`+lastUpdated+`"}, "effectiveDateTime": "`+effective+`"}`)
	}
	lu := fhir.SortKey{Name: "_lastUpdated"}
	date := fhir.SortKey{Name: "date", Param: testParams["Observation"]["date"]}
	dateDesc := fhir.SortKey{Name: "date", Desc: true, Param: date.Param}
	tests := []struct {
		name          string
		key           fhir.SortKey
		first, second map[string]any // first must sort before second, ascending
	}{
		{"lastUpdated whole second before its fraction", lu, doc("2024-01-01T10:00:00.000Z", "2013"), doc("2024-01-01T10:00:00.250Z", "2013")},
		{"lastUpdated millis", lu, doc("2024-01-01T10:00:00.050Z", "2013"), doc("2024-01-01T10:00:00.100Z", "2013")},
		{"lastUpdated seconds", lu, doc("2024-01-01T10:00:00.900Z", "2013"), doc("2024-01-01T10:00:01.000Z", "2013")},
		{"date", date, doc("2024-01-01T10:00:00.000Z", "2013-01-02"), doc("2024-01-01T10:00:00.000Z", "2013-01-03")},
		{"date dateTime", date, doc("2024-01-01T10:00:00.000Z", "2013-01-02T10:00:00Z"), doc("2024-01-01T10:00:00.000Z", "2013-01-02T10:00:00.5Z")},
		{"date descending", dateDesc, doc("2024-01-01T10:00:00.000Z", "2013-01-02"), doc("2024-01-01T10:00:00.000Z", "2013-01-03")},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			a, b := fhir.SortValue(test.first, test.key, testBase), fhir.SortValue(test.second, test.key, testBase)
			if a == "" || b == "" || !(a < b) {
				t.Errorf("SortValue: %q, %q; want the first less than the second", a, b)
			}
		})
	}
}

// The R4 examples slot-example and schedule-example (as in
// testdata/conformance/r4-examples), communication-example and
// subscription-example, without their narrative.
const (
	slotDoc = `{"resourceType": "Slot", "id": "example",
	  "serviceCategory": [{"coding": [{"code": "17", "display": "General Practice"}]}],
	  "serviceType": [{"coding": [{"code": "57", "display": "Immunization"}]}],
	  "specialty": [{"coding": [{"code": "408480009", "display": "Clinical immunology"}]}],
	  "appointmentType": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0276", "code": "WALKIN", "display": "A previously unscheduled walk-in visit"}]},
	  "schedule": {"reference": "Schedule/example"},
	  "status": "free",
	  "start": "2013-12-25T09:15:00Z",
	  "end": "2013-12-25T09:30:00Z",
	  "comment": "Assessments should be performed before requesting appointments in this slot."}`
	scheduleDoc = `{"resourceType": "Schedule", "id": "example",
	  "identifier": [{"use": "usual", "system": "http://example.org/scheduleid", "value": "45"}],
	  "active": true,
	  "serviceCategory": [{"coding": [{"code": "17", "display": "General Practice"}]}],
	  "serviceType": [{"coding": [{"code": "57", "display": "Immunization"}]}],
	  "specialty": [{"coding": [{"code": "408480009", "display": "Clinical immunology"}]}],
	  "actor": [{"reference": "Location/1", "display": "Burgers UMC, South Wing, second floor"}],
	  "planningHorizon": {"start": "2013-12-25T09:15:00Z", "end": "2013-12-25T09:30:00Z"},
	  "comment": "The slots attached to this schedule should be specialized to cover immunizations within the clinic"}`
	communicationDoc = `{"resourceType": "Communication", "id": "example",
	  "identifier": [{"type": {"text": "Paging System"}, "system": "urn:oid:1.3.4.5.6.7", "value": "2345678901"}],
	  "instantiatesUri": ["http://example.org/hyperkalemia"],
	  "partOf": [{"display": "Serum Potassium Observation"}],
	  "status": "completed",
	  "category": [{"coding": [{"system": "http://acme.org/messagetypes", "code": "Alert"}], "text": "Alert"}],
	  "medium": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode", "code": "WRITTEN", "display": "written"}], "text": "written"}],
	  "subject": {"reference": "Patient/example"},
	  "encounter": {"reference": "Encounter/example"},
	  "sent": "2014-12-12T18:01:10-08:00",
	  "received": "2014-12-12T18:01:11-08:00",
	  "recipient": [{"reference": "Practitioner/example"}],
	  "sender": {"reference": "Device/f001"},
	  "payload": [{"contentString": "Patient 1 has a very high serum potassium value (7.2 mmol/L on 2014-Dec-12 at 5:55 pm)"}]}`
	subscriptionDoc = `{"resourceType": "Subscription", "id": "example",
	  "status": "requested",
	  "contact": [{"system": "phone", "value": "ext 4123"}],
	  "end": "2021-01-01T00:00:00Z",
	  "reason": "Monitor new neonatal function",
	  "criteria": "Observation?code=http://loinc.org|1975-2",
	  "channel": {"type": "rest-hook", "endpoint": "https://biliwatch.com/customers/mount-auburn-miu/on-result",
	    "payload": "application/fhir+json", "header": ["Authorization: Bearer secret-token-abc-123"]}}`
)

func TestMatchesSchedulingAndMessaging(t *testing.T) {
	runMatchTests(t, []matchTest{
		{"Slot schedule, status and start", "Slot", slotDoc, "schedule=Schedule/example&status=free&start=ge2013-12-25", true},
		{"Slot status system|code", "Slot", slotDoc, "status=http://hl7.org/fhir/slotstatus|free", true},
		{"Slot other status", "Slot", slotDoc, "schedule=Schedule/example&status=busy", false},
		{"Slot start after", "Slot", slotDoc, "start=ge2026-01-01", false},
		{"Slot start instant", "Slot", slotDoc, "start=2013-12-25T09:15:00Z", true},
		{"Slot other schedule", "Slot", slotDoc, "schedule=Schedule/other", false},
		{"Slot appointment-type", "Slot", slotDoc, "appointment-type=http://terminology.hl7.org/CodeSystem/v2-0276|WALKIN", true},
		{"Slot service-category, service-type, specialty", "Slot", slotDoc, "service-category=17&service-type=57&specialty=408480009", true},

		{"Schedule actor and active", "Schedule", scheduleDoc, "actor=Location/1&active=true", true},
		{"Schedule date within planningHorizon", "Schedule", scheduleDoc, "date=2013-12-25", true},
		{"Schedule date outside planningHorizon", "Schedule", scheduleDoc, "date=2013-12-26", false},
		{"Schedule identifier", "Schedule", scheduleDoc, "identifier=http://example.org/scheduleid|45", true},
		{"Schedule specialty", "Schedule", scheduleDoc, "specialty=408480009&service-type=57&service-category=17", true},

		{"Communication sender and recipient", "Communication", communicationDoc, "sender=Device/f001&recipient=Practitioner/example", true},
		{"Communication other recipient", "Communication", communicationDoc, "recipient=Practitioner/other", false},
		{"Communication patient", "Communication", communicationDoc, "patient=example&subject=Patient/example", true},
		{"Communication status", "Communication", communicationDoc, "status=http://hl7.org/fhir/event-status|completed", true},
		{"Communication other status", "Communication", communicationDoc, "status=in-progress", false},
		{"Communication medium and category", "Communication", communicationDoc, "medium=WRITTEN&category=http://acme.org/messagetypes|Alert", true},
		{"Communication sent and received", "Communication", communicationDoc, "sent=ge2014-12-12&received=lt2014-12-14", true},
		{"Communication sent before", "Communication", communicationDoc, "sent=lt2014-12-01", false},
		{"Communication encounter and identifier", "Communication", communicationDoc, "encounter=Encounter/example&identifier=urn:oid:1.3.4.5.6.7|2345678901", true},
		{"Communication instantiates-uri", "Communication", communicationDoc, "instantiates-uri=http://example.org/hyperkalemia", true},

		{"Subscription status and type", "Subscription", subscriptionDoc, "status=requested&type=rest-hook", true},
		{"Subscription type system|code", "Subscription", subscriptionDoc, "type=http://hl7.org/fhir/subscription-channel-type|rest-hook", true},
		{"Subscription other type", "Subscription", subscriptionDoc, "type=websocket", false},
		{"Subscription other status", "Subscription", subscriptionDoc, "status=active", false},
		{"Subscription url", "Subscription", subscriptionDoc, "url=https://biliwatch.com/customers/mount-auburn-miu/on-result", true},
		{"Subscription payload", "Subscription", subscriptionDoc, "payload=application/fhir%2Bjson", true},
		{"Subscription criteria", "Subscription", subscriptionDoc, "criteria=observation", true},
		{"Subscription contact", "Subscription", subscriptionDoc, "contact=ext%204123", true},
	})
}
