package executor

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/ztrade/pyrunner/pkg/frame"
)

// goFields lists the JSON fields of a message struct (embedded structs
// flattened, as encoding/json does) and which of them may be left out.
func goFields(t reflect.Type) (fields, optional []string) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if f.Anonymous && tag == "" {
			ff, oo := goFields(f.Type)
			fields, optional = append(fields, ff...), append(optional, oo...)
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		fields = append(fields, name)
		if strings.Contains(opts, "omitempty") {
			optional = append(optional, name)
		}
	}
	return fields, optional
}

// TestProtocolMirror: python/protocol.py names the same messages with the
// same fields as this package's message structs, and a frame's columns as
// pkg/frame does.
func TestProtocolMirror(t *testing.T) {
	py, err := FindPython("")
	if err != nil {
		t.Fatalf("need a Python: %v", err)
	}
	dir, err := filepath.Abs("../../python")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(py, "-c", "import json, sys; sys.path.insert(0, sys.argv[1]); import protocol; print(json.dumps(protocol.mirror()))", dir).Output()
	if err != nil {
		t.Fatalf("python/protocol.py: %v", err)
	}
	var mirror struct {
		Fields   map[string][]string `json:"fields"`
		Optional map[string][]string `json:"optional"`
		Isolate  []string            `json:"isolate"`
		// A frame's wire columns, in order.
		FrameColumns []frame.Column `json:"frameColumns"`
	}
	if err := json.Unmarshal(out, &mirror); err != nil {
		t.Fatal(err)
	}
	for kind, msg := range messages {
		fields, optional := goFields(reflect.TypeOf(msg))
		if !sameSet(fields, mirror.Fields[kind]) {
			t.Errorf("%s: Go has fields %v, python/protocol.py %v", kind, fields, mirror.Fields[kind])
		}
		if !sameSet(optional, mirror.Optional[kind]) {
			t.Errorf("%s: Go may leave out %v, python/protocol.py %v", kind, optional, mirror.Optional[kind])
		}
	}
	for kind := range mirror.Fields {
		if _, ok := messages[kind]; !ok {
			t.Errorf("python/protocol.py has a message %q Go does not know", kind)
		}
	}
	if iso, _ := goFields(reflect.TypeOf(isolateMsg{})); !sameSet(iso, mirror.Isolate) {
		t.Errorf("isolate: Go has %v, python/protocol.py %v", iso, mirror.Isolate)
	}
	if !slices.Equal(frame.Columns, mirror.FrameColumns) {
		t.Errorf("frame columns: Go has %v, python/protocol.py %v", frame.Columns, mirror.FrameColumns)
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// TestDecodeStrictRefusesUnknownFields: a field one side added alone is
// an error, not silently dropped.
func TestDecodeStrictRefusesUnknownFields(t *testing.T) {
	var m exitMsg
	if err := decodeStrict([]byte(`{"op":"exit","pid":3,"code":-9}`), &m); err != nil || m.PID != 3 || m.Code != -9 {
		t.Fatalf("known fields: %+v, %v", m, err)
	}
	if err := decodeStrict([]byte(`{"op":"exit","pid":3,"status":1}`), &m); err == nil {
		t.Fatal("an unknown field was accepted")
	}
}
