package redisstore

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/redis/go-redis/v9"
)

// Client limits. A Redis that is down answers nothing: a command then
// fails within a few seconds, as store.ErrUnavailable (the gateway answers
// 503 and Retry-After), instead of holding the request. Down (refused
// connections) is found at once; hung (a stopped process, a partition)
// after ioTimeout.
const (
	// dialTimeout bounds one connection attempt; dialAttempts are made
	// per connection.
	dialTimeout  = time.Second
	dialAttempts = 2
	// ioTimeout bounds writing a command and reading its reply. The
	// largest commit script (a 1000-entry transaction) takes tens of
	// milliseconds.
	ioTimeout = 2 * time.Second
	// poolTimeout bounds the wait for a free connection when all
	// poolSize are busy.
	poolTimeout = 2 * time.Second
	poolSize    = 64
	// noRetries: a failed command is not sent again. Retrying would
	// double the wait on a hung Redis, and a commit script whose reply
	// was lost would answer a conflict the second time. A connection
	// Redis closed since its last use (a restart) is found when it is
	// taken from the pool, before a command is sent on it.
	noRetries = -1
)

// options sets the client limits on o.
func options(o *redis.UniversalOptions) {
	o.PoolSize = poolSize
	o.PoolTimeout = poolTimeout
	o.DialTimeout = dialTimeout
	o.DialerRetries = dialAttempts
	o.ReadTimeout = ioTimeout
	o.WriteTimeout = ioTimeout
	o.MaxRetries = noRetries
}

// fail wraps err, which operation op got from Redis, with the operation's
// name, and with store.ErrUnavailable when Redis could not be reached or
// cannot serve now. A nil err stays nil.
func fail(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case unavailable(err):
		return fmt.Errorf("redisstore: %s: %w: %w", op, store.ErrUnavailable, err)
	}
	return fmt.Errorf("redisstore: %s: %w", op, err)
}

// unavailable reports whether err says Redis is unreachable or cannot
// serve now: a dial refused or timed out, a connection reset or closed
// (EOF), an i/o timeout, no free connection in the pool, or a reply such
// as LOADING (restarting: replaying its append-only file), READONLY (a
// replica, during a failover), CLUSTERDOWN, TRYAGAIN, MASTERDOWN or
// "max number of clients reached". Errors Redis answered about the
// command itself (a script error, a wrong type) are not.
func unavailable(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) {
		return false
	}
	var ne net.Error
	switch {
	case errors.As(err, &ne),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE), errors.Is(err, os.ErrDeadlineExceeded),
		errors.Is(err, redis.ErrPoolTimeout), errors.Is(err, redis.ErrClosed):
		return true
	case redis.IsLoadingError(err), redis.IsReadOnlyError(err), redis.IsClusterDownError(err),
		redis.IsTryAgainError(err), redis.IsMasterDownError(err), redis.IsMaxClientsError(err):
		return true
	}
	// A script that runs too long blocks every client until it ends.
	return strings.HasPrefix(err.Error(), "BUSY ")
}
