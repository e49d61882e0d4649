package executor

import (
	"sync"

	"github.com/ztrade/pyrunner/pkg/utf8cut"
)

// capBuffer keeps the first max bytes written to it and counts the rest,
// so a run that floods its output costs bounded memory.
type capBuffer struct {
	mu        sync.Mutex
	max       int
	buf       []byte
	truncated bool
}

func (c *capBuffer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	room := c.max - len(c.buf)
	if room >= len(p) {
		c.buf = append(c.buf, p...)
	} else {
		if room > 0 {
			c.buf = append(c.buf, p[:room]...)
		}
		c.truncated = true
	}
	return len(p), nil
}

// String returns what was kept, cut back so it never ends inside a UTF-8
// character.
func (c *capBuffer) String() (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.buf
	if c.truncated {
		b = utf8cut.TrimPartial(b)
	}
	return string(b), c.truncated
}
