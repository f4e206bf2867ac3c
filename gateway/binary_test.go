package gateway_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/gateway"
	"github.com/fhirgate/fhirgate/internal/keys"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/sealed"
	"github.com/fhirgate/fhirgate/internal/store/sealed/sealedtest"
)

// streamLog is a backend that records the blob streams written through
// it, so that a test can tell what an upload left in the store.
type streamLog struct {
	store.Store
	blobs   store.Blobs
	mu      sync.Mutex
	streams []string
	tamper  map[int]int
	// commitErr, if set, fails every Commit that keeps a stream, without
	// committing.
	commitErr error
}

func (l *streamLog) Commit(ctx context.Context, c store.Commit) error {
	l.mu.Lock()
	err := l.commitErr
	l.mu.Unlock()
	if err != nil && len(c.Keep) > 0 {
		return err
	}
	return l.Store.Commit(ctx, c)
}

func (l *streamLog) PutChunk(ctx context.Context, stream string, i int, chunk []byte) error {
	l.mu.Lock()
	if len(l.streams) == 0 || l.streams[len(l.streams)-1] != stream {
		l.streams = append(l.streams, stream)
	}
	l.mu.Unlock()
	return l.blobs.PutChunk(ctx, stream, i, chunk)
}

// GetChunk reads chunk i, or what the test's tamper map puts in its place:
// the chunk of another index, or none (-1), as a backend altered behind
// the gateway's back would.
func (l *streamLog) GetChunk(ctx context.Context, stream string, i int) ([]byte, error) {
	l.mu.Lock()
	j, ok := l.tamper[i]
	l.mu.Unlock()
	if ok && j < 0 {
		return nil, store.ErrNotFound
	}
	if ok {
		i = j
	}
	return l.blobs.GetChunk(ctx, stream, i)
}

// setTamper replaces the tamper map (nil: none).
func (l *streamLog) setTamper(m map[int]int) {
	l.mu.Lock()
	l.tamper = m
	l.mu.Unlock()
}

func (l *streamLog) DropStream(ctx context.Context, stream string) error {
	return l.blobs.DropStream(ctx, stream)
}

// written returns the streams written so far.
func (l *streamLog) written() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.streams...)
}

// left returns the streams written that still hold a chunk 0.
func (l *streamLog) left(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, s := range l.written() {
		_, err := l.blobs.GetChunk(t.Context(), s, 0)
		switch {
		case err == nil:
			out = append(out, s)
		case !errors.Is(err, store.ErrNotFound):
			t.Fatal(err)
		}
	}
	return out
}

// eachBlobStore runs fn against a sealed boltstore and a sealed
// redisstore, each over a streamLog.
func eachBlobStore(t *testing.T, fn func(t *testing.T, st *sealed.Store, log *streamLog)) {
	wrap := func(t *testing.T, backend store.Store) {
		log := &streamLog{Store: backend, blobs: backend.(store.Blobs)}
		fn(t, sealedtest.Wrap(t, log), log)
	}
	t.Run("bolt", func(t *testing.T) { wrap(t, boltBackend(t)) })
	t.Run("redis", func(t *testing.T) { wrap(t, redisBackend(t)) })
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// upload sends content as a raw Binary body.
func (s *server) upload(t *testing.T, method, path string, content []byte, hdr ...string) response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, s.base+path, bytes.NewReader(content))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := s.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: res.StatusCode, header: res.Header, body: b}
}

// binaryMeta returns the SHA-256 and size a Binary resource records.
func binaryMeta(t *testing.T, r map[string]any) (string, string) {
	t.Helper()
	meta, _ := r["meta"].(map[string]any)
	exts, _ := meta["extension"].([]any)
	var sum, size string
	for _, e := range exts {
		m := e.(map[string]any)
		switch m["url"] {
		case fhir.BinarySHA256URL:
			sum, _ = m["valueBase64Binary"].(string)
		case fhir.BinarySizeURL:
			if n, ok := m["valueUnsignedInt"].(float64); ok {
				size = strconv.FormatInt(int64(n), 10)
			}
		}
	}
	return sum, size
}

func sha256b64(b []byte) string {
	s := sha256.Sum256(b)
	return base64.StdEncoding.EncodeToString(s[:])
}

func sha1b64(b []byte) string {
	s := sha1.Sum(b)
	return base64.StdEncoding.EncodeToString(s[:])
}

func TestBinaryRoundTrip(t *testing.T) {
	eachBlobStore(t, func(t *testing.T, st *sealed.Store, log *streamLog) {
		s := newServer(t, gateway.Config{Store: st})
		s.put(t, "/Patient/p1", matrixPatient("p1"))
		content := randomBytes(3*sealed.ChunkSize + 12345)

		r := s.upload(t, http.MethodPost, "/Binary", content, "Content-Type", "application/pdf", "X-Security-Context", "Patient/p1").want(t, http.StatusCreated)
		bin := r.resource(t)
		id, _ := bin["id"].(string)
		if bin["resourceType"] != "Binary" || bin["contentType"] != "application/pdf" || bin["data"] != nil {
			t.Fatalf("created Binary = %s", r.body)
		}
		if sc, _ := bin["securityContext"].(map[string]any); sc["reference"] != "Patient/p1" {
			t.Errorf("securityContext = %v", bin["securityContext"])
		}
		if sum, size := binaryMeta(t, bin); sum != sha256b64(content) || size != strconv.Itoa(len(content)) {
			t.Errorf("recorded sha256 %s size %s; want %s %d", sum, size, sha256b64(content), len(content))
		}
		if loc := r.header.Get("Location"); !strings.HasSuffix(loc, "/Binary/"+id+"/_history/1") {
			t.Errorf("Location = %q", loc)
		}

		got := s.do(t, http.MethodGet, "/Binary/"+id, "").want(t, http.StatusOK)
		if !bytes.Equal(got.body, content) {
			t.Fatalf("read %d bytes, not the %d uploaded", len(got.body), len(content))
		}
		if ct := got.header.Get("Content-Type"); ct != "application/pdf" {
			t.Errorf("Content-Type = %q", ct)
		}
		if got.header.Get("ETag") != `W/"1"` || got.header.Get("X-Security-Context") != "Patient/p1" || got.header.Get("Accept-Ranges") != "bytes" {
			t.Errorf("headers = %v", got.header)
		}
		s.do(t, http.MethodGet, "/Binary/"+id, "", "If-None-Match", `W/"1"`).want(t, http.StatusNotModified)
		head := s.do(t, http.MethodHead, "/Binary/"+id, "").want(t, http.StatusOK)
		if head.header.Get("Content-Length") != strconv.Itoa(len(content)) || len(head.body) != 0 {
			t.Errorf("HEAD: Content-Length %q, %d body bytes", head.header.Get("Content-Length"), len(head.body))
		}

		// The resource form, with the data.
		for _, hdr := range [][]string{{"Accept", "application/fhir+json"}, {"Accept", "application/json"}} {
			res := s.do(t, http.MethodGet, "/Binary/"+id, "", hdr...).want(t, http.StatusOK).resource(t)
			data, _ := base64.StdEncoding.DecodeString(fmt.Sprint(res["data"]))
			if !bytes.Equal(data, content) || res["contentType"] != "application/pdf" {
				t.Errorf("Accept %s: data of %d bytes, contentType %v", hdr[1], len(data), res["contentType"])
			}
		}
		res := s.do(t, http.MethodGet, "/Binary/"+id+"?_format=json", "").want(t, http.StatusOK).resource(t)
		if res["data"] == nil {
			t.Error("_format=json: no data")
		}

		// A new version; the old one stays readable.
		v2 := randomBytes(100)
		s.upload(t, http.MethodPut, "/Binary/"+id, v2, "Content-Type", "text/plain", "X-Security-Context", "Patient/p1").want(t, http.StatusOK)
		if got := s.do(t, http.MethodGet, "/Binary/"+id, "").want(t, http.StatusOK); !bytes.Equal(got.body, v2) || got.header.Get("ETag") != `W/"2"` {
			t.Errorf("after update: %d bytes, ETag %s", len(got.body), got.header.Get("ETag"))
		}
		if got := s.do(t, http.MethodGet, "/Binary/"+id+"/_history/1", "").want(t, http.StatusOK); !bytes.Equal(got.body, content) {
			t.Errorf("vread 1: %d bytes", len(got.body))
		}
		// The same content again is no new version, and stores nothing.
		n := len(log.written())
		s.upload(t, http.MethodPut, "/Binary/"+id, v2, "Content-Type", "text/plain", "X-Security-Context", "Patient/p1").want(t, http.StatusOK)
		if got := s.do(t, http.MethodGet, "/Binary/"+id, "").header.Get("ETag"); got != `W/"2"` {
			t.Errorf("same content again: ETag %s", got)
		}
		if left := log.left(t); len(left) != 2 || len(log.written()) != n+1 {
			t.Errorf("streams left %d (want the 2 versions'), written %d (want %d)", len(left), len(log.written()), n+1)
		}

		// An empty file, and the resource form on the way in.
		e := s.upload(t, http.MethodPost, "/Binary", nil, "Content-Type", "text/plain").want(t, http.StatusCreated).resource(t)
		if got := s.do(t, http.MethodGet, "/Binary/"+e["id"].(string), "").want(t, http.StatusOK); len(got.body) != 0 {
			t.Errorf("empty Binary read %d bytes", len(got.body))
		}
		small := []byte("%PDF-1.7 small")
		j := s.do(t, http.MethodPost, "/Binary", `{"resourceType":"Binary","contentType":"application/pdf","securityContext":{"reference":"Patient/p1"},"data":"`+base64.StdEncoding.EncodeToString(small)+`"}`).want(t, http.StatusCreated).resource(t)
		if sum, _ := binaryMeta(t, j); sum != sha256b64(small) || j["data"] != nil {
			t.Errorf("resource form upload stored %v", j)
		}
		if got := s.do(t, http.MethodGet, "/Binary/"+j["id"].(string), "", "Accept", "application/pdf").want(t, http.StatusOK); !bytes.Equal(got.body, small) {
			t.Errorf("resource form upload reads back %q", got.body)
		}
	})
}

func TestBinaryRange(t *testing.T) {
	eachBlobStore(t, func(t *testing.T, st *sealed.Store, _ *streamLog) {
		s := newServer(t, gateway.Config{Store: st})
		content := randomBytes(2*sealed.ChunkSize + 777)
		id := s.upload(t, http.MethodPost, "/Binary", content, "Content-Type", "image/png").want(t, http.StatusCreated).resource(t)["id"].(string)
		size := len(content)
		c := sealed.ChunkSize
		for _, test := range []struct {
			rng      string
			from, to int // inclusive
		}{
			{"bytes=0-0", 0, 0},
			{"bytes=0-9", 0, 9},
			{fmt.Sprintf("bytes=%d-%d", c-5, c+5), c - 5, c + 5}, // across a chunk boundary
			{fmt.Sprintf("bytes=%d-%d", c, 2*c-1), c, 2*c - 1},   // one whole chunk
			{fmt.Sprintf("bytes=%d-", 2*c+10), 2*c + 10, size - 1},
			{"bytes=-100", size - 100, size - 1},
			{fmt.Sprintf("bytes=%d-%d", size-1, size+1000), size - 1, size - 1},
		} {
			r := s.do(t, http.MethodGet, "/Binary/"+id, "", "Range", test.rng).want(t, http.StatusPartialContent)
			if !bytes.Equal(r.body, content[test.from:test.to+1]) {
				t.Errorf("%s: got %d bytes, not bytes %d-%d", test.rng, len(r.body), test.from, test.to)
			}
			if want := fmt.Sprintf("bytes %d-%d/%d", test.from, test.to, size); r.header.Get("Content-Range") != want {
				t.Errorf("%s: Content-Range %q, want %q", test.rng, r.header.Get("Content-Range"), want)
			}
		}
		// Two ranges: a multipart answer with exactly those bytes.
		r := s.do(t, http.MethodGet, "/Binary/"+id, "", "Range", fmt.Sprintf("bytes=1-3,%d-%d", c, c+2)).want(t, http.StatusPartialContent)
		if !bytes.Contains(r.body, content[1:4]) || !bytes.Contains(r.body, content[c:c+3]) || !strings.HasPrefix(r.header.Get("Content-Type"), "multipart/byteranges") {
			t.Errorf("multi-range: %s, %d bytes", r.header.Get("Content-Type"), len(r.body))
		}
		s.do(t, http.MethodGet, "/Binary/"+id, "", "Range", fmt.Sprintf("bytes=%d-", size)).want(t, http.StatusRequestedRangeNotSatisfiable)
	})
}

func TestBinaryLimits(t *testing.T) {
	eachBlobStore(t, func(t *testing.T, st *sealed.Store, log *streamLog) {
		const max = 2*sealed.ChunkSize + 10
		s := newServer(t, gateway.Config{Store: st, MaxBinary: max, MaxBinaryResource: 1000})
		// Too large, said up front (Content-Length) or found while
		// streaming (chunked): 413, nothing stored.
		s.upload(t, http.MethodPost, "/Binary", randomBytes(max+1), "Content-Type", "application/dicom").wantOutcome(t, http.StatusRequestEntityTooLarge)
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, s.base+"/Binary", io.MultiReader(bytes.NewReader(randomBytes(max)), strings.NewReader("x")))
		req.Header.Set("Content-Type", "application/dicom")
		res, err := s.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusRequestEntityTooLarge || !bytes.Contains(body, []byte("OperationOutcome")) {
			t.Errorf("chunked upload over the limit: %d %s", res.StatusCode, body)
		}
		if len(log.written()) == 0 {
			t.Error("the chunked upload stored nothing before it was refused: the test does not test streaming")
		}
		if left := log.left(t); len(left) != 0 {
			t.Errorf("refused uploads left %d streams", len(left))
		}
		if n := s.typeHistoryTotal(t, "Binary"); n != 0 {
			t.Errorf("refused uploads made %d Binary versions", n)
		}
		// At the limit it is stored; as a resource it is too large.
		id := s.upload(t, http.MethodPost, "/Binary", randomBytes(max), "Content-Type", "application/dicom").want(t, http.StatusCreated).resource(t)["id"].(string)
		s.do(t, http.MethodGet, "/Binary/"+id, "", "Accept", "application/fhir+json").wantOutcome(t, http.StatusRequestEntityTooLarge)
		if r := s.do(t, http.MethodGet, "/Binary/"+id, "").want(t, http.StatusOK); len(r.body) != max {
			t.Errorf("read %d bytes", len(r.body))
		}
	})
}

// TestBinaryInterruptedUpload: a client that hangs up halfway leaves
// nothing behind, visible or not.
func TestBinaryInterruptedUpload(t *testing.T) {
	eachBlobStore(t, func(t *testing.T, st *sealed.Store, log *streamLog) {
		s := newServer(t, gateway.Config{Store: st})
		u, _ := url.Parse(s.base)
		conn, err := net.Dial("tcp", u.Host)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "POST /fhir/Binary HTTP/1.1\r\nHost: %s\r\nContent-Type: application/pdf\r\nContent-Length: %d\r\n\r\n", u.Host, 10*sealed.ChunkSize)
		conn.Write(randomBytes(3*sealed.ChunkSize + 5))
		// Wait until the server has stored some chunks, then hang up.
		waitFor(t, func() bool { return len(log.written()) > 0 })
		conn.Close()
		waitFor(t, func() bool { return len(log.left(t)) == 0 })
		if n := s.typeHistoryTotal(t, "Binary"); n != 0 {
			t.Errorf("an interrupted upload made %d Binary versions", n)
		}
	})
}

// TestBinaryDedup: one content is stored once per data key, never shared
// between patients.
func TestBinaryDedup(t *testing.T) {
	eachBlobStore(t, func(t *testing.T, st *sealed.Store, log *streamLog) {
		s := newServer(t, gateway.Config{Store: st})
		content := randomBytes(sealed.ChunkSize + 1)
		var ids []string
		for _, p := range []string{"Patient/a", "Patient/a", "Patient/b"} {
			ids = append(ids, s.upload(t, http.MethodPost, "/Binary", content, "Content-Type", "image/jpeg", "X-Security-Context", p).want(t, http.StatusCreated).resource(t)["id"].(string))
		}
		if left := log.left(t); len(left) != 2 {
			t.Errorf("%d streams kept for one content of two patients, want 2", len(left))
		}
		for _, id := range ids {
			if r := s.do(t, http.MethodGet, "/Binary/"+id, "").want(t, http.StatusOK); !bytes.Equal(r.body, content) {
				t.Errorf("Binary/%s reads %d bytes", id, len(r.body))
			}
		}
	})
}

// TestBinaryChunksTampered: a chunk swapped with another, or dropped, is
// detected on read.
func TestBinaryChunksTampered(t *testing.T) {
	eachBlobStore(t, func(t *testing.T, st *sealed.Store, log *streamLog) {
		ctx := t.Context()
		s := newServer(t, gateway.Config{Store: st})
		content := randomBytes(3*sealed.ChunkSize + 100)
		id := s.upload(t, http.MethodPost, "/Binary", content, "Content-Type", "application/pdf").want(t, http.StatusCreated).resource(t)["id"].(string)
		read := func(hdr ...string) response { return s.do(t, http.MethodGet, "/Binary/"+id, "", hdr...) }
		from := func(i int) string { return fmt.Sprintf("bytes=%d-", i*sealed.ChunkSize) }
		// Swapped: the first chunk served fails before the response starts.
		log.setTamper(map[int]int{0: 1, 1: 0})
		read().wantOutcome(t, http.StatusInternalServerError)
		read("Range", from(1)).wantOutcome(t, http.StatusInternalServerError)
		// The last chunk in the place of the one before it, and the one
		// before in the last's.
		log.setTamper(map[int]int{2: 3})
		read("Range", from(2)).wantOutcome(t, http.StatusInternalServerError)
		log.setTamper(map[int]int{3: 2})
		read("Range", from(3)).wantOutcome(t, http.StatusInternalServerError)
		// Dropped: the first chunk, or the last, or one midway, which cuts
		// the download short (the client sees it against Content-Length).
		for _, i := range []int{0, 3} {
			log.setTamper(map[int]int{i: -1})
			read("Range", from(i)).wantOutcome(t, http.StatusInternalServerError)
		}
		log.setTamper(map[int]int{2: -1})
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.base+"/Binary/"+id, nil)
		res, err := s.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err == nil || len(got) >= len(content) {
			t.Errorf("a download with a dropped chunk read %d bytes, err %v; want it cut short", len(got), err)
		}
		if !bytes.Equal(got, content[:len(got)]) {
			t.Error("the bytes before the dropped chunk differ")
		}
		log.setTamper(nil)
		if r := read().want(t, http.StatusOK); !bytes.Equal(r.body, content) {
			t.Error("untampered chunks do not read back")
		}
	})
}

func TestAttachmentDigest(t *testing.T) {
	eachBlobStore(t, func(t *testing.T, st *sealed.Store, _ *streamLog) {
		s := newServer(t, gateway.Config{Store: st})
		s.put(t, "/Patient/p1", matrixPatient("p1"))
		content := randomBytes(5000)
		id := s.upload(t, http.MethodPost, "/Binary", content, "Content-Type", "application/pdf", "X-Security-Context", "Patient/p1").want(t, http.StatusCreated).resource(t)["id"].(string)
		docRef := func(url, hash string, size int) string {
			return fmt.Sprintf(`{"resourceType":"DocumentReference","status":"current","subject":{"reference":"Patient/p1"},
			  "content":[{"attachment":{"contentType":"application/pdf","url":%q,"hash":%q,"size":%d}}]}`, url, hash, size)
		}
		for _, good := range []string{
			docRef("Binary/"+id, sha1b64(content), len(content)),
			docRef(s.base+"/Binary/"+id, sha256b64(content), len(content)),
			docRef("Binary/"+id+"/_history/1", sha1b64(content), len(content)),
		} {
			s.do(t, http.MethodPost, "/DocumentReference", good).want(t, http.StatusCreated)
		}
		other := randomBytes(10)
		for name, bad := range map[string]string{
			"hash":        docRef("Binary/"+id, sha1b64(other), len(content)),
			"hash256":     docRef("Binary/"+id, sha256b64(other), len(content)),
			"size":        docRef("Binary/"+id, sha1b64(content), len(content)+1),
			"no binary":   docRef("Binary/nope", sha1b64(content), len(content)),
			"bad hash":    docRef("Binary/"+id, base64.StdEncoding.EncodeToString([]byte("short")), len(content)),
			"inline data": `{"resourceType":"DocumentReference","status":"current","content":[{"attachment":{"data":"aGVsbG8=","size":6}}]}`,
		} {
			r := s.do(t, http.MethodPost, "/DocumentReference", bad)
			if r.status != http.StatusUnprocessableEntity {
				t.Errorf("%s: %d %s, want 422", name, r.status, r.body)
			}
		}
		if n := s.typeHistoryTotal(t, "DocumentReference"); n != 3 {
			t.Errorf("%d DocumentReference versions stored, want the 3 good ones", n)
		}
		// An attachment elsewhere is not checked.
		s.do(t, http.MethodPost, "/DocumentReference", docRef("https://elsewhere.example/doc.pdf", sha1b64(other), 1)).want(t, http.StatusCreated)
	})
}

// TestBinaryAccess: a Binary follows the rules of its securityContext's
// patient, whether it names the Patient or a resource of theirs; each
// access is audited; erasure makes the chunks unreadable.
func TestBinaryAccess(t *testing.T) {
	eachBlobStore(t, func(t *testing.T, st *sealed.Store, log *streamLog) {
		a := newAuthServer(t, st)
		sys := a.tok(t, "", "system/*.*", "")
		for _, p := range []string{"A", "B"} {
			a.as(t, sys, http.MethodPut, "/Patient/"+p, matrixPatient(p)).want(t, http.StatusCreated)
		}
		docA := a.createAs(t, sys, "DocumentReference", `{"resourceType":"DocumentReference","status":"current","subject":{"reference":"Patient/A"},"content":[{"attachment":{"contentType":"application/pdf"}}]}`)
		content := randomBytes(sealed.ChunkSize + 3)
		up := func(token, sc string) response {
			return a.upload(t, http.MethodPost, "/Binary", content, "Authorization", "Bearer "+token, "Content-Type", "application/pdf", "X-Security-Context", sc)
		}
		byPatient := up(sys, "Patient/A").want(t, http.StatusCreated).resource(t)["id"].(string)
		byDoc := up(sys, "DocumentReference/"+docA).want(t, http.StatusCreated).resource(t)["id"].(string)
		up(sys, "DocumentReference/nope").wantOutcome(t, http.StatusUnprocessableEntity)

		patA := a.tok(t, "Patient/A", "patient/*.read patient/Binary.write", "")
		patB := a.tok(t, "Patient/B", "patient/*.read patient/Binary.write", "")
		for _, id := range []string{byPatient, byDoc} {
			if r := a.as(t, patA, http.MethodGet, "/Binary/"+id, "").want(t, http.StatusOK); !bytes.Equal(r.body, content) {
				t.Errorf("A reads %d bytes of Binary/%s", len(r.body), id)
			}
			a.as(t, patB, http.MethodGet, "/Binary/"+id, "").wantOutcome(t, http.StatusForbidden)
			a.as(t, patB, http.MethodGet, "/Binary/"+id, "", "Accept", "application/fhir+json").wantOutcome(t, http.StatusForbidden)
		}
		// B may not put a file into A's record: refused before it is stored.
		n := len(log.written())
		up(patB, "Patient/A").wantOutcome(t, http.StatusForbidden)
		if len(log.written()) != n {
			t.Error("a refused upload was streamed to the store")
		}

		// A's reads of their Binaries are in A's audit trail.
		trail := a.as(t, sys, http.MethodGet, "/AuditEvent?patient=Patient/A&entity=Binary/"+byDoc+"&_count=100", "").want(t, http.StatusOK).bundle(t)
		if trail.total(t) < 2 {
			t.Errorf("audit trail of Binary/%s has %d events, want the create and the reads", byDoc, trail.total(t))
		}

		// Erasure: the Binaries are gone, and their chunks no longer open.
		ctx := t.Context()
		var kept []sealed.Blob
		b, _, err := st.FindBlob(ctx, st.KeyID("Patient/A"), sha256.Sum256(content))
		if err != nil || b.Stream == "" {
			t.Fatalf("FindBlob: %+v, %v", b, err)
		}
		kept = append(kept, b)
		a.as(t, sys, http.MethodPost, "/Patient/A/$erase", "").want(t, http.StatusOK)
		for _, id := range []string{byPatient, byDoc} {
			if r := a.as(t, sys, http.MethodGet, "/Binary/"+id, ""); r.status != http.StatusGone {
				t.Errorf("Binary/%s after erasure: %d", id, r.status)
			}
		}
		if left := log.left(t); len(left) != 0 {
			t.Errorf("%d streams of the erased patient's Binaries left", len(left))
		}
		for _, b := range kept {
			br, err := st.OpenBlob(ctx, b)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadAll(br); !errors.Is(err, store.ErrErased) && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, keys.ErrIntegrity) {
				t.Errorf("reading an erased patient's chunks: %v, want them unreadable", err)
			}
			br.Close()
		}
	})
}

// waitFor polls cond until it holds, failing the test after 10s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestBinaryInTransaction: a transaction's Binary entry (base64 data) is
// stored as any Binary is, and a DocumentReference of the same
// transaction may name it with its digest; a transaction that fails
// leaves none of its contents behind.
func TestBinaryInTransaction(t *testing.T) {
	eachBlobStore(t, func(t *testing.T, st *sealed.Store, log *streamLog) {
		s := newServer(t, gateway.Config{Store: st})
		content := randomBytes(sealed.ChunkSize + 99)
		tx := func(hash string) string {
			return `{"resourceType":"Bundle","type":"transaction","entry":[
			  {"fullUrl":"urn:uuid:6f3a2b1c-0000-4000-8000-000000000001","resource":{"resourceType":"Patient","name":[{"family":"Tx"}]},"request":{"method":"POST","url":"Patient"}},
			  {"fullUrl":"urn:uuid:6f3a2b1c-0000-4000-8000-000000000002","resource":{"resourceType":"Binary","contentType":"application/pdf",
			    "securityContext":{"reference":"urn:uuid:6f3a2b1c-0000-4000-8000-000000000001"},"data":"` + base64.StdEncoding.EncodeToString(content) + `"},
			   "request":{"method":"POST","url":"Binary"}},
			  {"resource":{"resourceType":"DocumentReference","status":"current","subject":{"reference":"urn:uuid:6f3a2b1c-0000-4000-8000-000000000001"},
			    "content":[{"attachment":{"contentType":"application/pdf","url":"urn:uuid:6f3a2b1c-0000-4000-8000-000000000002","hash":"` + hash + `","size":` + strconv.Itoa(len(content)) + `}}]},
			   "request":{"method":"POST","url":"DocumentReference"}}]}`
		}
		s.do(t, http.MethodPost, "", tx(sha1b64(randomBytes(3)))).wantOutcome(t, http.StatusUnprocessableEntity)
		if left := log.left(t); len(left) != 0 || len(log.written()) == 0 {
			t.Errorf("a failed transaction: %d streams written, %d left", len(log.written()), len(left))
		}
		r := s.do(t, http.MethodPost, "", tx(sha1b64(content))).want(t, http.StatusOK).bundle(t)
		var binID, patID string
		for _, e := range r.Entry {
			loc := e.Response.Location
			if strings.HasPrefix(loc, "Binary/") {
				binID = strings.Split(loc, "/")[1]
			}
			if strings.HasPrefix(loc, "Patient/") {
				patID = strings.Split(loc, "/")[1]
			}
		}
		got := s.do(t, http.MethodGet, "/Binary/"+binID, "").want(t, http.StatusOK)
		if !bytes.Equal(got.body, content) || got.header.Get("X-Security-Context") != "Patient/"+patID {
			t.Errorf("the transaction's Binary reads %d bytes, securityContext %q", len(got.body), got.header.Get("X-Security-Context"))
		}
		if left := log.left(t); len(left) != 1 {
			t.Errorf("%d streams kept, want 1", len(left))
		}
	})
}

// BenchmarkBinary uploads and downloads a 64 MiB Binary through the HTTP
// API on a sealed store, in MB/s: bbolt on this machine's disk, and Redis
// on a redis-server of the test's own.
func BenchmarkBinary(b *testing.B) {
	content := randomBytes(64 << 20)
	stores := map[string]func(b *testing.B) store.Store{
		"bolt":  func(b *testing.B) store.Store { return sealedtest.Wrap(b, boltBackend(b)) },
		"redis": func(b *testing.B) store.Store { return sealedtest.Wrap(b, redisBackend(b)) },
	}
	for _, name := range []string{"bolt", "redis"} {
		st := stores[name]
		b.Run(name+"/upload", func(b *testing.B) {
			gw := gateway.New(gateway.Config{Store: st(b), NoAudit: true})
			b.Cleanup(func() { gw.Close() })
			ts := httptest.NewServer(gw)
			b.Cleanup(ts.Close)
			b.SetBytes(int64(len(content)))
			for b.Loop() {
				res, err := ts.Client().Post(ts.URL+"/fhir/Binary", "application/octet-stream", bytes.NewReader(content))
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != http.StatusCreated {
					b.Fatal(res.Status)
				}
				content[0]++ // a new content each time: no deduplication
			}
		})
		b.Run(name+"/download", func(b *testing.B) {
			gw := gateway.New(gateway.Config{Store: st(b), NoAudit: true})
			b.Cleanup(func() { gw.Close() })
			ts := httptest.NewServer(gw)
			b.Cleanup(ts.Close)
			res, err := ts.Client().Post(ts.URL+"/fhir/Binary", "application/octet-stream", bytes.NewReader(content))
			if err != nil {
				b.Fatal(err)
			}
			res.Body.Close()
			loc := res.Header.Get("Location")
			id := idFrom(loc)
			b.SetBytes(int64(len(content)))
			for b.Loop() {
				res, err := ts.Client().Get(ts.URL + "/fhir/Binary/" + id)
				if err != nil {
					b.Fatal(err)
				}
				n, err := io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if err != nil || n != int64(len(content)) {
					b.Fatal(n, err)
				}
			}
		})
	}
}

// idFrom returns the id of a Location …/{type}/{id}/_history/{vid}.
func idFrom(loc string) string {
	parts := strings.Split(loc, "/")
	if len(parts) < 4 {
		return ""
	}
	return parts[len(parts)-3]
}

// TestBinaryMediaTypes: any media type is stored (canonically) and served
// back; only a malformed one is refused.
func TestBinaryMediaTypes(t *testing.T) {
	eachBlobStore(t, func(t *testing.T, st *sealed.Store, _ *streamLog) {
		s := newServer(t, gateway.Config{Store: st})
		for ct, want := range map[string]string{
			"text/plain;  charset=UTF-8": "text/plain; charset=UTF-8",
			"image/png":                  "image/png",
			"":                           "application/octet-stream",
			"application/dicom":          "application/dicom",
		} {
			content := randomBytes(100)
			r := s.upload(t, http.MethodPost, "/Binary", content, "Content-Type", ct).want(t, http.StatusCreated).resource(t)
			got := s.do(t, http.MethodGet, "/Binary/"+r["id"].(string), "", "Accept", "*/*").want(t, http.StatusOK)
			if r["contentType"] != want || got.header.Get("Content-Type") != want || !bytes.Equal(got.body, content) {
				t.Errorf("Content-Type %q: stored %v, served %q", ct, r["contentType"], got.header.Get("Content-Type"))
			}
		}
		s.upload(t, http.MethodPost, "/Binary", []byte("x"), "Content-Type", "not a type").wantOutcome(t, http.StatusUnsupportedMediaType)
		// A logical securityContext puts the Binary in no compartment.
		s.do(t, http.MethodPost, "/Binary", `{"resourceType":"Binary","contentType":"text/plain","securityContext":{"identifier":{"system":"urn:x","value":"1"}},"data":"aGk="}`).want(t, http.StatusCreated)
	})
}

// TestBinaryCommitFails: when the commit that was to keep an upload's
// content fails, the content is dropped; when it may have taken effect
// (the store went away meanwhile), it is left staged, for the backend to
// remove in time if it was not kept, rather than dropped from under a
// version that may name it.
func TestBinaryCommitFails(t *testing.T) {
	eachBlobStore(t, func(t *testing.T, st *sealed.Store, log *streamLog) {
		s := newServer(t, gateway.Config{Store: st})
		log.mu.Lock()
		log.commitErr = errors.New("disk full")
		log.mu.Unlock()
		s.upload(t, http.MethodPost, "/Binary", randomBytes(1000), "Content-Type", "image/png").wantOutcome(t, http.StatusInternalServerError)
		if left := log.left(t); len(log.written()) != 1 || len(left) != 0 {
			t.Errorf("a failed commit: %d streams written, %d left", len(log.written()), len(left))
		}
		log.mu.Lock()
		log.commitErr = fmt.Errorf("commit: %w", store.ErrUnavailable)
		log.mu.Unlock()
		s.upload(t, http.MethodPost, "/Binary", randomBytes(1000), "Content-Type", "image/png").wantOutcome(t, http.StatusServiceUnavailable)
		if left := log.left(t); len(left) != 1 {
			t.Errorf("a commit that may have taken effect: %d streams left, want its content staged", len(left))
		}
	})
}
