// Package binsize parses ztrade's candle sizes: a number followed by one of
// s, m, h, d or w ("1m", "15m", "4h", "1d"); a bare number means minutes.
package binsize

import (
	"fmt"
	"regexp"
	"strconv"
)

var re = regexp.MustCompile(`^([0-9]{1,7})([smhdw]?)$`)

var unit = map[string]int64{"": 60, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

// Parse returns the length of one candle in seconds.
func Parse(s string) (int64, error) {
	m := re.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("binSize %q is not a number followed by s, m, h, d or w (e.g. 1m, 5m, 1h, 1d)", s)
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	if n <= 0 {
		return 0, fmt.Errorf("binSize %q must be greater than zero", s)
	}
	return n * unit[m[2]], nil
}
