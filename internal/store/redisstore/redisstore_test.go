package redisstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/redisstore"
	"github.com/fhirgate/fhirgate/internal/store/redisstore/redistest"
	"github.com/fhirgate/fhirgate/internal/store/storetest"
)

func TestMain(m *testing.M) {
	storetest.CrashChild(func() (store.Store, error) {
		return redisstore.New(context.Background(), redisstore.Config{URL: os.Getenv("REDIS_URL"), Prefix: os.Getenv("REDIS_PREFIX")})
	})
	os.Exit(m.Run())
}

var n atomic.Int32

func TestContract(t *testing.T) {
	srv := redistest.Start(t)
	storetest.Run(t, func(t *testing.T) store.Store {
		// One server, a fresh key prefix per test.
		s, err := redisstore.New(t.Context(), redisstore.Config{URL: srv.URL(), Prefix: fmt.Sprintf("t%d", n.Add(1))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestBlobs(t *testing.T) {
	srv := redistest.Start(t)
	storetest.RunBlobs(t, func(t *testing.T) store.Store {
		s, err := redisstore.New(t.Context(), redisstore.Config{URL: srv.URL(), Prefix: fmt.Sprintf("t%d", n.Add(1))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// TestBlobsTTL checks the raw stream key: staged, it expires within
// store.StagedTTL, and a commit that fails leaves it so; once a commit
// keeps it, it has no TTL.
func TestBlobsTTL(t *testing.T) {
	srv := redistest.Start(t)
	ctx := t.Context()
	s, err := redisstore.New(ctx, redisstore.Config{URL: srv.URL(), Prefix: "blob"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const key = "blob:{blob}:st"
	ttl := func() time.Duration {
		t.Helper()
		d, err := s.Client().PTTL(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	for i := range 2 {
		if err := s.PutChunk(ctx, "st", i, []byte("chunk")); err != nil {
			t.Fatal(err)
		}
	}
	if d := ttl(); d <= 0 || d > store.StagedTTL {
		t.Errorf("TTL of a staged stream = %v, want in (0, %v]", d, store.StagedTTL)
	}
	r := store.Record{Type: "Binary", ID: "b", Version: 2, Body: []byte(`{}`)}
	if err := s.Commit(ctx, store.Commit{Writes: []store.Write{{Record: r}}, Keep: []string{"st"}}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Commit of a conflicting version = %v, want ErrConflict", err)
	}
	if d := ttl(); d <= 0 {
		t.Errorf("TTL after a failed commit = %v, want > 0", d)
	}
	r.Version = 1
	if err := s.Commit(ctx, store.Commit{Writes: []store.Write{{Record: r}}, Keep: []string{"st"}}); err != nil {
		t.Fatal(err)
	}
	if d := ttl(); d != -1 {
		t.Errorf("TTL of a kept stream = %v, want -1 (none)", d)
	}
	if n, err := s.Client().HLen(ctx, key).Result(); n != 2 || err != nil {
		t.Errorf("kept stream has %d chunks, %v; want 2", n, err)
	}
}

// TestServerLimits checks the test server takes a 200 MB upload: no
// maxmemory, and bulk strings of a chunk's size.
func TestServerLimits(t *testing.T) {
	srv := redistest.Start(t)
	s, err := redisstore.New(t.Context(), redisstore.Config{URL: srv.URL(), Prefix: "limits"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cfg, err := s.Client().ConfigGet(t.Context(), "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if cfg["maxmemory"] != "0" {
		t.Errorf("maxmemory = %s, want 0 (no limit)", cfg["maxmemory"])
	}
	if n, _ := strconv.Atoi(cfg["proto-max-bulk-len"]); n < store.MaxChunk {
		t.Errorf("proto-max-bulk-len = %s, want >= %d", cfg["proto-max-bulk-len"], store.MaxChunk)
	}
}

func BenchmarkPutChunk(b *testing.B) { storetest.BenchPutChunk(b, openBench(b)) }

func BenchmarkGetChunk(b *testing.B) { storetest.BenchGetChunk(b, openBench(b)) }

// openBench starts a server and opens a Store on it for a benchmark.
func openBench(b *testing.B) *redisstore.Store {
	srv := redistest.Start(b)
	s, err := redisstore.New(b.Context(), redisstore.Config{URL: srv.URL(), Prefix: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

func TestCrashConsistency(t *testing.T) {
	srv := redistest.Start(t)
	storetest.RunCrash(t, []string{"REDIS_URL=" + srv.URL(), "REDIS_PREFIX=crash"}, func(t *testing.T) store.Store {
		s, err := redisstore.New(t.Context(), redisstore.Config{URL: srv.URL(), Prefix: "crash"})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestWarnsWhenAOFOff(t *testing.T) {
	srv := redistest.Start(t)
	for _, test := range []struct {
		aof  string
		warn bool
	}{{"yes", false}, {"no", true}} {
		t.Run("appendonly="+test.aof, func(t *testing.T) {
			var buf bytes.Buffer
			log := slog.New(slog.NewTextHandler(&buf, nil))
			s, err := redisstore.New(t.Context(), redisstore.Config{URL: srv.URL(), Logger: log})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if err := s.Client().ConfigSet(t.Context(), "appendonly", test.aof).Err(); err != nil {
				t.Fatal(err)
			}
			buf.Reset()
			s2, err := redisstore.New(t.Context(), redisstore.Config{URL: srv.URL(), Logger: log})
			if err != nil {
				t.Fatal(err)
			}
			s2.Close()
			if got := strings.Contains(buf.String(), "PERSISTENCE IS OFF"); got != test.warn {
				t.Errorf("warning logged = %v, want %v; log: %s", got, test.warn, buf.String())
			}
		})
	}
}

// TestEraseLeavesOnlyMarker checks the raw keys: erasing leaves the
// resource hash holding only the marker (no body bytes), and no history,
// live-set or index entry (which History and Search would skip or miss).
func TestEraseLeavesOnlyMarker(t *testing.T) {
	srv := redistest.Start(t)
	ctx := t.Context()
	s, err := redisstore.New(ctx, redisstore.Config{URL: srv.URL(), Prefix: "erase"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for v := int64(1); v <= 3; v++ {
		r := store.Record{Type: "Patient", ID: "p", Version: v, Updated: time.Now(), Body: []byte(`{"secret":1}`),
			Terms: []store.Term{{Param: "name", Value: fmt.Sprintf("n%d", v)}, {Param: "gender", Value: "f"}}}
		if err := s.Put(ctx, r, store.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Erase(ctx, store.Key{Type: "Patient", ID: "p"}); err != nil {
		t.Fatal(err)
	}
	keys, err := s.Client().Keys(ctx, "erase:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"erase:{Patient}:r:p"}; !slices.Equal(keys, want) {
		t.Errorf("keys after erase = %v, want %v", keys, want)
	}
	h, err := s.Client().HGetAll(ctx, "erase:{Patient}:r:p").Result()
	if err != nil || len(h) != 1 || h["erased"] != "1" {
		t.Errorf("resource hash after erase = %v, %v; want only erased=1", h, err)
	}
}

// TestLease checks the anchoring lease: one holder at a time, renewable
// by its holder, taken over once it expires.
func TestLease(t *testing.T) {
	srv := redistest.Start(t)
	ctx := t.Context()
	a, err := redisstore.New(ctx, redisstore.Config{URL: srv.URL(), Prefix: "lease"})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := redisstore.New(ctx, redisstore.Config{URL: srv.URL(), Prefix: "lease"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	const ttl = 300 * time.Millisecond
	for _, step := range []struct {
		s      *redisstore.Store
		holder string
		want   bool
	}{{a, "a", true}, {b, "b", false}, {a, "a", true}, {b, "b", false}} {
		if got, err := step.s.Lease(ctx, "anchor", step.holder, ttl); got != step.want || err != nil {
			t.Fatalf("Lease(%s) = %v, %v; want %v", step.holder, got, err, step.want)
		}
	}
	time.Sleep(ttl + 100*time.Millisecond)
	if got, _ := b.Lease(ctx, "anchor", "b", ttl); !got {
		t.Fatal("b did not take the expired lease")
	}
	if got, _ := a.Lease(ctx, "anchor", "a", ttl); got {
		t.Fatal("a renewed a lease b holds")
	}
}

// TestBus publishes through one Store and receives through another on the
// same Redis and prefix; a Store with another prefix does not receive it.
func TestBus(t *testing.T) {
	srv := redistest.Start(t)
	ctx := t.Context()
	open := func(prefix string) *redisstore.Store {
		s, err := redisstore.New(ctx, redisstore.Config{URL: srv.URL(), Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	sub, pub, other := open("bus"), open("bus"), open("other")
	got, stray := make(chan string, 4), make(chan string, 4)
	if err := sub.Subscribe(ctx, "t", func(msg []byte) { got <- string(msg) }); err != nil {
		t.Fatal(err)
	}
	if err := other.Subscribe(ctx, "t", func(msg []byte) { stray <- string(msg) }); err != nil {
		t.Fatal(err)
	}
	recv := func() string {
		t.Helper()
		select {
		case g := <-got:
			return g
		case <-time.After(5 * time.Second):
			t.Fatal("no message received")
			return ""
		}
	}
	for _, m := range []string{"hello", "\x00binary\xff", "marker"} {
		if m == "marker" {
			// Another topic: not received, or it would arrive before the marker.
			if err := pub.Publish(ctx, "u", []byte("other topic")); err != nil {
				t.Fatal(err)
			}
		}
		if err := pub.Publish(ctx, "t", []byte(m)); err != nil {
			t.Fatal(err)
		}
		if g := recv(); g != m {
			t.Errorf("received %q, want %q", g, m)
		}
	}
	select {
	case g := <-stray:
		t.Errorf("a store with another prefix received %q", g)
	default:
	}
}
