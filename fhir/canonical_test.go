package fhir_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/fhir"
)

// Resource.Canonical must be exactly what anchor.Canonical makes of the
// encoded resource: log leaves commit to it.
func TestCanonicalMatchesAnchor(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(dataDir, "*", "*.json"))
	seeds, _ := filepath.Glob("testdata/fuzzseeds/*/*.json")
	var bodies [][]byte
	for _, f := range append(files, seeds...) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		bodies = append(bodies, b)
	}
	bodies = append(bodies,
		[]byte(`{"resourceType":"Basic","id":"x","\u00e9":1,"\ud83d\ude00":2,"\uffff":3,"\ue000":4,"z":"\u0001\u001f\"\\\/\b\f\n\r\t\u2028<>&","n":[1.50,-0,1e3,null,true,false,{}]}`),
		[]byte(`{"resourceType":"Basic","meta":{"tag":[{"code":"b"}],"versionId":"7"},"a":{"b":"x","a":"y","A":"z","aa":"w","":"v"}}`))
	n := 0
	m := fhir.Meta{ID: "id-1", VersionID: "2", LastUpdated: time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC)}
	for _, b := range bodies {
		var res *fhir.Resource
		if r, err := fhir.Parse(b, fhir.ParseOptions{}); err == nil {
			res = r
		} else if r, err := fhir.Trusted(b); err == nil {
			if _, ok := r.Doc["meta"].(map[string]any); r.Doc["meta"] != nil && !ok {
				continue
			}
			res = r
		} else {
			continue
		}
		body, err := res.Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		want, err := anchor.Canonical(body)
		if err != nil {
			t.Fatal(err)
		}
		if got := res.Canonical(); !bytes.Equal(got, want) {
			t.Errorf("%s: Canonical\n%s\nanchor.Canonical\n%s", res.Type, got, want)
		}
		n++
	}
	if n < 100 {
		t.Errorf("only %d resources compared", n)
	}
	g := fhir.Generated(map[string]any{"resourceType": "AuditEvent", "outcomeDesc": "200 OK", "agent": []any{map[string]any{"requestor": true, "who": map[string]any{"reference": "Practitioner/1"}}}})
	body, err := g.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := anchor.Canonical(body); !bytes.Equal(g.Canonical(), want) {
		t.Errorf("generated: Canonical\n%s\nanchor.Canonical\n%s", g.Canonical(), want)
	}
}

func BenchmarkCanonical(b *testing.B) {
	body, err := os.ReadFile(filepath.Join(dataDir, "r4-examples", "Patient-example.json"))
	if err != nil {
		b.Fatal(err)
	}
	r, err := fhir.Parse(body, fhir.ParseOptions{})
	if err != nil {
		b.Fatal(err)
	}
	enc, _ := r.Encode(fhir.Meta{ID: "x", VersionID: "1", LastUpdated: time.Now()})
	b.Run("doc", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r.Canonical()
		}
	})
	b.Run("anchor", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			anchor.Canonical(enc)
		}
	})
}
