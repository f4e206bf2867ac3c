package gateway_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/gateway"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/google/go-cmp/cmp"
)

func observation(subject, effective string) string {
	s := `{"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]}`
	if subject != "" {
		s += `, "subject": {"reference": "` + subject + `"}`
	}
	if effective != "" {
		s += `, "effectiveDateTime": "` + effective + `"`
	}
	return s + "}"
}

func TestSearchPaging(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		s := newServer(t, gateway.Config{Store: st})
		var want []string
		for range 5 {
			want = append(want, "Patient/"+s.create(t, "Patient", patient("Pager")))
		}
		s.create(t, "Patient", patient("Other"))
		sort.Strings(want)

		var got []string
		next := "/Patient?family=pager&_count=2"
		for page := 1; next != ""; page++ {
			if page > 5 {
				t.Fatalf("more pages than expected; at %s", next)
			}
			b := s.do(t, http.MethodGet, next, "").bundle(t)
			if b.Type != "searchset" {
				t.Errorf("page %d: type %q", page, b.Type)
			}
			if b.total(t) != 5 {
				t.Errorf("page %d: total = %d, want 5", page, b.total(t))
			}
			if b.link("self") == "" {
				t.Errorf("page %d: no self link", page)
			}
			if page == 1 && b.link("previous") != "" {
				t.Errorf("page 1 has a previous link %q", b.link("previous"))
			}
			if page == 2 {
				prev := b.link("previous")
				if prev == "" {
					t.Errorf("page 2 has no previous link")
				} else {
					p := s.do(t, http.MethodGet, prev, "").bundle(t).refs(t, "match")
					if diff := cmp.Diff(got[:2], p); diff != "" {
						t.Errorf("previous of page 2 is not page 1 (-want +got):\n%s", diff)
					}
				}
			}
			refs := b.refs(t, "match")
			if wantN := min(2, 5-len(got)); len(refs) != wantN {
				t.Errorf("page %d has %d entries, want %d", page, len(refs), wantN)
			}
			got = append(got, refs...)
			next = b.link("next")
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("paged ids (-want +got):\n%s", diff)
		}
		seen := map[string]bool{}
		for _, id := range got {
			if seen[id] {
				t.Errorf("%s returned twice", id)
			}
			seen[id] = true
		}
	})
}

func TestSearchSortDate(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		s := newServer(t, gateway.Config{Store: st})
		o3 := "Observation/" + s.create(t, "Observation", observation("", "2013-01-03"))
		o1 := "Observation/" + s.create(t, "Observation", observation("", "2013-01-01"))
		o2 := "Observation/" + s.create(t, "Observation", observation("", "2013-01-02T10:00:00Z"))
		none := "Observation/" + s.create(t, "Observation", observation("", ""))
		tests := []struct {
			name  string
			query string
			want  []string
		}{
			// resources without the value sort last either way
			{"ascending", "_sort=date", []string{o1, o2, o3, none}},
			{"descending", "_sort=-date", []string{o3, o2, o1, none}},
			{"with a filter", "_sort=-date&date=ge2013-01-02", []string{o3, o2}},
		}
		for _, test := range tests {
			t.Run(test.name, func(t *testing.T) {
				got := s.do(t, http.MethodGet, "/Observation?"+test.query, "").bundle(t).refs(t, "match")
				if diff := cmp.Diff(test.want, got); diff != "" {
					t.Errorf("%s (-want +got):\n%s", test.query, diff)
				}
			})
		}
	})
}

// stepClock returns a clock that starts on a whole second and advances
// 250ms on every call.
func stepClock() func() time.Time {
	var mu sync.Mutex
	now := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	return func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		t := now
		now = now.Add(250 * time.Millisecond)
		return t
	}
}

func TestSearchSortLastUpdated(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		s := newServer(t, gateway.Config{Store: st, Now: stepClock()})
		// p1 is written at hh:mm:09.000, p2 at .250, p3 at .500, p4 at .750
		var want []string
		for range 4 {
			want = append(want, "Patient/"+s.create(t, "Patient", patient("Sorted")))
		}
		got := s.do(t, http.MethodGet, "/Patient?_sort=_lastUpdated", "").bundle(t).refs(t, "match")
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("_sort=_lastUpdated (-want +got):\n%s", diff)
		}
		got = s.do(t, http.MethodGet, "/Patient?_sort=-_lastUpdated", "").bundle(t).refs(t, "match")
		for i, j := 0, len(want)-1; i < j; i, j = i+1, j-1 {
			want[i], want[j] = want[j], want[i]
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("_sort=-_lastUpdated (-want +got):\n%s", diff)
		}
	})
}

func TestSearchIncludes(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		s := newServer(t, gateway.Config{Store: st})
		pr := s.create(t, "Practitioner", `{"resourceType": "Practitioner", "name": [{"family": "Doc"}]}`)
		p := s.create(t, "Patient", `{"resourceType": "Patient", "name": [{"family": "Included"}], "generalPractitioner": [{"reference": "Practitioner/`+pr+`"}]}`)
		other := s.create(t, "Patient", patient("Other"))
		o1 := s.create(t, "Observation", observation("Patient/"+p, "2013-01-01"))
		o2 := s.create(t, "Observation", observation("Patient/"+p, "2013-01-02"))
		o3 := s.create(t, "Observation", observation("Patient/"+other, "2013-01-03"))
		group := s.create(t, "Observation", observation("Group/g1", "2013-01-04"))
		a := s.create(t, "Appointment", `{"resourceType": "Appointment", "status": "booked",
			"start": "2013-01-14T10:00:00Z", "end": "2013-01-14T10:30:00Z",
			"participant": [
				{"actor": {"reference": "Patient/`+p+`"}, "status": "accepted"},
				{"actor": {"reference": "Practitioner/`+pr+`"}, "status": "accepted"},
				{"actor": {"reference": "Location/not-stored"}, "status": "accepted"}
			]}`)
		tests := []struct {
			name        string
			query       string
			wantMatch   []string
			wantInclude []string
		}{
			{"_include", "/Observation?_id=" + o1 + "&_include=Observation:patient",
				[]string{"Observation/" + o1}, []string{"Patient/" + p}},
			{"_include once for two matches", "/Observation?patient=" + p + "&_include=Observation:patient",
				sorted("Observation/"+o1, "Observation/"+o2), []string{"Patient/" + p}},
			{"_include of a non-Patient subject", "/Observation?_id=" + group + "&_include=Observation:patient",
				[]string{"Observation/" + group}, nil},
			{"_include without iterate stops at the first level", "/Observation?_id=" + o1 + "&_include=Observation:patient&_include=Patient:general-practitioner",
				nil, nil},
			{"_include:iterate", "/Observation?_id=" + o1 + "&_include=Observation:patient&_include:iterate=Patient:general-practitioner",
				[]string{"Observation/" + o1}, sorted("Patient/"+p, "Practitioner/"+pr)},
			{"_revinclude", "/Patient?_id=" + p + "&_revinclude=Observation:patient",
				[]string{"Patient/" + p}, sorted("Observation/"+o1, "Observation/"+o2)},
			{"_revinclude for each match", "/Patient?family=included,other&_revinclude=Observation:subject",
				sorted("Patient/"+p, "Patient/"+other), sorted("Observation/"+o1, "Observation/"+o2, "Observation/"+o3)},
			{"Appointment:actor", "/Appointment?_include=Appointment:actor",
				[]string{"Appointment/" + a}, sorted("Patient/"+p, "Practitioner/"+pr)},
			{"Appointment:actor with target", "/Appointment?_include=Appointment:actor:Practitioner",
				[]string{"Appointment/" + a}, []string{"Practitioner/" + pr}},
		}
		for _, test := range tests {
			t.Run(test.name, func(t *testing.T) {
				if test.wantMatch == nil {
					// _include of another type without :iterate is an error
					s.do(t, http.MethodGet, test.query, "").wantOutcome(t, http.StatusBadRequest)
					return
				}
				b := s.do(t, http.MethodGet, test.query, "").bundle(t)
				if diff := cmp.Diff(test.wantMatch, sorted(b.refs(t, "match")...)); diff != "" {
					t.Errorf("matches (-want +got):\n%s", diff)
				}
				if diff := cmp.Diff(test.wantInclude, sorted(b.refs(t, "include")...)); diff != "" {
					t.Errorf("includes (-want +got):\n%s", diff)
				}
				if b.total(t) != len(test.wantMatch) {
					t.Errorf("total = %d, want %d (includes do not count)", b.total(t), len(test.wantMatch))
				}
				for _, e := range b.Entry {
					if ref := refOf(t, e.Resource); e.FullURL != s.base+"/"+ref {
						t.Errorf("fullUrl %q for %s", e.FullURL, ref)
					}
				}
			})
		}
	})
}

func sorted(s ...string) []string {
	if len(s) == 0 {
		return nil
	}
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

func refOf(t *testing.T, raw []byte) string {
	t.Helper()
	return response{body: raw}.refString(t)
}

func (r response) refString(t *testing.T) string {
	t.Helper()
	m := r.resource(t)
	typ, _ := m["resourceType"].(string)
	id, _ := m["id"].(string)
	return typ + "/" + id
}

func TestSearchSummaryCount(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		s := newServer(t, gateway.Config{Store: st})
		for range 3 {
			s.create(t, "Patient", patient("Counted"))
		}
		s.create(t, "Patient", patient("Other"))
		b := s.do(t, http.MethodGet, "/Patient?family=counted&_summary=count", "").bundle(t)
		if b.total(t) != 3 {
			t.Errorf("total = %d, want 3", b.total(t))
		}
		if len(b.Entry) != 0 {
			t.Errorf("_summary=count returned %d entries", len(b.Entry))
		}
	})
}

func TestSearchPost(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		s := newServer(t, gateway.Config{Store: st})
		for _, f := range []string{"Posted", "Posted", "Postal", "Other"} {
			s.create(t, "Patient", patient(f))
		}
		form := url.Values{"family": {"post"}, "_sort": {"-_id"}, "_count": {"2"}}
		get := s.do(t, http.MethodGet, "/Patient?"+form.Encode(), "").bundle(t)
		post := s.do(t, http.MethodPost, "/Patient/_search", form.Encode(), "Content-Type", "application/x-www-form-urlencoded").bundle(t)
		if get.total(t) != 3 {
			t.Errorf("GET total = %d, want 3", get.total(t))
		}
		if post.total(t) != get.total(t) {
			t.Errorf("POST total = %d, GET total = %d", post.total(t), get.total(t))
		}
		if diff := cmp.Diff(get.refs(t, "match"), post.refs(t, "match")); diff != "" {
			t.Errorf("POST _search differs from GET (-GET +POST):\n%s", diff)
		}
		if diff := cmp.Diff(get.link("next"), post.link("next")); diff != "" {
			t.Errorf("next links differ (-GET +POST):\n%s", diff)
		}
		// parameters in the URL and the body combine
		both := s.do(t, http.MethodPost, "/Patient/_search?family=post", "given=test&family=posted", "Content-Type", "application/x-www-form-urlencoded").bundle(t)
		if both.total(t) != 2 {
			t.Errorf("URL and body parameters: total = %d, want 2", both.total(t))
		}
		// a JSON body is not a search form
		s.do(t, http.MethodPost, "/Patient/_search", `{"family": "post"}`).wantOutcome(t, http.StatusUnsupportedMediaType)
	})
}

func TestSearchErrors(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		s := newServer(t, gateway.Config{Store: st})
		s.create(t, "Patient", patient("Err"))
		for _, q := range []string{"shoesize=42", "_sort=shoesize", "birthdate=notadate", "_count=-1", "family:not=x", "_include=Patient:nope"} {
			t.Run(q, func(t *testing.T) {
				s.do(t, http.MethodGet, "/Patient?"+q, "").wantOutcome(t, http.StatusBadRequest)
			})
		}
		t.Run("lenient", func(t *testing.T) {
			r := s.do(t, http.MethodGet, "/Patient?shoesize=42&family=err", "", "Prefer", "handling=lenient")
			b := r.bundle(t)
			if b.total(t) != 1 {
				t.Errorf("total = %d, want 1", b.total(t))
			}
			outcome := false
			for _, e := range b.Entry {
				if e.Search != nil && e.Search.Mode == "outcome" {
					outcome = true
				}
			}
			if !outcome {
				t.Errorf("no outcome entry for the ignored parameter: %s", r.body)
			}
			if self := b.link("self"); strings.Contains(self, "shoesize") {
				t.Errorf("self link %q keeps the ignored parameter", self)
			}
		})
		s.do(t, http.MethodGet, "/NoSuchType?name=x", "").wantOutcome(t, http.StatusNotFound)
	})
}

func TestSearchSkipsDeleted(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		s := newServer(t, gateway.Config{Store: st})
		keep := s.create(t, "Patient", patient("Gone"))
		gone := s.create(t, "Patient", patient("Gone"))
		s.do(t, http.MethodDelete, "/Patient/"+gone, "").want(t, http.StatusNoContent)
		got := s.do(t, http.MethodGet, "/Patient?family=gone", "").bundle(t).refs(t, "match")
		if diff := cmp.Diff([]string{"Patient/" + keep}, got); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
		// an update re-indexes: the old family no longer matches
		s.do(t, http.MethodPut, "/Patient/"+keep, `{"resourceType": "Patient", "id": "`+keep+`", "name": [{"family": "Renamed"}]}`).want(t, http.StatusOK)
		if got := s.do(t, http.MethodGet, "/Patient?family=gone", "").bundle(t).total(t); got != 0 {
			t.Errorf("old family still matches: total %d", got)
		}
		if got := s.do(t, http.MethodGet, "/Patient?family=renamed", "").bundle(t).total(t); got != 1 {
			t.Errorf("new family: total %d, want 1", got)
		}
	})
}

// TestSearchAbsoluteLocalReference stores references written as absolute
// URLs on this server's base, and searches them as Type/id.
func TestSearchAbsoluteLocalReference(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		for _, configured := range []bool{true, false} {
			name := "BaseURL derived from the request"
			if configured {
				name = "BaseURL configured"
			}
			t.Run(name, func(t *testing.T) {
				ts := httptest.NewUnstartedServer(nil)
				base := "http://" + ts.Listener.Addr().String() + "/fhir"
				cfg := gateway.Config{Store: st}
				if configured {
					cfg.BaseURL = base
				}
				ts.Config.Handler = gateway.New(cfg)
				ts.Start()
				t.Cleanup(ts.Close)
				s := &server{base: base, hc: ts.Client()}

				p := s.create(t, "Patient", patient("Absolute"))
				o := s.create(t, "Observation", observation(base+"/Patient/"+p, "2013-01-01"))
				for _, q := range []string{"subject=Patient/" + p, "patient=" + p, "subject=" + url.QueryEscape(base+"/Patient/"+p)} {
					got := s.do(t, http.MethodGet, "/Observation?"+q, "").bundle(t).refs(t, "match")
					if diff := cmp.Diff([]string{"Observation/" + o}, got); diff != "" {
						t.Errorf("%s (-want +got):\n%s", q, diff)
					}
				}
				b := s.do(t, http.MethodGet, "/Observation?_id="+o+"&_include=Observation:patient", "").bundle(t)
				if diff := cmp.Diff([]string{"Patient/" + p}, b.refs(t, "include")); diff != "" {
					t.Errorf("_include (-want +got):\n%s", diff)
				}
			})
		}
	})
}
