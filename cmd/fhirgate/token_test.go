package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/fhirgate/fhirgate/internal/auth"
)

func TestTokenCmd(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want auth.Claims // Expiry, IssuedAt and ID are checked apart
		ttl  time.Duration
	}{
		{
			name: "practitioner break-glass",
			args: []string{"--scope", "user/*.read user/Consent.cruds", "--fhir-user", "Practitioner/p1", "--purpose", "ETREAT", "--patient", "123", "--ttl", "30m"},
			want: auth.Claims{
				Subject: "Practitioner/p1", FHIRUser: "Practitioner/p1", ClientID: "fhirgate-dev",
				Scope: "user/*.read user/Consent.cruds", PurposeOfUse: "ETREAT", Patient: "Patient/123",
			},
			ttl: 30 * time.Minute,
		},
		{
			name: "system client, defaults",
			args: []string{"--scope", "system/*.*"},
			want: auth.Claims{Subject: "dev-client", ClientID: "fhirgate-dev", Scope: "system/*.*"},
			ttl:  time.Hour,
		},
		{
			name: "explicit sub, client and Patient/ reference",
			args: []string{"--scope", "patient/*.rs", "--sub", "alice", "--fhir-user", "Patient/123", "--patient", "Patient/123", "--client-id", "app"},
			want: auth.Claims{Subject: "alice", ClientID: "app", FHIRUser: "Patient/123", Patient: "Patient/123", Scope: "patient/*.rs"},
			ttl:  time.Hour,
		},
		{
			name: "env fallback, flag wins",
			args: []string{"--ttl", "5m"},
			env:  map[string]string{"FHIRGATE_SCOPE": "user/Observation.rs", "FHIRGATE_FHIR_USER": "Practitioner/p2", "FHIRGATE_TTL": "2h"},
			want: auth.Claims{Subject: "Practitioner/p2", FHIRUser: "Practitioner/p2", ClientID: "fhirgate-dev", Scope: "user/Observation.rs"},
			ttl:  5 * time.Minute,
		},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			for k, v := range test.env {
				t.Setenv(k, v)
			}
			var out bytes.Buffer
			if err := runToken(t.Context(), append([]string{"--data-dir", dir}, test.args...), &out); err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			raw, ok := strings.CutSuffix(out.String(), "\n")
			if !ok || strings.ContainsAny(raw, "\n ") {
				t.Fatalf("output %q is not one token and a newline", out.String())
			}

			key, err := auth.LoadOrCreateDevKey(dir)
			if err != nil {
				t.Fatal(err)
			}
			v, err := auth.NewVerifier(t.Context(), auth.Config{JWKS: key.PublicJWKS(), Issuer: auth.DevIssuer, Audience: auth.DevAudience})
			if err != nil {
				t.Fatal(err)
			}
			got, err := v.Verify(t.Context(), raw)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			want := test.want
			want.Issuer, want.Audience = auth.DevIssuer, []string{auth.DevAudience}
			if diff := cmp.Diff(want, *got, cmpopts.IgnoreFields(auth.Claims{}, "Expiry", "IssuedAt", "ID")); diff != "" {
				t.Errorf("claims mismatch (-want +got):\n%s", diff)
			}
			if d := got.Expiry.Sub(now.Add(test.ttl)); d < -5*time.Second || d > time.Second {
				t.Errorf("exp = %v, want about now+%v (%v)", got.Expiry, test.ttl, now.Add(test.ttl))
			}
		})
	}
}

func TestTokenCmdErrors(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{name: "no scope", args: nil, wantErr: "--scope is required"},
		{name: "blank scope", args: []string{"--scope", " "}, wantErr: "--scope is required"},
		{name: "zero ttl", args: []string{"--scope", "system/*.*", "--ttl", "0s"}, wantErr: "--ttl must be positive"},
		{name: "bad ttl", args: []string{"--scope", "system/*.*", "--ttl", "soon"}, wantErr: "invalid value"},
		{name: "absolute fhir-user", args: []string{"--scope", "user/*.read", "--fhir-user", "https://x/Practitioner/p1"}, wantErr: "--fhir-user"},
		{name: "bare fhir-user", args: []string{"--scope", "user/*.read", "--fhir-user", "p1"}, wantErr: "--fhir-user"},
		{name: "patient of another type", args: []string{"--scope", "user/*.read", "--patient", "Group/g1"}, wantErr: "--patient"},
		{name: "stray argument", args: []string{"--scope", "user/*.read", "extra"}, wantErr: "unexpected argument"},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			var out bytes.Buffer
			err := runToken(t.Context(), append([]string{"--data-dir", t.TempDir()}, test.args...), &out)
			if err == nil || !strings.Contains(err.Error(), test.wantErr) {
				t.Fatalf("runToken error = %v, want one containing %q", err, test.wantErr)
			}
			if out.Len() != 0 {
				t.Errorf("printed %q on error", out.String())
			}
		})
	}
}
