package gateway

import (
	"crypto/sha256"
	"sync"
	"time"

	"github.com/fhirgate/fhirgate/internal/auth"
)

// tokenCache remembers verified tokens, so that a client sending the same
// token on every request pays for the signature check once a minute
// rather than every time. An entry lives until the token expires or for
// tokenCacheTTL, whichever is sooner: a key withdrawn from the issuer's
// JWK Set stops working within that time.
type tokenCache struct {
	mu      sync.Mutex
	entries map[[32]byte]cachedToken
}

type cachedToken struct {
	claims *auth.Claims
	until  time.Time
}

const (
	tokenCacheTTL  = time.Minute
	tokenCacheSize = 10000
)

func (c *tokenCache) get(raw string, now time.Time) *auth.Claims {
	k := sha256.Sum256([]byte(raw))
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[k]
	if !ok || !now.Before(e.until) {
		return nil
	}
	return e.claims
}

func (c *tokenCache) put(raw string, cl *auth.Claims, now time.Time) {
	until := now.Add(tokenCacheTTL)
	if !cl.Expiry.IsZero() && cl.Expiry.Before(until) {
		until = cl.Expiry
	}
	if !cl.NotBefore.IsZero() && now.Before(cl.NotBefore) {
		return
	}
	k := sha256.Sum256([]byte(raw))
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil || len(c.entries) >= tokenCacheSize {
		c.entries = map[[32]byte]cachedToken{} // crude, bounded: start over
	}
	c.entries[k] = cachedToken{claims: cl, until: until}
}
