package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/fhirgate/fhirgate/policy"
)

const policyUsage = `usage: fhirgate policy <command> [flags]

Work on authorization policies (Rego, see policy/README.md).

commands:
  test [DIR] [-v]
        run the Rego unit tests (test_ rules) of the policy in DIR, or of the
        shipped policy, like opa test; exit 1 when a test fails
  eval --input FILE [--policy-dir DIR] [--consents FILE]
        print the decision of the policy (DIR, or the shipped one) for the
        input document in FILE, with the FHIR Consents of --consents (a
        Consent, a JSON array of them, or a Bundle of them) as consent data
`

// policyCmd runs the policy subcommands, writing to stdout.
func policyCmd(ctx context.Context, args []string) error {
	return policyCmdTo(ctx, args, os.Stdout)
}

func policyCmdTo(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, policyUsage)
		return errors.New("policy: a command is required")
	}
	switch args[0] {
	case "test":
		return policyTest(ctx, args[1:], stdout)
	case "eval":
		return policyEval(ctx, args[1:], stdout)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, policyUsage)
		return nil
	}
	fmt.Fprint(os.Stderr, policyUsage)
	return fmt.Errorf("policy: unknown command %q", args[0])
}

// policyTest runs `fhirgate policy test [DIR] [-v]`. The flag may come
// before or after the directory.
func policyTest(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("policy test", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), policyUsage) }
	verbose := fs.Bool("v", false, "list every test, with traces of failures")
	var dirs []string
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		dirs = append(dirs, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(dirs) > 1 {
		return fmt.Errorf("policy test: one directory at most, got %q", dirs)
	}
	dir := ""
	if len(dirs) == 1 {
		dir = dirs[0]
	}
	failed, err := policy.Test(ctx, dir, stdout, *verbose)
	if err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("policy test: %d failed", failed)
	}
	return nil
}

// policyEval runs `fhirgate policy eval`.
func policyEval(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("policy eval", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), policyUsage+"\neval flags:\n")
		fs.PrintDefaults()
	}
	inputFile := fs.String("input", "", "file of the input document (JSON; \"time\" is RFC 3339, default now) (required)")
	dir := fs.String("policy-dir", "", "directory of the policy (default: the shipped policy)")
	consentsFile := fs.String("consents", "", "file of FHIR Consents: a Consent, a JSON array of them, or a Bundle")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("policy eval: unexpected argument %q", fs.Arg(0))
	}
	if *inputFile == "" {
		return errors.New("policy eval: --input is required")
	}
	b, err := os.ReadFile(*inputFile)
	if err != nil {
		return fmt.Errorf("policy eval: %w", err)
	}
	var in policy.Input
	if err := json.Unmarshal(b, &in); err != nil {
		return fmt.Errorf("policy eval: input %s: %w", *inputFile, err)
	}

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	engine, err := policy.New(ctx, policy.Config{Dir: *dir, Logger: log})
	if err != nil {
		return err
	}
	if *consentsFile != "" {
		if err := loadConsents(ctx, engine, *consentsFile); err != nil {
			return fmt.Errorf("policy eval: consents %s: %w", *consentsFile, err)
		}
	}
	d, err := engine.Decide(ctx, in)
	if err != nil {
		return err
	}
	out, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\n", out)
	return err
}

// loadConsents puts the Consents of file into the engine: a Consent, a
// JSON array of them, or a Bundle (its entries that are Consents). Those
// that do not apply (not active, another scope...) are left out, as the
// gateway leaves them out.
func loadConsents(ctx context.Context, e *policy.Engine, file string) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return err
	}
	var docs []map[string]any
	switch v := v.(type) {
	case []any:
		for i, x := range v {
			m, ok := x.(map[string]any)
			if !ok {
				return fmt.Errorf("element %d is not an object", i)
			}
			docs = append(docs, m)
		}
	case map[string]any:
		if v["resourceType"] != "Bundle" {
			docs = append(docs, v)
			break
		}
		entries, _ := v["entry"].([]any)
		for _, x := range entries {
			entry, _ := x.(map[string]any)
			if r, ok := entry["resource"].(map[string]any); ok && r["resourceType"] == "Consent" {
				docs = append(docs, r)
			}
		}
	default:
		return errors.New("not a Consent, an array of Consents or a Bundle")
	}
	for i, doc := range docs {
		id, _ := doc["id"].(string)
		if id == "" {
			return fmt.Errorf("consent %d has no id", i)
		}
		c, applies, err := policy.NormalizeConsent("Consent/"+id, doc)
		if err != nil {
			return err
		}
		if !applies {
			continue
		}
		if err := e.PutConsent(ctx, c); err != nil {
			return err
		}
	}
	return nil
}
