package gateway

import (
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/internal/auth"
)

func TestTokenCache(t *testing.T) {
	var c tokenCache
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	short := &auth.Claims{Subject: "a", Expiry: now.Add(10 * time.Second)}
	long := &auth.Claims{Subject: "b", Expiry: now.Add(time.Hour)}
	c.put("short", short, now)
	c.put("long", long, now)
	c.put("early", &auth.Claims{Subject: "c", NotBefore: now.Add(time.Minute), Expiry: now.Add(time.Hour)}, now)
	for _, tc := range []struct {
		raw  string
		at   time.Duration
		want *auth.Claims
	}{
		{"short", 0, short},
		{"short", 9 * time.Second, short},
		{"short", 10 * time.Second, nil}, // expired: re-verify (and be refused)
		{"long", 59 * time.Second, long},
		{"long", tokenCacheTTL, nil}, // at most a minute without a signature check
		{"early", 0, nil},            // not yet valid: never cached
		{"unknown", 0, nil},
	} {
		if got := c.get(tc.raw, now.Add(tc.at)); got != tc.want {
			t.Errorf("get(%q) at +%v = %v, want %v", tc.raw, tc.at, got, tc.want)
		}
	}
}
