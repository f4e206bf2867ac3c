package redisstore

import (
	"context"

	"github.com/fhirgate/fhirgate/internal/store"
)

// The Bus is Redis PUBLISH/SUBSCRIBE on the channel <prefix>:bus:<topic>.

var _ store.Bus = (*Store)(nil)

func (s *Store) busChannel(topic string) string { return s.prefix + ":bus:" + topic }

// Publish implements store.Bus.
func (s *Store) Publish(ctx context.Context, topic string, msg []byte) error {
	if err := s.rdb.Publish(ctx, s.busChannel(topic), msg).Err(); err != nil {
		return fail("publish", err)
	}
	return nil
}

// Subscribe implements store.Bus. It returns once Redis has confirmed the
// subscription; fn is called from one goroutine, which ends when ctx is
// done.
func (s *Store) Subscribe(ctx context.Context, topic string, fn func(msg []byte)) error {
	ps := s.rdb.Subscribe(ctx, s.busChannel(topic))
	if _, err := ps.Receive(ctx); err != nil {
		ps.Close()
		return fail("subscribe", err)
	}
	ch := ps.Channel()
	go func() {
		defer ps.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case m, ok := <-ch:
				if !ok {
					return
				}
				fn([]byte(m.Payload))
			}
		}
	}()
	return nil
}
