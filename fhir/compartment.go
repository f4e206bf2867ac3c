package fhir

import "slices"

// compartmentPaths lists the types whose R4 Patient CompartmentDefinition
// (compartmentdefinition-patient) names more than their `patient` search
// parameter: the reference paths that put a resource in a patient's
// compartment, in the order Owner looks for the first Patient. Every other
// type's compartment is its `patient` (or `subject`) search parameter.
var compartmentPaths = map[string]*SearchParam{
	"Communication":        compartmentRefs("subject", "sender", "recipient"),
	"CommunicationRequest": compartmentRefs("subject", "sender", "recipient", "requester"),
}

func compartmentRefs(paths ...string) *SearchParam {
	return p("_compartment", TypeReference, "The patient compartment", paths...)
}

// Owner returns the patient compartment whose data key seals a resource:
// "Patient/<id>" for Patient <id> itself; for any other type the first
// Patient (in path order, then document order) of its compartment paths
// (see compartmentPaths), else of its `patient` search parameter, or, for
// types without one, its `subject`; "" when it is in no patient's
// compartment (Practitioner, Organization, ...). A resource naming several
// patients belongs to the first alone.
func (ps Params) Owner(typ, id string, doc map[string]any, base string) string {
	if cs := ps.compartments(typ, id, doc, base, true); len(cs) > 0 {
		return cs[0]
	}
	return ""
}

// Compartments returns every patient compartment a resource belongs to, in
// the order Owner looks at them, without repeats: the Patient itself, or
// the Patients its compartment paths (see compartmentPaths) or else its
// `patient` search parameter refer to, or, for types without one, its
// `subject`. Access policy asks every one of them.
func (ps Params) Compartments(typ, id string, doc map[string]any, base string) []string {
	return ps.compartments(typ, id, doc, base, false)
}

// CompartmentType reports whether resources of typ can belong to a patient
// compartment (see Compartments).
func (ps Params) CompartmentType(typ string) bool {
	return typ == "Patient" || ps.compartmentParam(typ) != nil
}

func (ps Params) compartmentParam(typ string) *SearchParam {
	if sp := compartmentPaths[typ]; sp != nil {
		return sp
	}
	for _, name := range []string{"patient", "subject"} {
		if sp := ps[typ][name]; sp != nil {
			return sp
		}
	}
	return nil
}

func (ps Params) compartments(typ, id string, doc map[string]any, base string, first bool) []string {
	if typ == "Patient" {
		return []string{"Patient/" + id}
	}
	sp := ps.compartmentParam(typ)
	if sp == nil {
		return nil
	}
	var out []string
	for _, v := range Extract(doc, sp, base) {
		if v.RefType != "Patient" || v.RefID == "" {
			continue
		}
		ref := "Patient/" + v.RefID
		if !slices.Contains(out, ref) {
			out = append(out, ref)
			if first {
				break
			}
		}
	}
	return out
}
