package gateway_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/gateway"
	"github.com/fhirgate/fhirgate/internal/store/redisstore"
	"github.com/fhirgate/fhirgate/internal/store/redisstore/redistest"
	"github.com/fhirgate/fhirgate/internal/store/sealed/sealedtest"
)

// TestStoreUnavailable stops Redis under the gateway: reads, writes and
// searches are answered at once with 503, Retry-After and a transient
// OperationOutcome naming no resource; once Redis is back they succeed
// again (conformance/faults TestRedisOutage checks this end to end, under
// load).
func TestStoreUnavailable(t *testing.T) {
	t.Run("unaudited", func(t *testing.T) { storeUnavailable(t, true) })
	// With AuditEvents on, the AuditEvent cannot be stored either: the
	// answer is still 503, not the 500 of an audit failure.
	t.Run("audited", func(t *testing.T) { storeUnavailable(t, false) })
}

func storeUnavailable(t *testing.T, noAudit bool) {
	srv := redistest.Start(t)
	backend, err := redisstore.New(t.Context(), redisstore.Config{URL: srv.URL(), Prefix: "unavail"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backend.Close() })
	s := newServer(t, gateway.Config{Store: sealedtest.Wrap(t, backend), NoAudit: noAudit})
	res := s.do(t, http.MethodPost, "/Patient", `{"resourceType":"Patient","name":[{"family":"Down"}]}`)
	if res.status != http.StatusCreated {
		t.Fatalf("create: %d %s", res.status, res.body)
	}
	var p struct{ ID string }
	json.Unmarshal(res.body, &p)

	srv.Stop()
	for _, req := range []struct{ method, path, body string }{
		{http.MethodGet, "/Patient/" + p.ID, ""},
		{http.MethodPost, "/Patient", `{"resourceType":"Patient","name":[{"family":"Lost"}]}`},
		{http.MethodPut, "/Patient/" + p.ID, `{"resourceType":"Patient","id":"` + p.ID + `","name":[{"family":"Lost"}]}`},
		{http.MethodGet, "/Patient?family=Down", ""},
		{http.MethodGet, "/Patient/" + p.ID + "/_history", ""},
	} {
		start := time.Now()
		res := s.do(t, req.method, req.path, req.body)
		took := time.Since(start)
		if res.status != http.StatusServiceUnavailable {
			t.Errorf("%s %s with Redis down: %d %s, want 503", req.method, req.path, res.status, res.body)
			continue
		}
		if took > 5*time.Second {
			t.Errorf("%s %s with Redis down took %v", req.method, req.path, took)
		}
		if ra := res.header.Get("Retry-After"); ra == "" {
			t.Errorf("%s %s: 503 without Retry-After", req.method, req.path)
		}
		var oo struct {
			ResourceType string
			Issue        []struct{ Code string }
		}
		if err := json.Unmarshal(res.body, &oo); err != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 || oo.Issue[0].Code != "transient" {
			t.Errorf("%s %s: 503 body %s, want an OperationOutcome with issue code transient", req.method, req.path, res.body)
		}
	}
	if res := s.do(t, http.MethodGet, s.base[:len(s.base)-len("/fhir")]+"/readyz", ""); res.status != http.StatusServiceUnavailable {
		t.Errorf("/readyz with Redis down: %d, want 503", res.status)
	}

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		res := s.do(t, http.MethodGet, "/Patient/"+p.ID, "")
		if res.status == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("read 10s after Redis restarted: %d %s", res.status, res.body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSlowBodyTimesOut: a request body still arriving when the server's
// read timeout passes is answered 408 (the client's fault), not 500.
func TestSlowBodyTimesOut(t *testing.T) {
	gw := gateway.New(gateway.Config{Store: boltStore(t)})
	t.Cleanup(func() { gw.Close() })
	ts := httptest.NewUnstartedServer(gw)
	ts.Config.ReadTimeout = 300 * time.Millisecond
	ts.Start()
	t.Cleanup(ts.Close)
	c, err := net.Dial("tcp", ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// 100 bytes announced, 10 sent.
	fmt.Fprintf(c, "POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\nContent-Length: 100\r\n\r\n{\"resource")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(b), `"code":"timeout"`) {
		t.Errorf("a body cut off by the read timeout: %d %s, want 408 with issue code timeout", res.StatusCode, b)
	}
}

// A body that ends before its Content-Length (the client hung up) is the
// client's fault: 400 with an OperationOutcome, not a 500.
func TestTruncatedBody(t *testing.T) {
	gw := gateway.New(gateway.Config{Store: boltStore(t)})
	t.Cleanup(func() { gw.Close() })
	ts := httptest.NewServer(gw)
	t.Cleanup(ts.Close)
	c, err := net.Dial("tcp", ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\nContent-Length: 100\r\n\r\n{\"resource")
	c.(*net.TCPConn).CloseWrite() // no more body: the server reads EOF
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), `"OperationOutcome"`) {
		t.Errorf("a truncated body: %d %s, want 400 with an OperationOutcome", res.StatusCode, b)
	}
}
