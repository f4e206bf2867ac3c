package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/google/go-cmp/cmp"
)

// recv returns the next message on ch, or fails after a second.
func recv(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(time.Second):
		t.Fatal("no message within a second")
		return ""
	}
}

// subscribe subscribes to topic on b and returns the messages received.
func subscribe(t *testing.T, ctx context.Context, b store.Bus, topic string) <-chan string {
	t.Helper()
	ch := make(chan string, 16)
	if err := b.Subscribe(ctx, topic, func(msg []byte) { ch <- string(msg) }); err != nil {
		t.Fatal(err)
	}
	return ch
}

func TestLocalBus(t *testing.T) {
	ctx := t.Context()
	b := store.NewLocalBus()
	a1, a2 := subscribe(t, ctx, b, "a"), subscribe(t, ctx, b, "a")
	other := subscribe(t, ctx, b, "b")
	cctx, cancel := context.WithCancel(ctx)
	gone := subscribe(t, cctx, b, "a")

	msg := []byte("m1")
	if err := b.Publish(ctx, "a", msg); err != nil {
		t.Fatal(err)
	}
	msg[0] = 'x' // the bus keeps its own copy
	if got := recv(t, gone); got != "m1" {
		t.Errorf("subscriber to be cancelled got %q, want m1", got)
	}
	cancel()
	for _, m := range []string{"m2", "m3"} {
		if err := b.Publish(ctx, "a", []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	for i, ch := range []<-chan string{a1, a2} {
		got := []string{recv(t, ch), recv(t, ch), recv(t, ch)}
		if diff := cmp.Diff([]string{"m1", "m2", "m3"}, got); diff != "" {
			t.Errorf("subscriber %d (-want +got):\n%s", i, diff)
		}
	}
	if err := b.Publish(ctx, "b", []byte("b1")); err != nil {
		t.Fatal(err)
	}
	if got := recv(t, other); got != "b1" {
		t.Errorf("topic b got %q, want b1", got)
	}
	select {
	case m := <-gone:
		t.Errorf("cancelled subscriber got %q", m)
	case m := <-a1:
		t.Errorf("topic a got %q, published on b", m)
	default:
	}
}
