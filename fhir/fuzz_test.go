package fhir_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/fhir"
	"google.golang.org/protobuf/proto"
)

// fuzzSeedDir holds the seed resources (copies of /work/shared/testdata
// files; see its README) and query strings of the fuzz targets.
const fuzzSeedDir = "testdata/fuzzseeds"

// fuzzResources returns the seed resources: valid/ and invalid/.
func fuzzResources(f *testing.F) map[string][]byte {
	f.Helper()
	files, err := filepath.Glob(filepath.Join(fuzzSeedDir, "*", "*.json"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no seed resources in %s: %v", fuzzSeedDir, err)
	}
	out := map[string][]byte{}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		out[name] = b
	}
	return out
}

// FuzzParse parses arbitrary bytes as a resource, with and without strict
// reference types. A failure must be a *fhir.Error with a 4xx status and
// issues whose Error text (which is logged) holds no string or number of
// the body: that is checked on a copy of the body with every value
// replaced by a canary. A success must be deterministic (same resource,
// proto message, document and warnings); the resource it gives must
// encode (Encode) to a body that parses to the same document and encodes
// to the same bytes again.
func FuzzParse(f *testing.F) {
	for name, b := range fuzzResources(f) {
		f.Add(b, strings.Contains(name, "invalid"))
	}
	f.Fuzz(func(t *testing.T, data []byte, strict bool) {
		opts := fhir.ParseOptions{StrictReferenceTypes: strict}
		r, err := fhir.Parse(data, opts)
		if err != nil {
			checkFHIRError(t, err, 400, 499)
		}
		checkParseCanary(t, data, opts)
		if k := upperCamelMember(data); k != "" && err == nil {
			// google/fhir would take "Id" for "id" (testdata/fuzz/FuzzParse/upper-camel-*).
			t.Fatalf("member %q (no R4 element starts upper-case) was accepted", k)
		}
		r2, err2 := fhir.Parse(data, opts)
		if err != nil {
			fe := checkFHIRError(t, err, 400, 499)
			fe2, ok := err2.(*fhir.Error)
			if !ok || fe2.Status != fe.Status || !slices.Equal(issueKeys(fe.Issues), issueKeys(fe2.Issues)) {
				t.Fatalf("Parse fails differently on the same body:\n%v\n%v", err, err2)
			}
		} else {
			if err2 != nil {
				t.Fatalf("Parse succeeded, then failed on the same body: %v", err2)
			}
			checkResource(t, data, r, r2, opts)
		}
	})
}

// upperCamelMember returns a member name of the JSON document data, at
// any depth, that starts (after an optional "_") with an upper-case
// letter: R4 has no such element.
func upperCamelMember(data []byte) string {
	dec := json.NewDecoder(bytes.NewReader(bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))))
	var doc any
	if dec.Decode(&doc) != nil {
		return ""
	}
	var walk func(v any) string
	walk = func(v any) string {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				if n := strings.TrimPrefix(k, "_"); n != "" && n[0] >= 'A' && n[0] <= 'Z' {
					return k
				}
				if k := walk(e); k != "" {
					return k
				}
			}
		case []any:
			for _, e := range v {
				if k := walk(e); k != "" {
					return k
				}
			}
		}
		return ""
	}
	return walk(doc)
}

// checkFHIRError checks err is a *fhir.Error with a status in [lo, hi] and
// well-formed issues.
func checkFHIRError(t *testing.T, err error, lo, hi int) *fhir.Error {
	t.Helper()
	fe, ok := err.(*fhir.Error)
	if !ok {
		t.Fatalf("error %T %v, want a *fhir.Error", err, err)
	}
	if fe.Status < lo || fe.Status > hi {
		t.Fatalf("status %d, want %d..%d: %v", fe.Status, lo, hi, fe)
	}
	if len(fe.Issues) == 0 {
		t.Fatalf("an error without issues: %v", fe)
	}
	for _, is := range fe.Issues {
		if is.Code == "" || (is.Severity != fhir.SeverityError && is.Severity != fhir.SeverityFatal) {
			t.Fatalf("issue %+v: want an error or fatal severity and a code", is)
		}
	}
	return fe
}

// issueKeys are the issues as sorted strings: the order of the issues
// of one body may vary (documents are maps), not the issues.
func issueKeys(is []fhir.Issue) []string {
	out := make([]string, len(is))
	for i, x := range is {
		out[i] = fmt.Sprintf("%s|%s|%s|%s|%s", x.Severity, x.Code, x.Expression, x.Details, x.Diagnostics)
	}
	sort.Strings(out)
	return out
}

var fuzzMeta = fhir.Meta{VersionID: "1", LastUpdated: time.Date(2026, 11, 22, 1, 2, 3, 456000000, time.UTC)}

func checkResource(t *testing.T, data []byte, r, r2 *fhir.Resource, opts fhir.ParseOptions) {
	t.Helper()
	if !fhir.IsResourceType(r.Type) {
		t.Fatalf("parsed a %q", r.Type)
	}
	if r.Msg == nil || r.Doc == nil {
		t.Fatal("no message or document")
	}
	if rt, _ := r.Doc["resourceType"].(string); rt != r.Type {
		t.Fatalf("Type %q, document resourceType %q", r.Type, rt)
	}
	if id, _ := r.Doc["id"].(string); id != r.ID {
		t.Fatalf("ID %q, document id %q", r.ID, id)
	}
	if r.Type != r2.Type || r.ID != r2.ID || !reflect.DeepEqual(r.Doc, r2.Doc) || !proto.Equal(r.Msg, r2.Msg) ||
		!slices.Equal(issueKeys(r.Warnings), issueKeys(r2.Warnings)) {
		t.Fatalf("Parse is not deterministic:\n%+v\n%+v", r, r2)
	}
	m := fuzzMeta
	m.ID = r.ID
	if m.ID == "" {
		m.ID = "fz1"
	}
	enc, err := r.Encode(m)
	if err != nil {
		t.Fatalf("Encode: %v", err)
	}
	again, err := fhir.Parse(enc, opts)
	if err != nil {
		t.Fatalf("the encoded resource does not parse: %v\n%s", err, enc)
	}
	if again.Type != r.Type || again.ID != m.ID {
		t.Fatalf("encoded %s/%s parses as %s/%s", r.Type, m.ID, again.Type, again.ID)
	}
	// Encode set id and meta in r.Doc.
	if !reflect.DeepEqual(again.Doc, r.Doc) {
		t.Fatalf("the encoded resource has another document:\n%#v\n%#v\n%s", r.Doc, again.Doc, enc)
	}
	enc2, err := again.Encode(m)
	if err != nil || !bytes.Equal(enc, enc2) {
		t.Fatalf("encoding the encoded resource again: %v\n%s\n%s", err, enc, enc2)
	}
}

// Canaries stand for PHI in the copy of a body checkParseCanary parses.
const (
	canary    = "Zq9PHIcanary"
	canaryNum = "73197319.7319"
)

// checkParseCanary parses data (a JSON object) with every string value
// but resourceType replaced by the canary string and every number by the
// canary number; a failure's Error text must hold neither.
func checkParseCanary(t *testing.T, data []byte, opts fhir.ParseOptions) {
	t.Helper()
	if bytes.Contains(data, []byte("Zq9")) || bytes.Contains(data, []byte("7319")) {
		return
	}
	dec := json.NewDecoder(bytes.NewReader(bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))))
	dec.UseNumber()
	var doc map[string]any
	if dec.Decode(&doc) != nil {
		return
	}
	var replace func(key string, v any) any
	replace = func(key string, v any) any {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				v[k] = replace(k, e)
			}
		case []any:
			for i, e := range v {
				v[i] = replace(key, e)
			}
		case string:
			if key != "resourceType" {
				return canary
			}
		case json.Number:
			return json.Number(canaryNum)
		}
		return v
	}
	replace("", doc)
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	_, err = fhir.Parse(b, opts)
	if err == nil {
		return
	}
	fe := checkFHIRError(t, err, 400, 499)
	if msg := fe.Error(); strings.Contains(msg, "Zq9") || strings.Contains(msg, "7319") {
		t.Fatalf("the error of a body holding canaries holds one: %s\nbody %s", msg, b)
	}
}

// fuzzQueryTypes are the types with search parameters of their own; a
// fuzzed type that is not a resource type is mapped to one of them.
var fuzzQueryTypes = []string{"Appointment", "AuditEvent", "Communication", "Consent", "Encounter", "Observation",
	"Patient", "Practitioner", "PractitionerRole", "Schedule", "Slot", "Subscription", "Provenance"}

const fuzzBase = "http://fhir.example.org/fhir"

var (
	fuzzDocsOnce sync.Once
	fuzzDocs     []map[string]any
)

// fuzzQueryDocs are the valid seed resources, decoded, to match queries
// against.
func fuzzQueryDocs(f *testing.F) []map[string]any {
	fuzzDocsOnce.Do(func() {
		files, _ := filepath.Glob(filepath.Join(fuzzSeedDir, "valid", "*.json"))
		for _, name := range files {
			b, err := os.ReadFile(name)
			if err != nil {
				continue
			}
			if doc, err := fhir.DecodeStored(b); err == nil {
				fuzzDocs = append(fuzzDocs, doc)
			}
		}
	})
	if len(fuzzDocs) == 0 {
		f.Fatal("no seed resources to match queries against")
	}
	return fuzzDocs
}

// FuzzParseQuery parses a search's query string (as url.ParseQuery reads
// it) for a type, strictly or leniently. A failure must be a *fhir.Error
// with status 400 whose issues hold no value of the query, for the
// parameters whose values may be PHI. A success must be deterministic,
// hold only values the registry defines, with finite numbers and date
// ranges that are not empty; its Canonical form must parse to the same
// query; and Candidates, Exact, Matches and SortValue must not panic.
//
// Seeds: testdata/fuzzseeds/queries.txt, and testdata/fuzz/FuzzParseQuery.
func FuzzParseQuery(f *testing.F) {
	fh, err := os.Open(filepath.Join(fuzzSeedDir, "queries.txt"))
	if err != nil {
		f.Fatal(err)
	}
	sc := bufio.NewScanner(fh)
	n := 0
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		typ, q, _ := strings.Cut(line, "?")
		f.Add(typ, q, n%2 == 1)
		n++
	}
	fh.Close()
	if err := sc.Err(); err != nil || n == 0 {
		f.Fatalf("no query seeds: %v", err)
	}
	reg := fhir.DefaultParams()
	docs := fuzzQueryDocs(f)
	f.Fuzz(func(t *testing.T, typ, rawQuery string, lenient bool) {
		if !fhir.IsResourceType(typ) {
			typ = fuzzQueryTypes[len(typ)%len(fuzzQueryTypes)]
		}
		vals, _ := url.ParseQuery(rawQuery)
		q, err := fhir.ParseQuery(typ, vals, reg, fuzzBase, lenient)
		q2, err2 := fhir.ParseQuery(typ, vals, reg, fuzzBase, lenient)
		if err != nil {
			fe := checkFHIRError(t, err, 400, 400)
			if err2 == nil || err2.Error() != err.Error() {
				t.Fatalf("ParseQuery fails differently on the same query:\n%v\n%v", err, err2)
			}
			checkQueryErrorPHI(t, fe, vals)
			return
		}
		if err2 != nil {
			t.Fatalf("ParseQuery succeeded, then failed on the same query: %v", err2)
		}
		if a, b := fmt.Sprintf("%#v", *q), fmt.Sprintf("%#v", *q2); a != b {
			t.Fatalf("ParseQuery is not deterministic:\n%s\n%s", a, b)
		}
		if lenient && len(vals["_sort"]) == 1 && slices.Contains(q.Ignored, "_sort") && len(q.Sort) > 0 {
			// An ignored _sort is left out of Canonical: it must not sort
			// (testdata/fuzz/FuzzParseQuery/lenient-partial-sort). With
			// several _sort parameters, a valid one after an ignored one
			// applies (the canonical check below covers that case).
			t.Fatalf("an ignored _sort still sorts by %+v", q.Sort)
		}
		checkQuery(t, q, typ, reg)
		// The canonical query is the same search.
		q3, err := fhir.ParseQuery(typ, q.Canonical, reg, fuzzBase, lenient)
		if err != nil {
			t.Fatalf("the canonical query %q does not parse: %v", q.Canonical.Encode(), err)
		}
		q3.Offset, q3.Ignored = q.Offset, q.Ignored
		if a, b := fmt.Sprintf("%#v", *q), fmt.Sprintf("%#v", *q3); a != b {
			t.Fatalf("the canonical query %q parses to another query:\n%s\n%s", q.Canonical.Encode(), a, b)
		}
		q.Candidates()
		q.Exact()
		for _, doc := range docs {
			q.Matches(doc, fuzzBase)
			for _, k := range q.Sort {
				fhir.SortValue(doc, k, fuzzBase)
			}
		}
	})
}

func checkQuery(t *testing.T, q *fhir.Query, typ string, reg fhir.Params) {
	t.Helper()
	if q.Type != typ || q.Count < 0 || q.Offset < 0 {
		t.Fatalf("query %+v", q)
	}
	for _, c := range q.Clauses {
		if c.Param == nil || len(c.Values) == 0 {
			t.Fatalf("clause %+v", c)
		}
		if sp := reg[typ][c.Name]; sp != c.Param {
			t.Fatalf("clause %s has parameter %+v, the registry %+v", c.Name, c.Param, sp)
		}
		if c.Modifier == "missing" {
			continue
		}
		for _, v := range c.Values {
			switch c.Param.Type {
			case fhir.TypeDate:
				if !v.Lo.Before(v.Hi) {
					t.Fatalf("%s=%q: date range [%v, %v) is empty", c.Name, v.Raw, v.Lo, v.Hi)
				}
			case fhir.TypeNumber, fhir.TypeQuantity:
				if s := numberText(v.Raw); strings.Trim(s, "0123456789+-.eE") != "" {
					// NaN, Inf, hex floats (testdata/fuzz/FuzzParseQuery/nonfinite-*).
					t.Fatalf("%s=%q: %q is not a decimal, and was accepted (%v)", c.Name, v.Raw, s, v.Num)
				}
				if math.IsNaN(v.Num) || math.IsInf(v.Num, 0) || !(v.NumLo <= v.Num && v.Num <= v.NumHi) {
					t.Fatalf("%s=%q: number %v in [%v, %v]", c.Name, v.Raw, v.Num, v.NumLo, v.NumHi)
				}
			}
		}
	}
	for _, k := range q.Sort {
		if k.Param == nil && k.Name != fhir.ParamID && k.Name != fhir.ParamLastUpdated {
			t.Fatalf("sort key %+v", k)
		}
	}
}

// numberText is the number of a number or quantity search value: without
// its prefix, system and code.
func numberText(raw string) string {
	if len(raw) > 2 && strings.Contains("eq ne gt lt ge le sa eb ap", raw[:2]) && strings.ContainsRune("0123456789-.", rune(raw[2])) {
		raw = raw[2:]
	}
	s, _, _ := strings.Cut(raw, "|")
	return s
}

// checkQueryErrorPHI: the issues' Details (logged) hold no value of a
// search parameter (names, identifiers, dates: PHI), beyond what the
// query spells as parameter names: its keys (with modifiers) and the
// values of its result parameters (_sort, _include...).
func checkQueryErrorPHI(t *testing.T, fe *fhir.Error, vals url.Values) {
	t.Helper()
	var names []string
	for k, vs := range vals {
		names = append(names, k)
		if strings.HasPrefix(k, "_") {
			names = append(names, vs...)
		}
	}
	named := func(v string) bool {
		return slices.ContainsFunc(names, func(n string) bool { return strings.Contains(n, v) })
	}
	for _, is := range fe.Issues {
		for k, vs := range vals {
			if strings.HasPrefix(k, "_") {
				continue
			}
			for _, v := range vs {
				if len(v) >= 6 && strings.Contains(is.Details, v) && !named(v) {
					t.Fatalf("issue %q of %s holds its value %q", is.Details, k, v)
				}
			}
		}
	}
}
