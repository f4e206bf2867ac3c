package gateway

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/policy"
	"github.com/gorilla/mux"
)

func (s *Server) resourceType(r *http.Request) (string, error) {
	t := mux.Vars(r)["type"]
	if !fhir.IsResourceType(t) {
		return "", httpErr(http.StatusNotFound, fhir.CodeNotSupported, "unknown resource type")
	}
	return t, nil
}

func (s *Server) key(r *http.Request) (store.Key, error) {
	t, err := s.resourceType(r)
	if err != nil {
		return store.Key{}, err
	}
	id := mux.Vars(r)["id"]
	if !fhir.ValidID(id) {
		return store.Key{}, httpErr(http.StatusBadRequest, fhir.CodeInvalid, "invalid resource id")
	}
	return store.Key{Type: t, ID: id}, nil
}

func newID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// readBody reads a size-limited body and parses it as a resource of type t.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request, t string) (*fhir.Resource, error) {
	body, err := readAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBody), r.ContentLength, s.cfg.MaxBody)
	if err != nil {
		return nil, err
	}
	if len(body) == 0 {
		return nil, httpErr(http.StatusBadRequest, fhir.CodeRequired, "request body is empty")
	}
	res, err := fhir.Parse(body, fhir.ParseOptions{StrictReferenceTypes: s.cfg.EnforceReferences})
	if err != nil {
		return nil, err
	}
	if res.Type != t {
		return nil, fhir.Errorf(http.StatusUnprocessableEntity, fhir.CodeInvalid, "resourceType", "resourceType %s does not match the URL's type %s", res.Type, t)
	}
	return res, nil
}

// readAll is io.ReadAll into a buffer sized by the request's
// Content-Length when it is known and within limit (up to maxPrealloc:
// a client announcing more than it sends is given no more memory), not
// grown from 512 bytes.
func readAll(rd io.Reader, contentLength, limit int64) ([]byte, error) {
	if contentLength <= 0 || contentLength > limit {
		return io.ReadAll(rd)
	}
	b := make([]byte, 0, min(contentLength, maxPrealloc)+1) // +1: EOF is seen without growing
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := rd.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

// maxPrealloc bounds the buffer readAll allocates before reading.
const maxPrealloc = 1 << 20

// checkReferences rejects local references to resources the server does
// not hold (422), when EnforceReferences is on. Inside a transaction, a
// resource an earlier entry writes counts as held.
func (s *Server) checkReferences(r *http.Request, res *fhir.Resource) error {
	if !s.cfg.EnforceReferences {
		return nil
	}
	p := pendingFrom(r)
	var issues []fhir.Issue
	walkReferences(res.Doc, res.Type, func(path, ref string) {
		v := fhir.ParseReference(ref, s.base(r))
		if v.RefType == "" {
			return
		}
		if v.RefType == res.Type && v.RefID == res.ID {
			return
		}
		k := store.Key{Type: v.RefType, ID: v.RefID}
		if p != nil {
			if rec, ok := p.recs[k]; ok && !rec.Deleted {
				return
			}
		}
		cur, err := s.store.Get(r.Context(), k)
		if err != nil || cur.Deleted {
			issues = append(issues, fhir.Issue{Severity: fhir.SeverityError, Code: fhir.CodeNotFound, Expression: path, Details: "referenced resource does not exist on this server"})
		}
	})
	if len(issues) > 0 {
		return &fhir.Error{Status: http.StatusUnprocessableEntity, Issues: issues}
	}
	return nil
}

func walkReferences(v any, path string, fn func(path, ref string)) {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			if k == "contained" {
				continue
			}
			if k == "reference" {
				if s, ok := e.(string); ok && !strings.HasPrefix(s, "#") {
					fn(path+".reference", s)
				}
				continue
			}
			walkReferences(e, path+"."+k, fn)
		}
	case []any:
		for i, e := range t {
			walkReferences(e, fmt.Sprintf("%s[%d]", path, i), fn)
		}
	}
}

// write stores res as version v of k and returns the record.
func (s *Server) write(r *http.Request, res *fhir.Resource, k store.Key, v int64, opts store.PutOptions) (store.Record, error) {
	if p := s.prepare[k.Type]; p != nil {
		if err := p(r, res); err != nil {
			return store.Record{}, err
		}
	}
	if err := s.checkAttachments(r, res); err != nil {
		return store.Record{}, err
	}
	rec, err := s.encodeVersion(r, res, k, v, s.now().UTC().Truncate(time.Millisecond))
	if err != nil {
		return rec, err
	}
	return rec, s.commit(r, &change{rec: rec, doc: res.Doc, opts: opts})
}

// encodeVersion makes res version v of k, updated at now, with its index
// terms, owner and log leaf.
func (s *Server) encodeVersion(r *http.Request, res *fhir.Resource, k store.Key, v int64, now time.Time) (store.Record, error) {
	body, err := res.Encode(fhir.Meta{ID: k.ID, VersionID: strconv.FormatInt(v, 10), LastUpdated: now})
	if err != nil {
		return store.Record{}, err
	}
	base := s.base(r)
	rec := store.Record{Type: k.Type, ID: k.ID, Version: v, Updated: now, Body: body, Terms: s.terms(res, base),
		Owner: s.params.Owner(k.Type, k.ID, res.Doc, base)}
	withLeafOf(&rec, res)
	return rec, nil
}

// canonicalBufs are buffers for the canonical JSON withLeafOf hashes.
var canonicalBufs = sync.Pool{New: func() any { return new([]byte) }}

// withLeafOf is withLeaf for a version just encoded from res: its digest,
// hex SHA-256(salt ‖ anchor.Canonical(rec.Body)) as anchor.Digest
// defines it, is taken over res.Canonical(), which is the same bytes
// written from res.Doc without decoding the body again.
func withLeafOf(rec *store.Record, res *fhir.Resource) {
	salt := make([]byte, anchor.SaltSize)
	rand.Read(salt)
	buf := canonicalBufs.Get().(*[]byte)
	c := res.AppendCanonical((*buf)[:0])
	h := sha256.New()
	h.Write(salt)
	h.Write(c)
	if cap(c) <= 1<<20 {
		*buf = c
		canonicalBufs.Put(buf)
	}
	leaf := anchor.Leaf{ResourceType: rec.Type, ID: rec.ID, VersionID: strconv.FormatInt(rec.Version, 10),
		LastUpdated: fhir.FormatInstant(rec.Updated), Digest: hex.EncodeToString(h.Sum(nil))}
	rec.Leaf, rec.Salt = leaf.Encode(), salt
}

// withLeaf gives rec its transparency-log leaf: the store appends it in
// the version's own commit.
func withLeaf(rec *store.Record) error {
	leaf, salt, err := anchor.NewLeaf(rec.Type, rec.ID, strconv.FormatInt(rec.Version, 10), fhir.FormatInstant(rec.Updated), rec.Body)
	if err != nil {
		return err
	}
	rec.Leaf, rec.Salt = leaf.Encode(), salt
	return nil
}

// terms indexes res. Absolute references under base count as local; set
// Config.BaseURL so that every request indexes with the same base.
func (s *Server) terms(res *fhir.Resource, base string) []store.Term {
	buf := termBufs.Get().(*[]fhir.Term)
	ts := fhir.AppendIndexTerms((*buf)[:0], res.Doc, s.params[res.Type], base)
	out := make([]store.Term, len(ts))
	for i, t := range ts {
		out[i] = store.Term{Param: t.Param, Value: t.Value}
	}
	if cap(ts) <= 4096 {
		clear(ts)
		*buf = ts
		termBufs.Put(buf)
	}
	return out
}

// termBufs are the buffers terms collects fhir's terms in.
var termBufs = sync.Pool{New: func() any { return new([]fhir.Term) }}

func etag(v int64) string { return `W/"` + strconv.FormatInt(v, 10) + `"` }

// parseETag accepts W/"3", "3" and 3.
func parseETag(s string) (int64, bool) {
	s = strings.TrimPrefix(strings.TrimSpace(s), "W/")
	s = strings.Trim(s, `"`)
	v, err := strconv.ParseInt(s, 10, 64)
	return v, err == nil && v > 0
}

func (s *Server) setVersionHeaders(w http.ResponseWriter, rec store.Record) {
	w.Header().Set("ETag", etag(rec.Version))
	w.Header().Set("Last-Modified", rec.Updated.UTC().Format(http.TimeFormat))
}

func (s *Server) location(r *http.Request, rec store.Record) string {
	return s.base(r) + "/" + rec.Type + "/" + rec.ID + "/_history/" + strconv.FormatInt(rec.Version, 10)
}

// respondWrite answers a create or update per the Prefer header.
func (s *Server) respondWrite(w http.ResponseWriter, r *http.Request, rec store.Record, status int, warnings []fhir.Issue) {
	s.setVersionHeaders(w, rec)
	if status == http.StatusCreated || r.Method == http.MethodPut {
		w.Header().Set("Location", s.location(r, rec))
	}
	switch preferReturn(r) {
	case "minimal":
		w.WriteHeader(status)
	case "OperationOutcome":
		is := append([]fhir.Issue{{Severity: fhir.SeverityInformation, Code: fhir.CodeInformational, Details: fmt.Sprintf("%s/%s version %d stored", rec.Type, rec.ID, rec.Version)}}, warnings...)
		writeOutcome(w, status, is)
	default:
		w.Header().Set("Content-Type", contentTypeFHIR)
		w.WriteHeader(status)
		w.Write(rec.Body)
	}
}

func preferReturn(r *http.Request) string {
	for _, p := range preferences(r) {
		if v, ok := strings.CutPrefix(p, "return="); ok {
			return v
		}
	}
	return "representation"
}

func preferLenient(r *http.Request) bool {
	for _, p := range preferences(r) {
		if p == "handling=lenient" {
			return true
		}
	}
	return false
}

func preferences(r *http.Request) []string {
	var out []string
	for _, h := range r.Header.Values("Prefer") {
		for _, p := range strings.FieldsFunc(h, func(c rune) bool { return c == ',' || c == ';' }) {
			out = append(out, strings.TrimSpace(p))
		}
	}
	return out
}

func (s *Server) create(w http.ResponseWriter, r *http.Request) error {
	t, err := s.resourceType(r)
	if err != nil {
		return err
	}
	res, err := s.readBody(w, r, t)
	if err != nil {
		return err
	}
	return s.createResource(w, r, res)
}

// createResource is create once the resource is read.
func (s *Server) createResource(w http.ResponseWriter, r *http.Request, res *fhir.Resource) error {
	t := res.Type
	// R4: the server assigns the id; one in the body is ignored.
	k := store.Key{Type: t, ID: newID()}
	res.ID = k.ID
	comps := s.params.Compartments(t, k.ID, res.Doc, s.base(r))
	if _, err := s.authorize(r, "create", policy.Resource{Type: t, ID: k.ID, Compartments: comps}); err != nil {
		return err
	}
	if err := s.checkReferences(r, res); err != nil {
		return err
	}
	if cond := r.Header.Get("If-None-Exist"); cond != "" {
		return s.conditionalCreate(w, r, res, k, cond)
	}
	rec, err := s.write(r, res, k, 1, store.PutOptions{})
	if err != nil {
		return err
	}
	s.written(r, rec, comps)
	s.respondWrite(w, r, rec, http.StatusCreated, res.Warnings)
	return nil
}

// written records a version the request stored, for its AuditEvent, and
// brings a Consent into the policy at once. (Were that to fail, the next
// consent sync would catch up from the store.)
func (s *Server) written(r *http.Request, rec store.Record, comps []string) {
	s.touchRecord(r, rec, comps)
	s.afterWrite(r, rec)
}

// afterWrite tells the Subscriptions about a stored version, and brings a
// Consent into the policy.
func (s *Server) afterWrite(r *http.Request, rec store.Record) {
	s.subs.notify(r, rec)
	if err := s.consents.apply(r.Context(), rec); err != nil {
		s.log.WarnContext(r.Context(), "consent not applied to the policy yet", slog.Any("error", err))
	}
}

// errAppendOnly refuses to change or delete an AuditEvent: the audit trail
// is only ever appended to (a new AuditEvent, by POST or by PUT to a new
// id, is fine).
var errAppendOnly = httpErr(http.StatusMethodNotAllowed, fhir.CodeNotSupported, "AuditEvents cannot be updated or deleted")

func appendOnly(t string) error {
	if t == "AuditEvent" {
		return errAppendOnly
	}
	return nil
}

// conditionalCreate implements If-None-Exist. When the criteria are exact
// index lookups the "no match" check is made atomically with the write by
// the store (so it holds across gateway processes); otherwise it is a
// search followed by a write.
func (s *Server) conditionalCreate(w http.ResponseWriter, r *http.Request, res *fhir.Resource, k store.Key, cond string) error {
	q, err := s.criteria(r, k.Type, strings.TrimPrefix(cond, k.Type+"?"), "If-None-Exist")
	if err != nil {
		return err
	}
	for attempt := 0; attempt < 5; attempt++ {
		ids, err := s.matchIDs(r, q)
		if err != nil {
			return err
		}
		switch len(ids) {
		case 0:
		case 1:
			rec, err := s.store.Get(r.Context(), store.Key{Type: k.Type, ID: ids[0]})
			if err != nil {
				return err
			}
			if err := s.authorizeRecord(r, "read", rec); err != nil {
				return err
			}
			s.respondWrite(w, r, rec, http.StatusOK, nil)
			return nil
		default:
			return httpErr(http.StatusPreconditionFailed, fhir.CodeMultipleMatch, "If-None-Exist matched more than one resource")
		}
		opts := store.PutOptions{}
		if guard, ok := storeGuard(q); ok {
			opts.IfNoneMatch = guard
		}
		rec, err := s.write(r, res, k, 1, opts)
		if errors.Is(err, store.ErrExists) {
			continue // someone else created a match: look again
		}
		if err != nil {
			return err
		}
		s.written(r, rec, s.params.Compartments(k.Type, k.ID, res.Doc, s.base(r)))
		s.respondWrite(w, r, rec, http.StatusCreated, res.Warnings)
		return nil
	}
	return httpErr(http.StatusConflict, fhir.CodeConflict, "conditional create kept racing; retry")
}

// storeGuard turns a query whose clauses are all exact index lookups into a
// store guard. It reports false when the store could not decide the
// criteria exactly.
func storeGuard(q *fhir.Query) (*store.Query, bool) {
	if !q.Exact() {
		return nil, false
	}
	return toStoreQuery(q), true
}

func toStoreQuery(q *fhir.Query) *store.Query {
	sq := &store.Query{Type: q.Type}
	for _, clause := range q.Candidates() {
		var or []store.Match
		for _, t := range clause {
			or = append(or, store.Match{Param: t.Param, Value: t.Value})
		}
		sq.All = append(sq.All, or)
	}
	return sq
}

func (s *Server) read(w http.ResponseWriter, r *http.Request) error {
	k, err := s.key(r)
	if err != nil {
		return err
	}
	rec, err := s.store.Get(r.Context(), k)
	if err != nil {
		return err
	}
	return s.serveVersion(w, r, rec, "read")
}

// serveVersion answers a read or vread of a stored version: 410 for a
// delete, else the version once the policy allows action on it (a
// Binary's content as serveBinary decides).
func (s *Server) serveVersion(w http.ResponseWriter, r *http.Request, rec store.Record, action string) error {
	if rec.Deleted {
		s.setVersionHeaders(w, rec)
		return errGone
	}
	if err := s.authorizeRecord(r, action, rec); err != nil {
		return err
	}
	if rec.Type == "Binary" && s.blobs != nil {
		return s.serveBinary(w, r, rec)
	}
	return s.serveRecord(w, r, rec)
}

// authorizeRecord asks the policy about action on a stored version, and
// records it for the audit when allowed.
func (s *Server) authorizeRecord(r *http.Request, action string, rec store.Record) error {
	comps, err := s.compartmentsOf(rec, nil, s.base(r))
	if err != nil {
		return err
	}
	if _, err := s.authorize(r, action, policy.Resource{Type: rec.Type, ID: rec.ID, Compartments: comps}); err != nil {
		return err
	}
	s.touchRecord(r, rec, comps)
	if ownerOnly(r, rec.Type) {
		ok, err := s.owns(r, rec)
		if err != nil {
			return err
		}
		if !ok {
			return errForbidden
		}
	}
	return nil
}

func (s *Server) serveRecord(w http.ResponseWriter, r *http.Request, rec store.Record) error {
	s.setVersionHeaders(w, rec)
	if inm := r.Header.Get("If-None-Match"); inm != "" {
		if v, ok := parseETag(inm); ok && v == rec.Version {
			w.WriteHeader(http.StatusNotModified)
			return nil
		}
	}
	if ims := r.Header.Get("If-Modified-Since"); ims != "" {
		if t, err := http.ParseTime(ims); err == nil && !rec.Updated.Truncate(time.Second).After(t) {
			w.WriteHeader(http.StatusNotModified)
			return nil
		}
	}
	w.Header().Set("Content-Type", contentTypeFHIR)
	w.Header().Set("Content-Length", strconv.Itoa(len(rec.Body)))
	if r.Method == http.MethodHead {
		return nil
	}
	w.Write(rec.Body)
	return nil
}

// version reads the version the request's {type}/{id}/_history/{vid}
// names.
func (s *Server) version(r *http.Request) (store.Record, error) {
	k, err := s.key(r)
	if err != nil {
		return store.Record{}, err
	}
	v, err := strconv.ParseInt(mux.Vars(r)["vid"], 10, 64)
	if err != nil || v < 1 {
		return store.Record{}, store.ErrNotFound
	}
	return s.store.GetVersion(r.Context(), k, v)
}

func (s *Server) vread(w http.ResponseWriter, r *http.Request) error {
	rec, err := s.version(r)
	if err != nil {
		return err
	}
	return s.serveVersion(w, r, rec, "vread")
}

func (s *Server) update(w http.ResponseWriter, r *http.Request) error {
	k, err := s.key(r)
	if err != nil {
		return err
	}
	res, err := s.readBody(w, r, k.Type)
	if err != nil {
		return err
	}
	if res.ID == "" {
		return fhir.Errorf(http.StatusBadRequest, fhir.CodeRequired, k.Type+".id", "the resource must have an id matching the URL")
	}
	if res.ID != k.ID {
		return fhir.Errorf(http.StatusUnprocessableEntity, fhir.CodeInvalid, k.Type+".id", "the resource id does not match the URL")
	}
	return s.updateResource(w, r, res, k)
}

func (s *Server) updateResource(w http.ResponseWriter, r *http.Request, res *fhir.Resource, k store.Key) error {
	if err := s.checkReferences(r, res); err != nil {
		return err
	}
	ifMatch := r.Header.Get("If-Match")
	var want int64
	if ifMatch != "" {
		v, ok := parseETag(ifMatch)
		if !ok {
			return httpErr(http.StatusBadRequest, fhir.CodeInvalid, "If-Match must be a version ETag like W/\"3\"")
		}
		want = v
	}
	base := s.base(r)
	comps := s.params.Compartments(k.Type, k.ID, res.Doc, base)
	for attempt := 0; attempt < 10; attempt++ {
		cur, err := s.store.Get(r.Context(), k)
		var next int64 = 1
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return err
		default:
			next = cur.Version + 1
		}
		// The caller must be allowed to change the stored version as well
		// as to write the new one: it may not move a resource out of a
		// compartment it has no access to.
		all := comps
		if next > 1 && k.Type == "AuditEvent" {
			return errAppendOnly
		}
		if next > 1 {
			old, err := s.compartmentsOf(cur, nil, base)
			if err != nil {
				return err
			}
			all = union(comps, old)
		}
		// An update that creates the resource needs the create permission
		// (SMART v2: c), whatever the interaction is called.
		action := "update"
		if next == 1 {
			action = "create"
		}
		if _, err := s.authorize(r, action, policy.Resource{Type: k.Type, ID: k.ID, Compartments: all}); err != nil {
			return err
		}
		if ifMatch != "" && (next == 1 || cur.Version != want) {
			return httpErr(http.StatusPreconditionFailed, fhir.CodeConflict, "If-Match does not match the current version")
		}
		if next > 1 && !cur.Deleted && unchanged(res, cur) {
			// The same content again: no new version (as HAPI does).
			s.touchRecord(r, cur, comps)
			s.respondWrite(w, r, cur, http.StatusOK, res.Warnings)
			return nil
		}
		rec, err := s.write(r, res, k, next, store.PutOptions{})
		if errors.Is(err, store.ErrConflict) {
			if ifMatch != "" {
				return httpErr(http.StatusPreconditionFailed, fhir.CodeConflict, "the resource changed: If-Match no longer matches")
			}
			continue
		}
		if err != nil {
			return err
		}
		status := http.StatusOK
		if next == 1 || cur.Deleted {
			status = http.StatusCreated
		}
		s.written(r, rec, comps)
		s.respondWrite(w, r, rec, status, res.Warnings)
		return nil
	}
	return store.ErrConflict
}

// conditionalQuery parses the search criteria of a conditional update or
// delete on a type (PUT/DELETE /{type}?criteria).
func (s *Server) conditionalQuery(r *http.Request) (*fhir.Query, error) {
	t, err := s.resourceType(r)
	if err != nil {
		return nil, err
	}
	if r.URL.RawQuery == "" {
		return nil, httpErr(http.StatusMethodNotAllowed, fhir.CodeNotSupported, r.Method+" on a type needs search criteria (a conditional "+strings.ToLower(r.Method)+")")
	}
	return fhir.ParseQuery(t, r.URL.Query(), s.params, s.base(r), false)
}

func (s *Server) conditionalUpdate(w http.ResponseWriter, r *http.Request) error {
	q, err := s.conditionalQuery(r)
	if err != nil {
		return err
	}
	t := q.Type
	res, err := s.readBody(w, r, t)
	if err != nil {
		return err
	}
	ids, err := s.matchIDs(r, q)
	if err != nil {
		return err
	}
	switch len(ids) {
	case 0:
		id := res.ID
		if id == "" {
			id = newID()
		}
		return s.updateResource(w, r, res, store.Key{Type: t, ID: id})
	case 1:
		if res.ID != "" && res.ID != ids[0] {
			return fhir.Errorf(http.StatusBadRequest, fhir.CodeInvalid, t+".id", "the resource id does not match the resource the criteria found")
		}
		return s.updateResource(w, r, res, store.Key{Type: t, ID: ids[0]})
	}
	return httpErr(http.StatusPreconditionFailed, fhir.CodeMultipleMatch, "conditional update criteria matched more than one resource")
}

func (s *Server) delete(w http.ResponseWriter, r *http.Request) error {
	k, err := s.key(r)
	if err != nil {
		return err
	}
	if err := appendOnly(k.Type); err != nil {
		return err
	}
	return s.deleteKey(w, r, k)
}

func (s *Server) deleteKey(w http.ResponseWriter, r *http.Request, k store.Key) error {
	for attempt := 0; attempt < 10; attempt++ {
		cur, err := s.store.Get(r.Context(), k)
		if errors.Is(err, store.ErrNotFound) {
			if _, err := s.authorize(r, "delete", policy.Resource{Type: k.Type, ID: k.ID}); err != nil {
				return err
			}
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
		if err != nil {
			return err
		}
		comps, err := s.compartmentsOf(cur, nil, s.base(r))
		if err != nil {
			return err
		}
		if _, err := s.authorize(r, "delete", policy.Resource{Type: k.Type, ID: k.ID, Compartments: comps}); err != nil {
			return err
		}
		if cur.Deleted {
			s.setVersionHeaders(w, cur)
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
		if im := r.Header.Get("If-Match"); im != "" {
			if v, ok := parseETag(im); !ok || v != cur.Version {
				return httpErr(http.StatusPreconditionFailed, fhir.CodeConflict, "If-Match does not match the current version")
			}
		}
		rec, err := s.deleteVersion(r, cur)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return err
		}
		s.written(r, rec, comps)
		s.setVersionHeaders(w, rec)
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	return store.ErrConflict
}

// deleteVersion stores a delete of cur's resource as its next version.
func (s *Server) deleteVersion(r *http.Request, cur store.Record) (store.Record, error) {
	rec := store.Record{Type: cur.Type, ID: cur.ID, Version: cur.Version + 1, Updated: s.now().UTC().Truncate(time.Millisecond), Deleted: true}
	if err := withLeaf(&rec); err != nil {
		return rec, err
	}
	return rec, s.commit(r, &change{rec: rec})
}

func (s *Server) conditionalDelete(w http.ResponseWriter, r *http.Request) error {
	q, err := s.conditionalQuery(r)
	if err != nil {
		return err
	}
	if err := appendOnly(q.Type); err != nil {
		return err
	}
	t := q.Type
	ids, err := s.matchIDs(r, q)
	if err != nil {
		return err
	}
	switch len(ids) {
	case 0:
		w.WriteHeader(http.StatusNoContent)
		return nil
	case 1:
		return s.deleteKey(w, r, store.Key{Type: t, ID: ids[0]})
	}
	return httpErr(http.StatusPreconditionFailed, fhir.CodeMultipleMatch, "conditional delete criteria matched more than one resource")
}

// union returns a followed by the members of b not in a.
func union(a, b []string) []string {
	out := slices.Clone(a)
	for _, x := range b {
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}
