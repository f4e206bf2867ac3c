package conformance

import (
	"fmt"
	"regexp"
	"strconv"
	"time"
)

// This file is a small reference model of R4 date search (search.html,
// "Prefixes" and "date"): every date, dateTime, instant or Period is an
// interval whose width follows its precision, and each prefix compares the
// interval of the search value with the interval of the resource value:
//
//	eq  the range of the search value fully contains the range of the target
//	ne  the range of the search value does not fully contain the target
//	gt  the range above the search value intersects the target
//	lt  the range below the search value intersects the target
//	ge  gt, or the search range fully contains the target
//	le  lt, or the search range fully contains the target
//	sa  no overlap, and the range above the search value contains the target
//	eb  no overlap, and the range below the search value contains the target
//
// (ap is implementation-defined and is tested separately.) The search suite
// derives its expected results from this model; the unit tests check the
// model against the examples in search.html and check that every designed
// case gives the same answer whatever the server's local time zone
// (UTC-11 ... UTC+11), which matters for values without a zone.

// interval is a closed range of instants at millisecond resolution.
type interval struct{ lo, hi time.Time }

var (
	minTime = time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)
	maxTime = time.Date(9999, 12, 31, 23, 59, 59, 999e6, time.UTC)
)

var fhirDateRE = regexp.MustCompile(`^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$`)

// parseInterval returns the implicit range of a FHIR date/dateTime/instant
// (or search date value). Values without a zone are read in loc.
func parseInterval(s string, loc *time.Location) (interval, error) {
	m := fhirDateRE.FindStringSubmatch(s)
	if m == nil {
		return interval{}, fmt.Errorf("not a FHIR date/dateTime: %q", s)
	}
	atoi := func(v string, def int) int {
		if v == "" {
			return def
		}
		n, _ := strconv.Atoi(v)
		return n
	}
	if m[8] != "" {
		if m[8] == "Z" {
			loc = time.UTC
		} else {
			h, mm := atoi(m[8][1:3], 0), atoi(m[8][4:6], 0)
			off := (h*60 + mm) * 60
			if m[8][0] == '-' {
				off = -off
			}
			loc = time.FixedZone(m[8], off)
		}
	}
	ms := 0
	fracDigits := len(m[7])
	if fracDigits > 0 {
		f := m[7]
		if len(f) > 3 {
			f = f[:3]
		}
		for len(f) < 3 {
			f += "0"
		}
		ms = atoi(f, 0)
	}
	lo := time.Date(atoi(m[1], 0), time.Month(atoi(m[2], 1)), atoi(m[3], 1),
		atoi(m[4], 0), atoi(m[5], 0), atoi(m[6], 0), ms*1e6, loc)
	var next time.Time
	switch {
	case m[2] == "":
		next = lo.AddDate(1, 0, 0)
	case m[3] == "":
		next = lo.AddDate(0, 1, 0)
	case m[4] == "":
		next = lo.AddDate(0, 0, 1)
	case m[6] == "":
		next = lo.Add(time.Minute)
	case fracDigits == 0:
		next = lo.Add(time.Second)
	case fracDigits == 1:
		next = lo.Add(100 * time.Millisecond)
	case fracDigits == 2:
		next = lo.Add(10 * time.Millisecond)
	default:
		next = lo.Add(time.Millisecond)
	}
	return interval{lo: lo, hi: next.Add(-time.Millisecond)}, nil
}

// matchDate applies an R4 date prefix (not ap) to a search interval s and a
// target interval t.
func matchDate(prefix string, s, t interval) bool {
	contains := !t.lo.Before(s.lo) && !t.hi.After(s.hi) // s fully contains t
	above := t.hi.After(s.hi)                           // (s.hi, +inf) intersects t
	below := t.lo.Before(s.lo)                          // (-inf, s.lo) intersects t
	switch prefix {
	case "eq", "":
		return contains
	case "ne":
		return !contains
	case "gt":
		return above
	case "lt":
		return below
	case "ge":
		return above || contains
	case "le":
		return below || contains
	case "sa":
		return t.lo.After(s.hi)
	case "eb":
		return t.hi.Before(s.lo)
	}
	panic("matchDate: unsupported prefix " + prefix)
}

// datePrefixes are the prefixes with a deterministic answer.
var datePrefixes = []string{"eq", "ne", "lt", "gt", "le", "ge", "sa", "eb"}

// dateTarget is one test resource's date element.
type dateTarget struct {
	Key     string
	Element string // birthDate, effectiveDateTime, effectiveInstant or effectivePeriod
	Value   string // for a single value
	Start   string // for a Period ("" = open)
	End     string // for a Period ("" = open)
}

// interval returns the target's range; zone-less values are read in loc.
func (t dateTarget) interval(loc *time.Location) (interval, error) {
	if t.Element != "effectivePeriod" {
		return parseInterval(t.Value, loc)
	}
	iv := interval{lo: minTime, hi: maxTime}
	if t.Start != "" {
		s, err := parseInterval(t.Start, loc)
		if err != nil {
			return iv, err
		}
		iv.lo = s.lo
	}
	if t.End != "" {
		e, err := parseInterval(t.End, loc)
		if err != nil {
			return iv, err
		}
		iv.hi = e.hi
	}
	return iv, nil
}

// element returns the JSON element(s) to put into the resource.
func (t dateTarget) element() map[string]any {
	if t.Element != "effectivePeriod" {
		return map[string]any{t.Element: t.Value}
	}
	p := map[string]any{}
	if t.Start != "" {
		p["start"] = t.Start
	}
	if t.End != "" {
		p["end"] = t.End
	}
	return map[string]any{"effectivePeriod": p}
}

// expectedDate returns the keys of targets matching prefix+value.
func expectedDate(prefix, value string, targets []dateTarget, loc *time.Location) ([]string, error) {
	s, err := parseInterval(value, loc)
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, t := range targets {
		iv, err := t.interval(loc)
		if err != nil {
			return nil, err
		}
		if matchDate(prefix, s, iv) {
			keys = append(keys, t.Key)
		}
	}
	return keys, nil
}

// Patient.birthDate test data (search parameter birthdate). Dates have no
// zone; search values are chosen so the answer does not depend on the
// server's zone.
var birthdateTargets = []dateTarget{
	{Key: "B1", Element: "birthDate", Value: "2012-12-31"},
	{Key: "B2", Element: "birthDate", Value: "2013-01-14"},
	{Key: "B3", Element: "birthDate", Value: "2013-01-15"},
	{Key: "B4", Element: "birthDate", Value: "2013-02-10"},
	{Key: "B5", Element: "birthDate", Value: "2013"},
	{Key: "B6", Element: "birthDate", Value: "2013-01"},
	{Key: "B7", Element: "birthDate", Value: "2014-06-30"},
	{Key: "B8", Element: "birthDate", Value: "1950-06-01"},
}

// birthdateValues are the search values used with every prefix.
var birthdateValues = []string{"2013", "2013-01", "2013-01-14", "2013-01-14T12:00:00Z"}

// Observation.effective[x] test data (search parameter date): dateTime with
// and without zone, partial dateTime, instant, closed and open Period.
var obsDateTargets = []dateTarget{
	{Key: "O1", Element: "effectiveDateTime", Value: "2013-01-14T12:00:00Z"},
	{Key: "O2", Element: "effectivePeriod", Start: "2013-01-10T12:00:00Z", End: "2013-01-20T12:00:00Z"},
	{Key: "O3", Element: "effectiveDateTime", Value: "2013-01-14T15:30:00+03:00"},
	{Key: "O4", Element: "effectiveDateTime", Value: "2013-03-05T12:00:00Z"},
	{Key: "O5", Element: "effectiveInstant", Value: "2012-12-20T12:00:00.000Z"},
	{Key: "O6", Element: "effectiveDateTime", Value: "2013-01"},
	{Key: "O7", Element: "effectiveDateTime", Value: "1990-05-05T12:00:00Z"},
	{Key: "O8", Element: "effectivePeriod", Start: "2012-06-01T12:00:00Z"},
}

// obsDateValues are the search values used with every prefix; the last two
// name the same instant as the fourth in another zone / precision.
var obsDateValues = []string{
	"2013", "2013-01", "2013-01-14",
	"2013-01-14T12:00:00Z", "2013-01-14T13:00:00+01:00", "2013-01-14T12:30Z",
}

// apCase is an ap (approximately) search: the answer is implementation
// defined, so only clear-cut members and non-members are checked.
type apCase struct {
	Value            string
	Include, Exclude []string
}

var birthdateAp = []apCase{
	{Value: "2013-01-14", Include: []string{"B2"}, Exclude: []string{"B8"}},
	{Value: "1950-06-01", Include: []string{"B8"}, Exclude: []string{"B2", "B3", "B7"}},
}

var obsDateAp = []apCase{
	{Value: "2013-01-14T12:00:00Z", Include: []string{"O1"}, Exclude: []string{"O7"}},
	{Value: "1990-05-05", Include: []string{"O7"}, Exclude: []string{"O1", "O4"}},
}
