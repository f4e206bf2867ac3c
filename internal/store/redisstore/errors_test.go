package redisstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/redis/go-redis/v9"
)

func TestFailClassifies(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, true},
		{&net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}, true},
		{io.EOF, true},
		{fmt.Errorf("x: %w", io.ErrUnexpectedEOF), true},
		{redis.ErrPoolTimeout, true},
		{redis.ErrClosed, true},
		{redis.Nil, false},
		{context.Canceled, false},
		{errors.New("ERR Error running script: oops"), false},
		{errors.New("WRONGTYPE Operation against a key holding the wrong kind of value"), false},
	} {
		err := fail("op", c.err)
		if got := errors.Is(err, store.ErrUnavailable); got != c.want {
			t.Errorf("fail(%v): unavailable = %v, want %v", c.err, got, c.want)
		}
		if !errors.Is(err, c.err) {
			t.Errorf("fail(%v) = %v: the cause is lost", c.err, err)
		}
	}
	if fail("op", nil) != nil {
		t.Error("fail(nil) is not nil")
	}
}
