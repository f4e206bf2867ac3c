package redisstore_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/redisstore"
	"github.com/fhirgate/fhirgate/internal/store/redisstore/redistest"
)

// failFast bounds how long an operation may take to fail while Redis is
// down.
const failFast = 3 * time.Second

// TestUnavailable stops Redis under a Store: every operation then fails
// fast with store.ErrUnavailable; once Redis is back on the same address
// and data, the Store and its Bus subscription work again by themselves,
// with the data written before. A hung Redis (SIGSTOP) fails operations
// after the i/o timeout.
func TestUnavailable(t *testing.T) {
	srv := redistest.Start(t)
	ctx := t.Context()
	s, err := redisstore.New(ctx, redisstore.Config{URL: srv.URL(), Prefix: "down"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rec := func(v int64) store.Record {
		return store.Record{Type: "Patient", ID: "p", Version: v, Updated: time.Now(), Body: []byte(`{}`),
			Terms: []store.Term{{Param: "name", Value: "n"}}, Leaf: []byte("leaf")}
	}
	if err := s.Put(ctx, rec(1), store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 16)
	if err := s.Subscribe(ctx, "t", func(msg []byte) { got <- string(msg) }); err != nil {
		t.Fatal(err)
	}

	srv.Stop()
	k := store.Key{Type: "Patient", ID: "p"}
	q := store.Query{Type: "Patient", All: [][]store.Match{{{Param: "name", Value: "n"}}}}
	ops := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"Ping", s.Ping},
		{"Get", func(ctx context.Context) error { _, err := s.Get(ctx, k); return err }},
		{"GetVersion", func(ctx context.Context) error { _, err := s.GetVersion(ctx, k, 1); return err }},
		{"Put", func(ctx context.Context) error { return s.Put(ctx, rec(2), store.PutOptions{}) }},
		{"Search", func(ctx context.Context) error { _, err := s.Search(ctx, q); return err }},
		{"History", func(ctx context.Context) error {
			_, _, err := s.History(ctx, store.HistoryQuery{Type: "Patient"})
			return err
		}},
		{"Erase", func(ctx context.Context) error { return s.Erase(ctx, store.Key{Type: "Patient", ID: "q"}) }},
		{"GetCell", func(ctx context.Context) error { _, err := s.GetCell(ctx, "c"); return err }},
		{"GetKey", func(ctx context.Context) error { _, err := s.GetKey(ctx, "k"); return err }},
		{"PutKey", func(ctx context.Context) error { return s.PutKey(ctx, "k", nil, []byte("v")) }},
		{"ScanKeys", func(ctx context.Context) error {
			return s.ScanKeys(ctx, func(string, []byte) error { return nil })
		}},
		{"LogSize", func(ctx context.Context) error { _, err := s.LogSize(ctx); return err }},
		{"Leaves", func(ctx context.Context) error { _, err := s.Leaves(ctx, 0, 1); return err }},
		{"LatestAnchor", func(ctx context.Context) error { _, _, err := s.LatestAnchor(ctx); return err }},
		{"Lease", func(ctx context.Context) error { _, err := s.Lease(ctx, "anchor", "h", time.Second); return err }},
		{"Publish", func(ctx context.Context) error { return s.Publish(ctx, "t", []byte("lost")) }},
		{"PutChunk", func(ctx context.Context) error { return s.PutChunk(ctx, "st", 0, []byte("c")) }},
		{"GetChunk", func(ctx context.Context) error { _, err := s.GetChunk(ctx, "st", 0); return err }},
		{"DropStream", func(ctx context.Context) error { return s.DropStream(ctx, "st") }},
		{"CommitKeep", func(ctx context.Context) error { return s.Commit(ctx, store.Commit{Keep: []string{"st"}}) }},
	}
	for _, op := range ops {
		start := time.Now()
		err := op.fn(ctx)
		took := time.Since(start)
		if !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("%s with Redis down: %v, want store.ErrUnavailable", op.name, err)
		}
		if took > failFast {
			t.Errorf("%s with Redis down took %v, want < %v", op.name, took, failFast)
		}
	}

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	deadline := time.Now().Add(10 * time.Second)
	for s.Ping(ctx) != nil {
		if time.Now().After(deadline) {
			t.Fatal("the store did not reconnect within 10s of Redis restarting")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("reconnected %v after Redis restarted", time.Since(restarted).Round(time.Millisecond))
	r, err := s.Get(ctx, k)
	if err != nil || r.Version != 1 {
		t.Fatalf("after the restart: Get = version %d, %v; want the version written before", r.Version, err)
	}
	if err := s.Put(ctx, rec(2), store.PutOptions{}); err != nil {
		t.Fatalf("Put after the restart: %v", err)
	}
	// Hung (SIGSTOP, connections open): fails after the i/o timeout.
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = s.Get(ctx, k)
	took := time.Since(start)
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(err, store.ErrUnavailable) || took > failFast {
		t.Errorf("Get with Redis hung: %v after %v, want store.ErrUnavailable within %v", err, took, failFast)
	}
	if _, err := s.Get(ctx, k); err != nil {
		t.Errorf("Get after Redis resumed: %v", err)
	}
	// The subscription resubscribes by itself (go-redis checks its
	// connection every few seconds): publish until a message arrives.
	for i := 0; ; i++ {
		if err := s.Publish(ctx, "t", []byte("back")); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-got:
			if m != "back" {
				t.Fatalf("received %q", m)
			}
			t.Logf("the Bus subscription delivers again %v after Redis restarted (and hung for a while)", time.Since(restarted).Round(time.Millisecond))
			return
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatal("the Bus subscription did not come back after Redis restarted")
		}
	}
}

// TestLoadingIsUnavailable: a Redis still loading its data set answers
// every command with LOADING; that is ErrUnavailable too.
func TestLoadingIsUnavailable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go answerLoading(c)
		}
	}()
	start := time.Now()
	_, err = redisstore.New(t.Context(), redisstore.Config{URL: "redis://" + ln.Addr().String() + "/0"})
	if !errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "LOADING") {
		t.Errorf("New on a loading Redis: %v, want store.ErrUnavailable (LOADING)", err)
	}
	if took := time.Since(start); took > failFast {
		t.Errorf("New on a loading Redis took %v", took)
	}
}

// answerLoading reads RESP commands from c and answers each with an error
// LOADING.
func answerLoading(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "*")))
		if err != nil || !strings.HasPrefix(line, "*") {
			return
		}
		for range n {
			hdr, err := r.ReadString('\n')
			if err != nil {
				return
			}
			size, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(hdr, "$")))
			if err != nil {
				return
			}
			if _, err := io.CopyN(io.Discard, r, int64(size)+2); err != nil {
				return
			}
		}
		if _, err := c.Write([]byte("-LOADING Redis is loading the dataset in memory\r\n")); err != nil {
			return
		}
	}
}
