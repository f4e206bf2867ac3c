package gateway

import (
	"encoding/json"
	"net/http"
	"strings"

	"github.com/fhirgate/fhirgate/fhir"
)

type capabilityParam struct {
	Name          string `json:"name"`
	Type          string `json:"type"`
	Documentation string `json:"documentation,omitempty"`
}

type capabilityInteraction struct {
	Code string `json:"code"`
}

type capabilityResource struct {
	Type              string                  `json:"type"`
	Interaction       []capabilityInteraction `json:"interaction"`
	Versioning        string                  `json:"versioning"`
	ReadHistory       bool                    `json:"readHistory"`
	UpdateCreate      bool                    `json:"updateCreate"`
	ConditionalCreate bool                    `json:"conditionalCreate"`
	ConditionalRead   string                  `json:"conditionalRead"`
	ConditionalUpdate bool                    `json:"conditionalUpdate"`
	ConditionalDelete string                  `json:"conditionalDelete"`
	SearchInclude     []string                `json:"searchInclude,omitempty"`
	SearchRevInclude  []string                `json:"searchRevInclude,omitempty"`
	SearchParam       []capabilityParam       `json:"searchParam"`
}

// interactions are the type- and instance-level interactions routes()
// registers for every resource type.
var interactions = []string{"read", "vread", "update", "delete", "history-instance", "history-type", "create", "search-type"}

// capabilityResources generates the rest.resource list from the registry:
// every type fhir.ResourceTypes reports, with its search parameters; a
// type's reference parameters are its _include values, and the
// patient/subject parameters of every type are Patient's _revinclude values.
func capabilityResources(params fhir.Params) []capabilityResource {
	var out []capabilityResource
	var patientRevIncludes []string
	for _, t := range fhir.ResourceTypes() {
		rs := capabilityResource{
			Type: t, Versioning: "versioned", ReadHistory: true, UpdateCreate: true,
			ConditionalCreate: true, ConditionalRead: "not-supported", ConditionalUpdate: true, ConditionalDelete: "single",
		}
		for _, code := range interactions {
			rs.Interaction = append(rs.Interaction, capabilityInteraction{code})
		}
		for _, sp := range params.Sorted(t) {
			rs.SearchParam = append(rs.SearchParam, capabilityParam{Name: sp.Name, Type: string(sp.Type), Documentation: sp.Description})
			if sp.Type != fhir.TypeReference {
				continue
			}
			rs.SearchInclude = append(rs.SearchInclude, t+":"+sp.Name)
			if sp.Name == "patient" || sp.Name == "subject" {
				patientRevIncludes = append(patientRevIncludes, t+":"+sp.Name)
			}
		}
		out = append(out, rs)
	}
	for i := range out {
		if out[i].Type == "Patient" {
			out[i].SearchRevInclude = patientRevIncludes
		}
	}
	return out
}

func (s *Server) metadata(w http.ResponseWriter, r *http.Request) error {
	cs := map[string]any{
		"resourceType": "CapabilityStatement",
		"status":       "active",
		"date":         fhir.FormatInstant(s.now())[:10],
		"publisher":    "fhirgate",
		"kind":         "instance",
		"software":     map[string]any{"name": "fhirgate", "version": s.cfg.Version},
		"implementation": map[string]any{
			"description": "fhirgate FHIR R4 gateway",
			"url":         s.base(r),
		},
		"fhirVersion":  "4.0.1",
		"instantiates": []string{"http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"},
		"format":       []string{"application/fhir+json", "json"},
		"rest": []any{map[string]any{
			"extension": []any{map[string]any{
				"url":      "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket",
				"valueUri": websocketURL(s.base(r)),
			}},
			"mode":        "server",
			"security":    s.security(),
			"interaction": []capabilityInteraction{{Code: "transaction"}, {Code: "batch"}},
			"operation": []any{
				map[string]any{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"},
				map[string]any{"name": "patient-export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"},
			},
			"resource": s.capa,
			"searchParam": []capabilityParam{
				{Name: "_id", Type: "token"}, {Name: "_lastUpdated", Type: "date"},
				{Name: "_count", Type: "number"}, {Name: "_sort", Type: "string"},
				{Name: "_include", Type: "string"}, {Name: "_revinclude", Type: "string"},
				{Name: "_summary", Type: "token"}, {Name: "_total", Type: "token"},
			},
		}},
	}
	b, err := json.Marshal(cs)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", contentTypeFHIR)
	w.Write(b)
	return nil
}

// websocketURL is the Subscription websocket endpoint under the FHIR base.
func websocketURL(base string) string {
	if rest, ok := strings.CutPrefix(base, "https://"); ok {
		return "wss://" + rest + "/websocket"
	}
	return "ws://" + strings.TrimPrefix(base, "http://") + "/websocket"
}
