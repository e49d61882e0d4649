package e2e

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"testing"
	"time"
)

// get sends GET path to base with a bearer token and an optional forged
// X-Forwarded-For, and returns the status.
func get(t *testing.T, c *http.Client, base, path, token, xff string) int {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), "GET", base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if xff != "" {
		req.Header.Set("X-Forwarded-For", xff)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestTrustedProxies: behind a reverse proxy (httputil's, which appends
// the client to X-Forwarded-For as nginx and Caddy do), the bad-token
// back-off holds back the client that sent the bad tokens, not everyone
// behind the proxy; and a forged X-Forwarded-For from anyone else is
// ignored, with or without the setting.
func TestTrustedProxies(t *testing.T) {
	const token = "proxy-test-token"
	const path = "/v1/research/markets"
	burst := func(t *testing.T, c *http.Client, base, xff string) []int {
		var codes []int
		for i := 0; i < 12; i++ {
			codes = append(codes, get(t, c, base, path, "wrong-token", xff))
		}
		return codes
	}

	t.Run("BehindTheProxy", func(t *testing.T) {
		s := startStack(t, stackOpts{workers: -1, env: map[string]string{"PYRUNNER_TOKEN": token, "PYRUNNER_TRUSTED_PROXIES": "127.0.0.1"}})
		target, err := url.Parse(s.base)
		if err != nil {
			t.Fatal(err)
		}
		proxy := httptest.NewServer(httputil.NewSingleHostReverseProxy(target))
		defer proxy.Close()
		a, b := clientFrom("127.0.0.2"), clientFrom("127.0.0.3")
		if codes := burst(t, a, proxy.URL, ""); codes[0] != 401 || codes[11] != 429 {
			t.Fatalf("client A's 12 wrong tokens through the proxy: %v", codes)
		}
		began := time.Now()
		if st := get(t, b, proxy.URL, path, token, ""); st != 200 || time.Since(began) > 2*time.Second {
			t.Errorf("client B through the same proxy: %d after %s", st, time.Since(began))
		}
		if st := get(t, a, proxy.URL, path, token, ""); st != 429 {
			t.Errorf("client A, now with the right token, during its back-off: %d", st)
		}
		// Straight to the API (not a trusted proxy), a forged header names
		// no one: the back-off is the peer's.
		d := clientFrom("127.0.0.4")
		if codes := burst(t, d, s.base, "127.0.0.9"); codes[11] != 429 {
			t.Errorf("12 wrong tokens with a forged X-Forwarded-For: %v", codes)
		}
		if st := get(t, d, s.base, path, token, "127.0.0.10"); st != 429 {
			t.Errorf("a forged X-Forwarded-For lifted the back-off: %d", st)
		}
	})

	t.Run("WithoutTheSetting", func(t *testing.T) {
		s := startStack(t, stackOpts{workers: -1, env: map[string]string{"PYRUNNER_TOKEN": token}})
		c := clientFrom("127.0.0.5")
		var codes []int
		for i := 0; i < 12; i++ { // a new forged client on every try
			codes = append(codes, get(t, c, s.base, path, "wrong-token", "10.1.2."+strconv.Itoa(i)))
		}
		if codes[11] != 429 {
			t.Errorf("12 wrong tokens, each with another forged X-Forwarded-For: %v", codes)
		}
		if st := get(t, c, s.base, path, token, "10.9.9.9"); st != 429 {
			t.Errorf("a forged X-Forwarded-For lifted the back-off: %d", st)
		}
		if st := get(t, clientFrom("127.0.0.6"), s.base, path, token, ""); st != 200 {
			t.Errorf("another client: %d", st)
		}
	})
}
