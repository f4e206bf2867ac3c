package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestServeConfigFile(t *testing.T) {
	cfgFile := writeFile(t, "fhirgate.yaml", `
# settings are serve's flag names
addr: 127.0.0.1:7001
data_dir: /from/file
max-body: 2048
anchor-interval: 9s
enforce-references: true
redis-url: redis://app:s3cret@10.0.0.5:6379/2
log-level: warn
`)
	t.Setenv("FHIRGATE_MAX_BODY", "4096")
	c, err := parseServe([]string{"--config", cfgFile, "--addr", "127.0.0.1:7002"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Addr != "127.0.0.1:7002" {
		t.Errorf("addr = %q: the command line must win over the file", c.Addr)
	}
	if c.MaxBody != 4096 {
		t.Errorf("max-body = %d: the environment must win over the file", c.MaxBody)
	}
	if c.DataDir != "/from/file" || c.Interval != 9*time.Second || !c.EnforceReferences || c.LogLevel != "warn" {
		t.Errorf("file settings not applied: %+v", c)
	}
	want := map[string]string{"addr": fromFlag, "max-body": fromEnv, "data-dir": fromFile, "anchor-interval": fromFile, "max-conns": fromDefault, "config": fromFlag}
	for name, src := range want {
		if c.sources[name] != src {
			t.Errorf("source of %s = %q, want %q", name, c.sources[name], src)
		}
	}

	// FHIRGATE_CONFIG names the file too.
	t.Setenv("FHIRGATE_CONFIG", cfgFile)
	if c, err := parseServe(nil); err != nil || c.DataDir != "/from/file" {
		t.Errorf("FHIRGATE_CONFIG: %v, data-dir %q", err, c.DataDir)
	}
}

func TestServeConfigFileErrors(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"unknown key", "addr: :1\nmax_bodyy: 3\n", `line 2: unknown setting "max_bodyy"`},
		{"bad value", "max-body: lots\n", "line 1: max-body"},
		{"bad duration", "anchor-interval: 5 minutes\n", "anchor-interval"},
		{"nested value", "addr:\n  host: x\n", `"addr" must be a single value`},
		{"list", "- addr\n", "want a mapping"},
		{"duplicate", "addr: :1\naddr: :2\n", `"addr" is set again (first on line 1)`},
		{"config in config", "config: other.yaml\n", `unknown setting "config"`},
		{"not yaml", "addr: [\n", "fhirgate.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, "fhirgate.yaml", tc.yaml)
			_, err := parseServe([]string{"--config", p})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
	if _, err := parseServe([]string{"--config", filepath.Join(t.TempDir(), "missing.yaml")}); err == nil {
		t.Error("a missing config file was accepted")
	}
	if c, err := parseServe([]string{"--config", writeFile(t, "empty.yaml", "# nothing\n")}); err != nil || c.Addr != "127.0.0.1:8080" {
		t.Errorf("empty file: %v, addr %q", err, c.Addr)
	}
	if _, err := parseServe([]string{"--tls-cert", "c.pem"}); err == nil {
		t.Error("--tls-cert without --tls-key was accepted")
	}
	for _, addr := range []string{"0.0.0.0:6060", ":6060", "10.1.2.3:6060", "example.com:6060"} {
		if _, err := parseServe([]string{"--pprof-addr", addr}); err == nil {
			t.Errorf("--pprof-addr %s (not loopback) was accepted", addr)
		}
	}
	if _, err := parseServe([]string{"stray"}); err == nil {
		t.Error("a stray argument was accepted")
	}
}

func TestRedact(t *testing.T) {
	for _, tc := range []struct{ name, value, want string }{
		{"redis-url", "redis://app:s3cret@h:6379/0", "redis://app:REDACTED@h:6379/0"},
		{"redis-url", "redis://s3cret@h:6379/0", "redis://REDACTED@h:6379/0"},
		{"redis-url", "redis://h:6379/0", "redis://h:6379/0"},
		{"chain-rpc", "https://u:p@node.example/rpc", "https://u:REDACTED@node.example/rpc"},
		{"chain-key-password-file", "/run/secrets/pw", "/run/secrets/pw"},
		{"client-secret", "abc", "REDACTED"},
		{"addr", "127.0.0.1:8080", "127.0.0.1:8080"},
	} {
		if got := redact(tc.name, tc.value); got != tc.want {
			t.Errorf("redact(%s, %s) = %s, want %s", tc.name, tc.value, got, tc.want)
		}
	}
}

// The effective config is logged at start and printed by --print-config
// without secrets, and what --print-config prints is a valid config file
// that reproduces the same settings.
func TestEffectiveConfig(t *testing.T) {
	c, err := parseServe([]string{"--redis-url", "redis://app:s3cret@10.0.0.5:6379/2", "--kek-file", "/k", "--max-body", "777", "--anchor-interval", "3s", "--log-format", "json", "--base-url", "https://x.example/fhir"})
	if err != nil {
		t.Fatal(err)
	}
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("effective configuration", anyAttrs(effectiveConfig(c.fs, c.sources))...)
	if strings.Contains(logged.String(), "s3cret") {
		t.Errorf("secret logged: %s", logged.String())
	}
	for _, want := range []string{"redis-url.value=redis://app:REDACTED@10.0.0.5:6379/2", "redis-url.from=flag", "max-body.value=777", "max-conns.from=default"} {
		if !strings.Contains(logged.String(), want) {
			t.Errorf("log lacks %q: %s", want, logged.String())
		}
	}

	var printed bytes.Buffer
	if err := writeConfigYAML(&printed, c.fs, c.sources); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(printed.String(), "s3cret") {
		t.Errorf("secret printed: %s", printed.String())
	}
	c2, err := parseServe([]string{"--config", writeFile(t, "printed.yaml", printed.String())})
	if err != nil {
		t.Fatalf("--print-config output is not a valid config: %v\n%s", err, printed.String())
	}
	var diff []string
	c.fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "config" {
			return
		}
		if got := c2.fs.Lookup(f.Name).Value.String(); got != redact(f.Name, f.Value.String()) {
			diff = append(diff, f.Name+": "+got+" != "+f.Value.String())
		}
	})
	if len(diff) > 0 {
		t.Errorf("the printed config reads back differently:\n%s", strings.Join(diff, "\n"))
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns
// their paths and the certificate's serial number.
func selfSigned(t *testing.T, dir string, serial int64) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "fhirgate test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	// Written to temporary names and renamed, as certificate tools do.
	for _, f := range []struct {
		path, typ string
		der       []byte
	}{{certFile, "CERTIFICATE", der}, {keyFile, "PRIVATE KEY", kder}} {
		tmp := f.path + ".tmp"
		if err := os.WriteFile(tmp, pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, f.path); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}

// startServe runs `fhirgate serve args...` in process until the test ends.
func startServe(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, args) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
}

// waitFor polls get until it answers 200, or fails the test after 60 s.
func waitFor(t *testing.T, get func() (*http.Response, error)) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := get()
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not up: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestServeTLS(t *testing.T) {
	old := certCheckEvery
	certCheckEvery = 0
	t.Cleanup(func() { certCheckEvery = old })
	dir := t.TempDir()
	certFile, keyFile := selfSigned(t, dir, 1)
	addr := freeAddr(t)
	startServe(t, "--addr", addr, "--data-dir", filepath.Join(dir, "data"), "--anchor=false", "--log-level", "error",
		"--tls-cert", certFile, "--tls-key", keyFile)

	// The client trusts whatever certificate the server presents, and
	// reports its serial number.
	serial := func() (int64, error) {
		conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			return 0, err
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64(), nil
	}
	pool := x509.NewCertPool()
	pemBytes, _ := os.ReadFile(certFile)
	pool.AppendCertsFromPEM(pemBytes)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	waitFor(t, func() (*http.Response, error) { return client.Get("https://" + addr + "/healthz") })

	// The CapabilityStatement's base is https.
	resp, err := client.Get("https://" + addr + "/fhir/metadata")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"https://`+addr+`/fhir"`) {
		t.Errorf("metadata does not name the https base: %.300s", body)
	}
	if resp.ProtoMajor != 2 {
		t.Errorf("HTTP/%d over TLS, want HTTP/2", resp.ProtoMajor)
	}
	// Plain HTTP to the TLS port is refused.
	if resp, err := http.Get("http://" + addr + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("plain HTTP served on the TLS port")
		}
	}
	// `fhirgate healthcheck --ca-file` trusts the certificate.
	if err := healthcheck(context.Background(), []string{"--url", "https://" + addr + "/healthz", "--ca-file", certFile}); err != nil {
		t.Errorf("healthcheck --ca-file: %v", err)
	}
	if err := healthcheck(context.Background(), []string{"--url", "https://" + addr + "/healthz"}); err == nil {
		t.Error("healthcheck trusted a self-signed certificate without --ca-file")
	}

	// A renewed certificate is served without a restart.
	if s, err := serial(); err != nil || s != 1 {
		t.Fatalf("serial %d, %v", s, err)
	}
	time.Sleep(20 * time.Millisecond) // a later modification time
	selfSigned(t, dir, 2)
	if s, err := serial(); err != nil || s != 2 {
		t.Errorf("after renewal: serial %d, %v; want 2", s, err)
	}
	// A broken renewal keeps the previous certificate in service.
	time.Sleep(20 * time.Millisecond)
	if err := os.WriteFile(certFile, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := serial(); err != nil || s != 2 {
		t.Errorf("after a broken renewal: serial %d, %v; want 2", s, err)
	}
}

// At most --max-conns connections are served at once: with both held
// open, a third client waits until one closes.
func TestServeMaxConns(t *testing.T) {
	dir := t.TempDir()
	addr, pprofAddr := freeAddr(t), freeAddr(t)
	startServe(t, "--addr", addr, "--data-dir", filepath.Join(dir, "data"), "--anchor=false", "--log-level", "error",
		"--max-conns", "2", "--read-header-timeout", "30s", "--pprof-addr", pprofAddr)
	waitFor(t, func() (*http.Response, error) {
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		return c.Get("http://" + addr + "/healthz")
	})
	get := func(timeout time.Duration) error {
		c := &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := c.Get("http://" + addr + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		return nil
	}
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n")) // headers never finished
		held = append(held, c)
	}
	time.Sleep(200 * time.Millisecond) // both accepted
	if err := get(time.Second); err == nil {
		t.Fatal("a third connection was served while --max-conns 2 were held")
	}
	// The pprof listener is apart from the limit: it answers while the
	// API's connections are all held.
	resp, err := http.Get("http://" + pprofAddr + "/debug/pprof/cmdline")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("pprof: %v %v", err, resp)
	} else {
		resp.Body.Close()
	}
	held[0].Close()
	if err := get(10 * time.Second); err != nil {
		t.Errorf("not served after a held connection closed: %v", err)
	}
	held[1].Close()
}
