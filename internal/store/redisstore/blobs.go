package redisstore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/redis/go-redis/v9"
)

// Blob streams (store.Blobs); see the key layout in the package comment.
// A stream is staged while its hash has a TTL: every PutChunk sets it
// again to store.StagedTTL, so Redis removes a stream that is never kept
// by itself, and commit.lua PERSISTs the streams a Commit keeps.

var _ store.Blobs = (*Store)(nil)

func (s *Store) blobKey(stream string) string { return s.prefix + ":{blob}:" + stream }

// putChunkScript sets a chunk of a staged stream and its TTL, unless the
// stream was kept (it exists with no TTL): writing to it would stage it
// again, and so expire it. ARGV: chunk index, chunk, TTL in ms. Returns 1
// if set, 0 if the stream was kept.
var putChunkScript = redis.NewScript(`
if redis.call('PTTL', KEYS[1]) == -1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
`)

// errNotStaged is Commit's error for a Keep stream that is not staged.
var errNotStaged = fmt.Errorf("redisstore: commit: keep: stream not staged: %w", store.ErrNotFound)

// errKept is PutChunk's error for a stream a Commit kept.
var errKept = fmt.Errorf("redisstore: put chunk: stream already kept: %w", store.ErrConflict)

// checkChunk rejects what boltstore cannot store either, so that both
// backends accept the same streams: an empty stream id, one containing
// 0x00, an index outside 0..MaxUint32.
func checkChunk(op, stream string, i int) error {
	switch {
	case stream == "" || strings.IndexByte(stream, 0) >= 0:
		return fmt.Errorf("redisstore: %s: invalid stream id", op)
	case i < 0 || uint64(i) > math.MaxUint32:
		return fmt.Errorf("redisstore: %s: chunk index out of range", op)
	}
	return nil
}

// PutChunk implements store.Blobs, in one script: it stages stream if it
// is new and sets its TTL to store.StagedTTL; it fails with an error
// matching store.ErrConflict if a Commit kept the stream.
func (s *Store) PutChunk(ctx context.Context, stream string, i int, chunk []byte) error {
	if err := checkChunk("put chunk", stream, i); err != nil {
		return err
	}
	ok, err := putChunkScript.Run(ctx, s.rdb, []string{s.blobKey(stream)},
		i, chunk, store.StagedTTL.Milliseconds()).Bool()
	if err != nil {
		return fail("put chunk", err)
	}
	if !ok {
		return errKept
	}
	return nil
}

// GetChunk implements store.Blobs.
func (s *Store) GetChunk(ctx context.Context, stream string, i int) ([]byte, error) {
	if err := checkChunk("get chunk", stream, i); err != nil {
		return nil, err
	}
	b, err := s.rdb.HGet(ctx, s.blobKey(stream), strconv.Itoa(i)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fail("get chunk", err)
	}
	return b, nil
}

// DropStream implements store.Blobs, with UNLINK (Redis frees the chunks
// in the background).
func (s *Store) DropStream(ctx context.Context, stream string) error {
	if err := checkChunk("drop stream", stream, 0); err != nil {
		return err
	}
	return fail("drop stream", s.rdb.Unlink(ctx, s.blobKey(stream)).Err())
}
