package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/golang-jwt/jwt/v5"

	"github.com/ztrade/pyrunner/pkg/wire"
)

// browser is a headless Debian chromium driven by chromedp, recording
// every URL its pages fetch.
type browser struct {
	ctx  context.Context
	mu   sync.Mutex
	urls []string
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	if _, err := os.Stat("/usr/bin/chromium"); err != nil {
		t.Fatal("the dashboard tests need Debian's chromium (tools/deps.sh installs it)")
	}
	// Not t.TempDir: Chromium may still be writing its profile as it exits.
	profile, err := os.MkdirTemp("", "pyrunner-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath("/usr/bin/chromium"), chromedp.NoSandbox,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(profile), chromedp.WindowSize(1280, 900))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	ctx, cancelC := context.WithTimeout(ctx, 3*time.Minute)
	t.Cleanup(func() {
		cancelC()
		cancelB()
		cancelA()
		for i := 0; i < 50 && os.RemoveAll(profile) != nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
	})
	b := &browser{ctx: ctx}
	chromedp.ListenTarget(ctx, func(ev any) {
		if e, ok := ev.(*network.EventRequestWillBeSent); ok {
			b.mu.Lock()
			b.urls = append(b.urls, e.Request.URL)
			b.mu.Unlock()
		}
	})
	if err := chromedp.Run(ctx, network.Enable()); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return b
}

func (b *browser) run(t *testing.T, what string, actions ...chromedp.Action) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Run(ctx, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// shot writes a screenshot into $PYRUNNER_SCREENSHOTS (default: the test's
// temp dir), for a person to look at.
func (b *browser) shot(t *testing.T, name string) {
	t.Helper()
	dir := os.Getenv("PYRUNNER_SCREENSHOTS")
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var png []byte
	b.run(t, "screenshot", chromedp.FullScreenshot(&png, 100))
	p := filepath.Join(dir, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot %s", p)
}

// external lists fetched URLs that are not the stack's (nor inline data).
func (b *browser) external(base string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, u := range b.urls {
		if !strings.HasPrefix(u, base+"/") && !strings.HasPrefix(u, "data:") && u != "about:blank" {
			out = append(out, u)
		}
	}
	return out
}

// waitText waits until the element at sel contains want.
func waitText(sel, want string) chromedp.Action {
	return chromedp.ActionFunc(func(ctx context.Context) error {
		for {
			var got string
			err := chromedp.Run(ctx, chromedp.Text(sel, &got, chromedp.ByQuery, chromedp.AtLeast(0)))
			if err == nil && strings.Contains(got, want) {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s never showed %q (last: %q)", sel, want, got)
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
}

// TestDashboard drives the dashboard in a real Chromium against the stack.
func TestDashboard(t *testing.T) {
	root := writeScripts(t)
	if err := os.WriteFile(filepath.Join(root, "slow.py"), []byte("import time\nfor i in range(300):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.4)\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startStack(t, stackOpts{scripts: root})
	b := newBrowser(t)

	t.Run("RunsList", func(t *testing.T) {
		rr := s.mustOK("result = 1", nil)
		_, sr := s.startScript(`{"script":"hello.py"}`)
		s.waitStatus(sr.RunID, 20*time.Second, ended)
		b.run(t, "open the runs list", chromedp.Navigate(s.base+"/ui/"),
			chromedp.WaitVisible(`tr[data-run="`+rr.ID+`"]`, chromedp.ByQuery),
			chromedp.WaitVisible(`tr[data-run="`+sr.RunID+`"]`, chromedp.ByQuery),
			waitText(`tr[data-run="`+sr.RunID+`"]`, "succeeded"), waitText(`tr[data-run="`+sr.RunID+`"]`, "hello.py"),
			waitText(`tr[data-run="`+rr.ID+`"]`, "binance BTCUSDT 1m"))
		b.shot(t, "runs")
		// A research run's own page, opened directly.
		b.run(t, "open a research run", chromedp.Navigate(s.base+"/ui/runs/"+rr.ID),
			waitText("#run-code", "result = 1"), waitText("#run-result", "1"))
	})
	t.Run("ResearchEditor", func(t *testing.T) {
		b.run(t, "run a plotting snippet", chromedp.Navigate(s.base+"/ui/research"),
			waitText("#market", "binance BTCUSDT"), waitText("#globals", "load_kline"),
			chromedp.SetValue("#code", "import matplotlib.pyplot as plt\nplt.plot(df.time, df.close)\nresult = {'rows': len(df)}", chromedp.ByQuery),
			chromedp.Click("#run", chromedp.ByQuery),
			chromedp.WaitVisible("#answer .images img", chromedp.ByQuery), waitText("#run-result", `"rows": 1441`),
			waitText("#python-call", `.research(code, exchange="binance", symbol="BTCUSDT", bin_size="1m"`))
		var src string
		var natural int
		b.run(t, "read the chart", chromedp.AttributeValue("#answer .images img", "src", &src, nil, chromedp.ByQuery),
			chromedp.Evaluate(`document.querySelector('#answer .images img').naturalWidth`, &natural))
		if !strings.HasPrefix(src, "data:image/png;base64,") || natural < 100 {
			t.Errorf("the chart is not a rendered PNG: %.40s (width %d)", src, natural)
		}
		b.shot(t, "research")
		b.run(t, "a failing snippet", chromedp.SetValue("#code", "x = 1\ny = x / 0", chromedp.ByQuery),
			chromedp.Click("#run", chromedp.ByQuery), waitText("#run-error", "ZeroDivisionError: division by zero"),
			waitText("#run-stderr", "line 2"))
	})
	t.Run("ScriptLiveAndStop", func(t *testing.T) {
		_, r := s.startScript(`{"script":"slow.py"}`)
		b.run(t, "follow a running script", chromedp.Navigate(s.base+"/ui/runs/"+r.RunID),
			waitText("#logs", "tick 1\n"), waitText("#logs", "tick 3\n"), waitText("#run-status", "running"))
		b.shot(t, "script")
		b.run(t, "stop it", chromedp.Click("#stop", chromedp.ByQuery), waitText("#run-status", "stopped"))
		if got := s.waitStatus(r.RunID, 20*time.Second, ended); got.Status != "stopped" {
			t.Errorf("the stop button ended the run %s", got.Status)
		}
	})
	t.Run("SystemAndScripts", func(t *testing.T) {
		b.run(t, "workers and queues", chromedp.Navigate(s.base+"/ui/system"),
			waitText("#workers", "bwrap"), waitText("#queues", "research"))
		b.run(t, "scripts", chromedp.Navigate(s.base+"/ui/scripts"), chromedp.WaitVisible(`button[data-start="hello.py"]`, chromedp.ByQuery),
			chromedp.Click(`button[data-start="hello.py"]`, chromedp.ByQuery), waitText("#run-head", "hello.py"))
	})
	t.Run("AttemptsAndRestarts", func(t *testing.T) {
		// fail.py exits 3: with on-failure it runs three times, then gives up.
		_, r := s.startScript(`{"script":"fail.py","restart":{"policy":"on-failure","max_restarts":2,"backoff_sec":0.5}}`)
		b.run(t, "a restarted run's attempts", chromedp.Navigate(s.base+"/ui/runs/"+r.RunID),
			chromedp.WaitVisible(`#restarts tr[data-attempt="2"]`, chromedp.ByQuery), waitText("#run-attempt", "3"),
			waitText("#restarts", "exited with code 3"), waitText("#run-status", "failed"), waitText("#run-error", "gave up after 2 restarts"),
			waitText("#logs", "[pyrunner] attempt 3 starts"))
		b.shot(t, "restarts")
	})
	t.Run("Schedules", func(t *testing.T) {
		var sc wire.Schedule
		if st := s.do("POST", "/v1/schedules", `{"name":"nightly hello","cron":"0 3 * * *","kind":"script","request":{"script":"hello.py"}}`, &sc); st != 201 {
			t.Fatalf("create a schedule: %d", st)
		}
		row := `tr[data-schedule="` + sc.ID + `"]`
		b.run(t, "the schedules page", chromedp.Navigate(s.base+"/ui/schedules"),
			chromedp.WaitVisible(row, chromedp.ByQuery), waitText(row+" .next", "03:00:00 UTC"), waitText(row, "nightly hello"))
		b.run(t, "pause it", chromedp.Click(`button[data-pause="`+sc.ID+`"]`, chromedp.ByQuery), waitText(row+" .next", "paused"),
			waitText(`button[data-pause="`+sc.ID+`"]`, "Resume"))
		b.run(t, "trigger it", chromedp.Click(`button[data-trigger="`+sc.ID+`"]`, chromedp.ByQuery), waitText(row+" .last", "fired"))
		b.run(t, "resume it", chromedp.Click(`button[data-pause="`+sc.ID+`"]`, chromedp.ByQuery), waitText(row+" .next", "03:00:00 UTC"))
		b.shot(t, "schedules")
		b.run(t, "create one in the form", chromedp.SetValue("#s-name", "every minute", chromedp.ByQuery),
			chromedp.SetValue("#s-cron", "@every 60s", chromedp.ByQuery), chromedp.SetValue("#s-request", `{"script": "hello.py"}`, chromedp.ByQuery),
			chromedp.Click("#s-create", chromedp.ByQuery), waitText("#schedules", "every minute"))
		b.run(t, "a bad spec is explained", chromedp.SetValue("#s-cron", "61 * * * *", chromedp.ByQuery),
			chromedp.Click("#s-create", chromedp.ByQuery), waitText("#flash", `cron "61 * * * *"`))
	})
	if ext := b.external(s.base); len(ext) > 0 {
		t.Errorf("pages fetched URLs outside the stack: %v", ext)
	}
	t.Run("BehindAPathPrefix", func(t *testing.T) {
		// A reverse proxy serving pyrunner under /pyrunner/, as a site might.
		target, _ := url.Parse(s.base)
		rp := httputil.NewSingleHostReverseProxy(target)
		srv := httptest.NewServer(http.StripPrefix("/pyrunner", rp))
		defer srv.Close()
		pb := newBrowser(t)
		pb.run(t, "the runs list under a prefix", chromedp.Navigate(srv.URL+"/pyrunner/ui/"),
			chromedp.WaitVisible(`#runs tr[data-run]`, chromedp.ByQuery))
		pb.run(t, "the research editor under a prefix", chromedp.Navigate(srv.URL+"/pyrunner/ui/research"),
			waitText("#market", "binance BTCUSDT"))
		if ext := pb.external(srv.URL + "/pyrunner"); len(ext) > 0 {
			t.Errorf("pages under a prefix fetched: %v", ext)
		}
	})
}

// TestDashboardAuth: with auth on, the page asks for a token, explains a
// 403, and works once given a good one.
func TestDashboardAuth(t *testing.T) {
	secret := "ui-secret"
	s := startStack(t, stackOpts{workers: 1, env: map[string]string{"SCRIPT_JWT_AUTH": "true", "SCRIPT_JWT_SECRET": secret}})
	mint := func(scopes string) string {
		tok, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "ui", "scopes": scopes, "exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(secret))
		return tok
	}
	s.authz = "Bearer " + mint("*")
	rr := s.mustOK("result = 1", nil)
	b := newBrowser(t)
	b.run(t, "a token is asked for", chromedp.Navigate(s.base+"/ui/"), chromedp.WaitVisible("#auth-token", chromedp.ByQuery),
		waitText("#auth-msg", "Missing bearer token"))
	b.run(t, "a token without the scope", chromedp.SetValue("#auth-token", mint("logs:read"), chromedp.ByQuery),
		chromedp.Click("#auth-form button", chromedp.ByQuery), waitText("#flash", "Insufficient scopes"))
	b.run(t, "a good token", chromedp.Evaluate(`sessionStorage.clear()`, nil), chromedp.Navigate(s.base+"/ui/"),
		chromedp.WaitVisible("#auth-token", chromedp.ByQuery),
		chromedp.SetValue("#auth-token", mint("*"), chromedp.ByQuery), chromedp.Click("#auth-form button", chromedp.ByQuery),
		chromedp.WaitVisible(`tr[data-run="`+rr.ID+`"]`, chromedp.ByQuery))
	b.shot(t, "auth")
}
