package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"
)

const (
	testIssuer   = "https://idp.example/realms/fhir"
	testAudience = "https://fhir.example/fhir"
	testSubject  = "subject-7f3a9c"
)

// t0 is the fixed "now" of the table tests.
var t0 = time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)

// clock is a settable clock, safe for concurrent use.
type clock struct{ ns atomic.Int64 }

func newClock(t time.Time) *clock {
	c := &clock{}
	c.ns.Store(t.UnixNano())
	return c
}
func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// keyOf generates a private JWK of kind "rsa", "ec" or "ed" with the kid.
func keyOf(t testing.TB, kind, kid string) jwk.Key {
	t.Helper()
	var raw any
	var err error
	switch kind {
	case "rsa":
		raw, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ec":
		raw, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ed":
		_, raw, err = ed25519.GenerateKey(rand.Reader)
	default:
		t.Fatalf("unknown key kind %q", kind)
	}
	if err != nil {
		t.Fatal(err)
	}
	k, err := jwk.Import(raw)
	if err != nil {
		t.Fatal(err)
	}
	if kid != "" {
		if err := k.Set(jwk.KeyIDKey, kid); err != nil {
			t.Fatal(err)
		}
	}
	return k
}

// publicSet returns the JSON JWK Set of the public halves of keys.
func publicSet(t testing.TB, keys ...jwk.Key) []byte {
	t.Helper()
	set := jwk.NewSet()
	for _, k := range keys {
		pub, err := k.PublicKey()
		if err != nil {
			t.Fatal(err)
		}
		if err := set.AddKey(pub); err != nil {
			t.Fatal(err)
		}
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// baseClaims are valid claims at t0.
func baseClaims() map[string]any {
	return map[string]any{
		"iss":   testIssuer,
		"aud":   testAudience,
		"sub":   testSubject,
		"iat":   t0.Add(-time.Minute).Unix(),
		"exp":   t0.Add(5 * time.Minute).Unix(),
		"jti":   "jti-1",
		"scope": "user/*.read openid",
	}
}

// with returns baseClaims changed by kv pairs; a nil value deletes.
func with(kv ...any) map[string]any {
	c := baseClaims()
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(c, kv[i].(string))
		} else {
			c[kv[i].(string)] = kv[i+1]
		}
	}
	return c
}

// sign signs claims with key and alg; extra are more protected headers.
func sign(t testing.TB, key any, alg jwa.SignatureAlgorithm, claims map[string]any, extra map[string]any) string {
	t.Helper()
	tok := jwt.New()
	for k, v := range claims {
		if err := tok.Set(k, v); err != nil {
			t.Fatal(err)
		}
	}
	hdr := jws.NewHeaders()
	for k, v := range extra {
		if err := hdr.Set(k, v); err != nil {
			t.Fatal(err)
		}
	}
	b, err := jwt.Sign(tok, jwt.WithKey(alg, key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// withKid returns a copy of k with the kid.
func withKid(t testing.TB, k jwk.Key, kid string) jwk.Key {
	t.Helper()
	c, err := k.Clone()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Set(jwk.KeyIDKey, kid); err != nil {
		t.Fatal(err)
	}
	return c
}

func b64(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// assertRejected checks that err is an *Error with the description, and
// that its text leaks neither the token nor claim values.
func assertRejected(t *testing.T, err error, raw, want string) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("Verify error = %v (%T), want *Error %q", err, err, want)
	}
	if e.Code != "invalid_token" {
		t.Errorf("Code = %q, want invalid_token", e.Code)
	}
	if e.Description != want {
		t.Errorf("Description = %q, want %q (cause: %v)", e.Description, want, e.Err)
	}
	for _, secret := range []string{raw, testSubject, testIssuer, testAudience, "wrong-issuer", "wrong-audience", "rsa1", "ec1", "ed1", "nope"} {
		if secret != "" && (strings.Contains(e.Error(), secret) || strings.Contains(e.Description, secret)) {
			t.Errorf("error %q reveals %q", e.Error(), secret)
		}
	}
}

// tableKeys are the signing keys of the table tests; their public halves
// are in the Verifier's set.
type tableKeys struct{ rsa, ec, ed, other jwk.Key }

func newTableKeys(t testing.TB) tableKeys {
	return tableKeys{
		rsa:   keyOf(t, "rsa", "rsa1"),
		ec:    keyOf(t, "ec", "ec1"),
		ed:    keyOf(t, "ed", "ed1"),
		other: keyOf(t, "ed", "ed1"), // same kid as ed, not in the set
	}
}

func TestVerify(t *testing.T) {
	k := newTableKeys(t)
	rsaPub, err := k.rsa.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	var rawRSAPub any
	if err := jwk.Export(rsaPub, &rawRSAPub); err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(rawRSAPub)
	if err != nil {
		t.Fatal(err)
	}
	rsaPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	rsaJWK, err := json.Marshal(rsaPub)
	if err != nil {
		t.Fatal(err)
	}
	noKid, err := k.ed.Clone()
	if err != nil {
		t.Fatal(err)
	}
	noKid.Remove(jwk.KeyIDKey)

	v, err := NewVerifier(t.Context(), Config{
		JWKS:     publicSet(t, k.rsa, k.ec, k.ed),
		Issuer:   testIssuer,
		Audience: testAudience,
		Now:      func() time.Time { return t0 },
	})
	if err != nil {
		t.Fatal(err)
	}

	ok := func(mod func(*Claims)) *Claims {
		c := &Claims{
			Subject: testSubject, Issuer: testIssuer, ID: "jti-1",
			Audience: []string{testAudience},
			Scope:    "user/*.read openid",
			Expiry:   t0.Add(5 * time.Minute), IssuedAt: t0.Add(-time.Minute),
		}
		if mod != nil {
			mod(c)
		}
		return c
	}
	edTok := sign(t, k.ed, jwa.EdDSA(), baseClaims(), nil)
	parts := strings.Split(edTok, ".")
	flip := func(s string, i int) string {
		b := []byte(s)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return string(b)
	}

	tests := []struct {
		name string
		raw  string
		want *Claims // nil: rejected with desc
		desc string
	}{
		{name: "RS256", raw: sign(t, k.rsa, jwa.RS256(), baseClaims(), nil), want: ok(nil)},
		{name: "ES256", raw: sign(t, k.ec, jwa.ES256(), baseClaims(), nil), want: ok(nil)},
		{name: "EdDSA", raw: edTok, want: ok(nil)},
		{name: "no kid, one key of the type", raw: sign(t, noKid, jwa.EdDSA(), baseClaims(), nil), want: ok(nil)},
		{
			name: "aud array",
			raw:  sign(t, k.ed, jwa.EdDSA(), with("aud", []string{"other", testAudience}), nil),
			want: ok(func(c *Claims) { c.Audience = []string{"other", testAudience} }),
		},
		{
			name: "nbf and typ at+jwt",
			raw:  sign(t, k.ed, jwa.EdDSA(), with("nbf", t0.Add(-time.Minute).Unix()), map[string]any{"typ": "at+jwt"}),
			want: ok(func(c *Claims) { c.NotBefore = t0.Add(-time.Minute) }),
		},

		// Lifetime, with the 60s default leeway.
		{name: "expired", raw: sign(t, k.ed, jwa.EdDSA(), with("exp", t0.Add(-2*time.Minute).Unix()), nil), desc: "token expired"},
		{name: "expired at now+leeway", raw: sign(t, k.ed, jwa.EdDSA(), with("exp", t0.Add(-60*time.Second).Unix()), nil), desc: "token expired"},
		{
			name: "expired within leeway",
			raw:  sign(t, k.ed, jwa.EdDSA(), with("exp", t0.Add(-30*time.Second).Unix()), nil),
			want: ok(func(c *Claims) { c.Expiry = t0.Add(-30 * time.Second) }),
		},
		{name: "nbf in the future", raw: sign(t, k.ed, jwa.EdDSA(), with("nbf", t0.Add(5*time.Minute).Unix()), nil), desc: "token is not valid yet (nbf)"},
		{
			name: "nbf within leeway",
			raw:  sign(t, k.ed, jwa.EdDSA(), with("nbf", t0.Add(30*time.Second).Unix()), nil),
			want: ok(func(c *Claims) { c.NotBefore = t0.Add(30 * time.Second) }),
		},
		{name: "iat in the future", raw: sign(t, k.ed, jwa.EdDSA(), with("iat", t0.Add(5*time.Minute).Unix()), nil), desc: "token is issued in the future (iat)"},
		{
			name: "iat within leeway",
			raw:  sign(t, k.ed, jwa.EdDSA(), with("iat", t0.Add(30*time.Second).Unix()), nil),
			want: ok(func(c *Claims) { c.IssuedAt = t0.Add(30 * time.Second) }),
		},
		{name: "missing exp", raw: sign(t, k.ed, jwa.EdDSA(), with("exp", nil), nil), desc: "token has no expiry (exp)"},
		{name: "exp not a number", raw: signRaw(t, k.ed, []byte(`{"iss":"`+testIssuer+`","aud":"`+testAudience+`","sub":"x","exp":"tomorrow"}`)), desc: "token claims are malformed"},

		// Issuer and audience.
		{name: "wrong iss", raw: sign(t, k.ed, jwa.EdDSA(), with("iss", "wrong-issuer"), nil), desc: "token issuer is not accepted"},
		{name: "iss with trailing slash", raw: sign(t, k.ed, jwa.EdDSA(), with("iss", testIssuer+"/"), nil), desc: "token issuer is not accepted"},
		{name: "missing iss", raw: sign(t, k.ed, jwa.EdDSA(), with("iss", nil), nil), desc: "token issuer is not accepted"},
		{name: "wrong aud", raw: sign(t, k.ed, jwa.EdDSA(), with("aud", "wrong-audience"), nil), desc: "token audience does not include this server"},
		{name: "missing aud", raw: sign(t, k.ed, jwa.EdDSA(), with("aud", nil), nil), desc: "token audience does not include this server"},

		// Signature, algorithm and key.
		{name: "tampered payload", raw: parts[0] + "." + b64(with("scope", "system/*.*")) + "." + parts[2], desc: "token signature is invalid"},
		{name: "tampered signature", raw: parts[0] + "." + parts[1] + "." + flip(parts[2], 10), desc: "token signature is invalid"},
		{name: "signature of another key with the same kid", raw: sign(t, k.other, jwa.EdDSA(), baseClaims(), nil), desc: "token signature is invalid"},
		{name: "alg none", raw: b64(map[string]any{"alg": "none", "kid": "ed1"}) + "." + parts[1] + ".", desc: "token algorithm is not accepted"},
		{name: "alg none, no kid", raw: b64(map[string]any{"alg": "none"}) + "." + parts[1] + ".", desc: "token algorithm is not accepted"},
		{name: "HS256 with the RSA public key PEM (key confusion)", raw: sign(t, rsaPEM, jwa.HS256(), baseClaims(), map[string]any{"kid": "rsa1"}), desc: "token algorithm is not accepted"},
		{name: "HS256 with the RSA public JWK (key confusion)", raw: sign(t, rsaJWK, jwa.HS256(), baseClaims(), map[string]any{"kid": "rsa1"}), desc: "token algorithm is not accepted"},
		{name: "RS384", raw: sign(t, k.rsa, jwa.RS384(), baseClaims(), nil), desc: "token algorithm is not accepted"},
		{name: "PS256", raw: sign(t, k.rsa, jwa.PS256(), baseClaims(), nil), desc: "token algorithm is not accepted"},
		{name: "ES256 header on the RSA kid", raw: sign(t, withKid(t, k.ec, "rsa1"), jwa.ES256(), baseClaims(), nil), desc: "token algorithm does not match its key"},
		{name: "RS256 header on the EdDSA kid", raw: sign(t, withKid(t, k.rsa, "ed1"), jwa.RS256(), baseClaims(), nil), desc: "token algorithm does not match its key"},
		{name: "unknown kid", raw: sign(t, withKid(t, k.ed, "nope"), jwa.EdDSA(), baseClaims(), nil), desc: "no key matches the token's kid"},
		{name: "crit header", raw: sign(t, k.ed, jwa.EdDSA(), baseClaims(), map[string]any{"crit": []string{"exp"}, "exp": 1}), desc: "token uses an unsupported header parameter"},

		// Shape.
		{name: "empty", raw: "", desc: "token is missing"},
		{name: "garbage", raw: "not-a-token", desc: "token is malformed"},
		{name: "two parts", raw: parts[0] + "." + parts[1], desc: "token is malformed"},
		{name: "JWE shape", raw: parts[0] + ".." + parts[1] + ".." + parts[2], desc: "token is malformed"},
		{name: "header not JSON", raw: base64.RawURLEncoding.EncodeToString([]byte("{nope")) + "." + parts[1] + "." + parts[2], desc: "token is malformed"},
		{name: "too large", raw: sign(t, k.ed, jwa.EdDSA(), with("pad", strings.Repeat("x", 20000)), nil), desc: "token is too large"},
		{name: "payload not a claims set", raw: signRaw(t, k.ed, []byte("[1,2]")), desc: "token claims are malformed"},

		// Subject and client.
		{name: "neither sub nor client_id", raw: sign(t, k.ed, jwa.EdDSA(), with("sub", nil), nil), desc: "token has neither sub nor client_id"},
		{
			name: "client_id only",
			raw:  sign(t, k.ed, jwa.EdDSA(), with("sub", nil, "client_id", "svc-1"), nil),
			want: ok(func(c *Claims) { c.Subject, c.ClientID = "", "svc-1" }),
		},
		{
			name: "azp",
			raw:  sign(t, k.ed, jwa.EdDSA(), with("azp", "app-1"), nil),
			want: ok(func(c *Claims) { c.ClientID = "app-1" }),
		},
		{
			name: "client_id wins over azp",
			raw:  sign(t, k.ed, jwa.EdDSA(), with("azp", "app-1", "client_id", "svc-1"), nil),
			want: ok(func(c *Claims) { c.ClientID = "svc-1" }),
		},
		{name: "client_id not a string", raw: sign(t, k.ed, jwa.EdDSA(), with("client_id", 7), nil), desc: "token client_id claim is not a string"},

		// SMART claims.
		{
			name: "scope as array",
			raw:  sign(t, k.ed, jwa.EdDSA(), with("scope", []string{"patient/Observation.rs", "launch/patient"}), nil),
			want: ok(func(c *Claims) { c.Scope = "patient/Observation.rs launch/patient" }),
		},
		{
			name: "scp as array",
			raw:  sign(t, k.ed, jwa.EdDSA(), with("scope", nil, "scp", []string{"system/*.*"}), nil),
			want: ok(func(c *Claims) { c.Scope = "system/*.*" }),
		},
		{
			name: "scope with extra spaces",
			raw:  sign(t, k.ed, jwa.EdDSA(), with("scope", "  user/*.read\tuser/Patient.cruds "), nil),
			want: ok(func(c *Claims) { c.Scope = "user/*.read user/Patient.cruds" }),
		},
		{
			name: "no scope",
			raw:  sign(t, k.ed, jwa.EdDSA(), with("scope", nil), nil),
			want: ok(func(c *Claims) { c.Scope = "" }),
		},
		{name: "scope a number", raw: sign(t, k.ed, jwa.EdDSA(), with("scope", 3), nil), desc: "token scope claim is not a string or an array of strings"},
		{name: "scope array of numbers", raw: sign(t, k.ed, jwa.EdDSA(), with("scope", []int{3}), nil), desc: "token scope claim is not a string or an array of strings"},
		{
			name: "fhirUser relative",
			raw:  sign(t, k.ed, jwa.EdDSA(), with("fhirUser", "Practitioner/p1"), nil),
			want: ok(func(c *Claims) { c.FHIRUser = "Practitioner/p1" }),
		},
		{
			name: "fhirUser absolute URL",
			raw:  sign(t, k.ed, jwa.EdDSA(), with("fhirUser", "https://ehr.example/fhir/r4/Practitioner/p1"), nil),
			want: ok(func(c *Claims) { c.FHIRUser = "Practitioner/p1" }),
		},
		{name: "fhirUser not a string", raw: sign(t, k.ed, jwa.EdDSA(), with("fhirUser", []string{"Practitioner/p1"}), nil), desc: "token fhirUser claim is not a string"},
		{
			name: "patient launch context",
			raw:  sign(t, k.ed, jwa.EdDSA(), with("patient", "123"), nil),
			want: ok(func(c *Claims) { c.Patient = "Patient/123" }),
		},
		{
			name: "patient as reference",
			raw:  sign(t, k.ed, jwa.EdDSA(), with("patient", "Patient/123"), nil),
			want: ok(func(c *Claims) { c.Patient = "Patient/123" }),
		},
		{
			name: "purpose_of_use string",
			raw:  sign(t, k.ed, jwa.EdDSA(), with("purpose_of_use", "ETREAT"), nil),
			want: ok(func(c *Claims) { c.PurposeOfUse = "ETREAT" }),
		},
		{
			name: "purpose_of_use array",
			raw:  sign(t, k.ed, jwa.EdDSA(), with("purpose_of_use", []string{"ETREAT", "TREAT"}), nil),
			want: ok(func(c *Claims) { c.PurposeOfUse = "ETREAT" }),
		},
		{
			name: "purpose_of_use empty array",
			raw:  sign(t, k.ed, jwa.EdDSA(), with("purpose_of_use", []string{}), nil),
			want: ok(nil),
		},
		{name: "purpose_of_use object", raw: sign(t, k.ed, jwa.EdDSA(), with("purpose_of_use", map[string]string{"code": "ETREAT"}), nil), desc: "token purpose_of_use claim is not a string or an array of strings"},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			got, err := v.Verify(t.Context(), test.raw)
			if test.want == nil {
				if err == nil {
					t.Fatalf("Verify = %+v, want error %q", got, test.desc)
				}
				assertRejected(t, err, test.raw, test.desc)
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v (cause: %v)", err, errors.Unwrap(err))
			}
			if diff := cmp.Diff(test.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Verify claims mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// signRaw signs an arbitrary payload as a compact JWS.
func signRaw(t testing.TB, key jwk.Key, payload []byte) string {
	t.Helper()
	b, err := jws.Sign(payload, jws.WithKey(jwa.EdDSA(), key))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestVerifyNoKid(t *testing.T) {
	rsa1, rsa2, ed := keyOf(t, "rsa", "rsa1"), keyOf(t, "rsa", "rsa2"), keyOf(t, "ed", "ed1")
	strip := func(k jwk.Key) jwk.Key {
		c, err := k.Clone()
		if err != nil {
			t.Fatal(err)
		}
		c.Remove(jwk.KeyIDKey)
		return c
	}
	tests := []struct {
		name string
		set  []jwk.Key
		key  jwk.Key
		alg  jwa.SignatureAlgorithm
		desc string // "" = accepted
	}{
		{name: "one key of the type among others", set: []jwk.Key{rsa1, ed}, key: strip(rsa1), alg: jwa.RS256()},
		{name: "two keys of the type", set: []jwk.Key{rsa1, rsa2, ed}, key: strip(rsa1), alg: jwa.RS256(), desc: "token has no kid and several keys could verify it"},
		{name: "no key of the type", set: []jwk.Key{ed}, key: strip(rsa1), alg: jwa.RS256(), desc: "no key can verify the token"},
		{name: "one key, wrong signer", set: []jwk.Key{rsa1}, key: strip(rsa2), alg: jwa.RS256(), desc: "token signature is invalid"},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			v, err := NewVerifier(t.Context(), Config{
				JWKS: publicSet(t, test.set...), Issuer: testIssuer, Audience: testAudience,
				Now: func() time.Time { return t0 },
			})
			if err != nil {
				t.Fatal(err)
			}
			raw := sign(t, test.key, test.alg, baseClaims(), nil)
			_, err = v.Verify(t.Context(), raw)
			if test.desc == "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				return
			}
			assertRejected(t, err, raw, test.desc)
		})
	}
}

// TestVerifyKeyConstraints checks that a JWK's alg, use and key_ops, and
// the EC curve, limit what it verifies.
func TestVerifyKeyConstraints(t *testing.T) {
	ec384raw, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ec384, err := jwk.Import(ec384raw)
	if err != nil {
		t.Fatal(err)
	}
	ec384.Set(jwk.KeyIDKey, "ec384")
	edx := keyOf(t, "ed", "edx") // so that every set can verify something
	tests := []struct {
		name  string
		field string
		value any
		desc  string
	}{
		{name: "alg matches", field: jwk.AlgorithmKey, value: "RS256"},
		{name: "alg differs", field: jwk.AlgorithmKey, value: "PS256", desc: "token algorithm does not match its key"},
		{name: "use sig", field: jwk.KeyUsageKey, value: "sig"},
		{name: "use enc", field: jwk.KeyUsageKey, value: "enc", desc: "token algorithm does not match its key"},
		{name: "key_ops verify", field: jwk.KeyOpsKey, value: []string{"verify"}},
		{name: "key_ops encrypt", field: jwk.KeyOpsKey, value: []string{"encrypt"}, desc: "token algorithm does not match its key"},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			k := keyOf(t, "rsa", "rsa1")
			pub, err := k.PublicKey()
			if err != nil {
				t.Fatal(err)
			}
			if err := pub.Set(test.field, test.value); err != nil {
				t.Fatal(err)
			}
			v, err := NewVerifier(t.Context(), Config{
				JWKS: publicSet(t, pub, ec384, edx), Issuer: testIssuer, Audience: testAudience,
				Now: func() time.Time { return t0 },
			})
			if err != nil {
				t.Fatal(err)
			}
			raw := sign(t, k, jwa.RS256(), baseClaims(), nil)
			_, err = v.Verify(t.Context(), raw)
			if test.desc == "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				return
			}
			assertRejected(t, err, raw, test.desc)
		})
	}
	t.Run("ES256 on a P-384 key", func(t *testing.T) {
		v, err := NewVerifier(t.Context(), Config{
			JWKS: publicSet(t, keyOf(t, "ed", "ed1"), ec384), Issuer: testIssuer, Audience: testAudience,
			Now: func() time.Time { return t0 },
		})
		if err != nil {
			t.Fatal(err)
		}
		// A P-256 key whose kid names the P-384 key.
		ec256 := keyOf(t, "ec", "ec384")
		raw := sign(t, ec256, jwa.ES256(), baseClaims(), nil)
		_, err = v.Verify(t.Context(), raw)
		assertRejected(t, err, raw, "token algorithm does not match its key")
	})
}

func TestVerifyLeeway(t *testing.T) {
	k := keyOf(t, "ed", "ed1")
	tests := []struct {
		name   string
		leeway time.Duration
		exp    time.Duration // relative to t0
		desc   string
	}{
		{name: "default, 59s past", exp: -59 * time.Second},
		{name: "default, 61s past", exp: -61 * time.Second, desc: "token expired"},
		{name: "5m, 4m past", leeway: 5 * time.Minute, exp: -4 * time.Minute},
		{name: "5m, 6m past", leeway: 5 * time.Minute, exp: -6 * time.Minute, desc: "token expired"},
		{name: "1s, 2s past", leeway: time.Second, exp: -2 * time.Second, desc: "token expired"},
		{name: "1s, not yet", leeway: time.Second, exp: time.Second},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			v, err := NewVerifier(t.Context(), Config{
				JWKS: publicSet(t, k), Issuer: testIssuer, Audience: testAudience,
				Leeway: test.leeway, Now: func() time.Time { return t0 },
			})
			if err != nil {
				t.Fatal(err)
			}
			raw := sign(t, k, jwa.EdDSA(), with("iat", t0.Add(-time.Hour).Unix(), "exp", t0.Add(test.exp).Unix()), nil)
			_, err = v.Verify(t.Context(), raw)
			if test.desc == "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				return
			}
			assertRejected(t, err, raw, test.desc)
		})
	}
}

func TestNewVerifierConfig(t *testing.T) {
	good := publicSet(t, keyOf(t, "ed", "ed1"))
	oct, err := jwk.Import([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	octSet := jwk.NewSet()
	octSet.AddKey(oct)
	octJSON, err := json.Marshal(octSet)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "inline", cfg: Config{JWKS: good, Issuer: "i", Audience: "a"}},
		{name: "no source", cfg: Config{Issuer: "i", Audience: "a"}, wantErr: "exactly one"},
		{name: "two sources", cfg: Config{JWKS: good, JWKSURL: "https://idp.example/jwks", Issuer: "i", Audience: "a"}, wantErr: "exactly one"},
		{name: "no issuer", cfg: Config{JWKS: good, Audience: "a"}, wantErr: "Issuer is required"},
		{name: "no audience", cfg: Config{JWKS: good, Issuer: "i"}, wantErr: "Audience is required"},
		{name: "negative leeway", cfg: Config{JWKS: good, Issuer: "i", Audience: "a", Leeway: -time.Second}, wantErr: "Leeway"},
		{name: "bad JSON", cfg: Config{JWKS: []byte("{"), Issuer: "i", Audience: "a"}, wantErr: "JWKS"},
		{name: "empty set", cfg: Config{JWKS: []byte(`{"keys":[]}`), Issuer: "i", Audience: "a"}, wantErr: "no RS256, ES256 or EdDSA"},
		{name: "only a symmetric key", cfg: Config{JWKS: octJSON, Issuer: "i", Audience: "a"}, wantErr: "no RS256, ES256 or EdDSA"},
		{name: "missing file", cfg: Config{JWKSFile: filepath.Join(t.TempDir(), "nope.json"), Issuer: "i", Audience: "a"}, wantErr: "JWKS file"},
		{name: "relative URL", cfg: Config{JWKSURL: "/jwks", Issuer: "i", Audience: "a"}, wantErr: "absolute http(s) URL"},
		{name: "file URL", cfg: Config{JWKSURL: "file:///etc/jwks.json", Issuer: "i", Audience: "a"}, wantErr: "absolute http(s) URL"},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			_, err := NewVerifier(t.Context(), test.cfg)
			switch {
			case test.wantErr == "" && err != nil:
				t.Fatalf("NewVerifier: %v", err)
			case test.wantErr != "" && (err == nil || !strings.Contains(err.Error(), test.wantErr)):
				t.Fatalf("NewVerifier error = %v, want one containing %q", err, test.wantErr)
			}
		})
	}
}

// jwksServer serves a JWK Set that the test can swap, and counts requests.
type jwksServer struct {
	*httptest.Server
	body   atomic.Pointer[[]byte]
	status atomic.Int32
	hits   atomic.Int32 // counted by the client's transport
}

func newJWKSServer(t *testing.T, body []byte) *jwksServer {
	s := &jwksServer{}
	s.set(body)
	s.status.Store(http.StatusOK)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if st := int(s.status.Load()); st != http.StatusOK {
			http.Error(w, "down", st)
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.Write(*s.body.Load())
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(b []byte) { s.body.Store(&b) }

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// client counts the requests it makes.
func (s *jwksServer) client() *http.Client {
	base := s.Server.Client().Transport
	return &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		s.hits.Add(1)
		return base.RoundTrip(r)
	})}
}

// waitHits waits until the server has been asked at least n times.
func waitHits(t *testing.T, s *jwksServer, n int32) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.hits.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("JWKS fetched %d times, want at least %d", s.hits.Load(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestJWKSURLRotation(t *testing.T) {
	k1, k2, k3 := keyOf(t, "ec", "k1"), keyOf(t, "rsa", "k2"), keyOf(t, "ed", "k3")
	srv := newJWKSServer(t, publicSet(t, k1))
	clk := newClock(t0)
	v, err := NewVerifier(t.Context(), Config{
		JWKSURL: srv.URL + "/jwks", HTTPClient: srv.client(),
		Issuer: testIssuer, Audience: testAudience, Now: clk.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Let the background first fetch land, so the counts below are exact.
	if err := v.keys.(*urlKeys).res.Ready(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitHits(t, srv, 1)

	steps := []struct {
		name    string
		advance time.Duration
		serve   []jwk.Key // nil: unchanged
		key     jwk.Key
		alg     jwa.SignatureAlgorithm
		desc    string // "" = accepted
		hits    int32  // fetches so far
	}{
		{name: "k1 from the first fetch", key: k1, alg: jwa.ES256(), hits: 1},
		{name: "k2 after rotation: re-fetched", advance: time.Second, serve: []jwk.Key{k2}, key: k2, alg: jwa.RS256(), hits: 2},
		{name: "k1 is gone; no second fetch within 10s", advance: time.Second, key: k1, alg: jwa.ES256(), desc: "no key matches the token's kid", hits: 2},
		{name: "k3 unknown within 10s: not fetched", advance: time.Second, serve: []jwk.Key{k2, k3}, key: k3, alg: jwa.EdDSA(), desc: "no key matches the token's kid", hits: 2},
		{name: "k2 still known, no fetch", key: k2, alg: jwa.RS256(), hits: 2},
		{name: "k3 after 10s: re-fetched", advance: 10 * time.Second, key: k3, alg: jwa.EdDSA(), hits: 3},
	}
	for _, step := range steps {
		clk.Advance(step.advance)
		if step.serve != nil {
			srv.set(publicSet(t, step.serve...))
		}
		raw := sign(t, step.key, step.alg, with("iat", clk.Now().Unix(), "exp", clk.Now().Add(time.Hour).Unix()), nil)
		_, err := v.Verify(t.Context(), raw)
		if step.desc == "" && err != nil {
			t.Fatalf("%s: Verify: %v", step.name, err)
		}
		if step.desc != "" {
			assertRejected(t, err, raw, step.desc)
		}
		if got := srv.hits.Load(); got != step.hits {
			t.Fatalf("%s: JWKS fetched %d times, want %d", step.name, got, step.hits)
		}
	}
}

func TestJWKSURLDownAtBoot(t *testing.T) {
	k := keyOf(t, "ed", "k1")
	srv := newJWKSServer(t, publicSet(t, k))
	srv.status.Store(http.StatusServiceUnavailable)
	clk := newClock(t0)
	v, err := NewVerifier(t.Context(), Config{
		JWKSURL: srv.URL, HTTPClient: srv.client(),
		Issuer: testIssuer, Audience: testAudience, Now: clk.Now,
	})
	if err != nil {
		t.Fatalf("NewVerifier with the IdP down: %v", err)
	}
	waitHits(t, srv, 1)
	raw := sign(t, k, jwa.EdDSA(), baseClaims(), nil)

	_, err = v.Verify(t.Context(), raw)
	assertRejected(t, err, raw, "token signing keys are not available")
	if !errors.Is(err, ErrKeysUnavailable) {
		t.Errorf("error %v does not wrap ErrKeysUnavailable", err)
	}
	if got := srv.hits.Load(); got != 2 {
		t.Errorf("JWKS fetched %d times, want 2 (boot, then on use)", got)
	}

	srv.status.Store(http.StatusOK)
	if _, err := v.Verify(t.Context(), raw); err == nil {
		t.Fatal("Verify succeeded less than 10s after a failed fetch; want no fetch")
	}
	clk.Advance(11 * time.Second)
	if _, err := v.Verify(t.Context(), raw); err != nil {
		t.Fatalf("Verify after the IdP came back: %v", err)
	}

	// A failed fetch keeps the set.
	srv.status.Store(http.StatusInternalServerError)
	clk.Advance(11 * time.Second)
	unknown := sign(t, keyOf(t, "ed", "k9"), jwa.EdDSA(), baseClaims(), nil)
	if _, err := v.Verify(t.Context(), unknown); err == nil {
		t.Fatal("Verify with an unknown kid succeeded")
	}
	if _, err := v.Verify(t.Context(), raw); err != nil {
		t.Fatalf("Verify after a failed re-fetch: %v", err)
	}
}

// TestJWKSURLStopped checks that a Verifier whose context is done keeps
// its last set and does not block on the stopped cache.
func TestJWKSURLStopped(t *testing.T) {
	k := keyOf(t, "ed", "k1")
	srv := newJWKSServer(t, publicSet(t, k))
	clk := newClock(t0)
	ctx, cancel := context.WithCancel(t.Context())
	v, err := NewVerifier(ctx, Config{
		JWKSURL: srv.URL, HTTPClient: srv.client(),
		Issuer: testIssuer, Audience: testAudience, Now: clk.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.keys.(*urlKeys).res.Ready(t.Context()); err != nil {
		t.Fatal(err)
	}
	cancel()
	waitFor(t, v.keys.(*urlKeys).stopped.Load)
	if _, err := v.Verify(t.Context(), sign(t, k, jwa.EdDSA(), baseClaims(), nil)); err != nil {
		t.Fatalf("Verify after stop: %v", err)
	}
	start := time.Now()
	raw := sign(t, keyOf(t, "ed", "k2"), jwa.EdDSA(), baseClaims(), nil)
	_, err = v.Verify(t.Context(), raw)
	assertRejected(t, err, raw, "no key matches the token's kid")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Verify took %v after stop", d)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// writeAtomic replaces path the way a deploy tool would.
func writeAtomic(t *testing.T, path string, b []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestJWKSFileRotation(t *testing.T) {
	k1, k2 := keyOf(t, "ed", "k1"), keyOf(t, "ed", "k2")
	path := filepath.Join(t.TempDir(), "jwks.json")
	writeAtomic(t, path, publicSet(t, k1))
	clk := newClock(t0)
	v, err := NewVerifier(t.Context(), Config{JWKSFile: path, Issuer: testIssuer, Audience: testAudience, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	tok := func(k jwk.Key) string {
		return sign(t, k, jwa.EdDSA(), with("iat", clk.Now().Unix(), "exp", clk.Now().Add(time.Hour).Unix()), nil)
	}
	steps := []struct {
		name    string
		advance time.Duration
		write   []byte // nil: unchanged
		inPlace bool   // rewrite in place rather than rename
		key     jwk.Key
		desc    string
	}{
		{name: "k1", key: k1},
		{name: "rewritten with k2, checked within a second: still k1", write: publicSet(t, k2), key: k1},
		{name: "k2 not yet", key: k2, desc: "no key matches the token's kid"},
		{name: "k2 after a second", advance: 1100 * time.Millisecond, key: k2},
		{name: "k1 gone", key: k1, desc: "no key matches the token's kid"},
		{name: "broken rewrite keeps k2", advance: 2 * time.Second, write: []byte(`{"keys": [`), key: k2},
		{name: "rewritten in place with k1 and k2", advance: 2 * time.Second, write: publicSet(t, k1, k2), inPlace: true, key: k1},
	}
	for _, step := range steps {
		if step.write != nil {
			if step.inPlace {
				if err := os.WriteFile(path, step.write, 0o644); err != nil {
					t.Fatal(err)
				}
			} else {
				writeAtomic(t, path, step.write)
			}
		}
		clk.Advance(step.advance)
		raw := tok(step.key)
		_, err := v.Verify(t.Context(), raw)
		if step.desc == "" && err != nil {
			t.Fatalf("%s: Verify: %v", step.name, err)
		}
		if step.desc != "" {
			assertRejected(t, err, raw, step.desc)
		}
	}
}

// TestVerifyConcurrent exercises the file and URL sources from several
// goroutines while the sets rotate (run with -race).
func TestVerifyConcurrent(t *testing.T) {
	keys := []jwk.Key{keyOf(t, "ed", "k0"), keyOf(t, "ed", "k1"), keyOf(t, "ed", "k2")}
	path := filepath.Join(t.TempDir(), "jwks.json")
	writeAtomic(t, path, publicSet(t, keys...))
	srv := newJWKSServer(t, publicSet(t, keys...))
	clk := newClock(t0)
	fileV, err := NewVerifier(t.Context(), Config{JWKSFile: path, Issuer: testIssuer, Audience: testAudience, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	urlV, err := NewVerifier(t.Context(), Config{JWKSURL: srv.URL, HTTPClient: srv.client(), Issuer: testIssuer, Audience: testAudience, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	toks := make([]string, len(keys))
	for i, k := range keys {
		toks[i] = sign(t, k, jwa.EdDSA(), with("exp", t0.Add(time.Hour).Unix()), nil)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 50 {
				for _, v := range []*Verifier{fileV, urlV} {
					if _, err := v.Verify(t.Context(), toks[(g+i)%len(toks)]); err != nil {
						t.Errorf("Verify: %v", err)
						return
					}
				}
				clk.Advance(100 * time.Millisecond)
			}
		})
	}
	for range 20 {
		writeAtomic(t, path, publicSet(t, keys...))
		srv.set(publicSet(t, keys...))
		time.Sleep(time.Millisecond)
	}
	wg.Wait()
}
