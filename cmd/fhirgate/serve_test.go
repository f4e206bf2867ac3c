package main

import (
	"testing"
	"time"
)

func TestServeFlagsEnvFallback(t *testing.T) {
	t.Setenv("FHIRGATE_ADDR", "127.0.0.1:9999")
	t.Setenv("FHIRGATE_ENFORCE_REFERENCES", "true")
	t.Setenv("FHIRGATE_SHUTDOWN_GRACE", "3s")
	t.Setenv("FHIRGATE_DATA_DIR", "/env/dir")
	c, err := parseServe([]string{"--data-dir", "/flag/dir"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Addr != "127.0.0.1:9999" || !c.EnforceReferences || c.ShutdownGrace != 3*time.Second {
		t.Errorf("env not applied: %+v", c)
	}
	if c.DataDir != "/flag/dir" {
		t.Errorf("DataDir = %q: an explicit flag must win over the env", c.DataDir)
	}
	t.Setenv("FHIRGATE_MAX_BODY", "lots")
	if _, err := parseServe(nil); err == nil {
		t.Error("a malformed env value was accepted")
	}
}
