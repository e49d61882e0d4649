// Package python embeds pyrunner's Python side into the Go binaries, so a
// worker carries the exact harness it was built with.
package python

import _ "embed"

// Harness is harness.py: it runs one research job over a socket channel.
//
//go:embed harness.py
var Harness []byte

// Zygote is zygote.py: it preloads pandas and forks one child per run.
//
//go:embed zygote.py
var Zygote []byte
