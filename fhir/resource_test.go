package fhir_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/google/fhir/go/fhirversion"
	"github.com/google/fhir/go/jsonformat"
)

const dataDir = "../testdata/conformance"

func TestParseOfficialExamples(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(dataDir, "r4-examples", "*-*.json"))
	if len(files) != 77 {
		t.Fatalf("found %d examples, want 77", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			res, err := fhir.Parse(b, fhir.ParseOptions{})
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if want := strings.SplitN(filepath.Base(f), "-", 2)[0]; res.Type != want {
				t.Errorf("Type = %q, want %q", res.Type, want)
			}
		})
	}
}

func TestParseRejectsInvalid(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(dataDir, "invalid", "*.json"))
	n := 0
	for _, f := range files {
		if filepath.Base(f) == "manifest.json" {
			continue
		}
		n++
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, _ := os.ReadFile(f)
			_, err := fhir.Parse(b, fhir.ParseOptions{})
			var fe *fhir.Error
			if !errors.As(err, &fe) {
				t.Fatalf("Parse = %v, want *fhir.Error", err)
			}
			if fe.Status != 400 || len(fe.Issues) == 0 {
				t.Errorf("status %d with %d issues", fe.Status, len(fe.Issues))
			}
			// Error() is for logs: it must not echo resource content.
			if strings.Contains(fe.Error(), "Chalmers") || strings.Contains(fe.Error(), "unknownElement\":") {
				t.Errorf("Error() leaks content: %s", fe.Error())
			}
		})
	}
	if n != 25 {
		t.Errorf("found %d invalid inputs, want 25", n)
	}
}

func TestParseIssuesHaveLocations(t *testing.T) {
	tests := []struct {
		name, body, wantExpr string
		wantCode             fhir.IssueCode
	}{
		{"bad date", `{"resourceType":"Patient","birthDate":"not a date"}`, "Patient.birthDate", fhir.CodeStructure},
		{"unknown element", `{"resourceType":"Patient","foo":1}`, "Patient", fhir.CodeStructure},
		{"missing required", `{"resourceType":"Observation","status":"final"}`, "Observation", fhir.CodeRequired},
		{"empty array", `{"resourceType":"Patient","name":[]}`, "Patient.name", fhir.CodeStructure},
		{"script narrative", `{"resourceType":"Patient","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"><script>x</script></div>"}}`, "Patient.text.div", fhir.CodeInvariant},
		{"period order", `{"resourceType":"Encounter","status":"finished","class":{"code":"AMB"},"period":{"start":"2020-02-01","end":"2020-01-01"}}`, "Encounter.period", fhir.CodeInvariant},
		{"wrong reference type, strict", `{"resourceType":"Patient","managingOrganization":{"reference":"Patient/1"}}`, "Patient.managingOrganization", fhir.CodeInvalid},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			_, err := fhir.Parse([]byte(test.body), fhir.ParseOptions{StrictReferenceTypes: true})
			var fe *fhir.Error
			if !errors.As(err, &fe) {
				t.Fatalf("Parse = %v, want *fhir.Error", err)
			}
			found := false
			for _, is := range fe.Issues {
				if strings.HasPrefix(is.Expression, test.wantExpr) && is.Code == test.wantCode {
					found = true
				}
			}
			if !found {
				t.Errorf("issues %+v: want code %s at %s", fe.Issues, test.wantCode, test.wantExpr)
			}
		})
	}
}

func TestReferenceTypeIsWarningByDefault(t *testing.T) {
	body := `{"resourceType":"Patient","managingOrganization":{"reference":"Patient/1"}}`
	res, err := fhir.Parse([]byte(body), fhir.ParseOptions{})
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if len(res.Warnings) != 1 || res.Warnings[0].Severity != fhir.SeverityWarning {
		t.Errorf("Warnings = %+v, want one reference-type warning", res.Warnings)
	}
}

func TestEncodeKeepsDecimalsAndSetsMeta(t *testing.T) {
	body := []byte(`{"resourceType":"Observation","id":"x","meta":{"versionId":"9","profile":["http://p"]},"status":"final","code":{"text":"h"},
	"valueQuantity":{"value":66.899999999999991,"unit":"in"},"component":[{"code":{"text":"a"},"valueQuantity":{"value":1.00}}]}`)
	res, err := fhir.Parse(body, fhir.ParseOptions{})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2024, 1, 2, 3, 4, 5, 6e6, time.UTC)
	out, err := res.Encode(fhir.Meta{ID: "new", VersionID: "3", LastUpdated: at})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`66.899999999999991`, `1.00`, `"id":"new"`, `"versionId":"3"`, `"lastUpdated":"2024-01-02T03:04:05.006Z"`, `"profile":["http://p"]`} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("encoded %s lacks %s", out, want)
		}
	}
	if !json.Valid(out) {
		t.Errorf("encoded output is not JSON: %s", out)
	}
	if _, err := fhir.Parse(out, fhir.ParseOptions{}); err != nil {
		t.Errorf("encoded output does not parse: %v", err)
	}
}

func BenchmarkParsePatient(b *testing.B) {
	body, err := os.ReadFile(filepath.Join(dataDir, "r4-examples", "Patient-example.json"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := fhir.Parse(body, fhir.ParseOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGoogleFHIRUnmarshal is google/fhir's own unmarshal+validate of
// the same body, without anything fhirgate adds: the baseline the create
// path is held to (at most 1.25x).
func BenchmarkGoogleFHIRUnmarshal(b *testing.B) {
	body, err := os.ReadFile(filepath.Join(dataDir, "r4-examples", "Patient-example.json"))
	if err != nil {
		b.Fatal(err)
	}
	u, err := jsonformat.NewUnmarshaller("UTC", fhirversion.R4)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := u.UnmarshalWithOutcome(body); err != nil {
			b.Fatal(err)
		}
	}
}
