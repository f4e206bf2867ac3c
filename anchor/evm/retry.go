package evm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/ethereum/go-ethereum/rpc"
)

// Retry bounds for transient RPC errors: 6 attempts, 100ms doubling to 3s.
const (
	retryAttempts = 6
	retryFirst    = 100 * time.Millisecond
	retryMax      = 3 * time.Second
)

// retry calls fn until it succeeds, fails with a non-transient error, ctx
// ends or retryAttempts are spent, backing off exponentially in between.
// Errors are wrapped with op.
func retry[T any](ctx context.Context, log *slog.Logger, op string, fn func(context.Context) (T, error)) (T, error) {
	delay := retryFirst
	for attempt := 1; ; attempt++ {
		v, err := fn(ctx)
		if err == nil {
			return v, nil
		}
		if ctx.Err() != nil || !transient(err) || attempt == retryAttempts {
			return v, fmt.Errorf("evm: %s: %w", op, err)
		}
		log.WarnContext(ctx, "evm: transient rpc error, retrying",
			slog.String("op", op), slog.Int("attempt", attempt), slog.Any("error", err))
		if err := sleep(ctx, delay); err != nil {
			return v, fmt.Errorf("evm: %s: %w", op, err)
		}
		delay = min(2*delay, retryMax)
	}
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// transient reports whether err is a transport failure worth retrying: the
// node was unreachable, the connection broke, or it answered 429 or 5xx.
// Errors the node returned as JSON-RPC errors are not transient.
func transient(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var httpErr rpc.HTTPError
	if errors.As(err, &httpErr) {
		return httpErr.StatusCode == http.StatusTooManyRequests || httpErr.StatusCode >= 500
	}
	var rpcErr rpc.Error
	if errors.As(err, &rpcErr) {
		return false
	}
	var netErr net.Error
	return errors.As(err, &netErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)
}
