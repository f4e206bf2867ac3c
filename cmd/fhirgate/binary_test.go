package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/internal/auth"
)

// TestVerifyBinary: a compliance team verifies a Binary version with its
// content file, or as the FHIR JSON read served it (data inside), against
// the chain; a different file, or altered data, fails.
func TestVerifyBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a gateway process")
	}
	dir := t.TempDir()
	chainAddr := freeAddr(t)
	g := startGateway(t, "--data-dir", dir, "--chain-listen", chainAddr, "--anchor-interval", "50ms", "--log-level", "warn")
	key, err := auth.LoadOrCreateDevKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	token, err := key.Sign(auth.Claims{Subject: "compliance", Scope: "system/*.cruds"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if status, b, err := request(ctx, http.MethodPut, g.base+"/fhir/Patient/scan", token, `{"resourceType":"Patient","id":"scan"}`); err != nil || status != http.StatusCreated {
		t.Fatalf("PUT Patient: %d %s %v", status, b, err)
	}
	content := make([]byte, 2<<20+17)
	rand.Read(content)
	do := func(method, path string, body []byte, hdr ...string) []byte {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, method, g.base+"/fhir"+path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		if err != nil || res.StatusCode >= 300 {
			t.Fatalf("%s %s: %d %.300s %v", method, path, res.StatusCode, b, err)
		}
		return b
	}
	var bin struct{ ID string }
	json.Unmarshal(do(http.MethodPost, "/Binary", content, "Content-Type", "application/pdf", "X-Security-Context", "Patient/scan"), &bin)
	var receipt []byte
	for deadline := time.Now().Add(30 * time.Second); ; {
		status, b, err := request(ctx, http.MethodGet, g.base+"/fhir/Binary/"+bin.ID+"/_history/1/$receipt", token, "")
		if err != nil {
			t.Fatal(err)
		}
		if status == http.StatusOK {
			receipt = b
			break
		}
		if status != http.StatusAccepted || time.Now().After(deadline) {
			t.Fatalf("receipt: %d %s", status, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The version as history serves it (no data), and as a FHIR JSON read
	// does (with data).
	var hist struct {
		Entry []struct{ Resource json.RawMessage }
	}
	json.Unmarshal(do(http.MethodGet, "/Binary/"+bin.ID+"/_history", nil), &hist)
	withData := do(http.MethodGet, "/Binary/"+bin.ID, nil, "Accept", "application/fhir+json")
	served := do(http.MethodGet, "/Binary/"+bin.ID, nil)
	files := map[string][]byte{
		"receipt.json": receipt, "version.json": hist.Entry[0].Resource, "with-data.json": withData,
		"content.pdf": served, "other.pdf": append(bytes.Clone(served[:len(served)-1]), served[len(served)-1]^1),
		"altered-data.json": []byte(strings.Replace(string(withData), `"data":"`, `"data":"AAAA`, 1)),
	}
	for name, b := range files {
		if err := os.WriteFile(dir+"/"+name, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f := func(name string) string { return dir + "/" + name }
	rpc := "http://" + chainAddr
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--resource", f("version.json"), "--content", f("content.pdf")}, "PASS: the Binary version with this content is leaf"},
		{[]string{"--resource", f("with-data.json")}, "PASS: the resource version is leaf"},
		{[]string{"--resource", f("with-data.json"), "--content", f("content.pdf")}, "PASS"},
		{[]string{"--resource", f("version.json"), "--content", f("other.pdf")}, "FAIL: content:"},
		{[]string{"--resource", f("altered-data.json")}, "FAIL: content:"},
	} {
		var out bytes.Buffer
		args := append([]string{"--receipt", f("receipt.json"), "--rpc", rpc}, c.args...)
		err := verifyCmd(context.Background(), args, &out)
		if !strings.HasPrefix(out.String(), c.want) || (err == nil) != strings.HasPrefix(c.want, "PASS") {
			t.Errorf("verify %v: %v\n%s", c.args, err, out.String())
		}
	}
}
