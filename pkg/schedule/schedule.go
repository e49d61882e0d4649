// Package schedule holds pyrunner's schedules: a cron spec (or @every)
// that submits a research or script run at each firing. It computes the
// firing times, the same on every API replica, so that each firing can
// be named by its schedule and its time (FiringRunID) and submitted once
// whichever replicas see it: the run's id is its asynq task id, which
// asynq will not take twice, and its record is created only if absent.
//
// Cron specs are parsed by robfig/cron, the parser asynq's scheduler
// uses: five fields (minute hour day month weekday) or a descriptor
// (@hourly, @daily, …), in the schedule's time zone. "@every <duration>"
// fires at whole multiples of the duration since the schedule was
// created, so replicas that started at different times agree.
package schedule

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/robfig/cron/v3"

	"github.com/ztrade/pyrunner/pkg/run"
)

// Overlap policies: what a firing does while the schedule's previous run
// is still live.
const (
	OverlapSkip  = "skip"  // fire no second run; the firing is skipped
	OverlapAllow = "allow" // submit regardless
)

// Schedule is a schedule as stored and as the API shows it (without its
// computed fields, see wire.Schedule).
type Schedule struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Cron     string `json:"cron"`
	Timezone string `json:"timezone"`
	// Kind is "research" or "script"; Request is the body of
	// /v1/research/run or /v1/runs that each firing submits.
	Kind      string          `json:"kind"`
	Request   json.RawMessage `json:"request"`
	Overlap   string          `json:"overlap"`
	Paused    bool            `json:"paused"`
	Owner     string          `json:"owner,omitempty"`
	CreatedAt time.Time       `json:"created_at"`
	UpdatedAt time.Time       `json:"updated_at"`
}

// Normalize fills in defaults (timezone UTC, overlap skip) and checks
// every field, naming the one at fault. It does not check the request:
// that is the submit path's (the API checks it once at creation).
func (s *Schedule) Normalize() error {
	s.Name = strings.TrimSpace(s.Name)
	if s.Name == "" || len(s.Name) > 200 {
		return run.Errorf(run.ECodeInvalid, "name is required (at most 200 characters)")
	}
	if s.Timezone == "" {
		s.Timezone = "UTC"
	}
	if s.Overlap == "" {
		s.Overlap = OverlapSkip
	}
	if s.Overlap != OverlapSkip && s.Overlap != OverlapAllow {
		return run.Errorf(run.ECodeInvalid, "overlap must be skip or allow, not %q", s.Overlap)
	}
	if s.Kind != string(run.KindResearch) && s.Kind != string(run.KindScript) {
		return run.Errorf(run.ECodeInvalid, "kind must be research or script, not %q", s.Kind)
	}
	if len(s.Request) == 0 || s.Request[0] != '{' {
		return run.Errorf(run.ECodeInvalid, "request must be the JSON object a %s run takes", s.Kind)
	}
	_, err := s.spec()
	return err
}

// Spec is a parsed schedule: when it fires next.
type Spec interface {
	// Next is the first firing strictly after t.
	Next(t time.Time) time.Time
}

// every fires at anchor + k·d.
type every struct {
	anchor time.Time
	d      time.Duration
}

func (e every) Next(t time.Time) time.Time {
	if t.Before(e.anchor) {
		return e.anchor
	}
	k := t.Sub(e.anchor)/e.d + 1
	return e.anchor.Add(k * e.d)
}

// zoned is a cron schedule read in a time zone.
type zoned struct {
	s   cron.Schedule
	loc *time.Location
}

func (z zoned) Next(t time.Time) time.Time { return z.s.Next(t.In(z.loc)) }

// parser reads five-field specs and descriptors, as cron.ParseStandard.
var parser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// spec parses the schedule's cron field.
func (s *Schedule) spec() (Spec, error) {
	loc, err := time.LoadLocation(s.Timezone)
	if err != nil {
		return nil, run.Errorf(run.ECodeInvalid, "timezone %q is not a known time zone", s.Timezone)
	}
	c := strings.TrimSpace(s.Cron)
	if rest, ok := strings.CutPrefix(c, "@every "); ok {
		d, err := time.ParseDuration(strings.TrimSpace(rest))
		if err != nil || d < time.Second || d%time.Second != 0 {
			return nil, run.Errorf(run.ECodeInvalid, "cron %q: @every takes a whole number of seconds, at least 1s (e.g. @every 30s)", s.Cron)
		}
		anchor := s.CreatedAt.Truncate(time.Second)
		return every{anchor: anchor, d: d}, nil
	}
	if strings.HasPrefix(c, "TZ=") || strings.HasPrefix(c, "CRON_TZ=") {
		return nil, run.Errorf(run.ECodeInvalid, "cron %q: give the time zone in the timezone field", s.Cron)
	}
	cs, err := parser.Parse(c)
	if err != nil {
		return nil, run.Errorf(run.ECodeInvalid, "cron %q is not a valid spec (minute hour day month weekday, @daily, or @every 30s): %v", s.Cron, err)
	}
	return zoned{s: cs, loc: loc}, nil
}

// Next is the schedule's first firing strictly after t (the zero time if
// its spec is bad, which Normalize refuses).
func (s *Schedule) Next(t time.Time) time.Time {
	sp, err := s.spec()
	if err != nil {
		return time.Time{}
	}
	return sp.Next(t)
}

// firingSpace names the runs of firings (uuid v5).
var firingSpace = uuid.MustParse("3f0f6c8e-8d7c-4c1e-9a55-6b1a2d3c4e5f")

// FiringRunID is the id of the run a firing of schedule id at t submits:
// the same on every replica, so that the firing happens once.
func FiringRunID(id string, t time.Time) string {
	return uuid.NewSHA1(firingSpace, []byte(fmt.Sprintf("%s@%d", id, t.UnixMilli()))).String()
}
