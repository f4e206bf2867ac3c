package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/gateway"
	"github.com/fhirgate/fhirgate/internal/auth"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/policy"
	"golang.org/x/net/netutil"
)

type serveConfig struct {
	storeFlags
	Addr              string
	BaseURL           string
	MaxBody           int64
	MaxBundleEntries  int
	MaxBundleBody     int64
	MaxBinary         int64
	MaxBinaryResource int64
	BinaryTimeout     time.Duration
	ExportDir         string
	EnforceReferences bool
	LogFormat         string
	LogLevel          string
	ShutdownGrace     time.Duration
	httpFlags
	authFlags
	PolicyDir string
	anchorFlags
	AnchorMaxLag time.Duration

	PprofAddr   string
	ConfigFile  string
	PrintConfig bool
	fs          *flag.FlagSet
	sources     map[string]string
}

// httpFlags bound what clients can hold: slow or idle connections are
// cut by the timeouts, and at most MaxConns are served at once (further
// connections wait in the listen backlog).
type httpFlags struct {
	TLSCert, TLSKey   string
	MaxConns          int
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
	MaxHeaderBytes    int
}

func (c *httpFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.TLSCert, "tls-cert", "", "PEM certificate chain: serve HTTPS (with --tls-key); the files are re-read when they change")
	fs.StringVar(&c.TLSKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.IntVar(&c.MaxConns, "max-conns", 4096, "connections served at once; more wait to be accepted (0: no limit)")
	fs.DurationVar(&c.ReadHeaderTimeout, "read-header-timeout", 10*time.Second, "time a client has to send a request's headers")
	fs.DurationVar(&c.ReadTimeout, "read-timeout", 2*time.Minute, "time a client has to send a whole request, body included")
	fs.DurationVar(&c.WriteTimeout, "write-timeout", 0, "time to write a response (0: none; Bulk Data downloads and websockets stream)")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", 2*time.Minute, "how long an idle keep-alive connection is kept")
	fs.IntVar(&c.MaxHeaderBytes, "max-header-bytes", 1<<20, "maximum size of a request's headers")
}

// authFlags say how bearer tokens are checked.
type authFlags struct {
	JWKSURL, JWKSFile, Issuer, Audience string
	AuthorizeURL, TokenURL              string
}

// envFlags gives every flag a FHIRGATE_* environment fallback: the env
// value becomes the default, and an explicit flag still wins.
func envFlags(fs *flag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		env := "FHIRGATE_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if e := f.Value.Set(v); e != nil && err == nil {
				err = fmt.Errorf("%s: %w", env, e)
			}
			f.DefValue = v
		}
		f.Usage += " (env " + env + ")"
	})
	return err
}

func parseServe(args []string) (serveConfig, error) {
	var c serveConfig
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.StringVar(&c.Addr, "addr", "127.0.0.1:8080", "listen address")
	c.storeFlags.register(fs)
	fs.StringVar(&c.BaseURL, "base-url", "", "public absolute URL of the FHIR base (default: from each request's Host)")
	fs.Int64Var(&c.MaxBody, "max-body", gateway.DefaultMaxBody, "maximum request body in bytes (413 above)")
	fs.IntVar(&c.MaxBundleEntries, "max-bundle-entries", gateway.DefaultMaxBundleEntries, "maximum entries of a batch or transaction Bundle (413 above)")
	fs.Int64Var(&c.MaxBundleBody, "max-bundle-body", gateway.DefaultMaxBundleBody, "maximum batch or transaction Bundle body in bytes (413 above)")
	fs.Int64Var(&c.MaxBinary, "max-binary", gateway.DefaultMaxBinary, "maximum size in bytes of a Binary's content, streamed in sealed chunks (413 above; at most 2147483647)")
	fs.Int64Var(&c.MaxBinaryResource, "max-binary-resource", gateway.DefaultMaxBinaryResource, "largest Binary content served inside the Binary resource (base64 data) to a client asking for FHIR JSON (413 above; the raw content is served at any size)")
	fs.DurationVar(&c.BinaryTimeout, "binary-timeout", gateway.DefaultBinaryTimeout, "time a Binary's content may take to upload or download, beyond --read-timeout and --write-timeout")
	fs.StringVar(&c.ExportDir, "export-dir", "", "directory for Bulk Data $export output, encrypted (default: DATA-DIR/export)")
	fs.BoolVar(&c.EnforceReferences, "enforce-references", false, "reject references to resources this server does not hold, and reference target types R4 does not allow (422)")
	fs.StringVar(&c.LogFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", 20*time.Second, "how long SIGTERM waits for in-flight requests")
	fs.StringVar(&c.JWKSURL, "jwks-url", "", "URL of the token issuer's JWK Set (default: the dev issuer's key, DATA-DIR/token-signing.jwk)")
	fs.StringVar(&c.JWKSFile, "jwks-file", "", "file holding the token issuer's JWK Set (instead of --jwks-url)")
	fs.StringVar(&c.Issuer, "issuer", "", "accepted token issuer (iss); required with --jwks-url/--jwks-file")
	fs.StringVar(&c.Audience, "audience", "", "audience (aud) tokens must name, usually the FHIR base URL; required with --jwks-url/--jwks-file")
	fs.StringVar(&c.AuthorizeURL, "smart-authorize-url", "", "the authorization server's authorize endpoint, advertised in /.well-known/smart-configuration")
	fs.StringVar(&c.TokenURL, "smart-token-url", "", "the authorization server's token endpoint, advertised in /.well-known/smart-configuration")
	fs.StringVar(&c.PolicyDir, "policy-dir", "", "directory of Rego policies replacing the shipped ones; edits are picked up without a restart")
	c.anchorFlags.register(fs)
	fs.DurationVar(&c.AnchorMaxLag, "anchor-max-lag", time.Minute, "/readyz reports \"degraded\" when leaves have waited this long for an anchor")
	c.httpFlags.register(fs)
	fs.StringVar(&c.PprofAddr, "pprof-addr", "", "serve Go's net/http/pprof profiles on this loopback host:port (off by default)")
	fs.StringVar(&c.ConfigFile, "config", "", "YAML file of settings: flag names as keys (flags and FHIRGATE_* variables override it)")
	fs.BoolVar(&c.PrintConfig, "print-config", false, "print the effective configuration as YAML (secrets redacted) and exit")
	sources, err := parseLayered(fs, args, &c.ConfigFile)
	if err != nil {
		return c, err
	}
	c.fs, c.sources = fs, sources
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return c, errors.New("--tls-cert and --tls-key go together")
	}
	if c.PprofAddr != "" {
		host, _, err := net.SplitHostPort(c.PprofAddr)
		if ip := net.ParseIP(host); err != nil || host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return c, fmt.Errorf("--pprof-addr %q: profiles are served on a loopback address only", c.PprofAddr)
		}
	}
	return c, nil
}

func newLogger(format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("unknown log format %q", format)
}

func serve(ctx context.Context, args []string) error {
	cfg, err := parseServe(args)
	if err != nil {
		return err
	}
	log, err := newLogger(cfg.LogFormat, cfg.LogLevel)
	if err != nil {
		return err
	}
	if cfg.PrintConfig {
		return writeConfigYAML(os.Stdout, cfg.fs, cfg.sources)
	}
	slog.SetDefault(log)
	log.Info("effective configuration (secrets redacted)", anyAttrs(effectiveConfig(cfg.fs, cfg.sources))...)
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	st, err := openStore(ctx, cfg.storeFlags, log)
	if err != nil {
		return err
	}
	defer st.Close()

	verifier, smart, err := openAuth(ctx, cfg.DataDir, cfg.authFlags, log)
	if err != nil {
		return err
	}
	var gw *gateway.Server
	engine, err := policy.New(ctx, policy.Config{Dir: cfg.PolicyDir, Logger: log, OnReload: func(err error) {
		if gw != nil {
			gw.ObservePolicyReload(err)
		}
	}})
	if err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	if cfg.PolicyDir != "" {
		go engine.Watch(ctx)
		log.Info("policy loaded; watching for changes", slog.String("dir", cfg.PolicyDir))
	}
	logStore, ok := st.Backend().(anchor.Storage)
	if !ok {
		return errors.New("the store keeps no transparency log")
	}
	merkleLog := anchor.NewLog(logStore)
	metrics := gateway.NewMetrics()
	var anchorer *anchor.Anchorer
	if cfg.Enabled {
		chain, closeChain, err := openChain(ctx, cfg.chainFlags, cfg.DataDir, log)
		if err != nil {
			return fmt.Errorf("chain: %w", err)
		}
		defer closeChain()
		actx, stopAnchoring := context.WithCancel(ctx)
		anchorer = anchor.NewAnchorer(anchor.AnchorerConfig{
			Log: merkleLog, Chain: anchor.ObserveChain(chain, metrics.ObserveChainCall), Interval: cfg.Interval, Batch: cfg.Batch, Holder: holderID(), Logger: log,
		})
		done := make(chan struct{})
		go func() { anchorer.Run(actx); close(done) }()
		defer func() { stopAnchoring(); <-done }()
	} else {
		log.Warn("ANCHORING OFF: versions are logged but no root is anchored; receipts stay pending")
	}
	exportDir := cfg.ExportDir
	if exportDir == "" {
		exportDir = filepath.Join(cfg.DataDir, "export")
	}
	if err := os.MkdirAll(exportDir, 0o700); err != nil {
		return err
	}
	gcfg := gateway.Config{
		Store: st, BaseURL: cfg.BaseURL, MaxBody: cfg.MaxBody,
		MaxBundleEntries: cfg.MaxBundleEntries, MaxBundleBody: cfg.MaxBundleBody, ExportDir: exportDir,
		MaxBinary: cfg.MaxBinary, MaxBinaryResource: cfg.MaxBinaryResource, BinaryTimeout: cfg.BinaryTimeout,
		EnforceReferences: cfg.EnforceReferences, Logger: log, Version: version,
		Auth: verifier, Policy: engine, SMART: smart, Log: merkleLog,
		Anchor: anchorer, AnchorMaxLag: cfg.AnchorMaxLag, Metrics: metrics,
	}
	// On Redis, Subscription messages reach the other gateway processes
	// (the embedded store has one process: the default local bus).
	if bus, ok := st.Backend().(store.Bus); ok {
		gcfg.Bus = bus
	}
	gw = gateway.New(gcfg)
	// Runs before the store closes: pending notifications stop first.
	defer gw.Close()
	srv := &http.Server{
		Handler:           gw,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	scheme := "http"
	if cfg.TLSCert != "" {
		certs, err := newCertReloader(cfg.TLSCert, cfg.TLSKey, log)
		if err != nil {
			return err
		}
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.get}
		scheme = "https"
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return err
	}
	if cfg.MaxConns > 0 {
		ln = netutil.LimitListener(ln, cfg.MaxConns)
	}
	if cfg.PprofAddr != "" {
		stopPprof, err := servePprof(cfg.PprofAddr, log)
		if err != nil {
			return err
		}
		defer stopPprof()
	}
	errc := make(chan error, 1)
	go func() {
		if srv.TLSConfig != nil {
			errc <- srv.ServeTLS(ln, "", "")
			return
		}
		errc <- srv.Serve(ln)
	}()
	log.Info("fhirgate serving", slog.String("addr", ln.Addr().String()), slog.String("fhir_base", scheme+"://"+ln.Addr().String()+"/fhir"))
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: draining in-flight requests", slog.Duration("grace", cfg.ShutdownGrace))
	sctx, cancel := context.WithTimeoutCause(context.Background(), cfg.ShutdownGrace, errors.New("shutdown grace period over"))
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Info("stopped")
	return nil
}

func healthcheck(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	u := fs.String("url", "http://127.0.0.1:8080/healthz", "health URL to probe")
	caFile := fs.String("ca-file", "", "PEM certificates to trust for an https --url (default: the system's)")
	if err := envFlags(fs); err != nil {
		return err
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	client := http.DefaultClient
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("--ca-file %s: no PEM certificate", *caFile)
		}
		client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *u, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return errors.New("unhealthy: status " + strconv.Itoa(resp.StatusCode))
	}
	return nil
}

// openAuth returns the token verifier the flags ask for: an external
// issuer's JWK Set (--jwks-url or --jwks-file, with --issuer and
// --audience), or by default the embedded dev issuer, whose key is
// generated in the data dir and whose tokens `fhirgate token` prints.
func openAuth(ctx context.Context, dataDir string, c authFlags, log *slog.Logger) (*auth.Verifier, gateway.SMARTConfig, error) {
	smart := gateway.SMARTConfig{Issuer: c.Issuer, JWKSURI: c.JWKSURL, AuthorizationEndpoint: c.AuthorizeURL, TokenEndpoint: c.TokenURL}
	if c.JWKSURL != "" || c.JWKSFile != "" {
		if c.JWKSURL != "" && c.JWKSFile != "" {
			return nil, smart, errors.New("--jwks-url and --jwks-file are exclusive")
		}
		if c.Issuer == "" || c.Audience == "" {
			return nil, smart, errors.New("--issuer and --audience are required with --jwks-url or --jwks-file")
		}
		v, err := auth.NewVerifier(ctx, auth.Config{JWKSURL: c.JWKSURL, JWKSFile: c.JWKSFile, Issuer: c.Issuer, Audience: c.Audience})
		return v, smart, err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, smart, err
	}
	key, err := auth.LoadOrCreateDevKey(dataDir)
	if err != nil {
		return nil, smart, fmt.Errorf("dev token issuer: %w", err)
	}
	iss, aud := cmp.Or(c.Issuer, auth.DevIssuer), cmp.Or(c.Audience, auth.DevAudience)
	log.Warn("DEV TOKEN ISSUER: accepting tokens signed by the key in the data dir (mint them with `fhirgate token`); use --jwks-url/--jwks-file in production",
		slog.String("issuer", iss), slog.String("audience", aud))
	smart.Issuer, smart.JWKS = iss, key.PublicJWKS()
	v, err := auth.NewVerifier(ctx, auth.Config{JWKS: key.PublicJWKS(), Issuer: iss, Audience: aud})
	return v, smart, err
}

// servePprof serves net/http/pprof's profiles on addr (a loopback
// address) until the returned func is called.
func servePprof(addr string, log *slog.Logger) (func(), error) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--pprof-addr: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	log.Info("pprof profiles served", slog.String("url", "http://"+ln.Addr().String()+"/debug/pprof/"))
	return func() { srv.Close() }, nil
}
