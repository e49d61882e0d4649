// Package proc holds what the research executor and the script runner
// share about child processes.
package proc

import (
	"os"
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
