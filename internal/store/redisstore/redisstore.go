// Package redisstore is a store.Store on Redis (through go-redis's
// UniversalClient; the transparency log needs one primary, see below).
//
// Key layout, for resource type T (every key of a type shares the hash tag
// {T}, so a version, its history entry and its index entries are erased by
// one Lua script in one slot):
//
//	fg:{T}:r:<id>            hash: cur -> current version, t -> its terms, v:<n> -> version n;
//	                         once erased, only erased -> 1
//	fg:{T}:h                 zset: <id>/<n> scored by update time (ms): type history
//	fg:{T}:ids               set: live ids
//	fg:{T}:x:<param>:<value> set: ids whose current version has that exact term
//
// Key material is one hash, in a slot of its own:
//
//	fg:{keys}                hash: id -> value
//
// Cells are one hash each, in the slot {cells}:
//
//	fg:{cells}:<id>          hash: v -> version (decimal), d -> value
//
// Blob streams (store.Blobs) are one hash each, in the slot {blob}:
//
//	fg:{blob}:<stream>       hash: chunk index (decimal) -> chunk; staged
//	                         while it has a TTL (store.StagedTTL from its
//	                         last chunk), kept once a commit PERSISTs it
//
// The transparency log (anchor.Storage) is in the slot {log}:
//
//	fg:{log}:n               leaves committed (INCR in the commit script)
//	fg:{log}:l               hash: leaf index -> leaf data
//	fg:{log}:hs              hashed tree size
//	fg:{log}:sh:<k>          string: stored hashes k<<15 … as 32-byte runs
//	fg:{log}:a               zset: anchors scored by tree size
//	fg:{log}:lease:<name>    the anchoring lease's holder, with a TTL
//
// Put and Commit run one script (commit.lua) that writes the versions of
// any types, appends their leaves, sets cells and keeps blob streams, so
// it crosses slots: the store needs a standalone Redis (or one primary),
// not Redis Cluster.
//
// The Bus (Publish, Subscribe) uses Redis PUBLISH and SUBSCRIBE on the
// channel fg:bus:<topic>.
//
// The cost of one slot per type is that a type cannot be spread over
// Cluster nodes; see docs in README.
//
// When Redis is down, restarting or failing over, operations fail within
// a few seconds (the client limits in errors.go) with an error matching
// store.ErrUnavailable; the client reconnects by itself once Redis is
// back, and so does a Bus subscription.
package redisstore

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"strconv"
	"strings"

	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/redis/go-redis/v9"
)

//go:embed commit.lua
var commitLua string

var commitScript = redis.NewScript(commitLua)

//go:embed erase.lua
var eraseLua string

var eraseScript = redis.NewScript(eraseLua)

// getScript reads the current version number, its value and terms in one
// round trip; "erased" if the resource was erased.
var getScript = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], 'cur')
if not cur then
  if redis.call('HEXISTS', KEYS[1], 'erased') == 1 then return 'erased' end
  return false
end
return {cur, redis.call('HGET', KEYS[1], 'v:' .. cur), redis.call('HGET', KEYS[1], 't')}
`)

// putKeyScript sets a key-material field if it holds the expected value.
// ARGV: id, "1" if an old value is expected (else the id must not exist),
// old value, new value. Returns 1 if set, 0 on a mismatch.
var putKeyScript = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] == '1' then
  if cur ~= ARGV[3] then return 0 end
elseif cur then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
return 1
`)

// Config configures a Store.
type Config struct {
	// URL is a redis:// or rediss:// URL. Addrs, if set, are Cluster seed
	// nodes used instead.
	URL   string
	Addrs []string
	// Prefix namespaces every key (default "fg").
	Prefix string
	Logger *slog.Logger
}

// Store is a store.Store on Redis.
type Store struct {
	rdb    redis.UniversalClient
	prefix string
}

var _ store.Store = (*Store)(nil)

// New connects to Redis, checks it answers, and warns when append-only
// persistence is off (a crash would then lose acknowledged writes).
func New(ctx context.Context, cfg Config) (*Store, error) {
	opts := &redis.UniversalOptions{Addrs: cfg.Addrs}
	if cfg.URL != "" {
		o, err := redis.ParseURL(cfg.URL)
		if err != nil {
			return nil, fail("url", err)
		}
		opts = &redis.UniversalOptions{
			Addrs: []string{o.Addr}, Username: o.Username, Password: o.Password,
			DB: o.DB, TLSConfig: o.TLSConfig,
		}
	}
	options(opts)
	rdb := redis.NewUniversalClient(opts)
	s := &Store{rdb: rdb, prefix: cfg.Prefix}
	if s.prefix == "" {
		s.prefix = "fg"
	}
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fail("ping", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if aof, err := rdb.ConfigGet(ctx, "appendonly").Result(); err == nil && aof["appendonly"] != "yes" {
		log.WarnContext(ctx, "REDIS PERSISTENCE IS OFF: appendonly is not enabled, so a Redis crash loses acknowledged writes; set 'appendonly yes' (and appendfsync everysec or always)")
	}
	return s, nil
}

func (s *Store) tp(t string) string { return s.prefix + ":{" + t + "}:" }

func (s *Store) resKey(t, id string) string { return s.tp(t) + "r:" + id }

func (s *Store) keysKey() string { return s.prefix + ":{keys}" }

// current is what a write needs to know of a resource's current version.
type current struct {
	ver    string // "0": none
	terms  []store.Term
	erased bool
}

// curFields are the resource hash fields parseCur reads.
var curFields = []string{"cur", "t", "erased"}

// parseCur parses the values of curFields.
func parseCur(vals []any) (current, error) {
	c := current{ver: "0", erased: vals[2] != nil}
	if v, ok := vals[0].(string); ok {
		c.ver = v
		if t, ok := vals[1].(string); ok {
			var err error
			if c.terms, err = store.DecodeTerms([]byte(t)); err != nil {
				return c, err
			}
		}
	}
	return c, nil
}

// readCur reads a resource's current version.
func (s *Store) readCur(ctx context.Context, rk string) (current, error) {
	vals, err := s.rdb.HMGet(ctx, rk, curFields...).Result()
	if err != nil {
		return current{}, err
	}
	return parseCur(vals)
}

// termSpec lists terms as [param, value] pairs for a script.
func termSpec(ts []store.Term) [][2]string {
	out := [][2]string{}
	for _, t := range ts {
		out = append(out, [2]string{t.Param, t.Value})
	}
	return out
}

// Put implements store.Store: a Commit of one write.
func (s *Store) Put(ctx context.Context, r store.Record, opts store.PutOptions) error {
	return store.PutByCommit(ctx, s.Commit, r, opts)
}

// Commit implements store.Store. It reads the current version of every
// resource it writes (their terms are replaced), then runs commit.lua,
// which checks every condition again before it writes anything, and that
// every stream of c.Keep is staged (else the commit fails with
// store.ErrNotFound); it PERSISTs them with the writes.
func (s *Store) Commit(ctx context.Context, c store.Commit) error {
	if err := store.CheckCommit(c); err != nil {
		return err
	}
	curs := make([]current, len(c.Writes))
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(c.Writes))
	for i, w := range c.Writes {
		cmds[i] = pipe.HMGet(ctx, s.resKey(w.Type, w.ID), curFields...)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fail("read current", err)
	}
	for i, cmd := range cmds {
		var err error
		if curs[i], err = parseCur(cmd.Val()); err != nil {
			return err
		}
	}
	keys := make([]string, 2, 2+3*len(c.Writes)+len(c.Cells)+len(c.Keep))
	keys[0], keys[1] = s.logKey("n"), s.logKey("l")
	args := make([]any, 3, 3+10*len(c.Writes)+3*len(c.Cells))
	args[0], args[1], args[2] = len(c.Writes), store.LeafIndexOffset, len(c.Keep)
	for i, w := range c.Writes {
		cur := curs[i]
		switch {
		case cur.erased:
			return &store.WriteError{Index: i, Err: store.ErrErased}
		case cur.ver != strconv.FormatInt(w.Version-1, 10):
			return &store.WriteError{Index: i, Err: store.ErrConflict}
		}
		wargs, err := s.writeArgs(w, cur)
		if err != nil {
			return err
		}
		p := s.tp(w.Type)
		keys = append(keys, p+"r:"+w.ID, p+"h", p+"ids")
		args = append(args, wargs...)
	}
	for _, sc := range c.Cells {
		keys = append(keys, s.cellKey(sc.ID))
		args = append(args, sc.Version, sc.Version+1, sc.Value)
	}
	for _, stream := range c.Keep {
		keys = append(keys, s.blobKey(stream))
	}
	res, err := commitScript.Run(ctx, s.rdb, keys, args...).Slice()
	if err != nil {
		return fail("commit", err)
	}
	reason, _ := res[0].(string)
	switch reason {
	case "cell":
		return store.ErrCellChanged
	case "keep":
		return errNotStaged
	}
	if reason == "ok" {
		return nil
	}
	var i int64
	if len(res) > 1 {
		i, _ = res[1].(int64)
	}
	switch reason {
	case "conflict":
		return &store.WriteError{Index: int(i), Err: store.ErrConflict}
	case "exists":
		return &store.WriteError{Index: int(i), Err: store.ErrExists}
	case "erased":
		return &store.WriteError{Index: int(i), Err: store.ErrErased}
	}
	return fmt.Errorf("redisstore: commit: unexpected reply %v", res)
}

// writeArgs returns commit.lua's ten arguments for w, whose resource's
// current version is cur.
func (s *Store) writeArgs(w store.Write, cur current) ([]any, error) {
	terms := w.Terms
	if w.Deleted {
		terms = nil
	}
	spec := struct {
		Old         [][2]string   `json:"old"`
		New         [][2]string   `json:"new"`
		Guard       [][][2]string `json:"guard"`
		GuardPrefix string        `json:"gp,omitempty"`
	}{Old: termSpec(cur.terms), New: termSpec(terms)}
	if g := w.IfNoneMatch; g != nil {
		spec.Guard, spec.GuardPrefix = [][][2]string{}, s.tp(g.Type)
		for _, clause := range g.All {
			var c [][2]string
			for _, m := range clause {
				c = append(c, [2]string{m.Param, m.Value})
			}
			spec.Guard = append(spec.Guard, c)
		}
	}
	sj, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	deleted := "0"
	if w.Deleted {
		deleted = "1"
	}
	return []any{s.tp(w.Type), cur.ver, w.Version, store.EncodeVersion(w.Record, 0), store.EncodeTerms(terms),
		w.Updated.UnixMilli(), w.ID, deleted, sj, w.Leaf}, nil
}

func (s *Store) cellKey(id string) string { return s.prefix + ":{cells}:" + id }

// GetCell implements store.Store.
func (s *Store) GetCell(ctx context.Context, id string) (store.Cell, error) {
	c := store.Cell{ID: id}
	vals, err := s.rdb.HMGet(ctx, s.cellKey(id), "v", "d").Result()
	if err != nil {
		return c, fail("get cell", err)
	}
	v, ok := vals[0].(string)
	if !ok {
		return c, nil
	}
	if c.Version, err = strconv.ParseInt(v, 10, 64); err != nil {
		return c, fmt.Errorf("redisstore: get cell: corrupt version")
	}
	d, _ := vals[1].(string)
	c.Value = []byte(d)
	return c, nil
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, k store.Key) (store.Record, error) {
	rec := store.Record{Type: k.Type, ID: k.ID}
	reply, err := getScript.Run(ctx, s.rdb, []string{s.resKey(k.Type, k.ID)}).Result()
	if errors.Is(err, redis.Nil) {
		return rec, store.ErrNotFound
	}
	if err != nil {
		return rec, fail("get", err)
	}
	if reply == "erased" {
		return rec, store.ErrErased
	}
	res, _ := reply.([]any)
	if len(res) < 2 {
		return rec, fmt.Errorf("redisstore: get: unexpected reply")
	}
	cur, _ := res[0].(string)
	val, _ := res[1].(string)
	if rec.Version, err = strconv.ParseInt(cur, 10, 64); err != nil {
		return rec, fmt.Errorf("redisstore: get: corrupt version")
	}
	if err := store.DecodeVersion([]byte(val), &rec); err != nil {
		return rec, err
	}
	if len(res) > 2 {
		if t, ok := res[2].(string); ok {
			rec.Terms, err = store.DecodeTerms([]byte(t))
		}
	}
	return rec, err
}

// GetVersion implements store.Store.
func (s *Store) GetVersion(ctx context.Context, k store.Key, v int64) (store.Record, error) {
	rec := store.Record{Type: k.Type, ID: k.ID, Version: v}
	vals, err := s.rdb.HMGet(ctx, s.resKey(k.Type, k.ID), "v:"+strconv.FormatInt(v, 10), "erased").Result()
	if err != nil {
		return rec, fail("get version", err)
	}
	b, ok := vals[0].(string)
	switch {
	case vals[1] != nil:
		return rec, store.ErrErased
	case !ok:
		return rec, store.ErrNotFound
	}
	return rec, store.DecodeVersion([]byte(b), &rec)
}

// History implements store.Store.
func (s *Store) History(ctx context.Context, q store.HistoryQuery) ([]store.Record, int, error) {
	if q.ID != "" {
		rec, err := s.Get(ctx, store.Key{Type: q.Type, ID: q.ID})
		if err != nil {
			return nil, 0, err
		}
		var out []store.Record
		total := 0
		for v := rec.Version; v >= 1; v-- {
			r, err := s.GetVersion(ctx, rec.Key(), v)
			if err != nil {
				return nil, 0, err
			}
			if r.Updated.Before(q.Since) {
				break
			}
			total++
			if total > q.Offset && (q.Count == 0 || len(out) < q.Count) {
				out = append(out, r)
			}
		}
		return out, total, nil
	}
	hk := s.tp(q.Type) + "h"
	min := "-inf"
	if !q.Since.IsZero() {
		min = strconv.FormatInt(q.Since.UnixMilli(), 10)
	}
	total, err := s.rdb.ZCount(ctx, hk, min, "+inf").Result()
	if err != nil {
		return nil, 0, fail("history", err)
	}
	count := int64(q.Count)
	if count == 0 {
		count = math.MaxInt32
	}
	members, err := s.rdb.ZRevRangeByScore(ctx, hk, &redis.ZRangeBy{Min: min, Max: "+inf", Offset: int64(q.Offset), Count: count}).Result()
	if err != nil {
		return nil, 0, fail("history", err)
	}
	out := make([]store.Record, 0, len(members))
	for _, m := range members {
		i := strings.LastIndexByte(m, '/')
		v, _ := strconv.ParseInt(m[i+1:], 10, 64)
		r, err := s.GetVersion(ctx, store.Key{Type: q.Type, ID: m[:i]}, v)
		if errors.Is(err, store.ErrErased) {
			// Erased since the range was read.
			total--
			continue
		}
		if err != nil {
			return nil, 0, err
		}
		if r.Updated.Before(q.Since) {
			total--
			continue
		}
		out = append(out, r)
	}
	// Versions updated within the same millisecond: order newest first.
	sort.SliceStable(out, func(i, j int) bool { return out[i].Updated.After(out[j].Updated) })
	return out, int(total), nil
}

// Search implements store.Store.
func (s *Store) Search(ctx context.Context, q store.Query) ([]string, error) {
	p := s.tp(q.Type)
	if len(q.All) == 0 {
		ids, err := s.rdb.SMembers(ctx, p+"ids").Result()
		if err != nil {
			return nil, fail("search", err)
		}
		sort.Strings(ids)
		return ids, nil
	}
	pipe := s.rdb.Pipeline()
	type pending struct {
		clause int
		set    *redis.StringSliceCmd
	}
	var cmds []pending
	for ci, clause := range q.All {
		for _, m := range clause {
			cmds = append(cmds, pending{ci, pipe.SMembers(ctx, p+"x:"+m.Param+":"+m.Value)})
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fail("search", err)
	}
	sets := make([]map[string]bool, len(q.All))
	for i := range sets {
		sets[i] = map[string]bool{}
	}
	for _, c := range cmds {
		for _, v := range c.set.Val() {
			sets[c.clause][v] = true
		}
	}
	ids := store.Intersect(sets)
	sort.Strings(ids)
	return ids, nil
}

// Erase implements store.Store, in one script. The script removes the
// index entries of the terms read here, so it retries if the resource
// changed in between.
func (s *Store) Erase(ctx context.Context, k store.Key) error {
	rk := s.resKey(k.Type, k.ID)
	for {
		cur, err := s.readCur(ctx, rk)
		if err != nil {
			return fail("erase", err)
		}
		tj, err := json.Marshal(termSpec(cur.terms))
		if err != nil {
			return err
		}
		res, err := eraseScript.Run(ctx, s.rdb,
			[]string{rk, s.tp(k.Type) + "h", s.tp(k.Type) + "ids"},
			s.tp(k.Type), k.ID, cur.ver, tj,
		).Text()
		if err != nil {
			return fail("erase", err)
		}
		if res != "conflict" {
			return nil
		}
	}
}

// GetKey implements store.Store.
func (s *Store) GetKey(ctx context.Context, id string) ([]byte, error) {
	b, err := s.rdb.HGet(ctx, s.keysKey(), id).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fail("get key", err)
	}
	return b, nil
}

// PutKey implements store.Store.
func (s *Store) PutKey(ctx context.Context, id string, old, val []byte) error {
	hasOld := "0"
	if old != nil {
		hasOld = "1"
	}
	ok, err := putKeyScript.Run(ctx, s.rdb, []string{s.keysKey()}, id, hasOld, old, val).Bool()
	if err != nil {
		return fail("put key", err)
	}
	if !ok {
		return store.ErrConflict
	}
	return nil
}

// ScanKeys implements store.Store, with HSCAN.
func (s *Store) ScanKeys(ctx context.Context, fn func(id string, val []byte) error) error {
	var cursor uint64
	for {
		kv, next, err := s.rdb.HScan(ctx, s.keysKey(), cursor, "", 256).Result()
		if err != nil {
			return fail("scan keys", err)
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if err := fn(kv[i], []byte(kv[i+1])); err != nil {
				return err
			}
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}

// Ping implements store.Store.
func (s *Store) Ping(ctx context.Context) error { return fail("ping", s.rdb.Ping(ctx).Err()) }

// Close implements store.Store.
func (s *Store) Close() error { return s.rdb.Close() }

// Client returns the underlying client (for tests and operational tools).
func (s *Store) Client() redis.UniversalClient { return s.rdb }
