// Command fhirbench is a small load generator for FHIR R4 servers.
//
// It drives one of five workloads against the base URL it is given and reports
// throughput, latency percentiles and errors:
//
//	create  POST Patient with a unique identifier per request
//	read    GET Patient/<id> of Patients seeded before the run
//	search  GET Patient?identifier=<system>|<value> of seeded Patients
//	        (and occasionally Patient?family=<prefix>)
//	mixed   20% create, 70% read, 10% search
//	book    POST a booked 30-minute Appointment of a random practitioner
//	        (of --practitioners) at a random 15-minute start between 08:00
//	        and 17:30 UTC on one of --booking-days days from 2031-01-06
//
// A book request answered 409 (the practitioner is already booked then) is
// an expected outcome: it is counted as refused, not as an error.
//
// The run is bounded by --duration and, if set, by --requests (whichever comes
// first); a warmup period (--warmup) precedes the measured period and is
// excluded from the statistics. SIGINT stops the run and prints what has been
// measured so far.
//
// Latencies are those of completed HTTP exchanges (any status, body fully
// read); transport errors are counted as errors but carry no latency. Every
// latency is kept (per-worker slices merged and sorted at the end), so the
// percentiles are exact.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// placeholder is the substring of the create body that is replaced by a unique
// identifier value for every request.
const placeholder = "__FHIRBENCH_ID__"

// fallbackIdentifierSystem is used for the identifier added to a --body that
// does not already contain the placeholder in an identifier value.
const fallbackIdentifierSystem = "http://fhirbench.example.org/fhir/identifier"

// seedPhaseTimeout bounds the seeding phase as a whole.
const seedPhaseTimeout = 2 * time.Minute

// Booking calendar of the book workload: days from bookingEpoch (a Monday,
// 08:00 UTC), bookingStarts start times a bookingStep apart, each
// Appointment bookingLength long, so that every one ends by 18:00.
var bookingEpoch = time.Date(2031, time.January, 6, 8, 0, 0, 0, time.UTC)

const (
	bookingStep   = 15 * time.Minute
	bookingLength = 30 * time.Minute
	bookingStarts = int((10*time.Hour-bookingLength)/bookingStep) + 1 // 08:00 … 17:30
)

//go:embed default_patient.json
var defaultPatientJSON []byte

// ---------------------------------------------------------------------------
// Configuration

type config struct {
	BaseURL     string
	Workload    string
	Concurrency int
	Duration    time.Duration
	Requests    int64
	BodyPath    string
	Seed        int
	Token       string
	Warmup      time.Duration
	Timeout     time.Duration
	JSON        bool
	// Practitioners and BookingDays shape the book workload.
	Practitioners int
	BookingDays   int
	// TxEntries is the size of the transaction workload's Bundles.
	TxEntries int
	// CPU names processes whose CPU time is measured over the run.
	CPU cpuFlag
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("fhirbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.BaseURL, "base-url", "http://127.0.0.1:8080/fhir", "FHIR R4 base URL to load")
	fs.StringVar(&cfg.Workload, "workload", "mixed", "workload: create|read|search|mixed|book|transaction (mixed = 20% create, 70% read, 10% search; book = Appointments, 409 counted as refused; transaction = Bundles of --tx-entries)")
	fs.IntVar(&cfg.Concurrency, "concurrency", 32, "number of concurrent workers")
	fs.IntVar(&cfg.Concurrency, "c", 32, "shorthand for --concurrency")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "measured run duration (after warmup)")
	fs.Int64Var(&cfg.Requests, "requests", 0, "optional cap on measured requests (0 = no cap); the run ends at whichever of --duration/--requests comes first")
	fs.StringVar(&cfg.BodyPath, "body", "", "path to a Patient JSON used as the create body (default: embedded ~1.7 KB R4 Patient)")
	fs.IntVar(&cfg.Seed, "seed", 200, "number of Patients to create before read/search/mixed runs")
	fs.StringVar(&cfg.Token, "token", "", "bearer token sent as Authorization header")
	fs.DurationVar(&cfg.Warmup, "warmup", 2*time.Second, "warmup duration, excluded from stats")
	fs.DurationVar(&cfg.Timeout, "timeout", 30*time.Second, "per-request timeout")
	fs.BoolVar(&cfg.JSON, "json", false, "also print the result as one JSON object")
	fs.IntVar(&cfg.Practitioners, "practitioners", 100, "book: number of practitioners the Appointments are spread over")
	fs.IntVar(&cfg.TxEntries, "tx-entries", 100, "transaction: entries per transaction Bundle (half Patients, half Observations referring to them by urn:uuid)")
	fs.IntVar(&cfg.BookingDays, "booking-days", 5, "book: number of days (from 2031-01-06, 08:00-18:00 UTC) the Appointments are spread over")
	fs.Var(&cfg.CPU, "cpu-pid", "name=PID of a process (the gateway, redis-server) whose CPU time over the measured window is reported, per request too (Linux /proc; repeatable)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	return cfg, cfg.validate()
}

func (c *config) validate() error {
	m, ok := mixFor(c.Workload)
	if !ok {
		return fmt.Errorf("unknown --workload %q (want create, read, search, mixed, book or transaction)", c.Workload)
	}
	u, err := url.Parse(c.BaseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("--base-url must be an absolute http(s) URL, got %q", c.BaseURL)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("--base-url must not contain a query or fragment: %q", c.BaseURL)
	}
	c.BaseURL = strings.TrimRight(c.BaseURL, "/")
	switch {
	case c.Concurrency < 1:
		return errors.New("--concurrency must be >= 1")
	case c.Duration <= 0:
		return errors.New("--duration must be > 0")
	case c.Requests < 0:
		return errors.New("--requests must be >= 0")
	case c.Seed < 0:
		return errors.New("--seed must be >= 0")
	case c.Warmup < 0:
		return errors.New("--warmup must be >= 0")
	case c.Timeout <= 0:
		return errors.New("--timeout must be > 0")
	}
	if m.needsSeed() && c.Seed == 0 {
		return fmt.Errorf("--workload %s needs --seed > 0", c.Workload)
	}
	if m[opTransaction] > 0 && c.TxEntries < 1 {
		return errors.New("--tx-entries must be >= 1")
	}
	if m[opBook] > 0 && (c.Practitioners < 1 || c.BookingDays < 1) {
		return errors.New("--practitioners and --booking-days must be >= 1")
	}
	return nil
}

// ---------------------------------------------------------------------------
// Workload mix

type opKind int

const (
	opCreate opKind = iota
	opRead
	opSearch
	opBook
	opTransaction
	numOps
)

var opNames = [numOps]string{"create", "read", "search", "book", "transaction"}

func (o opKind) String() string { return opNames[o] }

// mix holds integer weights (percent) per operation.
type mix [numOps]int

func mixFor(workload string) (mix, bool) {
	switch workload {
	case "create":
		return mix{opCreate: 100}, true
	case "read":
		return mix{opRead: 100}, true
	case "search":
		return mix{opSearch: 100}, true
	case "mixed":
		return mix{opCreate: 20, opRead: 70, opSearch: 10}, true
	case "book":
		return mix{opBook: 100}, true
	case "transaction":
		return mix{opTransaction: 100}, true
	}
	return mix{}, false
}

func (m mix) total() int {
	t := 0
	for _, w := range m {
		t += w
	}
	return t
}

// needsSeed reports whether the mix contains reads or searches.
func (m mix) needsSeed() bool { return m[opRead] > 0 || m[opSearch] > 0 }

// pickOp draws an operation according to the weights of m.
func pickOp(r *rand.Rand, m mix) opKind {
	n := r.IntN(m.total())
	for op, w := range m {
		if n < w {
			return opKind(op)
		}
		n -= w
	}
	return opCreate // unreachable for a non-empty mix
}

// ---------------------------------------------------------------------------
// Create body templating

// bodyTemplate is a Patient JSON split at every occurrence of the placeholder,
// so rendering a body is a handful of appends.
type bodyTemplate struct {
	parts  [][]byte
	static int    // total length of parts
	system string // system of the identifier carrying the placeholder ("" if none)
	family string // first name.family, for family= searches ("" if none)
}

// newBodyTemplate validates a Patient resource and prepares it for templating:
// a top-level id is removed and, unless an identifier value already equals the
// placeholder, an identifier {system: fallbackIdentifierSystem, value:
// placeholder} is prepended.
func newBodyTemplate(raw []byte) (*bodyTemplate, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("body is not a JSON object: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("body has trailing data after the JSON object")
	}
	if rt, _ := m["resourceType"].(string); rt != "Patient" {
		return nil, fmt.Errorf("body resourceType is %q, want \"Patient\"", m["resourceType"])
	}

	modified := false
	if _, ok := m["id"]; ok {
		delete(m, "id")
		modified = true
	}
	system, found := placeholderIdentifierSystem(m)
	if !found {
		ids, _ := m["identifier"].([]any)
		ident := map[string]any{"system": fallbackIdentifierSystem, "value": placeholder}
		m["identifier"] = append([]any{ident}, ids...)
		system = fallbackIdentifierSystem
		modified = true
	}
	out := raw
	if modified {
		var err error
		if out, err = marshalResource(m); err != nil {
			return nil, err
		}
	}

	t := &bodyTemplate{
		parts:  bytes.Split(bytes.TrimSpace(out), []byte(placeholder)),
		system: system,
		family: firstFamily(m),
	}
	for _, p := range t.parts {
		t.static += len(p)
	}
	if probe := t.render("fb-probe-1"); !json.Valid(probe) {
		return nil, errors.New("templated body is not valid JSON")
	}
	return t, nil
}

// render returns a fresh body with every placeholder replaced by value. value
// must not need JSON escaping (identifier values generated here never do).
func (t *bodyTemplate) render(value string) []byte {
	buf := make([]byte, 0, t.static+len(value)*(len(t.parts)-1))
	for i, p := range t.parts {
		if i > 0 {
			buf = append(buf, value...)
		}
		buf = append(buf, p...)
	}
	return buf
}

func placeholderIdentifierSystem(m map[string]any) (string, bool) {
	ids, _ := m["identifier"].([]any)
	for _, id := range ids {
		im, _ := id.(map[string]any)
		if v, _ := im["value"].(string); v == placeholder {
			sys, _ := im["system"].(string)
			return sys, true
		}
	}
	return "", false
}

func firstFamily(m map[string]any) string {
	names, _ := m["name"].([]any)
	for _, n := range names {
		nm, _ := n.(map[string]any)
		if f, _ := nm["family"].(string); f != "" {
			return f
		}
	}
	return ""
}

// marshalResource encodes a resource map with resourceType as the first member
// (map encoding would otherwise sort it among the others) and without HTML
// escaping of the narrative.
func marshalResource(m map[string]any) ([]byte, error) {
	rest := make(map[string]any, len(m))
	for k, v := range m {
		if k != "resourceType" {
			rest[k] = v
		}
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(rest); err != nil {
		return nil, err
	}
	body := bytes.TrimSpace(b.Bytes())
	out := []byte(`{"resourceType":"Patient"`)
	if len(body) > 2 {
		out = append(out, ',')
		out = append(out, body[1:]...)
	} else {
		out = append(out, '}')
	}
	return out, nil
}

// searchPrefix is the family-name prefix used for the occasional family= search.
func searchPrefix(family string) string {
	r := []rune(family)
	return string(r[:min(len(r), 4)])
}

// ---------------------------------------------------------------------------
// Statistics

// percentile returns the nearest-rank p-th percentile (0 < p <= 100) of an
// ascending sorted slice, or 0 for an empty slice.
func percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(n)))
	rank = min(max(rank, 1), n)
	return sorted[rank-1]
}

// Result is the outcome of a run.
type Result struct {
	BaseURL       string            `json:"base_url"`
	Workload      string            `json:"workload"`
	Concurrency   int               `json:"concurrency"`
	DurationSec   float64           `json:"duration_s"`
	TotalRequests int64             `json:"total_requests"`
	RPS           float64           `json:"req_per_s"`
	LatencyMs     Latency           `json:"latency_ms"`
	Ops           map[string]int64  `json:"ops"`
	Booked        int64             `json:"booked"`  // 2xx answers to book requests
	Refused       int64             `json:"refused"` // 409 answers to book requests: not errors
	ErrorCount    int64             `json:"error_count"`
	Errors        map[string]int64  `json:"errors"`
	Seeded        int               `json:"seeded"`
	Interrupted   bool              `json:"interrupted"`
	CPU           map[string]CPUUse `json:"cpu,omitempty"`
}

// Latency holds latency statistics in milliseconds rounded to 2 decimals.
type Latency struct {
	P50  float64 `json:"p50"`
	P95  float64 `json:"p95"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

// workerStats is what one worker records; it is only touched by its worker
// until the run ends.
type workerStats struct {
	lat             []time.Duration
	ops             [numOps]int64
	status          map[int]int64 // error responses by status; 0 = transport error
	booked, refused int64
	total           int64
}

func newWorkerStats(prealloc int) *workerStats {
	return &workerStats{lat: make([]time.Duration, 0, prealloc), status: map[int]int64{}}
}

func (w *workerStats) record(op opKind, status int, lat time.Duration, err error) {
	w.total++
	w.ops[op]++
	if err != nil {
		w.status[0]++
		return
	}
	w.lat = append(w.lat, lat)
	ok := status >= 200 && status <= 299
	switch {
	case op == opBook && ok:
		w.booked++
	case op == opBook && status == http.StatusConflict:
		w.refused++ // the practitioner is booked then: expected under contention
	case !ok:
		w.status[status]++
	}
}

// statusKey names an error bucket: the HTTP status code, or "transport".
func statusKey(code int) string {
	if code == 0 {
		return "transport"
	}
	return strconv.Itoa(code)
}

// summarize merges per-worker stats into a Result.
func summarize(workers []*workerStats, elapsed time.Duration) Result {
	var res Result
	res.Ops = map[string]int64{}
	res.Errors = map[string]int64{}
	n := 0
	for _, w := range workers {
		n += len(w.lat)
	}
	all := make([]time.Duration, 0, n)
	for _, w := range workers {
		all = append(all, w.lat...)
		res.TotalRequests += w.total
		res.Booked += w.booked
		res.Refused += w.refused
		for op, c := range w.ops {
			if c > 0 {
				res.Ops[opKind(op).String()] += c
			}
		}
		for code, c := range w.status {
			res.Errors[statusKey(code)] += c
			res.ErrorCount += c
		}
	}
	slices.Sort(all)
	var sum time.Duration
	for _, d := range all {
		sum += d
	}
	res.DurationSec = elapsed.Seconds()
	if elapsed > 0 {
		res.RPS = float64(res.TotalRequests) / elapsed.Seconds()
	}
	res.LatencyMs = Latency{
		P50: ms(percentile(all, 50)),
		P95: ms(percentile(all, 95)),
		P99: ms(percentile(all, 99)),
	}
	if len(all) > 0 {
		res.LatencyMs.Max = ms(all[len(all)-1])
		res.LatencyMs.Mean = ms(sum / time.Duration(len(all)))
	}
	return res
}

func ms(d time.Duration) float64 {
	return math.Round(float64(d)/float64(time.Millisecond)*100) / 100
}

func sortedKeys(m map[string]int64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		ai, ei := strconv.Atoi(keys[i])
		aj, ej := strconv.Atoi(keys[j])
		if (ei == nil) != (ej == nil) {
			return ei == nil // numeric codes first, then "transport"
		}
		if ei == nil {
			return ai < aj
		}
		return keys[i] < keys[j]
	})
	return keys
}

func writeText(w io.Writer, r Result) {
	fmt.Fprintf(w, "fhirbench results\n")
	fmt.Fprintf(w, "  base url:     %s\n", r.BaseURL)
	fmt.Fprintf(w, "  workload:     %s\n", r.Workload)
	fmt.Fprintf(w, "  concurrency:  %d\n", r.Concurrency)
	fmt.Fprintf(w, "  duration:     %.2fs", r.DurationSec)
	if r.Interrupted {
		fmt.Fprintf(w, " (interrupted)")
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  requests:     %d", r.TotalRequests)
	if len(r.Ops) > 1 {
		var parts []string
		for op := range numOps {
			if c, ok := r.Ops[op.String()]; ok {
				parts = append(parts, fmt.Sprintf("%s %d", op, c))
			}
		}
		fmt.Fprintf(w, " (%s)", strings.Join(parts, ", "))
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  throughput:   %.2f req/s\n", r.RPS)
	if r.Ops[opBook.String()] > 0 {
		fmt.Fprintf(w, "  bookings:     booked: %d (201), refused: %d (409 conflict)\n", r.Booked, r.Refused)
	}
	fmt.Fprintf(w, "  latency (ms): p50 %.2f  p95 %.2f  p99 %.2f  max %.2f\n",
		r.LatencyMs.P50, r.LatencyMs.P95, r.LatencyMs.P99, r.LatencyMs.Max)
	for _, name := range slices.Sorted(maps.Keys(r.CPU)) {
		u := r.CPU[name]
		fmt.Fprintf(w, "  cpu %-9s %.2fs (%.2f cores), %.3f ms/request\n", name+":", u.Seconds, u.Cores, u.PerRequestMs)
	}
	fmt.Fprintf(w, "  errors:       %d", r.ErrorCount)
	if r.ErrorCount > 0 {
		var parts []string
		for _, k := range sortedKeys(r.Errors) {
			label := k
			if k != "transport" {
				label = "HTTP " + k
			}
			parts = append(parts, fmt.Sprintf("%s: %d", label, r.Errors[k]))
		}
		fmt.Fprintf(w, " (%s)", strings.Join(parts, ", "))
	}
	fmt.Fprintln(w)
}

// ---------------------------------------------------------------------------
// HTTP client and requests

func newClient(concurrency int, timeout time.Duration) *http.Client {
	tr := &http.Transport{
		Proxy: nil, // only ever talk to the given base URL
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		MaxIdleConns:          concurrency,
		MaxIdleConnsPerHost:   concurrency,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableKeepAlives:     false,
	}
	return &http.Client{
		Transport: tr,
		Timeout:   timeout,
		// Never follow redirects: they could lead away from the base URL.
		// A 3xx is reported as a non-2xx status.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

type seeded struct {
	readURL   string
	searchURL string
}

type bench struct {
	cfg        config
	mix        mix
	client     *http.Client
	tmpl       *bodyTemplate
	runID      string
	createSeq  atomic.Uint64
	createURL  string
	bookURL    string
	familyURL  string // "" if the body has no family name
	seeds      []seeded
	headerAuth []string
}

var (
	hdrFHIRJSON  = []string{"application/fhir+json"}
	hdrUserAgent = []string{"fhirbench/1"}
)

func (b *bench) newRequest(ctx context.Context, method, u string, body []byte) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	req.Header["Accept"] = hdrFHIRJSON
	req.Header["User-Agent"] = hdrUserAgent
	if body != nil {
		req.Header["Content-Type"] = hdrFHIRJSON
	}
	if b.headerAuth != nil {
		req.Header["Authorization"] = b.headerAuth
	}
	return req, nil
}

// nextValue returns a run-unique identifier value.
func (b *bench) nextValue() string {
	return b.runID + "-" + strconv.FormatUint(b.createSeq.Add(1), 10)
}

// appointment returns a booked Appointment of practitioner p for
// Patient/<runID>-pat, starting at start slot s (of bookingStarts) of day d.
func (b *bench) appointment(p, d, s int) []byte {
	start := bookingEpoch.AddDate(0, 0, d).Add(time.Duration(s) * bookingStep)
	buf := make([]byte, 0, 320)
	buf = append(buf, `{"resourceType":"Appointment","status":"booked","start":"`...)
	buf = start.AppendFormat(buf, time.RFC3339)
	buf = append(buf, `","end":"`...)
	buf = start.Add(bookingLength).AppendFormat(buf, time.RFC3339)
	buf = append(buf, `","participant":[{"actor":{"reference":"Patient/`...)
	buf = append(buf, b.runID...)
	buf = append(buf, `-pat"},"status":"accepted"},{"actor":{"reference":"Practitioner/`...)
	buf = append(buf, b.runID...)
	buf = append(buf, "-p"...)
	buf = strconv.AppendInt(buf, int64(p), 10)
	buf = append(buf, `"},"status":"accepted"}]}`...)
	return buf
}

// transaction renders a transaction Bundle of cfg.TxEntries entries:
// Patients from the body template, each followed by an Observation that
// refers to it by its urn:uuid fullUrl.
func (b *bench) transaction() []byte {
	buf := []byte(`{"resourceType":"Bundle","type":"transaction","entry":[`)
	for i := 0; i < b.cfg.TxEntries; i += 2 {
		v := b.nextValue()
		u := "urn:uuid:" + uuidOf(v)
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, `{"fullUrl":"`...)
		buf = append(buf, u...)
		buf = append(buf, `","resource":`...)
		buf = append(buf, b.tmpl.render(v)...)
		buf = append(buf, `,"request":{"method":"POST","url":"Patient"}}`...)
		if i+1 < b.cfg.TxEntries {
			buf = append(buf, `,{"resource":{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},"valueQuantity":{"value":72,"unit":"/min"},"subject":{"reference":"`...)
			buf = append(buf, u...)
			buf = append(buf, `"}},"request":{"method":"POST","url":"Observation"}}`...)
		}
	}
	return append(buf, "]}"...)
}

// uuidOf formats the SHA-256 of v as a UUID.
func uuidOf(v string) string {
	h := sha256.Sum256([]byte(v))
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

// do performs one operation, reading and discarding the response body. It
// returns the HTTP status, or an error for transport failures.
func (b *bench) do(ctx context.Context, op opKind, r *rand.Rand) (int, error) {
	var req *http.Request
	var err error
	switch op {
	case opCreate:
		req, err = b.newRequest(ctx, http.MethodPost, b.createURL, b.tmpl.render(b.nextValue()))
	case opRead:
		req, err = b.newRequest(ctx, http.MethodGet, b.seeds[r.IntN(len(b.seeds))].readURL, nil)
	case opSearch:
		u := b.seeds[r.IntN(len(b.seeds))].searchURL
		if b.familyURL != "" && r.IntN(10) == 0 {
			u = b.familyURL
		}
		req, err = b.newRequest(ctx, http.MethodGet, u, nil)
	case opBook:
		body := b.appointment(r.IntN(b.cfg.Practitioners), r.IntN(b.cfg.BookingDays), r.IntN(bookingStarts))
		req, err = b.newRequest(ctx, http.MethodPost, b.bookURL, body)
	case opTransaction:
		req, err = b.newRequest(ctx, http.MethodPost, b.cfg.BaseURL, b.transaction())
	}
	if err != nil {
		return 0, err
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return 0, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, err
	}
	return resp.StatusCode, nil
}

// extractID finds the logical id of a created resource from the response body
// ("id" member) or, failing that, from the Location header
// (.../Patient/<id>[/_history/<vid>]).
func extractID(body []byte, location string) string {
	var v struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(body, &v) == nil && v.ID != "" {
		return v.ID
	}
	if location == "" {
		return ""
	}
	if u, err := url.Parse(location); err == nil {
		location = u.Path
	}
	segs := strings.Split(strings.Trim(location, "/"), "/")
	for i := len(segs) - 2; i >= 0; i-- {
		if segs[i] == "Patient" && segs[i+1] != "" && segs[i+1] != "_history" {
			return segs[i+1]
		}
	}
	return ""
}

// seed creates n Patients with unique identifier values and records how to read
// and search each of them.
func (b *bench) seed(ctx context.Context, n int, log io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, seedPhaseTimeout)
	defer cancel()
	start := time.Now()
	fmt.Fprintf(log, "seeding %d Patients at %s ...\n", n, b.createURL)

	jobs := make(chan int)
	var (
		mu       sync.Mutex
		failures int
		firstErr string
	)
	fail := func(msg string) {
		mu.Lock()
		defer mu.Unlock()
		failures++
		if firstErr == "" {
			firstErr = msg
		}
	}
	var wg sync.WaitGroup
	for range min(b.cfg.Concurrency, n) {
		wg.Go(func() {
			for i := range jobs {
				value := b.runID + "-s" + strconv.Itoa(i)
				id, err := b.createOne(ctx, value)
				if err != nil {
					fail(err.Error())
					continue
				}
				q := url.QueryEscape(value)
				if b.tmpl.system != "" {
					q = url.QueryEscape(b.tmpl.system + "|" + value)
				}
				s := seeded{
					readURL:   b.cfg.BaseURL + "/Patient/" + url.PathEscape(id),
					searchURL: b.cfg.BaseURL + "/Patient?identifier=" + q,
				}
				mu.Lock()
				b.seeds = append(b.seeds, s)
				mu.Unlock()
			}
		})
	}
feed:
	for i := range n {
		select {
		case jobs <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()

	if err := ctx.Err(); err != nil {
		return fmt.Errorf("seeding stopped after %d of %d Patients: %w", len(b.seeds), n, err)
	}
	if len(b.seeds) == 0 {
		return fmt.Errorf("seeding failed: no Patient could be created (%d failures, first: %s)", failures, firstErr)
	}
	if failures > 0 {
		fmt.Fprintf(log, "warning: %d of %d seed creates failed (first: %s)\n", failures, n, firstErr)
	}
	fmt.Fprintf(log, "seeded %d Patients in %.2fs\n", len(b.seeds), time.Since(start).Seconds())
	return nil
}

func (b *bench) createOne(ctx context.Context, value string) (string, error) {
	req, err := b.newRequest(ctx, http.MethodPost, b.createURL, b.tmpl.render(value))
	if err != nil {
		return "", err
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	io.Copy(io.Discard, resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		snippet := strings.TrimSpace(string(body[:min(len(body), 200)]))
		return "", fmt.Errorf("HTTP %d: %s", resp.StatusCode, snippet)
	}
	id := extractID(body, resp.Header.Get("Location"))
	if id == "" {
		return "", fmt.Errorf("HTTP %d but no id in body or Location header", resp.StatusCode)
	}
	return id, nil
}

// ---------------------------------------------------------------------------
// Run

// run executes the benchmark described by cfg. Cancelling ctx (e.g. on SIGINT)
// stops the run early; the partial result is returned with Interrupted set.
// Progress messages go to log.
func run(ctx context.Context, cfg config, log io.Writer) (Result, error) {
	if err := cfg.validate(); err != nil {
		return Result{}, err
	}
	m, _ := mixFor(cfg.Workload)

	raw := defaultPatientJSON
	if cfg.BodyPath != "" {
		var err error
		if raw, err = os.ReadFile(cfg.BodyPath); err != nil {
			return Result{}, fmt.Errorf("reading --body: %w", err)
		}
	}
	tmpl, err := newBodyTemplate(raw)
	if err != nil {
		return Result{}, err
	}

	b := &bench{
		cfg:       cfg,
		mix:       m,
		client:    newClient(cfg.Concurrency, cfg.Timeout),
		tmpl:      tmpl,
		runID:     fmt.Sprintf("fb-%08x", rand.Uint32()),
		createURL: cfg.BaseURL + "/Patient",
		bookURL:   cfg.BaseURL + "/Appointment",
	}
	defer b.client.CloseIdleConnections()
	if cfg.Token != "" {
		b.headerAuth = []string{"Bearer " + cfg.Token}
	}
	if tmpl.family != "" {
		b.familyURL = cfg.BaseURL + "/Patient?family=" + url.QueryEscape(searchPrefix(tmpl.family))
	}

	if m.needsSeed() {
		if err := b.seed(ctx, cfg.Seed, log); err != nil {
			return Result{}, err
		}
	}

	res, err := b.load(ctx, log)
	res.Seeded = len(b.seeds)
	return res, err
}

// load runs the workers for warmup+duration (or until the request cap is hit or
// ctx is cancelled) and summarizes the measured part.
func (b *bench) load(parent context.Context, log io.Writer) (Result, error) {
	cfg := b.cfg
	start := time.Now()
	measureStart := start.Add(cfg.Warmup)
	ctx, cancel := context.WithDeadline(parent, measureStart.Add(cfg.Duration))
	defer cancel()

	if cfg.Warmup > 0 {
		fmt.Fprintf(log, "warming up for %s ...\n", cfg.Warmup)
	}
	fmt.Fprintf(log, "running %s workload: %d workers for %s", cfg.Workload, cfg.Concurrency, cfg.Duration)
	if cfg.Requests > 0 {
		fmt.Fprintf(log, " or %d requests", cfg.Requests)
	}
	fmt.Fprintln(log, " ...")

	prealloc := 8192
	if cfg.Requests > 0 {
		prealloc = int(min(cfg.Requests/int64(cfg.Concurrency)+1, 1<<20))
	}
	var claimed atomic.Int64
	baseSeed := rand.Uint64()
	stats := make([]*workerStats, cfg.Concurrency)
	var wg sync.WaitGroup
	for w := range cfg.Concurrency {
		ws := newWorkerStats(prealloc)
		stats[w] = ws
		r := rand.New(rand.NewPCG(baseSeed, uint64(w)))
		wg.Go(func() {
			for ctx.Err() == nil {
				measuring := !time.Now().Before(measureStart)
				if measuring && cfg.Requests > 0 && claimed.Add(1) > cfg.Requests {
					return
				}
				op := pickOp(r, b.mix)
				t0 := time.Now()
				status, err := b.do(ctx, op, r)
				lat := time.Since(t0)
				if err != nil && ctx.Err() != nil {
					return // cut off by the end of the run: not a server error
				}
				if measuring {
					ws.record(op, status, lat, err)
				}
			}
		})
	}
	// The CPU of --cpu-pid processes is sampled when measuring starts and
	// when the workers are done.
	var cpuBefore map[string]time.Duration
	var cpuErr error
	cpuTaken := make(chan struct{})
	if len(cfg.CPU) > 0 {
		go func() {
			defer close(cpuTaken)
			select {
			case <-time.After(time.Until(measureStart)):
			case <-ctx.Done():
			}
			cpuBefore, cpuErr = cpuSample(cfg.CPU)
		}()
	} else {
		close(cpuTaken)
	}
	wg.Wait()
	end := time.Now()
	<-cpuTaken

	elapsed := min(end.Sub(measureStart), cfg.Duration)
	elapsed = max(elapsed, 0)
	res := summarize(stats, elapsed)
	if len(cfg.CPU) > 0 && cpuErr == nil {
		var after map[string]time.Duration
		if after, cpuErr = cpuSample(cfg.CPU); cpuErr == nil {
			res.CPU = cpuUse(cpuBefore, after, max(end.Sub(measureStart), 0), res.TotalRequests)
		}
	}
	if cpuErr != nil {
		return res, cpuErr
	}
	res.BaseURL = cfg.BaseURL
	res.Workload = cfg.Workload
	res.Concurrency = cfg.Concurrency
	res.Interrupted = parent.Err() != nil
	return res, nil
}

// ---------------------------------------------------------------------------
// main

func realMain(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "fhirbench:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	res, err := run(ctx, cfg, stderr)
	stop() // a second SIGINT terminates immediately
	if err != nil {
		fmt.Fprintln(stderr, "fhirbench:", err)
		return 1
	}
	writeText(stdout, res)
	if cfg.JSON {
		enc := json.NewEncoder(stdout)
		if err := enc.Encode(res); err != nil {
			fmt.Fprintln(stderr, "fhirbench:", err)
			return 1
		}
	}
	return 0
}

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}
