package gateway

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/fhirgate/fhirgate/fhir"
)

// batch processes each entry as the request it describes, independently:
// one failing does not stop the others. A fullUrl an earlier entry
// created is rewritten in later entries all the same (processing order:
// DELETE, POST, PUT, GET), and conditional references are resolved.
func (s *Server) batch(r *http.Request, entries []bundleEntry) ([]responseEntry, error) {
	out := make([]responseEntry, len(entries))
	rw := newRewriter(s, r)
	for _, i := range processingOrder(entries) {
		e := entries[i]
		t, err := s.parseEntryURL(r, e.Request.URL)
		if err != nil {
			out[i] = s.errorEntry(r, fhir.Errorf(http.StatusBadRequest, fhir.CodeInvalid, fmt.Sprintf("Bundle.entry[%d].request.url", i), "%v", err))
			continue
		}
		body := e.Resource
		if len(body) > 0 {
			if body, err = rw.rewrite(body, fmt.Sprintf("Bundle.entry[%d].resource", i)); err != nil {
				out[i] = s.errorEntry(r, err)
				continue
			}
		}
		out[i] = s.subRequest(r, e, body)
		if loc := out[i].Response.Location; loc != "" && e.FullURL != "" && (e.Request.Method == http.MethodPost || e.Request.Method == http.MethodPut) {
			if segs := strings.Split(loc, "/"); len(segs) >= 2 && segs[0] == t.typ {
				rw.mapFullURL(e.FullURL, segs[0], segs[1])
			}
		}
	}
	return out, nil
}

// recorder keeps a sub-request's response.
type recorder struct {
	h    http.Header
	code int
	body bytes.Buffer
}

func newRecorder() *recorder { return &recorder{h: http.Header{}} }

func (w *recorder) Header() http.Header { return w.h }

func (w *recorder) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}

func (w *recorder) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.body.Write(b)
}

// errorEntry is the response entry of an entry that failed before it was
// sent: err's status and OperationOutcome.
func (s *Server) errorEntry(r *http.Request, err error) responseEntry {
	rec := newRecorder()
	s.writeError(rec, r, err)
	return responseEntry{Response: entryResponse{Status: statusLine(rec.code), Outcome: bytes.Clone(rec.body.Bytes())}}
}

// subRequest runs an entry as its own request through the whole server
// (authentication, policy, audit), as the same client, and turns its
// response into a response entry.
func (s *Server) subRequest(r *http.Request, e bundleEntry, body []byte) responseEntry {
	base := s.base(r)
	rel := strings.TrimPrefix(strings.TrimPrefix(e.Request.URL, base+"/"), "/")
	sub, err := http.NewRequestWithContext(r.Context(), e.Request.Method, "/fhir/"+rel, bytes.NewReader(body))
	if err != nil {
		return s.errorEntry(r, httpErr(http.StatusBadRequest, fhir.CodeInvalid, "request.url is not a valid URL"))
	}
	sub.Host, sub.RemoteAddr, sub.TLS = r.Host, r.RemoteAddr, r.TLS
	if v := r.Header.Get("Authorization"); v != "" {
		sub.Header.Set("Authorization", v)
	}
	if len(body) > 0 {
		sub.Header.Set("Content-Type", "application/fhir+json")
	}
	for h, v := range map[string]string{"If-None-Exist": e.Request.IfNoneExist, "If-Match": e.Request.IfMatch,
		"If-None-Match": e.Request.IfNoneMatch, "If-Modified-Since": httpDate(e.Request.IfModifiedSince)} {
		if v != "" {
			sub.Header.Set(h, v)
		}
	}
	want := preferReturn(r)
	if !bundlePreferRepresentation(r) && want == "representation" {
		want = "minimal"
	}
	sub.Header.Set("Prefer", "return="+want)
	rec := newRecorder()
	s.router.ServeHTTP(rec, sub)
	if rec.code == 0 {
		rec.code = http.StatusOK
	}
	out := responseEntry{Response: entryResponse{Status: statusLine(rec.code)}}
	if loc := rec.h.Get("Location"); loc != "" {
		rel := strings.TrimPrefix(loc, base+"/")
		out.Response.Location = rel
		if segs := strings.Split(rel, "/"); len(segs) >= 2 {
			out.FullURL = base + "/" + segs[0] + "/" + segs[1]
		}
	}
	out.Response.Etag = rec.h.Get("ETag")
	if lm := rec.h.Get("Last-Modified"); lm != "" {
		if t, err := http.ParseTime(lm); err == nil {
			out.Response.LastModified = t.UTC().Format(time.RFC3339)
		}
	}
	b := bytes.Clone(rec.body.Bytes())
	switch {
	case len(b) == 0:
	case rec.code >= 400:
		out.Response.Outcome = b
	case e.Request.Method == http.MethodGet || bytes.Contains(b[:min(len(b), 40)], []byte(`"resourceType":"OperationOutcome"`)) && want == "OperationOutcome":
		if e.Request.Method == http.MethodGet {
			out.Resource = b
		} else {
			out.Response.Outcome = b
		}
	case want == "representation":
		out.Resource = b
	}
	return out
}

// httpDate turns an R4 instant (request.ifModifiedSince) into an HTTP date.
func httpDate(v string) string {
	if v == "" {
		return ""
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return v
	}
	return t.UTC().Format(http.TimeFormat)
}
