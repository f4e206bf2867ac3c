package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/fhirgate/fhirgate/internal/auth"
)

const tokenUsage = `usage: fhirgate token --scope SCOPES [flags]

Print a bearer token of the embedded dev issuer (iss ` + auth.DevIssuer + `,
aud ` + auth.DevAudience + `), signed by DATA-DIR/` + auth.DevKeyFile + ` (created if missing).
For development and tests only: whoever can read the data directory can mint
tokens.

flags:
`

// tokenCmd prints a dev token signed by the data directory's dev key on
// stdout.
func tokenCmd(ctx context.Context, args []string) error {
	return runToken(ctx, args, os.Stdout)
}

type tokenConfig struct {
	DataDir  string
	Sub      string
	FHIRUser string
	Scope    string
	TTL      time.Duration
	Purpose  string
	Patient  string
	ClientID string
}

func parseToken(args []string) (tokenConfig, error) {
	var c tokenConfig
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), tokenUsage)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.DataDir, "data-dir", "./data", "data directory holding the dev signing key (the same as fhirgate serve's)")
	fs.StringVar(&c.Sub, "sub", "", "subject (default: the --fhir-user, else dev-client)")
	fs.StringVar(&c.FHIRUser, "fhir-user", "", "fhirUser claim, a relative reference such as Practitioner/p1 or Patient/123 (none: a system client)")
	fs.StringVar(&c.Scope, "scope", "", `space-separated SMART scopes, e.g. "user/*.read" or "system/*.*" (required)`)
	fs.DurationVar(&c.TTL, "ttl", time.Hour, "token lifetime")
	fs.StringVar(&c.Purpose, "purpose", "", "purpose_of_use claim, an HL7 v3 ActReason code such as ETREAT (break-glass) or TREAT")
	fs.StringVar(&c.Patient, "patient", "", "SMART launch context patient: a bare id or Patient/id")
	fs.StringVar(&c.ClientID, "client-id", "fhirgate-dev", "client_id claim")
	if err := envFlags(fs); err != nil {
		return c, err
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	switch {
	case fs.NArg() > 0:
		return c, fmt.Errorf("token: unexpected argument %q", fs.Arg(0))
	case strings.TrimSpace(c.Scope) == "":
		return c, errors.New("token: --scope is required")
	case c.TTL <= 0:
		return c, errors.New("token: --ttl must be positive")
	case c.FHIRUser != "" && !isRelativeRef(c.FHIRUser):
		return c, errors.New("token: --fhir-user must be a relative reference such as Practitioner/p1")
	}
	if p, ok := strings.CutPrefix(c.Patient, "Patient/"); ok {
		c.Patient = p
	}
	if strings.Contains(c.Patient, "/") {
		return c, errors.New("token: --patient must be a patient id or Patient/id")
	}
	if c.Sub == "" {
		c.Sub = c.FHIRUser
	}
	if c.Sub == "" {
		c.Sub = "dev-client"
	}
	return c, nil
}

// isRelativeRef reports whether s looks like Type/id.
func isRelativeRef(s string) bool {
	typ, id, ok := strings.Cut(s, "/")
	return ok && typ != "" && id != "" && !strings.Contains(id, "/") &&
		typ[0] >= 'A' && typ[0] <= 'Z'
}

// runToken is tokenCmd writing to out.
func runToken(_ context.Context, args []string, out io.Writer) error {
	c, err := parseToken(args)
	if err != nil {
		return err
	}
	key, err := auth.LoadOrCreateDevKey(c.DataDir)
	if err != nil {
		return err
	}
	claims := auth.Claims{
		Subject:      c.Sub,
		ClientID:     c.ClientID,
		Scope:        c.Scope,
		FHIRUser:     c.FHIRUser,
		PurposeOfUse: c.Purpose,
	}
	if c.Patient != "" {
		claims.Patient = "Patient/" + c.Patient
	}
	raw, err := key.Sign(claims, c.TTL)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(out, raw)
	return err
}
