package store

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/redis/go-redis/v9"
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
	if err := s.subscribeWithResync(ctx, channel, w.wake, w.wakeAll); err != nil {
		return nil, err
	}
	return w, nil
}

// subscribeWithResync calls fn with every message published on channel
// until ctx ends. It returns once the subscription is confirmed, so
// nothing published after it is missed. go-redis re-subscribes after a
// lost connection; what was published in the gap is gone, so resync is
// called then, for the caller to look at the state again.
//
// After a failover (Sentinel) it subscribes again on the new primary,
// and resync is called then too: a demoted primary that stays up would
// keep the old subscription open, and silent.
func (s *Store) subscribeWithResync(ctx context.Context, channel string, fn func(payload string), resync func()) error {
	switched := s.PrimaryChanged()
	ps := s.rdb.Subscribe(ctx, channel)
	if _, err := ps.Receive(ctx); err != nil {
		ps.Close()
		return fmt.Errorf("store: subscribe to %s: %w", channel, err)
	}
	go func() {
		defer func() { ps.Close() }()
		ch := ps.ChannelWithSubscriptions()
		for {
			select {
			case <-ctx.Done():
				return
			case <-switched:
				// Closed aside: the old primary may be gone without a
				// word (a dead host's address), and closing a connection
				// blocked reading from it may wait as long.
				go func(old *redis.PubSub) { _ = old.Close() }(ps)
				switched = s.PrimaryChanged()
				ps = s.rdb.Subscribe(ctx, channel) // its "subscribe" confirmation calls resync
				ch = ps.ChannelWithSubscriptions()
			case m, ok := <-ch:
				if !ok {
					return
				}
				switch m := m.(type) {
				case *redis.Message:
					fn(m.Payload)
				case *redis.Subscription:
					if m.Kind == "subscribe" && resync != nil {
						slog.Warn("re-subscribed after a lost connection or a failover; waking all waiters", "channel", channel)
						resync()
					}
				}
			}
		}
	}()
	slog.Debug("subscribed", "channel", channel)
	return nil
}

// Register returns a channel closed when run id ends (or, rarely, when
// the subscription had a gap: callers look again and may wait on), and a
// function to call when no longer waiting. Register before reading the run's status,
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

// wakeAll wakes every waiter (after a gap in the subscription); each
// looks at its run again and waits on if it has not ended.
func (w *Waiter) wakeAll() {
	w.mu.Lock()
	all := w.waiting
	w.waiting = map[string][]chan struct{}{}
	w.mu.Unlock()
	for _, list := range all {
		for _, c := range list {
			close(c)
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
