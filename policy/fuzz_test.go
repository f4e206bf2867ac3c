package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/open-policy-agent/opa/v1/ast"
)

// FuzzNormalizeConsent turns arbitrary JSON into policy data as the
// gateway does for every stored Consent, and gives the data to an Engine.
//
// It checks that NormalizeConsent is deterministic; fails only for
// documents that are not Consents, with an error naming no value of the
// document but a resource type; returns well-formed data (Consent/ and
// Patient/ references, rules in provision order with a known type and
// condition kinds) whose OPA value is its JSON form; and that the Engine
// takes it and decides with it, deterministically, without an error,
// without changing decisions about another patient, and as before once it
// is removed.
//
// Seeds: testdata/Consent-*.json (the HL7 R4 examples),
// testdata/fuzzseeds/*.json and testdata/fuzz/FuzzNormalizeConsent.
func FuzzNormalizeConsent(f *testing.F) {
	for _, pattern := range []string{"testdata/Consent-*.json", "testdata/fuzzseeds/*.json"} {
		files, err := filepath.Glob(pattern)
		if err != nil || len(files) == 0 {
			f.Fatalf("no seeds %s: %v", pattern, err)
		}
		for _, name := range files {
			b, err := os.ReadFile(name)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	e, err := New(context.Background(), Config{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, useNumber := range []bool{false, true} {
			dec := json.NewDecoder(bytes.NewReader(data))
			if useNumber {
				dec.UseNumber()
			}
			var doc map[string]any
			if dec.Decode(&doc) != nil {
				return
			}
			checkNormalize(t, e, doc)
		}
	})
}

func checkNormalize(t *testing.T, e *Engine, doc map[string]any) {
	c, applies, err := NormalizeConsent("", doc)
	c2, applies2, err2 := NormalizeConsent("", doc)
	if !reflect.DeepEqual(c, c2) || applies != applies2 || (err == nil) != (err2 == nil) {
		t.Fatalf("NormalizeConsent is not deterministic:\n%+v %v %v\n%+v %v %v", c, applies, err, c2, applies2, err2)
	}
	rt, _ := doc["resourceType"].(string)
	if err != nil {
		if rt == "Consent" || applies {
			t.Fatalf("NormalizeConsent of a Consent: applies %v, error %v", applies, err)
		}
		checkNoValues(t, err.Error(), doc)
		return
	}
	if rt != "Consent" {
		t.Fatalf("NormalizeConsent of resourceType %q: no error", rt)
	}
	if !strings.HasPrefix(c.ID, "Consent/") {
		t.Fatalf("ID %q", c.ID)
	}
	if id, _ := doc["id"].(string); c.ID != "Consent/"+strings.TrimPrefix(id, "Consent/") {
		t.Fatalf("ID %q for document id %q", c.ID, id)
	}
	if c.Rules == nil {
		t.Fatal("Rules is nil: the policy would see null")
	}
	if !applies {
		if len(c.Rules) != 0 || c.Patient != "" {
			t.Fatalf("a consent that does not apply has data: %+v", c)
		}
		return
	}
	if typ, id, ok := splitRef(c.Patient); !ok || typ != "Patient" || c.Patient != typ+"/"+id {
		t.Fatalf("Patient %q is not Patient/id", c.Patient)
	}
	checkRules(t, c)
	// Another id given: the same data under that id.
	if c3, applies3, err := NormalizeConsent("Consent/fz", doc); err != nil || !applies3 || c3.ID != "Consent/fz" || !reflect.DeepEqual(c3.Rules, c.Rules) || c3.Patient != c.Patient {
		t.Fatalf("NormalizeConsent with an id: %+v, %v, %v", c3, applies3, err)
	}

	// The OPA value the store keeps is the consent's JSON form.
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	want, err := ast.ValueFromReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.value(); got.Compare(want) != 0 {
		t.Fatalf("value() =\n%v\nwant its JSON\n%v", got, want)
	}

	ctx := t.Context()
	inputs := fuzzInputs(c)
	before := decideAll(t, e, inputs)
	if err := e.PutConsent(ctx, c); err != nil {
		t.Fatalf("PutConsent: %v", err)
	}
	with := decideAll(t, e, inputs)
	if again := decideAll(t, e, inputs); !reflect.DeepEqual(with, again) {
		t.Fatalf("decisions are not deterministic:\n%+v\n%+v", with, again)
	}
	if err := e.RemoveConsent(ctx, c.ID); err != nil {
		t.Fatalf("RemoveConsent: %v", err)
	}
	after := decideAll(t, e, inputs)
	for i, in := range inputs {
		if !reflect.DeepEqual(before[i], after[i]) {
			t.Fatalf("input %d: decision before the consent %+v, after its removal %+v", i, before[i], after[i])
		}
		if !slices.Contains(in.Resource.Compartments, c.Patient) && !reflect.DeepEqual(before[i], with[i]) {
			t.Fatalf("input %d about another patient: decision %+v without the consent, %+v with it", i, before[i], with[i])
		}
	}
	if n := e.Consents(); n != 0 {
		t.Fatalf("%d consents left", n)
	}
}

// checkRules checks the flattened provision tree.
func checkRules(t *testing.T, c Consent) {
	kinds := []string{"actor", "period", "action", "purpose", "class", "data", "unsupported"}
	for i, r := range c.Rules {
		if r.Type != "permit" && r.Type != "deny" {
			t.Fatalf("rule %d: type %q", i, r.Type)
		}
		if (i == 0) != (r.Depth == 0) || (i > 0 && r.Depth > c.Rules[i-1].Depth+1) {
			t.Fatalf("rule %d: depth %d after %v", i, r.Depth, c.Rules[:i])
		}
		if r.Conds == nil {
			t.Fatalf("rule %d: Conds is nil", i)
		}
		names := false
		for j, cd := range r.Conds {
			if !slices.Contains(kinds, cd.Kind) {
				t.Fatalf("rule %d cond %d: kind %q", i, j, cd.Kind)
			}
			switch cd.Kind {
			case "unsupported":
				if cd.What == "" || cd.Values != nil {
					t.Fatalf("rule %d cond %d: %+v", i, j, cd)
				}
			case "period":
				if cd.Values != nil || cd.What != "" {
					t.Fatalf("rule %d cond %d: %+v", i, j, cd)
				}
			default:
				if len(cd.Values) == 0 {
					t.Fatalf("rule %d cond %d: %s with no values", i, j, cd.Kind)
				}
			}
			if cd.Kind == "actor" || cd.Kind == "data" {
				for _, v := range cd.Values {
					if normRef(v) != v {
						t.Fatalf("rule %d cond %d: %s value %q is not Type/id", i, j, cd.Kind, v)
					}
				}
			}
			names = names || cd.Kind == "actor" || (cd.Kind == "unsupported" && cd.What == "actor")
		}
		if names != r.NamesActor {
			t.Fatalf("rule %d: names_actor %v with conds %+v", i, r.NamesActor, r.Conds)
		}
	}
}

// checkNoValues fails when msg holds a string value of doc of three
// bytes or more that is neither a resource type name nor part of the
// message's fixed wording (consentErrWording).
func checkNoValues(t *testing.T, msg string, doc map[string]any) {
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for _, e := range v {
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		case string:
			if len(v) < 3 || fhir.IsResourceType(v) || !strings.Contains(msg, v) {
				return
			}
			for _, w := range consentErrWording {
				if strings.Contains(w, v) {
					return
				}
			}
			t.Fatalf("error %q holds the document's value %q", msg, v)
		}
	}
	walk(doc)
}

// consentErrWording is the fixed text of NormalizeConsent's errors.
var consentErrWording = []string{"policy: normalize consent: not a Consent", "policy: normalize consent: resourceType is ", ", not Consent"}

var fuzzSubject = Subject{Sub: "p1", ClientID: "app", Kind: "practitioner", FHIRUser: "Practitioner/p1",
	Scopes: ParseScopes("user/*.cruds"), Organizations: []string{"Organization/o1"}, Roles: []string{"PractitionerRole/r1"}}

// fuzzInputs are requests the consent speaks about: by a practitioner
// its actors name, on a resource of a class and id it names, in its
// patient's compartment, plus the same read in another patient's.
func fuzzInputs(c Consent) []Input {
	sub := fuzzSubject
	typ, id := "Observation", "o1"
	for _, r := range c.Rules {
		for _, cd := range r.Conds {
			switch cd.Kind {
			case "actor":
				for _, v := range cd.Values {
					if t, _, _ := splitRef(v); t == "Organization" && !slices.Contains(sub.Organizations, v) {
						sub.Organizations = append(slices.Clip(sub.Organizations), v)
					}
				}
			case "class":
				typ = cd.Values[0]
			case "data":
				typ, id, _ = splitRef(cd.Values[0])
			}
		}
	}
	etreat := sub
	etreat.PurposeOfUse = "ETREAT"
	res := Resource{Type: typ, ID: id, Compartments: []string{c.Patient}, CompartmentType: true}
	other := Resource{Type: typ, ID: id, Compartments: []string{"Patient/zz-other"}, CompartmentType: true}
	return []Input{
		{Subject: sub, Action: "read", Resource: res, Time: testNow},
		{Subject: sub, Action: "update", Resource: res, Time: testNow},
		{Subject: etreat, Action: "read", Resource: res, Time: testNow},
		{Subject: sub, Action: "search-type", Resource: Resource{Type: typ, CompartmentType: true}, Time: testNow},
		{Subject: sub, Action: "read", Resource: other, Time: testNow},
	}
}

func decideAll(t *testing.T, e *Engine, ins []Input) []Decision {
	out := make([]Decision, len(ins))
	for i, in := range ins {
		d, err := e.Decide(t.Context(), in)
		if err != nil {
			t.Fatalf("Decide(%+v): %v", in, err)
		}
		out[i] = d
	}
	return out
}
