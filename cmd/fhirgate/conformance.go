package main

import (
	"context"
	"errors"
	"flag"
	"os"
	"os/signal"
	"strings"

	"github.com/fhirgate/fhirgate/conformance"
)

// conformanceCmd runs the black-box suites against any FHIR base URL and
// fails when a case fails.
func conformanceCmd(ctx context.Context, args []string) error {
	var cfg conformance.Config
	fs := flag.NewFlagSet("conformance", flag.ContinueOnError)
	fs.StringVar(&cfg.BaseURL, "base-url", "", "FHIR R4 base URL of the server under test, e.g. http://127.0.0.1:8080/fhir")
	fs.Func("race-url", "base URL of another gateway process sharing the same storage (repeatable)", func(s string) error {
		cfg.RaceURLs = append(cfg.RaceURLs, s)
		return nil
	})
	fs.StringVar(&cfg.DataDir, "data-dir", "", "directory holding r4-examples/ and invalid/ (default: testdata/conformance)")
	fs.StringVar(&cfg.Token, "token", "", "bearer token to send with every request")
	fs.StringVar(&cfg.RPC, "rpc", "", "Ethereum JSON-RPC URL: the log suite checks receipts' roots on chain")
	verbose := fs.Bool("v", false, "print the detail of every failed case before the table")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if strings.TrimSpace(cfg.BaseURL) == "" {
		return errors.New("conformance: --base-url is required")
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	defer stop()
	report, err := conformance.Run(ctx, cfg)
	if *verbose {
		report.WriteDetails(os.Stdout)
	}
	if len(report.Results) > 0 {
		report.WriteTable(os.Stdout)
	}
	if err != nil {
		return err
	}
	if n := report.Failed(); n > 0 {
		return errors.New("conformance: failures")
	}
	return nil
}
