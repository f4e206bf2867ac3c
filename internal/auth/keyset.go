package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/httprc/v3"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
)

const (
	// fileCheckInterval is how often a JWKS file is stat'ed, at most.
	fileCheckInterval = time.Second
	// urlRefreshInterval is how often a JWKS URL is re-fetched.
	urlRefreshInterval = 15 * time.Minute
	// urlForcedInterval is how often an unknown kid (or a missing set) may
	// trigger a fetch of the JWKS URL.
	urlForcedInterval = 10 * time.Second
	// urlFetchTimeout bounds a fetch made on behalf of a request.
	urlFetchTimeout = 10 * time.Second
)

// keySource finds the public key to verify a token signed with alg by the
// key kid ("" when the token names none).
type keySource interface {
	key(ctx context.Context, alg jwa.SignatureAlgorithm, kid string) (jwk.Key, *Error)
}

var (
	_ keySource = (*staticKeys)(nil)
	_ keySource = (*fileKeys)(nil)
	_ keySource = (*urlKeys)(nil)
)

// parseSet parses a JWK Set and checks that it can verify something.
func parseSet(b []byte) (jwk.Set, error) {
	set, err := jwk.Parse(b)
	if err != nil {
		return nil, err
	}
	for i := range set.Len() {
		k, _ := set.Key(i)
		for _, alg := range []jwa.SignatureAlgorithm{jwa.RS256(), jwa.ES256(), jwa.EdDSA()} {
			if fits(k, alg) {
				return set, nil
			}
		}
	}
	return nil, errors.New("the set holds no RS256, ES256 or EdDSA verification key")
}

// fits reports whether k may verify a signature made with alg: its type
// (and curve) match alg, and its alg, use and key_ops, when present, allow
// it.
func fits(k jwk.Key, alg jwa.SignatureAlgorithm) bool {
	if use, ok := k.KeyUsage(); ok && use != "sig" {
		return false
	}
	if ka, ok := k.Algorithm(); ok && ka.String() != alg.String() {
		return false
	}
	if ops, ok := k.KeyOps(); ok && !slices.Contains(ops, jwk.KeyOpVerify) {
		return false
	}
	type curved interface {
		Crv() (jwa.EllipticCurveAlgorithm, bool)
	}
	crv := func(want jwa.EllipticCurveAlgorithm) bool {
		c, ok := k.(curved)
		if !ok {
			return false
		}
		got, ok := c.Crv()
		return ok && got == want
	}
	switch alg {
	case jwa.RS256():
		return k.KeyType() == jwa.RSA()
	case jwa.ES256():
		return k.KeyType() == jwa.EC() && crv(jwa.P256())
	case jwa.EdDSA():
		return k.KeyType() == jwa.OKP() && crv(jwa.Ed25519())
	}
	return false
}

// pick chooses the key of set for alg and kid. retry says that the set does
// not know the key, so a fresher set might.
func pick(set jwk.Set, alg jwa.SignatureAlgorithm, kid string) (key jwk.Key, rej *Error, retry bool) {
	if set == nil {
		return nil, reject("token signing keys are not available", ErrKeysUnavailable), true
	}
	var found []jwk.Key
	kidSeen := false
	for i := range set.Len() {
		k, _ := set.Key(i)
		if kid != "" {
			if id, _ := k.KeyID(); id != kid {
				continue
			}
			kidSeen = true
		}
		if fits(k, alg) {
			found = append(found, k)
		}
	}
	switch {
	case len(found) == 0 && kidSeen:
		return nil, reject("token algorithm does not match its key", nil), false
	case len(found) == 0 && kid != "":
		return nil, reject("no key matches the token's kid", nil), true
	case len(found) == 0:
		return nil, reject("no key can verify the token", nil), true
	case len(found) > 1 && kid == "":
		return nil, reject("token has no kid and several keys could verify it", nil), false
	}
	pub, err := jwk.PublicKeyOf(found[0])
	if err != nil {
		return nil, reject("no key can verify the token", err), false
	}
	return pub, nil, false
}

// staticKeys is an inline JWK Set.
type staticKeys struct{ set jwk.Set }

func newStaticKeys(b []byte) (*staticKeys, error) {
	set, err := parseSet(b)
	if err != nil {
		return nil, fmt.Errorf("auth: JWKS: %w", err)
	}
	return &staticKeys{set}, nil
}

func (s *staticKeys) key(_ context.Context, alg jwa.SignatureAlgorithm, kid string) (jwk.Key, *Error) {
	k, rej, _ := pick(s.set, alg, kid)
	return k, rej
}

// fileKeys is a JWK Set file, re-read when it changes.
type fileKeys struct {
	path string
	now  func() time.Time

	mu      sync.Mutex
	set     jwk.Set
	info    os.FileInfo // of the file set was read from
	checked time.Time
}

func newFileKeys(path string, now func() time.Time) (*fileKeys, error) {
	f := &fileKeys{path: path, now: now}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("auth: JWKS file: %w", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("auth: JWKS file: %w", err)
	}
	if f.set, err = parseSet(b); err != nil {
		return nil, fmt.Errorf("auth: JWKS file %s: %w", path, err)
	}
	f.info, f.checked = st, now()
	return f, nil
}

// current returns the set, re-reading the file first if it is due for a
// check and has changed. A file that is gone or does not parse keeps the
// previous set; it is tried again at the next check.
func (f *fileKeys) current() jwk.Set {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	if d := now.Sub(f.checked); d >= 0 && d < fileCheckInterval {
		return f.set
	}
	f.checked = now
	// Stat before reading: if the file changes after the stat, the next
	// check sees a different stat and reads it again.
	st, err := os.Stat(f.path)
	if err != nil || (os.SameFile(st, f.info) && st.Size() == f.info.Size() && st.ModTime().Equal(f.info.ModTime())) {
		return f.set
	}
	b, err := os.ReadFile(f.path)
	if err != nil {
		return f.set
	}
	set, err := parseSet(b)
	if err != nil {
		return f.set
	}
	f.set, f.info = set, st
	return f.set
}

func (f *fileKeys) key(_ context.Context, alg jwa.SignatureAlgorithm, kid string) (jwk.Key, *Error) {
	k, rej, _ := pick(f.current(), alg, kid)
	return k, rej
}

// urlKeys is a JWK Set fetched from a URL and kept by a jwk.Cache.
type urlKeys struct {
	url     string
	cache   *jwk.Cache
	res     *httprc.ResourceBase[jwk.Set]
	now     func() time.Time
	stopped atomic.Bool // the cache's context is done

	mu         sync.Mutex // serializes forced fetches
	lastForced time.Time
}

func newURLKeys(ctx context.Context, u string, hc *http.Client, now func() time.Time) (*urlKeys, error) {
	cache, err := jwk.NewCache(ctx, httprc.NewClient(httprc.WithWorkers(1)))
	if err != nil {
		return nil, fmt.Errorf("auth: JWKS cache: %w", err)
	}
	opts := []jwk.RegisterOption{
		jwk.WithWaitReady(false),
		jwk.WithConstantInterval(urlRefreshInterval),
	}
	if hc != nil {
		opts = append(opts, jwk.WithHTTPClient(jwk.WrapHTTPClientDefaults(hc)))
	}
	var res *httprc.ResourceBase[jwk.Set]
	if err = cache.Register(ctx, u, opts...); err == nil {
		res, err = cache.LookupResource(ctx, u)
	}
	if err != nil {
		cache.Shutdown(context.Background())
		return nil, fmt.Errorf("auth: JWKS URL: %w", err)
	}
	k := &urlKeys{url: u, cache: cache, res: res, now: now}
	context.AfterFunc(ctx, func() { k.stopped.Store(true) })
	return k, nil
}

func (k *urlKeys) key(ctx context.Context, alg jwa.SignatureAlgorithm, kid string) (jwk.Key, *Error) {
	set := k.res.Resource()
	key, rej, retry := pick(set, alg, kid)
	if retry && k.refresh(ctx, set) {
		key, rej, _ = pick(k.res.Resource(), alg, kid)
	}
	return key, rej
}

// refresh fetches the set anew, unless another caller replaced seen
// meanwhile, or a forced fetch happened less than urlForcedInterval ago. It
// reports whether there may be a newer set than seen.
func (k *urlKeys) refresh(ctx context.Context, seen jwk.Set) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.res.Resource() != seen {
		return true
	}
	if k.stopped.Load() {
		return false
	}
	now := k.now()
	if d := now.Sub(k.lastForced); !k.lastForced.IsZero() && d >= 0 && d < urlForcedInterval {
		return false
	}
	k.lastForced = now
	ctx, cancel := context.WithTimeout(ctx, urlFetchTimeout)
	defer cancel()
	_, err := k.cache.Refresh(ctx, k.url)
	return err == nil
}
