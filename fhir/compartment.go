package fhir

// Owner returns the patient compartment whose data key seals a resource:
// "Patient/<id>" for Patient <id> itself; for any other type the first
// Patient (in document order) its `patient` search parameter refers to, or,
// for types without one, its `subject`; "" when it is in no patient's
// compartment (Practitioner, Organization, ...). A resource naming several
// patients belongs to the first alone.
func (ps Params) Owner(typ, id string, doc map[string]any, base string) string {
	if typ == "Patient" {
		return "Patient/" + id
	}
	for _, name := range []string{"patient", "subject"} {
		sp := ps[typ][name]
		if sp == nil {
			continue
		}
		for _, v := range Extract(doc, sp, base) {
			if v.RefType == "Patient" && v.RefID != "" {
				return "Patient/" + v.RefID
			}
		}
		return ""
	}
	return ""
}
