package main

// The first run on a freshly started stack: how long it waits in the
// queue (meta queueMs) when it is sent as soon as /health lists the
// worker, as a user's first call after `make run` is.

import (
	"context"
	"fmt"
	"strings"
)

// firstRuns starts a stack three times on SQLite and three times on
// MariaDB (when PYRUNNER_BENCH_MYSQL or the local root reaches it), sends
// one trivial run the moment the stack is up, and adds the worst queueMs.
func firstRuns(ctx context.Context, dir, db string, add func(k, v string)) error {
	type backend struct {
		name string
		env  []string
	}
	backends := []backend{{"SQLite", nil}}
	if dsn, cleanup, err := mysqlDemo(ctx); err == nil {
		defer cleanup()
		backends = append(backends, backend{"MariaDB", []string{"PYRUNNER_READONLY_TYPE=mysql", "PYRUNNER_READONLY_URI=" + dsn}})
	} else {
		add("(l) first run on MariaDB", "not measured: "+err.Error())
	}
	for _, b := range backends {
		var queue []string
		var worst int64
		for i := 0; i < 3; i++ {
			s, err := start(dir, db, 1, b.env...)
			if err != nil {
				return err
			}
			r, _, err := s.research(trivial)
			s.stop()
			if err != nil {
				return fmt.Errorf("first run on %s: %w", b.name, err)
			}
			queue = append(queue, fmt.Sprintf("%d", r.Meta.Queue))
			worst = max(worst, r.Meta.Queue)
		}
		add(fmt.Sprintf("(l) first research run on a stack just started (%s), sent as soon as /health lists its worker: queueMs, worst of 3", b.name),
			fmt.Sprintf("%d ms (%s)", worst, strings.Join(queue, ", ")))
	}
	return nil
}
