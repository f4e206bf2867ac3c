// Package conformance is a black-box, data-driven FHIR R4 (4.0.1) conformance
// suite. It talks plain HTTP (net/http) to any FHIR R4 base URL — HAPI, Blaze
// or fhirgate itself — and checks the behaviour the R4 specification
// (http.html, search.html) requires:
//
//   - roundtrip: every HL7 R4 example in DataDir/r4-examples is PUT and read
//     back; the stored resource must be semantically identical (only
//     meta.versionId and meta.lastUpdated may differ, decimals must keep
//     their exact textual form).
//   - invalid: every bad input in DataDir/invalid must be rejected with
//     400/422 and an OperationOutcome, and must not be stored.
//   - errors: HTTP status codes and OperationOutcome bodies of the RESTful
//     API (404, 410, 412, 413, 415, 406, ...), create headers, Prefer
//     handling, versioned reads and conditional create.
//   - search: token, string, date (every prefix and precision), reference and
//     quantity parameters, paging, sorting, _include/_revinclude, _summary,
//     _total, POST _search, _id and _lastUpdated.
//   - race: 64 concurrent conditional creates, optionally spread over several
//     gateway processes sharing one store, must create exactly one resource.
//
// The suites create their own data, tagged with a random per-run tag, so
// repeated runs and unrelated data on the server do not interfere. Run returns
// one Result per case; Report.WriteTable prints them.
package conformance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"
)

// Config configures a conformance run.
type Config struct {
	// BaseURL is the FHIR base URL of the server under test, for example
	// http://127.0.0.1:8080/fhir (a trailing slash is removed).
	BaseURL string
	// RaceURLs are base URLs of other gateway processes that share storage
	// with BaseURL. The conditional-create race spreads its requests
	// round-robin over BaseURL and these. May be empty.
	RaceURLs []string
	// DataDir is the directory holding r4-examples/ and invalid/. Empty means
	// testdata/conformance, looked up from the working directory upwards
	// (so it works from the repository root and from any package directory).
	DataDir string
	// Client is the HTTP client to use. Nil means a client with a 2 minute
	// timeout.
	Client *http.Client
	// Token, when set, is sent as "Authorization: Bearer <Token>".
	Token string
	// RPC, when set, is the Ethereum JSON-RPC URL on which the log suite
	// checks that receipts' roots are anchored.
	RPC string
}

// Result is the outcome of one conformance case.
type Result struct {
	Suite    string // suite name: roundtrip, invalid, errors, search, race, auth
	Name     string // case name, unique within the suite
	Pass     bool   // the case passed
	Skipped  bool   // the case was not applicable; Detail says why
	Detail   string // failure or skip reason (may span several lines)
	Duration time.Duration
}

// Report holds the results of a run, in execution order.
type Report struct {
	Results []Result
}

// Failed returns the number of failed (neither passed nor skipped) cases.
func (r Report) Failed() int {
	n := 0
	for _, res := range r.Results {
		if !res.Pass && !res.Skipped {
			n++
		}
	}
	return n
}

// counts returns the number of passed, failed and skipped cases.
func (r Report) counts() (passed, failed, skipped int) {
	for _, res := range r.Results {
		switch {
		case res.Skipped:
			skipped++
		case res.Pass:
			passed++
		default:
			failed++
		}
	}
	return passed, failed, skipped
}

// maxTableDetail bounds the detail column of WriteTable.
const maxTableDetail = 140

// WriteTable writes an aligned table with one row per case (suite, case,
// PASS/FAIL/SKIP, duration, first line of the detail), followed by a closing
// line of the form "conformance: N passed, N failed, N skipped".
func (r Report) WriteTable(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SUITE\tCASE\tRESULT\tTIME\tDETAIL")
	for _, res := range r.Results {
		status := "PASS"
		switch {
		case res.Skipped:
			status = "SKIP"
		case !res.Pass:
			status = "FAIL"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", res.Suite, res.Name, status,
			formatDuration(res.Duration), oneLine(res.Detail, maxTableDetail))
	}
	tw.Flush()
	p, f, s := r.counts()
	fmt.Fprintf(w, "conformance: %d passed, %d failed, %d skipped\n", p, f, s)
}

// WriteDetails writes the full, multi-line detail of every failed case
// (for example the cmp.Diff of a roundtrip mismatch). It writes nothing when
// no case failed.
func (r Report) WriteDetails(w io.Writer) {
	for _, res := range r.Results {
		if res.Pass || res.Skipped {
			continue
		}
		fmt.Fprintf(w, "--- FAIL %s/%s (%s)\n", res.Suite, res.Name, formatDuration(res.Duration))
		for _, line := range strings.Split(strings.TrimRight(res.Detail, "\n"), "\n") {
			fmt.Fprintf(w, "    %s\n", line)
		}
	}
}

func formatDuration(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	default:
		return d.Round(10 * time.Millisecond).String()
	}
}

// oneLine returns the first line of s, cut to at most max runes, with a
// marker when something was left out.
func oneLine(s string, max int) string {
	s = strings.TrimSpace(s)
	more := false
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s, more = strings.TrimSpace(s[:i]), true
	}
	if rs := []rune(s); len(rs) > max {
		s, more = string(rs[:max]), true
	}
	if more {
		s += " …"
	}
	return s
}

// Run runs all suites against cfg.BaseURL and returns one Result per case.
// It returns an error only when the run cannot start: missing BaseURL,
// unreadable test data, or a server that cannot be reached at all. Failing
// cases are reported in the Report, not as an error.
func Run(ctx context.Context, cfg Config) (Report, error) {
	r, err := newRunner(cfg)
	if err != nil {
		return Report{}, err
	}
	// Reachability: any HTTP answer is fine, only a transport error stops us.
	if _, err := r.do(ctx, r.base, http.MethodGet, "metadata", nil, nil); err != nil {
		return Report{}, fmt.Errorf("conformance: server at %s not reachable: %w", r.base, err)
	}
	suites := []struct {
		name string
		run  func(context.Context) error
	}{
		{"roundtrip", r.roundtripSuite},
		{"invalid", r.invalidSuite},
		{"errors", r.errorsSuite},
		{"bundles", r.bundlesSuite},
		{"binary", r.binarySuite},
		{"search", r.searchSuite},
		{"race", r.raceSuite},
		{"auth", r.authSuite},
		{"log", r.logSuite},
	}
	for _, s := range suites {
		if err := ctx.Err(); err != nil {
			return r.report, err
		}
		if err := s.run(ctx); err != nil {
			return r.report, fmt.Errorf("conformance: suite %s: %w", s.name, err)
		}
	}
	return r.report, nil
}

// runner holds the state of one run.
type runner struct {
	base     string   // BaseURL without trailing slash
	raceURLs []string // BaseURL followed by Config.RaceURLs
	dataDir  string
	client   *http.Client
	token    string
	rpc      string
	tag      string // random per-run tag, safe for ids and identifier values
	report   Report
}

func newRunner(cfg Config) (*runner, error) {
	base := strings.TrimRight(strings.TrimSpace(cfg.BaseURL), "/")
	if base == "" {
		return nil, errors.New("conformance: Config.BaseURL is empty")
	}
	if !strings.HasPrefix(base, "http://") && !strings.HasPrefix(base, "https://") {
		return nil, fmt.Errorf("conformance: BaseURL %q is not an http(s) URL", base)
	}
	dataDir := cfg.DataDir
	if dataDir == "" {
		d, err := findDataDir()
		if err != nil {
			return nil, err
		}
		dataDir = d
	}
	for _, sub := range []string{"r4-examples", "invalid"} {
		if fi, err := os.Stat(filepath.Join(dataDir, sub)); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("conformance: data dir %s has no %s/ directory", dataDir, sub)
		}
	}
	client := cfg.Client
	if client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 128
		client = &http.Client{Timeout: 2 * time.Minute, Transport: tr}
	}
	race := []string{base}
	for _, u := range cfg.RaceURLs {
		if u = strings.TrimRight(strings.TrimSpace(u), "/"); u != "" {
			race = append(race, u)
		}
	}
	var b [5]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	return &runner{
		base:     base,
		raceURLs: race,
		dataDir:  dataDir,
		client:   client,
		token:    cfg.Token,
		rpc:      cfg.RPC,
		tag:      "c" + hex.EncodeToString(b[:]),
	}, nil
}

// findDataDir looks for testdata/conformance in the working directory and
// its parents.
func findDataDir() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		cand := filepath.Join(dir, "testdata", "conformance")
		if fi, err := os.Stat(cand); err == nil && fi.IsDir() {
			return cand, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("conformance: testdata/conformance not found from the working directory upwards; set Config.DataDir")
		}
		dir = parent
	}
}

// skipError marks a case as not applicable.
type skipError struct{ reason string }

func (e skipError) Error() string { return e.reason }

// skipf returns an error that makes record mark the case as skipped.
func skipf(format string, args ...any) error {
	return skipError{fmt.Sprintf(format, args...)}
}

// record runs one case and appends its Result: nil error passes, a skipf
// error skips, anything else fails with the error text as detail.
func (r *runner) record(suite, name string, fn func() error) {
	start := time.Now()
	err := fn()
	res := Result{Suite: suite, Name: r.stableName(name), Duration: time.Since(start)}
	var skip skipError
	switch {
	case err == nil:
		res.Pass = true
	case errors.As(err, &skip):
		res.Skipped = true
		res.Detail = skip.reason
	default:
		res.Detail = err.Error()
	}
	r.report.Results = append(r.report.Results, res)
}

// stableName replaces the run-specific parts of a case name (identifier
// systems and values built from the run tag) with placeholders, so that
// case names are the same in every run and can be compared across runs.
func (r *runner) stableName(name string) string {
	name = strings.ReplaceAll(name, r.system(""), "$sys/")
	return strings.ReplaceAll(name, r.tag, "$tag")
}
