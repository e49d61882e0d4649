package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ztrade/pyrunner/pkg/wire"
)

// TestSchedules: schedules end to end with two API processes, both
// firing: @every 2s submits one run per firing, never two; pause stops
// the firings and resume starts them again; overlap skip fires no second
// copy of a script while one runs; a bad spec is a 400 that names it.
func TestSchedules(t *testing.T) {
	root := filepath.Join(reachableTempDir(t), "scripts")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	slow := filepath.Join(root, "slow.py")
	if err := os.WriteFile(slow, []byte("import time\nprint('slow start', flush=True)\ntime.sleep(5)\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	scan := scanCopies(t, slow)
	s := startStack(t, stackOpts{scripts: root})
	// A second API on the same Redis: both fire schedules.
	port2 := freePort(t)
	env := s.env
	s.env = append(append([]string{}, env...), fmt.Sprintf("PYRUNNER_LISTEN=127.0.0.1:%d", port2))
	s.start("api-2", filepath.Join(binDir, "pyrunner-api"))
	s.env = env
	base2 := fmt.Sprintf("http://127.0.0.1:%d", port2)
	waitUntil(t, 30*time.Second, "the second API", func() bool {
		st, _ := call("GET", base2+"/health", "", 5*time.Second)
		return st == 200
	})
	sub := func(name string, f func(t *testing.T)) { t.Run(name, func(t *testing.T) { s.t = t; f(t) }) }
	runsOf := func(scheduleID string) []runRec {
		var page struct{ Runs []runRec }
		s.do("GET", "/v1/runs?limit=1000", "", &page)
		var out []runRec
		for _, r := range page.Runs {
			if r.ScheduleID != nil && *r.ScheduleID == scheduleID {
				out = append(out, r)
			}
		}
		return out
	}

	sub("EveryTwoSecondsOnceEach", func(t *testing.T) {
		var sc wire.Schedule
		body := `{"name":"btc hourly count","cron":"@every 2s","kind":"research","request":{"exchange":"binance","symbol":"BTCUSDT",` +
			`"binSize":"1h","start":1735689600,"end":1735776000,"code":"result = len(df)"},"overlap":"allow"}`
		if st := s.do("POST", "/v1/schedules", body, &sc); st != 201 || sc.ID == "" || sc.NextFireAt == nil || sc.Timezone != "UTC" {
			t.Fatalf("create: %d %+v", st, sc)
		}
		created := parseTime(t, sc.CreatedAt)
		anchor := created.Truncate(time.Second)
		time.Sleep(time.Until(created.Add(20 * time.Second)))
		var paused wire.Schedule
		if st := s.do("PATCH", "/v1/schedules/"+sc.ID, `{"paused":true}`, &paused); st != 200 || !paused.Paused || paused.NextFireAt != nil {
			t.Fatalf("pause: %d %+v", st, paused)
		}
		pausedAt := parseTime(t, paused.UpdatedAt)
		firings := int(pausedAt.Sub(anchor) / (2 * time.Second))
		// Every run of a firing ends; the runs are one per firing.
		var runs []runRec
		waitUntil(t, 30*time.Second, "the firings' runs to end", func() bool {
			runs = runsOf(sc.ID)
			for _, r := range runs {
				if !ended(r) {
					return false
				}
			}
			return true
		})
		t.Logf("%d firings of @every 2s in %.1f s, %d runs", firings, pausedAt.Sub(created).Seconds(), len(runs))
		if d := len(runs) - firings; d < -1 || d > 1 {
			t.Errorf("%d runs for %d firings", len(runs), firings)
		}
		seen := map[string]bool{}
		for _, r := range runs {
			if r.Status != "succeeded" || r.Market == nil || *r.Market != "binance BTCUSDT 1h" {
				t.Errorf("a firing's run: %s market %v", r.Status, deref(r.Market))
			}
			at := parseTime(t, *r.CreatedAt).Truncate(2 * time.Second).String()
			if seen[at] {
				t.Errorf("two runs created within one 2 s period (%s)", at)
			}
			seen[at] = true
		}
		fired := 0
		for _, base := range []string{s.base, base2} {
			m := scrape(t, base+"/metrics")
			if v := regexp.MustCompile(`pyrunner_schedule_firings_total\{result="fired"\} (\d+)`).FindStringSubmatch(m); v != nil {
				n, _ := strconv.Atoi(v[1])
				fired += n
			}
		}
		if fired != len(runs) {
			t.Errorf("the two APIs counted %d firings fired, for %d runs", fired, len(runs))
		}

		// Paused: no firing for 5 s.
		time.Sleep(5 * time.Second)
		if n := len(runsOf(sc.ID)); n != len(runs) {
			t.Errorf("%d runs after the pause, %d before", n, len(runs))
		}
		// Resumed: firings again.
		if st := s.do("PATCH", "/v1/schedules/"+sc.ID, `{"paused":false}`, &sc); st != 200 || sc.Paused || sc.NextFireAt == nil {
			t.Fatalf("resume: %d %+v", st, sc)
		}
		waitUntil(t, 10*time.Second, "a firing after the resume", func() bool { return len(runsOf(sc.ID)) > len(runs) })
		var got wire.Schedule
		if s.do("GET", "/v1/schedules/"+sc.ID, "", &got); got.LastRunID == nil || deref(got.LastResult) != "fired" {
			t.Errorf("the schedule's last firing: %+v", got)
		}
		if st := s.do("DELETE", "/v1/schedules/"+sc.ID, "", nil); st != 200 {
			t.Errorf("delete: %d", st)
		}
		if st := s.do("GET", "/v1/schedules/"+sc.ID, "", nil); st != 404 {
			t.Errorf("get after delete: %d", st)
		}
	})

	sub("OverlapSkip", func(t *testing.T) {
		var sc wire.Schedule
		if st := s.do("POST", "/v1/schedules", `{"name":"slow","cron":"@every 1s","kind":"script","request":{"script":"slow.py"}}`, &sc); st != 201 || sc.Overlap != "skip" {
			t.Fatalf("create: %d %+v", st, sc)
		}
		skipped := false
		waitUntil(t, 30*time.Second, "a second run of slow.py, after the first ended", func() bool {
			var cur wire.Schedule
			s.do("GET", "/v1/schedules/"+sc.ID, "", &cur)
			skipped = skipped || deref(cur.LastResult) == "skipped"
			return len(runsOf(sc.ID)) >= 2
		})
		s.do("PATCH", "/v1/schedules/"+sc.ID, `{"paused":true}`, nil)
		if !skipped {
			t.Errorf("no firing was skipped while slow.py ran")
		}
		if n := scan.most(slow); n != 1 {
			t.Errorf("at most %d copies of slow.py at once, want 1", n)
		}
		s.do("POST", "/v1/runs/stop_all", "", nil)
	})

	sub("TriggerAndErrors", func(t *testing.T) {
		var sc wire.Schedule
		s.do("POST", "/v1/schedules", `{"name":"daily","cron":"5 0 * * *","timezone":"Asia/Shanghai","kind":"research",`+
			`"request":{"exchange":"binance","symbol":"BTCUSDT","binSize":"1h","start":1735689600,"end":1735776000,"code":"result = 2"},"paused":true}`, &sc)
		var fired struct {
			Result string
			RunID  *string `json:"run_id"`
		}
		if st := s.do("POST", "/v1/schedules/"+sc.ID+"/trigger", "", &fired); st != 202 || fired.Result != "fired" || fired.RunID == nil {
			t.Fatalf("trigger: %d %+v", st, fired)
		}
		var r runRec
		if s.do("GET", "/v1/runs/"+*fired.RunID, "", &r); deref(r.ScheduleID) != sc.ID {
			t.Errorf("the triggered run: %+v", r)
		}
		sc.Paused = false
		s.do("PATCH", "/v1/schedules/"+sc.ID, `{"paused":false}`, &sc)
		next := parseTime(t, *sc.NextFireAt)
		if sh := next.In(time.FixedZone("CST", 8*3600)); sh.Hour() != 0 || sh.Minute() != 5 {
			t.Errorf("5 0 * * * in Asia/Shanghai fires next at %s", sh)
		}
		for body, want := range map[string]string{
			`{"name":"x","cron":"61 * * * *","kind":"research","request":{}}`:                         `cron "61 * * * *"`,
			`{"name":"x","cron":"@every 0.5s","kind":"research","request":{}}`:                        `cron "@every 0.5s"`,
			`{"name":"x","cron":"@daily","timezone":"Mars/Base","kind":"research","request":{}}`:      `timezone "Mars/Base"`,
			`{"name":"x","cron":"@daily","kind":"batch","request":{}}`:                                "kind must be research or script",
			`{"name":"x","cron":"@daily","kind":"script","request":{"script":"nope.py"}}`:             "request: ",
			`{"name":"x","cron":"@daily","kind":"script","request":{"script":"slow.py"},"overlap":1}`: "invalid JSON body",
		} {
			var e runRec
			if st := s.do("POST", "/v1/schedules", body, &e); st != 400 || !strings.Contains(e.Detail, want) {
				t.Errorf("%s: %d %q, want 400 naming %q", body, st, e.Detail, want)
			}
		}
		if st := s.do("PATCH", "/v1/schedules/"+sc.ID, `{"cron":"bad"}`, nil); st != 400 {
			t.Errorf("a bad cron in a PATCH: %d", st)
		}
		var list struct {
			Count     int
			Schedules []wire.Schedule
		}
		if st := s.do("GET", "/v1/schedules", "", &list); st != 200 || list.Count < 1 {
			t.Errorf("list: %d %+v", st, list)
		}
	})
}
