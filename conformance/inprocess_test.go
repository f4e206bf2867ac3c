package conformance_test

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/conformance"
	"github.com/fhirgate/fhirgate/gateway"
	"github.com/fhirgate/fhirgate/internal/auth"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/boltstore"
	"github.com/fhirgate/fhirgate/internal/store/redisstore"
	"github.com/fhirgate/fhirgate/internal/store/redisstore/redistest"
	"github.com/fhirgate/fhirgate/internal/store/sealed/sealedtest"
	"github.com/fhirgate/fhirgate/policy"
)

// run runs every suite against the servers (the first is the base URL,
// the rest take part in the conditional-create race) and fails on any
// failed case.
func run(t *testing.T, servers ...*httptest.Server) {
	token, err := devKey.Sign(auth.Claims{Subject: "conformance", Scope: "system/*.*"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cfg := conformance.Config{BaseURL: servers[0].URL + "/fhir", DataDir: "../testdata/conformance", Token: token}
	for _, s := range servers[1:] {
		cfg.RaceURLs = append(cfg.RaceURLs, s.URL+"/fhir")
	}
	report, err := conformance.Run(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	report.WriteTable(&sb)
	t.Log("\n" + sb.String())
	if len(report.Results) < 250 {
		t.Errorf("only %d cases ran", len(report.Results))
	}
	for _, res := range report.Results {
		if !res.Pass && !res.Skipped {
			t.Errorf("%s/%s: %s", res.Suite, res.Name, res.Detail)
		}
	}
}

// devKey signs the tokens of every in-process gateway.
var devKey = func() *auth.DevKey {
	k, err := auth.GenerateDevKey()
	if err != nil {
		panic(err)
	}
	return k
}()

// serve starts a gateway as `fhirgate serve` wires it: bearer tokens, the
// shipped policy, audit.
func serve(t *testing.T, st store.Store) *httptest.Server {
	v, err := auth.NewVerifier(t.Context(), auth.Config{JWKS: devKey.PublicJWKS(), Issuer: auth.DevIssuer, Audience: auth.DevAudience})
	if err != nil {
		t.Fatal(err)
	}
	eng, err := policy.New(t.Context(), policy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gateway.New(gateway.Config{Store: st, Auth: v, Policy: eng}))
	t.Cleanup(srv.Close)
	return srv
}

func TestConformanceEmbedded(t *testing.T) {
	st, err := boltstore.New(t.Context(), boltstore.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	run(t, serve(t, sealedtest.Wrap(t, st)))
}

// TestConformanceRedis runs the suites against two gateways, each with its
// own Redis connection pool, sharing one redis-server.
func TestConformanceRedis(t *testing.T) {
	rs := redistest.Start(t)
	ring := sealedtest.Ring(t)
	var servers []*httptest.Server
	for range 2 {
		st, err := redisstore.New(t.Context(), redisstore.Config{URL: rs.URL()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		servers = append(servers, serve(t, sealedtest.WrapRing(t, st, ring)))
	}
	run(t, servers...)
}
