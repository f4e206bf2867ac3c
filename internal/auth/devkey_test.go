package auth

import (
	"bytes"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
)

func TestLoadOrCreateDevKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data") // created by LoadOrCreateDevKey
	k1, err := LoadOrCreateDevKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, DevKeyFile)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := st.Mode().Perm(), os.FileMode(0o600); got != want {
		t.Errorf("key file mode = %04o, want %04o", got, want)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("data dir holds %d entries, want only the key (temp file left behind?)", len(ents))
	}

	k2, err := LoadOrCreateDevKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if k1.KeyID() != k2.KeyID() || !bytes.Equal(k1.PublicJWKS(), k2.PublicJWKS()) {
		t.Errorf("second LoadOrCreateDevKey returned another key: kid %s, then %s", k1.KeyID(), k2.KeyID())
	}

	// The file is an Ed25519 private JWK whose kid is its RFC 7638
	// thumbprint.
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(b, &fields); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]any{"kty": "OKP", "crv": "Ed25519", "kid": k1.KeyID()} {
		if fields[name] != want {
			t.Errorf("key file %s = %v, want %v", name, fields[name], want)
		}
	}
	if _, ok := fields["d"]; !ok {
		t.Error("key file has no private part (d)")
	}
	key, err := jwk.ParseKey(b)
	if err != nil {
		t.Fatal(err)
	}
	tp, err := key.Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if want := base64.RawURLEncoding.EncodeToString(tp); k1.KeyID() != want {
		t.Errorf("kid = %s, want the thumbprint %s", k1.KeyID(), want)
	}

	// The public set has the public key only.
	var set struct{ Keys []map[string]any }
	if err := json.Unmarshal(k1.PublicJWKS(), &set); err != nil {
		t.Fatal(err)
	}
	if len(set.Keys) != 1 {
		t.Fatalf("public set holds %d keys, want 1", len(set.Keys))
	}
	if _, ok := set.Keys[0]["d"]; ok {
		t.Error("public set holds the private key")
	}
	if got := set.Keys[0]["kid"]; got != k1.KeyID() {
		t.Errorf("public key kid = %v, want %s", got, k1.KeyID())
	}
}

func TestLoadOrCreateDevKeyRefuses(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, path string)
		wantErr string
	}{
		{
			name: "mode 0644",
			setup: func(t *testing.T, path string) {
				if _, err := LoadOrCreateDevKey(filepath.Dir(path)); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(path, 0o644); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: "accessible by group or others",
		},
		{
			name: "mode 0640",
			setup: func(t *testing.T, path string) {
				if _, err := LoadOrCreateDevKey(filepath.Dir(path)); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(path, 0o640); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: "chmod 600",
		},
		{
			name: "not JSON",
			setup: func(t *testing.T, path string) {
				if err := os.WriteFile(path, []byte("not a key"), 0o600); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: DevKeyFile,
		},
		{
			name: "a public key",
			setup: func(t *testing.T, path string) {
				k, err := GenerateDevKey()
				if err != nil {
					t.Fatal(err)
				}
				var set struct{ Keys []json.RawMessage }
				if err := json.Unmarshal(k.PublicJWKS(), &set); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, set.Keys[0], 0o600); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: "not an OKP private key",
		},
		{
			name: "an EC key",
			setup: func(t *testing.T, path string) {
				b, err := json.Marshal(keyOf(t, "ec", "x"))
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, b, 0o600); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: "not an OKP private key",
		},
		{
			name: "a directory",
			setup: func(t *testing.T, path string) {
				if err := os.Mkdir(path, 0o700); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: "not a regular file",
		},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			dir := t.TempDir()
			test.setup(t, filepath.Join(dir, DevKeyFile))
			_, err := LoadOrCreateDevKey(dir)
			if err == nil || !strings.Contains(err.Error(), test.wantErr) {
				t.Fatalf("LoadOrCreateDevKey error = %v, want one containing %q", err, test.wantErr)
			}
		})
	}
}

// TestLoadOrCreateDevKeyRace checks that processes creating the key at once
// agree on it: the first file in place wins and is never replaced.
func TestLoadOrCreateDevKeyRace(t *testing.T) {
	dir := t.TempDir()
	kids := make([]string, 8)
	var wg sync.WaitGroup
	for i := range kids {
		wg.Go(func() {
			k, err := LoadOrCreateDevKey(dir)
			if err != nil {
				t.Error(err)
				return
			}
			kids[i] = k.KeyID()
		})
	}
	wg.Wait()
	final, err := LoadOrCreateDevKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i, kid := range kids {
		if kid != final.KeyID() {
			t.Errorf("caller %d got kid %s, the file holds %s", i, kid, final.KeyID())
		}
	}
}

func TestDevKeySignVerify(t *testing.T) {
	k, err := GenerateDevKey()
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(t.Context(), Config{JWKS: k.PublicJWKS(), Issuer: DevIssuer, Audience: DevAudience})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		in   Claims
		ttl  time.Duration
		want Claims // Expiry, IssuedAt and ID are checked apart
	}{
		{
			name: "practitioner, break-glass",
			in: Claims{
				Subject: "dr-who", FHIRUser: "Practitioner/p1", ClientID: "fhirgate-dev",
				Scope: "user/*.read  user/Consent.cruds", PurposeOfUse: "ETREAT", Patient: "Patient/123",
			},
			ttl: time.Hour,
			want: Claims{
				Subject: "dr-who", Issuer: DevIssuer, Audience: []string{DevAudience},
				FHIRUser: "Practitioner/p1", ClientID: "fhirgate-dev",
				Scope: "user/*.read user/Consent.cruds", PurposeOfUse: "ETREAT", Patient: "Patient/123",
			},
		},
		{
			name: "system client, no sub",
			in:   Claims{ClientID: "backend", Scope: "system/*.*"},
			ttl:  5 * time.Minute,
			want: Claims{Issuer: DevIssuer, Audience: []string{DevAudience}, ClientID: "backend", Scope: "system/*.*"},
		},
		{
			name: "bare patient id",
			in:   Claims{Subject: "pat", FHIRUser: "Patient/123", Patient: "123", Scope: "patient/*.rs"},
			ttl:  time.Minute,
			want: Claims{
				Subject: "pat", Issuer: DevIssuer, Audience: []string{DevAudience},
				FHIRUser: "Patient/123", Patient: "Patient/123", Scope: "patient/*.rs",
			},
		},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			before := time.Now().Truncate(time.Second)
			raw, err := k.Sign(test.in, test.ttl)
			if err != nil {
				t.Fatal(err)
			}
			got, err := v.Verify(t.Context(), raw)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if diff := cmp.Diff(test.want, *got, cmpopts.IgnoreFields(Claims{}, "Expiry", "IssuedAt", "ID")); diff != "" {
				t.Errorf("claims mismatch (-want +got):\n%s", diff)
			}
			if got.ID == "" {
				t.Error("no jti")
			}
			if got.IssuedAt.Before(before) || got.IssuedAt.After(time.Now()) {
				t.Errorf("iat = %v, want about now", got.IssuedAt)
			}
			if d := got.Expiry.Sub(got.IssuedAt); d != test.ttl {
				t.Errorf("exp - iat = %v, want %v", d, test.ttl)
			}

			// On the wire, SMART's way: patient is a bare id, scope a string,
			// and the kid is the key's.
			msg, err := jws.Parse([]byte(raw))
			if err != nil {
				t.Fatal(err)
			}
			var wire map[string]any
			if err := json.Unmarshal(msg.Payload(), &wire); err != nil {
				t.Fatal(err)
			}
			if p, ok := wire["patient"]; ok && strings.Contains(p.(string), "/") {
				t.Errorf("patient on the wire = %q, want a bare id", p)
			}
			if _, ok := wire["scope"].(string); !ok {
				t.Errorf("scope on the wire = %#v, want a string", wire["scope"])
			}
			if kid, _ := msg.Signatures()[0].ProtectedHeaders().KeyID(); kid != k.KeyID() {
				t.Errorf("kid = %q, want %q", kid, k.KeyID())
			}
		})
	}

	t.Run("fresh jti", func(t *testing.T) {
		a, _ := k.Sign(Claims{Subject: "s"}, time.Minute)
		b, _ := k.Sign(Claims{Subject: "s"}, time.Minute)
		ca, err := v.Verify(t.Context(), a)
		if err != nil {
			t.Fatal(err)
		}
		cb, err := v.Verify(t.Context(), b)
		if err != nil {
			t.Fatal(err)
		}
		if ca.ID == cb.ID {
			t.Errorf("two tokens share jti %q", ca.ID)
		}
	})
	t.Run("bad ttl", func(t *testing.T) {
		if _, err := k.Sign(Claims{Subject: "s"}, 0); err == nil {
			t.Error("Sign with ttl 0 succeeded")
		}
	})
	t.Run("another dev key", func(t *testing.T) {
		other, err := GenerateDevKey()
		if err != nil {
			t.Fatal(err)
		}
		raw, err := other.Sign(Claims{Subject: "s"}, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		_, err = v.Verify(t.Context(), raw)
		assertRejected(t, err, raw, "no key matches the token's kid")
	})
	t.Run("expired", func(t *testing.T) {
		raw, err := k.Sign(Claims{Subject: "s"}, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		late, err := NewVerifier(t.Context(), Config{
			JWKS: k.PublicJWKS(), Issuer: DevIssuer, Audience: DevAudience,
			Now: func() time.Time { return time.Now().Add(3 * time.Minute) },
		})
		if err != nil {
			t.Fatal(err)
		}
		_, err = late.Verify(t.Context(), raw)
		assertRejected(t, err, raw, "token expired")
	})
}
