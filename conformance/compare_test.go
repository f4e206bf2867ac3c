package conformance

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSemanticDiff(t *testing.T) {
	tests := []struct {
		name      string
		want, got string
		equal     bool
	}{
		{
			name:  "identical",
			want:  `{"resourceType":"Patient","id":"a","active":true}`,
			got:   `{"resourceType":"Patient","id":"a","active":true}`,
			equal: true,
		},
		{
			name:  "key order and whitespace ignored",
			want:  `{"resourceType":"Patient","id":"a","name":[{"family":"X","given":["Y"]}]}`,
			got:   "{\n \"name\": [ {\"given\":[\"Y\"], \"family\":\"X\"} ],\n \"id\":\"a\", \"resourceType\":\"Patient\"}",
			equal: true,
		},
		{
			name:  "array order matters",
			want:  `{"resourceType":"Patient","name":[{"given":["A","B"]}]}`,
			got:   `{"resourceType":"Patient","name":[{"given":["B","A"]}]}`,
			equal: false,
		},
		{
			name:  "trailing decimal zeros are significant",
			want:  `{"resourceType":"Observation","valueQuantity":{"value":1.00}}`,
			got:   `{"resourceType":"Observation","valueQuantity":{"value":1}}`,
			equal: false,
		},
		{
			name:  "6.0 is not 6",
			want:  `{"resourceType":"Observation","valueQuantity":{"value":6.0}}`,
			got:   `{"resourceType":"Observation","valueQuantity":{"value":6}}`,
			equal: false,
		},
		{
			name:  "float64 rounding is detected",
			want:  `{"resourceType":"Observation","valueQuantity":{"value":66.899999999999991}}`,
			got:   `{"resourceType":"Observation","valueQuantity":{"value":66.9}}`,
			equal: false,
		},
		{
			name:  "exact decimal text kept",
			want:  `{"resourceType":"Observation","valueQuantity":{"value":66.899999999999991}}`,
			got:   `{"valueQuantity":{"value":66.899999999999991},"resourceType":"Observation"}`,
			equal: true,
		},
		{
			name:  "exponent form differs",
			want:  `{"resourceType":"Observation","valueDecimal":1e2}`,
			got:   `{"resourceType":"Observation","valueDecimal":100}`,
			equal: false,
		},
		{
			name:  "number is not a string",
			want:  `{"resourceType":"Observation","valueInteger":5}`,
			got:   `{"resourceType":"Observation","valueInteger":"5"}`,
			equal: false,
		},
		{
			name:  "server meta added, meta dropped when empty",
			want:  `{"resourceType":"Patient","id":"a"}`,
			got:   `{"resourceType":"Patient","id":"a","meta":{"versionId":"3","lastUpdated":"2024-01-01T00:00:00Z"}}`,
			equal: true,
		},
		{
			name:  "input meta.lastUpdated replaced by server",
			want:  `{"resourceType":"Patient","id":"a","meta":{"lastUpdated":"2012-06-03T23:45:32Z"}}`,
			got:   `{"resourceType":"Patient","id":"a","meta":{"versionId":"1","lastUpdated":"2024-01-01T00:00:00.123Z"}}`,
			equal: true,
		},
		{
			name:  "meta.profile kept and compared",
			want:  `{"resourceType":"Observation","meta":{"profile":["http://hl7.org/fhir/StructureDefinition/vitalsigns"]}}`,
			got:   `{"resourceType":"Observation","meta":{"versionId":"1","lastUpdated":"2024-01-01T00:00:00Z","profile":["http://hl7.org/fhir/StructureDefinition/vitalsigns"]}}`,
			equal: true,
		},
		{
			name:  "meta.profile lost",
			want:  `{"resourceType":"Observation","meta":{"profile":["http://hl7.org/fhir/StructureDefinition/vitalsigns"]}}`,
			got:   `{"resourceType":"Observation","meta":{"versionId":"1","lastUpdated":"2024-01-01T00:00:00Z"}}`,
			equal: false,
		},
		{
			name:  "meta.source added by server is a difference",
			want:  `{"resourceType":"Patient"}`,
			got:   `{"resourceType":"Patient","meta":{"versionId":"1","source":"#abc"}}`,
			equal: false,
		},
		{
			name:  "nested meta is not stripped",
			want:  `{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient"}}]}`,
			got:   `{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient","meta":{"versionId":"1"}}}]}`,
			equal: false,
		},
		{
			name:  "non-ASCII text and escapes",
			want:  `{"resourceType":"Patient","name":[{"family":"Müller"}]}`,
			got:   `{"resourceType":"Patient","name":[{"family":"M\u00fcller"}]}`,
			equal: true,
		},
		{
			name:  "UTF-8 BOM ignored",
			want:  "\ufeff{\"resourceType\":\"Patient\"}",
			got:   `{"resourceType":"Patient"}`,
			equal: true,
		},
		{
			name:  "added element",
			want:  `{"resourceType":"Patient"}`,
			got:   `{"resourceType":"Patient","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"/>"}}`,
			equal: false,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			diff, err := semanticDiff([]byte(tt.want), []byte(tt.got))
			if err != nil {
				t.Fatal(err)
			}
			if (diff == "") != tt.equal {
				t.Errorf("semanticDiff equal = %v, want %v; diff:\n%s", diff == "", tt.equal, diff)
			}
		})
	}
}

func TestSemanticDiffDoesNotModifyInput(t *testing.T) {
	in := map[string]any{"resourceType": "Patient", "meta": map[string]any{"versionId": "1"}}
	_ = normalizeResource(in)
	if _, ok := in["meta"].(map[string]any)["versionId"]; !ok {
		t.Fatal("normalizeResource modified its input")
	}
}

func TestSemanticDiffInvalidJSON(t *testing.T) {
	if _, err := semanticDiff([]byte(`{"a":`), []byte(`{}`)); err == nil {
		t.Error("want error for invalid JSON")
	}
	if _, err := semanticDiff([]byte(`{}`), []byte(`[]`)); err == nil {
		t.Error("want error for a non-object")
	}
	if _, err := semanticDiff([]byte(`{}`), []byte(`{} {}`)); err == nil {
		t.Error("want error for trailing data")
	}
}

// TestExamplesSelfEqual checks every shipped example against itself after a
// Go round trip that only reorders keys, so that the comparison itself
// cannot produce false failures on real data.
func TestExamplesSelfEqual(t *testing.T) {
	dir, err := findDataDir()
	if err != nil {
		t.Skip(err)
	}
	files, err := filepath.Glob(filepath.Join(dir, "r4-examples", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples found in %s: %v", dir, err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "manifest.json") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		v, err := decodeJSON(b)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		diff, err := semanticDiff(b, mustJSON(v))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if diff != "" {
			t.Errorf("%s: re-encoded example differs:\n%s", filepath.Base(f), diff)
		}
	}
}
