package store_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztrade/pyrunner/pkg/liveness"
	"github.com/ztrade/pyrunner/pkg/queue"
	"github.com/ztrade/pyrunner/pkg/redistest"
	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/store"
)

// testBundle is a private redis-server and a store on it (asynq's
// internal/rdb tests the same way: against a real Redis).
type testBundle struct {
	srv   *redistest.Server
	store *store.Store
	ctx   context.Context
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	srv := redistest.Start(t)
	return &testBundle{srv: srv, store: srv.Store(t), ctx: context.Background()}
}

var ids = func() []string {
	var out []string
	for i := 0; i < 10; i++ {
		out = append(out, fmt.Sprintf("00000000-0000-4000-8000-%012d", i))
	}
	return out
}()

func (b *testBundle) queued(t *testing.T, id string) {
	t.Helper()
	if err := b.store.CreateRun(b.ctx, &run.Run{ID: id, Kind: run.KindResearch, Status: run.StatusQueued, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
}

func (b *testBundle) status(t *testing.T, id string) run.Status {
	t.Helper()
	r, err := b.store.GetRun(b.ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return r.Status
}

// TestKeys: every key is under the prefix, run-scoped keys start with the
// run's own key, and no two builders collide.
func TestKeys(t *testing.T) {
	b := setup(t)
	s, id := b.store, ids[0]
	runScoped := []string{s.RunKey(id), s.ResultKey(id), s.LogKey(id, "stdout"), s.LogKey(id, "stderr"), s.LogTotalKey(id, "stdout")}
	all := append(slices.Clone(runScoped), s.RunsKey(), s.DoneChannel(), s.WorkersKey(), s.WorkerKey("w"), s.WorkerRunsKey("w"),
		s.CancelChannel(), s.WakeKey("research"), s.WakeKey("scripts"), s.ActiveKey(), s.LogChannel())
	seen := map[string]bool{}
	for _, k := range all {
		if !strings.HasPrefix(k, "pyrunner:") || seen[k] {
			t.Errorf("key %q: outside the prefix or built twice", k)
		}
		seen[k] = true
	}
	for _, k := range runScoped {
		if !strings.HasPrefix(k, s.RunKey(id)) {
			t.Errorf("run-scoped key %q does not start with %q", k, s.RunKey(id))
		}
	}
	if store.AsynqPendingKey("research") != "asynq:{research}:pending" {
		t.Errorf("asynq's pending key: %q", store.AsynqPendingKey("research"))
	}
}

// TestClaim (claimScript): of many workers claiming one queued run, one
// wins; a run asked to stop, or no longer queued, is not claimed.
func TestClaim(t *testing.T) {
	b := setup(t)
	b.queued(t, ids[0])
	var wins sync.Map
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(w string) {
			defer wg.Done()
			if r, err := b.store.Claim(b.ctx, ids[0], w, time.Now()); err == nil && r != nil {
				wins.Store(w, true)
			}
		}(fmt.Sprintf("w%d", i))
	}
	wg.Wait()
	n, winner := 0, ""
	wins.Range(func(w, _ any) bool { n, winner = n+1, w.(string); return true })
	if n != 1 || b.status(t, ids[0]) != run.StatusStarting {
		t.Fatalf("%d claims won, status %s", n, b.status(t, ids[0]))
	}
	// The winner holds the run, and only it; the winner's own second try
	// (its other path) loses and leaves the hold in place.
	if r, _ := b.store.Claim(b.ctx, ids[0], winner, time.Now()); r != nil {
		t.Error("a run already claimed was claimed again")
	}
	for i := 0; i < 20; i++ {
		w := fmt.Sprintf("w%d", i)
		held, err := b.store.HeldRuns(b.ctx, w)
		if want := w == winner; err != nil || slices.Contains(held, ids[0]) != want {
			t.Errorf("worker %s holds %v (%v), want the run held: %v", w, held, err, want)
		}
	}
	b.queued(t, ids[2])
	r, err := b.store.Claim(b.ctx, ids[2], "w", time.Now())
	if err != nil || r == nil || r.ID != ids[2] || r.Status != run.StatusStarting || r.Worker != "w" || r.StartedAt.IsZero() {
		t.Errorf("claimed run as returned: %+v %v", r, err)
	}
	b.queued(t, ids[1])
	b.srv.CLI(t, "hset", b.store.RunKey(ids[1]), "stop_requested", "1")
	if r, _ := b.store.Claim(b.ctx, ids[1], "w", time.Now()); r != nil {
		t.Error("a run asked to stop was claimed")
	}
	if r, _ := b.store.Claim(b.ctx, ids[9], "w", time.Now()); r != nil {
		t.Error("a missing run was claimed")
	}
}

// TestStop (stopScript): a queued run ends stopped at once and wakes
// waiters; an active one becomes stopping and its workers are told; an
// ended one is left alone; a missing one is not found.
func TestStop(t *testing.T) {
	b := setup(t)
	w, err := b.store.NewWaiter(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	cancels := make(chan string, 4)
	if err := b.store.OnCancel(b.ctx, func(id string) { cancels <- id }, func() {}); err != nil {
		t.Fatal(err)
	}
	b.queued(t, ids[0])
	done, unregister := w.Register(ids[0])
	defer unregister()
	if out, err := b.store.RequestStop(b.ctx, ids[0]); err != nil || out != store.StopQueued || b.status(t, ids[0]) != run.StatusStopped {
		t.Errorf("queued: %v %v %s", out, err, b.status(t, ids[0]))
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Error("stopping a queued run woke no waiter")
	}
	b.queued(t, ids[1])
	if _, err := b.store.Claim(b.ctx, ids[1], "w", time.Now()); err != nil {
		t.Fatal(err)
	}
	if out, _ := b.store.RequestStop(b.ctx, ids[1]); out != store.StopActive || b.status(t, ids[1]) != run.StatusStopping {
		t.Errorf("active: %v %s", out, b.status(t, ids[1]))
	}
	select {
	case id := <-cancels:
		if id != ids[1] {
			t.Errorf("cancel published for %s", id)
		}
	case <-time.After(5 * time.Second):
		t.Error("no cancel published for an active run")
	}
	if out, _ := b.store.RequestStop(b.ctx, ids[0]); out != store.StopEnded {
		t.Errorf("ended: %v", out)
	}
	if _, err := b.store.RequestStop(b.ctx, ids[9]); run.ErrorCode(err) != run.ECodeNotFound {
		t.Errorf("missing: %v", err)
	}
}

// TestUpdate (updateScript): an end is final, leaves the active set and
// is published; starting to run is published too; a stopping run never
// goes back to running.
func TestUpdate(t *testing.T) {
	b := setup(t)
	w, _ := b.store.NewWaiter(b.ctx)
	b.queued(t, ids[0])
	started, unregister := w.Register(ids[0])
	if ok, _ := b.store.Update(b.ctx, ids[0], &run.Run{Status: run.StatusRunning, PID: 42}); !ok {
		t.Fatal("update refused")
	}
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Error("running was not published")
	}
	unregister()
	ended, unregister := w.Register(ids[0])
	defer unregister()
	if _, err := b.store.Update(b.ctx, ids[0], &run.Run{Status: run.StatusSucceeded, FinishedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Error("the end was not published")
	}
	if ok, _ := b.store.Update(b.ctx, ids[0], &run.Run{Status: run.StatusFailed}); ok || b.status(t, ids[0]) != run.StatusSucceeded {
		t.Errorf("an ended run changed: %s", b.status(t, ids[0]))
	}
	if active := b.srv.CLI(t, "sismember", b.store.ActiveKey(), ids[0]); strings.TrimSpace(active) != "0" {
		t.Errorf("an ended run is still in the active set")
	}
	b.queued(t, ids[1])
	if _, err := b.store.Claim(b.ctx, ids[1], "w", time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.RequestStop(b.ctx, ids[1]); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Update(b.ctx, ids[1], &run.Run{Status: run.StatusRunning}); err != nil {
		t.Fatal(err)
	}
	if b.status(t, ids[1]) != run.StatusStopping {
		t.Errorf("a stopping run went back to %s", b.status(t, ids[1]))
	}
}

// TestFinish (finishScript): the result and the end land together, and
// the waiter the end wakes finds the result; a result Redis refuses
// changes nothing.
func TestFinish(t *testing.T) {
	b := setup(t)
	w, _ := b.store.NewWaiter(b.ctx)
	b.queued(t, ids[0])
	if _, err := b.store.Claim(b.ctx, ids[0], "w", time.Now()); err != nil {
		t.Fatal(err)
	}
	ended, unregister := w.Register(ids[0])
	defer unregister()
	if err := b.store.Finish(b.ctx, ids[0], []byte(`{"ok":true}`), &run.Run{Status: run.StatusSucceeded, FinishedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the end was not published")
	}
	if r, res, err := b.store.GetRunWithResult(b.ctx, ids[0]); err != nil || string(res) != `{"ok":true}` || r.Status != run.StatusSucceeded {
		t.Errorf("after Finish: result %q (%v), run %+v", res, err, r)
	}
	if ttl := strings.TrimSpace(b.srv.CLI(t, "ttl", b.store.ResultKey(ids[0]))); ttl == "-1" || ttl == "-2" {
		t.Errorf("the result has TTL %s, want the records' TTL", ttl)
	}
	b.queued(t, ids[1])
	if _, err := b.store.Claim(b.ctx, ids[1], "w", time.Now()); err != nil {
		t.Fatal(err)
	}
	b.srv.CLI(t, "config", "set", "proto-max-bulk-len", "1mb")
	if err := b.store.Finish(b.ctx, ids[1], make([]byte, 2<<20), &run.Run{Status: run.StatusSucceeded}); err == nil {
		t.Error("a result over Redis's limit was taken")
	}
	if r, res, err := b.store.GetRunWithResult(b.ctx, ids[1]); err != nil || res != nil || r.Status != run.StatusStarting {
		t.Errorf("a refused result changed the run: result %d bytes (%v), run %+v", len(res), err, r)
	}
	if _, _, err := b.store.GetRunWithResult(b.ctx, ids[9]); run.ErrorCode(err) != run.ECodeNotFound {
		t.Errorf("a missing run: %v", err)
	}
}

// TestCreateScriptRun (createScriptRunScript): a second active copy of a
// script is refused unless duplicates are allowed; once the first ended,
// a new copy is fine.
func TestCreateScriptRun(t *testing.T) {
	b := setup(t)
	mk := func(id string, dup bool) error {
		return b.store.CreateScriptRun(b.ctx, &run.Run{ID: id, Kind: run.KindScript, Script: "a.py", Status: run.StatusQueued, CreatedAt: time.Now()}, dup)
	}
	if err := mk(ids[0], false); err != nil {
		t.Fatal(err)
	}
	if err := mk(ids[1], false); run.ErrorCode(err) != run.ECodeConflict || !strings.Contains(err.Error(), ids[0]) {
		t.Errorf("second copy: %v", err)
	}
	if err := mk(ids[2], true); err != nil {
		t.Errorf("duplicate allowed: %v", err)
	}
	if _, err := b.store.Update(b.ctx, ids[0], &run.Run{Status: run.StatusStopped}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Update(b.ctx, ids[2], &run.Run{Status: run.StatusStopped}); err != nil {
		t.Fatal(err)
	}
	if err := mk(ids[3], false); err != nil {
		t.Errorf("after the others ended: %v", err)
	}
}

// TestAppendLog (appendLogScript): the kept tail is bounded, its offset in
// the whole output is right, and every append is announced.
func TestAppendLog(t *testing.T) {
	b := setup(t)
	w, _ := b.store.NewLogWaiter(b.ctx)
	wrote, unregister := w.Register(ids[0])
	defer unregister()
	var all strings.Builder
	for i := 0; i < 100; i++ {
		line := fmt.Sprintf("line %03d\n", i)
		all.WriteString(line)
		if err := b.store.AppendLog(b.ctx, ids[0], "stdout", []byte(line), 100); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-wrote:
	case <-time.After(5 * time.Second):
		t.Error("no log event")
	}
	data, off, err := b.store.ReadLog(b.ctx, ids[0], "stdout")
	if err != nil || len(data) < 100 || len(data) > 200 || off+int64(len(data)) != int64(all.Len()) || !strings.HasSuffix(all.String(), string(data)) {
		t.Errorf("tail %d bytes at offset %d of %d: %v", len(data), off, all.Len(), err)
	}
}

// TestWorkersAndReaper: heartbeats list workers; a worker whose heartbeat
// went stale has its held runs ended terminated by ReapOnce, once.
func TestWorkersAndReaper(t *testing.T) {
	b := setup(t)
	if _, err := b.store.Heartbeat(b.ctx, store.WorkerInfo{ID: "alive"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Heartbeat(b.ctx, store.WorkerInfo{ID: "lost"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	b.srv.CLI(t, "zadd", b.store.WorkersKey(), fmt.Sprint(time.Now().Add(-time.Minute).UnixMilli()), "lost")
	b.queued(t, ids[0])
	if _, err := b.store.Claim(b.ctx, ids[0], "lost", time.Now()); err != nil {
		t.Fatal(err)
	}
	b.queued(t, ids[1])
	if _, err := b.store.Claim(b.ctx, ids[1], "alive", time.Now()); err != nil {
		t.Fatal(err)
	}
	ws, err := b.store.Workers(b.ctx, liveness.Stale)
	if err != nil || len(ws) != 1 || ws[0].ID != "alive" {
		t.Errorf("fresh workers: %+v %v", ws, err)
	}
	if n, err := liveness.ReapOnce(b.ctx, b.store); n != 1 || err != nil {
		t.Errorf("reaped %d: %v", n, err)
	}
	if b.status(t, ids[0]) != run.StatusTerminated || b.status(t, ids[1]) != run.StatusStarting {
		t.Errorf("after reaping: lost worker's run %s, live worker's run %s", b.status(t, ids[0]), b.status(t, ids[1]))
	}
	if n, _ := liveness.ReapOnce(b.ctx, b.store); n != 0 {
		t.Errorf("a second reap ended %d more", n)
	}
}

// TestRedisURLParsedOnce: with ?db=2 (and a sentinel URL's password and
// db), the store's records and asynq's tasks land in the same database.
func TestRedisURLParsedOnce(t *testing.T) {
	srv := redistest.Start(t)
	rds, err := store.ParseRedisURL(srv.URL(2))
	if err != nil || rds.DB() != 2 {
		t.Fatalf("parse: %v db %d", err, rds.DB())
	}
	st, err := store.Open(context.Background(), rds, "pyrunner:", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	q := queue.NewClient(rds)
	defer q.Close()
	ctx := context.Background()
	if err := st.CreateRun(ctx, &run.Run{ID: ids[0], Kind: run.KindResearch, Status: run.StatusQueued, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := q.Enqueue(ctx, queue.QueueResearch, ids[0], time.Minute); err != nil {
		t.Fatal(err)
	}
	if n, err := st.QueueDepth(ctx, queue.QueueResearch); err != nil || n != 1 {
		t.Errorf("queue depth seen by the store: %d %v", n, err)
	}
	for db, want := range map[string]bool{"0": false, "2": true} {
		keys := srv.CLI(t, "-n", db, "--scan")
		if strings.Contains(keys, "pyrunner:run:"+ids[0]) != want || strings.Contains(keys, "asynq:{research}:pending") != want {
			t.Errorf("db %s holds %q", db, keys)
		}
	}
	s, err := store.ParseRedisURL("redis-sentinel://:pw@h1:26379,h2:26379?master=m&db=3")
	if err != nil || s.DB() != 3 {
		t.Errorf("sentinel url: %v db %d", err, s.DB())
	}
	if _, err := store.ParseRedisURL("redis-sentinel://h1:26379"); err == nil {
		t.Error("a sentinel url without master was accepted")
	}
}
