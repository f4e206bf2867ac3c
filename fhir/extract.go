package fhir

import (
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"golang.org/x/text/runes"
	"golang.org/x/text/transform"
	"golang.org/x/text/unicode/norm"
)

// Value is one search value extracted from a resource for a parameter.
// Which fields are set depends on the parameter type.
type Value struct {
	// token: System is "" when the value has no system; NoSystem is true
	// for codes/identifiers without a system; Text is display/text.
	System, Code string
	HasSystem    bool
	Text         string
	// string (raw) and its normalised form.
	Str, Norm string
	// date: the value's implicit range [Lo, Hi).
	Lo, Hi time.Time
	// reference: local Type/ID, or URL for references outside this server.
	RefType, RefID, RefURL string
	// quantity and number.
	Num                  float64
	HasNum               bool
	Unit, UnitSys, UCode string
}

// Extract returns the values of parameter sp in the resource document.
// base is the server's FHIR base URL, so absolute references to this server
// count as local.
func Extract(doc map[string]any, sp *SearchParam, base string) []Value {
	var out []Value
	for _, path := range sp.Paths {
		for _, n := range evalPath(doc, path) {
			out = appendValues(out, sp, n, base)
		}
	}
	return out
}

type node struct {
	v          any
	choiceType string // for choice elements, the type suffix ("DateTime", "Period", ...)
	refType    string // for "@Type" restrictions
}

// evalPath evaluates a simple path (see SearchParam) against doc.
func evalPath(doc map[string]any, path string) []node {
	refType := ""
	if i := strings.IndexByte(path, '@'); i >= 0 {
		path, refType = path[:i], path[i+1:]
	}
	cur := []node{{v: doc}}
	for _, seg := range strings.Split(path, ".") {
		filterK, filterV := "", ""
		if i := strings.IndexByte(seg, '['); i >= 0 && strings.HasSuffix(seg, "]") {
			kv := seg[i+1 : len(seg)-1]
			seg = seg[:i]
			if j := strings.IndexByte(kv, '='); j >= 0 {
				filterK, filterV = kv[:j], kv[j+1:]
			}
		}
		var next []node
		for _, n := range cur {
			m, ok := n.v.(map[string]any)
			if !ok {
				continue
			}
			add := func(v any, ct string) {
				if arr, ok := v.([]any); ok {
					for _, e := range arr {
						next = append(next, node{v: e, choiceType: ct})
					}
					return
				}
				next = append(next, node{v: v, choiceType: ct})
			}
			if v, ok := m[seg]; ok {
				add(v, "")
			} else {
				// choice element: seg + UpperCamel type name
				for k, v := range m {
					if len(k) > len(seg) && strings.HasPrefix(k, seg) && choiceTypes[k[len(seg):]] {
						add(v, k[len(seg):])
					}
				}
			}
		}
		if filterK != "" {
			kept := next[:0]
			for _, n := range next {
				if m, ok := n.v.(map[string]any); ok && m[filterK] == filterV {
					kept = append(kept, n)
				}
			}
			next = kept
		}
		cur = next
	}
	if refType != "" {
		for i := range cur {
			cur[i].refType = refType
		}
	}
	return cur
}

func appendValues(out []Value, sp *SearchParam, n node, base string) []Value {
	switch sp.Type {
	case TypeToken:
		if sp.Name == "deceased" && n.choiceType == "DateTime" {
			// Patient.deceased: "exists() and != false".
			return append(out, Value{Code: "true"})
		}
		if n.choiceType != "" && !tokenChoiceTypes[n.choiceType] {
			return out // e.g. Observation.valueQuantity for value-concept
		}
		if s, ok := n.v.(string); ok && sp.CodeSystem != "" {
			return append(out, Value{Code: s, System: sp.CodeSystem, HasSystem: true})
		}
		return appendTokens(out, n)
	case TypeString:
		return appendStrings(out, n.v)
	case TypeDate:
		if lo, hi, ok := dateRange(n.v, n.choiceType); ok {
			out = append(out, Value{Lo: lo, Hi: hi})
		}
	case TypeReference:
		m, ok := n.v.(map[string]any)
		if !ok {
			if s, ok := n.v.(string); ok { // canonical
				return append(out, Value{RefURL: s})
			}
			return out
		}
		ref, _ := m["reference"].(string)
		if ref == "" || strings.HasPrefix(ref, "#") {
			return out
		}
		v := ParseReference(ref, base)
		if n.refType != "" {
			if v.RefType != n.refType {
				return out
			}
		}
		out = append(out, v)
	case TypeQuantity:
		m, ok := n.v.(map[string]any)
		if !ok {
			return out
		}
		if n.choiceType != "" && n.choiceType != "Quantity" {
			return out
		}
		num, ok := m["value"].(json.Number)
		if !ok {
			return out
		}
		f, err := num.Float64()
		if err != nil {
			return out
		}
		v := Value{Num: f, HasNum: true}
		v.Unit, _ = m["unit"].(string)
		v.UnitSys, _ = m["system"].(string)
		v.UCode, _ = m["code"].(string)
		out = append(out, v)
	case TypeNumber:
		if num, ok := n.v.(json.Number); ok {
			if f, err := num.Float64(); err == nil {
				out = append(out, Value{Num: f, HasNum: true})
			}
		}
	case TypeURI:
		if s, ok := n.v.(string); ok {
			out = append(out, Value{Str: s})
		}
	}
	return out
}

func appendTokens(out []Value, n node) []Value {
	switch v := n.v.(type) {
	case string:
		return append(out, Value{Code: v})
	case bool:
		return append(out, Value{Code: strconv.FormatBool(v)})
	case map[string]any:
		if cs, ok := v["coding"].([]any); ok || v["text"] != nil {
			text, _ := v["text"].(string)
			for _, c := range cs {
				if cm, ok := c.(map[string]any); ok {
					out = appendCoding(out, cm)
				}
			}
			if text != "" {
				out = append(out, Value{Text: text})
			}
			return out
		}
		if _, ok := v["value"]; ok { // Identifier or ContactPoint
			val, _ := v["value"].(string)
			sys, hasSys := v["system"].(string)
			// Identifier has a use too, so only the system (a
			// contact-point-system code, not a URI) tells them apart.
			if isContactSystem(sys) {
				// ContactPoint: system is a code (phone, email), not a URI.
				return append(out, Value{Code: val})
			}
			tv := Value{Code: val, System: sys, HasSystem: hasSys}
			if t, ok := v["type"].(map[string]any); ok {
				tv.Text, _ = t["text"].(string)
			}
			return append(out, tv)
		}
		if _, ok := v["code"]; ok {
			return appendCoding(out, v)
		}
	}
	return out
}

// choiceTypes are the R4 data type names a choice element [x] may end in;
// any other suffix is a different element ("outcomeDesc" is not "outcome").
var choiceTypes = map[string]bool{
	"Base64Binary": true, "Boolean": true, "Canonical": true, "Code": true, "Date": true, "DateTime": true,
	"Decimal": true, "Id": true, "Instant": true, "Integer": true, "Markdown": true, "Oid": true,
	"PositiveInt": true, "String": true, "Time": true, "UnsignedInt": true, "Uri": true, "Url": true,
	"Uuid": true, "Address": true, "Age": true, "Annotation": true, "Attachment": true,
	"CodeableConcept": true, "Coding": true, "ContactPoint": true, "Count": true, "Distance": true,
	"Duration": true, "HumanName": true, "Identifier": true, "Money": true, "Period": true,
	"Quantity": true, "Range": true, "Ratio": true, "Reference": true, "SampledData": true,
	"Signature": true, "Timing": true, "ContactDetail": true, "Contributor": true,
	"DataRequirement": true, "Expression": true, "ParameterDefinition": true, "RelatedArtifact": true,
	"TriggerDefinition": true, "UsageContext": true, "Dosage": true, "Meta": true,
}

// tokenChoiceTypes are the choice types a token parameter takes values
// from (R4 search.html, token).
var tokenChoiceTypes = map[string]bool{
	"Boolean": true, "Code": true, "CodeableConcept": true, "Coding": true, "ContactPoint": true,
	"Identifier": true, "String": true, "Uri": true, "Canonical": true, "Id": true,
}

func isContactSystem(s string) bool {
	switch s {
	case "phone", "fax", "email", "pager", "url", "sms", "other":
		return true
	}
	return false
}

func appendCoding(out []Value, m map[string]any) []Value {
	code, _ := m["code"].(string)
	sys, hasSys := m["system"].(string)
	disp, _ := m["display"].(string)
	return append(out, Value{Code: code, System: sys, HasSystem: hasSys, Text: disp})
}

func appendStrings(out []Value, v any) []Value {
	add := func(s string) {
		if s != "" {
			out = append(out, Value{Str: s, Norm: NormalizeString(s)})
		}
	}
	switch t := v.(type) {
	case string:
		add(t)
	case map[string]any:
		// HumanName, Address: every string part.
		for _, k := range []string{"text", "family", "given", "prefix", "suffix", "line", "city", "district", "state", "postalCode", "country"} {
			switch pv := t[k].(type) {
			case string:
				add(pv)
			case []any:
				for _, e := range pv {
					if s, ok := e.(string); ok {
						add(s)
					}
				}
			}
		}
	}
	return out
}

// stripMarks transformers are stateful, so each call takes its own.
var stripMarks = sync.Pool{New: func() any {
	return transform.Chain(norm.NFD, runes.Remove(runes.In(unicode.Mn)), norm.NFC)
}}

// NormalizeString folds case and accents and collapses white space, as
// R4 string search requires ("Müller" matches "muller"). It is safe for
// concurrent use.
func NormalizeString(s string) string {
	out := s
	if !isASCII(s) {
		t := stripMarks.Get().(transform.Transformer)
		var err error
		out, _, err = transform.String(t, s)
		stripMarks.Put(t)
		if err != nil {
			out = s
		}
	}
	return strings.Join(strings.Fields(strings.ToLower(out)), " ")
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// ParseReference parses a reference string into a local type/id or, for
// references outside base, a URL.
func ParseReference(ref, base string) Value {
	local := ref
	if strings.Contains(ref, "://") || strings.HasPrefix(ref, "urn:") {
		b := strings.TrimSuffix(base, "/") + "/"
		if base == "" || !strings.HasPrefix(ref, b) {
			v := Value{RefURL: ref}
			// Keep the id so `subject=123` still finds it? No: R4 says an
			// id-only search is relative to this server.
			return v
		}
		local = strings.TrimPrefix(ref, b)
	}
	if i := strings.Index(local, "/_history/"); i >= 0 {
		local = local[:i]
	}
	parts := strings.Split(local, "/")
	if len(parts) == 2 && IsResourceType(parts[0]) {
		return Value{RefType: parts[0], RefID: parts[1]}
	}
	return Value{RefURL: ref}
}

// ParseDate parses an R4 date, dateTime or instant into its implicit range
// [lo, hi). Values without a zone are taken as UTC.
func ParseDate(s string) (lo, hi time.Time, ok bool) {
	layouts := []struct {
		layout string
		step   func(time.Time) time.Time
	}{
		{"2006", func(t time.Time) time.Time { return t.AddDate(1, 0, 0) }},
		{"2006-01", func(t time.Time) time.Time { return t.AddDate(0, 1, 0) }},
		{"2006-01-02", func(t time.Time) time.Time { return t.AddDate(0, 0, 1) }},
		{"2006-01-02T15:04Z07:00", func(t time.Time) time.Time { return t.Add(time.Minute) }},
		{"2006-01-02T15:04:05Z07:00", func(t time.Time) time.Time { return t.Add(time.Second) }},
		{"2006-01-02T15:04", func(t time.Time) time.Time { return t.Add(time.Minute) }},
		{"2006-01-02T15:04:05", func(t time.Time) time.Time { return t.Add(time.Second) }},
	}
	frac := ""
	if i := strings.IndexByte(s, '.'); i >= 0 && strings.Contains(s, "T") {
		j := i + 1
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		frac = s[i+1 : j]
		s = s[:i] + s[j:]
	}
	for _, l := range layouts {
		t, err := time.Parse(l.layout, s)
		if err != nil {
			continue
		}
		if frac != "" {
			d := 1
			for range frac {
				d *= 10
			}
			f, _ := strconv.Atoi(frac)
			unit := time.Second / time.Duration(d)
			if unit <= 0 {
				unit = time.Nanosecond
			}
			t = t.Add(time.Duration(f) * unit)
			return t.UTC(), t.Add(unit).UTC(), true
		}
		return t.UTC(), l.step(t).UTC(), true
	}
	return time.Time{}, time.Time{}, false
}

var (
	minTime = time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)
	maxTime = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
)

func dateRange(v any, choiceType string) (lo, hi time.Time, ok bool) {
	switch t := v.(type) {
	case string:
		return ParseDate(t)
	case map[string]any:
		if choiceType != "" && choiceType != "Period" {
			return lo, hi, false
		}
		s, hasS := t["start"].(string)
		e, hasE := t["end"].(string)
		if !hasS && !hasE {
			return lo, hi, false
		}
		lo, hi = minTime, maxTime
		if hasS {
			if l, _, ok := ParseDate(s); ok {
				lo = l
			}
		}
		if hasE {
			if _, h, ok := ParseDate(e); ok {
				hi = h
			}
		}
		return lo, hi, true
	}
	return lo, hi, false
}

// Terms returns the index terms of a value: every term a query that could
// match the value looks up. See TermsForQuery.
func Terms(sp *SearchParam, v Value) []Term {
	switch sp.Type {
	case TypeToken:
		var out []Term
		if v.Code != "" {
			out = append(out, Term{Value: "c:" + v.Code})
			if v.HasSystem {
				out = append(out, Term{Value: "sc:" + v.System + "|" + v.Code})
			} else {
				out = append(out, Term{Value: "n:" + v.Code})
			}
		}
		if v.HasSystem {
			out = append(out, Term{Value: "s:" + v.System})
		}
		return out
	case TypeString:
		return prefixTerms(v.Norm)
	case TypeReference:
		if v.RefType != "" {
			return []Term{{Value: "r:" + v.RefType + "/" + v.RefID}, {Value: "i:" + v.RefID}}
		}
		return []Term{{Value: "u:" + v.RefURL}}
	case TypeDate:
		var out []Term
		last := v.Hi.Add(-time.Nanosecond)
		if v.Lo.Equal(minTime) || v.Hi.Equal(maxTime) {
			return nil
		}
		if v.Lo.Year() == last.Year() {
			out = append(out, Term{Value: "y:" + v.Lo.Format("2006")})
			if v.Lo.Month() == last.Month() {
				out = append(out, Term{Value: "m:" + v.Lo.Format("2006-01")})
				if v.Lo.Day() == last.Day() {
					out = append(out, Term{Value: "d:" + v.Lo.Format("2006-01-02")})
				}
			}
		}
		return out
	case TypeQuantity:
		var out []Term
		if v.UCode != "" {
			out = append(out, Term{Value: "qc:" + v.UCode})
			if v.UnitSys != "" {
				out = append(out, Term{Value: "qsc:" + v.UnitSys + "|" + v.UCode})
			}
		}
		if v.Unit != "" && v.Unit != v.UCode {
			out = append(out, Term{Value: "qc:" + v.Unit})
		}
		return out
	case TypeURI:
		return []Term{{Value: "u:" + v.Str}}
	}
	return nil
}

// Term is one search-index entry of a parameter, looked up exactly. Stores
// blind terms (see internal/keys), so no lookup is by prefix or range.
type Term struct {
	Param string
	Value string
}

// PrefixRunes are the lengths of the string prefixes indexed: a normalised
// string value is indexed by its prefixes of these lengths (those it is
// long enough for). A query string is looked up by its longest prefix of
// one of these lengths, exactly when it has that length, else followed by
// filtering the candidates; a query of one rune has no lookup (the type is
// scanned). Fewer lengths mean fewer index entries per write (each is a
// blind token: see docs/security.md) against more filtering per search.
var PrefixRunes = []int{2, 3, 4, 5, 8}

// prefixTerms returns the prefix terms of a normalised string.
func prefixTerms(norm string) []Term {
	var out []Term
	n, next := 0, 0
	for i := range norm {
		if n == PrefixRunes[next] {
			out = append(out, Term{Value: "p:" + norm[:i]})
			if next++; next == len(PrefixRunes) {
				return out
			}
		}
		n++
	}
	if n == PrefixRunes[next] {
		out = append(out, Term{Value: "p:" + norm})
	}
	return out
}

// prefixTerm returns the term a string query looks up, and whether the
// lookup is exact; ok is false when the query is too short for any.
func prefixTerm(norm string) (term string, exact, ok bool) {
	for _, t := range slices.Backward(prefixTerms(norm)) {
		return t.Value, len(t.Value)-len("p:") == len(norm), true
	}
	return "", false, false
}

// IndexTerms returns every index term of a resource document, deduplicated.
func IndexTerms(doc map[string]any, params map[string]*SearchParam, base string) []Term {
	seen := map[Term]bool{}
	var out []Term
	for name, sp := range params {
		if name == ParamLastUpdated || sp.SameAs != "" {
			continue
		}
		for _, v := range Extract(doc, sp, base) {
			for _, t := range Terms(sp, v) {
				t.Param = name
				if !seen[t] {
					seen[t] = true
					out = append(out, t)
				}
			}
		}
	}
	return out
}

func roundHalf(decimals int) float64 { return 0.5 * math.Pow10(-decimals) }
