package conformance

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// authSuite checks SMART on FHIR bearer-token handling (RFC 6750, SMART App
// Launch 2.x): requests without a valid token are refused with 401, a
// WWW-Authenticate challenge and an OperationOutcome, and the server
// publishes /.well-known/smart-configuration. It runs only when the run has
// a token (Config.Token): a server that needs none has nothing to check.
func (r *runner) authSuite(ctx context.Context) error {
	unauth := func(name string, hdr header) {
		r.record("auth", name, func() error {
			if r.token == "" {
				return skipError{"no --token: the server under test is not expected to authenticate"}
			}
			resp, err := r.call(ctx, http.MethodGet, "Patient?_count=1", nil, hdr)
			if err != nil {
				return err
			}
			if err := expectStatus(resp, http.StatusUnauthorized); err != nil {
				return err
			}
			if wa := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(strings.ToLower(wa), "bearer") {
				return fmt.Errorf("%s: WWW-Authenticate = %q, want a Bearer challenge", resp, wa)
			}
			return expectOutcome(resp)
		})
	}
	unauth("no token: 401", header{"Authorization": ""})
	unauth("malformed token: 401", header{"Authorization": "Bearer not.a.token"})
	unauth("token with a forged signature: 401", header{"Authorization": "Bearer " + forge(r.token)})
	r.record("auth", "smart-configuration", func() error {
		resp, err := r.call(ctx, http.MethodGet, ".well-known/smart-configuration", nil, header{"Authorization": "", "Accept": "application/json"})
		if err != nil {
			return err
		}
		if err := expectStatus(resp, http.StatusOK); err != nil {
			return err
		}
		var sc struct {
			Capabilities []string `json:"capabilities"`
		}
		if err := json.Unmarshal(resp.Body, &sc); err != nil {
			return fmt.Errorf("%s: not JSON: %v", resp, err)
		}
		if len(sc.Capabilities) == 0 {
			return fmt.Errorf("%s: no capabilities", resp)
		}
		return nil
	})
	return nil
}

// forge flips a character of a JWT's signature.
func forge(token string) string {
	i := strings.LastIndexByte(token, '.')
	if i < 0 || i == len(token)-1 {
		return token + "x"
	}
	b := []byte(token)
	j := i + 1 + (len(b)-i-1)/2
	if b[j] == 'A' {
		b[j] = 'B'
	} else {
		b[j] = 'A'
	}
	return string(b)
}
