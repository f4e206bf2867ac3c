package fhir

import (
	"strconv"
	"strings"
)

// checkDoc applies, in one walk over the document, the checks google/fhir
// does not make: the R4 XHTML rules on every Narrative.div (including
// contained resources and Bundle entries), the R4 JSON rules (no null
// values, no empty arrays or objects: http://hl7.org/fhir/R4/json.html)
// and the invariants of checkInvariants. Issues come in that order.
// Element paths are only formatted for the issues found.
func checkDoc(rt string, doc map[string]any) []Issue {
	w := docWalker{rt: rt}
	w.node(doc, true, true)
	out := append(w.narr, w.rules...)
	out = append(out, w.inv...)
	return append(out, typeInvariants(rt, doc)...)
}

// pathSeg is one step of an element path: a member name, or (key "",
// idx >= 0) an array index.
type pathSeg struct {
	key string
	idx int
}

type docWalker struct {
	rt               string
	path             []pathSeg
	narr, rules, inv []Issue
}

// pathString formats the current path, plus extra, as the checks name
// elements: "Patient.name[0].given".
func (w *docWalker) pathString(extra string) string {
	var b strings.Builder
	b.WriteString(w.rt)
	for _, s := range w.path {
		if s.idx >= 0 {
			b.WriteByte('[')
			b.WriteString(strconv.Itoa(s.idx))
			b.WriteByte(']')
		} else {
			b.WriteByte('.')
			b.WriteString(s.key)
		}
	}
	b.WriteString(extra)
	return b.String()
}

// underscoreArray reports whether the array at the current path is the
// extension array of a primitive array ("_given"): the last segment after
// the path's last dot starts with "_".
func (w *docWalker) underscoreArray() bool {
	for i := len(w.path) - 1; i >= 0; i-- {
		if s := w.path[i]; s.idx < 0 {
			k := s.key
			if j := strings.LastIndexByte(k, '.'); j >= 0 {
				k = k[j+1:]
			}
			return strings.HasPrefix(k, "_")
		}
	}
	return strings.HasPrefix(w.rt, "_") // never: rt is a resource type
}

// node checks v at the current path. narr is false below a narrative
// already checked; rules is false below a nested resourceType member
// (the JSON rules skip it).
func (w *docWalker) node(v any, narr, rules bool) {
	switch t := v.(type) {
	case nil:
		if rules && len(w.path) > 0 {
			w.rules = append(w.rules, Issue{Severity: SeverityError, Code: CodeStructure, Expression: w.pathString(""), Details: "null is not allowed in FHIR JSON"})
		}
	case []any:
		if rules && len(t) == 0 {
			w.rules = append(w.rules, Issue{Severity: SeverityError, Code: CodeStructure, Expression: w.pathString(""), Details: "empty arrays are not allowed in FHIR JSON"})
		}
		nullOK := rules && w.underscoreArray()
		for i, e := range t {
			w.path = append(w.path, pathSeg{idx: i})
			// Arrays of primitive extensions may hold nulls as placeholders.
			w.node(e, narr, rules && !(e == nil && nullOK))
			w.path = w.path[:len(w.path)-1]
		}
	case map[string]any:
		root := len(w.path) == 0
		if rules && !root && len(t) == 0 {
			w.rules = append(w.rules, Issue{Severity: SeverityError, Code: CodeStructure, Expression: w.pathString(""), Details: "empty objects are not allowed in FHIR JSON"})
		}
		if _, isResource := t["resourceType"]; !isResource || !root {
			w.period(t)
		}
		for k, e := range t {
			if upperMember(k) {
				// google/fhir takes "Id" for "id" and "Subject" for
				// "subject", while Doc, which search, compartments and
				// policy read, keeps them apart: an Observation with
				// "Subject" would be in no patient compartment.
				w.rules = append(w.rules, Issue{Severity: SeverityError, Code: CodeStructure, Expression: w.pathString("." + k),
					Details: "unknown element: FHIR element names start with a lower-case letter"})
			}
			childNarr := narr
			if narr && k == "text" {
				if m, ok := e.(map[string]any); ok {
					if div, ok := m["div"].(string); ok {
						for _, ni := range CheckNarrative(div) {
							w.narr = append(w.narr, Issue{Severity: SeverityError, Code: CodeInvariant, Expression: w.pathString(".text.div"), Details: "narrative violates " + ni.Rule + ": " + ni.Detail})
						}
						childNarr = false
					}
				}
			}
			w.path = append(w.path, pathSeg{key: k, idx: -1})
			w.node(e, childNarr, rules && (root || k != "resourceType"))
			w.path = w.path[:len(w.path)-1]
		}
	}
}

// upperMember reports whether a member name starts, after an optional
// "_" (a primitive's extensions), with an upper-case letter: no R4
// element does.
func upperMember(k string) bool {
	k = strings.TrimPrefix(k, "_")
	return k != "" && k[0] >= 'A' && k[0] <= 'Z'
}

// period checks per-1 on a Period-shaped element (only id, extension,
// start, end members): start, if present, is not after end.
func (w *docWalker) period(t map[string]any) {
	start, hasS := t["start"].(string)
	end, hasE := t["end"].(string)
	if !hasS || !hasE || !isPeriod(t) {
		return
	}
	sl, sh, ok1 := ParseDate(start)
	el, eh, ok2 := ParseDate(end)
	samePrecision := sh.Sub(sl) == eh.Sub(el)
	if ok1 && ok2 && (sl.After(el) || (!samePrecision && sh.After(el))) {
		w.inv = append(w.inv, invariant(w.pathString(""), "per-1", "if present, start SHALL have a lower value than end"))
	}
}
