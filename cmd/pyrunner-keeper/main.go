// Command pyrunner-keeper holds one script's deadline for its worker: it
// starts the script as its child, in a process group of its own, and
// kills that group when the worker stops renewing its lease or goes away
// (see pkg/scriptrun, keeper.go, for the protocol). The worker starts one
// per script; it is not meant to be run by hand:
//
//	pyrunner-keeper <lease-ms> <command...>   (fd 3: control, fd 4: reports)
//
// It is a binary of its own, next to pyrunner-worker, so that a keeper
// costs a few MiB and a millisecond, not the worker's start-up.
package main

import (
	"os"

	"github.com/ztrade/pyrunner/pkg/scriptrun"
)

func main() { os.Exit(scriptrun.Keep(os.Args[1:])) }
