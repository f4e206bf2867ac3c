package gateway

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/internal/keys"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/sealed"
	"github.com/fhirgate/fhirgate/policy"
	"github.com/gorilla/mux"
)

// Binary resources hold files (scans, PDFs, imaging reports) of up to
// Config.MaxBinary bytes. Their content is not kept in the resource: it
// is streamed to the store in sealed chunks (sealed.WriteBlob), and the
// stored Binary records its SHA-256 and size in meta extensions
// (fhir.BinarySHA256URL, fhir.BinarySizeURL), so that its log leaf
// commits to the content. A Binary belongs to the patient compartments
// of the resource its securityContext names, whose access rules apply to
// it; its chunks are sealed under that patient's data key, and one
// content is stored once per data key.
//
// POST /Binary and PUT /Binary/{id} take the raw content with its own
// Content-Type (and the securityContext in X-Security-Context), or the
// Binary resource (application/fhir+json or application/json) with
// base64 data. GET answers the raw content with the stored Content-Type,
// with Range support; asked for FHIR JSON (Accept or _format) it answers
// the Binary resource with its data, when the content is no larger than
// Config.MaxBinaryResource.

const (
	// DefaultMaxBinary is the default Config.MaxBinary.
	DefaultMaxBinary = 256 << 20
	// MaxBinaryLimit bounds Config.MaxBinary: a Binary's size is an R4
	// unsignedInt.
	MaxBinaryLimit = 1<<31 - 1
	// DefaultMaxBinaryResource is the default Config.MaxBinaryResource.
	DefaultMaxBinaryResource = 8 << 20
	// DefaultBinaryTimeout is the default Config.BinaryTimeout.
	DefaultBinaryTimeout = 30 * time.Minute
)

// blobStore is what the sealed store offers for Binary contents.
type blobStore interface {
	WriteBlob(ctx context.Context, owner string, r io.Reader) (sealed.Blob, error)
	DropBlob(ctx context.Context, b sealed.Blob) error
	FindBlob(ctx context.Context, keyID string, sha256 [sha256.Size]byte) (sealed.Blob, int64, error)
	OpenBlob(ctx context.Context, b sealed.Blob) (*sealed.BlobReader, error)
	KeyID(owner string) string
}

// binaryRoute reports whether r is a Binary interaction that takes or
// serves raw content (negotiate lets any media type through to it).
func binaryRoute(r *http.Request, name string) bool {
	switch name {
	case "create", "update", "read", "vread":
		return mux.Vars(r)["type"] == "Binary"
	}
	return false
}

// fhirMediaType reports whether a Content-Type or Accept media type is a
// FHIR JSON one: the Binary resource rather than raw content.
func fhirMediaType(mt string) bool {
	switch mt {
	case "application/fhir+json", "application/json+fhir", "application/json":
		return true
	}
	return false
}

// stagedBlob is the content a Binary write streamed to the store, in its
// request's context until the version that names it is committed.
type stagedBlob struct {
	b sealed.Blob
	// kept: the last commit attempt keeps b's stream (its cell was new).
	// Otherwise the same content was stored before under the data key,
	// and b's stream is dropped.
	kept bool
}

type stagedBlobKey struct{}

func stagedBlobFrom(r *http.Request) *stagedBlob {
	sb, _ := r.Context().Value(stagedBlobKey{}).(*stagedBlob)
	return sb
}

// createBinary is POST /Binary.
func (s *Server) createBinary(w http.ResponseWriter, r *http.Request) error {
	return s.writeBinary(w, r, store.Key{Type: "Binary"})
}

// updateBinary is PUT /Binary/{id}.
func (s *Server) updateBinary(w http.ResponseWriter, r *http.Request) error {
	k, err := s.key(r)
	if err != nil {
		return err
	}
	return s.writeBinary(w, r, k)
}

// binaryUpload is a Binary write before its content is stored.
type binaryUpload struct {
	contentType string
	context     map[string]any // securityContext, nil without
	// doc is the rest of a Binary sent as a resource (meta, language,
	// implicitRules), nil for raw content.
	doc     map[string]any
	content io.Reader
}

// writeBinary stores a Binary: k.ID "" creates one.
func (s *Server) writeBinary(w http.ResponseWriter, r *http.Request, k store.Key) error {
	up, err := s.readBinaryUpload(w, r, k)
	if err != nil {
		return err
	}
	comps, ext, err := s.binaryContext(r, up.context)
	if err != nil {
		return err
	}
	// The caller must be allowed to write into those compartments (and
	// those of the version it replaces) before a byte is stored;
	// createResource and updateResource decide again once it is.
	action, all := "create", comps
	if k.ID != "" {
		cur, err := s.store.Get(r.Context(), k)
		switch {
		case err == nil && !cur.Deleted:
			old, err := s.compartmentsOf(cur, nil, s.base(r))
			if err != nil {
				return err
			}
			action, all = "update", union(comps, old)
		case err != nil && !errors.Is(err, store.ErrNotFound):
			return err
		}
	}
	if _, err := s.authorize(r, action, policy.Resource{Type: "Binary", ID: k.ID, Compartments: all}); err != nil {
		return err
	}
	owner := ""
	if len(comps) > 0 {
		owner = comps[0]
	}
	if d := s.cfg.BinaryTimeout; d > 0 {
		// A large file takes longer than the server's read timeout.
		http.NewResponseController(w).SetReadDeadline(time.Now().Add(d))
	}
	b, err := s.blobs.WriteBlob(r.Context(), owner, up.content)
	if err != nil {
		return err
	}
	sb := &stagedBlob{b: b}
	defer func() {
		if !sb.kept {
			if err := s.blobs.DropBlob(context.WithoutCancel(r.Context()), b); err != nil {
				s.log.WarnContext(r.Context(), "a staged Binary content was not dropped; it expires", slog.Any("error", err))
			}
		}
	}()
	res, err := binaryResource(k.ID, up, b, ext)
	if err != nil {
		return err
	}
	r = r.WithContext(context.WithValue(r.Context(), stagedBlobKey{}, sb))
	if k.ID == "" {
		err = s.createResource(w, r, res)
	} else {
		err = s.updateResource(w, r, res, k)
	}
	if err != nil && !mayHaveCommitted(err) {
		sb.kept = false // the commit that would have kept it failed
	}
	return err
}

// mayHaveCommitted reports whether a commit that failed with err may
// have taken effect all the same (the store went away, or the request
// timed out, while it ran): a content it was to keep is then left staged
// (its backend removes it in time if it was not kept), never dropped.
func mayHaveCommitted(err error) bool {
	return errors.Is(err, store.ErrUnavailable) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// readBinaryUpload reads what a Binary write sends: raw content, or a
// Binary resource with base64 data.
func (s *Server) readBinaryUpload(w http.ResponseWriter, r *http.Request, k store.Key) (*binaryUpload, error) {
	ct := r.Header.Get("Content-Type")
	mt, params, err := mime.ParseMediaType(ct)
	if ct != "" && err != nil {
		return nil, httpErr(http.StatusUnsupportedMediaType, fhir.CodeNotSupported, "the Content-Type is not a valid media type")
	}
	if !fhirMediaType(mt) {
		if r.ContentLength > s.cfg.MaxBinary {
			return nil, &http.MaxBytesError{Limit: s.cfg.MaxBinary}
		}
		// Stored in its canonical form, which is a valid FHIR code.
		up := &binaryUpload{contentType: mime.FormatMediaType(mt, params), content: http.MaxBytesReader(w, r.Body, s.cfg.MaxBinary)}
		if up.contentType == "" {
			up.contentType = "application/octet-stream"
		}
		if sc := strings.TrimSpace(r.Header.Get("X-Security-Context")); sc != "" {
			up.context = map[string]any{"reference": sc}
		}
		return up, nil
	}
	res, err := s.readBody(w, r, "Binary")
	if err != nil {
		return nil, err
	}
	if k.ID != "" {
		if res.ID == "" {
			return nil, fhir.Errorf(http.StatusBadRequest, fhir.CodeRequired, "Binary.id", "the resource must have an id matching the URL")
		}
		if res.ID != k.ID {
			return nil, fhir.Errorf(http.StatusUnprocessableEntity, fhir.CodeInvalid, "Binary.id", "the resource id does not match the URL")
		}
	}
	return uploadOf(res.Doc)
}

// uploadOf is the upload of a Binary sent as a resource.
func uploadOf(doc map[string]any) (*binaryUpload, error) {
	up := &binaryUpload{doc: map[string]any{}}
	up.contentType, _ = doc["contentType"].(string)
	up.context, _ = doc["securityContext"].(map[string]any)
	data, _ := doc["data"].(string)
	content, err := base64.StdEncoding.DecodeString(data)
	if err != nil {
		return nil, fhir.Errorf(http.StatusBadRequest, fhir.CodeValue, "Binary.data", "data is not base64")
	}
	up.content = bytes.NewReader(content)
	for _, name := range []string{"meta", "language", "implicitRules"} {
		if v, ok := doc[name]; ok {
			up.doc[name] = v
		}
	}
	return up, nil
}

// binaryContext resolves a Binary's securityContext into the patient
// compartments whose rules apply to it, and, when it names a resource
// other than a Patient, the meta extensions that record them in the
// Binary. It must name a resource the server holds (422 otherwise),
// unless it is a Patient reference and references are not enforced.
func (s *Server) binaryContext(r *http.Request, sc map[string]any) ([]string, []any, error) {
	if sc == nil {
		return nil, nil, nil
	}
	ref, ok := sc["reference"].(string)
	if !ok {
		return nil, nil, nil // a logical reference (identifier): in no compartment
	}
	v := fhir.ParseReference(ref, s.base(r))
	if v.RefType == "" || !fhir.ValidID(v.RefID) || !fhir.IsResourceType(v.RefType) {
		return nil, nil, fhir.Errorf(http.StatusUnprocessableEntity, fhir.CodeValue, "Binary.securityContext",
			"securityContext must be a reference to a resource on this server, such as Patient/123")
	}
	if v.RefType == "Patient" && !s.cfg.EnforceReferences {
		return []string{"Patient/" + v.RefID}, nil, nil
	}
	cur, err := s.current(r, store.Key{Type: v.RefType, ID: v.RefID})
	if errors.Is(err, store.ErrNotFound) || err == nil && cur.Deleted {
		return nil, nil, fhir.Errorf(http.StatusUnprocessableEntity, fhir.CodeNotFound, "Binary.securityContext",
			"securityContext names a resource that does not exist on this server")
	}
	if err != nil {
		return nil, nil, err
	}
	comps, err := s.compartmentsOf(cur, nil, s.base(r))
	if err != nil || v.RefType == "Patient" {
		return comps, nil, err
	}
	var ext []any
	for _, c := range comps {
		ext = append(ext, map[string]any{"url": fhir.BinaryCompartmentURL, "valueReference": map[string]any{"reference": c}})
	}
	return comps, ext, nil
}

// binaryResource builds the Binary version that names content b: what
// the client sent but the data, with the content's digest, size and
// compartments in meta.
func binaryResource(id string, up *binaryUpload, b sealed.Blob, compartments []any) (*fhir.Resource, error) {
	doc := map[string]any{"resourceType": "Binary", "contentType": up.contentType}
	for k, v := range up.doc {
		doc[k] = v
	}
	if id != "" {
		doc["id"] = id
	}
	if up.context != nil {
		doc["securityContext"] = up.context
	}
	meta, _ := doc["meta"].(map[string]any)
	m := map[string]any{}
	for k, v := range meta {
		if k != "versionId" && k != "lastUpdated" && k != "extension" {
			m[k] = v
		}
	}
	var ext []any
	old, _ := meta["extension"].([]any)
	for _, e := range old {
		if em, _ := e.(map[string]any); !serverExtension(em["url"]) {
			ext = append(ext, e)
		}
	}
	ext = append(ext,
		map[string]any{"url": fhir.BinarySHA256URL, "valueBase64Binary": base64.StdEncoding.EncodeToString(b.SHA256[:])},
		map[string]any{"url": fhir.BinarySizeURL, "valueUnsignedInt": b.Size})
	m["extension"] = append(ext, compartments...)
	doc["meta"] = m
	raw, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	return fhir.Parse(raw, fhir.ParseOptions{})
}

func serverExtension(url any) bool {
	switch url {
	case fhir.BinarySHA256URL, fhir.BinarySizeURL, fhir.BinaryCompartmentURL:
		return true
	}
	return false
}

// prepareBinary checks a Binary version before it is encoded: its content
// must have been streamed by this request (writeBinary). In a transaction
// it stores the entry's base64 data now, staged until the transaction
// commits, and turns res into the Binary that names it. A Binary written
// any other way (a conditional update) is refused rather than stored with
// its data inline.
func (s *Server) prepareBinary(r *http.Request, res *fhir.Resource) error {
	sb := stagedBlobFrom(r)
	if p := pendingFrom(r); sb == nil && p != nil {
		return s.stageTransactionBinary(r, p, res)
	}
	if sb == nil {
		return fhir.Errorf(http.StatusUnprocessableEntity, fhir.CodeNotSupported, "Binary",
			"a Binary is written by POST /Binary, PUT /Binary/{id} or in a transaction, not by a conditional update")
	}
	sum, size, ok := fhir.BinaryContent(res.Doc)
	if !ok || sum != sb.b.SHA256 || size != sb.b.Size {
		return errors.New("gateway: Binary version does not name the content its request stored")
	}
	return nil
}

// stageTransactionBinary stores the data of a transaction's Binary entry
// as a staged blob of the transaction, and makes res the Binary that names
// it.
func (s *Server) stageTransactionBinary(r *http.Request, p *pending, res *fhir.Resource) error {
	up, err := uploadOf(res.Doc)
	if err != nil {
		return err
	}
	comps, ext, err := s.binaryContext(r, up.context)
	if err != nil {
		return err
	}
	owner := ""
	if len(comps) > 0 {
		owner = comps[0]
	}
	b, err := s.blobs.WriteBlob(r.Context(), owner, up.content)
	if err != nil {
		return err
	}
	if sb, ok := p.blobs[b.Cell()]; ok {
		// The same content as an earlier entry's: name that one.
		if err := s.blobs.DropBlob(context.WithoutCancel(r.Context()), b); err != nil {
			s.log.WarnContext(r.Context(), "a staged Binary content was not dropped; it expires", slog.Any("error", err))
		}
		b = sb.b
	} else {
		p.blobs[b.Cell()] = &stagedBlob{b: b}
	}
	bin, err := binaryResource(res.ID, up, b, ext)
	if err != nil {
		return err
	}
	bin.Warnings = res.Warnings
	*res = *bin
	return nil
}

// dropStaged drops the Binary contents a transaction staged and did not
// keep: all of them when its commit failed (commitErr), but those it was
// to keep when that commit may have taken effect (mayHaveCommitted).
func (s *Server) dropStaged(r *http.Request, p *pending, committed bool, commitErr error) {
	for _, sb := range p.blobs {
		if sb.kept && (committed || commitErr != nil && mayHaveCommitted(commitErr)) {
			continue
		}
		if err := s.blobs.DropBlob(context.WithoutCancel(r.Context()), sb.b); err != nil {
			s.log.WarnContext(r.Context(), "a staged Binary content was not dropped; it expires", slog.Any("error", err))
		}
	}
}

// keepBinary is the Binary commit hook: the commit keeps the request's
// staged content and records it in its cell, unless the same content is
// stored already under the data key; then the version names that one.
func (s *Server) keepBinary(r *http.Request, c *change) error {
	if c.rec.Deleted {
		return nil
	}
	sb := stagedBlobFrom(r)
	if p := pendingFrom(r); sb == nil && p != nil {
		sum, _, _ := fhir.BinaryContent(c.doc)
		owner := s.params.Owner("Binary", c.rec.ID, c.doc, s.base(r))
		sb = p.blobs[sealed.BlobCell(s.blobs.KeyID(owner), sum)]
	}
	if sb == nil {
		return nil
	}
	sb.kept = false
	cell, err := s.cell(r, sb.b.Cell())
	if err != nil {
		return err
	}
	if cell.Version == 0 {
		c.cells = append(c.cells, store.SetCell{ID: sb.b.Cell(), Value: sb.b.Encode()})
		c.keep = append(c.keep, sb.b.Stream)
		sb.kept = true
	}
	return nil
}

// serveBinary serves a Binary version the caller may read (serveVersion):
// its content, or the resource with its data when FHIR JSON is asked for.
func (s *Server) serveBinary(w http.ResponseWriter, r *http.Request, rec store.Record) error {
	doc, err := fhir.DecodeStored(rec.Body)
	if err != nil {
		return err
	}
	sum, size, ok := fhir.BinaryContent(doc)
	contentType, _ := doc["contentType"].(string)
	if !ok {
		return s.serveInlineBinary(w, r, rec, doc, contentType)
	}
	b, err := s.contentOf(r, rec, doc, sum, size)
	if err != nil {
		return err
	}
	if wantsResource(r, contentType) {
		if b.Size > s.cfg.MaxBinaryResource {
			return httpErr(http.StatusRequestEntityTooLarge, fhir.CodeTooLong, fmt.Sprintf(
				"the content is %d bytes, more than the %d served inside a Binary resource; ask for its own media type instead of FHIR JSON", b.Size, s.cfg.MaxBinaryResource))
		}
		br, err := s.blobs.OpenBlob(r.Context(), b)
		if err != nil {
			return err
		}
		defer br.Close()
		data, err := io.ReadAll(br)
		if err != nil {
			return err
		}
		return s.serveRecord(w, r, withBinaryData(rec, data))
	}
	return s.serveBlob(w, r, rec, b, contentType, doc)
}

// wantsResource reports whether a Binary read asks for the Binary
// resource (FHIR JSON) rather than the content: _format, or an Accept of a
// FHIR JSON type that is not also the content's own type.
func wantsResource(r *http.Request, contentType string) bool {
	if r.URL.Query().Get("_format") != "" {
		return true
	}
	own, _, _ := mime.ParseMediaType(contentType)
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil || params["q"] == "0" || mt == own {
			continue
		}
		if fhirMediaType(mt) {
			return true
		}
	}
	return false
}

// withBinaryData returns rec with data in its body.
func withBinaryData(rec store.Record, data []byte) store.Record {
	body := bytes.TrimRight(rec.Body, " \n")
	out := make([]byte, 0, len(body)+base64.StdEncoding.EncodedLen(len(data))+16)
	out = append(out, body[:len(body)-1]...)
	out = append(out, `,"data":"`...)
	out = base64.StdEncoding.AppendEncode(out, data)
	out = append(out, `"}`...)
	rec.Body = out
	return rec
}

// serveInlineBinary serves a Binary that holds its data inline.
func (s *Server) serveInlineBinary(w http.ResponseWriter, r *http.Request, rec store.Record, doc map[string]any, contentType string) error {
	if wantsResource(r, contentType) {
		return s.serveRecord(w, r, rec)
	}
	data, _ := doc["data"].(string)
	content, err := base64.StdEncoding.DecodeString(data)
	if err != nil {
		return err
	}
	s.setVersionHeaders(w, rec)
	if contentType == "" {
		contentType = "application/octet-stream"
	}
	w.Header().Set("Content-Type", contentType)
	http.ServeContent(w, r, "", rec.Updated, bytes.NewReader(content))
	return nil
}

// serveBlob streams a Binary's content, with Range support. The request
// is audited before the first byte goes out (the content is not held in
// memory until then); a chunk that fails to open midway cuts the response
// short, which the client sees against its Content-Length.
func (s *Server) serveBlob(w http.ResponseWriter, r *http.Request, rec store.Record, b sealed.Blob, contentType string, doc map[string]any) error {
	s.setVersionHeaders(w, rec)
	if inm := r.Header.Get("If-None-Match"); inm != "" {
		if v, ok := parseETag(inm); ok && v == rec.Version {
			w.WriteHeader(http.StatusNotModified)
			return nil
		}
	}
	br, err := s.blobs.OpenBlob(r.Context(), b)
	if err != nil {
		return err
	}
	defer br.Close()
	// Open the first chunk to be served now, so that a content that
	// cannot be read is answered with an OperationOutcome, not a 200 cut
	// short.
	if first := rangeStart(r.Header.Get("Range"), b.Size); first < b.Size && r.Method != http.MethodHead {
		if _, err := br.Seek(first, io.SeekStart); err != nil {
			return err
		}
		if _, err := br.Read(make([]byte, 1)); err != nil {
			return err
		}
	}
	out, err := s.unheld(w, r, http.StatusOK)
	if err != nil {
		return err
	}
	if contentType == "" {
		contentType = "application/octet-stream"
	}
	out.Header().Set("Content-Type", contentType)
	if sc, _ := doc["securityContext"].(map[string]any); sc != nil {
		if ref, _ := sc["reference"].(string); ref != "" {
			out.Header().Set("X-Security-Context", ref)
		}
	}
	if d := s.cfg.BinaryTimeout; d > 0 {
		http.NewResponseController(out).SetWriteDeadline(time.Now().Add(d))
	}
	cr := &countingReader{rs: br}
	http.ServeContent(out, r, "", rec.Updated, cr)
	if cr.err != nil && !errors.Is(cr.err, io.EOF) && r.Context().Err() == nil {
		id := errorID()
		if errors.Is(cr.err, keys.ErrIntegrity) {
			s.metrics.integrity.Inc()
		}
		s.log.ErrorContext(r.Context(), "Binary content read failed midway; response cut short",
			slog.String("error_id", id), slog.Any("error", cr.err))
	}
	return nil
}

// countingReader keeps the first error of the reader http.ServeContent
// copies from.
type countingReader struct {
	rs  io.ReadSeeker
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.rs.Read(p)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

func (c *countingReader) Seek(off int64, whence int) (int64, error) { return c.rs.Seek(off, whence) }

// rangeStart returns the first byte a Range header asks for (0 without
// one, or when it is not a single byte range: http.ServeContent decides).
func rangeStart(h string, size int64) int64 {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return 0
	}
	from, to, _ := strings.Cut(strings.TrimSpace(spec), "-")
	if from == "" {
		n, err := strconv.ParseInt(to, 10, 64)
		if err != nil || n <= 0 {
			return 0
		}
		return max(size-n, 0)
	}
	n, err := strconv.ParseInt(from, 10, 64)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// attachmentDigests are the digests R4's Attachment.hash may carry: SHA-1
// as R4 defines it, or SHA-256.
func attachmentDigest(hash []byte, b sealed.Blob) (match, known bool) {
	switch len(hash) {
	case sha1.Size:
		return bytes.Equal(hash, b.SHA1[:]), true
	case sha256.Size:
		return bytes.Equal(hash, b.SHA256[:]), true
	}
	return false, false
}

// checkAttachments checks the hash and size of every Attachment of res
// (DocumentReference.content.attachment and the like) whose url names a
// Binary on this server, or that carries its data inline, against that
// content: a mismatch is refused (422). An Attachment without hash and
// size, or pointing elsewhere, is not checked.
func (s *Server) checkAttachments(r *http.Request, res *fhir.Resource) error {
	if res.Type == "Binary" {
		return nil
	}
	var issues []fhir.Issue
	var firstErr error
	walkAttachments(res.Doc, res.Type, func(path string, att map[string]any) {
		hashS, hasHash := att["hash"].(string)
		sizeV, hasSize := att["size"]
		if !hasHash && !hasSize {
			return
		}
		bad := func(field, msg string) {
			issues = append(issues, fhir.Issue{Severity: fhir.SeverityError, Code: fhir.CodeValue, Expression: path + "." + field, Details: msg})
		}
		var hash []byte
		if hasHash {
			var err error
			if hash, err = base64.StdEncoding.DecodeString(hashS); err != nil || (len(hash) != sha1.Size && len(hash) != sha256.Size) {
				bad("hash", "hash must be the base64 SHA-1 (R4) or SHA-256 of the data")
				return
			}
		}
		var size int64 = -1
		if hasSize {
			n, err := strconv.ParseInt(fmt.Sprint(sizeV), 10, 64)
			if err != nil || n < 0 {
				bad("size", "size must be a non-negative integer")
				return
			}
			size = n
		}
		var got sealed.Blob
		if data, ok := att["data"].(string); ok {
			content, err := base64.StdEncoding.DecodeString(data)
			if err != nil {
				return // the parser reports bad base64
			}
			got = sealed.Blob{Size: int64(len(content)), SHA256: sha256.Sum256(content), SHA1: sha1.Sum(content)}
		} else {
			url, _ := att["url"].(string)
			b, found, err := s.attachedBlob(r, url)
			if err != nil {
				firstErr = err
				return
			}
			if !found {
				return
			}
			if b == nil {
				bad("url", "url names a Binary that does not exist on this server")
				return
			}
			got = *b
		}
		if size >= 0 && size != got.Size {
			bad("size", fmt.Sprintf("size is %d but the data is %d bytes", size, got.Size))
		}
		if hash != nil {
			if ok, _ := attachmentDigest(hash, got); !ok {
				bad("hash", "hash does not match the data")
			}
		}
	})
	if firstErr != nil {
		return firstErr
	}
	if len(issues) > 0 {
		return &fhir.Error{Status: http.StatusUnprocessableEntity, Issues: issues}
	}
	return nil
}

// attachedBlob returns the content of the Binary an Attachment's url
// names on this server (Binary/{id}, or Binary/{id}/_history/{vid}, as
// relative or absolute URL): found is false for a url elsewhere; a nil
// Blob when it names no Binary, or one the caller may not read.
func (s *Server) attachedBlob(r *http.Request, url string) (*sealed.Blob, bool, error) {
	base := s.base(r)
	path := url
	if rest, ok := strings.CutPrefix(url, base+"/"); ok {
		path = rest
	}
	parts := strings.Split(path, "/")
	if len(parts) != 2 && len(parts) != 4 || parts[0] != "Binary" || len(parts) == 4 && parts[2] != "_history" {
		return nil, false, nil
	}
	if !fhir.ValidID(parts[1]) {
		return nil, true, nil
	}
	k := store.Key{Type: "Binary", ID: parts[1]}
	var rec store.Record
	var err error
	if len(parts) == 4 {
		v, perr := strconv.ParseInt(parts[3], 10, 64)
		if perr != nil || v < 1 {
			return nil, true, nil
		}
		rec, err = s.store.GetVersion(r.Context(), k, v)
	} else {
		rec, err = s.current(r, k)
	}
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrErased) || err == nil && rec.Deleted {
		return nil, true, nil
	}
	if err != nil {
		return nil, true, err
	}
	// Checking a digest tells whether the content matches: only for a
	// caller who may read the Binary.
	comps, err := s.compartmentsOf(rec, nil, base)
	if err != nil {
		return nil, true, err
	}
	if _, err := s.decide(r, "read", policy.Resource{Type: "Binary", ID: rec.ID, Compartments: comps}); err != nil {
		return nil, true, nil
	}
	doc, err := fhir.DecodeStored(rec.Body)
	if err != nil {
		return nil, true, err
	}
	sum, size, ok := fhir.BinaryContent(doc)
	if !ok {
		data, _ := doc["data"].(string)
		content, _ := base64.StdEncoding.DecodeString(data)
		return &sealed.Blob{Size: int64(len(content)), SHA256: sha256.Sum256(content), SHA1: sha1.Sum(content)}, true, nil
	}
	b, err := s.contentOf(r, rec, doc, sum, size)
	if err != nil {
		return nil, true, err
	}
	return &b, true, nil
}

// contentOf returns the content a stored Binary version (doc) records
// with digest sum and size: one its request's transaction staged, or the
// one stored under the data key of the Binary's owner.
func (s *Server) contentOf(r *http.Request, rec store.Record, doc map[string]any, sum [sha256.Size]byte, size int64) (sealed.Blob, error) {
	keyID := s.blobs.KeyID(s.params.Owner("Binary", rec.ID, doc, s.base(r)))
	if p := pendingFrom(r); p != nil {
		if sb := p.blobs[sealed.BlobCell(keyID, sum)]; sb != nil {
			return sb.b, nil // written by this transaction
		}
	}
	b, cellVersion, err := s.blobs.FindBlob(r.Context(), keyID, sum)
	if err != nil {
		return sealed.Blob{}, err
	}
	if cellVersion == 0 || b.Size != size {
		return sealed.Blob{}, fmt.Errorf("gateway: the content of %s is missing: %w", versionRef(rec), keys.ErrIntegrity)
	}
	return b, nil
}

// walkAttachments calls fn for every Attachment-shaped object of a
// resource (one with url or data, and hash or size), with its path.
func walkAttachments(v any, path string, fn func(path string, att map[string]any)) {
	switch t := v.(type) {
	case map[string]any:
		_, url := t["url"].(string)
		_, data := t["data"].(string)
		_, hash := t["hash"]
		_, size := t["size"]
		if (url || data) && (hash || size) {
			fn(path, t)
			return
		}
		for k, e := range t {
			if k == "contained" {
				continue
			}
			switch e.(type) {
			case map[string]any, []any:
				walkAttachments(e, path+"."+k, fn)
			}
		}
	case []any:
		for i, e := range t {
			walkAttachments(e, path+"["+strconv.Itoa(i)+"]", fn)
		}
	}
}
