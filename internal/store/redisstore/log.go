package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/fhirgate/fhirgate/anchor"
	"github.com/redis/go-redis/v9"
)

// The transparency log (anchor.Storage); see the key layout in the
// package comment.

var _ anchor.Storage = (*Store)(nil)

// hashChunk is how many 32-byte stored hashes one string key holds.
const hashChunkBits = 15

func (s *Store) logKey(k string) string { return s.prefix + ":{log}:" + k }

func (s *Store) counter(ctx context.Context, k string) (int64, error) {
	n, err := s.rdb.Get(ctx, s.logKey(k)).Int64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fail("log", err)
	}
	return n, nil
}

// LogSize implements anchor.Storage.
func (s *Store) LogSize(ctx context.Context) (int64, error) { return s.counter(ctx, "n") }

// HashedSize implements anchor.Storage.
func (s *Store) HashedSize(ctx context.Context) (int64, error) { return s.counter(ctx, "hs") }

// Leaves implements anchor.Storage.
func (s *Store) Leaves(ctx context.Context, from, to int64) ([][]byte, error) {
	out := make([][]byte, 0, max(0, to-from))
	const page = 1000
	for lo := from; lo < to; lo += page {
		fields := make([]string, 0, page)
		for i := lo; i < min(to, lo+page); i++ {
			fields = append(fields, strconv.FormatInt(i, 10))
		}
		vals, err := s.rdb.HMGet(ctx, s.logKey("l"), fields...).Result()
		if err != nil {
			return nil, fail("leaves", err)
		}
		for i, v := range vals {
			str, ok := v.(string)
			if !ok {
				return nil, fmt.Errorf("redisstore: leaf %s missing", fields[i])
			}
			out = append(out, []byte(str))
		}
	}
	return out, nil
}

func (s *Store) hashKey(idx int64) (string, int64) {
	return s.logKey("sh:" + strconv.FormatInt(idx>>hashChunkBits, 10)), (idx & (1<<hashChunkBits - 1)) * 32
}

// ReadHashes implements anchor.Storage, in one pipeline.
func (s *Store) ReadHashes(ctx context.Context, indexes []int64) ([][32]byte, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(indexes))
	for i, x := range indexes {
		k, off := s.hashKey(x)
		cmds[i] = pipe.GetRange(ctx, k, off, off+31)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fail("read hashes", err)
	}
	out := make([][32]byte, len(indexes))
	for i, c := range cmds {
		if len(c.Val()) != 32 {
			return nil, fmt.Errorf("redisstore: stored hash %d missing", indexes[i])
		}
		copy(out[i][:], c.Val())
	}
	return out, nil
}

// raiseScript sets KEYS[1] to ARGV[1] if that is larger.
var raiseScript = redis.NewScript(`
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
`)

// WriteHashes implements anchor.Storage: the hashes (contiguous runs per
// chunk key, with SETRANGE) and then the size, in one MULTI.
func (s *Store) WriteHashes(ctx context.Context, start int64, hashes [][32]byte, size int64) error {
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for i := 0; i < len(hashes); {
			k, off := s.hashKey(start + int64(i))
			var run []byte
			for ; i < len(hashes); i++ {
				if k2, _ := s.hashKey(start + int64(i)); k2 != k {
					break
				}
				run = append(run, hashes[i][:]...)
			}
			p.SetRange(ctx, k, off, string(run))
		}
		raiseScript.Eval(ctx, p, []string{s.logKey("hs")}, size)
		return nil
	})
	if err != nil {
		return fail("write hashes", err)
	}
	return nil
}

// PutAnchor implements anchor.Storage, replacing an anchor recorded for
// the same tree size.
func (s *Store) PutAnchor(ctx context.Context, treeSize int64, val []byte) error {
	score := strconv.FormatInt(treeSize, 10)
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.ZRemRangeByScore(ctx, s.logKey("a"), score, score)
		p.ZAdd(ctx, s.logKey("a"), redis.Z{Score: float64(treeSize), Member: string(val)})
		return nil
	})
	if err != nil {
		return fail("put anchor", err)
	}
	return nil
}

func (s *Store) anchorIn(ctx context.Context, min, max string, rev bool) (int64, []byte, error) {
	by := &redis.ZRangeBy{Min: min, Max: max, Count: 1}
	var zs []redis.Z
	var err error
	if rev {
		zs, err = s.rdb.ZRevRangeByScoreWithScores(ctx, s.logKey("a"), by).Result()
	} else {
		zs, err = s.rdb.ZRangeByScoreWithScores(ctx, s.logKey("a"), by).Result()
	}
	if err != nil {
		return 0, nil, fail("anchor", err)
	}
	if len(zs) == 0 {
		return 0, nil, anchor.ErrNoAnchor
	}
	m, _ := zs[0].Member.(string)
	return int64(zs[0].Score), []byte(m), nil
}

// AnchorAfter implements anchor.Storage.
func (s *Store) AnchorAfter(ctx context.Context, n int64) (int64, []byte, error) {
	return s.anchorIn(ctx, "("+strconv.FormatInt(n, 10), "+inf", false)
}

// LatestAnchor implements anchor.Storage.
func (s *Store) LatestAnchor(ctx context.Context) (int64, []byte, error) {
	return s.anchorIn(ctx, "-inf", "+inf", true)
}

// leaseScript takes or renews KEYS[1] for ARGV[1] for ARGV[2] ms.
var leaseScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
`)

// Lease implements anchor.Storage.
func (s *Store) Lease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error) {
	ok, err := leaseScript.Run(ctx, s.rdb, []string{s.logKey("lease:" + name)}, holder, ttl.Milliseconds()).Bool()
	if err != nil {
		return false, fail("lease", err)
	}
	return ok, nil
}
