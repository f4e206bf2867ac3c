package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/gateway"
	"github.com/fhirgate/fhirgate/internal/store/boltstore"
	"github.com/fhirgate/fhirgate/internal/store/sealed/sealedtest"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// importServer is a real gateway on a sealed boltstore in a temp dir,
// open (no Auth: every request acts as a system client). wrap, if set,
// puts a fault injector in front of it.
type importServer struct {
	base string
	hc   *http.Client
}

func newImportServer(t *testing.T, cfg gateway.Config, wrap func(http.Handler) http.Handler) *importServer {
	t.Helper()
	st, err := boltstore.New(t.Context(), boltstore.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cfg.Store = sealedtest.Wrap(t, st)
	gw := gateway.New(cfg)
	t.Cleanup(func() { gw.Close() })
	var h http.Handler = gw
	if wrap != nil {
		h = wrap(gw)
	}
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return &importServer{base: ts.URL + "/fhir", hc: ts.Client()}
}

func (s *importServer) get(t *testing.T, path string) (int, map[string]any) {
	t.Helper()
	res, err := s.hc.Get(s.base + "/" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var m map[string]any
	b, _ := io.ReadAll(res.Body)
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("GET %s: %d %s", path, res.StatusCode, b)
	}
	return res.StatusCode, m
}

// total is the Bundle.total of a search or history.
func (s *importServer) total(t *testing.T, path string) int {
	t.Helper()
	code, m := s.get(t, path)
	n, ok := m["total"].(float64)
	if code != http.StatusOK || !ok {
		t.Fatalf("GET %s: %d %v", path, code, m)
	}
	return int(n)
}

// counts is the number of current resources (or, with history, of
// versions) of each type in want.
func (s *importServer) counts(t *testing.T, want map[string]int, history bool) map[string]int {
	t.Helper()
	got := map[string]int{}
	for typ := range want {
		if history {
			got[typ] = s.total(t, typ+"/_history?_count=0")
		} else {
			got[typ] = s.total(t, typ+"?_summary=count")
		}
	}
	return got
}

// importRun runs fhirgate import against s with args; it returns the
// summary (stdout), the logs (stderr) and the error.
func importRun(t *testing.T, s *importServer, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	args = append([]string{"--base", s.base}, args...)
	err := runImport(t.Context(), args, &stdout, &stderr)
	return stdout.String(), stderr.String(), err
}

// summaryField is the value of one line of the summary.
func summaryField(t *testing.T, summary, name string) string {
	t.Helper()
	for _, l := range strings.Split(summary, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == name {
			return f[1]
		}
	}
	t.Fatalf("no %q in the summary:\n%s", name, summary)
	return ""
}

// wantSummary checks summary lines.
func wantSummary(t *testing.T, summary string, want map[string]string) {
	t.Helper()
	got := map[string]string{}
	for k := range want {
		got[k] = summaryField(t, summary, k)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("summary (-want +got):\n%s\n%s", diff, summary)
	}
}

const busterPatient = "e4531916-b162-4f4b-90c2-ce37e132b8d4"

// completeCounts is what testdata/import/complete holds: the Synthea
// transaction Bundle (66), examples.ndjson (9), Practitioner-f201.json
// (1) and collection.json (2).
var completeCounts = map[string]int{
	"Observation": 33 + 3 + 1, "Patient": 1 + 3 + 1, "Practitioner": 1 + 1 + 1, "Organization": 1 + 1,
	"Encounter": 6 + 1, "Claim": 7, "ExplanationOfBenefit": 6, "Immunization": 4, "Condition": 3,
	"DiagnosticReport": 2, "Procedure": 1, "MedicationRequest": 1,
}

// completeDir assembles testdata/import/complete with the repository's
// shared test files (the Synthea bundle, an R4 example) in a temporary
// directory.
func completeDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for dst, src := range map[string]string{
		"Buster_Hoeger_ad2e3fc5-2b5d-4cb9-8d03-9ea0f4ac8423.json": "../../testdata/synthea/Buster_Hoeger_ad2e3fc5-2b5d-4cb9-8d03-9ea0f4ac8423.json",
		"Practitioner-f201.json":                                  "../../testdata/conformance/r4-examples/Practitioner-f201.json",
		"collection.json":                                         "testdata/import/complete/collection.json",
		"ndjson/examples.ndjson":                                  "testdata/import/complete/ndjson/examples.ndjson",
	} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, dst)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, dst), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestImportIdempotent(t *testing.T) {
	s := newImportServer(t, gateway.Config{}, nil)
	failures := filepath.Join(t.TempDir(), "failures.ndjson")
	dir := completeDir(t)

	out, _, err := importRun(t, s, "--failures", failures, "--batch", "4", "--workers", "3", dir)
	if err != nil {
		t.Fatalf("import: %v\n%s", err, out)
	}
	wantSummary(t, out, map[string]string{"files": "4", "resources": "78", "created": "78", "updated": "0", "unchanged": "0", "failed": "0"})
	if diff := cmp.Diff(completeCounts, s.counts(t, completeCounts, false)); diff != "" {
		t.Errorf("resources after the import (-want +got):\n%s", diff)
	}
	versions := s.counts(t, completeCounts, true)
	if _, err := os.Stat(failures); !os.IsNotExist(err) {
		t.Errorf("a failures file was created with no failure: %v", err)
	}

	// The Bundle's POST with a urn:uuid fullUrl became PUT Type/<uuid>.
	if code, _ := s.get(t, "Patient/"+busterPatient); code != http.StatusOK {
		t.Errorf("Patient/%s: %d, want 200", busterPatient, code)
	}
	// A line without an id is stored under the SHA-256 of its content.
	line := `{"resourceType":"Patient","active":true,"name":[{"family":"Noid","given":["Synthetic"]}]}`
	if code, _ := s.get(t, "Patient/"+contentID([]byte(line))); code != http.StatusOK {
		t.Errorf("the Patient without an id: %d, want 200", code)
	}
	// A collection's entries keep their references to each other.
	_, obs := s.get(t, "Observation/0b6f3c1e-6d0b-4c55-9a40-4b1f2a7c9e02")
	if ref := obs["subject"].(map[string]any)["reference"]; ref != "Patient/0b6f3c1e-6d0b-4c55-9a40-4b1f2a7c9e01" {
		t.Errorf("the collection's Observation.subject = %v", ref)
	}

	// Again: nothing new, no new version.
	out, _, err = importRun(t, s, "--failures", failures, dir)
	if err != nil {
		t.Fatalf("second import: %v\n%s", err, out)
	}
	wantSummary(t, out, map[string]string{"resources": "78", "created": "0", "updated": "0", "unchanged": "78", "failed": "0"})
	if diff := cmp.Diff(completeCounts, s.counts(t, completeCounts, false)); diff != "" {
		t.Errorf("resources after the second import (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(versions, s.counts(t, completeCounts, true)); diff != "" {
		t.Errorf("versions after the second import (-want +got):\n%s", diff)
	}
}

func TestImportFailures(t *testing.T) {
	s := newImportServer(t, gateway.Config{}, nil)
	failures := filepath.Join(t.TempDir(), "failures.ndjson")
	file := filepath.Join("testdata", "import", "bad", "bad.ndjson")

	out, _, err := importRun(t, s, "--failures", failures, file)
	if err == nil || !strings.Contains(err.Error(), "3 failed") {
		t.Errorf("err = %v, want 3 failed", err)
	}
	wantSummary(t, out, map[string]string{"resources": "5", "created": "2", "failed": "3"})
	for _, path := range []string{"Patient/bad-file-good-1", "Observation/bad-file-good-2"} {
		if code, _ := s.get(t, path); code != http.StatusOK {
			t.Errorf("%s: %d, want 200 (a bad line in the file must not stop the good ones)", path, code)
		}
	}
	if code, _ := s.get(t, "Patient/bad-file-invalid"); code != http.StatusNotFound {
		t.Errorf("the invalid Patient: %d, want 404", code)
	}

	// One OperationOutcome per bad line, its first issue naming file:line
	// (and Type/id when the line had them); the server's issues follow.
	f, err := os.Open(failures)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var got []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var oo struct {
			ResourceType string `json:"resourceType"`
			Issue        []struct {
				Severity, Code, Diagnostics string
			} `json:"issue"`
		}
		if err := json.Unmarshal(sc.Bytes(), &oo); err != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 {
			t.Fatalf("failures line %q: not an OperationOutcome (%v)", sc.Text(), err)
		}
		d := oo.Issue[0].Diagnostics
		where, _, _ := strings.Cut(d, ": ")
		got = append(got, where)
		if strings.Contains(d, "bad.ndjson:3") && len(oo.Issue) < 2 {
			t.Errorf("the invalid resource's outcome has no issue from the server: %s", sc.Text())
		}
	}
	want := []string{file + ":2", file + ":3 Patient/bad-file-invalid", file + ":6"}
	if diff := cmp.Diff(want, got, sortStrings); diff != "" {
		t.Errorf("failures (-want +got):\n%s", diff)
	}
}

var sortStrings = cmpopts.SortSlices(func(a, b string) bool { return a < b })

// slowPOST delays every Bundle, so that an import lasts long enough to
// log its progress.
func slowPOST(d time.Duration) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost {
				time.Sleep(d)
			}
			h.ServeHTTP(w, r)
		})
	}
}

func TestImportProgressLogs(t *testing.T) {
	s := newImportServer(t, gateway.Config{}, slowPOST(60*time.Millisecond))
	file := filepath.Join("testdata", "import", "complete", "ndjson", "examples.ndjson")
	failures := filepath.Join(t.TempDir(), "failures.ndjson")

	out, logs, err := importRun(t, s, "--failures", failures, "--batch", "1", "--workers", "1", "--progress-interval", "50ms", file)
	if err != nil {
		t.Fatalf("import: %v\n%s", err, out)
	}
	if n := strings.Count(logs, "import progress"); n < 3 {
		t.Errorf("%d progress records in 9 × 60ms at 50ms intervals, want several:\n%s", n, logs)
	}
	if !strings.Contains(logs, "bytes_total=19199") || !strings.Contains(logs, "eta=") {
		t.Errorf("progress records without bytes_total or eta:\n%s", logs)
	}

	_, logs, err = importRun(t, s, "--failures", failures, "--batch", "1", "--workers", "1", "--progress-interval", "50ms", "--quiet", file)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs, "import progress") {
		t.Errorf("--quiet logged progress:\n%s", logs)
	}
}

// faults answers the first n Bundles with status (and Retry-After), then
// passes requests on to the gateway.
func faults(n int64, status int, retryAfter string, seen *atomic.Int64) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost && seen.Add(1) <= n {
				if retryAfter != "" {
					w.Header().Set("Retry-After", retryAfter)
				}
				w.Header().Set("Content-Type", "application/fhir+json")
				w.WriteHeader(status)
				fmt.Fprint(w, `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient"}]}`)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
}

func TestImportRetriesAfter503(t *testing.T) {
	var seen atomic.Int64
	s := newImportServer(t, gateway.Config{}, faults(1, http.StatusServiceUnavailable, "1", &seen))
	file := filepath.Join("testdata", "import", "complete", "ndjson", "examples.ndjson")

	start := time.Now()
	out, _, err := importRun(t, s, "--failures", filepath.Join(t.TempDir(), "f.ndjson"), file)
	if err != nil {
		t.Fatalf("import: %v\n%s", err, out)
	}
	if el := time.Since(start); el < time.Second {
		t.Errorf("the import took %v: Retry-After: 1 was not honoured", el)
	}
	wantSummary(t, out, map[string]string{"created": "9", "failed": "0", "retries": "1"})
	if got := s.total(t, "Observation?_summary=count"); got != 3 {
		t.Errorf("%d Observations, want 3", got)
	}
}

func TestImportStopsOn401(t *testing.T) {
	var seen atomic.Int64
	s := newImportServer(t, gateway.Config{}, faults(1000, http.StatusUnauthorized, "", &seen))
	failures := filepath.Join(t.TempDir(), "f.ndjson")
	_, _, err := importRun(t, s, "--failures", failures, "--batch", "1", "--workers", "2", filepath.Join("testdata", "import", "complete", "ndjson"))
	if err == nil || !strings.Contains(err.Error(), "refused the token") {
		t.Errorf("err = %v, want the token refused", err)
	}
	if n := seen.Load(); n > 4 {
		t.Errorf("%d Bundles sent after a 401, want the import stopped", n)
	}
	if _, err := os.Stat(failures); !os.IsNotExist(err) {
		t.Errorf("a 401 wrote failures: %v", err)
	}
}

func TestImportHalvesTooLargeBundles(t *testing.T) {
	s := newImportServer(t, gateway.Config{MaxBundleEntries: 2}, nil)
	file := filepath.Join("testdata", "import", "complete", "ndjson", "examples.ndjson")
	out, _, err := importRun(t, s, "--failures", filepath.Join(t.TempDir(), "f.ndjson"), "--batch", "9", file)
	if err != nil {
		t.Fatalf("import: %v\n%s", err, out)
	}
	wantSummary(t, out, map[string]string{"resources": "9", "sent": "9", "created": "9", "failed": "0"})
}

func TestReadLine(t *testing.T) {
	long := strings.Repeat("x", 300<<10) // longer than the reader's buffer
	in := "a\r\n\n" + long + "\n" + long + "y\nlast"
	br := bufio.NewReaderSize(strings.NewReader(in), 16)
	type line struct {
		Text    string
		TooLong bool
	}
	var got []line
	for {
		l, tooLong, err := readLine(br, len(long))
		if len(l) > 0 || tooLong || err == nil {
			got = append(got, line{string(l), tooLong})
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	want := []line{{"a", false}, {"", false}, {long, false}, {"", true}, {"last", false}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
}

func TestPrepareBundle(t *testing.T) {
	const uuid = "5f1c7c1e-0000-4000-8000-000000000001"
	tests := []struct {
		name    string
		typ     string
		entries string
		n       int
		want    []string // the entries of each Bundle sent, as JSON
	}{{
		name:    "POST with a urn:uuid becomes PUT Type/uuid",
		typ:     "transaction",
		entries: `[{"fullUrl":"urn:uuid:` + uuid + `","resource":{"resourceType":"Patient","id":"` + uuid + `"},"request":{"method":"POST","url":"Patient"}}]`,
		n:       10,
		want:    []string{`[{"fullUrl":"urn:uuid:` + uuid + `","request":{"method":"PUT","url":"Patient/` + uuid + `"},"resource":{"resourceType":"Patient","id":"` + uuid + `"}}]`},
	}, {
		name:    "the resource gets the uuid as its id",
		typ:     "transaction",
		entries: `[{"fullUrl":"urn:uuid:` + uuid + `","resource":{"resourceType":"Patient","active":true},"request":{"method":"POST","url":"Patient"}}]`,
		n:       10,
		want:    []string{`[{"fullUrl":"urn:uuid:` + uuid + `","request":{"method":"PUT","url":"Patient/` + uuid + `"},"resource":{"id":"` + uuid + `","resourceType":"Patient","active":true}}]`},
	}, {
		name:    "a conditional create is kept",
		typ:     "transaction",
		entries: `[{"fullUrl":"urn:uuid:` + uuid + `","resource":{"resourceType":"Organization"},"request":{"method":"POST","url":"Organization","ifNoneExist":"identifier=x|1"}}]`,
		n:       10,
		want:    []string{`[{"fullUrl":"urn:uuid:` + uuid + `","resource":{"resourceType":"Organization"},"request":{"method":"POST","url":"Organization","ifNoneExist":"identifier=x|1"}}]`},
	}, {
		name:    "a POST without a urn:uuid fullUrl is kept",
		typ:     "batch",
		entries: `[{"resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Patient"}}]`,
		n:       10,
		want:    []string{`[{"resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Patient"}}]`},
	}, {
		name:    "a batch is split",
		typ:     "batch",
		entries: `[{"request":{"method":"DELETE","url":"Patient/1"}},{"request":{"method":"DELETE","url":"Patient/2"}},{"request":{"method":"DELETE","url":"Patient/3"}}]`,
		n:       2,
		want: []string{`[{"request":{"method":"DELETE","url":"Patient/1"}},{"request":{"method":"DELETE","url":"Patient/2"}}]`,
			`[{"request":{"method":"DELETE","url":"Patient/3"}}]`},
	}}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			in := `{"resourceType":"Bundle","type":"` + test.typ + `","entry":` + test.entries + `}`
			bs, err := prepareBundle([]byte(in), test.typ, test.n)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, b := range bs {
				var top struct{ Entry json.RawMessage }
				if err := json.Unmarshal(b.body, &top); err != nil {
					t.Fatalf("%s: %v", b.body, err)
				}
				got = append(got, string(top.Entry))
			}
			if diff := cmp.Diff(test.want, got); diff != "" {
				t.Errorf("entries (-want +got):\n%s", diff)
			}
			if len(bs) == 1 && test.want[0] == test.entries && string(bs[0].body) != in {
				t.Errorf("an unchanged Bundle was re-encoded: %s", bs[0].body)
			}
		})
	}
}

func TestContentID(t *testing.T) {
	a := contentID([]byte(`{"resourceType":"Patient","active":true}`))
	b := contentID([]byte(`{ "resourceType": "Patient", "active": true }`))
	c := contentID([]byte(`{"resourceType":"Patient","active":false}`))
	if a != b || a == c || !validID.MatchString(a) {
		t.Errorf("contentID: %q %q %q: want the same id for the same content, another for another, and a valid FHIR id", a, b, c)
	}
}

func TestParseImportToken(t *testing.T) {
	t.Setenv("FHIRGATE_TOKEN", "from-env")
	c, err := parseImport([]string{"--base", "http://x/fhir/", "f.ndjson"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Token != "from-env" || c.Base != "http://x/fhir" {
		t.Errorf("token %q base %q", c.Token, c.Base)
	}
	tf := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tf, []byte("from-file\n"), 0o600)
	if c, err = parseImport([]string{"--base", "http://x/fhir", "--token-file", tf, "f.ndjson"}); err != nil || c.Token != "from-file" {
		t.Errorf("--token-file: %q, %v", c.Token, err)
	}
	if _, err := parseImport([]string{"--base", "http://x/fhir", "--token", "a", "--token-file", tf, "f.ndjson"}); err == nil {
		t.Error("--token and --token-file together were accepted")
	}
	if c, _ = parseImport([]string{"--base", "http://x/fhir", "--batch", "5000", "f.ndjson"}); c.Batch != maxBundleEntries {
		t.Errorf("--batch 5000 = %d, want it capped at %d", c.Batch, maxBundleEntries)
	}
	// -h never prints the token.
	var help bytes.Buffer
	captureUsage(t, &help)
	if strings.Contains(help.String(), "from-env") {
		t.Errorf("the usage prints the token:\n%s", help.String())
	}
}

// captureUsage runs parseImport -h with stderr captured in w.
func captureUsage(t *testing.T, w *bytes.Buffer) {
	t.Helper()
	r, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stderr
	os.Stderr = pw
	parseImport([]string{"-h"})
	os.Stderr = old
	pw.Close()
	io.Copy(w, r)
	r.Close()
	if !strings.Contains(w.String(), "--token") && !strings.Contains(w.String(), "-token") {
		t.Errorf("no usage printed: %q", w.String())
	}
}
