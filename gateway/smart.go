package gateway

import (
	"encoding/json"
	"net/http"
	"strings"

	"github.com/fhirgate/fhirgate/fhir"
)

// SMARTConfig is what /.well-known/smart-configuration advertises (SMART
// App Launch 2.x). fhirgate checks tokens; it does not issue them over
// HTTP: the endpoints are the authorization server's.
type SMARTConfig struct {
	Issuer                string
	JWKSURI               string
	AuthorizationEndpoint string
	TokenEndpoint         string
	// JWKS, when set, is served at /.well-known/jwks.json (the embedded dev
	// issuer's public key).
	JWKS []byte
}

var smartScopes = []string{
	"openid", "fhirUser", "launch", "launch/patient", "offline_access",
	"patient/*.read", "patient/*.rs", "patient/*.cruds", "user/*.read", "user/*.rs", "user/*.cruds",
	"system/*.read", "system/*.rs", "system/*.cruds",
}

func (s *Server) smartConfiguration(w http.ResponseWriter, r *http.Request) error {
	c := s.cfg.SMART
	out := map[string]any{
		"capabilities": []string{"permission-v1", "permission-v2", "permission-patient", "permission-user",
			"permission-offline", "launch-standalone", "context-standalone-patient", "client-confidential-asymmetric"},
		"scopes_supported":                      smartScopes,
		"grant_types_supported":                 []string{"authorization_code", "client_credentials"},
		"token_endpoint_auth_methods_supported": []string{"private_key_jwt", "client_secret_basic"},
		"response_types_supported":              []string{"code"},
		"code_challenge_methods_supported":      []string{"S256"},
	}
	for k, v := range map[string]string{"issuer": c.Issuer, "jwks_uri": c.JWKSURI,
		"authorization_endpoint": c.AuthorizationEndpoint, "token_endpoint": c.TokenEndpoint} {
		if v != "" {
			out[k] = v
		}
	}
	if c.JWKSURI == "" && len(c.JWKS) > 0 {
		out["jwks_uri"] = s.root(r) + "/.well-known/jwks.json"
	}
	b, _ := json.Marshal(out)
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
	return nil
}

func (s *Server) jwks(w http.ResponseWriter, r *http.Request) error {
	if len(s.cfg.SMART.JWKS) == 0 {
		return httpErr(http.StatusNotFound, fhir.CodeNotFound, "this server publishes no keys")
	}
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Write(s.cfg.SMART.JWKS)
	return nil
}

// security is the CapabilityStatement's rest.security: SMART on FHIR,
// with the OAuth endpoints when known.
func (s *Server) security() map[string]any {
	sec := map[string]any{
		"cors": false,
		"service": []any{map[string]any{"coding": []any{map[string]any{
			"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}}}},
		"description": "Bearer tokens (SMART on FHIR v1/v2 scopes); consent-based access policy in Rego; every access audited.",
	}
	var uris []any
	if u := s.cfg.SMART.AuthorizationEndpoint; u != "" {
		uris = append(uris, map[string]any{"url": "authorize", "valueUri": u})
	}
	if u := s.cfg.SMART.TokenEndpoint; u != "" {
		uris = append(uris, map[string]any{"url": "token", "valueUri": u})
	}
	if len(uris) > 0 {
		sec["extension"] = []any{map[string]any{
			"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris", "extension": uris}}
	}
	return sec
}

// root is the server's absolute URL without the /fhir base path.
func (s *Server) root(r *http.Request) string {
	return strings.TrimSuffix(s.base(r), "/fhir")
}
