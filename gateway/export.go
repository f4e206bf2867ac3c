package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/internal/keys"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/policy"
	"github.com/gorilla/mux"
)

// Bulk Data Access $export (HL7 FHIR Bulk Data Access IG 2.0.0,
// https://hl7.org/fhir/uv/bulkdata/export.html).
//
// A kick-off (GET or POST [base]/$export, or [base]/Patient/$export for
// the resources of every patient compartment) with Prefer: respond-async
// starts a job and is answered 202 with the job's status URL. The job runs
// in a goroutine of this process, as the subject that kicked it off: for
// each type it reads every live resource and keeps those the policy lets
// the subject see, exactly as a search-type does (action "search-type",
// operation "export"; a type the subject may not search yields nothing),
// one NDJSON file per type (split above exportMaxFile bytes). Once the job
// has been through every type, it stores the AuditEvents of what it
// exported (an export of nothing is audited too); only then is its output
// served, and a job whose audit fails fails. Only the subject that kicked
// a job off (same token sub, client id and fhirUser) may poll, cancel or
// download it: to anyone else it does not exist (404).
//
// transactionTime is the kick-off time. A resource changed after it is
// exported as it was then (its version current at transactionTime, read
// from its history); one created after it is left out, and so is one
// deleted while the job runs. Clients SHOULD pass the previous
// transactionTime as the next _since (inclusive: a version updated at
// exactly _since is exported again).
//
// Output is PHI: files are written under Config.ExportDir sealed with
// AES-256-GCM in chunks of exportChunk bytes, with a key drawn for each job
// and held in this process's memory only, and are decrypted as they are
// served. Files are removed when the job is cancelled, ExportTTL after it
// completes or fails, and when the Server closes; files left by a process
// that crashed cannot be opened by anyone (their key is gone) and may be
// removed (directories named fhirgate-export-*).
//
// Jobs live in the memory of the process that accepted the kick-off. When
// several gateway processes share a store, the status, cancel and file
// requests of a job must reach that process (sticky routing on the
// $export-status/{job} and $export-file/{job} paths); another process
// answers 404.

const (
	// exportMaxJobs bounds the jobs a subject may have running at once.
	exportMaxJobs = 4
	// exportPollAfter is the Retry-After (seconds) of a running job's status.
	exportPollAfter = "2"
	// exportBusyAfter is the Retry-After (seconds) of a kick-off refused
	// because the subject has exportMaxJobs running.
	exportBusyAfter = "30"
	// exportChunk is the plaintext size of a sealed chunk of an output file.
	exportChunk = 64 << 10
	// exportMaxFile is the plaintext size above which a type's output goes
	// on in a new file.
	exportMaxFile = 256 << 20
	// exportAuditBatch is about how many exported resources one call of
	// audit covers (it writes one AuditEvent per patient compartment).
	exportAuditBatch = 1000
	// exportDirPrefix names the job directories under ExportDir.
	exportDirPrefix = "fhirgate-export-"
	exportNDJSON    = "application/fhir+ndjson"
)

var errExportNotFound = httpErr(http.StatusNotFound, fhir.CodeNotFound, "no such export job")

// exports are a Server's $export jobs.
type exports struct {
	mu     sync.Mutex
	closed bool
	jobs   map[string]*exportJob
	wg     sync.WaitGroup // the job goroutines
}

// exportRegistry holds each Server's exports, as Server has no field for
// them; closeExports removes a Server's.
var exportRegistry sync.Map // *Server → *exports

func (s *Server) exports() *exports {
	if e, ok := exportRegistry.Load(s); ok {
		return e.(*exports)
	}
	e, _ := exportRegistry.LoadOrStore(s, &exports{jobs: map[string]*exportJob{}})
	return e.(*exports)
}

// closeExports cancels the running $export jobs, waits for them, and
// removes every job's files. Server.Close MUST call it.
func (s *Server) closeExports() {
	v, ok := exportRegistry.LoadAndDelete(s)
	if !ok {
		return
	}
	e := v.(*exports)
	e.mu.Lock()
	e.closed = true
	jobs := e.jobs
	e.jobs = map[string]*exportJob{}
	for _, j := range jobs {
		if j.expiry != nil {
			j.expiry.Stop()
		}
	}
	e.mu.Unlock()
	for _, j := range jobs {
		j.cancel()
	}
	e.wg.Wait()
	for _, j := range jobs {
		j.removeFiles(s)
	}
}

// exportState is where a job is.
type exportState int

const (
	exportRunning exportState = iota
	exportComplete
	exportFailed
)

// exportJob is one $export job. What the goroutine has reached (typeN,
// typ) is guarded by mu; its state and files by the exports' mu.
type exportJob struct {
	e       *exports
	id      string
	owner   policy.Subject
	request string    // the kick-off URL
	txTime  time.Time // transactionTime: the kick-off time
	params  exportParams
	dir     string
	key     []byte // AES-256; in memory only
	cancel  context.CancelFunc
	done    chan struct{} // closed when the job goroutine returns
	// exported counts the resources written so far, for X-Progress.
	exported atomic.Int64

	mu    sync.Mutex
	typeN int    // the type being exported, from 1
	typ   string // its name

	state   exportState
	removed bool // cancelled, expired or closed: its files are gone or going
	output  []*exportFile
	errs    []*exportFile
	failure string // the error id of a failed job
	expires time.Time
	expiry  *time.Timer
}

// exportFile is one sealed output file of a job.
type exportFile struct {
	name  string // Observation-1.ndjson: the last segment of its URL
	typ   string
	index uint32 // the file's number in the job, in every chunk's nonce
	count int    // resources (or OperationOutcomes) in it
	size  int64  // plaintext bytes
}

// exportParams are a kick-off's parsed parameters.
type exportParams struct {
	patientLevel bool
	types        []string
	since        time.Time // zero: none
	filters      map[string][]*fhir.Query
	base         string
	query        string // the parameters, for the AuditEvent (sealed there)
}

func (s *Server) exportKickoff(w http.ResponseWriter, r *http.Request) error {
	a := accessFrom(r.Context())
	if a == nil {
		return errors.New("export: request has no access record")
	}
	if !slices.Contains(preferences(r), "respond-async") {
		return httpErr(http.StatusBadRequest, fhir.CodeInvalid, "$export is asynchronous: send the header Prefer: respond-async")
	}
	p, err := s.parseExport(w, r)
	if err != nil {
		return err
	}
	a.query = p.query // sealed in the kick-off's AuditEvent
	j, err := s.startExport(r, a, p)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Location", s.base(r)+"/$export-status/"+j.id)
	writeOutcome(w, http.StatusAccepted, []fhir.Issue{{Severity: fhir.SeverityInformation, Code: fhir.CodeInformational,
		Details: "export job accepted: poll the URL in Content-Location"}})
	return nil
}

// exportUnsupported are Bulk Data parameters fhirgate does not implement:
// an error unless Prefer: handling=lenient, when they are ignored.
var exportUnsupported = map[string]bool{
	"patient": true, "_elements": true, "includeAssociatedData": true, "_until": true,
	"organizeOutputBy": true, "allowPartialManifests": true,
}

// exportFilterResultParams may not appear in a _typeFilter query.
var exportFilterResultParams = map[string]bool{
	"_count": true, "_offset": true, "_sort": true, "_include": true, "_revinclude": true,
	"_include:iterate": true, "_revinclude:iterate": true, "_summary": true, "_total": true,
	"_elements": true, "_format": true, "_pretty": true, "_contained": true, "_containedType": true,
}

// parseExport reads the kick-off's parameters from its query and, for a
// POST, its Parameters body.
func (s *Server) parseExport(w http.ResponseWriter, r *http.Request) (exportParams, error) {
	p := exportParams{patientLevel: strings.HasSuffix(r.URL.Path, "/Patient/$export"), base: s.base(r)}
	vals, err := s.exportValues(w, r)
	if err != nil {
		return p, err
	}
	lenient := preferLenient(r)
	names := make([]string, 0, len(vals))
	for k := range vals {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		switch {
		case k == "_outputFormat" || k == "_since" || k == "_type" || k == "_typeFilter" || k == "_format" || k == "_pretty":
		case lenient:
			delete(vals, k)
		case exportUnsupported[k]:
			return p, fhir.Errorf(http.StatusBadRequest, fhir.CodeNotSupported, k, "the $export parameter %s is not supported", strconv.Quote(k))
		default:
			return p, fhir.Errorf(http.StatusBadRequest, fhir.CodeNotSupported, k, "unknown $export parameter %s", strconv.Quote(k))
		}
	}
	p.query = vals.Encode()
	if fs := vals["_outputFormat"]; len(fs) > 0 {
		// An unescaped + in a query string reads as a space.
		switch strings.ReplaceAll(strings.TrimSpace(fs[0]), " ", "+") {
		case "application/fhir+ndjson", "application/ndjson", "ndjson":
		default:
			return p, fhir.Errorf(http.StatusBadRequest, fhir.CodeNotSupported, "_outputFormat", "_outputFormat must be application/fhir+ndjson, application/ndjson or ndjson")
		}
		if len(fs) > 1 {
			return p, fhir.Errorf(http.StatusBadRequest, fhir.CodeInvalid, "_outputFormat", "_outputFormat may be given once")
		}
	}
	if vs := vals["_since"]; len(vs) > 0 {
		lo, _, ok := fhir.ParseDate(strings.TrimSpace(vs[0]))
		if !ok || len(vs) > 1 {
			return p, fhir.Errorf(http.StatusBadRequest, fhir.CodeInvalid, "_since", "_since must be one instant, like 2024-01-01T00:00:00Z")
		}
		p.since = lo
	}
	allowed := func(t string) bool { return !p.patientLevel || t == "Patient" || s.params.CompartmentType(t) }
	seen := map[string]bool{}
	for _, v := range vals["_type"] {
		for _, t := range strings.Split(v, ",") {
			t = strings.TrimSpace(t)
			switch {
			case t == "" || seen[t]:
				continue
			case !fhir.IsResourceType(t):
				return p, fhir.Errorf(http.StatusBadRequest, fhir.CodeNotSupported, "_type", "_type names an unknown resource type%s", quotedType(t))
			case !allowed(t):
				return p, fhir.Errorf(http.StatusBadRequest, fhir.CodeNotSupported, "_type", "Patient/$export exports the patient compartment: %s resources are not in it", t)
			}
			seen[t] = true
			p.types = append(p.types, t)
		}
	}
	for _, v := range vals["_typeFilter"] {
		for _, f := range splitTypeFilters(v) {
			t, raw, _ := strings.Cut(f, "?")
			switch {
			case !fhir.IsResourceType(t):
				return p, fhir.Errorf(http.StatusBadRequest, fhir.CodeInvalid, "_typeFilter", "a _typeFilter must be a resource type and a search query, like Observation?code=1234-5")
			case len(p.types) > 0 && !seen[t]:
				return p, fhir.Errorf(http.StatusBadRequest, fhir.CodeInvalid, "_typeFilter", "_typeFilter filters %s, which _type does not name", t)
			case !allowed(t):
				return p, fhir.Errorf(http.StatusBadRequest, fhir.CodeNotSupported, "_typeFilter", "Patient/$export exports the patient compartment: %s resources are not in it", t)
			}
			qv, err := url.ParseQuery(raw)
			if err != nil {
				return p, fhir.Errorf(http.StatusBadRequest, fhir.CodeInvalid, "_typeFilter", "a _typeFilter's query is not a valid query string")
			}
			for k := range qv {
				if exportFilterResultParams[k] {
					return p, fhir.Errorf(http.StatusBadRequest, fhir.CodeNotSupported, "_typeFilter", "a _typeFilter takes search parameters only, not %s", k)
				}
			}
			q, err := fhir.ParseQuery(t, qv, s.params, p.base, false)
			if err != nil {
				return p, err
			}
			if p.filters == nil {
				p.filters = map[string][]*fhir.Query{}
			}
			p.filters[t] = append(p.filters[t], q)
		}
	}
	if len(p.types) == 0 {
		// Every type, but AuditEvent: the trail of accesses is exported
		// only when _type asks for it.
		for _, t := range fhir.ResourceTypes() {
			if t != "AuditEvent" && allowed(t) {
				p.types = append(p.types, t)
			}
		}
	}
	return p, nil
}

// quotedType quotes t for an error message when it looks like a type name
// (a client's string is not echoed otherwise).
func quotedType(t string) string {
	if len(t) > 64 {
		return ""
	}
	for _, c := range t {
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') {
			return ""
		}
	}
	return " " + strconv.Quote(t)
}

// splitTypeFilters splits a _typeFilter value, a comma-separated list of
// queries, at the commas that start a new Type? query: others separate a
// parameter's values.
func splitTypeFilters(v string) []string {
	var out []string
	for _, part := range strings.Split(v, ",") {
		t, _, ok := strings.Cut(part, "?")
		if (ok && fhir.IsResourceType(strings.TrimSpace(t))) || len(out) == 0 {
			out = append(out, strings.TrimSpace(part))
			continue
		}
		out[len(out)-1] += "," + part
	}
	return out
}

// exportValues returns the kick-off's parameters: its query string, and a
// POST's Parameters body.
func (s *Server) exportValues(w http.ResponseWriter, r *http.Request) (url.Values, error) {
	vals := r.URL.Query()
	if r.Method != http.MethodPost {
		return vals, nil
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBody))
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return vals, nil
	}
	var in struct {
		ResourceType string                       `json:"resourceType"`
		Parameter    []map[string]json.RawMessage `json:"parameter"`
	}
	if err := json.Unmarshal(body, &in); err != nil || in.ResourceType != "Parameters" {
		return nil, fhir.Errorf(http.StatusBadRequest, fhir.CodeStructure, "", "the body of a POST $export must be a Parameters resource")
	}
	for i, par := range in.Parameter {
		var name string
		if err := json.Unmarshal(par["name"], &name); err != nil || name == "" {
			return nil, fhir.Errorf(http.StatusBadRequest, fhir.CodeRequired, "Parameters.parameter["+strconv.Itoa(i)+"].name", "every parameter needs a name")
		}
		// The parameters fhirgate implements take strings (valueString,
		// valueInstant); any other value counts as empty.
		val := ""
		for k, raw := range par {
			if strings.HasPrefix(k, "value") {
				json.Unmarshal(raw, &val)
			}
		}
		vals.Add(name, val)
	}
	return vals, nil
}

// startExport registers a job and starts its goroutine.
func (s *Server) startExport(r *http.Request, a *access, p exportParams) (*exportJob, error) {
	var id [16]byte
	key := make([]byte, 32)
	if _, err := rand.Read(id[:]); err != nil {
		return nil, err
	}
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	request := p.base + strings.TrimPrefix(r.URL.Path, "/fhir")
	if r.URL.RawQuery != "" {
		request += "?" + r.URL.RawQuery
	}
	j := &exportJob{
		id: hex.EncodeToString(id[:]), owner: a.subject, request: request, params: p, key: key,
		txTime: s.now().UTC().Truncate(time.Millisecond), done: make(chan struct{}),
		typeN: 1, typ: p.types[0],
	}
	e := s.exports()
	j.e = e
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, httpErr(http.StatusServiceUnavailable, fhir.CodeTransient, "the server is shutting down")
	}
	running := 0
	for _, o := range e.jobs {
		if o.state == exportRunning && sameExportOwner(o.owner, a.subject) {
			running++
		}
	}
	if running >= exportMaxJobs {
		err := httpErr(http.StatusTooManyRequests, fhir.CodeTransient, "too many export jobs running for this client: wait for one to complete, or cancel one")
		err.Header = http.Header{"Retry-After": {exportBusyAfter}}
		return nil, err
	}
	dir := s.cfg.ExportDir
	if dir == "" {
		dir = os.TempDir()
	}
	var err error
	if j.dir, err = os.MkdirTemp(dir, exportDirPrefix); err != nil { // mode 0700
		return nil, fmt.Errorf("export dir: %w", err)
	}
	// The job acts as the kick-off's subject, on a request of its own: the
	// policy, consents, Subscription ownership and audit read it there.
	ja := &access{subject: a.subject, remote: a.remote, interaction: "operation", operation: "export",
		action: "E", target: a.target, query: p.query}
	ctx, cancel := context.WithCancel(context.Background())
	j.cancel = cancel
	jr := r.Clone(context.WithValue(ctx, accessKey{}, ja))
	jr.Header = http.Header{} // not the bearer token
	jr.Body = http.NoBody
	e.jobs[j.id] = j
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer close(j.done)
		s.runExport(jr, j)
	}()
	return j, nil
}

// sameExportOwner reports whether a and b are the same token subject,
// client and user.
func sameExportOwner(a, b policy.Subject) bool {
	return a.Sub == b.Sub && a.ClientID == b.ClientID && a.FHIRUser == b.FHIRUser
}

// runExport is the job goroutine.
func (s *Server) runExport(r *http.Request, j *exportJob) {
	ctx := r.Context()
	out, errs, err := s.exportAll(r, j)
	if err == nil && ctx.Err() == nil && !s.cfg.NoAudit {
		err = s.auditExport(r, accessFrom(ctx))
	}
	e := j.e
	e.mu.Lock()
	if j.removed || e.closed || ctx.Err() != nil {
		// Cancelled, or the Server closing: the canceller removes the
		// files once done is closed.
		e.mu.Unlock()
		return
	}
	if err != nil {
		j.state = exportFailed
		j.failure = errorID()
		s.log.ErrorContext(ctx, "export job failed", slog.String("job", j.id), slog.String("error_id", j.failure), slog.Any("error", err))
		defer j.removeFiles(s) // after e.mu is released
	} else {
		j.state = exportComplete
		j.output, j.errs = out, errs
		n := 0
		for _, f := range out {
			n += f.count
		}
		s.log.InfoContext(ctx, "export job complete", slog.String("job", j.id), slog.Int("files", len(out)), slog.Int("resources", n), slog.Int("errors", len(errs)))
	}
	ttl := s.cfg.ExportTTL
	j.expires = time.Now().Add(ttl)
	j.expiry = time.AfterFunc(ttl, func() {
		e.mu.Lock()
		if e.jobs[j.id] == j {
			delete(e.jobs, j.id)
		}
		j.removed = true
		e.mu.Unlock()
		j.removeFiles(s)
	})
	e.mu.Unlock()
}

// removeFiles removes the job's directory.
func (j *exportJob) removeFiles(s *Server) {
	if err := os.RemoveAll(j.dir); err != nil {
		s.log.Warn("export: removing a job's files failed", slog.Any("error", err))
	}
}

// exportAll writes every type's output.
func (s *Server) exportAll(r *http.Request, j *exportJob) (out, errs []*exportFile, err error) {
	w := &exportWriter{s: s, j: j}
	defer w.abort()
	a := accessFrom(r.Context())
	for i, t := range j.params.types {
		if err := r.Context().Err(); err != nil {
			return nil, nil, err
		}
		j.mu.Lock()
		j.typeN, j.typ = i+1, t
		j.mu.Unlock()
		// Consents are read afresh for each type: a long job sees a
		// revocation within a type.
		a.consentsSynced = false
		if err := s.exportType(r, j, w, t); err != nil {
			return nil, nil, err
		}
	}
	if err := w.finish(); err != nil {
		return nil, nil, err
	}
	return w.output, w.errs, nil
}

// exportType writes the resources of type t the subject may see.
func (s *Server) exportType(r *http.Request, j *exportJob, w *exportWriter, t string) error {
	ctx := r.Context()
	d, err := s.decide(r, "search-type", policy.Resource{Type: t})
	if err != nil {
		return err
	}
	if !d.Allow {
		return nil // outside the subject's scopes: nothing to export
	}
	everything := d.Unconditional && !ownerOnly(r, t)
	filters := j.params.filters[t]
	ids, err := s.exportCandidates(ctx, t, filters)
	if err != nil {
		return err
	}
	base := j.params.base
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return err
		}
		rec, ok, err := s.exportVersion(ctx, j, store.Key{Type: t, ID: id})
		if errors.Is(err, keys.ErrIntegrity) {
			if err := w.integrityFailure(ctx, t, err); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		if !ok || rec.Updated.Before(j.params.since) {
			continue
		}
		doc, err := fhir.DecodeStored(rec.Body)
		if err != nil {
			return err
		}
		if len(filters) > 0 && !slices.ContainsFunc(filters, func(q *fhir.Query) bool { return q.Matches(doc, base) }) {
			continue
		}
		comps, err := s.compartmentsOf(rec, doc, base)
		if err != nil {
			return err
		}
		if j.params.patientLevel && len(comps) == 0 {
			continue
		}
		if !everything {
			ok, err := s.visible(r, "search-type", rec, doc)
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
		}
		if err := w.resource(t, rec.Body); err != nil {
			return err
		}
		accessFrom(ctx).touch(versionRef(rec), rec.Type, comps)
		j.exported.Add(1)
	}
	return nil
}

// exportCandidates returns the ids of the live resources of type t, or,
// with filters, of those the store's index finds for any of them.
func (s *Server) exportCandidates(ctx context.Context, t string, filters []*fhir.Query) ([]string, error) {
	if len(filters) == 0 {
		return s.store.Search(ctx, store.Query{Type: t})
	}
	var ids []string
	for _, q := range filters {
		got, err := s.store.Search(ctx, *toStoreQuery(q))
		if err != nil {
			return nil, err
		}
		ids = append(ids, got...)
	}
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

// exportVersion reads the version of k current at the job's
// transactionTime; ok is false when there is none (created later, deleted,
// erased or gone).
func (s *Server) exportVersion(ctx context.Context, j *exportJob, k store.Key) (store.Record, bool, error) {
	rec, err := s.store.Get(ctx, k)
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrErased) {
		return rec, false, nil
	}
	if err != nil {
		return rec, false, err
	}
	if rec.Updated.After(j.txTime) {
		// Changed since the kick-off: export the version current then.
		all, _, err := s.store.History(ctx, store.HistoryQuery{Type: k.Type, ID: k.ID})
		if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrErased) {
			return rec, false, nil
		}
		if err != nil {
			return rec, false, err
		}
		i := slices.IndexFunc(all, func(v store.Record) bool { return !v.Updated.After(j.txTime) })
		if i < 0 {
			return rec, false, nil
		}
		rec = all[i]
	}
	return rec, !rec.Deleted, nil
}

// auditExport stores the AuditEvents of what the job exported, in
// batches of about exportAuditBatch resources that keep a patient's
// together where they fit: one AuditEvent per patient compartment and
// batch, and one for what is outside any compartment.
func (s *Server) auditExport(r *http.Request, a *access) error {
	batches := exportAuditBatches(a.touched, exportAuditBatch)
	if len(batches) == 0 {
		batches = [][]touched{nil} // an export of nothing is audited too
	}
	for i, b := range batches {
		ba := *a
		ba.touched = b
		if i > 0 {
			ba.filtered = 0 // counted once, in the first batch's events
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), auditTimeout)
		err := s.audit(r.WithContext(ctx), &ba, http.StatusOK)
		cancel()
		if err != nil {
			s.metrics.auditFailures.Inc()
			return fmt.Errorf("export audit: %w", err)
		}
	}
	return nil
}

// exportAuditBatches splits ts into batches of at most n, keeping the
// resources of one patient compartment (by their first) in one batch when
// they fit.
func exportAuditBatches(ts []touched, n int) [][]touched {
	groups := map[string][]touched{}
	var order []string
	for _, t := range ts {
		k := ""
		if len(t.comps) > 0 {
			k = t.comps[0]
		}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], t)
	}
	var out [][]touched
	var cur []touched
	for _, k := range order {
		g := groups[k]
		if len(cur) > 0 && len(cur)+len(g) > n {
			out, cur = append(out, cur), nil
		}
		for len(g) > n {
			out, g = append(out, g[:n]), g[n:]
		}
		cur = append(cur, g...)
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// exportWriter writes a job's output files, one type at a time.
type exportWriter struct {
	s      *Server
	j      *exportJob
	files  uint32 // files begun
	cur    *sealWriter
	curF   *exportFile
	output []*exportFile
	errs   []*exportFile
	errW   *sealWriter
	errF   *exportFile
}

// resource writes one resource of type t as an NDJSON line.
func (w *exportWriter) resource(t string, body []byte) error {
	if w.cur != nil && (w.curF.typ != t || w.curF.size >= exportMaxFile) {
		if err := w.closeCur(); err != nil {
			return err
		}
	}
	if w.cur == nil {
		n := 1
		for _, f := range w.output {
			if f.typ == t {
				n++
			}
		}
		var err error
		if w.cur, w.curF, err = w.open(t, t+"-"+strconv.Itoa(n)+".ndjson"); err != nil {
			return err
		}
	}
	return w.line(w.cur, w.curF, body)
}

// integrityFailure records, in the error file, a resource of type t that
// failed authentication when read: it is left out, and the log names it.
func (w *exportWriter) integrityFailure(ctx context.Context, t string, err error) error {
	id := errorID()
	name := ""
	if ie := (*keys.IntegrityError)(nil); errors.As(err, &ie) {
		name = ie.Name
	}
	w.s.metrics.integrity.Inc()
	w.s.log.ErrorContext(ctx, "integrity failure", slog.String("error_id", id), slog.String("route", "export"), slog.String("value", name))
	if w.errW == nil {
		w.errW, w.errF, err = w.open("OperationOutcome", "OperationOutcome-1.ndjson")
		if err != nil {
			return err
		}
	}
	oo := OperationOutcome([]fhir.Issue{{Severity: fhir.SeverityError, Code: fhir.CodeException,
		Details: "a stored " + t + " failed authentication and is not in the export; reference " + id}})
	return w.line(w.errW, w.errF, oo)
}

func (w *exportWriter) open(t, name string) (*sealWriter, *exportFile, error) {
	w.files++
	f := &exportFile{name: name, typ: t, index: w.files}
	sw, err := newSealWriter(filepath.Join(w.j.dir, name), w.j.key, f.index)
	return sw, f, err
}

// line writes body, compacted to one line, and a newline.
func (w *exportWriter) line(sw *sealWriter, f *exportFile, body []byte) error {
	if bytes.ContainsAny(body, "\r\n") {
		var c bytes.Buffer
		if err := json.Compact(&c, body); err != nil {
			return err
		}
		body = c.Bytes()
	}
	if _, err := sw.Write(body); err != nil {
		return err
	}
	if _, err := sw.Write([]byte{'\n'}); err != nil {
		return err
	}
	f.count++
	f.size += int64(len(body)) + 1
	return nil
}

func (w *exportWriter) closeCur() error {
	err := w.cur.Close()
	w.output = append(w.output, w.curF)
	w.cur, w.curF = nil, nil
	return err
}

// finish closes the open files.
func (w *exportWriter) finish() error {
	if w.cur != nil {
		if err := w.closeCur(); err != nil {
			return err
		}
	}
	if w.errW != nil {
		err := w.errW.Close()
		w.errs = append(w.errs, w.errF)
		w.errW = nil
		return err
	}
	return nil
}

// abort closes whatever is still open (after an error).
func (w *exportWriter) abort() {
	for _, sw := range []*sealWriter{w.cur, w.errW} {
		if sw != nil {
			sw.f.Close()
		}
	}
}

// A sealed file is a sequence of chunks, each a 1-byte flag (1 on the
// last chunk, 0 before), a 4-byte big-endian length and the AES-256-GCM
// ciphertext of up to exportChunk bytes. The nonce is the file's number
// in the job (4 bytes) and the chunk's index (8 bytes), so no nonce
// repeats under a job's key; the additional data is the flag and the
// index, so chunks cannot be reordered, moved between files, dropped or
// the file cut short unnoticed.

type sealWriter struct {
	f     *os.File
	w     *bufio.Writer
	aead  cipher.AEAD
	file  uint32
	chunk uint64
	buf   []byte
	ct    []byte
}

func newExportAEAD(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

func newSealWriter(path string, key []byte, file uint32) (*sealWriter, error) {
	aead, err := newExportAEAD(key)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("export file: %w", err)
	}
	return &sealWriter{f: f, w: bufio.NewWriterSize(f, exportChunk+64), aead: aead, file: file,
		buf: make([]byte, 0, exportChunk)}, nil
}

func exportNonce(file uint32, chunk uint64) []byte {
	n := make([]byte, 12)
	binary.BigEndian.PutUint32(n, file)
	binary.BigEndian.PutUint64(n[4:], chunk)
	return n
}

func exportAAD(flag byte, chunk uint64) []byte {
	ad := make([]byte, 9)
	ad[0] = flag
	binary.BigEndian.PutUint64(ad[1:], chunk)
	return ad
}

func (w *sealWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), exportChunk-len(w.buf))
		w.buf = append(w.buf, p[:k]...)
		p = p[k:]
		if len(w.buf) == exportChunk {
			if err := w.seal(0); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (w *sealWriter) seal(flag byte) error {
	w.ct = w.aead.Seal(w.ct[:0], exportNonce(w.file, w.chunk), w.buf, exportAAD(flag, w.chunk))
	var hdr [5]byte
	hdr[0] = flag
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(w.ct)))
	w.w.Write(hdr[:])
	_, err := w.w.Write(w.ct)
	clear(w.buf)
	w.buf = w.buf[:0]
	w.chunk++
	return err
}

// Close seals the last chunk and closes the file.
func (w *sealWriter) Close() error {
	err := w.seal(1)
	if ferr := w.w.Flush(); err == nil {
		err = ferr
	}
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// openSealed decrypts the sealed file at path to dst, chunk by chunk.
func openSealed(dst io.Writer, path string, key []byte, file uint32) error {
	aead, err := newExportAEAD(key)
	if err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	rd := bufio.NewReaderSize(f, exportChunk+64)
	var hdr [5]byte
	ct := make([]byte, 0, exportChunk+aead.Overhead())
	var pt []byte
	for chunk := uint64(0); ; chunk++ {
		if _, err := io.ReadFull(rd, hdr[:]); err != nil {
			return fmt.Errorf("export file: chunk %d: %w", chunk, errors.Join(keys.ErrIntegrity, err))
		}
		n := binary.BigEndian.Uint32(hdr[1:])
		if hdr[0] > 1 || n > uint32(exportChunk+aead.Overhead()) {
			return fmt.Errorf("export file: chunk %d: %w", chunk, keys.ErrIntegrity)
		}
		ct = ct[:n]
		if _, err := io.ReadFull(rd, ct); err != nil {
			return fmt.Errorf("export file: chunk %d: %w", chunk, errors.Join(keys.ErrIntegrity, err))
		}
		pt, err = aead.Open(pt[:0], exportNonce(file, chunk), ct, exportAAD(hdr[0], chunk))
		if err != nil {
			return fmt.Errorf("export file: chunk %d: %w", chunk, keys.ErrIntegrity)
		}
		if _, err := dst.Write(pt); err != nil {
			return err
		}
		if hdr[0] == 1 {
			if _, err := rd.ReadByte(); err != io.EOF {
				return fmt.Errorf("export file: data after the last chunk: %w", keys.ErrIntegrity)
			}
			return nil
		}
	}
}

// exportJobOf returns the request's job, if the request's subject owns it.
func (s *Server) exportJobOf(r *http.Request) (*exportJob, error) {
	a := accessFrom(r.Context())
	e := s.exports()
	e.mu.Lock()
	defer e.mu.Unlock()
	j := e.jobs[mux.Vars(r)["job"]]
	if j == nil || a == nil || !sameExportOwner(j.owner, a.subject) {
		return nil, errExportNotFound
	}
	return j, nil
}

// exportManifest is the Bulk Data complete-status body.
type exportManifest struct {
	TransactionTime     string               `json:"transactionTime"`
	Request             string               `json:"request"`
	RequiresAccessToken bool                 `json:"requiresAccessToken"`
	Output              []exportManifestFile `json:"output"`
	Error               []exportManifestFile `json:"error"`
}

type exportManifestFile struct {
	Type  string `json:"type"`
	URL   string `json:"url"`
	Count int    `json:"count"`
}

func (s *Server) exportStatus(w http.ResponseWriter, r *http.Request) error {
	j, err := s.exportJobOf(r)
	if err != nil {
		return err
	}
	e := j.e
	e.mu.Lock()
	state, failure, expires := j.state, j.failure, j.expires
	output, errs := j.output, j.errs
	e.mu.Unlock()
	switch state {
	case exportFailed:
		return httpErr(http.StatusInternalServerError, fhir.CodeException, "the export failed; reference "+failure)
	case exportRunning:
		j.mu.Lock()
		progress := fmt.Sprintf("%s (type %d of %d), %d resources exported", j.typ, j.typeN, len(j.params.types), j.exported.Load())
		j.mu.Unlock()
		w.Header().Set("X-Progress", progress)
		w.Header().Set("Retry-After", exportPollAfter)
		w.WriteHeader(http.StatusAccepted)
		return nil
	}
	base := s.base(r) + "/$export-file/" + j.id + "/"
	m := exportManifest{TransactionTime: fhir.FormatInstant(j.txTime), Request: j.request, RequiresAccessToken: true,
		Output: []exportManifestFile{}, Error: []exportManifestFile{}}
	for _, f := range output {
		m.Output = append(m.Output, exportManifestFile{Type: f.typ, URL: base + f.name, Count: f.count})
	}
	for _, f := range errs {
		m.Error = append(m.Error, exportManifestFile{Type: f.typ, URL: base + f.name, Count: f.count})
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Expires", expires.UTC().Format(http.TimeFormat))
	w.Write(b)
	return nil
}

func (s *Server) exportCancel(w http.ResponseWriter, r *http.Request) error {
	j, err := s.exportJobOf(r)
	if err != nil {
		return err
	}
	e := j.e
	e.mu.Lock()
	if e.jobs[j.id] != j {
		e.mu.Unlock()
		return errExportNotFound // cancelled or expired meanwhile
	}
	delete(e.jobs, j.id)
	j.removed = true
	if j.expiry != nil {
		j.expiry.Stop()
	}
	e.mu.Unlock()
	j.cancel()
	select {
	case <-j.done:
	case <-r.Context().Done():
		// The job stops on its own; its files go once it has.
		go func() { <-j.done; j.removeFiles(s) }()
		return r.Context().Err()
	}
	j.removeFiles(s)
	writeOutcome(w, http.StatusAccepted, []fhir.Issue{{Severity: fhir.SeverityInformation, Code: fhir.CodeInformational,
		Details: "export job cancelled; its files are deleted"}})
	return nil
}

func (s *Server) exportFile(w http.ResponseWriter, r *http.Request) error {
	j, err := s.exportJobOf(r)
	if err != nil {
		return err
	}
	name := mux.Vars(r)["file"]
	e := j.e
	e.mu.Lock()
	var f *exportFile
	if j.state == exportComplete {
		for _, o := range slices.Concat(j.output, j.errs) {
			if o.name == name {
				f = o
			}
		}
	}
	e.mu.Unlock()
	if f == nil {
		return httpErr(http.StatusNotFound, fhir.CodeNotFound, "no such export file")
	}
	path := filepath.Join(j.dir, f.name)
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return httpErr(http.StatusNotFound, fhir.CodeNotFound, "no such export file") // expired meanwhile
		}
		return err
	}
	out, err := s.unheld(w, r, http.StatusOK)
	if err != nil {
		return err
	}
	out.Header().Set("Content-Type", exportNDJSON)
	// A length, so that a download cut short (a file that fails to open
	// midway) is seen as such by the client.
	out.Header().Set("Content-Length", strconv.FormatInt(f.size, 10))
	out.WriteHeader(http.StatusOK)
	if err := openSealed(out, path, j.key, f.index); err != nil && r.Context().Err() == nil {
		id := errorID()
		if errors.Is(err, keys.ErrIntegrity) {
			s.metrics.integrity.Inc()
		}
		s.log.ErrorContext(r.Context(), "export file download failed", slog.String("error_id", id), slog.Any("error", err))
	}
	return nil
}

// unheld stores the request's AuditEvent now, and returns the writer
// under wrap's hold: an output file is streamed, not held back in memory
// until the request is audited (see respondAudited). The audit records the
// download as served (status).
func (s *Server) unheld(w http.ResponseWriter, r *http.Request, status int) (http.ResponseWriter, error) {
	hw, ok := w.(*heldResponse)
	if !ok {
		return w, nil
	}
	if a := accessFrom(r.Context()); a != nil && !s.cfg.NoAudit {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), auditTimeout)
		defer cancel()
		if err := s.audit(r.WithContext(ctx), a, status); err != nil {
			s.metrics.auditFailures.Inc()
			s.log.ErrorContext(r.Context(), "audit failed; response withheld", slog.String("route", routeName(r)), slog.Any("error", err))
			return nil, fmt.Errorf("%w: %w", errAuditFailed, err)
		}
		a.audited = true
	}
	out := hw.ResponseWriter
	// What respondAudited sends after the handler goes nowhere.
	hw.ResponseWriter = discardResponse{header: out.Header()}
	return out, nil
}

// discardResponse is a ResponseWriter that sends nothing.
type discardResponse struct{ header http.Header }

func (d discardResponse) Header() http.Header         { return d.header }
func (d discardResponse) Write(b []byte) (int, error) { return len(b), nil }
func (d discardResponse) WriteHeader(int)             {}
