// Package auth verifies SMART on FHIR bearer tokens (JWT: RS256, ES256, EdDSA only) and holds the embedded dev issuer's signing key.
//
// A Verifier checks a token's signature against a JWK Set (inline, a file
// or a URL), its algorithm, lifetime, issuer and audience, and returns the
// SMART claims the policy needs, normalized. Every rejection is an *Error
// whose Description is safe to show to the client and to log.
//
// The JOSE work (parsing, signature verification, JWK handling, claim
// validation) is done by github.com/lestrrat-go/jwx/v3; this package only
// decides which key and algorithm are acceptable for a token.
package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"
)

// DevIssuer is the iss of tokens signed by a DevKey.
const DevIssuer = "urn:fhirgate:dev"

// DevAudience is the aud of tokens signed by a DevKey.
const DevAudience = "fhirgate"

// DefaultLeeway is the clock skew allowed on exp, nbf and iat when
// Config.Leeway is zero.
const DefaultLeeway = 60 * time.Second

// maxTokenSize bounds the bearer token Verify accepts; a SMART token with a
// long scope list is a few KiB.
const maxTokenSize = 16 << 10

// ErrKeysUnavailable is wrapped by the *Error that Verify returns when it
// has no key set at all, because the JWKS URL has not answered yet. The
// token may be fine: a caller can map this to 503 rather than 401.
var ErrKeysUnavailable = errors.New("auth: no JWK Set is available")

// Claims are the verified claims of a token, normalized for the policy.
type Claims struct {
	Subject, Issuer, ID string // sub, iss, jti
	Audience            []string
	// ClientID is the client_id claim, or azp when there is no client_id.
	ClientID string
	// Scope is the space-separated scope list: the "scope" claim, or "scp";
	// a JSON array of strings is joined with spaces.
	Scope string
	// FHIRUser is the fhirUser claim as a relative reference
	// ("Practitioner/p1"): an absolute URL ending in /Type/id (optionally
	// followed by /_history/vid) is cut down to Type/id; any other value is
	// kept as is.
	FHIRUser string
	// Patient is the SMART launch context "patient" claim as "Patient/<id>".
	// SMART sends a bare id; a reference is accepted too.
	Patient string
	// PurposeOfUse is the "purpose_of_use" claim, an HL7 v3 ActReason code
	// such as ETREAT. When the claim is an array its first element is used.
	PurposeOfUse string
	// Expiry, IssuedAt and NotBefore are exp, iat and nbf; the zero time
	// when absent (exp is never absent in a verified token).
	Expiry, IssuedAt, NotBefore time.Time
}

// Error is a token rejection. Description is safe for the WWW-Authenticate
// header, the OperationOutcome and logs: it never contains the token or
// claim values.
type Error struct {
	// Code is the RFC 6750 error code: always "invalid_token".
	Code string
	// Description says briefly what is wrong, e.g. "token expired".
	Description string
	// Err is the underlying cause, for errors.Is/As and debugging. Its text
	// comes from the JOSE library and MUST NOT be shown to clients; log it
	// at Debug level at most.
	Err error
}

// Error returns the code and the description; it leaves out Err, so it is
// as safe to log as Description.
func (e *Error) Error() string { return "auth: " + e.Code + ": " + e.Description }

// Unwrap returns Err.
func (e *Error) Unwrap() error { return e.Err }

func reject(desc string, err error) *Error {
	return &Error{Code: "invalid_token", Description: desc, Err: err}
}

// Config configures a Verifier. Issuer, Audience and exactly one of JWKS,
// JWKSFile and JWKSURL are required.
type Config struct {
	// JWKS is an inline JWK Set (JSON).
	JWKS []byte
	// JWKSFile is a JWK Set file. It is re-read when it changes: its
	// identity, size and mtime are checked on use, at most once a second. A
	// rewrite that does not parse keeps the previous set.
	JWKSFile string
	// JWKSURL is an http(s) URL serving a JWK Set. It is fetched in the
	// background with jwk.Cache and refreshed every 15 minutes; a token
	// naming a kid the set does not hold triggers a re-fetch (at most once
	// every 10 seconds). A failed fetch keeps the previous set.
	JWKSURL string
	// Issuer is the exact iss tokens must carry.
	Issuer string
	// Audience is the value the token's aud must contain.
	Audience string
	// Leeway is the clock skew allowed on exp, nbf and iat; zero means
	// DefaultLeeway.
	Leeway time.Duration
	// HTTPClient fetches JWKSURL. nil means jwx's default client (30s
	// timeout, no HTTPS-to-HTTP redirects); a client without a timeout gets
	// the same hardening.
	HTTPClient *http.Client
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Verifier verifies bearer tokens. It is safe for concurrent use.
type Verifier struct {
	issuer, audience string
	leeway           time.Duration
	now              func() time.Time
	keys             keySource
}

// NewVerifier checks cfg and loads the key set. It fails on configuration
// errors, including an inline set or a file that does not parse.
//
// With JWKSURL the first fetch runs in the background and its failure is
// not fatal (the identity provider may be down at boot): Verify fetches the
// set itself when it has none, at most once every 10 seconds. The periodic
// refresh of a JWKSURL set runs until ctx is done, so ctx MUST live as long
// as the Verifier (pass the server's context, not a request's); once ctx is
// done, the Verifier keeps using the last set it fetched.
func NewVerifier(ctx context.Context, cfg Config) (*Verifier, error) {
	n := 0
	for _, set := range []bool{cfg.JWKS != nil, cfg.JWKSFile != "", cfg.JWKSURL != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, errors.New("auth: exactly one of JWKS, JWKSFile and JWKSURL must be set")
	}
	if cfg.Issuer == "" {
		return nil, errors.New("auth: Issuer is required")
	}
	if cfg.Audience == "" {
		return nil, errors.New("auth: Audience is required")
	}
	if cfg.Leeway < 0 {
		return nil, errors.New("auth: Leeway must not be negative")
	}
	v := &Verifier{issuer: cfg.Issuer, audience: cfg.Audience, leeway: cfg.Leeway, now: cfg.Now}
	if v.leeway == 0 {
		v.leeway = DefaultLeeway
	}
	if v.now == nil {
		v.now = time.Now
	}
	var err error
	switch {
	case cfg.JWKS != nil:
		v.keys, err = newStaticKeys(cfg.JWKS)
	case cfg.JWKSFile != "":
		v.keys, err = newFileKeys(cfg.JWKSFile, v.now)
	default:
		u, perr := url.Parse(cfg.JWKSURL)
		if perr != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return nil, errors.New("auth: JWKSURL must be an absolute http(s) URL")
		}
		v.keys, err = newURLKeys(ctx, cfg.JWKSURL, cfg.HTTPClient, v.now)
	}
	if err != nil {
		return nil, err
	}
	return v, nil
}

// acceptedAlg reports whether alg is one of the algorithms fhirgate takes.
func acceptedAlg(alg jwa.SignatureAlgorithm) bool {
	switch alg {
	case jwa.RS256(), jwa.ES256(), jwa.EdDSA():
		return true
	}
	return false
}

// Verify checks raw, a compact JWS without the "Bearer " prefix, and
// returns its claims. It requires a signature by a key of the set (matched
// by kid; a token without kid only when the set holds exactly one key that
// fits its algorithm), alg RS256, ES256 or EdDSA, an exp that has not
// passed, nbf and iat not in the future (all with the leeway), iss equal to
// Config.Issuer, aud containing Config.Audience, and a sub or client_id.
// On failure the error is an *Error.
func (v *Verifier) Verify(ctx context.Context, raw string) (*Claims, error) {
	if raw == "" {
		return nil, reject("token is missing", nil)
	}
	if len(raw) > maxTokenSize {
		return nil, reject("token is too large", nil)
	}
	msg, err := jws.Parse([]byte(raw), jws.WithCompact())
	if err != nil {
		return nil, reject("token is malformed", err)
	}
	sigs := msg.Signatures()
	if len(sigs) != 1 || sigs[0].ProtectedHeaders() == nil {
		return nil, reject("token is malformed", nil)
	}
	hdr := sigs[0].ProtectedHeaders()
	alg, ok := hdr.Algorithm()
	if !ok {
		return nil, reject("token is malformed", errors.New("no alg header"))
	}
	if !acceptedAlg(alg) {
		return nil, reject("token algorithm is not accepted", fmt.Errorf("alg %q", alg.String()))
	}
	// No extensions are understood: RFC 7515 4.1.11 requires rejecting
	// unknown critical headers, and b64=false (RFC 7797) has no place in a
	// JWT.
	if hdr.Has(jws.CriticalKey) || hdr.Has(jws.B64Key) {
		return nil, reject("token uses an unsupported header parameter", nil)
	}
	kid, _ := hdr.KeyID()
	key, rerr := v.keys.key(ctx, alg, kid)
	if rerr != nil {
		return nil, rerr
	}
	payload, err := jws.Verify([]byte(raw), jws.WithKey(alg, key), jws.WithCompact())
	if err != nil {
		return nil, reject("token signature is invalid", err)
	}
	tok, err := jwt.Parse(payload, jwt.WithVerify(false), jwt.WithValidate(false))
	if err != nil {
		return nil, reject("token claims are malformed", err)
	}
	err = jwt.Validate(tok,
		jwt.WithClock(jwt.ClockFunc(v.now)),
		jwt.WithAcceptableSkew(v.leeway),
		jwt.WithRequiredClaim(jwt.ExpirationKey),
		jwt.WithIssuer(v.issuer),
		jwt.WithAudience(v.audience),
	)
	if err != nil {
		return nil, validationError(err)
	}
	return claimsOf(tok)
}

// validationError turns a jwt.Validate error into a rejection.
func validationError(err error) *Error {
	var desc string
	switch {
	case errors.Is(err, jwt.MissingRequiredClaimError()):
		desc = "token has no expiry (exp)"
	case errors.Is(err, jwt.TokenExpiredError()):
		desc = "token expired"
	case errors.Is(err, jwt.TokenNotYetValidError()):
		desc = "token is not valid yet (nbf)"
	case errors.Is(err, jwt.InvalidIssuedAtError()):
		desc = "token is issued in the future (iat)"
	case errors.Is(err, jwt.InvalidIssuerError()):
		desc = "token issuer is not accepted"
	case errors.Is(err, jwt.InvalidAudienceError()):
		desc = "token audience does not include this server"
	default:
		desc = "token claims are invalid"
	}
	return reject(desc, err)
}
