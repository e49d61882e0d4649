// Package research is the research run's contract with python-runner's
// clients: the request body, its validation, and the response body, all in
// the seed's camelCase. It is pure logic, shared by the API (which
// validates and answers) and the worker (which fills the result).
package research

import (
	_ "embed"
	"encoding/json"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/ztrade/pyrunner/pkg/kline/binsize"
	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/wire"
)

// Request is the body of POST /v1/research/run, exactly as python-runner
// takes it, plus Wait.
type Request struct {
	wire.ResearchRequest

	missing []string // required fields the body lacked (start, end)
}

// UnmarshalJSON reads a body as leniently as python-runner's pydantic
// model: binSize may be left out (1m), and start, end, limit and
// timeoutSec may come as numeric strings or integral floats
// ("1735689600", 10.0). A missing start or end is remembered for
// Normalize to refuse.
func (r *Request) UnmarshalJSON(b []byte) error {
	var raw struct {
		Exchange   string          `json:"exchange"`
		Symbol     string          `json:"symbol"`
		BinSize    *string         `json:"binSize"`
		Start      json.RawMessage `json:"start"`
		End        json.RawMessage `json:"end"`
		Limit      json.RawMessage `json:"limit"`
		TimeoutSec json.RawMessage `json:"timeoutSec"`
		Code       string          `json:"code"`
		Wait       *bool           `json:"wait"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	*r = Request{}
	r.Exchange, r.Symbol, r.BinSize, r.Code, r.Wait = raw.Exchange, raw.Symbol, "1m", raw.Code, raw.Wait
	if raw.BinSize != nil {
		r.BinSize = *raw.BinSize
	}
	for _, f := range []struct {
		name     string
		raw      json.RawMessage
		dst      *int64
		required bool
	}{{"start", raw.Start, &r.Start, true}, {"end", raw.End, &r.End, true}, {"limit", raw.Limit, &r.Limit, false}} {
		n, ok, err := lenientInt(f.name, f.raw)
		switch {
		case err != nil:
			return err
		case ok:
			*f.dst = n
		case f.required:
			r.missing = append(r.missing, f.name)
		}
	}
	n, _, err := lenientInt("timeoutSec", raw.TimeoutSec)
	if err != nil {
		return err
	}
	r.TimeoutSec = int(n)
	return nil
}

// lenientInt reads an integer as pydantic does: a JSON integer, an
// integral float, or a string holding one. ok is false when the field is
// absent or null.
func lenientInt(name string, raw json.RawMessage) (n int64, ok bool, err error) {
	s := strings.TrimSpace(string(raw))
	if s == "" || s == "null" {
		return 0, false, nil
	}
	if unq, err := strconv.Unquote(s); err == nil && strings.HasPrefix(s, `"`) {
		s = strings.TrimSpace(unq)
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return n, true, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f != math.Trunc(f) || math.Abs(f) > 1<<62 {
		return 0, false, run.Errorf(run.ECodeInvalid, "%s must be an integer, not %s", name, raw)
	}
	return int64(f), true, nil
}

// Environment is what research code sees, for people and models alike:
// the README says it in these words (TestREADMESaysTheEnvironment), and
// the MCP endpoint serves it as a resource.
//
//go:embed environment.md
var Environment string

// Limits are the server settings validation needs.
type Limits struct {
	MaxCodeBytes      int
	DefaultTimeoutSec int
	MaxTimeoutSec     int
	MaxRows           int64
}

var (
	exchangeRe = regexp.MustCompile(`^[A-Za-z0-9-]+$`)
	symbolRe   = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
)

// Normalize validates r and fills its defaults: timeout (0 → default,
// above the maximum → the maximum), limit (0 or above MaxRows → MaxRows)
// and end (0 → now). It returns warnings for values it changed, and a
// *run.Error (invalid or too large) for input it refuses.
func (r *Request) Normalize(l Limits, now time.Time) (warnings []string, err error) {
	switch {
	case strings.TrimSpace(r.Exchange) == "":
		return nil, run.Errorf(run.ECodeInvalid, "exchange is required")
	case strings.TrimSpace(r.Symbol) == "":
		return nil, run.Errorf(run.ECodeInvalid, "symbol is required")
	case strings.TrimSpace(r.BinSize) == "":
		return nil, run.Errorf(run.ECodeInvalid, "binSize is required")
	case strings.TrimSpace(r.Code) == "":
		return nil, run.Errorf(run.ECodeInvalid, "code is required")
	case len(r.missing) > 0:
		verb := " is"
		if len(r.missing) > 1 {
			verb = " are"
		}
		return nil, run.Errorf(run.ECodeInvalid, "%s%s required (unix seconds)", strings.Join(r.missing, " and "), verb)
	}
	if err := ValidateMarket(r.Exchange, r.Symbol, r.BinSize); err != nil {
		return nil, err
	}
	switch {
	case r.Limit < 0:
		return nil, run.Errorf(run.ECodeInvalid, "limit must not be negative (got %d)", r.Limit)
	case r.TimeoutSec < 0:
		return nil, run.Errorf(run.ECodeInvalid, "timeoutSec must not be negative (got %d)", r.TimeoutSec)
	case r.Start < 0 || r.End < 0:
		return nil, run.Errorf(run.ECodeInvalid, "start and end must be unix seconds, not negative")
	case l.MaxCodeBytes > 0 && len(r.Code) > l.MaxCodeBytes:
		return nil, run.Errorf(run.ECodeTooLarge, "code is %d bytes, over the limit of %d bytes", len(r.Code), l.MaxCodeBytes)
	}
	if r.End == 0 {
		r.End = now.Unix()
	}
	if r.Start > r.End {
		return nil, run.Errorf(run.ECodeInvalid, "start (%d) is after end (%d)", r.Start, r.End)
	}
	if r.TimeoutSec == 0 {
		r.TimeoutSec = l.DefaultTimeoutSec
	}
	if l.MaxTimeoutSec > 0 && r.TimeoutSec > l.MaxTimeoutSec {
		warnings = append(warnings, "timeoutSec lowered to the server maximum of "+itoa(l.MaxTimeoutSec))
		r.TimeoutSec = l.MaxTimeoutSec
	}
	if r.Limit == 0 || (l.MaxRows > 0 && r.Limit > l.MaxRows) {
		if r.Limit > l.MaxRows {
			warnings = append(warnings, "limit lowered to the server maximum of "+itoa(int(l.MaxRows))+" rows")
		}
		r.Limit = l.MaxRows
	}
	return warnings, nil
}

// ValidateMarket checks the names that make up a K-line table name, for
// requests and for load_kline calls from user code alike.
func ValidateMarket(exchange, symbol, bin string) error {
	switch {
	case !exchangeRe.MatchString(exchange):
		return run.Errorf(run.ECodeInvalid, "exchange %q must match ^[A-Za-z0-9-]+$", exchange)
	case !symbolRe.MatchString(symbol):
		return run.Errorf(run.ECodeInvalid, "symbol %q must match ^[A-Za-z0-9_-]+$", symbol)
	}
	if _, err := binsize.Parse(bin); err != nil {
		return run.Errorf(run.ECodeInvalid, "%v", err)
	}
	return nil
}

func itoa(n int) string { return strconv.Itoa(n) }

// NewResponse combines a run record and its result (nil while pending).
func NewResponse(r *run.Run, res *wire.ResearchResult, poll string) wire.ResearchResponse {
	return wire.ResearchResponse{
		ResearchResult: res,
		ID:             r.ID,
		Status:         string(r.Status),
		CreatedAt:      run.TimePtr(r.CreatedAt),
		StartedAt:      run.TimePtr(r.StartedAt),
		FinishedAt:     run.TimePtr(r.FinishedAt),
		Poll:           poll,
	}
}

// Failure builds the result of a run that ended without user output, e.g.
// an unknown market, a lost worker or a cancel.
func Failure(msg string, meta *wire.Meta) *wire.ResearchResult {
	return &wire.ResearchResult{OK: false, Error: &msg, Result: json.RawMessage("null"), Meta: meta, Images: []wire.Image{}}
}

// Stored is what the run record keeps of a research request: the
// normalized request and the warnings normalizing it gave, which the
// worker puts in meta.warnings.
type Stored struct {
	Request  Request  `json:"request"`
	Warnings []string `json:"warnings,omitempty"`
}
