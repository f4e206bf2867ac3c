package policy

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/loader"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/tester"
)

// Test runs the Rego unit tests (the test_ rules) of the policy in dir, or
// of the shipped policy when dir is "", as `opa test` does, and writes
// `opa test`'s report to w (verbose lists every test). It returns how many
// tests failed, errored or were skipped; err is for policies that do not
// load or compile.
func Test(ctx context.Context, dir string, w io.Writer, verbose bool) (failed int, err error) {
	var (
		modules map[string]*ast.Module
		store   storage.Store
	)
	if dir == "" {
		res, err := loader.NewFileLoader().
			WithFS(shipped).
			WithRegoVersion(ast.RegoV1).
			WithProcessAnnotation(true).
			Filtered([]string{shippedDir}, nil)
		if err != nil {
			return 0, fmt.Errorf("policy test: %w", err)
		}
		modules, store = res.ParsedModules(), inmem.NewFromObject(res.Documents)
	} else {
		modules, store, err = tester.LoadWithParserOptions([]string{dir}, skipHidden,
			ast.ParserOptions{RegoVersion: ast.RegoV1, ProcessAnnotation: true})
		if err != nil {
			return 0, fmt.Errorf("policy test: %w", err)
		}
	}

	txn, err := store.NewTransaction(ctx, storage.WriteParams)
	if err != nil {
		return 0, fmt.Errorf("policy test: %w", err)
	}
	defer store.Abort(ctx, txn)

	// The compiler and runner settings of `opa test`.
	compiler := ast.NewCompiler().
		WithPathConflictsCheck(storage.NonEmpty(ctx, store, txn)).
		WithEnablePrintStatements(true).
		WithCapabilities(ast.CapabilitiesForThisVersion()).
		WithUseTypeCheckAnnotations(true)
	runner := tester.NewRunner().
		SetCompiler(compiler).
		SetStore(store).
		CapturePrintOutput(true).
		EnableTracing(verbose).
		StackTraces(true).
		SetModules(modules).
		SetTimeout(5 * time.Second)
	ch, err := runner.RunTests(ctx, txn)
	if err != nil {
		return 0, fmt.Errorf("policy test: %w", err)
	}

	counted := make(chan *tester.Result)
	go func() {
		defer close(counted)
		for r := range ch {
			if !r.Pass() {
				failed++
			}
			counted <- r
		}
	}()
	rep := tester.PrettyReporter{Output: w, Verbose: verbose, FailureLine: true}
	if err := rep.Report(counted); err != nil {
		for range counted { // let the counter finish
		}
		return failed, fmt.Errorf("policy test: report: %w", err)
	}
	return failed, nil
}
