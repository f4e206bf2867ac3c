package contracts_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ethereum/go-ethereum/crypto"
	"github.com/google/go-cmp/cmp"

	"github.com/fhirgate/fhirgate/anchor/evm"
)

var artefacts = []string{"Anchor.abi", "Anchor.bin", "Anchor.metadata.json"}

func read(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMetadataMatchesSource fails when Anchor.sol was edited without
// rebuilding (make contracts).
func TestMetadataMatchesSource(t *testing.T) {
	var meta struct {
		Compiler struct{ Version string }
		Settings struct {
			EVMVersion string `json:"evmVersion"`
			Optimizer  struct {
				Enabled bool
				Runs    int
			}
		}
		Sources map[string]struct{ Keccak256 string }
	}
	if err := json.Unmarshal(read(t, "Anchor.metadata.json"), &meta); err != nil {
		t.Fatal(err)
	}
	if got, want := meta.Sources["Anchor.sol"].Keccak256, crypto.Keccak256Hash(read(t, "Anchor.sol")).Hex(); got != want {
		t.Errorf("metadata keccak256 of Anchor.sol = %s, source hashes to %s: run make contracts", got, want)
	}
	if !strings.HasPrefix(meta.Compiler.Version, "0.8.37+") || meta.Settings.EVMVersion != "shanghai" ||
		!meta.Settings.Optimizer.Enabled || meta.Settings.Optimizer.Runs != 200 {
		t.Errorf("built with solc %s, evm %s, optimizer %+v; want 0.8.37, shanghai, 200 runs",
			meta.Compiler.Version, meta.Settings.EVMVersion, meta.Settings.Optimizer)
	}
}

// TestBindingsMatchArtefacts fails when anchor/evm/contract.go was not
// regenerated from the committed artefacts.
func TestBindingsMatchArtefacts(t *testing.T) {
	var want, got any
	if err := json.Unmarshal(read(t, "Anchor.abi"), &want); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(evm.AnchorContractMetaData.ABI), &got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("binding ABI mismatch (-Anchor.abi +contract.go): run make contracts\n%s", diff)
	}
	if got, want := evm.AnchorContractMetaData.Bin, "0x"+string(read(t, "Anchor.bin")); got != want {
		t.Errorf("binding bytecode differs from Anchor.bin: run make contracts")
	}
}

// TestRebuild recompiles Anchor.sol with the pinned solc and compares the
// output with the committed artefacts byte for byte. It needs node and
// the solc make contracts installs; without them it skips, or fails when
// CI=true.
func TestRebuild(t *testing.T) {
	solc := filepath.Join("..", "..", "build", "solc", "node_modules", "solc", "package.json")
	_, nodeErr := exec.LookPath("node")
	_, solcErr := os.Stat(solc)
	if nodeErr != nil || solcErr != nil {
		msg := "node or solc missing (run make contracts): " + errString(nodeErr) + " " + errString(solcErr)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	dir := t.TempDir()
	cmd := exec.CommandContext(t.Context(), "node", "build.js", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("node build.js: %v\n%s", err, out)
	}
	for _, name := range artefacts {
		if !bytes.Equal(read(t, filepath.Join(dir, name)), read(t, name)) {
			t.Errorf("%s differs from a fresh build: run make contracts", name)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
