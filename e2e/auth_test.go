package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/ztrade/pyrunner/pkg/auth"
	"github.com/ztrade/pyrunner/pkg/wire"
)

const (
	jwtSecret   = "test-jwt-secret"
	jwtIss      = "quant-script-api"
	jwtAud      = "quant-internal"
	adminSecret = "admin-pw"
	staticToken = "static-research-token"
)

func bearer(tok string) string { return "Bearer " + tok }

func TestAuth(t *testing.T) {
	root := writeScripts(t)
	s := startStack(t, stackOpts{scripts: root, env: map[string]string{
		"SCRIPT_JWT_AUTH": "true", "SCRIPT_JWT_SECRET": jwtSecret, "SCRIPT_JWT_ISS": jwtIss, "SCRIPT_JWT_AUD": jwtAud,
		"SCRIPT_JWT_ADMIN_SECRET": adminSecret, "PYRUNNER_TOKEN": staticToken}})
	good := &auth.Minter{Secret: []byte(jwtSecret), Issuer: jwtIss, Audience: jwtAud}
	mint := func(m *auth.Minter, scopes []string, ttl time.Duration, extra map[string]any) string {
		tok, err := m.Mint("alice", scopes, ttl, extra)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	all := mint(good, []string{"*"}, time.Hour, nil)

	t.Run("BadTokens", func(t *testing.T) {
		s.t = t
		none := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." +
			base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf(`{"sub":"x","scopes":["*"],"iss":"%s","aud":"%s","exp":%d}`, jwtIss, jwtAud, time.Now().Add(time.Hour).Unix()))) + "."
		cases := map[string]string{
			"no token":        "",
			"not bearer":      "Basic abc",
			"malformed":       bearer("abc.def"),
			"wrong signature": bearer(mint(&auth.Minter{Secret: []byte("other"), Issuer: jwtIss, Audience: jwtAud}, []string{"*"}, time.Hour, nil)),
			"alg none":        bearer(none),
			"expired":         bearer(mint(good, []string{"*"}, -2*time.Minute, nil)),
			"before nbf":      bearer(mint(good, []string{"*"}, time.Hour, map[string]any{"nbf": time.Now().Add(10 * time.Minute).Unix()})),
			"wrong iss":       bearer(mint(&auth.Minter{Secret: []byte(jwtSecret), Issuer: "someone-else", Audience: jwtAud}, []string{"*"}, time.Hour, nil)),
			"wrong aud":       bearer(mint(&auth.Minter{Secret: []byte(jwtSecret), Issuer: jwtIss, Audience: "other-aud"}, []string{"*"}, time.Hour, nil)),
		}
		details := map[string]string{}
		for name, h := range cases {
			var e struct {
				Detail string `json:"detail"`
			}
			if st := s.doAuth("GET", "/v1/scripts", "", h, &e); st != 401 || e.Detail == "" {
				t.Errorf("%s: %d %q", name, st, e.Detail)
			}
			if other, dup := details[e.Detail]; dup {
				t.Errorf("%s and %s share the detail %q", name, other, e.Detail)
			}
			details[e.Detail] = name
		}
		t.Logf("details: %v", details)
		// Within the leeway (30 s) an expired token still passes.
		if st := s.doAuth("GET", "/v1/scripts", "", bearer(mint(good, []string{"*"}, -5*time.Second, nil)), nil); st != 200 {
			t.Errorf("token expired 5 s ago (inside the leeway): %d", st)
		}
	})

	t.Run("ScopesPerEndpoint", func(t *testing.T) {
		s.t = t
		seed := `{"exchange":"binance","symbol":"BTCUSDT","binSize":"1m","start":1735689600,"end":1735776000,"limit":10000,"timeoutSec":30,"code":"result = 1"}`
		var rec runRec
		s.doAuth("POST", "/v1/runs", `{"script":"hello.py"}`, bearer(all), &rec)
		s.waitStatus0(rec.RunID, all)
		var research result
		s.doAuth("POST", "/v1/research/run", seed, bearer(all), &research)
		endpoints := []struct{ method, path, body, scope string }{
			{"GET", "/v1/scripts", "", "scripts:read"},
			{"POST", "/v1/scripts/rescan", "", "scripts:read"},
			{"GET", "/v1/runs", "", "scripts:read"},
			{"GET", "/v1/runs/active", "", "scripts:read"},
			{"GET", "/v1/runs/" + rec.RunID, "", "scripts:read"},
			{"GET", "/v1/runs/" + rec.RunID + "/logs", "", "logs:read"},
			{"POST", "/v1/runs/" + rec.RunID + "/stop", "", "scripts:run"},
			{"POST", "/v1/runs", `{"script":"hello.py","duplicate":true}`, "scripts:run"},
			{"POST", "/v1/runs/stop_all", "", "scripts:run"},
			{"POST", "/v1/research/run", seed, "research:run"},
			{"GET", "/v1/research/runs/" + research.ID, "", "research:run"},
			{"POST", "/v1/research/runs/" + research.ID + "/cancel", "", "research:run"},
		}
		for _, ep := range endpoints {
			other := "logs:read"
			if ep.scope == "logs:read" {
				other = "scripts:read"
			}
			var e struct {
				Detail string `json:"detail"`
			}
			if st := s.doAuth(ep.method, ep.path, ep.body, bearer(mint(good, []string{other}, time.Hour, nil)), &e); st != 403 || e.Detail != "Insufficient scopes" {
				t.Errorf("%s %s with %s: %d %q", ep.method, ep.path, other, st, e.Detail)
			}
			if st := s.doAuth(ep.method, ep.path, ep.body, "", nil); st != 401 {
				t.Errorf("%s %s without a token: %d", ep.method, ep.path, st)
			}
			if st := s.doAuth(ep.method, ep.path, ep.body, bearer(mint(good, []string{ep.scope}, time.Hour, nil)), nil); st != 200 {
				t.Errorf("%s %s with %s: %d", ep.method, ep.path, ep.scope, st)
			}
		}
		// scope as a space-delimited string claim, and scopes as a string
		if st := s.doAuth("GET", "/v1/scripts", "", bearer(mint(good, nil, time.Hour, map[string]any{"scope": "logs:read scripts:read"})), nil); st != 200 {
			t.Errorf("space-delimited scope claim: %d", st)
		}
		if st := s.doAuth("GET", "/v1/scripts", "", bearer(mint(good, nil, time.Hour, map[string]any{"scopes": "scripts:read"})), nil); st != 200 {
			t.Errorf("string scopes claim: %d", st)
		}
		// The run records its owner.
		var owned runRec
		s.doAuth("GET", "/v1/runs/"+rec.RunID, "", bearer(all), &owned)
		var raw map[string]any
		s.doAuth("GET", "/v1/runs/"+rec.RunID, "", bearer(all), &raw)
		if raw["owner"] != "alice" {
			t.Errorf("owner = %v", raw["owner"])
		}
	})

	t.Run("ScheduleScopes", func(t *testing.T) {
		s.t = t
		tok := func(scopes ...string) string { return bearer(mint(good, scopes, time.Hour, nil)) }
		script := `{"name":"s","cron":"@daily","kind":"script","request":{"script":"hello.py"},"paused":true}`
		research := `{"name":"r","cron":"@daily","kind":"research","request":{"exchange":"binance","symbol":"BTCUSDT","start":1735689600,"end":1735776000,"code":"result = 1"},"paused":true}`
		var e runRec
		if st := s.doAuth("POST", "/v1/schedules", script, tok("research:run"), &e); st != 403 || !strings.Contains(e.Detail, "scripts:run") {
			t.Errorf("a script schedule with research:run: %d %q", st, e.Detail)
		}
		if st := s.doAuth("POST", "/v1/schedules", research, tok("scripts:run"), &e); st != 403 || !strings.Contains(e.Detail, "research:run") {
			t.Errorf("a research schedule with scripts:run: %d %q", st, e.Detail)
		}
		if st := s.doAuth("POST", "/v1/schedules", script, "", nil); st != 401 {
			t.Errorf("a schedule without a token: %d", st)
		}
		if st := s.doAuth("POST", "/v1/schedules", script, tok("scripts:read"), nil); st != 403 {
			t.Errorf("a schedule with scripts:read: %d", st)
		}
		var sc wire.Schedule
		if st := s.doAuth("POST", "/v1/schedules", script, tok("scripts:run"), &sc); st != 201 || deref(sc.Owner) != "alice" {
			t.Fatalf("a script schedule with scripts:run: %d %+v", st, sc)
		}
		if st := s.doAuth("POST", "/v1/schedules", research, tok("research:run"), nil); st != 201 {
			t.Errorf("a research schedule with research:run: %d", st)
		}
		if st := s.doAuth("GET", "/v1/schedules", "", tok("scripts:read"), nil); st != 200 {
			t.Errorf("list with scripts:read: %d", st)
		}
		if st := s.doAuth("GET", "/v1/schedules", "", tok("research:run"), nil); st != 403 {
			t.Errorf("list with research:run only: %d", st)
		}
		if st := s.doAuth("PATCH", "/v1/schedules/"+sc.ID, `{"paused":false}`, tok("research:run"), nil); st != 403 {
			t.Errorf("pause a script schedule with research:run: %d", st)
		}
		if st := s.doAuth("DELETE", "/v1/schedules/"+sc.ID, "", tok("scripts:run"), nil); st != 200 {
			t.Errorf("delete with scripts:run: %d", st)
		}
	})

	t.Run("PyJWT", func(t *testing.T) {
		s.t = t
		out, err := exec.Command("/usr/bin/python3", "-c", fmt.Sprintf(`
import jwt, time, uuid
now = int(time.time())
print(jwt.encode({"iss": "%s", "aud": "%s", "sub": "user_12345", "type": "user", "role": "operator",
  "scopes": ["scripts:read", "scripts:run", "logs:read"], "iat": now, "exp": now + 3600, "jti": str(uuid.uuid4())},
  "%s", algorithm="HS256"))`, jwtIss, jwtAud, jwtSecret)).Output()
		if err != nil {
			t.Fatalf("PyJWT: %v", err)
		}
		if st := s.doAuth("GET", "/v1/scripts", "", bearer(strings.TrimSpace(string(out))), nil); st != 200 {
			t.Errorf("a PyJWT token with the seed's claims: %d", st)
		}
	})

	t.Run("StaticToken", func(t *testing.T) {
		s.t = t
		var r result
		if st := s.doAuth("POST", "/v1/research/run", seedBody, bearer(staticToken), &r); st != 200 || !r.ok() {
			t.Errorf("research with PYRUNNER_TOKEN: %d", st)
		}
		if st := s.doAuth("GET", "/v1/scripts", "", bearer(staticToken), nil); st != 401 {
			t.Errorf("PYRUNNER_TOKEN on a script endpoint: %d", st)
		}
	})

	t.Run("AdminExchange", func(t *testing.T) {
		s.t = t
		var tok struct {
			AccessToken string `json:"access_token"`
			TokenType   string `json:"token_type"`
			ExpiresIn   int    `json:"expires_in"`
		}
		if st := s.doAuth("POST", "/v1/auth/admin/token", `{"secret":"`+adminSecret+`"}`, "", &tok); st != 200 || tok.TokenType != "Bearer" || tok.ExpiresIn != 3600 {
			t.Fatalf("exchange: %d %+v", st, tok)
		}
		if st := s.doAuth("POST", "/v1/runs/all", "", bearer(tok.AccessToken), nil); st != 200 {
			t.Errorf("admin token on runs/all: %d", st)
		}
		s.doAuth("POST", "/v1/runs/stop_all", "", bearer(tok.AccessToken), nil)
		codes := []int{}
		for i := 0; i < 7; i++ {
			codes = append(codes, s.doAuth("POST", "/v1/auth/admin/token", `{"secret":"wrong"}`, "", nil))
		}
		if codes[0] != 401 || codes[len(codes)-1] != 429 {
			t.Errorf("a burst of wrong secrets: %v", codes)
		}
		req, _ := http.NewRequest("POST", s.base+"/v1/auth/admin/token", strings.NewReader(`{"secret":"`+adminSecret+`"}`))
		req.Header.Set("Content-Type", "application/json")
		resp, _ := http.DefaultClient.Do(req)
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		retry, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		if resp.StatusCode != 429 || retry < 1 {
			t.Errorf("during the back-off: %d Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
		}
		time.Sleep(time.Duration(retry)*time.Second + 100*time.Millisecond)
		if st := s.doAuth("POST", "/v1/auth/admin/token", `{"secret":"`+adminSecret+`"}`, "", &tok); st != 200 {
			t.Errorf("the right secret after the back-off: %d", st)
		}
	})

	t.Run("TokenCommand", func(t *testing.T) {
		s.t = t
		cmd := exec.Command(filepath.Join(binDir, "pyrunner-api"), "token", "--sub", "bob", "--scopes", "scripts:read,logs:read", "--ttl", "1h")
		cmd.Env = append(os.Environ(), "SCRIPT_JWT_SECRET="+jwtSecret, "SCRIPT_JWT_ISS="+jwtIss, "SCRIPT_JWT_AUD="+jwtAud)
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		tok := strings.TrimSpace(string(out))
		if st := s.doAuth("GET", "/v1/scripts", "", bearer(tok), nil); st != 200 {
			t.Errorf("minted token, scripts:read: %d", st)
		}
		if st := s.doAuth("POST", "/v1/runs", `{"script":"hello.py"}`, bearer(tok), nil); st != 403 {
			t.Errorf("minted token, scripts:run: %d", st)
		}
	})

	t.Run("PublicEndpoints", func(t *testing.T) { s.t = t; checkPublic(t, s) })
}

// waitStatus0 waits for a run to end, with a token.
func (s *stack) waitStatus0(id, tok string) {
	waitUntil(s.t, 20*time.Second, "run to end", func() bool {
		var r runRec
		s.doAuth("GET", "/v1/runs/"+id, "", bearer(tok), &r)
		return ended(r)
	})
}

// checkPublic: health, the spec and the docs with their assets answer with
// no token, from the binary (no network needed).
func checkPublic(t *testing.T, s *stack) {
	for _, p := range []string{"/health", "/v1/health", "/openapi.json", "/docs", "/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"} {
		resp, err := http.Get(s.base + p)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || len(b) == 0 {
			t.Errorf("%s: %d (%d bytes)", p, resp.StatusCode, len(b))
		}
		if p == "/docs" && (!strings.Contains(string(b), "/docs/swagger-ui-bundle.js") || !strings.Contains(string(b), "/openapi.json")) {
			t.Errorf("/docs page does not load the embedded UI: %s", b)
		}
		if p == "/openapi.json" {
			doc, err := openapi3.NewLoader().LoadFromData(b)
			if err == nil {
				err = doc.Validate(context.Background())
			}
			if err != nil {
				t.Errorf("/openapi.json is not a valid OpenAPI 3 document: %v", err)
			}
		}
		if p == "/docs/swagger-ui-bundle.js" && len(b) < 500_000 {
			t.Errorf("bundle is %d bytes", len(b))
		}
	}
}

func TestAuthOffIsOpen(t *testing.T) {
	s := startStack(t, stackOpts{})
	checkPublic(t, s)
	if st := s.do("POST", "/v1/auth/admin/token", `{"secret":"x"}`, nil); st != 404 {
		t.Errorf("admin exchange without SCRIPT_JWT_ADMIN_SECRET: %d", st)
	}
}

func TestAuthNeedsSecret(t *testing.T) {
	cmd := exec.Command(filepath.Join(binDir, "pyrunner-api"))
	cmd.Env = append(os.Environ(), "SCRIPT_JWT_AUTH=true", "SCRIPT_JWT_SECRET=", "PYRUNNER_LISTEN=127.0.0.1:0")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "SCRIPT_JWT_SECRET") {
		t.Fatalf("started without a secret: %v %s", err, out)
	}
}
