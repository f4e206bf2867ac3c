package fhir

import (
	"math"
	"math/big"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Prefixes of date, number and quantity search values (R4 search.html#prefix).
var prefixes = []string{"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"}

// QValue is one value of a search parameter (values separated by ',' are ORed).
type QValue struct {
	Prefix string
	Raw    string
	// token
	System, Code string
	SystemOnly   bool // "system|"
	NoSystem     bool // "|code"
	AnySystem    bool // "code"
	// date
	Lo, Hi time.Time
	// number / quantity
	Num      float64
	NumLo    float64
	NumHi    float64
	UnitSys  string
	UnitCode string
	// reference
	Ref Value
}

// Clause is one occurrence of a parameter in a query; its values are ORed,
// and clauses are ANDed.
type Clause struct {
	Name     string
	Modifier string
	Param    *SearchParam
	Values   []QValue
}

// SortKey is one _sort key.
type SortKey struct {
	Name  string
	Desc  bool
	Param *SearchParam
}

// Include is an _include or _revinclude directive, e.g. Observation:patient.
type Include struct {
	Source  string // resource type holding the reference
	Param   string // reference parameter name
	Target  string // optional target type
	Iterate bool
}

// Query is a parsed search.
type Query struct {
	Type       string
	Clauses    []Clause
	Count      int // page size; 0 means the default
	Offset     int
	Sort       []SortKey
	Include    []Include
	RevInclude []Include
	Summary    string // "", "count", "true", "false", "data", "text"
	Total      string // "", "none", "estimate", "accurate"
	// Canonical is the query, normalised and without paging, for links.
	Canonical url.Values
	// Ignored are parameters dropped under Prefer: handling=lenient.
	Ignored []string
}

// Search result parameters the server understands.
var resultParams = map[string]bool{
	"_count": true, "_offset": true, "_sort": true, "_include": true, "_revinclude": true,
	"_summary": true, "_total": true, "_format": true, "_pretty": true, "_elements": true,
	"_include:iterate": true, "_revinclude:iterate": true,
}

// ParseQuery parses the search parameters of a search on type t. Unknown
// parameters are a 400 *Error unless lenient, when they are ignored and
// listed in Query.Ignored.
func ParseQuery(t string, vals url.Values, reg Params, base string, lenient bool) (*Query, error) {
	q := &Query{Type: t, Canonical: url.Values{}}
	params := reg[t]
	names := make([]string, 0, len(vals))
	for k := range vals {
		names = append(names, k)
	}
	sort.Strings(names)
	var bad []Issue
	for _, key := range names {
		for _, raw := range vals[key] {
			if err := q.add(key, raw, params, reg, base); err != nil {
				if fe, ok := err.(*Error); ok && fe.Status == 0 {
					// unknown parameter
					if lenient {
						q.Ignored = append(q.Ignored, key)
						continue
					}
					fe.Status = 400
				}
				if fe, ok := err.(*Error); ok {
					bad = append(bad, fe.Issues...)
					continue
				}
				return nil, err
			}
			if key != "_offset" {
				q.Canonical.Add(key, raw)
			}
		}
	}
	if len(bad) > 0 {
		return nil, &Error{Status: 400, Issues: bad}
	}
	return q, nil
}

func unknown(key string) *Error {
	return &Error{Status: 0, Issues: []Issue{{Severity: SeverityError, Code: CodeNotSupported, Expression: key, Details: "unknown or unsupported search parameter " + strconv.Quote(key)}}}
}

func badValue(key, why string) *Error {
	return &Error{Status: 400, Issues: []Issue{{Severity: SeverityError, Code: CodeInvalid, Expression: key, Details: why}}}
}

func (q *Query) add(key, raw string, params map[string]*SearchParam, reg Params, base string) error {
	switch key {
	case "_count":
		n, err := strconv.Atoi(raw)
		if err != nil || n < 0 {
			return badValue(key, "_count must be a non-negative integer")
		}
		q.Count = n
		return nil
	case "_offset":
		n, err := strconv.Atoi(raw)
		if err != nil || n < 0 {
			return badValue(key, "_offset must be a non-negative integer")
		}
		q.Offset = n
		return nil
	case "_format", "_pretty", "_elements":
		return nil
	case "_summary":
		switch raw {
		case "count", "true", "false", "data", "text":
			q.Summary = raw
			return nil
		}
		return badValue(key, "_summary must be one of true, false, count, data, text")
	case "_total":
		switch raw {
		case "none", "estimate", "accurate":
			q.Total = raw
			return nil
		}
		return badValue(key, "_total must be one of none, estimate, accurate")
	case "_sort":
		// The keys apply only when all of them parse: an ignored _sort
		// (lenient handling) must not half apply.
		var keys []SortKey
		for _, s := range strings.Split(raw, ",") {
			k := SortKey{Name: s}
			if strings.HasPrefix(s, "-") {
				k.Name, k.Desc = s[1:], true
			}
			if k.Name != ParamLastUpdated && k.Name != ParamID {
				sp, ok := params[k.Name]
				if !ok {
					return unknown("_sort:" + k.Name)
				}
				k.Param = sp
			}
			keys = append(keys, k)
		}
		q.Sort = append(q.Sort, keys...)
		return nil
	case "_include", "_revinclude", "_include:iterate", "_revinclude:iterate":
		parts := strings.Split(raw, ":")
		if len(parts) < 2 || len(parts) > 3 {
			return badValue(key, "include must be Type:param[:TargetType]")
		}
		inc := Include{Source: parts[0], Param: parts[1], Iterate: strings.HasSuffix(key, ":iterate")}
		if len(parts) == 3 {
			inc.Target = parts[2]
		}
		sp, ok := reg[inc.Source][inc.Param]
		if !ok || sp.Type != TypeReference {
			return unknown(key + "=" + raw)
		}
		if strings.HasPrefix(key, "_include") {
			if inc.Source != q.Type && !inc.Iterate {
				return badValue(key, "_include source type must be the searched type")
			}
			q.Include = append(q.Include, inc)
		} else {
			q.RevInclude = append(q.RevInclude, inc)
		}
		return nil
	}
	name, mod := key, ""
	if i := strings.IndexByte(key, ':'); i >= 0 {
		name, mod = key[:i], key[i+1:]
	}
	sp, ok := params[name]
	if !ok || strings.Contains(name, ".") {
		return unknown(key)
	}
	c := Clause{Name: name, Modifier: mod, Param: sp}
	if !modifierOK(sp.Type, mod) {
		return badValue(key, "modifier :"+mod+" is not supported for this parameter")
	}
	if mod == "missing" {
		if raw != "true" && raw != "false" {
			return badValue(key, ":missing takes true or false")
		}
		c.Values = []QValue{{Raw: raw}}
		q.Clauses = append(q.Clauses, c)
		return nil
	}
	for _, part := range splitValues(raw) {
		v, err := parseValue(sp, mod, part, base)
		if err != nil {
			return badValue(key, err.Error())
		}
		c.Values = append(c.Values, v)
	}
	if len(c.Values) == 0 {
		return nil // an empty value is ignored (R4 search.html)
	}
	q.Clauses = append(q.Clauses, c)
	return nil
}

func modifierOK(t ParamType, mod string) bool {
	switch mod {
	case "", "missing":
		return true
	case "exact", "contains":
		return t == TypeString
	case "not", "text":
		return t == TypeToken
	case "identifier":
		return false
	}
	if t == TypeReference && IsResourceType(mod) {
		return true
	}
	return false
}

// splitValues splits on commas not escaped with a backslash. The parts
// keep their escapes: parseValue splits tokens and quantities on unescaped
// '|' first, then unescapes (R4 search.html#escaping).
func splitValues(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++ // the escaped character
		case ',':
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out
}

// unescape removes the backslash of "\,", "\|", "\$" and "\\".
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) && strings.IndexByte(`,|$\`, s[i+1]) >= 0 {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// splitPipes splits s on '|' not escaped with a backslash, into at most n
// parts, and unescapes them.
func splitPipes(s string, n int) []string {
	var out []string
	start := 0
	for i := 0; i < len(s) && len(out) < n-1; i++ {
		switch s[i] {
		case '\\':
			i++
		case '|':
			out = append(out, unescape(s[start:i]))
			start = i + 1
		}
	}
	return append(out, unescape(s[start:]))
}

type valueErr string

func (e valueErr) Error() string { return string(e) }

func splitPrefix(s string) (string, string) {
	if len(s) > 2 {
		for _, p := range prefixes {
			if strings.HasPrefix(s, p) && (s[2] >= '0' && s[2] <= '9' || s[2] == '-' || s[2] == '.') {
				return p, s[2:]
			}
		}
	}
	return "eq", s
}

func parseValue(sp *SearchParam, mod, raw, base string) (QValue, error) {
	esc := raw
	raw = unescape(raw)
	v := QValue{Raw: raw}
	switch sp.Type {
	case TypeToken:
		if mod == "text" {
			return v, nil
		}
		if parts := splitPipes(esc, 2); len(parts) == 2 {
			v.System, v.Code = parts[0], parts[1]
			switch {
			case v.System == "" && v.Code == "":
				return v, valueErr("empty token")
			case v.System == "":
				v.NoSystem = true
			case v.Code == "":
				v.SystemOnly = true
			}
		} else {
			v.Code, v.AnySystem = raw, true
		}
	case TypeString, TypeURI:
	case TypeDate:
		v.Prefix, raw = splitPrefix(raw)
		lo, hi, ok := ParseDate(raw)
		if !ok {
			return v, valueErr("not a valid date/dateTime search value")
		}
		v.Lo, v.Hi = lo, hi
	case TypeNumber, TypeQuantity:
		v.Prefix, raw = splitPrefix(raw)
		numStr := raw
		if sp.Type == TypeQuantity {
			_, esc = splitPrefix(esc)
			parts := splitPipes(esc, 3)
			numStr = parts[0]
			if len(parts) == 3 {
				v.UnitSys, v.UnitCode = parts[1], parts[2]
			} else if len(parts) == 2 {
				return v, valueErr("quantity must be number|system|code or number")
			}
		}
		// A decimal as FHIR writes it: strconv alone would take NaN, Inf
		// and hex floats.
		if !decimalRE.MatchString(numStr) {
			return v, valueErr("not a valid number")
		}
		f, err := strconv.ParseFloat(numStr, 64)
		if err != nil {
			return v, valueErr("not a valid number")
		}
		v.Num = f
		half := 0.5
		decimals := 0
		if i := strings.IndexAny(numStr, "eE"); i < 0 {
			if j := strings.IndexByte(numStr, '.'); j >= 0 {
				decimals = len(numStr) - j - 1
				half = roundHalf(decimals)
			}
		} else {
			half = math.Abs(f) * 1e-9
		}
		v.NumLo, v.NumHi = f-half, f+half
		// Bounds in exact decimal arithmetic, then rounded once: f-half
		// in floating point puts 5.35 outside [5.35, 5.45) for "5.4".
		if r, ok := new(big.Rat).SetString(numStr); ok && !strings.ContainsAny(numStr, "eE") {
			h := new(big.Rat).SetFrac(big.NewInt(5), new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(decimals+1)), nil))
			v.NumLo, _ = new(big.Rat).Sub(r, h).Float64()
			v.NumHi, _ = new(big.Rat).Add(r, h).Float64()
		}
	case TypeReference:
		if IsResourceType(mod) {
			raw = mod + "/" + raw
		}
		if strings.Contains(raw, "/") || strings.Contains(raw, ":") {
			v.Ref = ParseReference(raw, base)
			if v.Ref.RefType == "" && !strings.Contains(raw, "://") && !strings.HasPrefix(raw, "urn:") {
				return v, valueErr("reference must be Type/id, id or an absolute URL")
			}
		} else {
			v.Ref = Value{RefID: raw}
		}
	}
	return v, nil
}

// Candidates returns, for each clause that can be answered from the index,
// the terms any one of which a matching resource must have. Clauses that
// need a scan contribute nothing; Matches does the exact check.
func (q *Query) Candidates() [][]Term {
	var out [][]Term
	for _, c := range q.Clauses {
		var or []Term
		ok := true
		for _, v := range c.Values {
			t, found := termFor(c, v)
			if !found {
				ok = false
				break
			}
			or = append(or, t)
		}
		if ok && len(or) > 0 {
			out = append(out, or)
		}
	}
	return out
}

func termFor(c Clause, v QValue) (Term, bool) {
	t := Term{Param: c.Name}
	if c.Param != nil && c.Param.SameAs != "" {
		t.Param = c.Param.SameAs
	}
	// :missing has no term to look up, and _lastUpdated is not indexed
	// (IndexTerms skips it).
	if c.Modifier == "missing" || c.Name == ParamLastUpdated {
		return t, false
	}
	if c.Name == ParamID {
		if c.Modifier != "" {
			return t, false
		}
		t.Value = "c:" + v.Raw
		return t, true
	}
	switch c.Param.Type {
	case TypeToken:
		if c.Modifier != "" {
			return t, false
		}
		switch {
		case v.AnySystem:
			t.Value = "c:" + v.Code
		case v.NoSystem:
			t.Value = "n:" + v.Code
		case v.SystemOnly:
			if c.Param.NoSystemTerms {
				return t, false // not indexed: scan
			}
			t.Value = "s:" + v.System
		default:
			t.Value = "sc:" + v.System + "|" + v.Code
		}
		return t, true
	case TypeString:
		if c.Modifier == "contains" {
			return t, false
		}
		n := NormalizeString(v.Raw)
		if n == "" {
			return t, false
		}
		var ok bool
		if t.Value, _, ok = prefixTerm(c.Param, n); !ok {
			return t, false
		}
		return t, true
	case TypeReference:
		switch {
		case v.Ref.RefType != "":
			t.Value = "r:" + v.Ref.RefType + "/" + v.Ref.RefID
		case v.Ref.RefID != "":
			t.Value = "i:" + v.Ref.RefID
		default:
			t.Value = "u:" + v.Ref.RefURL
		}
		return t, true
	case TypeDate:
		if v.Prefix != "eq" {
			return t, false
		}
		last := v.Hi.Add(-time.Nanosecond)
		switch {
		case v.Lo.Year() != last.Year():
			return t, false
		case v.Lo.Month() != last.Month():
			t.Value = "y:" + v.Lo.Format("2006")
		case v.Lo.Day() != last.Day():
			t.Value = "m:" + v.Lo.Format("2006-01")
		default:
			t.Value = "d:" + v.Lo.Format("2006-01-02")
		}
		return t, true
	case TypeQuantity:
		if v.UnitCode == "" {
			return t, false
		}
		if v.UnitSys != "" {
			t.Value = "qsc:" + v.UnitSys + "|" + v.UnitCode
		} else {
			t.Value = "qc:" + v.UnitCode
		}
		return t, true
	case TypeURI:
		t.Value = "u:" + v.Raw
		return t, true
	}
	return t, false
}

// Matches reports whether a stored resource document matches every clause.
func (q *Query) Matches(doc map[string]any, base string) bool {
	for _, c := range q.Clauses {
		if !c.matches(doc, base) {
			return false
		}
	}
	return true
}

func (c Clause) matches(doc map[string]any, base string) bool {
	vals := c.values(doc, base)
	if c.Modifier == "missing" {
		return (len(vals) == 0) == (c.Values[0].Raw == "true")
	}
	if c.Param.Type == TypeToken && c.Modifier == "not" {
		for _, qv := range c.Values {
			for _, v := range vals {
				if tokenMatch(qv, v) {
					return false
				}
			}
		}
		return true
	}
	for _, qv := range c.Values {
		if c.Param.Type == TypeDate && qv.Prefix == "ne" {
			if len(vals) == 0 {
				continue
			}
			all := true
			for _, v := range vals {
				if dateMatch("eq", qv, v) {
					all = false
				}
			}
			if all {
				return true
			}
			continue
		}
		for _, v := range vals {
			if c.valueMatch(qv, v) {
				return true
			}
		}
	}
	return false
}

func (c Clause) values(doc map[string]any, base string) []Value {
	switch c.Name {
	case ParamID:
		id, _ := doc["id"].(string)
		return []Value{{Code: id}}
	case ParamLastUpdated:
		m, _ := doc["meta"].(map[string]any)
		s, _ := m["lastUpdated"].(string)
		lo, hi, ok := ParseDate(s)
		if !ok {
			return nil
		}
		return []Value{{Lo: lo, Hi: hi}}
	}
	return Extract(doc, c.Param, base)
}

func (c Clause) valueMatch(qv QValue, v Value) bool {
	switch c.Param.Type {
	case TypeToken:
		if c.Modifier == "text" {
			return strings.HasPrefix(NormalizeString(v.Text), NormalizeString(qv.Raw))
		}
		return tokenMatch(qv, v)
	case TypeString:
		switch c.Modifier {
		case "exact":
			return v.Str == qv.Raw
		case "contains":
			return strings.Contains(v.Norm, NormalizeString(qv.Raw))
		}
		return strings.HasPrefix(v.Norm, NormalizeString(qv.Raw))
	case TypeURI:
		return v.Str == qv.Raw
	case TypeDate:
		return dateMatch(qv.Prefix, qv, v)
	case TypeReference:
		switch {
		case qv.Ref.RefType != "":
			return v.RefType == qv.Ref.RefType && v.RefID == qv.Ref.RefID
		case qv.Ref.RefID != "":
			return v.RefType != "" && v.RefID == qv.Ref.RefID
		default:
			return v.RefURL == qv.Ref.RefURL
		}
	case TypeQuantity, TypeNumber:
		if !v.HasNum {
			return false
		}
		switch {
		case qv.UnitSys != "" && qv.UnitCode != "":
			// number|system|code: Quantity.system and Quantity.code.
			if v.UnitSys != qv.UnitSys || v.UCode != qv.UnitCode {
				return false
			}
		case qv.UnitCode != "":
			// number||code: Quantity.code or Quantity.unit.
			if v.UCode != qv.UnitCode && v.Unit != qv.UnitCode {
				return false
			}
		}
		return numMatch(qv, v.Num)
	}
	return false
}

func tokenMatch(qv QValue, v Value) bool {
	switch {
	case qv.AnySystem:
		return v.Code == qv.Code
	case qv.NoSystem:
		return !v.HasSystem && v.Code == qv.Code
	case qv.SystemOnly:
		return v.HasSystem && v.System == qv.System
	}
	return v.HasSystem && v.System == qv.System && v.Code == qv.Code
}

// dateMatch applies an R4 date prefix to the search range [qv.Lo, qv.Hi)
// and the value range [v.Lo, v.Hi).
func dateMatch(prefix string, qv QValue, v Value) bool {
	ql, qh, rl, rh := qv.Lo, qv.Hi, v.Lo, v.Hi
	switch prefix {
	case "eq":
		return !rl.Before(ql) && !rh.After(qh)
	case "ne":
		return !(!rl.Before(ql) && !rh.After(qh))
	case "gt":
		return rh.After(qh)
	case "lt":
		return rl.Before(ql)
	case "ge":
		return rh.After(qh) || (!rl.Before(ql) && !rh.After(qh))
	case "le":
		return rl.Before(ql) || (!rl.Before(ql) && !rh.After(qh))
	case "sa":
		return !rl.Before(qh)
	case "eb":
		return !rh.After(ql)
	case "ap":
		// Within 10% of the distance from now, at least a day.
		now := time.Now()
		gap := now.Sub(ql)
		if gap < 0 {
			gap = -gap
		}
		tol := gap / 10
		if tol < 24*time.Hour {
			tol = 24 * time.Hour
		}
		return rl.Before(qh.Add(tol)) && rh.After(ql.Add(-tol))
	}
	return false
}

func numMatch(qv QValue, n float64) bool {
	switch qv.Prefix {
	case "eq":
		return n >= qv.NumLo && n < qv.NumHi
	case "ne":
		return !(n >= qv.NumLo && n < qv.NumHi)
	case "gt", "sa":
		return n > qv.Num
	case "lt", "eb":
		return n < qv.Num
	case "ge":
		return n >= qv.Num
	case "le":
		return n <= qv.Num
	case "ap":
		tol := math.Abs(qv.Num) * 0.1
		return n >= qv.Num-tol && n <= qv.Num+tol
	}
	return false
}

// SortValue returns the value a document sorts by for key k: the earliest
// (ascending) or latest (descending) date, or the smallest string.
func SortValue(doc map[string]any, k SortKey, base string) string {
	if k.Name == ParamLastUpdated {
		m, _ := doc["meta"].(map[string]any)
		s, _ := m["lastUpdated"].(string)
		if lo, _, ok := ParseDate(s); ok {
			// Fixed width, so that string order is time order.
			return lo.Format("2006-01-02T15:04:05.000000000")
		}
		return ""
	}
	if k.Name == ParamID {
		id, _ := doc["id"].(string)
		return id
	}
	vals := Extract(doc, k.Param, base)
	best := ""
	for i, v := range vals {
		var s string
		switch k.Param.Type {
		case TypeDate:
			if k.Desc {
				s = v.Hi.Format("2006-01-02T15:04:05.000000000")
			} else {
				s = v.Lo.Format("2006-01-02T15:04:05.000000000")
			}
		case TypeString:
			s = v.Norm
		case TypeToken:
			s = v.Code
		case TypeQuantity, TypeNumber:
			s = strconv.FormatFloat(v.Num+1e15, 'f', 6, 64)
		case TypeReference:
			s = v.RefType + "/" + v.RefID + v.RefURL
		}
		if i == 0 || (k.Desc && s > best) || (!k.Desc && s < best) {
			best = s
		}
	}
	return best
}

// Exact reports whether Candidates answers the query exactly, so a store
// can evaluate it without Matches (e.g. atomically, for conditional create).
func (q *Query) Exact() bool {
	for _, c := range q.Clauses {
		for _, v := range c.Values {
			if _, ok := termFor(c, v); !ok {
				return false
			}
			switch c.Param.Type {
			case TypeString:
				if _, exact, _ := prefixTerm(c.Param, NormalizeString(v.Raw)); !exact || c.Modifier != "" {
					return false
				}
			case TypeQuantity:
				return false
			case TypeDate:
				if v.Hi != v.Lo.AddDate(1, 0, 0) && v.Hi != v.Lo.AddDate(0, 1, 0) && v.Hi != v.Lo.AddDate(0, 0, 1) {
					return false
				}
			}
		}
	}
	return true
}

// decimalRE is a decimal search value: FHIR's decimal with an optional
// "+" sign.
var decimalRE = regexp.MustCompile(`^[+-]?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?$`)
