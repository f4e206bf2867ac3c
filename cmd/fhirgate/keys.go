package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fhirgate/fhirgate/internal/keys"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/boltstore"
	"github.com/fhirgate/fhirgate/internal/store/redisstore"
	"github.com/fhirgate/fhirgate/internal/store/sealed"
	goredis "github.com/redis/go-redis/v9"
)

// storeFlags are the flags that locate the store and its keys, shared by
// serve and keys.
type storeFlags struct {
	DataDir    string
	RedisURL   string
	RedisAddrs string
	KEKFile    string
}

func (c *storeFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.DataDir, "data-dir", "./data", "data directory for the embedded store")
	fs.StringVar(&c.RedisURL, "redis-url", "", "use Redis at this redis:// URL instead of the embedded store")
	fs.StringVar(&c.RedisAddrs, "redis-cluster", "", "Redis Cluster seed nodes: refused, the transparency log needs one Redis primary (use --redis-url)")
	fs.StringVar(&c.KEKFile, "kek-file", "", "file of base64 key-encryption keys, one per line, the last primary (or FHIRGATE_KEK holds them; embedded default: DATA-DIR/kek.keys, generated)")
}

func (c *storeFlags) redis() bool { return c.RedisURL != "" || c.RedisAddrs != "" }

// openStore opens the backend and seals it with the key ring the flags
// (or FHIRGATE_KEK) name.
func openStore(ctx context.Context, c storeFlags, log *slog.Logger) (*sealed.Store, error) {
	ring, err := openRing(c, log)
	if err != nil {
		return nil, err
	}
	var st store.Store
	if c.redis() {
		rc := redisstore.Config{URL: c.RedisURL, Logger: log}
		if c.RedisAddrs != "" {
			// The commit script appends each version's leaf to the one log,
			// in a slot of its own: a Cluster would refuse it.
			return nil, errors.New("--redis-cluster: the transparency log needs one Redis primary (--redis-url)")
		}
		// go-redis's own messages (failed dials during an outage, …) go to
		// the server's log, not to bare stderr. They name addresses, never
		// commands or values.
		goredis.SetLogger(redisLogger{log})
		st, err = redisstore.New(ctx, rc)
		log.Info("store: redis")
	} else {
		st, err = boltstore.New(ctx, boltstore.Config{Dir: c.DataDir})
		log.Info("store: embedded bbolt", slog.String("dir", c.DataDir))
	}
	if err != nil {
		return nil, err
	}
	m, err := keys.Open(ctx, ring, st, keys.Options{})
	if err != nil {
		st.Close()
		return nil, err
	}
	log.Info("encryption at rest: on", slog.Any("kek_ids", ring.IDs()))
	return sealed.New(st, m), nil
}

// openRing returns the key ring: --kek-file, else FHIRGATE_KEK, else (the
// embedded store only) a KEK file generated in the data directory.
func openRing(c storeFlags, log *slog.Logger) (*keys.FileRing, error) {
	if c.KEKFile != "" {
		return keys.OpenFileRing(c.KEKFile)
	}
	if env, ok := os.LookupEnv("FHIRGATE_KEK"); ok {
		raw, err := keys.ParseKEKs(env)
		if err != nil {
			return nil, fmt.Errorf("FHIRGATE_KEK: %w", err)
		}
		return keys.NewRing(raw)
	}
	if c.redis() {
		return nil, errors.New("with Redis, give the key-encryption key with --kek-file or FHIRGATE_KEK (every gateway on one Redis must share it; `fhirgate keys init --kek-file F` makes one)")
	}
	path := filepath.Join(c.DataDir, "kek.keys")
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		if err := keys.CreateFile(path); err != nil {
			return nil, err
		}
		log.Warn("GENERATED A KEY-ENCRYPTION KEY in " + path + ": development only. It sits next to the data it protects, so a copy of the data directory can be decrypted; in production give --kek-file on a separate secret volume, or FHIRGATE_KEK")
	} else {
		log.Warn("USING THE DEVELOPMENT KEY-ENCRYPTION KEY in " + path + ": it sits next to the data it protects; give --kek-file or FHIRGATE_KEK in production")
	}
	return keys.OpenFileRing(path)
}

const keysUsage = `usage: fhirgate keys <command> [flags]

commands:
  init --kek-file F   write a new key-encryption key file (fails if F exists)
  status              which KEKs wrap the stored data keys
  rotate              add a KEK version to the KEK file and rewrap every data key under it
  rewrap              rewrap every data key under the primary KEK (after adding one by hand)
  prune               rewrap stragglers, then remove every KEK but the primary from the file

status/rotate/rewrap/prune run against a serving gateway with --url (online;
the embedded store's file is locked by the gateway), or directly on the store
with the serve flags (--redis-url/--data-dir, --kek-file).
`

func keysCmd(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, keysUsage)
		return errors.New("keys: missing command")
	}
	op := args[0]
	fs := flag.NewFlagSet("keys "+op, flag.ContinueOnError)
	var c storeFlags
	c.register(fs)
	url := fs.String("url", "", "base URL of a serving gateway (e.g. http://127.0.0.1:8080): run the command there")
	token := fs.String("token", "", "bearer token for --url (a system client with system/*.*)")
	if err := envFlags(fs); err != nil {
		return err
	}
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	switch op {
	case "init":
		if c.KEKFile == "" {
			return errors.New("keys init: --kek-file is required")
		}
		if err := keys.CreateFile(c.KEKFile); err != nil {
			return err
		}
		ring, err := keys.OpenFileRing(c.KEKFile)
		if err != nil {
			return err
		}
		fmt.Printf("wrote %s (KEK %s)\n", c.KEKFile, ring.IDs()[0])
		return nil
	case "status", "rotate", "rewrap", "prune":
	default:
		fmt.Fprint(os.Stderr, keysUsage)
		return fmt.Errorf("keys: unknown command %q", op)
	}
	if *url != "" {
		return keysRemote(ctx, *url, *token, op)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	st, err := openStore(ctx, c, log)
	if err != nil {
		return err
	}
	defer st.Close()
	out, err := st.Keys().Do(ctx, op)
	if err != nil {
		return err
	}
	b, _ := json.MarshalIndent(out, "", "  ")
	fmt.Println(string(b))
	return nil
}

// keysRemote runs a key command on a serving gateway's /admin/keys.
func keysRemote(ctx context.Context, base, token, op string) error {
	method := http.MethodPost
	if op == "status" {
		method = http.MethodGet
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(base, "/")+"/admin/keys/"+op, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("keys %s: %s: %s", op, resp.Status, b)
	}
	os.Stdout.Write(b)
	return nil
}

// redisLogger writes go-redis's messages to slog at Warn.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, "redis client", slog.String("msg", fmt.Sprintf(format, v...)))
}
