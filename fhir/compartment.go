package fhir

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"slices"
	"strconv"
)

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
	return typ == "Patient" || typ == "Binary" || ps.compartmentParam(typ) != nil
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
	if typ == "Binary" {
		return binaryCompartments(doc, base, first)
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

// Extensions the server writes into a stored Binary's meta (Binary is a
// Resource, without extensions of its own). A client's values for them
// are replaced.
const (
	// BinarySHA256URL: valueBase64Binary, the SHA-256 of the content.
	BinarySHA256URL = "https://fhirgate.dev/fhir/StructureDefinition/binary-sha256"
	// BinarySizeURL: valueUnsignedInt, the content's size in bytes.
	BinarySizeURL = "https://fhirgate.dev/fhir/StructureDefinition/binary-size"
	// BinaryCompartmentURL: valueReference, a patient compartment of the
	// resource the Binary's securityContext names, as it was when the
	// version was written (one per compartment). Absent when the
	// securityContext is a Patient itself.
	BinaryCompartmentURL = "https://fhirgate.dev/fhir/StructureDefinition/binary-compartment"
)

// binaryCompartments: a Binary belongs to the compartments of the resource
// its securityContext names, whose access rules apply to it: the Patient
// it names, or the patients the server recorded in its meta
// (BinaryCompartmentURL) for any other resource. Without a
// securityContext it is in none.
func binaryCompartments(doc map[string]any, base string, first bool) []string {
	var out []string
	add := func(ref any) {
		m, _ := ref.(map[string]any)
		s, _ := m["reference"].(string)
		v := ParseReference(s, base)
		if v.RefType != "Patient" || v.RefID == "" {
			return
		}
		if r := "Patient/" + v.RefID; !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	add(doc["securityContext"])
	meta, _ := doc["meta"].(map[string]any)
	exts, _ := meta["extension"].([]any)
	for _, e := range exts {
		if first && len(out) > 0 {
			break
		}
		if m, _ := e.(map[string]any); m["url"] == BinaryCompartmentURL {
			add(m["valueReference"])
		}
	}
	if first && len(out) > 1 {
		out = out[:1]
	}
	return out
}

// BinaryContent returns the digest and size a stored Binary records;
// ok is false for a Binary without them (one stored with its data
// inline).
func BinaryContent(doc map[string]any) (sum [sha256.Size]byte, size int64, ok bool) {
	meta, _ := doc["meta"].(map[string]any)
	exts, _ := meta["extension"].([]any)
	var haveSum, haveSize bool
	for _, e := range exts {
		m, _ := e.(map[string]any)
		switch m["url"] {
		case BinarySHA256URL:
			s, _ := m["valueBase64Binary"].(string)
			b, err := base64.StdEncoding.DecodeString(s)
			haveSum = err == nil && len(b) == sha256.Size
			copy(sum[:], b)
		case BinarySizeURL:
			n, err := strconv.ParseInt(fmt.Sprint(m["valueUnsignedInt"]), 10, 64)
			haveSize = err == nil && n >= 0
			size = n
		}
	}
	return sum, size, haveSum && haveSize
}
