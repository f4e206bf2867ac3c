package auth

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jwt"
)

// DevKeyFile is the name of the dev signing key file in the data directory.
const DevKeyFile = "token-signing.jwk"

// DevKey is the embedded dev issuer's signing key: an Ed25519 key whose kid
// is its RFC 7638 thumbprint.
type DevKey struct {
	priv jwk.Key
	jwks []byte
}

// GenerateDevKey returns a new in-memory dev key.
func GenerateDevKey() (*DevKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("auth: generate dev key: %w", err)
	}
	k, err := jwk.Import(priv)
	if err != nil {
		return nil, fmt.Errorf("auth: generate dev key: %w", err)
	}
	return newDevKey(k)
}

// newDevKey checks that k is an Ed25519 private key, sets its kid to its
// thumbprint, its alg and use, and prepares the public JWK Set.
func newDevKey(k jwk.Key) (*DevKey, error) {
	okp, ok := k.(jwk.OKPPrivateKey)
	if !ok || k.KeyType() != jwa.OKP() {
		return nil, errors.New("auth: dev key is not an OKP private key")
	}
	if crv, _ := okp.Crv(); crv != jwa.Ed25519() {
		return nil, errors.New("auth: dev key is not an Ed25519 key")
	}
	if d, _ := okp.D(); len(d) == 0 {
		return nil, errors.New("auth: dev key is not an OKP private key")
	}
	if err := jwk.AssignKeyID(k, jwk.WithForceAssign(true)); err != nil {
		return nil, fmt.Errorf("auth: dev key: %w", err)
	}
	if err := k.Set(jwk.AlgorithmKey, jwa.EdDSA()); err != nil {
		return nil, fmt.Errorf("auth: dev key: %w", err)
	}
	if err := k.Set(jwk.KeyUsageKey, jwk.ForSignature); err != nil {
		return nil, fmt.Errorf("auth: dev key: %w", err)
	}
	pub, err := k.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("auth: dev key: %w", err)
	}
	set := jwk.NewSet()
	if err := set.AddKey(pub); err != nil {
		return nil, fmt.Errorf("auth: dev key: %w", err)
	}
	b, err := json.Marshal(set)
	if err != nil {
		return nil, fmt.Errorf("auth: dev key: %w", err)
	}
	return &DevKey{priv: k, jwks: b}, nil
}

// LoadOrCreateDevKey returns the dev key in dir/token-signing.jwk, creating
// the directory (0700) and the key (an Ed25519 private JWK, 0600) when they
// do not exist. The file is written atomically and never replaced: when two
// processes create it at once, both end up with the one that landed first.
// An existing file that group or others can access is refused.
func LoadOrCreateDevKey(dir string) (*DevKey, error) {
	path := filepath.Join(dir, DevKeyFile)
	k, err := loadDevKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return k, err
	}
	k, err = GenerateDevKey()
	if err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(k.priv, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("auth: dev key: %w", err)
	}
	if err := createFile(path, append(b, '\n')); errors.Is(err, fs.ErrExist) {
		return loadDevKey(path)
	} else if err != nil {
		return nil, fmt.Errorf("auth: write dev key: %w", err)
	}
	return k, nil
}

func loadDevKey(path string) (*DevKey, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("auth: dev key: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("auth: dev key: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("auth: dev key %s is not a regular file", path)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("auth: dev key %s is accessible by group or others (mode %04o; chmod 600 it)", path, st.Mode().Perm())
	}
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("auth: dev key: %w", err)
	}
	key, err := jwk.ParseKey(b)
	if err != nil {
		return nil, fmt.Errorf("auth: dev key %s: %w", path, err)
	}
	k, err := newDevKey(key)
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, path)
	}
	return k, nil
}

// createFile writes b to path, 0600, atomically (a temporary file linked
// into place), failing with fs.ErrExist if path exists. Where hard links are
// not supported it falls back to a rename.
func createFile(path string, b []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp") // mode 0600
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Link(tmp.Name(), path); errors.Is(err, fs.ErrExist) {
		return err
	} else if err != nil {
		// No hard links here (some network and FUSE file systems).
		if _, serr := os.Lstat(path); serr == nil {
			return fs.ErrExist
		}
		if err := os.Rename(tmp.Name(), path); err != nil {
			return err
		}
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// PublicJWKS returns the JWK Set holding the public key, to verify the
// key's tokens and to serve at /.well-known/jwks.json.
func (k *DevKey) PublicJWKS() []byte { return append([]byte(nil), k.jwks...) }

// KeyID returns the key's kid, its RFC 7638 thumbprint.
func (k *DevKey) KeyID() string {
	kid, _ := k.priv.KeyID()
	return kid
}

// Sign returns a token carrying c, valid for ttl from now. It sets iat to
// now and exp to now+ttl, and, when they are empty, jti to a random value,
// iss to DevIssuer and aud to [DevAudience]. nbf is written when
// c.NotBefore is set. The SMART claims are written the way SMART servers do:
// scope as a space-separated string, fhirUser, patient as a bare id,
// purpose_of_use and client_id, each only when set.
func (k *DevKey) Sign(c Claims, ttl time.Duration) (string, error) {
	if ttl <= 0 {
		return "", errors.New("auth: token ttl must be positive")
	}
	now := time.Now().Truncate(time.Second)
	if c.ID == "" {
		c.ID = rand.Text()
	}
	if c.Issuer == "" {
		c.Issuer = DevIssuer
	}
	if len(c.Audience) == 0 {
		c.Audience = []string{DevAudience}
	}
	b := jwt.NewBuilder().
		Issuer(c.Issuer).
		Audience(c.Audience).
		JwtID(c.ID).
		IssuedAt(now).
		Expiration(now.Add(ttl))
	if c.Subject != "" {
		b = b.Subject(c.Subject)
	}
	if !c.NotBefore.IsZero() {
		b = b.NotBefore(c.NotBefore)
	}
	for _, cl := range []struct{ name, value string }{
		{claimScope, strings.Join(strings.Fields(c.Scope), " ")},
		{claimClientID, c.ClientID},
		{claimFHIRUser, c.FHIRUser},
		{claimPatient, strings.TrimPrefix(c.Patient, "Patient/")},
		{claimPurposeOfUse, c.PurposeOfUse},
	} {
		if cl.value != "" {
			b = b.Claim(cl.name, cl.value)
		}
	}
	tok, err := b.Build()
	if err != nil {
		return "", fmt.Errorf("auth: build token: %w", err)
	}
	s, err := jwt.Sign(tok, jwt.WithKey(jwa.EdDSA(), k.priv))
	if err != nil {
		return "", fmt.Errorf("auth: sign token: %w", err)
	}
	return string(s), nil
}
