package sealed_test

import (
	"encoding/json"
	"os"
	"testing"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/internal/keys"
	"github.com/fhirgate/fhirgate/internal/store/boltstore"
	"github.com/fhirgate/fhirgate/internal/store/sealed/sealedtest"
)

// benchResource is a ~2 KB Patient (the R4 example) and its index terms.
func benchResource(b *testing.B) ([]byte, []fhir.Term) {
	body, err := os.ReadFile("../../../testdata/conformance/r4-examples/Patient-example.json")
	if err != nil {
		b.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(body, &doc); err != nil {
		b.Fatal(err)
	}
	return body, fhir.IndexTerms(doc, fhir.DefaultParams()["Patient"], "http://x/fhir")
}

func benchKeys(b *testing.B) *keys.Manager {
	st, err := boltstore.New(b.Context(), boltstore.Config{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	return sealedtest.Wrap(b, st).Keys()
}

// BenchmarkSeal is the per-version encryption cost of a 2 KB resource
// (data key cached, as in steady state).
func BenchmarkSeal(b *testing.B) {
	body, _ := benchResource(b)
	m := benchKeys(b)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Seal(b.Context(), "Patient/example", "Patient/example/_history/1", body); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpen is the per-read decryption cost.
func BenchmarkOpen(b *testing.B) {
	body, _ := benchResource(b)
	m := benchKeys(b)
	sealed, err := m.Seal(b.Context(), "Patient/example", "n", body)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Open(b.Context(), "n", sealed); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBlindTerms is the cost of blinding every index term of the
// resource (b.N resources; the term count is reported).
func BenchmarkBlindTerms(b *testing.B) {
	_, terms := benchResource(b)
	m := benchKeys(b)
	b.ReportMetric(float64(len(terms)), "terms/resource")
	b.ReportAllocs()
	for b.Loop() {
		for _, t := range terms {
			m.Blind(t.Param, t.Value)
		}
	}
}
