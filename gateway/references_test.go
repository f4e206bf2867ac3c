package gateway_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/gateway"
	"github.com/fhirgate/fhirgate/internal/store"
)

func TestEnforceReferences(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		strict := newServer(t, gateway.Config{Store: st, EnforceReferences: true})
		org := strict.create(t, "Organization", `{"resourceType":"Organization","name":"Acme"}`)
		tests := []struct {
			name, body string
			want       int
		}{
			{"existing target", `{"resourceType":"Patient","managingOrganization":{"reference":"Organization/` + org + `"}}`, http.StatusCreated},
			{"missing target", `{"resourceType":"Patient","managingOrganization":{"reference":"Organization/nope"}}`, http.StatusUnprocessableEntity},
			{"wrong target type", `{"resourceType":"Patient","managingOrganization":{"reference":"Patient/` + org + `"}}`, http.StatusUnprocessableEntity},
		}
		for _, test := range tests {
			t.Run(test.name, func(t *testing.T) {
				before := strict.typeHistoryTotal(t, "Patient")
				r := strict.do(t, http.MethodPost, "/Patient", test.body)
				if test.want != http.StatusCreated {
					r.wantOutcome(t, test.want)
					if after := strict.typeHistoryTotal(t, "Patient"); after != before {
						t.Errorf("a rejected create was stored: history %d -> %d", before, after)
					}
					return
				}
				r.want(t, test.want)
			})
		}
		// By default EHRs may send partial graphs and R4 examples with
		// off-type references: both are accepted.
		lenient := newServer(t, gateway.Config{Store: st})
		lenient.do(t, http.MethodPost, "/Patient", tests[1].body).want(t, http.StatusCreated)
		lenient.do(t, http.MethodPost, "/Patient", tests[2].body).want(t, http.StatusCreated)
	})
}

func TestCapabilityStatementFromRegistry(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		s := newServer(t, gateway.Config{Store: st})
		r := s.do(t, http.MethodGet, "/metadata", "").want(t, http.StatusOK)
		var cs struct {
			ResourceType string
			FHIRVersion  string `json:"fhirVersion"`
			Rest         []struct {
				Resource []struct {
					Type             string
					Interaction      []struct{ Code string }
					SearchParam      []struct{ Name, Type string }
					SearchRevInclude []string
				}
			}
		}
		if err := json.Unmarshal(r.body, &cs); err != nil {
			t.Fatal(err)
		}
		if cs.ResourceType != "CapabilityStatement" || cs.FHIRVersion != "4.0.1" || len(cs.Rest) != 1 {
			t.Fatalf("not an R4 CapabilityStatement: %s", r.body[:200])
		}
		var types []string
		params := fhir.DefaultParams()
		for _, res := range cs.Rest[0].Resource {
			types = append(types, res.Type)
			if len(res.Interaction) != 8 {
				t.Errorf("%s: %d interactions, want 8", res.Type, len(res.Interaction))
			}
			if len(res.SearchParam) != len(params[res.Type]) {
				t.Errorf("%s: %d search params, registry has %d", res.Type, len(res.SearchParam), len(params[res.Type]))
			}
			if res.Type == "Patient" && !slices.Contains(res.SearchRevInclude, "Observation:patient") {
				t.Errorf("Patient lacks _revinclude Observation:patient: %v", res.SearchRevInclude)
			}
		}
		if !slices.Equal(types, fhir.ResourceTypes()) {
			t.Errorf("types = %v, want every R4 type", types)
		}
	})
}
