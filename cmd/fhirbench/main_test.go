package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	cases := []struct {
		p    float64
		want time.Duration
	}{
		{50, 50 * time.Millisecond},
		{95, 95 * time.Millisecond},
		{99, 99 * time.Millisecond},
		{100, 100 * time.Millisecond},
		{0.1, 1 * time.Millisecond},
	}
	for _, c := range cases {
		if got := percentile(d, c.p); got != c.want {
			t.Errorf("percentile(1..100ms, %v) = %v, want %v", c.p, got, c.want)
		}
	}
	if got := percentile(nil, 99); got != 0 {
		t.Errorf("percentile(empty) = %v, want 0", got)
	}
	one := []time.Duration{7 * time.Millisecond}
	for _, p := range []float64{1, 50, 99, 100} {
		if got := percentile(one, p); got != 7*time.Millisecond {
			t.Errorf("percentile(single, %v) = %v", p, got)
		}
	}
	// Nearest rank on a small set: p50 of 4 values is the 2nd, p95 the 4th.
	four := []time.Duration{1, 2, 3, 4}
	if got := percentile(four, 50); got != 2 {
		t.Errorf("p50 of 4 = %v, want 2", got)
	}
	if got := percentile(four, 95); got != 4 {
		t.Errorf("p95 of 4 = %v, want 4", got)
	}
}

func TestSummarize(t *testing.T) {
	w1 := newWorkerStats(4)
	w2 := newWorkerStats(4)
	w1.record(opRead, 200, 3*time.Millisecond, nil)
	w1.record(opRead, 500, 1*time.Millisecond, nil)
	w2.record(opCreate, 201, 2*time.Millisecond, nil)
	w2.record(opCreate, 0, 0, io.ErrUnexpectedEOF)
	res := summarize([]*workerStats{w1, w2}, 2*time.Second)
	if res.TotalRequests != 4 || res.RPS != 2 {
		t.Errorf("total=%d rps=%v, want 4, 2", res.TotalRequests, res.RPS)
	}
	if res.ErrorCount != 2 || res.Errors["500"] != 1 || res.Errors["transport"] != 1 {
		t.Errorf("errors = %d %v", res.ErrorCount, res.Errors)
	}
	if res.Ops["read"] != 2 || res.Ops["create"] != 2 {
		t.Errorf("ops = %v", res.Ops)
	}
	if res.LatencyMs.P50 != 2 || res.LatencyMs.Max != 3 {
		t.Errorf("latency = %+v", res.LatencyMs)
	}
}

func TestRecordBookingOutcomes(t *testing.T) {
	w := newWorkerStats(8)
	w.record(opBook, 201, time.Millisecond, nil)
	w.record(opBook, 409, time.Millisecond, nil)
	w.record(opBook, 409, time.Millisecond, nil)
	w.record(opBook, 400, time.Millisecond, nil)
	w.record(opBook, 0, 0, io.ErrUnexpectedEOF)
	w.record(opCreate, 409, time.Millisecond, nil) // a conflict outside booking is an error
	res := summarize([]*workerStats{w}, time.Second)
	got := [3]int64{res.Booked, res.Refused, res.ErrorCount}
	if want := [3]int64{1, 2, 3}; got != want {
		t.Errorf("booked, refused, errors = %v, want %v", got, want)
	}
	if res.Errors["400"] != 1 || res.Errors["409"] != 1 || res.Errors["transport"] != 1 {
		t.Errorf("errors = %v", res.Errors)
	}
}

func TestAppointmentBody(t *testing.T) {
	b := &bench{runID: "fb-test"}
	tests := []struct {
		name               string
		p, d, s            int
		wantStart, wantEnd string
	}{
		{"first", 0, 0, 0, "2031-01-06T08:00:00Z", "2031-01-06T08:30:00Z"},
		{"last start", 99, 4, bookingStarts - 1, "2031-01-10T17:30:00Z", "2031-01-10T18:00:00Z"},
		{"quarter", 7, 1, 5, "2031-01-07T09:15:00Z", "2031-01-07T09:45:00Z"},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			var a appointment
			if err := json.Unmarshal(b.appointment(test.p, test.d, test.s), &a); err != nil {
				t.Fatal(err)
			}
			if a.ResourceType != "Appointment" || a.Status != "booked" || a.Start != test.wantStart || a.End != test.wantEnd {
				t.Errorf("appointment = %+v, want booked %s–%s", a, test.wantStart, test.wantEnd)
			}
			if got, want := a.refs(), []string{"Patient/fb-test-pat", "Practitioner/fb-test-p" + strconv.Itoa(test.p)}; !slices.Equal(got, want) {
				t.Errorf("participants = %v, want %v", got, want)
			}
		})
	}
	if bookingStarts != 39 {
		t.Errorf("bookingStarts = %d, want 39 (08:00 … 17:30)", bookingStarts)
	}
}

func TestMixedProportions(t *testing.T) {
	m, ok := mixFor("mixed")
	if !ok {
		t.Fatal("mixed workload unknown")
	}
	r := rand.New(rand.NewPCG(1, 2))
	const n = 200_000
	var counts [numOps]int
	for range n {
		counts[pickOp(r, m)]++
	}
	want := map[opKind]float64{opCreate: 0.20, opRead: 0.70, opSearch: 0.10}
	for op, frac := range want {
		got := float64(counts[op]) / n
		if got < frac-0.01 || got > frac+0.01 {
			t.Errorf("%s fraction = %.4f, want %.2f±0.01", op, got, frac)
		}
	}
	// Deterministic for a fixed seed.
	r2 := rand.New(rand.NewPCG(1, 2))
	var counts2 [numOps]int
	for range n {
		counts2[pickOp(r2, m)]++
	}
	if counts != counts2 {
		t.Errorf("same seed gave different draws: %v vs %v", counts, counts2)
	}
	// Single-op workloads only ever pick their op.
	for name, op := range map[string]opKind{"create": opCreate, "read": opRead, "search": opSearch, "book": opBook} {
		m, _ := mixFor(name)
		for range 1000 {
			if got := pickOp(r, m); got != op {
				t.Fatalf("%s workload picked %s", name, got)
			}
		}
	}
	if _, ok := mixFor("bogus"); ok {
		t.Error("bogus workload accepted")
	}
}

type patient struct {
	ResourceType string `json:"resourceType"`
	ID           string `json:"id"`
	Identifier   []struct {
		System string `json:"system"`
		Value  string `json:"value"`
	} `json:"identifier"`
	Name []struct {
		Family string `json:"family"`
	} `json:"name"`
	Text struct {
		Div string `json:"div"`
	} `json:"text"`
}

func TestDefaultBodyTemplate(t *testing.T) {
	tmpl, err := newBodyTemplate(defaultPatientJSON)
	if err != nil {
		t.Fatal(err)
	}
	if tmpl.system != "urn:oid:1.2.36.146.595.217.0.1" || tmpl.family != "Chalmers" {
		t.Errorf("system=%q family=%q", tmpl.system, tmpl.family)
	}
	b := &bench{tmpl: tmpl, runID: "fb-test"}
	seen := map[string]bool{}
	for range 50 {
		v := b.nextValue()
		body := tmpl.render(v)
		if len(body) < 1500 || len(body) > 2000 {
			t.Errorf("body size %d, want ~1.7 KB", len(body))
		}
		var p patient
		if err := json.Unmarshal(body, &p); err != nil {
			t.Fatalf("rendered body is not valid JSON: %v", err)
		}
		if p.ResourceType != "Patient" || p.ID != "" {
			t.Errorf("resourceType=%q id=%q", p.ResourceType, p.ID)
		}
		if len(p.Identifier) == 0 || p.Identifier[0].Value != v {
			t.Fatalf("identifier = %+v, want value %q", p.Identifier, v)
		}
		if seen[v] {
			t.Errorf("duplicate identifier %q", v)
		}
		seen[v] = true
		if bytes.Contains(body, []byte(placeholder)) {
			t.Error("placeholder left in body")
		}
		if !strings.HasPrefix(p.Text.Div, `<div xmlns="http://www.w3.org/1999/xhtml">`) {
			t.Errorf("narrative div = %q", p.Text.Div)
		}
	}
}

func TestCustomBodyTemplate(t *testing.T) {
	// No placeholder and an id: id is dropped, an identifier is prepended,
	// resourceType stays first, narrative is not HTML-escaped.
	raw := []byte(`{"resourceType":"Patient","id":"example",
		"text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">x &amp; y</div>"},
		"identifier":[{"system":"urn:x","value":"12345"}],
		"name":[{"given":["Jim"]},{"family":"Müller"}],"birthDate":"1974-12-25"}`)
	tmpl, err := newBodyTemplate(raw)
	if err != nil {
		t.Fatal(err)
	}
	if tmpl.system != fallbackIdentifierSystem || tmpl.family != "Müller" {
		t.Errorf("system=%q family=%q", tmpl.system, tmpl.family)
	}
	if searchPrefix(tmpl.family) != "Müll" {
		t.Errorf("searchPrefix = %q", searchPrefix(tmpl.family))
	}
	a, b := tmpl.render("fb-1"), tmpl.render("fb-2")
	if !bytes.HasPrefix(a, []byte(`{"resourceType":"Patient",`)) {
		t.Errorf("resourceType not first: %s", a)
	}
	if bytes.Contains(a, []byte(`\u003c`)) {
		t.Errorf("narrative was HTML-escaped: %s", a)
	}
	var pa, pb patient
	if err := json.Unmarshal(a, &pa); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &pb); err != nil {
		t.Fatal(err)
	}
	if pa.ID != "" || len(pa.Identifier) != 2 || pa.Identifier[0].Value != "fb-1" ||
		pa.Identifier[1].Value != "12345" || pb.Identifier[0].Value != "fb-2" {
		t.Errorf("a=%+v b=%+v", pa, pb)
	}

	// Placeholder already in an identifier: used as is, with its system.
	tmpl, err = newBodyTemplate([]byte(`{"resourceType":"Patient","identifier":[{"system":"urn:mine","value":"` + placeholder + `"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if tmpl.system != "urn:mine" || len(tmpl.parts) != 2 {
		t.Errorf("system=%q parts=%d", tmpl.system, len(tmpl.parts))
	}

	for _, bad := range []string{`[]`, `{"resourceType":"Observation"}`, `{"resourceType":"Patient"} {}`, `nope`} {
		if _, err := newBodyTemplate([]byte(bad)); err == nil {
			t.Errorf("newBodyTemplate(%s) succeeded", bad)
		}
	}
}

func TestExtractID(t *testing.T) {
	cases := []struct {
		body, loc, want string
	}{
		{`{"resourceType":"Patient","id":"abc"}`, "", "abc"},
		{``, "http://h/fhir/Patient/123/_history/1", "123"},
		{``, "Patient/xyz", "xyz"},
		{`{}`, "/fhir/Patient/9", "9"},
		{``, "", ""},
	}
	for _, c := range cases {
		if got := extractID([]byte(c.body), c.loc); got != c.want {
			t.Errorf("extractID(%q, %q) = %q, want %q", c.body, c.loc, got, c.want)
		}
	}
}

func TestParseFlags(t *testing.T) {
	cfg, err := parseFlags([]string{"--base-url", "http://x:1/fhir/", "-c", "4", "--workload", "read", "--requests", "10", "--json"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.BaseURL != "http://x:1/fhir" || cfg.Concurrency != 4 || cfg.Workload != "read" ||
		cfg.Requests != 10 || !cfg.JSON || cfg.Seed != 200 || cfg.Duration != 10*time.Second || cfg.Warmup != 2*time.Second {
		t.Errorf("cfg = %+v", cfg)
	}
	if cfg.Practitioners != 100 || cfg.BookingDays != 5 {
		t.Errorf("booking defaults = %d practitioners, %d days", cfg.Practitioners, cfg.BookingDays)
	}
	cfg, err = parseFlags([]string{"--workload", "book", "--seed", "0", "--practitioners", "3", "--booking-days", "1"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Workload != "book" || cfg.Practitioners != 3 || cfg.BookingDays != 1 {
		t.Errorf("cfg = %+v", cfg)
	}
	for _, args := range [][]string{
		{"--workload", "delete"},
		{"--workload", "book", "--practitioners", "0"},
		{"--workload", "book", "--booking-days", "0"},
		{"--base-url", "ftp://x"},
		{"--base-url", "/fhir"},
		{"-c", "0"},
		{"--workload", "read", "--seed", "0"},
		{"extra"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("parseFlags(%v) succeeded", args)
		}
	}
}

type appointment struct {
	ResourceType string `json:"resourceType"`
	Status       string `json:"status"`
	Start        string `json:"start"`
	End          string `json:"end"`
	Participant  []struct {
		Actor struct {
			Reference string `json:"reference"`
		} `json:"actor"`
		Status string `json:"status"`
	} `json:"participant"`
}

// refs lists the participants' references.
func (a appointment) refs() []string {
	var refs []string
	for _, p := range a.Participant {
		refs = append(refs, p.Actor.Reference)
	}
	return refs
}

// fakeFHIR is a minimal FHIR Patient and Appointment endpoint under /fhir.
type fakeFHIR struct {
	creates, reads, searches, familySearches, other atomic.Int64
	failAll                                         atomic.Bool
	mu                                              sync.Mutex
	identifiers                                     map[string]bool
	dupIdentifiers                                  int
	badAuth                                         int
	token                                           string
	bookings                                        map[string][]time.Time // practitioner → starts booked
	booked, refused, badBookings                    int
}

// book answers an Appointment POST as the gateway does: 201, or 409 when its
// practitioner has an overlapping one; 400 for a body the book workload
// must not send.
func (f *fakeFHIR) book(w http.ResponseWriter, body []byte) {
	var a appointment
	err := json.Unmarshal(body, &a)
	start, errS := time.Parse(time.RFC3339, a.Start)
	end, errE := time.Parse(time.RFC3339, a.End)
	refs := a.refs()
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil || errS != nil || errE != nil || a.ResourceType != "Appointment" || a.Status != "booked" ||
		end.Sub(start) != 30*time.Minute || start.Minute()%15 != 0 || start.Hour() < 8 || end.After(start.Truncate(24*time.Hour).Add(18*time.Hour)) ||
		len(refs) != 2 || !strings.HasPrefix(refs[0], "Patient/fb-") || !strings.HasPrefix(refs[1], "Practitioner/fb-") {
		f.badBookings++
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	pr := refs[1]
	for _, s := range f.bookings[pr] {
		if start.Before(s.Add(30*time.Minute)) && s.Before(end) {
			f.refused++
			w.WriteHeader(http.StatusConflict)
			io.WriteString(w, `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"conflict"}]}`)
			return
		}
	}
	f.bookings[pr] = append(f.bookings[pr], start)
	f.booked++
	w.WriteHeader(http.StatusCreated)
	w.Write(body)
}

func (f *fakeFHIR) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if f.token != "" && r.Header.Get("Authorization") != "Bearer "+f.token {
		f.mu.Lock()
		f.badAuth++
		f.mu.Unlock()
	}
	w.Header().Set("Content-Type", "application/fhir+json")
	if f.failAll.Load() {
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"exception"}]}`)
		return
	}
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/fhir/Appointment":
		f.book(w, body)
	case r.Method == http.MethodPost && r.URL.Path == "/fhir/Patient":
		n := f.creates.Add(1)
		var p patient
		if err := json.Unmarshal(body, &p); err != nil || p.ResourceType != "Patient" || len(p.Identifier) == 0 {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		if f.identifiers[p.Identifier[0].Value] {
			f.dupIdentifiers++
		}
		f.identifiers[p.Identifier[0].Value] = true
		f.mu.Unlock()
		id := strconv.FormatInt(n, 10)
		w.Header().Set("Location", "/fhir/Patient/"+id+"/_history/1")
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"resourceType":"Patient","id":"`+id+`"}`)
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/fhir/Patient/"):
		f.reads.Add(1)
		io.WriteString(w, `{"resourceType":"Patient","id":"`+strings.TrimPrefix(r.URL.Path, "/fhir/Patient/")+`"}`)
	case r.Method == http.MethodGet && r.URL.Path == "/fhir/Patient":
		f.searches.Add(1)
		if r.URL.Query().Get("family") != "" {
			f.familySearches.Add(1)
		} else if !strings.Contains(r.URL.Query().Get("identifier"), "|fb-") {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		io.WriteString(w, `{"resourceType":"Bundle","type":"searchset","total":1,"entry":[]}`)
	default:
		f.other.Add(1)
		w.WriteHeader(http.StatusNotFound)
	}
}

func newFake(t *testing.T) (*fakeFHIR, *httptest.Server) {
	f := &fakeFHIR{identifiers: map[string]bool{}, bookings: map[string][]time.Time{}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv
}

func testConfig(srv *httptest.Server, workload string) config {
	return config{
		BaseURL:     srv.URL + "/fhir/",
		Workload:    workload,
		Concurrency: 4,
		Duration:    10 * time.Second,
		Seed:        20,
		Timeout:     5 * time.Second,
	}
}

func TestE2ECreate(t *testing.T) {
	f, srv := newFake(t)
	f.token = "s3cret"
	cfg := testConfig(srv, "create")
	cfg.Requests = 100
	cfg.Token = "s3cret"
	cfg.CPU = cpuFlag{{Name: "self", PID: os.Getpid()}} // the fake server runs in this process
	res, err := run(context.Background(), cfg, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.TotalRequests != 100 || res.Ops["create"] != 100 || res.ErrorCount != 0 {
		t.Errorf("result = %+v", res)
	}
	if got := f.creates.Load(); got != 100 {
		t.Errorf("server saw %d creates, want 100", got)
	}
	if f.reads.Load()+f.searches.Load()+f.other.Load() != 0 {
		t.Error("create workload sent non-create requests")
	}
	if f.dupIdentifiers != 0 || len(f.identifiers) != 100 || f.badAuth != 0 {
		t.Errorf("dups=%d distinct=%d badAuth=%d", f.dupIdentifiers, len(f.identifiers), f.badAuth)
	}
	if res.RPS <= 0 || res.LatencyMs.Max <= 0 || res.LatencyMs.P50 > res.LatencyMs.P99 {
		t.Errorf("stats = rps %v latency %+v", res.RPS, res.LatencyMs)
	}
	if u, ok := res.CPU["self"]; !ok || u.Seconds < 0 || u.PerRequestMs != 1000*u.Seconds/100 {
		t.Errorf("cpu = %+v", res.CPU)
	}
	var out strings.Builder
	writeText(&out, res)
	if !strings.Contains(out.String(), "cpu self:") {
		t.Errorf("text output lacks the CPU line:\n%s", out.String())
	}
}

func TestE2EReadSearchMixed(t *testing.T) {
	for _, wl := range []string{"read", "search", "mixed"} {
		t.Run(wl, func(t *testing.T) {
			f, srv := newFake(t)
			cfg := testConfig(srv, wl)
			cfg.Requests = 1000
			res, err := run(context.Background(), cfg, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if res.Seeded != 20 || res.TotalRequests != 1000 || res.ErrorCount != 0 {
				t.Fatalf("result = %+v", res)
			}
			creates, reads, searches := f.creates.Load(), f.reads.Load(), f.searches.Load()
			if creates-20 != res.Ops["create"] || reads != res.Ops["read"] || searches != res.Ops["search"] {
				t.Errorf("server saw %d/%d/%d create/read/search, result ops %v", creates, reads, searches, res.Ops)
			}
			if creates+reads+searches != 1020 || f.other.Load() != 0 {
				t.Errorf("server saw %d requests (+%d other), want 1020", creates+reads+searches, f.other.Load())
			}
			switch wl {
			case "read":
				if reads != 1000 {
					t.Errorf("reads = %d", reads)
				}
			case "search":
				if searches != 1000 || f.familySearches.Load() == 0 || f.familySearches.Load() > 200 {
					t.Errorf("searches = %d, family = %d", searches, f.familySearches.Load())
				}
			case "mixed":
				if res.Ops["create"] < 120 || res.Ops["create"] > 280 || res.Ops["read"] < 600 || res.Ops["search"] < 40 {
					t.Errorf("mixed ops = %v", res.Ops)
				}
			}
		})
	}
}

func TestE2EBook(t *testing.T) {
	f, srv := newFake(t)
	cfg := testConfig(srv, "book")
	cfg.Seed = 0
	cfg.Requests = 400
	cfg.Practitioners = 3
	cfg.BookingDays = 1 // 3 practitioners × at most 20 half-hours: most requests conflict
	res, err := run(t.Context(), cfg, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.TotalRequests != 400 || res.Ops["book"] != 400 || res.ErrorCount != 0 || res.Seeded != 0 {
		t.Fatalf("result = %+v", res)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.badBookings != 0 || f.creates.Load() != 0 || f.other.Load() != 0 {
		t.Errorf("server saw %d bad bookings, %d creates, %d other", f.badBookings, f.creates.Load(), f.other.Load())
	}
	if got, want := [2]int64{res.Booked, res.Refused}, [2]int64{int64(f.booked), int64(f.refused)}; got != want {
		t.Errorf("booked, refused = %v, server answered %v", got, want)
	}
	if res.Booked == 0 || res.Booked > 60 || res.Refused < 340 {
		t.Errorf("booked %d, refused %d: want 1–60 booked, the rest refused", res.Booked, res.Refused)
	}
	if len(f.bookings) != 3 {
		t.Errorf("practitioners booked = %d, want 3", len(f.bookings))
	}

	var out bytes.Buffer
	writeText(&out, res)
	want := fmt.Sprintf("bookings:     booked: %d (201), refused: %d (409 conflict)", res.Booked, res.Refused)
	if !strings.Contains(out.String(), want) || !strings.Contains(out.String(), "errors:       0\n") {
		t.Errorf("text output lacks %q or 0 errors:\n%s", want, out.String())
	}
	var js bytes.Buffer
	if err := json.NewEncoder(&js).Encode(res); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf(`"booked":%d,"refused":%d,"error_count":0`, res.Booked, res.Refused); !strings.Contains(js.String(), want) {
		t.Errorf("JSON lacks %s: %s", want, js.String())
	}
}

func TestE2EErrorsCounted(t *testing.T) {
	f, srv := newFake(t)
	f.failAll.Store(true)
	cfg := testConfig(srv, "create")
	cfg.Requests = 50
	res, err := run(context.Background(), cfg, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.TotalRequests != 50 || res.ErrorCount != 50 || res.Errors["500"] != 50 || len(res.Errors) != 1 {
		t.Errorf("result = %+v", res)
	}
	var out bytes.Buffer
	writeText(&out, res)
	if !strings.Contains(out.String(), "errors:       50 (HTTP 500: 50)") {
		t.Errorf("text output:\n%s", out.String())
	}

	// Seeding against a failing server is a clear error.
	cfg.Workload = "read"
	if _, err := run(context.Background(), cfg, io.Discard); err == nil || !strings.Contains(err.Error(), "HTTP 500") {
		t.Errorf("read against failing server: err = %v", err)
	}

	// Errors switching on mid-run are counted by status next to successes.
	f.failAll.Store(false)
	cfg.Workload = "mixed"
	cfg.Requests = 0
	cfg.Duration = 400 * time.Millisecond
	time.AfterFunc(200*time.Millisecond, func() { f.failAll.Store(true) })
	res, err = run(context.Background(), cfg, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.ErrorCount == 0 || res.ErrorCount != res.Errors["500"] || res.ErrorCount >= res.TotalRequests {
		t.Errorf("mid-run failures: total %d errors %d %v", res.TotalRequests, res.ErrorCount, res.Errors)
	}
}

func TestE2ETransportErrors(t *testing.T) {
	// A handler that hijacks and closes the connection yields transport errors.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			c.Close()
		}
	}))
	defer srv.Close()
	cfg := testConfig(srv, "create")
	cfg.Requests = 20
	res, err := run(context.Background(), cfg, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.TotalRequests != 20 || res.Errors["transport"] != 20 {
		t.Errorf("result = %+v", res)
	}
}

func TestE2EDurationWarmupAndInterrupt(t *testing.T) {
	f, srv := newFake(t)
	cfg := testConfig(srv, "create")
	cfg.Duration = 300 * time.Millisecond
	cfg.Warmup = 200 * time.Millisecond
	start := time.Now()
	res, err := run(context.Background(), cfg, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("duration-bounded run took %v", took)
	}
	if res.TotalRequests == 0 || res.Interrupted {
		t.Errorf("result = %+v", res)
	}
	if res.DurationSec < 0.25 || res.DurationSec > 0.3 {
		t.Errorf("measured duration %.3fs, want ~0.3s", res.DurationSec)
	}
	if f.creates.Load() <= res.TotalRequests {
		t.Errorf("warmup requests not excluded: server %d, measured %d", f.creates.Load(), res.TotalRequests)
	}

	// Cancelling the parent context (what SIGINT does) stops a long run early
	// and still returns the partial result.
	cfg.Duration = time.Minute
	cfg.Warmup = 0
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	start = time.Now()
	res, err = run(ctx, cfg, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("interrupted run took %v", took)
	}
	if !res.Interrupted || res.TotalRequests == 0 || res.ErrorCount != 0 {
		t.Errorf("interrupted result = %+v", res)
	}
}

func TestRealMainOutput(t *testing.T) {
	_, srv := newFake(t)
	dir := t.TempDir()
	bodyPath := filepath.Join(dir, "p.json")
	if err := os.WriteFile(bodyPath, []byte(`{"resourceType":"Patient","id":"x","name":[{"family":"Doe"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code := realMain([]string{"--base-url", srv.URL + "/fhir", "--workload", "mixed", "-c", "2",
		"--requests", "50", "--seed", "5", "--warmup", "0s", "--body", bodyPath, "--json"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{"workload:     mixed", "concurrency:  2", "requests:     50", "req/s", "p50 ", "p95 ", "p99 ", "max ", "errors:       0"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var res Result
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil {
		t.Fatalf("last line is not the JSON result: %v\n%s", err, out)
	}
	if res.TotalRequests != 50 || res.Workload != "mixed" || res.Seeded != 5 {
		t.Errorf("json result = %+v", res)
	}

	if code := realMain([]string{"--workload", "nope"}, &stdout, &stderr); code != 2 {
		t.Errorf("bad flag exit code = %d, want 2", code)
	}
}

// --cpu-pid reports the CPU a process spent in the measured window: this
// process burns CPU while a stub server answers, and the figure must show it.
func TestCPUPid(t *testing.T) {
	var f cpuFlag
	for _, bad := range []string{"gw", "gw=", "=12", "gw=x", "gw=-1"} {
		if f.Set(bad) == nil {
			t.Errorf("--cpu-pid %q accepted", bad)
		}
	}
	before, err := cpuTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(300 * time.Millisecond)
	x := 0
	for time.Now().Before(deadline) {
		x++
	}
	after, err := cpuTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if d := after - before; d < 100*time.Millisecond {
		t.Errorf("300 ms of busy loop measured as %s of CPU", d)
	}
	u := cpuUse(map[string]time.Duration{"gw": time.Second}, map[string]time.Duration{"gw": 3 * time.Second}, 4*time.Second, 1000)
	if g := u["gw"]; g.Seconds != 2 || g.Cores != 0.5 || g.PerRequestMs != 2 {
		t.Errorf("cpuUse = %+v", g)
	}
	if _, err := cpuTime(1 << 30); err == nil {
		t.Error("a missing process was read")
	}
}
