package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/gateway"
	"github.com/fhirgate/fhirgate/internal/auth"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/google/go-cmp/cmp"
)

// exportManifest is the complete-status body of an $export job.
type exportManifest struct {
	TransactionTime     string `json:"transactionTime"`
	Request             string `json:"request"`
	RequiresAccessToken bool   `json:"requiresAccessToken"`
	Output              []struct {
		Type  string `json:"type"`
		URL   string `json:"url"`
		Count int    `json:"count"`
	} `json:"output"`
	Error []struct {
		Type  string `json:"type"`
		URL   string `json:"url"`
		Count int    `json:"count"`
	} `json:"error"`
}

// exportServer is an authServer whose $export output goes to dir.
type exportServer struct {
	*authServer
	dir string
}

func newExportServer(t *testing.T, st store.Store, opts ...func(*gateway.Config)) *exportServer {
	t.Helper()
	key, err := auth.GenerateDevKey()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	opts = append([]func(*gateway.Config){func(c *gateway.Config) { c.ExportDir = dir }}, opts...)
	return &exportServer{authServer: newAuthServerKey(t, st, key, opts...), dir: dir}
}

// kickoff starts an export at path (relative to the base) and returns
// its status URL.
func (a *exportServer) kickoff(t *testing.T, token, path string) string {
	t.Helper()
	r := a.as(t, token, http.MethodGet, path, "", "Prefer", "respond-async", "Accept", "application/fhir+json")
	r.want(t, http.StatusAccepted)
	loc := r.header.Get("Content-Location")
	if !strings.HasPrefix(loc, a.base+"/$export-status/") {
		t.Fatalf("Content-Location = %q, want a status URL under %s", loc, a.base)
	}
	return loc
}

// await polls status until the job completes, and returns its manifest.
func (a *exportServer) await(t *testing.T, token, status string) exportManifest {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := a.as(t, token, http.MethodGet, status, "")
		switch r.status {
		case http.StatusAccepted:
			if time.Now().After(deadline) {
				t.Fatalf("export still running after 30s (X-Progress %q)", r.header.Get("X-Progress"))
			}
			time.Sleep(10 * time.Millisecond)
			continue
		case http.StatusOK:
		default:
			t.Fatalf("export status: %s", r)
		}
		if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("manifest Content-Type = %q, want application/json", ct)
		}
		var m exportManifest
		if err := json.Unmarshal(r.body, &m); err != nil {
			t.Fatalf("manifest is not JSON: %v: %s", err, r.body)
		}
		if m.Output == nil || m.Error == nil {
			t.Errorf("manifest output and error must be arrays: %s", r.body)
		}
		return m
	}
}

// export runs an export to completion and returns its manifest and the
// resources it exported: Type/id → version.
func (a *exportServer) export(t *testing.T, token, path string) (exportManifest, map[string]string) {
	t.Helper()
	m := a.await(t, token, a.kickoff(t, token, path))
	return m, a.downloadAll(t, token, m)
}

// downloadAll downloads every output file of m, checks each line is one
// resource of the file's type, and returns Type/id → version.
func (a *exportServer) downloadAll(t *testing.T, token string, m exportManifest) map[string]string {
	t.Helper()
	got := map[string]string{}
	for _, f := range m.Output {
		lines := a.download(t, token, f.URL)
		if len(lines) != f.Count {
			t.Errorf("%s: %d lines, manifest count %d", f.URL, len(lines), f.Count)
		}
		for _, l := range lines {
			var res struct {
				ResourceType string
				ID           string
				Meta         struct{ VersionID string }
			}
			if err := json.Unmarshal(l, &res); err != nil {
				t.Fatalf("%s: a line is not JSON: %v", f.URL, err)
			}
			if res.ResourceType != f.Type {
				t.Errorf("%s: a %s in the file of type %s", f.URL, res.ResourceType, f.Type)
			}
			ref := res.ResourceType + "/" + res.ID
			if _, dup := got[ref]; dup {
				t.Errorf("%s exported twice", ref)
			}
			got[ref] = res.Meta.VersionID
		}
	}
	return got
}

// download GETs an output file and returns its lines.
func (a *exportServer) download(t *testing.T, token, u string) [][]byte {
	t.Helper()
	r := a.as(t, token, http.MethodGet, u, "", "Accept", "application/fhir+ndjson").want(t, http.StatusOK)
	if ct := r.header.Get("Content-Type"); ct != "application/fhir+ndjson" {
		t.Errorf("file Content-Type = %q, want application/fhir+ndjson", ct)
	}
	if len(r.body) > 0 && r.body[len(r.body)-1] != '\n' {
		t.Errorf("%s does not end in a newline", u)
	}
	var out [][]byte
	for _, l := range bytes.Split(bytes.TrimSuffix(r.body, []byte("\n")), []byte("\n")) {
		if len(l) > 0 {
			out = append(out, l)
		}
	}
	return out
}

// jobDirs lists the job directories under dir.
func jobDirs(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// waitNoJobDirs waits until dir holds no job directory.
func waitNoJobDirs(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(jobDirs(t, dir)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("export files left in %s: %v", dir, jobDirs(t, dir))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

const exportFamily = "Quillfeatherexport"

// changed returns an Observation made by obsFor with another value.
func changed(t *testing.T, body []byte) string {
	t.Helper()
	if !bytes.Contains(body, []byte(`"value":72`)) {
		t.Fatalf("not an Observation of obsFor: %s", body)
	}
	return string(bytes.Replace(body, []byte(`"value":72`), []byte(`"value":73`), 1))
}

// TestExport: a system export holds exactly the live resources, at their
// current versions, one compact JSON resource per line; it leaves out
// AuditEvents unless asked for; its files are sealed on disk; and every
// resource it exported is in an AuditEvent of the export.
func TestExport(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		a := newExportServer(t, st)
		sys := a.tok(t, "", "system/*.*", "")
		want := map[string]string{}
		for _, p := range []string{"E1", "E2"} {
			a.as(t, sys, http.MethodPut, "/Patient/"+p, `{"resourceType":"Patient","id":"`+p+`","name":[{"family":"`+exportFamily+`"}]}`).want(t, http.StatusCreated)
			want["Patient/"+p] = "1"
			for range 3 {
				want["Observation/"+a.createAs(t, sys, "Observation", obsFor("Patient/"+p))] = "1"
			}
		}
		// Updated: its current version is exported.
		upd := "Observation/" + a.createAs(t, sys, "Observation", obsFor("Patient/E1"))
		cur := a.as(t, sys, http.MethodGet, "/"+upd, "").want(t, http.StatusOK)
		a.as(t, sys, http.MethodPut, "/"+upd, changed(t, cur.body)).want(t, http.StatusOK)
		want[upd] = "2"
		// Deleted: not exported.
		del := "Observation/" + a.createAs(t, sys, "Observation", obsFor("Patient/E2"))
		a.as(t, sys, http.MethodDelete, "/"+del, "").want(t, http.StatusNoContent)
		// Written over several lines: exported on one.
		pretty := "{\n  \"resourceType\": \"Practitioner\",\n  \"name\": [\n    {\"family\": \"Doctor\"}\n  ]\n}"
		want["Practitioner/"+a.createAs(t, sys, "Practitioner", pretty)] = "1"

		m, got := a.export(t, sys, "/$export")
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("exported resources (-want +got):\n%s", diff)
		}
		if m.Request != a.base+"/$export" || !m.RequiresAccessToken || len(m.Error) != 0 {
			t.Errorf("manifest request %q, requiresAccessToken %v, error %v", m.Request, m.RequiresAccessToken, m.Error)
		}
		if tt, err := time.Parse(time.RFC3339, m.TransactionTime); err != nil || time.Since(tt) > time.Minute {
			t.Errorf("transactionTime = %q", m.TransactionTime)
		}
		for _, f := range m.Output {
			if !strings.HasPrefix(f.URL, a.base+"/$export-file/") {
				t.Errorf("output url %q is not under the base", f.URL)
			}
		}

		// The files are sealed on disk: no name, no resource id in clear.
		files := 0
		filepath.WalkDir(a.dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			files++
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range []string{exportFamily, "heart rate", `"resourceType"`, strings.TrimPrefix(upd, "Observation/")} {
				if bytes.Contains(b, []byte(s)) {
					t.Errorf("%s holds %q in plaintext", filepath.Base(path), s)
				}
			}
			return nil
		})
		if files != len(m.Output) {
			t.Errorf("%d files on disk, %d in the manifest", files, len(m.Output))
		}

		// Every exported version is audited, by the system client, in an
		// AuditEvent of the export; a patient's in their compartment's.
		events := a.auditEvents(t, sys, "subtype="+url.QueryEscape("urn:fhirgate:operation|export"))
		audited := map[string]bool{}
		for _, ev := range events {
			if ev.Action != "E" || ev.who() != "ehr-backend" || ev.Outcome != "0" {
				t.Errorf("export AuditEvent: action %q, who %q, outcome %q", ev.Action, ev.who(), ev.Outcome)
			}
			ents := ev.entities()
			for _, e := range ents {
				audited[e] = true
				if strings.HasPrefix(e, "Observation/") && !slices.Contains(ents, "Patient/E1") && !slices.Contains(ents, "Patient/E2") {
					t.Errorf("an Observation is audited outside its patient's AuditEvent: %v", ents)
				}
			}
		}
		for ref, v := range got {
			if !audited[ref+"/_history/"+v] {
				t.Errorf("%s/_history/%s was exported but is in no AuditEvent", ref, v)
			}
		}

		// AuditEvents are exported when _type asks for them.
		_, got = a.export(t, sys, "/$export?_type=AuditEvent")
		if len(got) == 0 {
			t.Errorf("_type=AuditEvent exported nothing")
		}
		for ref := range got {
			if !strings.HasPrefix(ref, "AuditEvent/") {
				t.Errorf("_type=AuditEvent exported %s", ref)
			}
		}
	})
}

// TestExportParameters: _type, _since and _typeFilter select what is
// exported, by GET or by POST of a Parameters resource.
func TestExportParameters(t *testing.T) {
	a := newExportServer(t, boltStore(t))
	sys := a.tok(t, "", "system/*.*", "")
	for _, p := range []string{"A", "B"} {
		a.as(t, sys, http.MethodPut, "/Patient/"+p, matrixPatient(p)).want(t, http.StatusCreated)
	}
	obsA := "Observation/" + a.createAs(t, sys, "Observation", obsFor("Patient/A"))
	obsB := "Observation/" + a.createAs(t, sys, "Observation", obsFor("Patient/B"))
	prac := "Practitioner/" + a.createAs(t, sys, "Practitioner", practitionerBody)
	time.Sleep(5 * time.Millisecond)
	mid := time.Now().UTC()
	time.Sleep(5 * time.Millisecond)
	obsA2 := "Observation/" + a.createAs(t, sys, "Observation", obsFor("Patient/A"))
	cur := a.as(t, sys, http.MethodGet, "/"+obsB, "").want(t, http.StatusOK)
	a.as(t, sys, http.MethodPut, "/"+obsB, changed(t, cur.body)).want(t, http.StatusOK)

	since := url.QueryEscape(mid.Format("2006-01-02T15:04:05.000Z07:00"))
	tests := []struct {
		name, path string
		want       map[string]string
	}{
		{"type", "/$export?_type=Observation,Practitioner", map[string]string{obsA: "1", obsB: "2", obsA2: "1", prac: "1"}},
		{"type repeated", "/$export?_type=Practitioner&_type=Patient", map[string]string{"Patient/A": "1", "Patient/B": "1", prac: "1"}},
		{"since", "/$export?_since=" + since, map[string]string{obsA2: "1", obsB: "2"}},
		{"since and type", "/$export?_type=Patient&_since=" + since, map[string]string{}},
		{"type filter", "/$export?_type=Observation&_typeFilter=" + url.QueryEscape("Observation?subject=Patient/A"), map[string]string{obsA: "1", obsA2: "1"}},
		{"type filters ORed", "/$export?_type=Observation&_typeFilter=" + url.QueryEscape("Observation?subject=Patient/A,Observation?_id="+strings.TrimPrefix(obsB, "Observation/")),
			map[string]string{obsA: "1", obsA2: "1", obsB: "2"}},
		{"type filter without _type", "/$export?_typeFilter=" + url.QueryEscape("Observation?subject=Patient/B"), map[string]string{"Patient/A": "1", "Patient/B": "1", obsB: "2", prac: "1"}},
		{"output format, + unescaped", "/$export?_type=Practitioner&_outputFormat=application/fhir+ndjson", map[string]string{prac: "1"}},
		{"output format ndjson", "/$export?_type=Practitioner&_outputFormat=ndjson", map[string]string{prac: "1"}},
		{"patient level", "/Patient/$export", map[string]string{"Patient/A": "1", "Patient/B": "1", obsA: "1", obsB: "2", obsA2: "1"}},
		{"patient level type", "/Patient/$export?_type=Observation", map[string]string{obsA: "1", obsB: "2", obsA2: "1"}},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			m, got := a.export(t, sys, test.path)
			if diff := cmp.Diff(test.want, got); diff != "" {
				t.Errorf("exported (-want +got):\n%s", diff)
			}
			if want := a.base + test.path; m.Request != want {
				t.Errorf("request = %q, want %q", m.Request, want)
			}
		})
	}

	t.Run("POST Parameters", func(t *testing.T) {
		body := `{"resourceType":"Parameters","parameter":[
		  {"name":"_type","valueString":"Observation"},
		  {"name":"_since","valueInstant":"` + mid.Format("2006-01-02T15:04:05.000Z07:00") + `"},
		  {"name":"_outputFormat","valueString":"application/fhir+ndjson"}]}`
		r := a.as(t, sys, http.MethodPost, "/$export", body, "Prefer", "respond-async").want(t, http.StatusAccepted)
		m := a.await(t, sys, r.header.Get("Content-Location"))
		got := a.downloadAll(t, sys, m)
		if diff := cmp.Diff(map[string]string{obsA2: "1", obsB: "2"}, got); diff != "" {
			t.Errorf("exported (-want +got):\n%s", diff)
		}
		if m.Request != a.base+"/$export" {
			t.Errorf("request = %q, want the kick-off URL", m.Request)
		}
	})

	t.Run("lenient", func(t *testing.T) {
		r := a.as(t, sys, http.MethodGet, "/$export?_type=Practitioner&_elements=id&foo=bar", "", "Prefer", "respond-async, handling=lenient").want(t, http.StatusAccepted)
		m := a.await(t, sys, r.header.Get("Content-Location"))
		if diff := cmp.Diff(map[string]string{prac: "1"}, a.downloadAll(t, sys, m)); diff != "" {
			t.Errorf("exported (-want +got):\n%s", diff)
		}
	})
}

// TestExportKickoffErrors: a kick-off the server cannot honour is a 400
// OperationOutcome, and starts no job.
func TestExportKickoffErrors(t *testing.T) {
	a := newExportServer(t, boltStore(t))
	sys := a.tok(t, "", "system/*.*", "")
	async := []string{"Prefer", "respond-async"}
	tests := []struct {
		name, method, path, body string
		hdr                      []string
	}{
		{"no Prefer", http.MethodGet, "/$export", "", nil},
		{"Prefer without respond-async", http.MethodGet, "/$export", "", []string{"Prefer", "handling=lenient"}},
		{"output format", http.MethodGet, "/$export?_outputFormat=text/csv", "", async},
		{"output format json", http.MethodGet, "/$export?_outputFormat=application/fhir%2Bjson", "", async},
		{"since", http.MethodGet, "/$export?_since=yesterday", "", async},
		{"two since", http.MethodGet, "/$export?_since=2020-01-01T00:00:00Z&_since=2021-01-01T00:00:00Z", "", async},
		{"unknown type", http.MethodGet, "/$export?_type=Observation,Nonsense", "", async},
		{"type outside the compartment", http.MethodGet, "/Patient/$export?_type=Practitioner", "", async},
		{"filter of an unknown type", http.MethodGet, "/$export?_typeFilter=" + url.QueryEscape("Nonsense?x=1"), "", async},
		{"filter of a type not in _type", http.MethodGet, "/$export?_type=Patient&_typeFilter=" + url.QueryEscape("Observation?subject=Patient/A"), "", async},
		{"filter with an unknown parameter", http.MethodGet, "/$export?_typeFilter=" + url.QueryEscape("Observation?nonsense=1"), "", async},
		{"filter with a result parameter", http.MethodGet, "/$export?_typeFilter=" + url.QueryEscape("Observation?_count=1"), "", async},
		{"filter with an include", http.MethodGet, "/$export?_typeFilter=" + url.QueryEscape("Observation?_include=Observation:subject"), "", async},
		{"filter outside the compartment", http.MethodGet, "/Patient/$export?_typeFilter=" + url.QueryEscape("Practitioner?name=x"), "", async},
		{"unknown parameter", http.MethodGet, "/$export?foo=bar", "", async},
		{"unsupported parameter", http.MethodGet, "/$export?_elements=id", "", async},
		{"patient parameter", http.MethodPost, "/Patient/$export", `{"resourceType":"Parameters","parameter":[{"name":"patient","valueReference":{"reference":"Patient/A"}}]}`, async},
		{"body not Parameters", http.MethodPost, "/$export", `{"resourceType":"Patient"}`, async},
		{"bad type in body", http.MethodPost, "/$export", `{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Nonsense"}]}`, async},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			r := a.as(t, sys, test.method, test.path, test.body, test.hdr...)
			r.wantOutcome(t, http.StatusBadRequest)
			if r.header.Get("Content-Location") != "" {
				t.Errorf("a refused kick-off has a Content-Location")
			}
		})
	}
	if dirs := jobDirs(t, a.dir); len(dirs) != 0 {
		t.Errorf("refused kick-offs left job directories: %v", dirs)
	}
}

// exportTypes are the types the policy comparison looks at.
var exportTypes = []string{"Patient", "Observation", "Appointment", "Consent", "Practitioner", "PractitionerRole"}

// TestExportPolicy: what a subject exports is exactly what its searches
// return, type by type: a patient their own compartment (and resources
// without patient data at system level), a practitioner what consents
// allow, a client without the scope nothing of the type.
func TestExportPolicy(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		a := newExportServer(t, st)
		w := setupMatrix(t, a.authServer)
		subjects := []struct{ name, fhirUser, scope string }{
			{"system-read", "", "system/*.read"},
			{"system-observations", "", "system/Observation.rs"},
			{"patientA", "Patient/A", "patient/*.rs"},
			{"patientB", "Patient/B", "patient/*.read"},
			{"prac-consent", "Practitioner/P1", "user/*.rs"},
			{"prac-none", "Practitioner/P2", "user/*.rs"},
			{"prac-denied", "Practitioner/P4", "user/*.rs"},
			{"prac-no-scope", "Practitioner/P1", "user/Practitioner.read"},
		}
		for _, sub := range subjects {
			tk := a.tok(t, sub.fhirUser, sub.scope, "")
			for _, level := range []string{"/$export", "/Patient/$export"} {
				_, got := a.export(t, tk, level)
				byType := map[string][]string{}
				for ref := range got {
					typ, _, _ := strings.Cut(ref, "/")
					byType[typ] = append(byType[typ], ref)
				}
				for _, typ := range exportTypes {
					var want []string
					if level == "/$export" || typ == "Patient" || typ == "Observation" || typ == "Appointment" || typ == "Consent" {
						r := a.as(t, tk, http.MethodGet, "/"+typ+"?_count=1000", "")
						if r.status == http.StatusOK {
							want = r.bundle(t).refs(t, "match")
						} else if r.status != http.StatusForbidden {
							t.Fatalf("%s search %s: %s", sub.name, typ, r)
						}
					}
					sort.Strings(want)
					sort.Strings(byType[typ])
					if diff := cmp.Diff(want, byType[typ]); diff != "" {
						t.Errorf("%s %s, %s: exported vs searched (-search +export):\n%s", sub.name, level, typ, diff)
					}
				}
				if sub.name == "patientA" && level == "/Patient/$export" {
					for ref := range got {
						if strings.Contains(ref, "/B") || ref == w.ids["obsB"] {
							t.Errorf("patient A exported %s", ref)
						}
					}
					if got[w.ids["obsA"]] == "" || got["Patient/A"] == "" {
						t.Errorf("patient A's export lacks their own records: %v", got)
					}
				}
			}
		}
	})
}

// TestExportOwner: only the subject that kicked a job off sees it; to a
// different user, or the same user through another client, it does not
// exist.
func TestExportOwner(t *testing.T) {
	a := newExportServer(t, boltStore(t))
	sys := a.tok(t, "", "system/*.*", "")
	a.as(t, sys, http.MethodPut, "/Patient/A", matrixPatient("A")).want(t, http.StatusCreated)
	status := a.kickoff(t, sys, "/$export?_type=Patient")
	m := a.await(t, sys, status)
	if len(m.Output) != 1 {
		t.Fatalf("output = %v, want one file", m.Output)
	}
	otherClient, err := a.key.Sign(auth.Claims{Subject: "ehr-backend", Scope: "system/*.*", ClientID: "other-client"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	another, err := a.key.Sign(auth.Claims{Subject: "another-backend", Scope: "system/*.*", ClientID: "test-client"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	others := map[string]string{
		"another subject":        another,
		"patient":                a.tok(t, "Patient/A", "patient/*.*", ""),
		"same sub, other client": otherClient,
	}
	unknown := a.base + "/$export-status/" + strings.Repeat("0", 32)
	for name, tk := range others {
		a.as(t, tk, http.MethodGet, status, "").wantOutcome(t, http.StatusNotFound)
		a.as(t, tk, http.MethodGet, m.Output[0].URL, "").wantOutcome(t, http.StatusNotFound)
		a.as(t, tk, http.MethodDelete, status, "").wantOutcome(t, http.StatusNotFound)
		// Indistinguishable from a job that never existed.
		if r, u := a.as(t, tk, http.MethodGet, status, ""), a.as(t, tk, http.MethodGet, unknown, ""); string(r.body) != string(u.body) {
			t.Errorf("%s: another's job answers %s, an unknown one %s", name, r.body, u.body)
		}
	}
	// The owner's job is untouched.
	a.await(t, sys, status)
	if lines := a.download(t, sys, m.Output[0].URL); len(lines) != 1 {
		t.Errorf("owner's download: %d lines, want 1", len(lines))
	}
	a.as(t, sys, http.MethodGet, a.base+"/$export-file/"+strings.TrimPrefix(status, a.base+"/$export-status/")+"/Nonsense-1.ndjson", "").wantOutcome(t, http.StatusNotFound)
	a.as(t, sys, http.MethodGet, unknown, "").wantOutcome(t, http.StatusNotFound)
}

// TestExportCancel: DELETE on the status URL cancels a job, completed or
// not: it is gone (404) and its files are removed.
func TestExportCancel(t *testing.T) {
	a := newExportServer(t, boltStore(t))
	sys := a.tok(t, "", "system/*.*", "")
	for _, p := range []string{"A", "B"} {
		a.as(t, sys, http.MethodPut, "/Patient/"+p, matrixPatient(p)).want(t, http.StatusCreated)
	}
	t.Run("completed", func(t *testing.T) {
		status := a.kickoff(t, sys, "/$export?_type=Patient")
		m := a.await(t, sys, status)
		if len(jobDirs(t, a.dir)) != 1 {
			t.Fatalf("job directories: %v, want one", jobDirs(t, a.dir))
		}
		a.as(t, sys, http.MethodDelete, status, "").wantOutcome(t, http.StatusAccepted)
		a.as(t, sys, http.MethodGet, status, "").wantOutcome(t, http.StatusNotFound)
		a.as(t, sys, http.MethodGet, m.Output[0].URL, "").wantOutcome(t, http.StatusNotFound)
		a.as(t, sys, http.MethodDelete, status, "").wantOutcome(t, http.StatusNotFound)
		if dirs := jobDirs(t, a.dir); len(dirs) != 0 {
			t.Errorf("files left after cancel: %v", dirs)
		}
	})
	t.Run("running", func(t *testing.T) {
		status := a.kickoff(t, sys, "/$export")
		a.as(t, sys, http.MethodDelete, status, "").wantOutcome(t, http.StatusAccepted)
		a.as(t, sys, http.MethodGet, status, "").wantOutcome(t, http.StatusNotFound)
		if dirs := jobDirs(t, a.dir); len(dirs) != 0 {
			t.Errorf("files left after cancel: %v", dirs)
		}
	})
}

// TestExportExpiry: ExportTTL after a job completes, it and its files
// are gone.
func TestExportExpiry(t *testing.T) {
	a := newExportServer(t, boltStore(t), func(c *gateway.Config) { c.ExportTTL = time.Second })
	sys := a.tok(t, "", "system/*.*", "")
	a.as(t, sys, http.MethodPut, "/Patient/A", matrixPatient("A")).want(t, http.StatusCreated)
	status := a.kickoff(t, sys, "/$export?_type=Patient")
	r := a.as(t, sys, http.MethodGet, status, "")
	for r.status == http.StatusAccepted {
		time.Sleep(5 * time.Millisecond)
		r = a.as(t, sys, http.MethodGet, status, "")
	}
	r.want(t, http.StatusOK)
	if exp, err := http.ParseTime(r.header.Get("Expires")); err != nil || exp.Before(time.Now().Add(-2*time.Second)) || exp.After(time.Now().Add(2*time.Second)) {
		t.Errorf("Expires = %q, want about ExportTTL from completion", r.header.Get("Expires"))
	}
	waitNoJobDirs(t, a.dir)
	a.as(t, sys, http.MethodGet, status, "").wantOutcome(t, http.StatusNotFound)
}

// gatedStore holds every Search of Observations until its gate opens or
// the caller gives up: jobs stay running for as long as a test needs.
type gatedStore struct {
	store.Store
	gate chan struct{}
}

func (g gatedStore) Search(ctx context.Context, q store.Query) ([]string, error) {
	if q.Type == "Observation" {
		select {
		case <-g.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return g.Store.Search(ctx, q)
}

// TestExportRunning: a running job's status is 202 with X-Progress and
// Retry-After; a subject has at most 4 jobs running (429 with
// Retry-After above), others are not held back; cancelling a running job
// stops it.
func TestExportRunning(t *testing.T) {
	gate := make(chan struct{})
	a := newExportServer(t, gatedStore{boltStore(t), gate})
	sys := a.tok(t, "", "system/*.*", "")
	a.createAs(t, sys, "Observation", obsFor("Patient/A"))
	var jobs []string
	for range 4 {
		jobs = append(jobs, a.kickoff(t, sys, "/$export?_type=Observation"))
	}
	r := a.as(t, sys, http.MethodGet, jobs[0], "").want(t, http.StatusAccepted)
	if p := r.header.Get("X-Progress"); !strings.Contains(p, "Observation") {
		t.Errorf("X-Progress = %q", p)
	}
	if n, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || n <= 0 {
		t.Errorf("Retry-After = %q", r.header.Get("Retry-After"))
	}
	busy := a.as(t, sys, http.MethodGet, "/$export?_type=Observation", "", "Prefer", "respond-async")
	busy.wantOutcome(t, http.StatusTooManyRequests)
	if busy.header.Get("Retry-After") == "" {
		t.Errorf("429 without Retry-After")
	}
	// Another subject is not held back by this one's jobs.
	other, err := a.key.Sign(auth.Claims{Subject: "another-backend", Scope: "system/*.*", ClientID: "test-client"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherJob := a.kickoff(t, other, "/$export?_type=Observation")
	// A cancelled running job stops, and frees its place.
	a.as(t, sys, http.MethodDelete, jobs[3], "").wantOutcome(t, http.StatusAccepted)
	jobs[3] = a.kickoff(t, sys, "/$export?_type=Observation")
	if len(jobDirs(t, a.dir)) != 5 {
		t.Errorf("job directories: %v, want 5 (the cancelled one removed)", jobDirs(t, a.dir))
	}
	close(gate)
	for _, j := range jobs {
		if m := a.await(t, sys, j); len(m.Output) != 1 || m.Output[0].Count != 1 {
			t.Errorf("output = %+v, want one Observation", m.Output)
		}
	}
	a.await(t, other, otherJob)
}

// failingExportAudits is a store that refuses the AuditEvents of the
// resources a job exported (an export's, naming versions), and takes
// every other.
type failingExportAudits struct{ store.Store }

func (f failingExportAudits) Put(ctx context.Context, r store.Record, o store.PutOptions) error {
	if r.Type == "AuditEvent" && bytes.Contains(r.Body, []byte(`"code":"export"`)) && bytes.Contains(r.Body, []byte("/_history/")) {
		return errors.New("audit disk full")
	}
	return f.Store.Put(ctx, r, o)
}

// TestExportAuditFailure: a job whose exports cannot be audited fails
// (500), and its output is never served.
func TestExportAuditFailure(t *testing.T) {
	a := newExportServer(t, failingExportAudits{boltStore(t)})
	sys := a.tok(t, "", "system/*.*", "")
	a.as(t, sys, http.MethodPut, "/Patient/A", matrixPatient("A")).want(t, http.StatusCreated)
	status := a.kickoff(t, sys, "/$export?_type=Patient")
	r := a.as(t, sys, http.MethodGet, status, "")
	for deadline := time.Now().Add(30 * time.Second); r.status == http.StatusAccepted && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
		r = a.as(t, sys, http.MethodGet, status, "")
	}
	r.wantOutcome(t, http.StatusInternalServerError)
	if strings.Contains(string(r.body), "Matrix") {
		t.Errorf("a failed job's status leaks content: %s", r.body)
	}
	waitNoJobDirs(t, a.dir)
}

// TestExportFileTampered: a sealed file changed on disk is not served as
// if whole: the download breaks off.
func TestExportFileTampered(t *testing.T) {
	a := newExportServer(t, boltStore(t))
	sys := a.tok(t, "", "system/*.*", "")
	for i := range 10 {
		a.as(t, sys, http.MethodPut, "/Patient/T"+strconv.Itoa(i), matrixPatient("T"+strconv.Itoa(i))).want(t, http.StatusCreated)
	}
	m := a.await(t, sys, a.kickoff(t, sys, "/$export?_type=Patient"))
	var path string
	filepath.WalkDir(a.dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			path = p
		}
		return err
	})
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, m.Output[0].URL, nil)
	req.Header.Set("Authorization", "Bearer "+sys)
	res, err := a.hc.Do(req)
	if err != nil {
		return // refused outright: fine
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err == nil {
		t.Errorf("a tampered file was served whole (%d, %d bytes)", res.StatusCode, len(body))
	}
	if bytes.Count(body, []byte("\n")) == 10 {
		t.Errorf("a tampered file's content was served in full")
	}
}

// TestExportLargeFile: a file of several sealed chunks, with resources
// across their boundaries, reads back exactly.
func TestExportLargeFile(t *testing.T) {
	a := newExportServer(t, boltStore(t))
	sys := a.tok(t, "", "system/*.*", "")
	want := map[string]string{}
	for i := range 3 {
		var names []string
		for j := range 2500 {
			names = append(names, `{"family":"Doctor`+strconv.Itoa(i)+`","given":["Given`+strconv.Itoa(j)+`"]}`)
		}
		id := a.createAs(t, sys, "Practitioner", `{"resourceType":"Practitioner","name":[`+strings.Join(names, ",")+`]}`)
		want["Practitioner/"+id] = string(a.as(t, sys, http.MethodGet, "/Practitioner/"+id, "").want(t, http.StatusOK).body)
	}
	m := a.await(t, sys, a.kickoff(t, sys, "/$export?_type=Practitioner"))
	if len(m.Output) != 1 {
		t.Fatalf("output = %+v, want one file", m.Output)
	}
	got := map[string]string{}
	total := 0
	for _, l := range a.download(t, sys, m.Output[0].URL) {
		var res struct{ ID string }
		if err := json.Unmarshal(l, &res); err != nil {
			t.Fatal(err)
		}
		got["Practitioner/"+res.ID] = string(l)
		total += len(l) + 1
	}
	if total < 3*64<<10 {
		t.Fatalf("the file is %d bytes: too small to span several chunks", total)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("exported lines differ from the resources read (-read +exported):\n%s", diff)
	}
}

// TestExportClose: closing the Server stops its running jobs and removes
// the files of every job.
func TestExportClose(t *testing.T) {
	gate := make(chan struct{})
	defer close(gate)
	dir := t.TempDir()
	gw := gateway.New(gateway.Config{Store: gatedStore{boltStore(t), gate}, ExportDir: dir})
	ts := httptest.NewServer(gw)
	defer ts.Close()
	s := &server{base: ts.URL + "/fhir", hc: ts.Client()}
	s.create(t, "Observation", obsFor("Patient/A"))
	s.do(t, http.MethodPut, "/Patient/A", matrixPatient("A")).want(t, http.StatusCreated)
	done := s.do(t, http.MethodGet, "/$export?_type=Patient", "", "Prefer", "respond-async").want(t, http.StatusAccepted)
	for s.do(t, http.MethodGet, done.header.Get("Content-Location"), "").status == http.StatusAccepted {
		time.Sleep(5 * time.Millisecond)
	}
	s.do(t, http.MethodGet, "/$export?_type=Observation", "", "Prefer", "respond-async").want(t, http.StatusAccepted)
	if n := len(jobDirs(t, dir)); n != 2 {
		t.Fatalf("%d job directories, want 2", n)
	}
	closed := make(chan error, 1)
	go func() { closed <- gw.Close() }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return: a running job was not stopped")
	}
	if dirs := jobDirs(t, dir); len(dirs) != 0 {
		t.Errorf("files left after Close: %v", dirs)
	}
}
