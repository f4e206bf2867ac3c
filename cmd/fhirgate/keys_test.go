package main

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fhirgate/fhirgate/internal/keys"
)

// TestOpenRing: an explicit file wins, FHIRGATE_KEK comes next, the
// embedded store alone falls back to a generated file (with a warning),
// and Redis without a KEK is refused.
func TestOpenRing(t *testing.T) {
	dir := t.TempDir()
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	r, err := openRing(storeFlags{DataDir: dir}, log)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "kek.keys")); err != nil || !strings.Contains(logs.String(), "GENERATED A KEY-ENCRYPTION KEY") {
		t.Fatalf("dev KEK not generated with a warning: %v\n%s", err, logs.String())
	}
	again, err := openRing(storeFlags{DataDir: dir}, log)
	if err != nil || again.IDs()[0] != r.IDs()[0] {
		t.Fatalf("second start does not reuse the dev KEK: %v", err)
	}
	if _, err := openRing(storeFlags{RedisURL: "redis://x"}, log); err == nil {
		t.Error("Redis without a KEK was accepted")
	}
	t.Setenv("FHIRGATE_KEK", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
	env, err := openRing(storeFlags{RedisURL: "redis://x"}, log)
	if err != nil || env.IDs()[0] == r.IDs()[0] {
		t.Fatalf("FHIRGATE_KEK not used: %v", err)
	}
	file := filepath.Join(t.TempDir(), "k")
	if err := keys.CreateFile(file); err != nil {
		t.Fatal(err)
	}
	fromFile, err := openRing(storeFlags{KEKFile: file}, log)
	if err != nil || fromFile.IDs()[0] == env.IDs()[0] {
		t.Fatalf("--kek-file does not win over FHIRGATE_KEK: %v", err)
	}
	if strings.Contains(logs.String(), "AAECAwQF") {
		t.Error("a KEK reached the log")
	}
}

// TestKeysCommand runs keys init, status and rotate directly on an
// embedded store.
func TestKeysCommand(t *testing.T) {
	dir, file := t.TempDir(), filepath.Join(t.TempDir(), "kek.keys")
	run := func(args ...string) string {
		t.Helper()
		old := os.Stdout
		rd, w, _ := os.Pipe()
		os.Stdout = w
		err := keysCmd(t.Context(), args)
		w.Close()
		os.Stdout = old
		out, _ := io.ReadAll(rd)
		if err != nil {
			t.Fatalf("keys %v: %v", args, err)
		}
		return string(out)
	}
	if out := run("init", "--kek-file", file); !strings.Contains(out, "kek-") {
		t.Fatalf("init: %s", out)
	}
	if err := keysCmd(t.Context(), []string{"init", "--kek-file", file}); err == nil {
		t.Error("init overwrote an existing KEK file")
	}
	if out := run("status", "--data-dir", dir, "--kek-file", file); !strings.Contains(out, `"keysByKEK"`) {
		t.Fatalf("status: %s", out)
	}
	out := run("rotate", "--data-dir", dir, "--kek-file", file)
	if !strings.Contains(out, `"newKEK"`) || !strings.Contains(out, `"rewrapped": 2`) {
		t.Fatalf("rotate: %s", out)
	}
	out = run("prune", "--data-dir", dir, "--kek-file", file)
	if !strings.Contains(out, `"removedKEKs"`) {
		t.Fatalf("prune: %s", out)
	}
	ring, err := keys.OpenFileRing(file)
	if err != nil || len(ring.IDs()) != 1 {
		t.Fatalf("KEK file after prune: %v, %v", ring, err)
	}
}
