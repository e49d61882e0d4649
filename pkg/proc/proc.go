// Package proc holds what the research executor and the script runner
// share about child processes.
package proc

import (
	"os"
	"path"
	"strings"
	"syscall"
)

// ExitCode is the seed's return code of an ended process: its exit
// status, or minus the signal that killed it (-1 when unknown).
func ExitCode(ps *os.ProcessState) int {
	if ps == nil {
		return -1
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return -int(ws.Signal())
	}
	return ps.ExitCode()
}

// PassedEnv returns the entries (KEY=value) of environ whose names match
// one of patterns: exact names, or globs as path.Match reads them
// (BINANCE_*), for PYRUNNER_ENV_PASSTHROUGH.
func PassedEnv(patterns, environ []string) []string {
	var out []string
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		for _, p := range patterns {
			if ok, _ := path.Match(p, k); ok {
				out = append(out, kv)
				break
			}
		}
	}
	return out
}
