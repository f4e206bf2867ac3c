package fhir_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/fhir"
)

// refParseDate is ParseDate before it skipped layouts: every layout in
// turn.
func refParseDate(s string) (lo, hi time.Time, ok bool) {
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

var dateInputs = []string{
	"", "2013", "-123", "+123", "201", "20131", "2013-01", "2013-1", "2013-13", "2013-01-14", "2013-02-30",
	"2013-01-14T10:00", "2013-01-14T1:00", "2013-01-14T10:00Z", "2013-01-14T10:00:00", "2013-01-14T10:00:00Z",
	"2013-01-14T10:00:00+01:00", "2013-01-14T10:00:00-05:30", "2013-01-14T10:00+01:00", "2013-01-14T10:00:00.123Z",
	"2013-01-14T10:00:00.1234567891234+01:00", "2013-01-14T10:00:00.", "2013-01-14T10:00:00.5", "2013-01-14T24:00:00Z",
	"2013-01-14T10:00:00+0100", "2013-01-14T10:00:00z", "2013-01-14 10:00:00", "T", "2013T", "2013-01-14T", "2013-01-14TZ",
	"2013-01-14T10:00:00Z+01:00", "2013-01-14T10:00:00-", "-2013-01-14T10:00", "2013-01-14T10:00:60Z", "1.5", "2013.5",
}

func TestParseDateMatchesTryingEveryLayout(t *testing.T) {
	for _, s := range dateInputs {
		checkParseDate(t, s)
	}
}

func checkParseDate(t *testing.T, s string) {
	lo, hi, ok := fhir.ParseDate(s)
	wlo, whi, wok := refParseDate(s)
	if ok != wok || !lo.Equal(wlo) || !hi.Equal(whi) {
		t.Errorf("ParseDate(%q) = %v %v %v, want %v %v %v", s, lo, hi, ok, wlo, whi, wok)
	}
}

func FuzzParseDate(f *testing.F) {
	for _, s := range dateInputs {
		f.Add(s)
	}
	f.Fuzz(checkParseDate)
}
