package run

import (
	"reflect"
	"testing"
	"time"
)

// TestFieldsRoundTrip: a record flattened to the store's hash fields and
// read back is the same record.
func TestFieldsRoundTrip(t *testing.T) {
	code := -9
	now := time.Now().UTC().Truncate(time.Microsecond)
	r := &Run{ID: "id", Kind: KindScript, Status: StatusRunning, CreatedAt: now, StartedAt: now, Worker: "h:1",
		ReturnCode: &code, Error: "e", Owner: "alice", StopRequested: true, Request: `{"a":1}`, Script: "a.py",
		Argv: []string{"python3", "-u", "a.py"}, PID: 42, StdoutPath: "/o", StderrPath: "/e"}
	got := FromFields(r.Fields())
	if !reflect.DeepEqual(got.Fields(), r.Fields()) || !got.CreatedAt.Equal(now) || *got.ReturnCode != code || got.PID != 42 {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, r)
	}
}

// TestMerge: a change replaces the fields it sets and nothing else.
func TestMerge(t *testing.T) {
	r := &Run{ID: "id", Kind: KindScript, Status: StatusStarting, Script: "a.py", Worker: "h:1"}
	r.Merge(&Run{Status: StatusRunning, PID: 7})
	if r.Status != StatusRunning || r.PID != 7 || r.Script != "a.py" || r.Worker != "h:1" || r.ID != "id" {
		t.Errorf("merged: %+v", r)
	}
}

// TestStatuses: every status is valid, and is either active or terminal.
func TestStatuses(t *testing.T) {
	terminal := 0
	for _, s := range Statuses {
		if !s.Valid() || s.Active() == s.Terminal() {
			t.Errorf("%s: valid %v, active %v, terminal %v", s, s.Valid(), s.Active(), s.Terminal())
		}
		if s.Terminal() {
			terminal++
		}
	}
	if terminal != len(TerminalStatuses) {
		t.Errorf("Statuses holds %d terminal statuses, TerminalStatuses %d", terminal, len(TerminalStatuses))
	}
	if Status("bogus").Valid() || Status("").Valid() {
		t.Error("an unknown status is valid")
	}
}
