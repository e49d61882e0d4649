// Package utf8cut cuts byte streams of output without splitting a UTF-8
// character: output caps keep a head, log tails keep an end, and streamed
// chunks hold back a character that is not complete yet.
package utf8cut

import "unicode/utf8"

// TrimPartial drops an incomplete UTF-8 sequence at the end of b.
func TrimPartial(b []byte) []byte {
	for i := 1; i <= utf8.UTFMax && i <= len(b); i++ {
		if utf8.RuneStart(b[len(b)-i]) {
			if !utf8.FullRune(b[len(b)-i:]) {
				return b[:len(b)-i]
			}
			break
		}
	}
	return b
}

// Tail returns the last n bytes of b, moved forward past any partial
// character so the tail never starts inside one.
func Tail(b []byte, n int) []byte {
	if n < 0 || len(b) <= n {
		return b
	}
	t := b[len(b)-n:]
	for i := 0; i < utf8.UTFMax && i < len(t); i++ {
		if utf8.RuneStart(t[i]) {
			return t[i:]
		}
	}
	if len(t) < utf8.UTFMax {
		return t[len(t):] // only the end of a character fits
	}
	return t // not UTF-8 at all: keep the bytes
}
