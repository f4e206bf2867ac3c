package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fhirgate/fhirgate/gateway"
)

type serveConfig struct {
	storeFlags
	Addr              string
	BaseURL           string
	MaxBody           int64
	EnforceReferences bool
	LogFormat         string
	LogLevel          string
	ShutdownGrace     time.Duration
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
	fs.BoolVar(&c.EnforceReferences, "enforce-references", false, "reject references to resources this server does not hold, and reference target types R4 does not allow (422)")
	fs.StringVar(&c.LogFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", 20*time.Second, "how long SIGTERM waits for in-flight requests")
	if err := envFlags(fs); err != nil {
		return c, err
	}
	return c, fs.Parse(args)
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
	slog.SetDefault(log)
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	st, err := openStore(ctx, cfg.storeFlags, log)
	if err != nil {
		return err
	}
	defer st.Close()

	gw := gateway.New(gateway.Config{
		Store: st, BaseURL: cfg.BaseURL, MaxBody: cfg.MaxBody,
		EnforceReferences: cfg.EnforceReferences, Logger: log, Version: version,
	})
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           gw,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       2 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("fhirgate serving", slog.String("addr", ln.Addr().String()), slog.String("fhir_base", "http://"+ln.Addr().String()+"/fhir"))
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
	if err := envFlags(fs); err != nil {
		return err
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *u, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return errors.New("unhealthy: status " + strconv.Itoa(resp.StatusCode))
	}
	return nil
}
