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

// Isolation is isolation.py: a run's own namespaces and seccomp filter.
//
//go:embed isolation.py
var Isolation []byte

// Protocol is protocol.py: the messages between Go and Python.
//
//go:embed protocol.py
var Protocol []byte

// Files are the Python side as the executor writes it out, by file name.
var Files = map[string][]byte{"harness.py": Harness, "zygote.py": Zygote, "isolation.py": Isolation, "protocol.py": Protocol}
