package store

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
)

// Waiter lets many requests wait for run events over a single pub/sub
// subscription: each Register returns a channel that is closed when the
// run's id is next published on the waiter's channel (a run ended, or
// wrote output). No request sleep-polls.
type Waiter struct {
	mu      sync.Mutex
	waiting map[string][]chan struct{}
}

// NewWaiter subscribes to the done channel until ctx ends. It returns once
// the subscription is confirmed, so no completion after it is missed.
func (s *Store) NewWaiter(ctx context.Context) (*Waiter, error) {
	return s.newWaiter(ctx, s.DoneChannel())
}

// NewLogWaiter is a Waiter woken whenever a run writes more output.
func (s *Store) NewLogWaiter(ctx context.Context) (*Waiter, error) {
	return s.newWaiter(ctx, s.LogChannel())
}

func (s *Store) newWaiter(ctx context.Context, channel string) (*Waiter, error) {
	w := &Waiter{waiting: map[string][]chan struct{}{}}
	if err := s.subscribe(ctx, channel, w.wake); err != nil {
		return nil, err
	}
	return w, nil
}

// subscribe calls fn with every message published on channel until ctx
// ends. It returns once the subscription is confirmed, so nothing
// published after it is missed.
func (s *Store) subscribe(ctx context.Context, channel string, fn func(payload string)) error {
	ps := s.rdb.Subscribe(ctx, channel)
	if _, err := ps.Receive(ctx); err != nil {
		ps.Close()
		return fmt.Errorf("store: subscribe to %s: %w", channel, err)
	}
	go func() {
		defer ps.Close()
		ch := ps.Channel()
		for {
			select {
			case <-ctx.Done():
				return
			case m, ok := <-ch:
				if !ok {
					return
				}
				fn(m.Payload)
			}
		}
	}()
	slog.Debug("subscribed", "channel", channel)
	return nil
}

// Register returns a channel closed when run id ends, and a function to
// call when no longer waiting. Register before reading the run's status,
// so an end between the read and the wait is not lost.
func (w *Waiter) Register(id string) (<-chan struct{}, func()) {
	ch := make(chan struct{})
	w.mu.Lock()
	w.waiting[id] = append(w.waiting[id], ch)
	w.mu.Unlock()
	return ch, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		list := w.waiting[id]
		for i, c := range list {
			if c == ch {
				list = append(list[:i], list[i+1:]...)
				break
			}
		}
		if len(list) == 0 {
			delete(w.waiting, id)
		} else {
			w.waiting[id] = list
		}
	}
}

func (w *Waiter) wake(id string) {
	w.mu.Lock()
	list := w.waiting[id]
	delete(w.waiting, id)
	w.mu.Unlock()
	for _, c := range list {
		close(c)
	}
}
