package queue_test

import (
	"context"
	"testing"
	"time"

	"github.com/ztrade/pyrunner/pkg/queue"
	"github.com/ztrade/pyrunner/pkg/redistest"
	"github.com/ztrade/pyrunner/pkg/store"
)

// TestEnqueueServeDrop: a run is queued once (its id is the task id), a
// server hands it to the queue's handler, and a dropped task is gone.
func TestEnqueueServeDrop(t *testing.T) {
	srv := redistest.Start(t)
	rds, err := store.ParseRedisURL(srv.URL(0))
	if err != nil {
		t.Fatal(err)
	}
	c := queue.NewClient(rds)
	defer c.Close()
	ctx := context.Background()
	if err := c.Enqueue(ctx, queue.QueueScripts, "run-1", 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Enqueue(ctx, queue.QueueScripts, "run-1", 0); err == nil {
		t.Error("the same run was queued twice")
	}
	if err := c.Enqueue(ctx, "nope", "run-x", 0); err == nil {
		t.Error("an unknown queue was accepted")
	}
	if err := c.Enqueue(ctx, queue.QueueScripts, "run-2", 0); err != nil {
		t.Fatal(err)
	}
	if got := c.Sizes(queue.QueueScripts)[queue.QueueScripts].Pending; got != 2 {
		t.Errorf("pending %d, want 2", got)
	}
	c.Drop(queue.QueueScripts, "run-2")
	if got := c.Sizes(queue.QueueScripts)[queue.QueueScripts].Pending; got != 1 {
		t.Errorf("pending after drop %d, want 1", got)
	}
	got := make(chan string, 2)
	s, err := queue.Start(queue.ServerConfig{Redis: rds, Concurrency: map[string]int{queue.QueueScripts: 1},
		CheckInterval: 50 * time.Millisecond, ShutdownTimeout: time.Second,
		Handlers: map[string]queue.Handler{queue.TypeScript: func(ctx context.Context, id string) error { got <- id; return nil }}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	select {
	case id := <-got:
		if id != "run-1" {
			t.Errorf("handler got %q", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the handler was not called")
	}
	select {
	case id := <-got:
		t.Errorf("the dropped run %q was delivered", id)
	case <-time.After(300 * time.Millisecond):
	}
}
