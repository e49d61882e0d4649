package binsize

import "testing"

func TestParse(t *testing.T) {
	good := map[string]int64{"1m": 60, "5m": 300, "15": 900, "1h": 3600, "4h": 14400, "1d": 86400, "1w": 604800, "30s": 30}
	for in, want := range good {
		got, err := Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "m", "0m", "1y", "-1m", "1 m", "1M", "1mm"} {
		if _, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) succeeded, want an error", in)
		}
	}
}
