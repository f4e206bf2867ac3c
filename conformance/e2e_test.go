//go:build e2e

package conformance

import (
	"os"
	"strings"
	"testing"
)

// TestConformanceE2E runs the whole suite against a live server:
//
//	FHIR_BASE_URL=http://127.0.0.1:8080/fhir [FHIR_RACE_URLS=url1,url2] [FHIR_TOKEN=...] \
//	  go test -tags e2e -run TestConformanceE2E ./conformance/
func TestConformanceE2E(t *testing.T) {
	base := os.Getenv("FHIR_BASE_URL")
	if base == "" {
		t.Skip("FHIR_BASE_URL not set")
	}
	cfg := Config{BaseURL: base, Token: os.Getenv("FHIR_TOKEN")}
	for _, u := range strings.Split(os.Getenv("FHIR_RACE_URLS"), ",") {
		if u = strings.TrimSpace(u); u != "" {
			cfg.RaceURLs = append(cfg.RaceURLs, u)
		}
	}
	report, err := Run(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	report.WriteTable(&sb)
	t.Log("\n" + sb.String())
	for _, res := range report.Results {
		if !res.Pass && !res.Skipped {
			t.Errorf("%s/%s: %s", res.Suite, res.Name, res.Detail)
		}
	}
}
