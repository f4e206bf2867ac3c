package evm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"syscall"
	"testing"

	"github.com/ethereum/go-ethereum/rpc"
)

// rpcError is a JSON-RPC error answer, like the node's "nonce too low".
type rpcError struct{}

func (rpcError) Error() string  { return "nonce too low" }
func (rpcError) ErrorCode() int { return -32000 }

func TestTransient(t *testing.T) {
	for _, test := range []struct {
		name string
		err  error
		want bool
	}{
		{"http 503", rpc.HTTPError{StatusCode: 503}, true},
		{"http 429", rpc.HTTPError{StatusCode: 429}, true},
		{"http 400", rpc.HTTPError{StatusCode: 400}, false},
		{"rpc error", fmt.Errorf("send: %w", rpcError{}), false},
		{"dial", &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, true},
		{"reset", fmt.Errorf("post: %w", syscall.ECONNRESET), true},
		{"eof", io.ErrUnexpectedEOF, true},
		{"canceled", context.Canceled, false},
		{"other", errors.New("boom"), false},
	} {
		t.Run(test.name, func(t *testing.T) {
			if got := transient(test.err); got != test.want {
				t.Errorf("transient(%v) = %v, want %v", test.err, got, test.want)
			}
		})
	}
}

func TestRetryStopsOnPermanentError(t *testing.T) {
	calls := 0
	_, err := retry(t.Context(), slog.New(slog.DiscardHandler), "op", func(context.Context) (int, error) {
		calls++
		if calls == 1 {
			return 0, io.EOF
		}
		return 0, rpcError{}
	})
	if calls != 2 || !errors.As(err, new(rpcError)) {
		t.Errorf("retry: %d calls, error %v; want 2 calls and the rpc error", calls, err)
	}
}
