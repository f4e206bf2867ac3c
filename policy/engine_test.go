package policy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/google/go-cmp/cmp"
)

var testNow = time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)

func newEngine(t *testing.T, cfg Config) *Engine {
	t.Helper()
	e, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return e
}

func decide(t *testing.T, e *Engine, in Input) Decision {
	t.Helper()
	d, err := e.Decide(t.Context(), in)
	if err != nil {
		t.Fatalf("Decide: %v", err)
	}
	return d
}

// putConsent normalizes a Consent document and puts (or removes) it.
func putConsent(t *testing.T, e *Engine, id string, doc map[string]any) {
	t.Helper()
	c, applies, err := NormalizeConsent(id, doc)
	if err != nil {
		t.Fatal(err)
	}
	if !applies {
		err = e.RemoveConsent(t.Context(), c.ID)
	} else {
		err = e.PutConsent(t.Context(), c)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// orgConsent is an active Consent of patient that permits actor to access.
func orgConsent(patient, actor string) map[string]any {
	doc := consentDoc(map[string]any{
		"actor":  []any{actorOf(actor)},
		"action": []any{map[string]any{"coding": []any{map[string]any{"system": consentActionSystem, "code": "access"}}}},
	})
	doc["patient"] = ref(patient)
	return doc
}

func denyConsent(patient, actor string) map[string]any {
	doc := consentDoc(map[string]any{"type": "deny", "actor": []any{actorOf(actor)}})
	doc["patient"] = ref(patient)
	return doc
}

func practitioner(scopes string) Subject {
	return Subject{Sub: "p1", ClientID: "app", Kind: "practitioner", FHIRUser: "Practitioner/p1",
		Scopes: ParseScopes(scopes), Organizations: []string{"Organization/o1"}, Roles: []string{"PractitionerRole/r1"}}
}

func read(sub Subject, typ, id string, compartments ...string) Input {
	return Input{Subject: sub, Action: "read", Resource: Resource{Type: typ, ID: id, Compartments: compartments, CompartmentType: true}, Time: testNow}
}

// TestEngineDecisions: the Go engine reaches the decisions of the Rego
// tests (rego/authz_test.rego) for the same inputs and consents.
func TestEngineDecisions(t *testing.T) {
	e := newEngine(t, Config{})
	putConsent(t, e, "Consent/c1", orgConsent("Patient/a", "Organization/o1"))
	putConsent(t, e, "Consent/c2", denyConsent("Patient/b", "Practitioner/p1"))
	putConsent(t, e, "Consent/c3", orgConsent("Patient/b", "Organization/o1"))

	doc := practitioner("user/*.cruds")
	etreat := doc
	etreat.PurposeOfUse = "ETREAT"
	sys := Subject{Sub: "svc", ClientID: "svc", Kind: "system", Scopes: ParseScopes("system/*.read")}
	pat := Subject{Sub: "a", Kind: "patient", FHIRUser: "Patient/a", Scopes: ParseScopes("patient/*.rs")}
	typeLevel := func(sub Subject, typ string, ct bool) Input {
		return Input{Subject: sub, Action: "search-type", Resource: Resource{Type: typ, CompartmentType: ct}, Time: testNow}
	}
	erase := Input{Subject: Subject{Kind: "system", Scopes: ParseScopes("system/Patient.d")}, Action: "operation", Operation: "erase",
		Resource: Resource{Type: "Patient", ID: "a", Compartments: []string{"Patient/a"}, CompartmentType: true}, Time: testNow}

	for _, test := range []struct {
		name string
		in   Input
		want Decision
	}{
		{"system reads", read(sys, "Observation", "o1", "Patient/a"),
			Decision{Allow: true, Reasons: []string{"scope system/*.read covers read of Observation"}}},
		{"system type level", typeLevel(sys, "Observation", true),
			Decision{Allow: true, Unconditional: true, Reasons: []string{"scope system/*.read covers search-type of Observation"}}},
		{"system erase", erase,
			Decision{Allow: true, Reasons: []string{"scope system/Patient.d allows operation erase"}}},
		{"consent permits", read(doc, "Observation", "o1", "Patient/a"),
			Decision{Allow: true, Reasons: []string{"consent Consent/c1 permits", "scope user/*.cruds covers read of Observation"}}},
		{"consent denies", read(doc, "Observation", "o2", "Patient/b"),
			Decision{Reasons: []string{"consent Consent/c2 denies"}}},
		{"no consent", read(doc, "Observation", "o3", "Patient/c"),
			Decision{Reasons: []string{"no active consent of Patient/c permits this"}}},
		{"multi-compartment", read(doc, "Appointment", "ap1", "Patient/a", "Patient/c"),
			Decision{Reasons: []string{"no active consent of Patient/c permits this"}}},
		{"break-glass", read(etreat, "Observation", "o2", "Patient/b"),
			Decision{Allow: true, BreakGlass: true, Reasons: []string{"break-glass: purposeOfUse ETREAT", "consent Consent/c3 permits", "scope user/*.cruds covers read of Observation"}}},
		{"practitioner type level", typeLevel(doc, "Observation", true),
			Decision{Allow: true, Reasons: []string{"scope user/*.cruds covers search-type of Observation"}}},
		{"non-compartment type", typeLevel(doc, "Practitioner", false),
			Decision{Allow: true, Unconditional: true, Reasons: []string{"scope user/*.cruds covers search-type of Practitioner"}}},
		{"patient own data", read(pat, "Observation", "o1", "Patient/a"),
			Decision{Allow: true, Reasons: []string{"scope patient/*.rs covers read of Observation"}}},
		{"patient other data", read(pat, "Observation", "o2", "Patient/b"),
			Decision{Reasons: []string{"Observation/o2 is not in the compartment of Patient/a"}}},
		{"other kind", read(Subject{Kind: "other", FHIRUser: "RelatedPerson/r1"}, "Observation", "o1", "Patient/a"),
			Decision{Reasons: []string{"no scope covers read of Observation", `subjects of kind "other" are not allowed`}}},
	} {
		t.Run(test.name, func(t *testing.T) {
			got := decide(t, e, test.in)
			if diff := cmp.Diff(test.want, got); diff != "" {
				t.Errorf("Decide mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPutRemoveConsent(t *testing.T) {
	e := newEngine(t, Config{})
	in := read(practitioner("user/*.rs"), "Observation", "o1", "Patient/a")
	if decide(t, e, in).Allow {
		t.Fatalf("allowed without consent")
	}

	putConsent(t, e, "Consent/c1", orgConsent("Patient/a", "Organization/o1"))
	if !decide(t, e, in).Allow {
		t.Fatalf("not allowed after PutConsent")
	}
	if got := e.Consents(); got != 1 {
		t.Errorf("Consents() = %d, want 1", got)
	}

	// Replacing it with an inactive version removes it.
	inactive := orgConsent("Patient/a", "Organization/o1")
	inactive["status"] = "inactive"
	putConsent(t, e, "Consent/c1", inactive)
	if decide(t, e, in).Allow {
		t.Fatalf("allowed after the consent became inactive")
	}
	if got := e.Consents(); got != 0 {
		t.Errorf("Consents() = %d, want 0", got)
	}

	// A second consent of the same patient, then a replacement that moves
	// it to another patient.
	putConsent(t, e, "Consent/c1", orgConsent("Patient/a", "Organization/o1"))
	putConsent(t, e, "Consent/c2", orgConsent("Patient/a", "Practitioner/p1"))
	putConsent(t, e, "Consent/c1", orgConsent("Patient/b", "Organization/o1"))
	if got, want := decide(t, e, in).Reasons, []string{"consent Consent/c2 permits", "scope user/*.rs covers read of Observation"}; !slices.Equal(got, want) {
		t.Errorf("reasons = %q, want %q", got, want)
	}
	if got, want := decide(t, e, read(practitioner("user/*.rs"), "Observation", "o1", "Patient/b")).Reasons,
		[]string{"consent Consent/c1 permits", "scope user/*.rs covers read of Observation"}; !slices.Equal(got, want) {
		t.Errorf("reasons = %q, want %q", got, want)
	}
	if got := e.Consents(); got != 2 {
		t.Errorf("Consents() = %d, want 2", got)
	}

	// Deleting.
	for _, id := range []string{"Consent/c2", "Consent/c2", "Consent/unknown"} {
		if err := e.RemoveConsent(t.Context(), id); err != nil {
			t.Fatalf("RemoveConsent(%s): %v", id, err)
		}
	}
	if decide(t, e, in).Allow {
		t.Fatalf("allowed after RemoveConsent")
	}
	if got := e.Consents(); got != 1 {
		t.Errorf("Consents() = %d, want 1", got)
	}

	if err := e.PutConsent(t.Context(), Consent{ID: "c9", Patient: "Patient/a"}); err == nil {
		t.Errorf("PutConsent of a bare id: no error")
	}
}

// lockedBuffer is a bytes.Buffer for a logger used by several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// writeFile replaces dir/name atomically, as README.md advises, so that a
// watching Engine never reads half of it.
func writeFile(t *testing.T, dir, name, content string) {
	t.Helper()
	tmp := filepath.Join(dir, ".tmp-"+name)
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

const allowAll = `package fhirgate.authz

decision := {"allow": true, "reasons": ["allow all"]}
`

// denyAll differs from allowAll in size too: a change within the
// file system's timestamp granularity is seen by size.
const denyAll = `package fhirgate.authz

decision := {"allow": false, "reasons": ["deny all", "deny all again"]}
`

// eventually polls f until it is true or the deadline passes.
func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWatchReloads(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "authz.rego", allowAll)
	var reloads, failures atomic.Int32
	var logs lockedBuffer
	e := newEngine(t, Config{
		Dir:    dir,
		Poll:   10 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		OnReload: func(err error) {
			reloads.Add(1)
			if err != nil {
				failures.Add(1)
			}
		},
	})
	putConsent(t, e, "Consent/c1", orgConsent("Patient/a", "Organization/o1"))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		e.Watch(ctx)
		close(done)
	}()
	defer func() {
		cancel()
		<-done
	}()

	in := read(practitioner("user/*.rs"), "Observation", "o1", "Patient/a")
	firstReason := func() string {
		d, err := e.Decide(t.Context(), in)
		if err != nil {
			t.Fatalf("Decide: %v", err)
		}
		return strings.Join(d.Reasons, ",")
	}
	if got := firstReason(); got != "allow all" {
		t.Fatalf("reasons = %q, want allow all", got)
	}

	// A changed file.
	writeFile(t, dir, "authz.rego", denyAll)
	eventually(t, "the changed policy", func() bool { return firstReason() == "deny all,deny all again" })

	// A broken file: the previous policy keeps deciding.
	before := failures.Load()
	writeFile(t, dir, "broken.rego", "package fhirgate.authz\n\nx := {\n")
	eventually(t, "a failed reload", func() bool { return failures.Load() > before })
	if got := firstReason(); got != "deny all,deny all again" {
		t.Errorf("after a broken reload, reasons = %q, want deny all", got)
	}
	if !strings.Contains(logs.String(), "broken.rego:") {
		t.Errorf("log does not name the broken file and line:\n%s", logs.String())
	}

	// A removed file: the policy compiles again. The consents survived
	// every reload.
	if err := os.Remove(filepath.Join(dir, "broken.rego")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "authz.rego", `package fhirgate.authz

decision := {"allow": true, "reasons": [id | some id, _ in data.fhirgate.consents["Patient/a"]]}
`)
	eventually(t, "the fixed policy", func() bool { return firstReason() == "Consent/c1" })
	if reloads.Load() < 3 {
		t.Errorf("OnReload called %d times, want at least 3", reloads.Load())
	}
}

func TestReloadBrokenPolicy(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "authz.rego", allowAll)
	var logs lockedBuffer
	var hookErr error
	e := newEngine(t, Config{Dir: dir, Logger: slog.New(slog.NewTextHandler(&logs, nil)), OnReload: func(err error) { hookErr = err }})
	in := read(practitioner("user/*.rs"), "Observation", "o1", "Patient/a")
	in.Subject.Sub = "secret-subject"

	for name, src := range map[string]string{
		"syntax":      "package fhirgate.authz\n\ndecision := {\n",
		"compile":     "package fhirgate.authz\n\ndecision := {\"allow\": undefined_thing}\n",
		"no decision": "package fhirgate.authz\n\nallow := true\n",
	} {
		t.Run(name, func(t *testing.T) {
			writeFile(t, dir, "authz.rego", src)
			err := e.Reload(t.Context())
			if err == nil {
				t.Fatalf("Reload: no error")
			}
			if hookErr != err {
				t.Errorf("OnReload got %v, want %v", hookErr, err)
			}
			if name != "no decision" && !strings.Contains(err.Error(), "authz.rego:") {
				t.Errorf("error %q does not name the file and line", err)
			}
			if d := decide(t, e, in); !d.Allow || d.Reasons[0] != "allow all" {
				t.Errorf("after a failed reload, Decide = %+v; want the previous policy", d)
			}
			if !strings.Contains(logs.String(), "policy reload failed") {
				t.Errorf("failure not logged:\n%s", logs.String())
			}
			if strings.Contains(logs.String(), "secret-subject") {
				t.Errorf("log holds request data:\n%s", logs.String())
			}
		})
	}
}

func TestNewErrors(t *testing.T) {
	for name, files := range map[string]map[string]string{
		"syntax error":     {"a.rego": "package fhirgate.authz\n\ndecision := {\n"},
		"no decision":      {"a.rego": "package fhirgate.other\n\ndecision := true\n"},
		"consents in data": {"a.rego": allowAll, "data.json": `{"fhirgate": {"consents": {}}}`},
		"bad data":         {"a.rego": allowAll, "data.json": `{"fhirgate": `},
		"empty":            {},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			for f, src := range files {
				writeFile(t, dir, f, src)
			}
			if _, err := New(t.Context(), Config{Dir: dir}); err == nil {
				t.Errorf("New: no error")
			}
		})
	}
	if _, err := New(t.Context(), Config{Dir: filepath.Join(t.TempDir(), "missing")}); err == nil {
		t.Errorf("New of a missing dir: no error")
	}
}

// TestDirData: data files of the policy directory are policy data, next to
// the consents, and reloads replace them.
func TestDirData(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "authz.rego", `package fhirgate.authz

decision := {"allow": input.subject.fhirUser in data.fhirgate.allowed, "reasons": [data.note]}
`)
	writeFile(t, dir, "data.json", `{"fhirgate": {"allowed": ["Practitioner/p1"]}, "note": "v1"}`)
	writeFile(t, dir, "authz_test.rego", "this file is not loaded by the engine")
	e := newEngine(t, Config{Dir: dir})
	putConsent(t, e, "Consent/c1", orgConsent("Patient/a", "Organization/o1"))
	in := read(practitioner("user/*.rs"), "Observation", "o1", "Patient/a")
	if d := decide(t, e, in); !d.Allow || d.Reasons[0] != "v1" {
		t.Fatalf("Decide = %+v", d)
	}
	writeFile(t, dir, "data.json", `{"fhirgate": {"allowed": []}}`)
	writeFile(t, dir, "more.yaml", "note: v2\n")
	if err := e.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	if d := decide(t, e, in); d.Allow || d.Reasons[0] != "v2" {
		t.Fatalf("after reload, Decide = %+v", d)
	}
	if e.Consents() != 1 {
		t.Errorf("consents lost in reload")
	}
}

func TestDecisionShape(t *testing.T) {
	for _, test := range []struct {
		rule    string
		want    Decision
		wantErr bool
	}{
		{`decision := {"allow": true}`, Decision{Allow: true, Reasons: []string{}}, false},
		{`decision := {"allow": false, "reasons": {"b", "a"}}`, Decision{Reasons: []string{"a", "b"}}, false},
		{`decision := {"allow": true, "unconditional": true, "break_glass": true, "reasons": ["x"]}`, Decision{Allow: true, Unconditional: true, BreakGlass: true, Reasons: []string{"x"}}, false},
		{`decision := true`, Decision{}, true},
		{`decision := {"allow": "yes"}`, Decision{}, true},
		{`decision := {"reasons": []}`, Decision{}, true},
		{`decision := {"allow": true, "unconditional": 1}`, Decision{}, true},
		{`decision := {"allow": true, "break_glass": null}`, Decision{}, true},
		{`decision := {"allow": true, "reasons": "x"}`, Decision{}, true},
		{`decision := {"allow": true, "reasons": [1]}`, Decision{}, true},
		{`decision := {"allow": true} if input.action == "never"`, Decision{}, true},
		{`decision := {"allow": true} if 1 / 0 == 1`, Decision{}, true},
	} {
		t.Run(test.rule, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, dir, "a.rego", "package fhirgate.authz\n\n"+test.rule+"\n")
			e := newEngine(t, Config{Dir: dir})
			got, err := e.Decide(t.Context(), read(practitioner(""), "Patient", "a", "Patient/a"))
			if (err != nil) != test.wantErr {
				t.Fatalf("Decide error = %v, want error %v", err, test.wantErr)
			}
			if diff := cmp.Diff(test.want, got); diff != "" {
				t.Errorf("Decide mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecideCancelled(t *testing.T) {
	e := newEngine(t, Config{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := e.Decide(ctx, read(practitioner("user/*.rs"), "Patient", "a", "Patient/a")); !errors.Is(err, context.Canceled) {
		t.Errorf("Decide with a cancelled context = %v, want context.Canceled", err)
	}
}

// TestConcurrent decides while consents change and the policy reloads
// (run with -race).
func TestConcurrent(t *testing.T) {
	dir := t.TempDir()
	shipped, err := os.ReadFile("rego/authz.rego")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "authz.rego", string(shipped))
	e := newEngine(t, Config{Dir: dir})
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() {
			for i := range 100 {
				in := read(practitioner("user/*.rs"), "Observation", "o1", fmt.Sprintf("Patient/%d", i%10))
				if _, err := e.Decide(t.Context(), in); err != nil {
					t.Errorf("worker %d: Decide: %v", w, err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 100 {
			id := fmt.Sprintf("Consent/c%d", i%20)
			if i%3 == 2 {
				if err := e.RemoveConsent(t.Context(), id); err != nil {
					t.Errorf("RemoveConsent: %v", err)
				}
				continue
			}
			c, _, _ := NormalizeConsent(id, orgConsent(fmt.Sprintf("Patient/%d", i%10), "Organization/o1"))
			if err := e.PutConsent(t.Context(), c); err != nil {
				t.Errorf("PutConsent: %v", err)
			}
		}
	})
	wg.Go(func() {
		for range 3 {
			if err := e.Reload(t.Context()); err != nil {
				t.Errorf("Reload: %v", err)
			}
		}
	})
	wg.Wait()
}

func TestTestShippedPolicy(t *testing.T) {
	var out bytes.Buffer
	failed, err := Test(t.Context(), "", &out, true)
	if err != nil {
		t.Fatalf("Test: %v", err)
	}
	if failed != 0 {
		t.Errorf("Test: %d failed:\n%s", failed, out.String())
	}
	if !strings.Contains(out.String(), "test_consent_permit_by_organization: PASS") || !strings.Contains(out.String(), "PASS: ") {
		t.Errorf("verbose report does not list the tests:\n%s", out.String())
	}
}

func TestTestDir(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "authz.rego", allowAll)
	writeFile(t, dir, "authz_test.rego", `package fhirgate.authz_test

import data.fhirgate.authz

test_allows if authz.decision.allow

test_denies if not authz.decision.allow

test_data if data.limits.max == 3
`)
	writeFile(t, dir, "data.json", `{"limits": {"max": 3}}`)
	var out bytes.Buffer
	failed, err := Test(t.Context(), dir, &out, false)
	if err != nil {
		t.Fatalf("Test: %v", err)
	}
	if failed != 1 {
		t.Errorf("Test: %d failed, want 1:\n%s", failed, out.String())
	}
	if !strings.Contains(out.String(), "test_denies: FAIL") || strings.Contains(out.String(), "test_allows: PASS") {
		t.Errorf("report (not verbose) should list only the failure:\n%s", out.String())
	}

	writeFile(t, dir, "authz.rego", "package fhirgate.authz\n\ndecision := {\n")
	if _, err := Test(t.Context(), dir, &out, false); err == nil {
		t.Errorf("Test of a broken policy: no error")
	}
}

// benchConsents loads patients × 2 consents: a permit for an organization
// (reads, in a period, with a nested deny of MedicationRequests), and a
// deny of one practitioner.
func benchConsents(tb testing.TB, e *Engine, patients int) {
	tb.Helper()
	start, end := mustNS("2020"), mustNS("2030")
	for i := range patients {
		p := fmt.Sprintf("Patient/p%d", i)
		org := fmt.Sprintf("Organization/org%d", i%50)
		permit := Consent{ID: fmt.Sprintf("Consent/c%d-1", i), Patient: p, Rules: []Rule{
			{Type: "permit", Depth: 0, NamesActor: true, Conds: []Cond{
				{Kind: "actor", Values: []string{org}},
				{Kind: "action", Values: []string{"access"}},
				{Kind: "period", StartNS: &start, EndNS: &end},
			}},
			{Type: "deny", Depth: 1, NamesActor: true, Conds: []Cond{
				{Kind: "actor", Values: []string{org}},
				{Kind: "action", Values: []string{"access"}},
				{Kind: "period", StartNS: &start, EndNS: &end},
				{Kind: "class", Values: []string{"MedicationRequest"}},
			}},
		}}
		deny := Consent{ID: fmt.Sprintf("Consent/c%d-2", i), Patient: p, Rules: []Rule{
			{Type: "deny", Depth: 0, NamesActor: true, Conds: []Cond{
				{Kind: "actor", Values: []string{fmt.Sprintf("Practitioner/bad%d", i%100)}},
			}},
		}}
		for _, c := range []Consent{permit, deny} {
			if err := e.PutConsent(context.Background(), c); err != nil {
				tb.Fatal(err)
			}
		}
	}
}

func mustNS(s string) int64 {
	from, _, ok := fhir.ParseDate(s)
	if !ok {
		panic("bad date " + s)
	}
	return from.UnixNano()
}

// reportLatency reports the p50 and p99 of ds.
func reportLatency(b *testing.B, ds []time.Duration) {
	slices.Sort(ds)
	if len(ds) == 0 {
		return
	}
	b.ReportMetric(float64(ds[len(ds)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(ds[len(ds)*99/100].Nanoseconds())/1e3, "p99-µs")
}

// BenchmarkDecide: practitioner reads that go through the consent rules,
// with 100,000 consents (50,000 patients × 2) loaded.
func BenchmarkDecide(b *testing.B) {
	ctx := context.Background()
	e, err := New(ctx, Config{})
	if err != nil {
		b.Fatal(err)
	}
	const patients = 50_000
	benchConsents(b, e, patients)
	if got := e.Consents(); got != 2*patients {
		b.Fatalf("Consents() = %d, want %d", got, 2*patients)
	}
	now := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	inputs := make([]Input, 1024)
	for i := range inputs {
		n := (i * 7919) % patients
		inputs[i] = Input{
			Subject: Subject{Sub: "doc1", Kind: "practitioner", FHIRUser: "Practitioner/doc1",
				Scopes:        ParseScopes("openid fhirUser user/*.rs"),
				Organizations: []string{fmt.Sprintf("Organization/org%d", n%50)}, Roles: []string{"PractitionerRole/r1"}},
			Action:   "read",
			Resource: Resource{Type: "Observation", ID: fmt.Sprintf("o%d", n), Compartments: []string{fmt.Sprintf("Patient/p%d", n)}, CompartmentType: true},
			Time:     now,
		}
	}
	d, err := e.Decide(ctx, inputs[0])
	if err != nil || !d.Allow {
		b.Fatalf("Decide = %+v, %v; want allowed", d, err)
	}
	ds := make([]time.Duration, 0, b.N)
	i := 0
	for b.Loop() {
		start := time.Now()
		d, err := e.Decide(ctx, inputs[i%len(inputs)])
		ds = append(ds, time.Since(start))
		if err != nil || !d.Allow {
			b.Fatalf("Decide = %+v, %v", d, err)
		}
		i++
	}
	reportLatency(b, ds)
}

// BenchmarkDecideSystem: a system-scope type-level check.
func BenchmarkDecideSystem(b *testing.B) {
	ctx := context.Background()
	e, err := New(ctx, Config{})
	if err != nil {
		b.Fatal(err)
	}
	in := Input{
		Subject:  Subject{Sub: "svc", ClientID: "svc", Kind: "system", Scopes: ParseScopes("system/*.rs system/Patient.cruds")},
		Action:   "search-type",
		Resource: Resource{Type: "Observation", Compartments: []string{}, CompartmentType: true},
		Time:     time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC),
	}
	ds := make([]time.Duration, 0, b.N)
	for b.Loop() {
		start := time.Now()
		d, err := e.Decide(ctx, in)
		ds = append(ds, time.Since(start))
		if err != nil || !d.Allow || !d.Unconditional {
			b.Fatalf("Decide = %+v, %v", d, err)
		}
	}
	reportLatency(b, ds)
}

// BenchmarkDecideFloor: the Engine's own cost, with a policy whose decision
// is a constant.
func BenchmarkDecideFloor(b *testing.B) {
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "authz.rego"), []byte(allowAll), 0o644); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	e, err := New(ctx, Config{Dir: dir})
	if err != nil {
		b.Fatal(err)
	}
	in := read(practitioner("user/*.rs"), "Observation", "o1", "Patient/a")
	ds := make([]time.Duration, 0, b.N)
	for b.Loop() {
		start := time.Now()
		_, err := e.Decide(ctx, in)
		ds = append(ds, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
	}
	reportLatency(b, ds)
}
