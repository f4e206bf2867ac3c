//go:build faults

package faults

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	headerTimeout = time.Second
	readTimeout   = 3 * time.Second
	maxBody       = 64 << 10
	maxBundleBody = 256 << 10
	// slack is what a loaded 2-core machine may add to a timeout.
	slack = 3 * time.Second
)

// rawConn is a client connection written by hand; a goroutine reads the
// server's first response and then waits for the server to close.
type rawConn struct {
	c        net.Conn
	opened   time.Time
	resp     chan rawResp // the first response, or the read error
	closed   chan struct{}
	closedAt time.Time
}

type rawResp struct {
	status int
	header http.Header
	body   []byte
	at     time.Time
	err    error
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawConn{c: c, opened: time.Now(), resp: make(chan rawResp, 1), closed: make(chan struct{})}
	go func() {
		br := bufio.NewReader(c)
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			rc.resp <- rawResp{err: err, at: time.Now()}
		} else {
			body, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
			res.Body.Close()
			rc.resp <- rawResp{status: res.StatusCode, header: res.Header, body: body, at: time.Now()}
		}
		io.Copy(io.Discard, br)
		rc.closedAt = time.Now()
		close(rc.closed)
	}()
	return rc
}

// isClosed reports whether the server closed the connection.
func (rc *rawConn) isClosed() bool {
	select {
	case <-rc.closed:
		return true
	default:
		return false
	}
}

// stream writes head, then the body produced by chunk (n bytes at most)
// until the server answers or closes, or the body is all sent. It returns
// the body bytes written.
func (rc *rawConn) stream(head string, total int, chunked bool) (sent int, werr error) {
	if _, err := rc.c.Write([]byte(head)); err != nil {
		return 0, err
	}
	block := bytes.Repeat([]byte("A"), 64<<10)
	for sent < total && !rc.isClosed() && len(rc.resp) == 0 {
		b := block[:min(len(block), total-sent)]
		out := b
		if chunked {
			out = append([]byte(strconv.FormatInt(int64(len(b)), 16)+"\r\n"), append(b, "\r\n"...)...)
		}
		rc.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := rc.c.Write(out); err != nil {
			return sent, err
		}
		sent += len(b)
	}
	if chunked && sent >= total {
		rc.c.Write([]byte("0\r\n\r\n"))
	}
	return sent, nil
}

// await returns the first response, waiting at most d.
func (rc *rawConn) await(d time.Duration) (rawResp, bool) {
	select {
	case r := <-rc.resp:
		rc.resp <- r
		return r, true
	case <-time.After(d):
		return rawResp{}, false
	}
}

// TestSlowClients checks that slow clients and oversized bodies cannot
// exhaust the server: (a) slowloris connections are closed by the header
// timeout while a normal client is served promptly; (b) a slow body is cut
// off by the read timeout; (c) bodies above --max-body (a Bundle above
// --max-bundle-body) get 413 and an OperationOutcome before the server
// reads them whole: with Content-Length, chunked, and a Content-Length
// that lies either way; (d) at most --max-conns connections are served at
// once, and a waiting client is served as soon as one closes.
func TestSlowClients(t *testing.T) {
	t.Parallel() // two at a time (-parallel defaults to GOMAXPROCS)
	dir := t.TempDir()
	token := devToken(t, dir)
	common := []string{"--data-dir", dir, "--anchor=false", "--max-body", strconv.Itoa(maxBody), "--max-bundle-body", strconv.Itoa(maxBundleBody),
		"--read-header-timeout", headerTimeout.String(), "--read-timeout", readTimeout.String(), "--write-timeout", "30s"}
	g := newGateway(t, "gateway", append(common, "--max-conns", "1000", "--idle-timeout", "10s")...)
	g.start()
	c := newClient(g.base()+"/fhir", token, 10*time.Second)

	t.Run("slowloris", func(t *testing.T) {
		const n = 300
		conns := make([]*rawConn, n)
		for i := range conns {
			conns[i] = dialRaw(t, g.addr)
		}
		// Each sends its headers a byte every 100 ms.
		var wg sync.WaitGroup
		for _, rc := range conns {
			wg.Go(func() {
				head := "GET /fhir/metadata HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("a", 200)
				for i := 0; i < len(head) && !rc.isClosed(); i++ {
					rc.c.SetWriteDeadline(time.Now().Add(time.Second))
					if _, err := rc.c.Write([]byte{head[i]}); err != nil {
						return
					}
					time.Sleep(100 * time.Millisecond)
				}
			})
		}
		// Meanwhile a normal client is served promptly.
		var worst time.Duration
		served := 0
		for start := time.Now(); time.Since(start) < headerTimeout+slack; time.Sleep(100 * time.Millisecond) {
			r, err := c.do(t.Context(), http.MethodGet, "metadata", nil)
			if err != nil || r.status != http.StatusOK {
				t.Errorf("a normal client during the slowloris: %v %v", r, err)
				continue
			}
			served++
			worst = max(worst, r.took)
		}
		if worst > time.Second {
			t.Errorf("a normal client waited up to %v during the slowloris", worst)
		}
		wg.Wait()
		var latest time.Duration
		open := 0
		for _, rc := range conns {
			if !rc.isClosed() {
				select {
				case <-rc.closed:
				case <-time.After(time.Until(rc.opened.Add(headerTimeout + slack))):
					open++
					continue
				}
			}
			latest = max(latest, rc.closedAt.Sub(rc.opened))
		}
		if open > 0 {
			t.Errorf("%d of %d slowloris connections were still open %v after they opened (header timeout %v)", open, n, headerTimeout+slack, headerTimeout)
		}
		t.Logf("slowloris: %d connections sending headers a byte per 100 ms, closed by the server at most %v after opening (header timeout %v); a normal client got %d answers meanwhile, the slowest in %v",
			n, latest.Round(time.Millisecond), headerTimeout, served, worst.Round(time.Millisecond))
	})

	t.Run("slow body", func(t *testing.T) {
		rc := dialRaw(t, g.addr)
		const declared = 10000
		head := fmt.Sprintf("POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/fhir+json\r\nContent-Length: %d\r\n\r\n", token, declared)
		if _, err := rc.c.Write([]byte(head)); err != nil {
			t.Fatal(err)
		}
		body := `{"resourceType":"Patient","name":[{"family":"` + strings.Repeat("S", declared)
		sent := 0
		for ; sent < declared && !rc.isClosed() && len(rc.resp) == 0; sent++ {
			rc.c.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := rc.c.Write([]byte{body[sent]}); err != nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
			if time.Since(rc.opened) > readTimeout+slack {
				break
			}
		}
		r, answered := rc.await(time.Until(rc.opened.Add(readTimeout + slack)))
		switch {
		case !answered && !rc.isClosed():
			t.Fatalf("a body sent a byte per 100 ms was still being read %v after the request started (read timeout %v)", time.Since(rc.opened).Round(time.Millisecond), readTimeout)
		case r.err == nil && r.status/100 == 2:
			t.Fatalf("a body cut off by the read timeout was accepted: %d %s", r.status, r.body)
		case r.err == nil && r.status >= 500:
			t.Errorf("a body cut off by the read timeout was answered %d %s (a client fault: 408 or 400, or no answer)", r.status, r.body)
		}
		what := "the connection closed"
		at := rc.closedAt
		if r.err == nil {
			what, at = fmt.Sprintf("answered %d", r.status), r.at
		}
		t.Logf("slow body: %d of %d bytes sent a byte per 100 ms, then %s %v after the request started (read timeout %v)",
			sent, declared, what, at.Sub(rc.opened).Round(time.Millisecond), readTimeout)
	})

	t.Run("oversized", func(t *testing.T) {
		const huge = 32 << 20
		for _, tc := range []struct {
			name, path string
			limit      int
			chunked    bool
			// declared is the Content-Length sent (0: the body's length).
			declared int
			// send is how much body is sent before waiting (0: huge).
			send int
		}{
			{name: "resource, Content-Length", path: "/fhir/Patient", limit: maxBody},
			{name: "resource, chunked", path: "/fhir/Patient", limit: maxBody, chunked: true},
			{name: "Bundle, Content-Length", path: "/fhir", limit: maxBundleBody},
			{name: "Bundle, chunked", path: "/fhir", limit: maxBundleBody, chunked: true},
			// Content-Length says more than comes: the server must not
			// wait for the rest to answer.
			{name: "resource, Content-Length above what is sent", path: "/fhir/Patient", limit: maxBody, declared: huge, send: 2 * maxBody},
			{name: "Bundle, Content-Length above what is sent", path: "/fhir", limit: maxBundleBody, declared: huge, send: 2 * maxBundleBody},
		} {
			t.Run(tc.name, func(t *testing.T) {
				rc := dialRaw(t, g.addr)
				te := fmt.Sprintf("Content-Length: %d", max(tc.declared, huge))
				if tc.chunked {
					te = "Transfer-Encoding: chunked"
				}
				head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/fhir+json\r\n%s\r\n\r\n", tc.path, token, te)
				total := huge
				if tc.send > 0 {
					total = tc.send
				}
				start := time.Now()
				sent, werr := rc.stream(head, total, tc.chunked)
				r, ok := rc.await(readTimeout + slack)
				took := time.Since(start)
				switch {
				case !ok:
					t.Fatalf("no answer %v after sending %d bytes (write: %v)", took, sent, werr)
				case r.err != nil:
					t.Fatalf("no answer after %d bytes: the connection closed (%v; write: %v)", sent, r.err, werr)
				case r.status != http.StatusRequestEntityTooLarge:
					t.Fatalf("answered %d %s, want 413", r.status, r.body)
				}
				var oo struct {
					ResourceType string
					Issue        []struct{ Code string }
				}
				if json.Unmarshal(r.body, &oo) != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 {
					t.Errorf("413 without an OperationOutcome: %s", r.body)
				}
				if tc.send == 0 && sent >= huge {
					t.Errorf("the server read the whole %d-byte body before answering 413 (limit %d)", huge, tc.limit)
				}
				if tc.send > 0 && r.at.Sub(start) > readTimeout {
					t.Errorf("413 came %v after the request, not before the read timeout (%v)", r.at.Sub(start), readTimeout)
				}
				t.Logf("%s: 413 (%s) after %d of %d bytes, in %v (limit %d)", tc.name, oo.Issue[0].Code, sent, max(tc.declared, huge), r.at.Sub(start).Round(time.Millisecond), tc.limit)
			})
		}
		// Content-Length says less than comes: the rest is not read as a
		// body (nor served as a request).
		t.Run("resource, Content-Length below what is sent", func(t *testing.T) {
			rc := dialRaw(t, g.addr)
			head := fmt.Sprintf("POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/fhir+json\r\nContent-Length: 100\r\n\r\n", token)
			start := time.Now()
			sent, werr := rc.stream(head+`{"resourceType":"Patient","name":[{"family":"`, huge, false)
			r, ok := rc.await(readTimeout + slack)
			switch {
			case !ok:
				t.Fatalf("no answer after %d bytes (write: %v)", sent, werr)
			case r.err == nil && (r.status/100 != 4):
				t.Errorf("a body cut short by its Content-Length: %d %s, want 4xx", r.status, r.body)
			}
			select {
			case <-rc.closed:
			case <-time.After(slack):
				t.Errorf("the connection stayed open after the garbage following the body")
			}
			if sent >= huge {
				t.Errorf("the server read all %d bytes sent after a Content-Length of 100", huge)
			}
			t.Logf("Content-Length 100 followed by %d bytes: answered %d and closed after %v", sent, r.status, time.Since(start).Round(time.Millisecond))
		})
	})

	t.Run("connection limit", func(t *testing.T) {
		const limit = 8
		g2 := newGateway(t, "gateway-limited", append(common, "--max-conns", strconv.Itoa(limit), "--idle-timeout", "30s")...)
		g.stop() // one process on the data dir
		g2.start()
		get := "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
		// limit keep-alive connections, each served once and held open.
		held := make([]*rawConn, limit)
		for i := range held {
			held[i] = dialRaw(t, g2.addr)
			held[i].c.Write([]byte(get))
			if r, ok := held[i].await(5 * time.Second); !ok || r.err != nil || r.status != http.StatusOK {
				t.Fatalf("connection %d of %d: %+v", i+1, limit, r)
			}
		}
		// One more is not served while they are held.
		extra := dialRaw(t, g2.addr)
		extra.c.Write([]byte(get))
		if r, ok := extra.await(1500 * time.Millisecond); ok && r.err == nil && r.status == http.StatusOK {
			t.Fatalf("connection %d was served while %d were held (--max-conns %d)", limit+1, limit, limit)
		}
		var others atomic.Int32
		hc := newClient(g2.base(), "", 1500*time.Millisecond)
		if r, err := hc.do(t.Context(), http.MethodGet, g2.base()+"/healthz", nil); err == nil && r.status == http.StatusOK {
			others.Add(1)
			t.Errorf("a new client was served while %d connections were held (--max-conns %d)", limit, limit)
		}
		// One closes: the waiting connection is served.
		closed := time.Now()
		held[0].c.Close()
		r, ok := extra.await(slack)
		if !ok || r.err != nil || r.status != http.StatusOK {
			t.Fatalf("the waiting connection was not served within %v of another closing: %+v", slack, r)
		}
		waited := r.at.Sub(closed)
		held[1].c.Close()
		hc = newClient(g2.base(), "", 5*time.Second)
		r2, err := hc.do(t.Context(), http.MethodGet, g2.base()+"/healthz", nil)
		if err != nil || r2.status != http.StatusOK {
			t.Errorf("a new client after two connections closed: %v %v", r2, err)
		}
		t.Logf("connection limit %d: connection %d and a new client were not served while %d were held; the waiting one was served %v after one closed, a new client in %v after another did",
			limit, limit+1, limit, waited.Round(time.Microsecond), r2.took.Round(time.Millisecond))
	})
}
