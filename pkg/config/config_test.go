package config

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestPrecedenceFlagsOverEnvOverYAMLOverDefaults(t *testing.T) {
	y := filepath.Join(t.TempDir(), "ztrade.yaml")
	os.WriteFile(y, []byte("db:\n  type: mysql\n  uri: root:secret@tcp(prod:3306)/x\n  readonly:\n    type: sqlite\n    uri: /data/yaml.db\n    user: fromyaml\n"), 0o600)
	c, err := Load("t", []string{"--max-rows", "5"}, env(map[string]string{
		"PYRUNNER_ZTRADE_CONFIG": y, "PYRUNNER_MAX_ROWS": "7", "PYRUNNER_MAX_IMAGES": "9", "PYRUNNER_READONLY_URI": "/data/env.db",
	}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxRows != 5 {
		t.Errorf("flag should win: MaxRows = %d", c.MaxRows)
	}
	if c.MaxImages != 9 {
		t.Errorf("env should win over default: MaxImages = %d", c.MaxImages)
	}
	if c.Readonly.URI != "/data/env.db" || c.Readonly.Type != "sqlite" || c.Readonly.User != "fromyaml" {
		t.Errorf("readonly = %+v: env over yaml, yaml over default, and never db.uri", c.Readonly)
	}
	if c.MaxTimeoutSec != 600 || c.Listen != ":9000" || c.APIPrefix != "/v1" {
		t.Errorf("defaults wrong: %+v", c)
	}
}

func TestBadValuesNameTheSetting(t *testing.T) {
	_, err := Load("t", nil, env(map[string]string{"PYRUNNER_MAX_ROWS": "lots", "PYRUNNER_ZTRADE_CONFIG": "/nonexistent"}), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "PYRUNNER_MAX_ROWS") {
		t.Fatalf("err = %v", err)
	}
	_, err = Load("t", []string{"--executor", "lukewarm"}, env(map[string]string{"PYRUNNER_ZTRADE_CONFIG": "/nonexistent"}), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "PYRUNNER_EXECUTOR") {
		t.Fatalf("err = %v", err)
	}
}

func TestFlagNames(t *testing.T) {
	if FlagName("SCRIPT_SCRIPTS_PATH") != "scripts-path" || FlagName("PYRUNNER_MAX_ROWS") != "max-rows" {
		t.Fatal(FlagName("SCRIPT_SCRIPTS_PATH"), FlagName("PYRUNNER_MAX_ROWS"))
	}
}
