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
	var x extractor
	return x.appendExtract(nil, doc, sp, base)
}

// extractor evaluates paths with buffers it reuses from one call to the
// next.
type extractor struct {
	cur, next []node
}

func (x *extractor) appendExtract(out []Value, doc map[string]any, sp *SearchParam, base string) []Value {
	for i, path := range sp.Paths {
		var cp *compiledPath
		if len(sp.compiled) == len(sp.Paths) {
			cp = sp.compiled[i]
		} else {
			cp = compilePath(path) // a SearchParam not made by p
		}
		for _, n := range x.evalPath(doc, cp) {
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

// compiledPath is a path (see SearchParam) split into its steps.
type compiledPath struct {
	steps   []pathStep
	refType string
}

type pathStep struct {
	name             string
	filterK, filterV string // "telecom[system=phone]"
}

func compilePath(path string) *compiledPath {
	c := &compiledPath{}
	if i := strings.IndexByte(path, '@'); i >= 0 {
		path, c.refType = path[:i], path[i+1:]
	}
	for _, seg := range strings.Split(path, ".") {
		st := pathStep{name: seg}
		if i := strings.IndexByte(seg, '['); i >= 0 && strings.HasSuffix(seg, "]") {
			kv := seg[i+1 : len(seg)-1]
			st.name = seg[:i]
			if j := strings.IndexByte(kv, '='); j >= 0 {
				st.filterK, st.filterV = kv[:j], kv[j+1:]
			}
		}
		c.steps = append(c.steps, st)
	}
	return c
}

// evalPath evaluates a simple path (see SearchParam) against doc. The
// result is valid until the next call.
func (x *extractor) evalPath(doc map[string]any, p *compiledPath) []node {
	cur := append(x.cur[:0], node{v: doc})
	next := x.next[:0]
	for _, st := range p.steps {
		next = next[:0]
		for _, n := range cur {
			m, ok := n.v.(map[string]any)
			if !ok {
				continue
			}
			if v, ok := m[st.name]; ok {
				next = appendNodes(next, v, "")
			} else {
				// choice element: name + UpperCamel type name
				for k, v := range m {
					if len(k) > len(st.name) && strings.HasPrefix(k, st.name) && choiceTypes[k[len(st.name):]] {
						next = appendNodes(next, v, k[len(st.name):])
					}
				}
			}
		}
		if st.filterK != "" {
			kept := next[:0]
			for _, n := range next {
				if m, ok := n.v.(map[string]any); ok && m[st.filterK] == st.filterV {
					kept = append(kept, n)
				}
			}
			next = kept
		}
		cur, next = next, cur
	}
	if p.refType != "" {
		for i := range cur {
			cur[i].refType = p.refType
		}
	}
	x.cur, x.next = cur, next
	return cur
}

func appendNodes(out []node, v any, ct string) []node {
	if arr, ok := v.([]any); ok {
		for _, e := range arr {
			out = append(out, node{v: e, choiceType: ct})
		}
		return out
	}
	return append(out, node{v: v, choiceType: ct})
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
	if isASCII(s) {
		return normalizeASCII(s)
	}
	out := s
	t := stripMarks.Get().(transform.Transformer)
	var err error
	out, _, err = transform.String(t, s)
	stripMarks.Put(t)
	if err != nil {
		out = s
	}
	return strings.Join(strings.Fields(strings.ToLower(out)), " ")
}

// normalizeASCII is NormalizeString for ASCII s: lower case, with runs of
// white space (as strings.Fields sees it) collapsed to one space and
// trimmed. A string already so is returned as is.
func normalizeASCII(s string) string {
	clean, space := true, true
	for i := 0; i < len(s) && clean; i++ {
		switch c := s[i]; {
		case c >= 'A' && c <= 'Z':
			clean = false
		case asciiSpace(c):
			clean = c == ' ' && !space
			space = true
		default:
			space = false
		}
	}
	if clean && !space {
		return s
	}
	b := make([]byte, 0, len(s))
	pending := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if asciiSpace(c) {
			pending = len(b) > 0
			continue
		}
		if pending {
			b = append(b, ' ')
			pending = false
		}
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		b = append(b, c)
	}
	return string(b)
}

func asciiSpace(c byte) bool {
	switch c {
	case '\t', '\n', '\v', '\f', '\r', ' ':
		return true
	}
	return false
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
	// Skip the layouts that cannot match (each failed time.Parse allocates
	// its error): without a T, the one of the value's length (the year is
	// exactly 4 characters, month and day 2); with one, those with a zone
	// when the time has one (Z, + or -), else those without.
	tPos := strings.IndexByte(s, 'T')
	zone := tPos >= 0 && strings.ContainsAny(s[tPos+1:], "Z+-")
	for i, l := range layouts {
		switch {
		case i < 3:
			if tPos >= 0 || len(s) != len(l.layout) {
				continue
			}
		case tPos < 0, zone != (i < 5):
			continue
		}
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
	return appendTerms(nil, sp, v)
}

// appendTerms appends the terms of v to out (their Param unset).
func appendTerms(out []Term, sp *SearchParam, v Value) []Term {
	switch sp.Type {
	case TypeToken:
		if v.Code != "" {
			out = append(out, Term{Value: "c:" + v.Code})
			if v.HasSystem {
				out = append(out, Term{Value: "sc:" + v.System + "|" + v.Code})
			} else {
				out = append(out, Term{Value: "n:" + v.Code})
			}
		}
		if v.HasSystem && !sp.NoSystemTerms {
			out = append(out, Term{Value: "s:" + v.System})
		}
		return out
	case TypeString:
		return appendPrefixTerms(out, sp.prefixRunes(), v.Norm)
	case TypeReference:
		if v.RefType != "" {
			return append(out, Term{Value: "r:" + v.RefType + "/" + v.RefID}, Term{Value: "i:" + v.RefID})
		}
		return append(out, Term{Value: "u:" + v.RefURL})
	case TypeDate:
		last := v.Hi.Add(-time.Nanosecond)
		if v.Lo.Equal(minTime) || v.Hi.Equal(maxTime) {
			return out
		}
		var buf [16]byte
		if v.Lo.Year() == last.Year() {
			out = append(out, Term{Value: string(v.Lo.AppendFormat(append(buf[:0], "y:"...), "2006"))})
			if v.Lo.Month() == last.Month() {
				out = append(out, Term{Value: string(v.Lo.AppendFormat(append(buf[:0], "m:"...), "2006-01"))})
				if v.Lo.Day() == last.Day() {
					out = append(out, Term{Value: string(v.Lo.AppendFormat(append(buf[:0], "d:"...), "2006-01-02"))})
				}
			}
		}
		return out
	case TypeQuantity:
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
		return append(out, Term{Value: "u:" + v.Str})
	}
	return out
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

// prefixRunes returns the prefix lengths sp's values are indexed by.
func (sp *SearchParam) prefixRunes() []int {
	if sp != nil && sp.Prefixes != nil {
		return sp.Prefixes
	}
	return PrefixRunes
}

// appendPrefixTerms appends the prefix terms, of the lengths in runes, of a
// normalised string.
func appendPrefixTerms(out []Term, runes []int, norm string) []Term {
	if len(runes) == 0 {
		return out
	}
	n, next := 0, 0
	for i := range norm {
		if n == runes[next] {
			out = append(out, Term{Value: "p:" + norm[:i]})
			if next++; next == len(runes) {
				return out
			}
		}
		n++
	}
	if n == runes[next] {
		out = append(out, Term{Value: "p:" + norm})
	}
	return out
}

// prefixTerm returns the term a string query on sp looks up, and whether
// the lookup is exact; ok is false when the query is too short for any.
func prefixTerm(sp *SearchParam, norm string) (term string, exact, ok bool) {
	var buf [8]Term
	for _, t := range slices.Backward(appendPrefixTerms(buf[:0], sp.prefixRunes(), norm)) {
		return t.Value, len(t.Value)-len("p:") == len(norm), true
	}
	return "", false, false
}

// IndexTerms returns every index term of a resource document, deduplicated.
// _id is indexed by its "c:" term only: that is the one an _id query
// looks up.
func IndexTerms(doc map[string]any, params map[string]*SearchParam, base string) []Term {
	return AppendIndexTerms(make([]Term, 0, 64), doc, params, base)
}

// AppendIndexTerms appends IndexTerms's terms to dst.
func AppendIndexTerms(dst []Term, doc map[string]any, params map[string]*SearchParam, base string) []Term {
	ix := indexers.Get().(*indexer)
	defer ix.release()
	out := dst
	for name, sp := range params {
		if name == ParamLastUpdated || sp.SameAs != "" {
			continue
		}
		ix.vals = ix.x.appendExtract(ix.vals[:0], doc, sp, base)
		// Terms of different parameters differ (by Param): deduplicate
		// within the parameter, by a scan while it has few, then a map.
		start := len(out)
		clear(ix.seen)
		for _, v := range ix.vals {
			ix.ts = appendTerms(ix.ts[:0], sp, v)
			for _, t := range ix.ts {
				if name == ParamID && !strings.HasPrefix(t.Value, "c:") {
					continue
				}
				mine := out[start:]
				if len(mine) < dedupScan {
					if slices.ContainsFunc(mine, func(o Term) bool { return o.Value == t.Value }) {
						continue
					}
				} else {
					if len(ix.seen) == 0 {
						for _, o := range mine {
							ix.seen[o.Value] = struct{}{}
						}
					}
					if _, dup := ix.seen[t.Value]; dup {
						continue
					}
					ix.seen[t.Value] = struct{}{}
				}
				t.Param = name
				out = append(out, t)
			}
		}
	}
	return out
}

// indexer is the scratch state of AppendIndexTerms, pooled.
type indexer struct {
	x    extractor
	vals []Value
	ts   []Term
	seen map[string]struct{}
}

var indexers = sync.Pool{New: func() any { return &indexer{seen: map[string]struct{}{}} }}

// release returns ix to the pool, dropping references into the document
// and buffers grown unusually large.
func (ix *indexer) release() {
	if cap(ix.vals) > 1024 || cap(ix.x.cur) > 1024 || cap(ix.x.next) > 1024 || len(ix.seen) > 1024 {
		return
	}
	clear(ix.vals[:cap(ix.vals)])
	clear(ix.ts[:cap(ix.ts)])
	clear(ix.x.cur[:cap(ix.x.cur)])
	clear(ix.x.next[:cap(ix.x.next)])
	clear(ix.seen)
	indexers.Put(ix)
}

// dedupScan is how many terms of a parameter IndexTerms deduplicates by
// scanning before it uses a map.
const dedupScan = 32

func roundHalf(decimals int) float64 { return 0.5 * math.Pow10(-decimals) }
