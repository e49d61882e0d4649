// Command pyrunner-worker takes runs off the Redis queue and executes
// them: it loads K-lines read-only, runs the user's Python, and writes
// status, output and results back to Redis. Start as many as you like, on
// as many machines; they share nothing but Redis.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/ztrade/pyrunner/pkg/config"
)

func main() {
	if err := start(); errors.Is(err, config.ErrHelp) {
		return
	} else if err != nil {
		fmt.Fprintln(os.Stderr, "pyrunner-worker:", err)
		os.Exit(1)
	}
}

// start runs a worker until SIGINT or SIGTERM: construct, serve, wait,
// shut down (see app).
func start() error {
	cfg, err := config.Load("pyrunner-worker", os.Args[1:], os.Getenv, os.Stderr)
	if err != nil {
		return err
	}
	cfg.SetupLogging("pyrunner-worker")
	hideEnviron()
	ctx, stop := signalContext()
	defer stop()
	a, err := newApp(ctx, cfg)
	if err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}
	defer a.close()
	if err := a.serve(); err != nil {
		return err
	}
	<-ctx.Done()
	a.shutdown()
	return nil
}
