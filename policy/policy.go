// Package policy decides fhirgate's requests with an embedded Open Policy
// Agent (OPA) engine.
//
// The gateway builds an [Input] (who asks, which FHIR interaction, on which
// resource, when) and asks an [Engine] for a [Decision]. The Engine
// evaluates the Rego rule data.fhirgate.authz.decision: by default the
// shipped policy in rego/authz.rego (embedded in the binary), or the .rego
// files of a directory ([Config.Dir]), which it reloads when they change.
//
// Patient consents are policy data: [NormalizeConsent] turns a FHIR R4
// Consent into the flat form the policy reads as data.fhirgate.consents,
// and [Engine.PutConsent] and [Engine.RemoveConsent] keep it current.
//
// README.md in this directory describes the input and decision documents,
// the consent data and the shipped rules for policy authors.
package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Scope is a SMART App Launch scope (v1 or v2) that fhirgate grants on,
// such as user/Observation.rs.
type Scope struct {
	Raw     string `json:"raw"`     // the scope as the token spelled it
	Context string `json:"context"` // "patient", "user" or "system"
	Type    string `json:"type"`    // a resource type, or "*"
	Perms   string `json:"perms"`   // a subset of "cruds", in that order
	V2      bool   `json:"v2"`      // spelled with v2 permission letters
}

var (
	scopeRE  = regexp.MustCompile(`^(patient|user|system)/([A-Z][A-Za-z]*|\*)\.([A-Za-z*]+)$`)
	v1Perms  = map[string]string{"read": "rs", "write": "cud", "*": "cruds"}
	permsAll = "cruds"
)

// ParseScopes parses a space-separated OAuth scope string. It returns the
// resource scopes in token order and ignores everything else: openid,
// fhirUser, launch scopes, offline_access and unknown or malformed
// strings. Granular v2 scopes, which carry a query
// (patient/Observation.rs?category=laboratory), are dropped too: fhirgate
// cannot enforce their query, so it grants nothing on them.
func ParseScopes(s string) []Scope {
	var out []Scope
	for _, raw := range strings.Fields(s) {
		if sc, ok := parseScope(raw); ok {
			out = append(out, sc)
		}
	}
	return out
}

func parseScope(raw string) (Scope, bool) {
	if strings.Contains(raw, "?") {
		return Scope{}, false
	}
	m := scopeRE.FindStringSubmatch(raw)
	if m == nil {
		return Scope{}, false
	}
	sc := Scope{Raw: raw, Context: m[1], Type: m[2]}
	if p, ok := v1Perms[m[3]]; ok {
		sc.Perms = p
		return sc, true
	}
	// v2: letters of "cruds" in that order, each at most once.
	i := 0
	for _, c := range m[3] {
		j := strings.IndexRune(permsAll[i:], c)
		if j < 0 {
			return Scope{}, false
		}
		i += j + 1
	}
	sc.Perms, sc.V2 = m[3], true
	return sc, true
}

// SubjectKind classifies a token's fhirUser claim: "system" when there is
// none, "patient" for a Patient, "practitioner" for a Practitioner or
// PractitionerRole, and "other" for anything else (RelatedPerson, Person,
// or a reference fhirgate cannot read). The claim may be relative
// (Practitioner/p1) or absolute (https://ehr.example/fhir/Practitioner/p1).
func SubjectKind(fhirUser string) string {
	if fhirUser == "" {
		return "system"
	}
	typ, _, ok := splitRef(fhirUser)
	switch {
	case !ok:
		return "other"
	case typ == "Patient":
		return "patient"
	case typ == "Practitioner" || typ == "PractitionerRole":
		return "practitioner"
	}
	return "other"
}

var (
	typeRE = regexp.MustCompile(`^[A-Z][A-Za-z]*$`)
	idRE   = regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)
)

// splitRef reads a FHIR literal reference, relative ("Patient/x") or
// absolute ("https://host/fhir/Patient/x", possibly with /_history/n).
func splitRef(ref string) (typ, id string, ok bool) {
	if ref == "" || strings.HasPrefix(ref, "#") || strings.HasPrefix(ref, "urn:") {
		return "", "", false
	}
	if i := strings.IndexAny(ref, "?#"); i >= 0 {
		ref = ref[:i]
	}
	parts := strings.Split(strings.TrimSuffix(ref, "/"), "/")
	if n := len(parts); n >= 4 && parts[n-2] == "_history" {
		parts = parts[:n-2]
	}
	n := len(parts)
	if n < 2 || !typeRE.MatchString(parts[n-2]) || !idRE.MatchString(parts[n-1]) {
		return "", "", false
	}
	return parts[n-2], parts[n-1], true
}

// normRef returns the relative form "Type/id" of a literal reference, or ""
// if it is not one.
func normRef(ref string) string {
	typ, id, ok := splitRef(ref)
	if !ok {
		return ""
	}
	return typ + "/" + id
}

// Subject is who makes a request: the verified claims of the access token,
// and for a practitioner the organizations and roles fhirgate found for
// them.
type Subject struct {
	Sub          string  `json:"sub"`
	ClientID     string  `json:"client_id"`
	Kind         string  `json:"kind"`     // see SubjectKind
	FHIRUser     string  `json:"fhirUser"` // relative reference, "" if none
	Patient      string  `json:"patient"`  // SMART launch context, "Patient/x" or ""
	Scopes       []Scope `json:"scopes"`
	PurposeOfUse string  `json:"purposeOfUse"` // e.g. "ETREAT", "" if none
	// Organizations and Roles are the Organization and PractitionerRole
	// references of the practitioner's active PractitionerRoles.
	Organizations []string `json:"organizations"`
	Roles         []string `json:"roles"`
}

// Resource is what a request acts on.
type Resource struct {
	Type string `json:"type"`
	ID   string `json:"id"` // "" for type-level checks and creates
	// Compartments are the patient compartments ("Patient/a") the resource
	// belongs to; for a Patient, itself.
	Compartments []string `json:"compartments"`
	// CompartmentType is true when resources of this type can belong to a
	// patient compartment.
	CompartmentType bool `json:"compartmentType"`
}

// Input is the document the policy sees as input. Its JSON form carries
// Time twice: as "time" (RFC 3339) and as "time_ns" (Unix nanoseconds).
// A zero Time means now.
type Input struct {
	Subject Subject
	// Action is a FHIR restful-interaction code (read, vread, update,
	// delete, history-instance, history-type, create, search-type) or
	// "operation".
	Action string
	// Operation names the operation of Action "operation", without "$":
	// "erase" or "admin-keys".
	Operation string
	Resource  Resource
	Time      time.Time
}

// inputJSON is the JSON form of Input.
type inputJSON struct {
	Subject   Subject     `json:"subject"`
	Action    string      `json:"action"`
	Operation string      `json:"operation"`
	Resource  Resource    `json:"resource"`
	Time      string      `json:"time"`
	TimeNS    json.Number `json:"time_ns"`
}

func (in Input) when() time.Time {
	if in.Time.IsZero() {
		return time.Now()
	}
	return in.Time
}

// MarshalJSON writes the input document exactly as the policy sees it
// (absent lists are empty arrays).
func (in Input) MarshalJSON() ([]byte, error) {
	t := in.when()
	j := inputJSON{
		Subject: in.Subject, Action: in.Action, Operation: in.Operation, Resource: in.Resource,
		Time: t.UTC().Format(time.RFC3339Nano), TimeNS: json.Number(strconv.FormatInt(t.UnixNano(), 10)),
	}
	j.Subject.Scopes = nonNil(j.Subject.Scopes)
	j.Subject.Organizations = nonNil(j.Subject.Organizations)
	j.Subject.Roles = nonNil(j.Subject.Roles)
	j.Resource.Compartments = nonNil(j.Resource.Compartments)
	return json.Marshal(j)
}

// UnmarshalJSON reads an input document. The time comes from "time" (RFC
// 3339) or else from "time_ns"; with neither, Time stays zero (now).
func (in *Input) UnmarshalJSON(b []byte) error {
	var j inputJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*in = Input{Subject: j.Subject, Action: j.Action, Operation: j.Operation, Resource: j.Resource}
	switch {
	case j.Time != "":
		t, err := time.Parse(time.RFC3339Nano, j.Time)
		if err != nil {
			return fmt.Errorf("input time: %w", err)
		}
		in.Time = t
	case j.TimeNS != "":
		ns, err := j.TimeNS.Int64()
		if err != nil {
			return fmt.Errorf("input time_ns: %w", err)
		}
		in.Time = time.Unix(0, ns).UTC()
	}
	return nil
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// Decision is the policy's answer: the Rego rule
// data.fhirgate.authz.decision.
type Decision struct {
	Allow bool `json:"allow"`
	// Unconditional, on a type-level check, says every resource of the
	// type is visible: the gateway may skip per-resource checks.
	Unconditional bool `json:"unconditional"`
	// BreakGlass says the request was allowed only by emergency access
	// (purposeOfUse ETREAT).
	BreakGlass bool `json:"break_glass"`
	// Reasons say what allowed or denied the request (sorted; no PHI
	// beyond resource references).
	Reasons []string `json:"reasons"`
}

// errShape is returned for a decision that is not the documented object.
var errShape = errors.New("policy: data.fhirgate.authz.decision is not an object with a boolean allow")
