package store_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ztrade/pyrunner/pkg/backoff"
	"github.com/ztrade/pyrunner/pkg/redistest"
	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/store"
)

// TestDurability: a Redis that keeps nothing on disk, or may evict keys,
// is reported with a warning per risk; with the append-only file synced
// every second and noeviction it is durable.
func TestDurability(t *testing.T) {
	b := setup(t)
	d, err := b.store.Durability(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d.Persistence != "none" || d.Durable() || len(d.ServerID) != 40 {
		t.Errorf("redis without persistence: %+v", d)
	}
	b.srv.CLI(t, "config", "set", "maxmemory-policy", "allkeys-lru")
	if d, _ := b.store.Durability(b.ctx); len(d.Warnings) != 2 || !strings.Contains(d.Warnings[1], "allkeys-lru") {
		t.Errorf("an evicting redis without persistence: %q", d.Warnings)
	}
	if err := b.store.CheckDurable(b.ctx, true); err == nil || !strings.Contains(err.Error(), "PYRUNNER_REQUIRE_DURABLE_REDIS") {
		t.Errorf("CheckDurable(require) on a redis that is not durable: %v", err)
	}
	b.srv.CLI(t, "config", "set", "maxmemory-policy", "noeviction")
	b.srv.CLI(t, "config", "set", "appendonly", "yes")
	d, _ = b.store.Durability(b.ctx)
	if d.Persistence != "aof-everysec" || d.Eviction != "noeviction" || !d.Durable() {
		t.Errorf("redis with the append-only file: %+v", d)
	}
	if err := b.store.CheckDurable(b.ctx, true); err != nil {
		t.Errorf("CheckDurable(require) on a durable redis: %v", err)
	}
}

// TestRecoveryWindow: right after a Redis start, a script that might
// already run (its record lost) can be neither started without
// duplicate:true nor claimed, until the window is over; research runs and
// duplicates are not held up.
func TestRecoveryWindow(t *testing.T) {
	b := setup(t)
	b.store.SetRecoveryWindow(time.Hour) // this redis has been up for less
	script := func(id string) *run.Run {
		return &run.Run{ID: id, Kind: run.KindScript, Status: run.StatusQueued, Script: "bot.py", CreatedAt: time.Now()}
	}
	ctx, cancel := context.WithTimeout(b.ctx, 300*time.Millisecond)
	defer cancel()
	if err := b.store.CreateScriptRun(ctx, script(ids[0]), false); run.ErrorCode(err) != run.ECodeUnavailable {
		t.Errorf("a start in the window: %v, want unavailable", err)
	}
	if err := b.store.CreateScriptRun(b.ctx, script(ids[1]), true); err != nil {
		t.Errorf("a duplicate:true start in the window: %v", err)
	}
	ctx2, cancel2 := context.WithTimeout(b.ctx, 300*time.Millisecond)
	defer cancel2()
	if r, err := b.store.Claim(ctx2, ids[1], "w1", time.Now()); r != nil || run.ErrorCode(err) != run.ECodeUnavailable {
		t.Errorf("a script claimed in the window: %v %v", r, err)
	}
	if held, _ := b.store.HeldRuns(b.ctx, "w1"); len(held) != 0 {
		t.Errorf("a claim refused in the window left a hold: %v", held)
	}
	b.queued(t, ids[2])
	if r, err := b.store.Claim(b.ctx, ids[2], "w1", time.Now()); r == nil || err != nil {
		t.Errorf("a research run claimed in the window: %v %v", r, err)
	}
	b.store.SetRecoveryWindow(0)
	if r, err := b.store.Claim(b.ctx, ids[1], "w1", time.Now()); r == nil || err != nil {
		t.Errorf("a script claimed after the window: %v %v", r, err)
	}
}

// TestIsUnavailable: a Redis that is down is unavailable (worth a retry,
// a 503); a command Redis refused is not. Retry gives up at once on a
// refused write, also on one Redis refuses by closing the connection
// (over proto-max-bulk-len), and retries through an outage, also a write
// that could not connect while PING answers (a failover).
func TestIsUnavailable(t *testing.T) {
	srv := redistest.Start(t)
	st := srv.Store(t)
	ctx := context.Background()
	srv.CLI(t, "set", "pyrunner:run:x", "a string")
	_, err := st.GetRun(ctx, "x") // HGETALL on a string: WRONGTYPE
	if err == nil || store.IsUnavailable(err) {
		t.Errorf("a command redis refuses: %v, unavailable %v", err, store.IsUnavailable(err))
	}
	srv.CLI(t, "config", "set", "proto-max-bulk-len", "1mb")
	policy := backoff.Policy{First: 50 * time.Millisecond, Max: 200 * time.Millisecond, Tries: 4, What: "test write"}
	began := time.Now()
	err = st.Retry(ctx, policy, func() error { return st.SetResult(ctx, "x", make([]byte, 2<<20)) })
	if err == nil || time.Since(began) > 3*time.Second {
		t.Errorf("a write redis refuses by closing the connection: %v after %s", err, time.Since(began))
	}
	// A write whose connection could not be made (a dial to a primary the
	// sentinels no longer name) is retried even while PING answers.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := l.Addr().String()
	l.Close()
	tries := 0
	err = st.Retry(ctx, policy, func() error {
		if tries++; tries < 3 {
			c, err := net.Dial("tcp", gone)
			if err == nil {
				c.Close()
				return nil
			}
			return fmt.Errorf("store: finish run x: %w", err)
		}
		return st.SetResult(ctx, "x", []byte(`{"ok":true}`))
	})
	if err != nil || tries != 3 {
		t.Errorf("a write whose dial failed twice while redis answers PING: %d tries, %v", tries, err)
	}
	srv.Stop(t)
	if err := st.Ping(ctx); !store.IsUnavailable(err) {
		t.Errorf("redis down: %v is not unavailable", err)
	}
	tries = 0
	err = st.Retry(ctx, policy, func() error { tries++; return st.Ping(ctx) })
	if err == nil || tries != 4 {
		t.Errorf("a write while redis is down: %d tries, %v", tries, err)
	}
}
