package store

import (
	"bytes"
	"context"
	"sync"
)

// LocalBus is a Bus within one process, for the embedded store. Each
// subscription has its own goroutine calling fn, in publishing order;
// Publish never waits for a subscriber.
type LocalBus struct {
	mu   sync.Mutex
	subs map[string]map[*localSub]bool // topic -> subscriptions
}

var _ Bus = (*LocalBus)(nil)

// localSub is one subscription: messages queued for its goroutine.
type localSub struct {
	mu    sync.Mutex
	queue [][]byte
	wake  chan struct{} // capacity 1: the queue is not empty
}

// NewLocalBus returns an empty LocalBus.
func NewLocalBus() *LocalBus {
	return &LocalBus{subs: map[string]map[*localSub]bool{}}
}

// Publish implements Bus.
func (b *LocalBus) Publish(ctx context.Context, topic string, msg []byte) error {
	msg = bytes.Clone(msg)
	b.mu.Lock()
	defer b.mu.Unlock()
	for sub := range b.subs[topic] {
		sub.mu.Lock()
		sub.queue = append(sub.queue, msg)
		sub.mu.Unlock()
		select {
		case sub.wake <- struct{}{}:
		default:
		}
	}
	return nil
}

// Subscribe implements Bus. Messages published after ctx is done are not
// delivered.
func (b *LocalBus) Subscribe(ctx context.Context, topic string, fn func(msg []byte)) error {
	sub := &localSub{wake: make(chan struct{}, 1)}
	b.mu.Lock()
	if b.subs[topic] == nil {
		b.subs[topic] = map[*localSub]bool{}
	}
	b.subs[topic][sub] = true
	b.mu.Unlock()
	go func() {
		defer func() {
			b.mu.Lock()
			delete(b.subs[topic], sub)
			if len(b.subs[topic]) == 0 {
				delete(b.subs, topic)
			}
			b.mu.Unlock()
		}()
		for {
			select {
			case <-ctx.Done():
				return
			case <-sub.wake:
			}
			sub.mu.Lock()
			q := sub.queue
			sub.queue = nil
			sub.mu.Unlock()
			for _, msg := range q {
				if ctx.Err() != nil {
					return
				}
				fn(msg)
			}
		}
	}()
	return nil
}
