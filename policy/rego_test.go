package policy

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/format"
)

// TestRegoFormatted: the shipped Rego is formatted as `opa fmt` formats it.
func TestRegoFormatted(t *testing.T) {
	files, err := filepath.Glob("rego/*.rego")
	if err != nil || len(files) == 0 {
		t.Fatalf("no Rego files: %v", err)
	}
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		want, err := format.SourceWithOpts(f, src, format.Opts{RegoVersion: ast.RegoV1})
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if string(want) != string(src) {
			t.Errorf("%s is not formatted (opa fmt -w %s)", f, f)
		}
	}
}
