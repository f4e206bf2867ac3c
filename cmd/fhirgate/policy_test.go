package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fhirgate/fhirgate/policy"
)

func writePolicyFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPolicyTestCmd(t *testing.T) {
	var out bytes.Buffer
	if err := policyCmdTo(t.Context(), []string{"test"}, &out); err != nil {
		t.Fatalf("policy test: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "PASS: ") || strings.Contains(out.String(), "test_consent_deny: PASS") {
		t.Errorf("policy test output (not verbose):\n%s", out.String())
	}

	out.Reset()
	if err := policyCmdTo(t.Context(), []string{"test", "-v"}, &out); err != nil {
		t.Fatalf("policy test -v: %v", err)
	}
	if !strings.Contains(out.String(), "test_consent_deny: PASS") {
		t.Errorf("policy test -v does not list the tests:\n%s", out.String())
	}

	dir := t.TempDir()
	writePolicyFile(t, dir, "authz.rego", "package fhirgate.authz\n\ndecision := {\"allow\": false}\n")
	writePolicyFile(t, dir, "authz_test.rego", `package fhirgate.authz_test

import data.fhirgate.authz

test_denies if not authz.decision.allow

test_allows if authz.decision.allow
`)
	for _, args := range [][]string{{"test", dir}, {"test", dir, "-v"}, {"test", "-v", dir}} {
		out.Reset()
		err := policyCmdTo(t.Context(), args, &out)
		if err == nil || !strings.Contains(err.Error(), "1 failed") {
			t.Errorf("%q: error %v, want 1 failed", args, err)
		}
		if !strings.Contains(out.String(), "test_allows: FAIL") {
			t.Errorf("%q: output does not name the failure:\n%s", args, out.String())
		}
	}
	if err := policyCmdTo(t.Context(), []string{"test", dir, dir}, &out); err == nil {
		t.Errorf("two directories: no error")
	}
	if err := policyCmdTo(t.Context(), []string{"frobnicate"}, &out); err == nil {
		t.Errorf("unknown command: no error")
	}
}

const evalInput = `{
  "subject": {
    "sub": "p1", "client_id": "app", "kind": "practitioner", "fhirUser": "Practitioner/p1",
    "scopes": [{"raw": "user/*.rs", "context": "user", "type": "*", "perms": "rs", "v2": true}],
    "organizations": ["Organization/o1"]
  },
  "action": "read",
  "resource": {"type": "Observation", "id": "o1", "compartments": ["Patient/a"], "compartmentType": true},
  "time": "2026-11-21T10:00:00Z"
}`

const evalConsent = `{
  "resourceType": "Consent", "id": "c1", "status": "active",
  "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
  "patient": {"reference": "Patient/a"},
  "provision": {
    "period": {"start": "2020", "end": "2030"},
    "actor": [{"role": {"text": "doctor"}, "reference": {"reference": "Organization/o1"}}],
    "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]}]
  }
}`

func evalDecision(t *testing.T, args ...string) policy.Decision {
	t.Helper()
	var out bytes.Buffer
	if err := policyCmdTo(t.Context(), append([]string{"eval"}, args...), &out); err != nil {
		t.Fatalf("policy eval %q: %v", args, err)
	}
	var d policy.Decision
	if err := json.Unmarshal(out.Bytes(), &d); err != nil {
		t.Fatalf("policy eval output: %v\n%s", err, out.String())
	}
	if !strings.HasPrefix(out.String(), "{\n  \"allow\": ") {
		t.Errorf("output is not indented JSON with allow first:\n%s", out.String())
	}
	return d
}

func TestPolicyEvalCmd(t *testing.T) {
	dir := t.TempDir()
	input := writePolicyFile(t, dir, "input.json", evalInput)
	permitted := policy.Decision{Allow: true, Reasons: []string{"consent Consent/c1 permits", "scope user/*.rs covers read of Observation"}}

	// Without consents: denied, and still exit 0.
	got := evalDecision(t, "--input", input)
	if diff := cmp.Diff(policy.Decision{Reasons: []string{"no active consent of Patient/a permits this"}}, got); diff != "" {
		t.Errorf("without consents (-want +got):\n%s", diff)
	}

	inactive := strings.Replace(evalConsent, `"id": "c1", "status": "active"`, `"id": "c2", "status": "inactive"`, 1)
	for name, content := range map[string]string{
		"one":    evalConsent,
		"array":  "[" + evalConsent + "," + strings.Replace(evalConsent, `"c1", "status": "active"`, `"c2", "status": "inactive"`, 1) + "]",
		"bundle": `{"resourceType": "Bundle", "type": "collection", "entry": [{"resource": ` + evalConsent + `}, {"resource": {"resourceType": "Patient", "id": "a"}}, {"resource": ` + inactive + `}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			consents := writePolicyFile(t, dir, name+".json", content)
			if diff := cmp.Diff(permitted, evalDecision(t, "--input", input, "--consents", consents)); diff != "" {
				t.Errorf("decision mismatch (-want +got):\n%s", diff)
			}
		})
	}

	// A policy directory.
	pdir := t.TempDir()
	writePolicyFile(t, pdir, "authz.rego", `package fhirgate.authz

decision := {"allow": true, "unconditional": true, "reasons": [concat(" ", ["custom", input.resource.type])]}
`)
	want := policy.Decision{Allow: true, Unconditional: true, Reasons: []string{"custom Observation"}}
	if diff := cmp.Diff(want, evalDecision(t, "--input", input, "--policy-dir", pdir)); diff != "" {
		t.Errorf("--policy-dir (-want +got):\n%s", diff)
	}

	// Errors.
	bad := writePolicyFile(t, dir, "bad.json", `{"action": `)
	noID := writePolicyFile(t, dir, "noid.json", `{"resourceType": "Consent", "status": "active"}`)
	notConsent := writePolicyFile(t, dir, "patient.json", `[{"resourceType": "Patient", "id": "a"}]`)
	for _, args := range [][]string{
		{},
		{"--input", filepath.Join(dir, "missing.json")},
		{"--input", bad},
		{"--input", input, "--consents", bad},
		{"--input", input, "--consents", noID},
		{"--input", input, "--consents", notConsent},
		{"--input", input, "--policy-dir", filepath.Join(dir, "missing")},
		{"--input", input, "extra"},
	} {
		var out bytes.Buffer
		if err := policyCmdTo(t.Context(), append([]string{"eval"}, args...), &out); err == nil {
			t.Errorf("policy eval %q: no error", args)
		}
	}
}
