package fhir

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// The package's own JSON passes (jsontext.go, checks.go, Encode) replaced
// encoding/json passes; these tests hold them to what those did. The
// reference implementations below are the replaced code.

func refDecode(body []byte) (map[string]any, []field, error) {
	fields, err := topLevel(body)
	if err != nil {
		return nil, nil, err
	}
	doc, err := decodeDoc(body)
	return doc, fields, err
}

// jsonCorpus is every JSON file of the conformance and fuzz seed data,
// and hand-made edge cases.
func jsonCorpus(t testing.TB) [][]byte {
	var out [][]byte
	for _, pat := range []string{"../testdata/conformance/*/*.json", "testdata/fuzzseeds/*/*.json"} {
		files, _ := filepath.Glob(pat)
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, b)
		}
	}
	if len(out) < 50 {
		t.Fatalf("corpus has only %d files", len(out))
	}
	for _, s := range edgeJSON {
		out = append(out, []byte(s))
	}
	return out
}

var edgeJSON = []string{
	``, ` `, `{`, `}`, `{}`, ` {} `, `{} {}`, `{}x`, `[]`, `"x"`, `1`, `null`,
	`{"a":1,"a":2}`, `{"a":1,"\u0061":2}`, `{"a":{"b":1,"b":2}}`, `{"\xff":1,"\xfe":2}`,
	`{"a":01}`, `{"a":-}`, `{"a":1.}`, `{"a":.5}`, `{"a":+1}`, `{"a":1e}`, `{"a":1e+}`, `{"a":-0.0e-0}`,
	`{"a":1E+10,"b":-12.5e3,"c":0,"d":-0}`, `{"a":tru}`, `{"a":truex}`, `{"a":nul}`, `{"a":[1,]}`, `{"a":1,}`,
	`{"a":[,1]}`, `{,}`, `{"a" 1}`, `{"a":1 "b":2}`, `{"a":"\'"}`, `{"a":"\x01"}`, `{"a":"\t"}`,
	`{"a":"\"\\\/\b\f\n\r\t"}`, `{"a":"\u00e9\u0000\uFFFF"}`, `{"a":"\ud83d\ude00"}`, `{"a":"\ud83d"}`,
	`{"a":"\ud83dx"}`, `{"a":"\ud83d\u0041"}`, `{"a":"\ude00\ud83d"}`, `{"a":"\ud83d\ud83d\ude00"}`,
	`{"a":"\u12"}`, `{"a":"\u12g4"}`, `{"a":"\x"}`, "{\"a\":\"\xff\xfe\"}", "{\"a\":\"caf\xc3\xa9\"}",
	"{\"a\":\"\xe2\x80\xa8<>&\"}", "{\"a\":\"\xed\xa0\x80\"}", "{\"a\":\"\xf4\x90\x80\x80\"}",
	`{"a":"unterminated}`, `{"a":[[[[[]]]]],"b":{"c":{"d":{}}}}`, "\t\n\r {\"a\" :\t[ 1 , 2 ] }\n",
	`{"resourceType":null}`, `{"resourceType":1}`, `{"resourceType":"Patient","resourceType":"Patient"}`,
	strings.Repeat("[", 600) + strings.Repeat("]", 600),
	`{"a":` + strings.Repeat("[", 600) + strings.Repeat("]", 600) + `}`,
	`{"a":` + strings.Repeat(`{"b":`, 11000) + `1` + strings.Repeat("}", 11000) + `}`,
}

func TestDecodeObjectMatchesEncodingJSON(t *testing.T) {
	for i, b := range jsonCorpus(t) {
		checkDecode(t, fmt.Sprintf("corpus[%d]", i), b)
	}
}

func checkDecode(t *testing.T, name string, b []byte) {
	t.Helper()
	doc, fields, err := decodeObject(b)
	wdoc, wfields, werr := refDecode(b)
	if (err == nil) != (werr == nil) {
		t.Fatalf("%s: err %v, encoding/json %v", name, err, werr)
	}
	if err != nil {
		if err.Error() != werr.Error() {
			t.Errorf("%s: error %q, encoding/json %q", name, err, werr)
		}
		return
	}
	if !reflect.DeepEqual(doc, wdoc) {
		t.Errorf("%s: doc differs:\n%#v\n%#v", name, doc, wdoc)
	}
	if len(fields) != len(wfields) {
		t.Fatalf("%s: %d fields, encoding/json %d", name, len(fields), len(wfields))
	}
	for i := range fields {
		if fields[i].name != wfields[i].name {
			t.Errorf("%s: field %d is %q, encoding/json %q", name, i, fields[i].name, wfields[i].name)
		}
		var c1, c2 bytes.Buffer
		json.Compact(&c1, fields[i].raw)
		json.Compact(&c2, wfields[i].raw)
		if !bytes.Equal(c1.Bytes(), c2.Bytes()) || !bytes.Equal(appendCompact(nil, fields[i].raw), c2.Bytes()) {
			t.Errorf("%s: field %q raw %s, encoding/json %s", name, fields[i].name, fields[i].raw, wfields[i].raw)
		}
	}
	if v, err := decodeValue(b); err != nil || !reflect.DeepEqual(v, wdoc) {
		t.Errorf("%s: decodeValue differs (%v)", name, err)
	}
}

func FuzzDecodeObject(f *testing.F) {
	for _, b := range jsonCorpus(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkDecode(t, "fuzz", b)
		if doc, _, err := decodeObject(b); err == nil {
			checkWriters(t, doc)
		}
	})
}

func refJSONString(s string) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(s)
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

// checkWriters holds the writers to encoding/json on a document's strings
// and values.
func checkWriters(t *testing.T, doc map[string]any) {
	t.Helper()
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case string:
			if got, want := appendJSONString(nil, x, false), refJSONString(x); !bytes.Equal(got, want) {
				t.Errorf("appendJSONString(%q) = %s, want %s", x, got, want)
			}
		case map[string]any:
			for k, e := range x {
				walk(k)
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(doc)
	got, err := appendJSONValue(nil, doc, true)
	want, werr := json.Marshal(doc)
	if err != nil || werr != nil || !bytes.Equal(got, want) {
		t.Errorf("appendJSONValue = %s (%v), json.Marshal %s (%v)", got, err, want, werr)
	}
	var c bytes.Buffer
	enc := json.NewEncoder(&c)
	enc.SetEscapeHTML(false)
	enc.Encode(doc)
	got, _ = appendJSONValue(nil, doc, false)
	if !bytes.Equal(got, bytes.TrimSuffix(c.Bytes(), []byte("\n"))) {
		t.Errorf("appendJSONValue without escaping = %s, want %s", got, c.Bytes())
	}
	raw, _ := json.MarshalIndent(doc, "", "  ")
	got = appendCompactEscaped(nil, raw)
	if want, _ := json.Marshal(json.RawMessage(raw)); !bytes.Equal(got, want) {
		t.Errorf("appendCompactEscaped = %s, want %s", got, want)
	}
}

func TestWritersMatchEncodingJSON(t *testing.T) {
	strs := []string{"", "plain", "<a href=\"x\">&amp;</a>", "\x00\x01\x07\b\f\n\r\t\x1f\x7f", "\\", "\xff", "caf\xc3\xa9",
		"\xe2\x80\xa8\xe2\x80\xa9", "\xed\xa0\x80", "😀", "\xf0\x9f\x98", "a\u2028b"}
	for _, s := range strs {
		checkWriters(t, map[string]any{s: s, "list": []any{s, true, false, nil, json.Number("-1.50e3")}})
	}
	for i, b := range jsonCorpus(t) {
		if doc, _, err := decodeObject(b); err == nil {
			t.Run(fmt.Sprint(i), func(t *testing.T) { checkWriters(t, doc) })
		}
	}
}

// refChecks is what Parse checked before checkDoc: three walks.
func refChecks(rt string, doc map[string]any) []Issue {
	out := refNarratives(rt, doc)
	out = append(out, refJSONRules(rt, doc)...)
	refPeriods(rt, doc, &out)
	return append(out, typeInvariants(rt, doc)...)
}

func refJSONRules(rt string, doc map[string]any) []Issue {
	var out []Issue
	lastSeg := func(path string) string {
		if i := strings.LastIndexByte(path, '.'); i >= 0 {
			return path[i+1:]
		}
		return path
	}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch t := v.(type) {
		case nil:
			out = append(out, Issue{Severity: SeverityError, Code: CodeStructure, Expression: path, Details: "null is not allowed in FHIR JSON"})
		case []any:
			if len(t) == 0 {
				out = append(out, Issue{Severity: SeverityError, Code: CodeStructure, Expression: path, Details: "empty arrays are not allowed in FHIR JSON"})
			}
			for i, e := range t {
				if e == nil && strings.HasPrefix(lastSeg(path), "_") {
					continue
				}
				walk(fmt.Sprintf("%s[%d]", path, i), e)
			}
		case map[string]any:
			if len(t) == 0 {
				out = append(out, Issue{Severity: SeverityError, Code: CodeStructure, Expression: path, Details: "empty objects are not allowed in FHIR JSON"})
			}
			for k, e := range t {
				if k == "resourceType" {
					continue
				}
				walk(path+"."+k, e)
			}
		}
	}
	for k, v := range doc {
		walk(rt+"."+k, v)
	}
	return out
}

func refNarratives(rt string, doc map[string]any) []Issue {
	var out []Issue
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch t := v.(type) {
		case []any:
			for i, e := range t {
				walk(fmt.Sprintf("%s[%d]", path, i), e)
			}
		case map[string]any:
			for k, e := range t {
				if k == "text" {
					if m, ok := e.(map[string]any); ok {
						if div, ok := m["div"].(string); ok {
							for _, ni := range CheckNarrative(div) {
								out = append(out, Issue{Severity: SeverityError, Code: CodeInvariant, Expression: path + ".text.div", Details: "narrative violates " + ni.Rule + ": " + ni.Detail})
							}
							continue
						}
					}
				}
				walk(path+"."+k, e)
			}
		}
	}
	walk(rt, doc)
	return out
}

func refPeriods(path string, v any, out *[]Issue) {
	switch t := v.(type) {
	case []any:
		for i, e := range t {
			refPeriods(fmt.Sprintf("%s[%d]", path, i), e, out)
		}
	case map[string]any:
		if _, isResource := t["resourceType"]; !isResource || strings.Contains(path, ".") {
			start, hasS := t["start"].(string)
			end, hasE := t["end"].(string)
			if hasS && hasE && isPeriod(t) {
				sl, sh, ok1 := ParseDate(start)
				el, eh, ok2 := ParseDate(end)
				samePrecision := sh.Sub(sl) == eh.Sub(el)
				if ok1 && ok2 && (sl.After(el) || (!samePrecision && sh.After(el))) {
					*out = append(*out, invariant(path, "per-1", "if present, start SHALL have a lower value than end"))
				}
			}
		}
		for k, e := range t {
			refPeriods(path+"."+k, e, out)
		}
	}
}

func sortedIssues(is []Issue) []string {
	var out []string
	for _, i := range is {
		out = append(out, fmt.Sprintf("%s|%s|%s|%s", i.Severity, i.Code, i.Expression, i.Details))
	}
	slices.Sort(out)
	return out
}

// checkDocCases are documents that break the rules checkDoc walks for.
var checkDocCases = []string{
	`{"resourceType":"Patient","a":null,"b":[],"c":{},"_given":[null,{"x":null}],"given":[null],"d":[[]],"_e":[[null]]}`,
	`{"resourceType":"Patient","text":{"status":"generated","div":"<p>no</p>","x":{"text":{"div":"<b/>"}}},"contained":[{"resourceType":"Observation","text":{"div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"><script/></div>"},"resourceType2":null}]}`,
	`{"resourceType":"Encounter","period":{"start":"2020-02-01","end":"2020-01-01"},"x":[{"start":"2020","end":"2019","id":"p"}],"contained":[{"resourceType":"Basic","start":"2021","end":"2020"}]}`,
	`{"resourceType":"Basic","start":"2021","end":"2020","contained":[{"resourceType":{},"x":{"resourceType":[]}},{"resourceType":null}]}`,
	`{"resourceType":"Basic","a.b":{"_c.d":[null],"_e.f":[null],"g._h":[null,[]]}}`,
	`{"resourceType":"Bundle","type":"document","entry":[{"fullUrl":"x","resource":{"resourceType":"Patient","text":{"div":"bad"}}},{"fullUrl":"x"}],"link":[{"relation":"self"},{"relation":"self"}]}`,
	`{"resourceType":"RiskAssessment","prediction":[{"probabilityDecimal":101}]}`,
	`{"resourceType":"Appointment","start":"2020-01-01T10:00:00Z","status":"booked"}`,
}

func TestCheckDocMatchesPreviousChecks(t *testing.T) {
	docs := map[string]map[string]any{}
	for i, b := range jsonCorpus(t) {
		if doc, _, err := decodeObject(b); err == nil {
			docs[fmt.Sprint("corpus ", i)] = doc
		}
	}
	for i, s := range checkDocCases {
		doc, _, err := decodeObject([]byte(s))
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		docs[fmt.Sprint("case ", i)] = doc
	}
	found := 0
	for name, doc := range docs {
		rt, _ := doc["resourceType"].(string)
		got, want := sortedIssues(checkDoc(rt, doc)), sortedIssues(refChecks(rt, doc))
		if !slices.Equal(got, want) {
			t.Errorf("%s: checkDoc\n%s\nwant\n%s", name, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		found += len(got)
	}
	if found < 20 {
		t.Errorf("only %d issues found: the cases do not exercise the checks", found)
	}
}

// refEncode is Encode before it wrote JSON itself.
func refEncode(r *Resource, m Meta) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(`{"resourceType":`)
	b.Write(refJSONString(r.Type))
	b.WriteString(`,"id":`)
	b.Write(refJSONString(m.ID))
	meta := map[string]json.RawMessage{}
	for _, f := range r.fields {
		if f.name == "meta" {
			if err := json.Unmarshal(f.raw, &meta); err != nil {
				return nil, fmt.Errorf("meta: %w", err)
			}
		}
	}
	meta["versionId"], _ = json.Marshal(m.VersionID)
	meta["lastUpdated"], _ = json.Marshal(FormatInstant(m.LastUpdated))
	mb, err := json.Marshal(meta)
	if err != nil {
		return nil, err
	}
	b.WriteString(`,"meta":`)
	b.Write(mb)
	for _, f := range r.fields {
		switch f.name {
		case "resourceType", "id", "meta":
			continue
		}
		b.WriteByte(',')
		b.Write(refJSONString(f.name))
		b.WriteByte(':')
		if err := json.Compact(&b, f.raw); err != nil {
			return nil, err
		}
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

func TestEncodeMatchesPrevious(t *testing.T) {
	bodies := jsonCorpus(t)
	bodies = append(bodies,
		[]byte(`{"resourceType":"Patient","meta":{"profile":["http://x/<a>&\u2028"],"versionId":"9","tag":[{"code":"a b"}] , "security" : [ ]},"id":"old","name":[{"family":"é\u00e9"}]}`),
		[]byte(`{"resourceType":"Patient","meta":{"a":1,"a":2}}`),
		[]byte("{\"resourceType\":\"Patient\",\"meta\":{\"source\":\"\xe2\x80\xa8\"}}"))
	n := 0
	for i, b := range bodies {
		r, err := Trusted(b)
		if err != nil {
			continue
		}
		if _, ok := r.Doc["meta"].(map[string]any); r.Doc["meta"] != nil && !ok {
			continue // not an object: Parse rejects it
		}
		m := Meta{ID: "new-id", VersionID: "3", LastUpdated: testTime}
		want, werr := refEncode(r, m)
		got, err := r.Encode(m)
		if (err == nil) != (werr == nil) || !bytes.Equal(got, want) {
			t.Errorf("body %d: Encode = %s (%v)\nwant %s (%v)", i, got, err, want, werr)
		}
		n++
	}
	if n < 50 {
		t.Errorf("only %d bodies encoded", n)
	}
}

func TestGeneratedEncodesLikeMarshal(t *testing.T) {
	doc := map[string]any{"resourceType": "AuditEvent", "type": map[string]any{"code": "rest"},
		"outcomeDesc": "200 OK <&>", "agent": []any{map[string]any{"requestor": true}}}
	body, _ := json.Marshal(doc)
	want, err := Trusted(body)
	if err != nil {
		t.Fatal(err)
	}
	m := Meta{ID: "a1", VersionID: "1", LastUpdated: testTime}
	wb, _ := want.Encode(m)
	g := Generated(doc)
	gb, err := g.Encode(m)
	if err != nil || !bytes.Equal(gb, wb) {
		t.Errorf("Generated Encode = %s (%v), want %s", gb, err, wb)
	}
	if !reflect.DeepEqual(g.Doc, want.Doc) {
		t.Errorf("Generated Doc = %v, want %v", g.Doc, want.Doc)
	}
	if err := g.Set("status", "x"); err != nil || !bytes.Contains(must(g.Encode(m)), []byte(`"status":"x"`)) {
		t.Errorf("Set on a generated resource is lost (%v)", err)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

var testTime = time.Date(2026, 11, 22, 1, 2, 3, 456000000, time.UTC)
