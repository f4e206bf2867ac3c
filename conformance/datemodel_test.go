package conformance

import (
	"slices"
	"testing"
	"time"
)

// TestMatchDateSpecExamples checks the model against the examples of R4
// search.html (date section and prefix table).
func TestMatchDateSpecExamples(t *testing.T) {
	tests := []struct {
		search, target string
		start, end     string // target Period, when target is ""
		want           bool
	}{
		{search: "eq2013-01-14", target: "2013-01-14T00:00Z", want: true},
		{search: "eq2013-01-14", target: "2013-01-14T10:00Z", want: true},
		{search: "eq2013-01-14", target: "2013-01-15T00:00Z", want: false},
		{search: "ne2013-01-14", target: "2013-01-15T00:00Z", want: true},
		{search: "ne2013-01-14", target: "2013-01-14T00:00Z", want: false},
		{search: "ne2013-01-14", target: "2013-01-14T10:00Z", want: false},
		{search: "lt2013-01-14T10:00Z", target: "2013-01-14", want: true},
		{search: "gt2013-01-14T10:00Z", target: "2013-01-14", want: true},
		{search: "ge2013-03-14", start: "2013-01-21", want: true},
		// Hand-checked cases on the designed data.
		{search: "eq2013", target: "2013-01", want: true},
		{search: "eq2013-01", target: "2013", want: false},
		{search: "gt2013-01", target: "2013", want: true},
		{search: "lt2013-01", target: "2013", want: false},
		{search: "le2013-01", target: "2013", want: false},
		{search: "ge2013-01", target: "2013", want: true},
		{search: "sa2013-01-14", target: "2013-01-15", want: true},
		{search: "sa2013-01-14", target: "2013-01-14", want: false},
		{search: "eb2013-01-14", target: "2013-01-13", want: true},
		{search: "eb2013-01-14", target: "2013-01", want: false},
		{search: "eq2013-01-14T12:00:00Z", target: "2013-01-14", want: false},
		{search: "gt2013-01-14T12:00:00Z", target: "2013-01-14T12:00:00Z", want: false},
		{search: "ge2013-01-14T12:00:00Z", target: "2013-01-14T12:00:00Z", want: true},
		{search: "eq2013-01-14T13:00:00+01:00", target: "2013-01-14T12:00:00Z", want: true},
		{search: "eq2013-01-14T12:00Z", target: "2013-01-14T12:00:59Z", want: true},
		{search: "eq2013-01-14T12:00Z", target: "2013-01-14T12:01:00Z", want: false},
		{search: "eq2012-12-20T12:00:00Z", target: "2012-12-20T12:00:00.000Z", want: true},
		{search: "gt2100", start: "2012-06-01T12:00:00Z", want: true},
		{search: "eq2013", start: "2012-06-01T12:00:00Z", want: false},
		{search: "lt2013", start: "", end: "2013-06-01", want: true},
	}
	for _, tt := range tests {
		prefix, value := tt.search[:2], tt.search[2:]
		s, err := parseInterval(value, time.UTC)
		if err != nil {
			t.Fatal(err)
		}
		target := dateTarget{Element: "birthDate", Value: tt.target}
		if tt.target == "" {
			target = dateTarget{Element: "effectivePeriod", Start: tt.start, End: tt.end}
		}
		iv, err := target.interval(time.UTC)
		if err != nil {
			t.Fatal(err)
		}
		if got := matchDate(prefix, s, iv); got != tt.want {
			t.Errorf("%s vs %+v: got %v, want %v", tt.search, target, got, tt.want)
		}
	}
}

// TestDateCasesHandChecked pins a few expectations of the designed data, so a
// change to the model that silently changes the suite is noticed.
func TestDateCasesHandChecked(t *testing.T) {
	tests := []struct {
		prefix, value string
		targets       []dateTarget
		want          []string
	}{
		{"eq", "2013", birthdateTargets, []string{"B2", "B3", "B4", "B5", "B6"}},
		{"ne", "2013", birthdateTargets, []string{"B1", "B7", "B8"}},
		{"lt", "2013-01", birthdateTargets, []string{"B1", "B8"}},
		{"gt", "2013-01", birthdateTargets, []string{"B4", "B5", "B7"}},
		{"eq", "2013-01-14", birthdateTargets, []string{"B2"}},
		{"gt", "2013-01-14", birthdateTargets, []string{"B3", "B4", "B5", "B6", "B7"}},
		{"sa", "2013-01-14", birthdateTargets, []string{"B3", "B4", "B7"}},
		{"eb", "2013-01-14", birthdateTargets, []string{"B1", "B8"}},
		{"eq", "2013-01-14T12:00:00Z", birthdateTargets, nil},
		{"lt", "2013-01-14T12:00:00Z", birthdateTargets, []string{"B1", "B2", "B5", "B6", "B8"}},
		{"eq", "2013-01-14", obsDateTargets, []string{"O1", "O3"}},
		{"eq", "2013-01", obsDateTargets, []string{"O1", "O2", "O3", "O6"}},
		{"eq", "2013-01-14T12:00:00Z", obsDateTargets, []string{"O1"}},
		{"eq", "2013-01-14T13:00:00+01:00", obsDateTargets, []string{"O1"}},
		{"eq", "2013-01-14T12:30Z", obsDateTargets, []string{"O3"}},
		{"gt", "2013-01-14T12:00:00Z", obsDateTargets, []string{"O2", "O3", "O4", "O6", "O8"}},
		{"sa", "2013-01-14", obsDateTargets, []string{"O4"}},
		{"eb", "2013-01", obsDateTargets, []string{"O5", "O7"}},
	}
	for _, tt := range tests {
		got, err := expectedDate(tt.prefix, tt.value, tt.targets, time.UTC)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s%s: got %v, want %v", tt.prefix, tt.value, got, tt.want)
		}
	}
}

// TestDateCasesZoneIndependent checks that every designed date case has the
// same answer whatever the server's local time zone between UTC-11 and
// UTC+11, since R4 reads zone-less dates in the server's zone.
func TestDateCasesZoneIndependent(t *testing.T) {
	sets := []struct {
		targets []dateTarget
		values  []string
	}{
		{birthdateTargets, birthdateValues},
		{obsDateTargets, obsDateValues},
	}
	for _, set := range sets {
		for _, v := range set.values {
			for _, p := range datePrefixes {
				ref, err := expectedDate(p, v, set.targets, time.UTC)
				if err != nil {
					t.Fatal(err)
				}
				for h := -11; h <= 11; h++ {
					loc := time.FixedZone("test", h*3600)
					got, err := expectedDate(p, v, set.targets, loc)
					if err != nil {
						t.Fatal(err)
					}
					if !slices.Equal(got, ref) {
						t.Errorf("%s%s depends on the server zone: UTC%+d gives %v, UTC gives %v", p, v, h, got, ref)
					}
				}
			}
		}
	}
}

// TestDateCasesDiscriminate makes sure the designed data is not trivial:
// every prefix gives, for some value, neither nothing nor everything.
func TestDateCasesDiscriminate(t *testing.T) {
	for _, set := range []struct {
		targets []dateTarget
		values  []string
	}{{birthdateTargets, birthdateValues}, {obsDateTargets, obsDateValues}} {
		for _, p := range datePrefixes {
			ok := false
			for _, v := range set.values {
				got, _ := expectedDate(p, v, set.targets, time.UTC)
				if len(got) > 0 && len(got) < len(set.targets) {
					ok = true
				}
			}
			if !ok {
				t.Errorf("prefix %s never discriminates between targets %v", p, set.targets[0].Key)
			}
		}
	}
}

func TestParseInterval(t *testing.T) {
	tests := []struct {
		in     string
		lo, hi string
	}{
		{"2013", "2013-01-01T00:00:00Z", "2013-12-31T23:59:59.999Z"},
		{"2013-02", "2013-02-01T00:00:00Z", "2013-02-28T23:59:59.999Z"},
		{"2013-01-14", "2013-01-14T00:00:00Z", "2013-01-14T23:59:59.999Z"},
		{"2013-01-14T10:00Z", "2013-01-14T10:00:00Z", "2013-01-14T10:00:59.999Z"},
		{"2013-01-14T10:00:05+02:00", "2013-01-14T08:00:05Z", "2013-01-14T08:00:05.999Z"},
		{"2013-01-14T10:00:05.5-01:30", "2013-01-14T11:30:05.5Z", "2013-01-14T11:30:05.599Z"},
		{"2012-12-20T12:00:00.000Z", "2012-12-20T12:00:00Z", "2012-12-20T12:00:00Z"},
	}
	for _, tt := range tests {
		iv, err := parseInterval(tt.in, time.UTC)
		if err != nil {
			t.Fatal(err)
		}
		lo, _ := time.Parse(time.RFC3339Nano, tt.lo)
		hi, _ := time.Parse(time.RFC3339Nano, tt.hi)
		if !iv.lo.Equal(lo) || !iv.hi.Equal(hi) {
			t.Errorf("%s: got [%s, %s], want [%s, %s]", tt.in,
				iv.lo.UTC().Format(time.RFC3339Nano), iv.hi.UTC().Format(time.RFC3339Nano), tt.lo, tt.hi)
		}
	}
	for _, bad := range []string{"", "13", "2013-1", "2013-01-14T10", "not a date"} {
		if _, err := parseInterval(bad, time.UTC); err == nil {
			t.Errorf("%q: want error", bad)
		}
	}
}
