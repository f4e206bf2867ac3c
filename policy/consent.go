package policy

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/open-policy-agent/opa/v1/ast"
)

// Consent is a FHIR R4 Consent in the form the policy reads it:
// data.fhirgate.consents[Patient][ID]. Its provision tree is flattened into
// Rules, one per provision node.
type Consent struct {
	ID      string `json:"id"`      // "Consent/c1"
	Patient string `json:"patient"` // "Patient/x"
	Rules   []Rule `json:"rules"`
}

// Rule is one node of a Consent's provision tree.
type Rule struct {
	// Type is "permit" or "deny": the node's type, else its parent's, and
	// "permit" for a root without one.
	Type string `json:"type"`
	// Depth is 0 for the root provision, 1 for its children, and so on.
	Depth int `json:"depth"`
	// NamesActor is true when some node on the path from the root to this
	// node has a provision.actor.
	NamesActor bool `json:"names_actor"`
	// Conds are the conditions of every node on the path from the root to
	// this node. The rule holds when all of them hold.
	Conds []Cond `json:"conds"`
}

// Cond is one condition of a Rule. Kind is one of:
//
//   - "actor": Values are references (Practitioner/p1, Organization/o1,
//     PractitionerRole/r1...); it holds when one of them is the subject's
//     fhirUser, or one of its organizations or roles.
//   - "period": it holds when StartNS ≤ time_ns < EndNS (either may be nil).
//   - "action": Values are consentaction codes; a read maps to "access" and
//     "use", a create, update or delete to "correct" and "collect".
//   - "purpose": it holds when the subject's purposeOfUse is one of Values.
//   - "class": it holds when the resource type is one of Values.
//   - "data": it holds when the resource (Type/id) is one of Values.
//   - "unsupported": a condition fhirgate cannot check, named by What
//     (securityLabel, dataPeriod, code, class, ...). It never holds on a
//     permit rule and always holds on a deny rule: both fail closed.
type Cond struct {
	Kind    string   `json:"kind"`
	Values  []string `json:"values,omitempty"`
	StartNS *int64   `json:"start_ns,omitempty"`
	EndNS   *int64   `json:"end_ns,omitempty"`
	What    string   `json:"what,omitempty"`
}

const (
	consentScopeSystem  = "http://terminology.hl7.org/CodeSystem/consentscope"
	consentActionSystem = "http://terminology.hl7.org/CodeSystem/consentaction"
	resourceTypesSystem = "http://hl7.org/fhir/resource-types"
)

// NormalizeConsent converts a FHIR R4 Consent, decoded by encoding/json
// (with or without UseNumber), into policy data. id is "Consent/<id>"; a
// bare id gets the prefix, and "" takes the document's id.
//
// applies is false when the consent must not be in the policy data: its
// status is not "active", its scope is not patient-privacy or treatment
// (consentscope), or Consent.patient is not a Patient reference. The caller
// then removes it (Engine.RemoveConsent). References to the patient, the
// actors and the data may be relative or absolute; they become "Type/id".
//
// The error is non-nil only for documents that are not Consents.
func NormalizeConsent(id string, doc map[string]any) (c Consent, applies bool, err error) {
	if rt, _ := doc["resourceType"].(string); rt != "Consent" {
		// The error reaches logs: it names the type only when it is one,
		// not whatever string the document holds.
		if !fhir.IsResourceType(rt) {
			return Consent{}, false, errors.New("policy: normalize consent: not a Consent")
		}
		return Consent{}, false, fmt.Errorf("policy: normalize consent: resourceType is %s, not Consent", rt)
	}
	if id == "" {
		id, _ = doc["id"].(string)
	}
	if !strings.HasPrefix(id, "Consent/") {
		id = "Consent/" + id
	}
	c = Consent{ID: id, Rules: []Rule{}}
	if status, _ := doc["status"].(string); status != "active" {
		return c, false, nil
	}
	if !hasCoding(obj(doc["scope"]), consentScopeSystem, "patient-privacy", "treatment") {
		return c, false, nil
	}
	p := normRef(str(obj(doc["patient"])["reference"]))
	if !strings.HasPrefix(p, "Patient/") {
		return c, false, nil
	}
	c.Patient = p
	if root := obj(doc["provision"]); root != nil {
		flatten(root, "permit", 0, false, nil, &c.Rules)
	}
	return c, true, nil
}

// flatten appends the rule of node and those of its descendants.
func flatten(node map[string]any, parentType string, depth int, namesActor bool, conds []Cond, out *[]Rule) {
	typ := parentType
	switch t := str(node["type"]); t {
	case "permit", "deny":
		typ = t
	case "":
	default:
		typ = "deny" // not an R4 code: fail closed
	}
	namesActor = namesActor || len(arr(node["actor"])) > 0
	conds = append(slices.Clip(conds), nodeConds(node, typ)...)
	if conds == nil {
		conds = []Cond{}
	}
	*out = append(*out, Rule{Type: typ, Depth: depth, NamesActor: namesActor, Conds: slices.Clip(conds)})
	for _, child := range arr(node["provision"]) {
		if m := obj(child); m != nil {
			flatten(m, typ, depth+1, namesActor, conds, out)
		}
	}
}

// nodeConds reads the conditions of one provision node. Lists (actor,
// action, class, data) are alternatives: when fhirgate cannot read some of
// them, a permit keeps the ones it can read, a deny becomes unsupported (it
// may name the requester), and a list with nothing readable is unsupported.
func nodeConds(node map[string]any, typ string) []Cond {
	conds := []Cond{}
	list := func(kind string, values []string, unreadable bool) {
		if len(values) == 0 || (unreadable && typ == "deny") {
			conds = append(conds, Cond{Kind: "unsupported", What: kind})
			return
		}
		conds = append(conds, Cond{Kind: kind, Values: values})
	}
	if actors := arr(node["actor"]); len(actors) > 0 {
		var refs []string
		unreadable := false
		for _, a := range actors {
			if r := normRef(str(obj(obj(a)["reference"])["reference"])); r != "" {
				refs = appendNew(refs, r)
			} else {
				unreadable = true
			}
		}
		list("actor", refs, unreadable)
	}
	if period := obj(node["period"]); period != nil {
		conds = append(conds, periodCond(period))
	}
	if actions := arr(node["action"]); len(actions) > 0 {
		var codes []string
		unreadable := false
		for _, a := range actions {
			n := len(codes)
			for _, cd := range arr(obj(a)["coding"]) {
				cd := obj(cd)
				if sys := str(cd["system"]); (sys == "" || sys == consentActionSystem) && str(cd["code"]) != "" {
					codes = appendNew(codes, str(cd["code"]))
				}
			}
			if len(codes) == n {
				unreadable = true
			}
		}
		list("action", codes, unreadable)
	}
	if purposes := arr(node["purpose"]); len(purposes) > 0 {
		var codes []string
		for _, p := range purposes {
			if code := str(obj(p)["code"]); code != "" {
				codes = appendNew(codes, code)
			}
		}
		list("purpose", codes, false)
	}
	if classes := arr(node["class"]); len(classes) > 0 {
		var types []string
		unreadable := false
		for _, cl := range classes {
			cl := obj(cl)
			if str(cl["system"]) == resourceTypesSystem && typeRE.MatchString(str(cl["code"])) {
				types = appendNew(types, str(cl["code"]))
			} else {
				unreadable = true
			}
		}
		list("class", types, unreadable)
	}
	if data := arr(node["data"]); len(data) > 0 {
		var refs []string
		unreadable := false
		for _, d := range data {
			if r := normRef(str(obj(obj(d)["reference"])["reference"])); r != "" {
				refs = appendNew(refs, r)
			} else {
				unreadable = true
			}
		}
		list("data", refs, unreadable)
	}
	for _, what := range []string{"securityLabel", "dataPeriod", "code"} {
		if present(node[what]) {
			conds = append(conds, Cond{Kind: "unsupported", What: what})
		}
	}
	return conds
}

// periodCond reads a provision.period. Partial dates are widened to the
// whole year, month or day (and a dateTime to the unit of its last digit): start
// "2020" is 2020-01-01T00:00:00Z, end "2020" is 2021-01-01T00:00:00Z
// (exclusive). A date or time without a zone is UTC. A period fhirgate
// cannot read is unsupported.
func periodCond(p map[string]any) Cond {
	c := Cond{Kind: "period"}
	if s := str(p["start"]); s != "" {
		from, _, ok := fhir.ParseDate(s)
		if !ok {
			return Cond{Kind: "unsupported", What: "period"}
		}
		ns := clampNS(from)
		c.StartNS = &ns
	}
	if s := str(p["end"]); s != "" {
		_, to, ok := fhir.ParseDate(s)
		if !ok {
			return Cond{Kind: "unsupported", What: "period"}
		}
		ns := clampNS(to)
		c.EndNS = &ns
	}
	return c
}

var (
	minNSTime = time.Unix(0, math.MinInt64)
	maxNSTime = time.Unix(0, math.MaxInt64)
)

// clampNS is t in Unix nanoseconds, clamped to the int64 range (years
// 1678 to 2262), so that an end of 9999-12-31 means "no end".
func clampNS(t time.Time) int64 {
	switch {
	case t.Before(minNSTime):
		return math.MinInt64
	case t.After(maxNSTime):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// Object keys of a normalized consent.
var (
	kRules, kDepth, kNamesActor, kConds = keyTerm("rules"), keyTerm("depth"), keyTerm("names_actor"), keyTerm("conds")
	kValues, kStartNS, kEndNS, kWhat    = keyTerm("values"), keyTerm("start_ns"), keyTerm("end_ns"), keyTerm("what")
)

// value is the consent as an OPA value, the form the store keeps. Keys and
// codes are shared terms, and so are the conditions a nested rule repeats
// from its ancestors: a gateway may hold many consents.
func (c *Consent) value() ast.Value {
	var seen []struct {
		cond Cond
		term *ast.Term
	}
	condTerm := func(cd Cond) *ast.Term {
		for _, s := range seen {
			if equalConds(s.cond, cd) {
				return s.term
			}
		}
		items := [][2]*ast.Term{{kKind, internTerm(cd.Kind)}}
		if len(cd.Values) > 0 {
			vs := make([]*ast.Term, len(cd.Values))
			for i, v := range cd.Values {
				if cd.Kind == "actor" || cd.Kind == "data" {
					vs[i] = ast.StringTerm(v) // references: many distinct values
				} else {
					vs[i] = internTerm(v) // codes and types
				}
			}
			items = append(items, [2]*ast.Term{kValues, ast.ArrayTerm(vs...)})
		}
		if cd.StartNS != nil {
			items = append(items, [2]*ast.Term{kStartNS, int64Term(*cd.StartNS)})
		}
		if cd.EndNS != nil {
			items = append(items, [2]*ast.Term{kEndNS, int64Term(*cd.EndNS)})
		}
		if cd.What != "" {
			items = append(items, [2]*ast.Term{kWhat, internTerm(cd.What)})
		}
		t := ast.ObjectTerm(items...)
		seen = append(seen, struct {
			cond Cond
			term *ast.Term
		}{cd, t})
		return t
	}
	rules := make([]*ast.Term, len(c.Rules))
	for i, r := range c.Rules {
		conds := make([]*ast.Term, len(r.Conds))
		for j, cd := range r.Conds {
			conds[j] = condTerm(cd)
		}
		rules[i] = ast.ObjectTerm(
			[2]*ast.Term{kType, internTerm(r.Type)},
			[2]*ast.Term{kDepth, ast.InternedTerm(r.Depth)},
			[2]*ast.Term{kNamesActor, ast.InternedTerm(r.NamesActor)},
			[2]*ast.Term{kConds, ast.ArrayTerm(conds...)},
		)
	}
	return ast.NewObject(
		[2]*ast.Term{kID, ast.StringTerm(c.ID)},
		[2]*ast.Term{kPatient, ast.StringTerm(c.Patient)},
		[2]*ast.Term{kRules, ast.ArrayTerm(rules...)},
	)
}

func equalConds(a, b Cond) bool {
	eq := func(x, y *int64) bool { return (x == nil) == (y == nil) && (x == nil || *x == *y) }
	return a.Kind == b.Kind && a.What == b.What && slices.Equal(a.Values, b.Values) && eq(a.StartNS, b.StartNS) && eq(a.EndNS, b.EndNS)
}

// Helpers for reading decoded JSON.

func obj(v any) map[string]any { m, _ := v.(map[string]any); return m }
func arr(v any) []any          { a, _ := v.([]any); return a }
func str(v any) string         { s, _ := v.(string); return s }

func present(v any) bool {
	switch v := v.(type) {
	case nil:
		return false
	case []any:
		return len(v) > 0
	case map[string]any:
		return len(v) > 0
	}
	return true
}

func appendNew(ss []string, s string) []string {
	if slices.Contains(ss, s) {
		return ss
	}
	return append(ss, s)
}

// hasCoding reports whether the CodeableConcept has a coding with one of
// codes, in system (or without a system).
func hasCoding(cc map[string]any, system string, codes ...string) bool {
	for _, cd := range arr(cc["coding"]) {
		cd := obj(cd)
		if sys := str(cd["system"]); (sys == "" || sys == system) && slices.Contains(codes, str(cd["code"])) {
			return true
		}
	}
	return false
}
