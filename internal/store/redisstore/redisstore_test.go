package redisstore_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"

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
