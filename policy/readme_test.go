package policy

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
)

// TestReadmeExamples runs the Rego examples of README.md, each added to a
// copy of the shipped policy.
func TestReadmeExamples(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```rego\n(.*?)```").FindAllStringSubmatch(string(readme), -1)
	if len(blocks) != 3 {
		t.Fatalf("README.md has %d rego blocks, want 3", len(blocks))
	}
	shipped, err := os.ReadFile("rego/authz.rego")
	if err != nil {
		t.Fatal(err)
	}
	engine := func(t *testing.T, example string, data string) *Engine {
		dir := t.TempDir()
		writeFile(t, dir, "authz.rego", string(shipped))
		writeFile(t, dir, "example.rego", example)
		if data != "" {
			writeFile(t, dir, "suspended.json", data)
		}
		return newEngine(t, Config{Dir: dir})
	}
	in := func(fhirUser, org, purpose string) Input {
		sub := practitioner("user/Observation.rs")
		sub.FHIRUser, sub.Organizations, sub.PurposeOfUse = fhirUser, []string{org}, purpose
		return read(sub, "Observation", "o1", "Patient/a")
	}

	t.Run("treatment at X", func(t *testing.T) {
		e := engine(t, blocks[0][1], "")
		d := decide(t, e, in("Practitioner/p1", "Organization/X", "TREAT"))
		want := []string{"Organization/X treats: reading Observations needs no consent", "scope user/Observation.rs covers read of Observation"}
		if !d.Allow || !slices.Equal(d.Reasons, want) {
			t.Errorf("Decide = %+v, want allowed with %q", d, want)
		}
		for _, other := range []Input{in("Practitioner/p1", "Organization/Y", "TREAT"), in("Practitioner/p1", "Organization/X", "")} {
			if d := decide(t, e, other); d.Allow {
				t.Errorf("Decide(%+v) allowed", other.Subject)
			}
		}
	})

	for i, data := range map[int]string{1: "", 2: `{"fhirgate": {"suspended": ["Practitioner/p666"]}}`} {
		t.Run("suspended", func(t *testing.T) {
			e := engine(t, blocks[i][1], data)
			putConsent(t, e, "Consent/c1", orgConsent("Patient/a", "Organization/o1"))
			if d := decide(t, e, in("Practitioner/p1", "Organization/o1", "")); !d.Allow {
				t.Errorf("another practitioner denied: %+v", d)
			}
			for _, purpose := range []string{"", "ETREAT"} {
				d := decide(t, e, in("Practitioner/p666", "Organization/o1", purpose))
				if d.Allow || !slices.Equal(d.Reasons, []string{"Practitioner/p666 is suspended"}) {
					t.Errorf("suspended practitioner (purpose %q): %+v", purpose, d)
				}
			}
		})
	}
}

func TestReadmeDataPath(t *testing.T) {
	// The README says a data file's place in the tree is its directory.
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "a"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "authz.rego", "package fhirgate.authz\n\ndecision := {\"allow\": data.a.b.ok}\n")
	writeFile(t, filepath.Join(dir, "a"), "b.json", `{"b": {"ok": true}}`)
	if d := decide(t, newEngine(t, Config{Dir: dir}), read(practitioner(""), "Patient", "a")); !d.Allow {
		t.Errorf("data.a.b.ok not true: %+v", d)
	}
}
