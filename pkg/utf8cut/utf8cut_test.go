package utf8cut

import "testing"

func TestCuts(t *testing.T) {
	s := []byte("ab✓c✓") // ✓ is 3 bytes: a b [e2 9c 93] c [e2 9c 93]
	for n, want := range map[int]string{0: "", 1: "", 2: "", 3: "✓", 4: "c✓", 5: "c✓", 6: "c✓", 7: "✓c✓", 8: "b✓c✓", 99: "ab✓c✓"} {
		if got := string(Tail(s, n)); got != want {
			t.Errorf("Tail(%d) = %q, want %q", n, got, want)
		}
	}
	for n, want := range map[int]string{9: "ab✓c✓", 8: "ab✓c", 7: "ab✓c", 6: "ab✓c", 5: "ab✓", 3: "ab", 2: "ab"} {
		if got := string(TrimPartial(s[:n])); got != want {
			t.Errorf("TrimPartial(%d) = %q, want %q", n, got, want)
		}
	}
}
