package fhir

import "slices"

// Owner returns the patient compartment whose data key seals a resource:
// "Patient/<id>" for Patient <id> itself; for any other type the first
// Patient (in document order) its `patient` search parameter refers to, or,
// for types without one, its `subject`; "" when it is in no patient's
// compartment (Practitioner, Organization, ...). A resource naming several
// patients belongs to the first alone.
func (ps Params) Owner(typ, id string, doc map[string]any, base string) string {
	if cs := ps.compartments(typ, id, doc, base, true); len(cs) > 0 {
		return cs[0]
	}
	return ""
}

// Compartments returns every patient compartment a resource belongs to, in
// document order without repeats: the Patient itself, or the Patients its
// `patient` search parameter refers to, or, for types without one, its
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
