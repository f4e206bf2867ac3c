package main

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// certReloader serves the certificate in certFile/keyFile and re-reads
// them, at most every certCheckEvery, when either file's modification time
// changed: a renewed certificate (certbot, cert-manager) takes effect
// without a restart. A pair that fails to load keeps the previous one in
// service, with a warning.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger

	mu        sync.Mutex
	cert      *tls.Certificate
	modCert   time.Time
	modKey    time.Time
	lastCheck time.Time
}

var certCheckEvery = 10 * time.Second

func newCertReloader(certFile, keyFile string, log *slog.Logger) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, log: log}
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *certReloader) load() error {
	mc, mk, err := r.modTimes()
	if err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	r.cert, r.modCert, r.modKey = &cert, mc, mk
	return nil
}

func (r *certReloader) modTimes() (cert, key time.Time, err error) {
	ci, err := os.Stat(r.certFile)
	if err != nil {
		return cert, key, fmt.Errorf("--tls-cert: %w", err)
	}
	ki, err := os.Stat(r.keyFile)
	if err != nil {
		return cert, key, fmt.Errorf("--tls-key: %w", err)
	}
	return ci.ModTime(), ki.ModTime(), nil
}

func (r *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := time.Now(); now.Sub(r.lastCheck) >= certCheckEvery {
		r.lastCheck = now
		mc, mk, err := r.modTimes()
		if err == nil && (!mc.Equal(r.modCert) || !mk.Equal(r.modKey)) {
			err = r.load()
			if err == nil {
				r.log.Info("TLS certificate reloaded", slog.String("cert", r.certFile))
			}
		}
		if err != nil {
			r.log.Warn("TLS certificate not reloaded; the previous one stays in service", slog.Any("error", err))
		}
	}
	return r.cert, nil
}
