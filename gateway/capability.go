package gateway

import (
	"encoding/json"
	"net/http"

	"github.com/fhirgate/fhirgate/fhir"
)

// capabilityStatement is generated from the registry: the resource types
// fhir.ResourceTypes reports, the interactions routes() registers, and the
// search parameters in s.params.
func (s *Server) capabilityStatement(base string) []byte {
	type param struct {
		Name          string `json:"name"`
		Type          string `json:"type"`
		Documentation string `json:"documentation,omitempty"`
	}
	type interaction struct {
		Code string `json:"code"`
	}
	type resource struct {
		Type              string        `json:"type"`
		Interaction       []interaction `json:"interaction"`
		Versioning        string        `json:"versioning"`
		ReadHistory       bool          `json:"readHistory"`
		UpdateCreate      bool          `json:"updateCreate"`
		ConditionalCreate bool          `json:"conditionalCreate"`
		ConditionalRead   string        `json:"conditionalRead"`
		ConditionalUpdate bool          `json:"conditionalUpdate"`
		ConditionalDelete string        `json:"conditionalDelete"`
		SearchInclude     []string      `json:"searchInclude,omitempty"`
		SearchRevInclude  []string      `json:"searchRevInclude,omitempty"`
		SearchParam       []param       `json:"searchParam"`
	}
	var resources []resource
	var refParams = map[string][]string{} // target-independent: Type:param for reference params
	for _, t := range fhir.ResourceTypes() {
		for _, sp := range s.params.Sorted(t) {
			if sp.Type == fhir.TypeReference {
				refParams[t] = append(refParams[t], t+":"+sp.Name)
			}
		}
	}
	var allRefs []string
	for _, t := range fhir.ResourceTypes() {
		allRefs = append(allRefs, refParams[t]...)
	}
	for _, t := range fhir.ResourceTypes() {
		rs := resource{
			Type: t, Versioning: "versioned", ReadHistory: true, UpdateCreate: true,
			ConditionalCreate: true, ConditionalRead: "not-supported", ConditionalUpdate: true, ConditionalDelete: "single",
			SearchInclude: refParams[t],
		}
		for _, code := range []string{"read", "vread", "update", "delete", "history-instance", "history-type", "create", "search-type"} {
			rs.Interaction = append(rs.Interaction, interaction{code})
		}
		for _, sp := range s.params.Sorted(t) {
			rs.SearchParam = append(rs.SearchParam, param{Name: sp.Name, Type: string(sp.Type), Documentation: sp.Description})
		}
		for _, other := range fhir.ResourceTypes() {
			for _, sp := range s.params.Sorted(other) {
				if sp.Type == fhir.TypeReference && (sp.Name == "patient" || sp.Name == "subject") && t == "Patient" {
					rs.SearchRevInclude = append(rs.SearchRevInclude, other+":"+sp.Name)
				}
			}
		}
		resources = append(resources, rs)
	}
	_ = allRefs
	cs := map[string]any{
		"resourceType": "CapabilityStatement",
		"status":       "active",
		"date":         fhir.FormatInstant(s.now())[:10],
		"publisher":    "fhirgate",
		"kind":         "instance",
		"software":     map[string]any{"name": "fhirgate", "version": s.cfg.Version},
		"implementation": map[string]any{
			"description": "fhirgate FHIR R4 gateway",
			"url":         base,
		},
		"fhirVersion": "4.0.1",
		"format":      []string{"application/fhir+json", "json"},
		"rest": []any{map[string]any{
			"mode":     "server",
			"resource": resources,
			"searchParam": []param{
				{Name: "_id", Type: "token"}, {Name: "_lastUpdated", Type: "date"},
				{Name: "_count", Type: "number"}, {Name: "_sort", Type: "string"},
				{Name: "_include", Type: "string"}, {Name: "_revinclude", Type: "string"},
				{Name: "_summary", Type: "token"}, {Name: "_total", Type: "token"},
			},
		}},
	}
	b, _ := json.Marshal(cs)
	return b
}

func (s *Server) metadata(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Content-Type", contentTypeFHIR)
	w.Write(s.capabilityStatement(s.base(r)))
	return nil
}
