//go:build faults

package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/ethclient"
	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/anchor/evm"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/boltstore"
	"github.com/fhirgate/fhirgate/internal/store/redisstore"
	"github.com/redis/go-redis/v9"
	bolt "go.etcd.io/bbolt"
)

// roots reads anchored roots from the chain, as `fhirgate verify` does,
// once per tree size.
type roots struct {
	anchor.RootReader
	mu   sync.Mutex
	seen map[uint64]common.Hash
}

func (r *roots) RootAt(ctx context.Context, size uint64) (common.Hash, error) {
	r.mu.Lock()
	h, ok := r.seen[size]
	r.mu.Unlock()
	if ok {
		return h, nil
	}
	h, err := r.RootReader.RootAt(ctx, size)
	if err == nil {
		r.mu.Lock()
		r.seen[size] = h
		r.mu.Unlock()
	}
	return h, err
}

// openChain returns a reader of the Anchor contract at the node rpc.
func openChain(t *testing.T, rpc, contract string) *roots {
	t.Helper()
	ec, err := ethclient.DialContext(t.Context(), rpc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ec.Close)
	ch, err := evm.New(t.Context(), evm.Config{Client: ec, Contract: common.HexToAddress(strings.TrimSpace(contract))})
	if err != nil {
		t.Fatalf("chain at %s: %v", rpc, err)
	}
	return &roots{RootReader: ch, seen: map[uint64]common.Hash{}}
}

// verifyReceipts fetches the receipt of every version (waiting while it is
// pending, until wait is over) and verifies it offline against the roots
// on chain, as `fhirgate verify` does: the leaf names the version (and
// commits to its body, when known), the inclusion proof leads to the
// root, and the root is the one anchored for that tree size. No two
// versions share a leaf. It returns how many verified.
func verifyReceipts(t *testing.T, c *client, chain anchor.RootReader, versions []version, wait time.Duration) int {
	t.Helper()
	ctx := t.Context()
	deadline := time.Now().Add(wait)
	var (
		mu       sync.Mutex
		leaves   = map[int64]string{}
		verified int
		pending  int
		failures int
	)
	jobs := make(chan version)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for v := range jobs {
				rc, err := fetchReceipt(ctx, c, v, deadline)
				mu.Lock()
				if errors.Is(err, anchor.ErrPending) {
					pending++
					mu.Unlock()
					continue
				}
				mu.Unlock()
				if err == nil {
					err = checkReceipt(ctx, rc, v, chain)
				}
				mu.Lock()
				if err != nil {
					if failures++; failures <= 20 {
						t.Errorf("receipt of acknowledged %s: %v", v, err)
					}
				} else if prev, dup := leaves[rc.LeafIndex]; dup {
					t.Errorf("%s and %s have the same leaf %d", prev, v, rc.LeafIndex)
				} else {
					leaves[rc.LeafIndex] = v.String()
					verified++
				}
				mu.Unlock()
			}
		})
	}
	for _, v := range versions {
		jobs <- v
	}
	close(jobs)
	wg.Wait()
	if pending > 0 {
		t.Errorf("%d of %d acknowledged versions were still not anchored after %v", pending, len(versions), wait)
	}
	if failures > 20 {
		t.Errorf("... %d receipt failures in all", failures)
	}
	return verified
}

func fetchReceipt(ctx context.Context, c *client, v version, deadline time.Time) (*anchor.Receipt, error) {
	for {
		r, err := c.do(ctx, http.MethodGet, fmt.Sprintf("%s/%s/_history/%d/$receipt", v.typ, v.id, v.ver), nil)
		if err != nil {
			return nil, err
		}
		switch r.status {
		case http.StatusOK:
			var rc anchor.Receipt
			if err := json.Unmarshal(r.body, &rc); err != nil {
				return nil, fmt.Errorf("receipt: %v", err)
			}
			return &rc, nil
		case http.StatusAccepted:
			if time.Now().After(deadline) {
				return nil, anchor.ErrPending
			}
			time.Sleep(250 * time.Millisecond)
		default:
			return nil, fmt.Errorf("GET $receipt: %v", r)
		}
	}
}

func checkReceipt(ctx context.Context, rc *anchor.Receipt, v version, chain anchor.RootReader) error {
	leaf, err := anchor.ParseLeaf(rc.LeafData)
	if err != nil {
		return err
	}
	if leaf.ResourceType != v.typ || leaf.ID != v.id || leaf.VersionID != strconv.FormatInt(v.ver, 10) {
		return fmt.Errorf("the leaf names %s/%s/_history/%s", leaf.ResourceType, leaf.ID, leaf.VersionID)
	}
	return anchor.Verify(ctx, rc, v.body, chain)
}

// indexEntry is one raw search-index entry: id has term param=value.
type indexEntry struct{ typ, param, value, id string }

// rawStore is what the white-box check reads from a stopped store: its
// index entries, live set and resources (each with a current version),
// by backend-specific means.
type rawStore struct {
	index   []indexEntry
	live    []store.Key
	current []store.Key
}

// checkBoltStore opens the stopped gateway's bbolt file and checks it.
func checkBoltStore(t *testing.T, dir string) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, "fhirgate.db"), 0o600, &bolt.Options{ReadOnly: true, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("open the stopped store: %v", err)
	}
	var raw rawStore
	err = db.View(func(tx *bolt.Tx) error {
		if err := tx.Bucket([]byte("index")).ForEach(func(k, _ []byte) error {
			p := strings.Split(string(k), "\x00")
			if len(p) != 4 {
				return fmt.Errorf("index key %q", k)
			}
			raw.index = append(raw.index, indexEntry{p[0], p[1], p[2], p[3]})
			return nil
		}); err != nil {
			return err
		}
		for _, b := range []struct {
			name string
			keys *[]store.Key
		}{{"live", &raw.live}, {"current", &raw.current}} {
			if err := tx.Bucket([]byte(b.name)).ForEach(func(k, _ []byte) error {
				typ, id, ok := strings.Cut(string(k), "\x00")
				if !ok {
					return fmt.Errorf("%s key %q", b.name, k)
				}
				*b.keys = append(*b.keys, store.Key{Type: typ, ID: id})
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	st, err := boltstore.New(t.Context(), boltstore.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	checkStore(t, st, st, raw)
}

// checkRedisStore reads the gateway's keys (prefix fg) on Redis and checks
// them.
func checkRedisStore(t *testing.T, redisURL string) {
	t.Helper()
	ctx := t.Context()
	st, err := redisstore.New(ctx, redisstore.Config{URL: redisURL})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rdb := st.Client()
	start := time.Now()
	var raw rawStore
	scan := func(match string, fn func(key string) error) {
		iter := rdb.Scan(ctx, 0, match, 1000).Iterator()
		for iter.Next(ctx) {
			if err := fn(iter.Val()); err != nil {
				t.Fatal(err)
			}
		}
		if err := iter.Err(); err != nil {
			t.Fatal(err)
		}
	}
	// members reads the sets keys, a pipeline of SMEMBERS per 1000.
	members := func(keys []string, fn func(key string, ids []string)) {
		for lo := 0; lo < len(keys); lo += 1000 {
			pipe := rdb.Pipeline()
			cmds := make([]*redis.StringSliceCmd, 0, 1000)
			for _, k := range keys[lo:min(len(keys), lo+1000)] {
				cmds = append(cmds, pipe.SMembers(ctx, k))
			}
			if _, err := pipe.Exec(ctx); err != nil {
				t.Fatal(err)
			}
			for i, cmd := range cmds {
				fn(keys[lo+i], cmd.Val())
			}
		}
	}
	var xkeys, idkeys []string
	scan("fg:{*}:x:*", func(k string) error { xkeys = append(xkeys, k); return nil })
	scan("fg:{*}:ids", func(k string) error { idkeys = append(idkeys, k); return nil })
	// fg:{T}:x:<param>:<value> (values are blinded: base64url, no colon)
	members(xkeys, func(k string, ids []string) {
		typ, rest, _ := strings.Cut(strings.TrimPrefix(k, "fg:{"), "}:x:")
		i := strings.LastIndexByte(rest, ':')
		for _, id := range ids {
			raw.index = append(raw.index, indexEntry{typ, rest[:i], rest[i+1:], id})
		}
	})
	members(idkeys, func(k string, ids []string) {
		typ := strings.TrimSuffix(strings.TrimPrefix(k, "fg:{"), "}:ids")
		for _, id := range ids {
			raw.live = append(raw.live, store.Key{Type: typ, ID: id})
		}
	})
	scan("fg:{*}:r:*", func(k string) error {
		typ, id, _ := strings.Cut(strings.TrimPrefix(k, "fg:{"), "}:r:")
		raw.current = append(raw.current, store.Key{Type: typ, ID: id})
		return nil
	})
	t.Logf("read the stopped store's index in %v", time.Since(start).Round(time.Millisecond))
	checkStore(t, st, st, raw)
}

// checkStore checks a stopped store: every index entry and every live
// entry points at a live resource holding that term; every live resource
// is in the live set and indexed under each of its terms; every log leaf
// names a version stored with that leaf at that index, and no version has
// two leaves.
func checkStore(t *testing.T, st store.Store, lg anchor.Storage, raw rawStore) {
	t.Helper()
	ctx := t.Context()
	start := time.Now()
	cur := map[store.Key]*store.Record{}
	get := func(k store.Key) *store.Record {
		if r, ok := cur[k]; ok {
			return r
		}
		r, err := st.Get(ctx, k)
		var rec *store.Record
		switch {
		case err == nil:
			rec = &r
		case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrErased):
		default:
			t.Fatalf("get %s: %v", k, err)
		}
		cur[k] = rec
		return rec
	}
	hasTerm := func(r *store.Record, param, value string) bool {
		for _, tm := range r.Terms {
			if tm.Param == param && tm.Value == value {
				return true
			}
		}
		return false
	}
	bad := 0
	report := func(format string, args ...any) {
		if bad++; bad <= 20 {
			t.Errorf("store: "+format, args...)
		}
	}
	indexed := map[indexEntry]bool{}
	for _, e := range raw.index {
		indexed[e] = true
		r := get(store.Key{Type: e.typ, ID: e.id})
		switch {
		case r == nil:
			report("index entry %s %s=%s points at %s/%s, which does not exist", e.typ, e.param, e.value, e.typ, e.id)
		case r.Deleted:
			report("index entry %s=%s points at %s/%s, deleted (version %d)", e.param, e.value, e.typ, e.id, r.Version)
		case !hasTerm(r, e.param, e.value):
			report("index entry %s=%s points at %s/%s, whose current version %d has no such term", e.param, e.value, e.typ, e.id, r.Version)
		}
	}
	live := map[store.Key]bool{}
	for _, k := range raw.live {
		live[k] = true
		if r := get(k); r == nil || r.Deleted {
			report("live entry %s points at nothing live", k)
		}
	}
	liveCount := 0
	for _, k := range raw.current {
		r := get(k)
		if r == nil {
			continue
		}
		if r.Deleted {
			if live[k] {
				report("deleted %s is in the live set", k)
			}
			continue
		}
		liveCount++
		if !live[k] {
			report("live %s is not in the live set", k)
		}
		for _, tm := range r.Terms {
			if strings.ContainsRune(tm.Param+tm.Value, 0) {
				continue // not indexed (bbolt)
			}
			if !indexed[indexEntry{k.Type, tm.Param, tm.Value, k.ID}] {
				report("live %s is not indexed under its term %s", k, tm.Param)
			}
		}
	}
	t.Logf("checked the index and live set in %v", time.Since(start).Round(time.Millisecond))
	// The log.
	n, err := lg.LogSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int64{}
	for lo := int64(0); lo < n; lo += 1000 {
		leaves, err := lg.Leaves(ctx, lo, min(n, lo+1000))
		if err != nil {
			t.Fatal(err)
		}
		for i, data := range leaves {
			idx := lo + int64(i)
			leaf, err := anchor.ParseLeaf(data)
			if err != nil {
				report("leaf %d: %v", idx, err)
				continue
			}
			name := leaf.ResourceType + "/" + leaf.ID + "/_history/" + leaf.VersionID
			if prev, dup := seen[name]; dup {
				report("%s is in the log twice: leaves %d and %d", name, prev, idx)
				continue
			}
			seen[name] = idx
			v, _ := strconv.ParseInt(leaf.VersionID, 10, 64)
			rec, err := st.GetVersion(ctx, store.Key{Type: leaf.ResourceType, ID: leaf.ID}, v)
			switch {
			case errors.Is(err, store.ErrErased):
			case err != nil:
				report("leaf %d names %s: %v", idx, name, err)
			case rec.LeafIndex != idx || !bytes.Equal(rec.Leaf, data):
				report("leaf %d names %s, which is stored with leaf %d", idx, name, rec.LeafIndex)
			}
		}
	}
	if bad > 20 {
		t.Errorf("store: ... %d problems in all", bad)
	}
	t.Logf("store checked: %d index entries, %d live resources of %d, %d log leaves each naming a distinct stored version", len(raw.index), liveCount, len(raw.current), n)
}
