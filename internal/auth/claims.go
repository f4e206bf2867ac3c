package auth

import (
	"net/url"
	"regexp"
	"strings"

	"github.com/lestrrat-go/jwx/v3/jwt"
)

// Names of the SMART and fhirgate claims beyond the registered ones.
const (
	claimScope        = "scope"
	claimScp          = "scp"
	claimClientID     = "client_id"
	claimAzp          = "azp"
	claimFHIRUser     = "fhirUser"
	claimPatient      = "patient"
	claimPurposeOfUse = "purpose_of_use"
)

// claimsOf extracts and normalizes the claims of a verified, validated
// token.
func claimsOf(tok jwt.Token) (*Claims, error) {
	c := &Claims{}
	c.Subject, _ = tok.Subject()
	c.Issuer, _ = tok.Issuer()
	c.ID, _ = tok.JwtID()
	c.Audience, _ = tok.Audience()
	c.Expiry, _ = tok.Expiration()
	c.IssuedAt, _ = tok.IssuedAt()
	c.NotBefore, _ = tok.NotBefore()

	var ok bool
	if c.ClientID, ok = stringClaim(tok, claimClientID); !ok {
		return nil, reject("token client_id claim is not a string", nil)
	}
	if c.ClientID == "" {
		if c.ClientID, ok = stringClaim(tok, claimAzp); !ok {
			return nil, reject("token azp claim is not a string", nil)
		}
	}
	if c.Subject == "" && c.ClientID == "" {
		return nil, reject("token has neither sub nor client_id", nil)
	}

	name := claimScope
	if !tok.Has(name) {
		name = claimScp
	}
	scopes, ok := stringsClaim(tok, name)
	if !ok {
		return nil, reject("token "+name+" claim is not a string or an array of strings", nil)
	}
	c.Scope = strings.Join(scopes, " ")

	fhirUser, ok := stringClaim(tok, claimFHIRUser)
	if !ok {
		return nil, reject("token fhirUser claim is not a string", nil)
	}
	c.FHIRUser = relativeRef(fhirUser)

	patient, ok := stringClaim(tok, claimPatient)
	if !ok {
		return nil, reject("token patient claim is not a string", nil)
	}
	c.Patient = patientRef(patient)

	if c.PurposeOfUse, ok = purposeClaim(tok); !ok {
		return nil, reject("token purpose_of_use claim is not a string or an array of strings", nil)
	}
	return c, nil
}

// stringClaim returns the claim name, "" when absent; ok is false when the
// claim is not a string.
func stringClaim(tok jwt.Token, name string) (s string, ok bool) {
	if !tok.Has(name) {
		return "", true
	}
	var v any
	if err := tok.Get(name, &v); err != nil {
		return "", false
	}
	s, ok = v.(string)
	return s, ok
}

// stringsClaim returns the words of a space-separated string claim, or the
// words of the strings of an array claim; ok is false for any other shape.
func stringsClaim(tok jwt.Token, name string) (words []string, ok bool) {
	if !tok.Has(name) {
		return nil, true
	}
	var v any
	if err := tok.Get(name, &v); err != nil {
		return nil, false
	}
	switch v := v.(type) {
	case string:
		return strings.Fields(v), true
	case []any:
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, false
			}
			words = append(words, strings.Fields(s)...)
		}
		return words, true
	case []string:
		for _, s := range v {
			words = append(words, strings.Fields(s)...)
		}
		return words, true
	}
	return nil, false
}

// purposeClaim returns purpose_of_use: a string, or the first string of an
// array.
func purposeClaim(tok jwt.Token) (string, bool) {
	if !tok.Has(claimPurposeOfUse) {
		return "", true
	}
	var v any
	if err := tok.Get(claimPurposeOfUse, &v); err != nil {
		return "", false
	}
	switch v := v.(type) {
	case string:
		return strings.TrimSpace(v), true
	case []any:
		if len(v) == 0 {
			return "", true
		}
		s, ok := v[0].(string)
		return strings.TrimSpace(s), ok
	case []string:
		if len(v) == 0 {
			return "", true
		}
		return strings.TrimSpace(v[0]), true
	}
	return "", false
}

var (
	resourceType = regexp.MustCompile(`^[A-Z][A-Za-z]{0,63}$`)
	resourceID   = regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)
)

// relativeRef cuts an absolute URL ending in /Type/id (or
// /Type/id/_history/vid) down to "Type/id". Anything else is returned as is.
func relativeRef(s string) string {
	if !strings.Contains(s, "://") {
		return s
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return s
	}
	segs := strings.Split(strings.Trim(u.Path, "/"), "/")
	if n := len(segs); n >= 4 && segs[n-2] == "_history" {
		segs = segs[:n-2]
	}
	n := len(segs)
	if n < 2 || !resourceType.MatchString(segs[n-2]) || !resourceID.MatchString(segs[n-1]) {
		return s
	}
	return segs[n-2] + "/" + segs[n-1]
}

// patientRef turns SMART's bare patient id into "Patient/<id>"; a
// reference (relative or absolute) to a Patient is accepted too.
func patientRef(s string) string {
	switch {
	case s == "":
		return ""
	case !strings.ContainsAny(s, "/:"):
		return "Patient/" + s
	}
	return relativeRef(s)
}
