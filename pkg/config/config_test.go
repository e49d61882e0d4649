package config

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestPrecedenceFlagsOverEnvOverYAMLOverDefaults(t *testing.T) {
	y := filepath.Join(t.TempDir(), "ztrade.yaml")
	if err := os.WriteFile(y, []byte("db:\n  type: mysql\n  uri: root:secret@tcp(prod:3306)/x\n  readonly:\n    type: sqlite\n    uri: /data/yaml.db\n    user: fromyaml\n"), 0o600); err != nil {
		t.Fatal(err)
	}
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
	if c.Readonly.URI != "/data/env.db" || c.Readonly.DBType() != "sqlite" || c.Readonly.User != "fromyaml" {
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

// TestFlagForms: --name value and --name=value both work; --help and
// --version end with ErrHelp (exit 0) after listing the binary's own flags
// with their defaults.
func TestFlagForms(t *testing.T) {
	noYAML := env(map[string]string{"PYRUNNER_ZTRADE_CONFIG": "/nonexistent"})
	dir := t.TempDir()
	yml := dir + "/z.yaml"
	if err := os.WriteFile(yml, []byte("db:\n  readonly:\n    uri: /data/x.db\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"--ztrade-config", yml}, {"--ztrade-config=" + yml}} {
		c, err := Load("pyrunner-worker", args, env(nil), io.Discard)
		if err != nil || c.Readonly.URI != "/data/x.db" || c.ZtradeConfig != yml {
			t.Errorf("%v: %v %+v", args, err, c)
		}
	}
	var out strings.Builder
	if _, err := Load("pyrunner-worker", []string{"--help"}, noYAML, &out); !errors.Is(err, ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	if !strings.Contains(out.String(), "--work-dir") || !strings.Contains(out.String(), "(default \"warm\")") || strings.Contains(out.String(), "--jwt-secret") {
		t.Errorf("worker --help lists the wrong flags or no defaults:\n%s", out.String())
	}
	out.Reset()
	if _, err := Load("pyrunner-api", []string{"--help"}, noYAML, &out); !errors.Is(err, ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	if !strings.Contains(out.String(), "--jwt-secret") || strings.Contains(out.String(), "--work-dir") {
		t.Errorf("api --help lists the wrong flags:\n%s", out.String())
	}
	out.Reset()
	if _, err := Load("pyrunner-api", []string{"--version"}, noYAML, &out); !errors.Is(err, ErrHelp) || !strings.HasPrefix(out.String(), "pyrunner-api ") {
		t.Errorf("--version: %v %q", err, out.String())
	}
}

// TestDotenv: a .env in the working directory sits between the
// environment and ztrade.yaml.
func TestDotenv(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	if err := os.WriteFile(".env", []byte("# comment\nexport PYRUNNER_MAX_ROWS=7\nPYRUNNER_MAX_IMAGES='4'\nPYRUNNER_READONLY_URI=\"/from/dotenv.db\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("z.yaml", []byte("db:\n  readonly:\n    uri: /from/yaml.db\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load("pyrunner-worker", nil, env(map[string]string{"PYRUNNER_ZTRADE_CONFIG": "z.yaml", "PYRUNNER_MAX_IMAGES": "9"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxRows != 7 || c.MaxImages != 9 || c.Readonly.URI != "/from/dotenv.db" {
		t.Errorf(".env: rows %d (want 7 from .env), images %d (want 9 from env), uri %q (want .env over yaml)", c.MaxRows, c.MaxImages, c.Readonly.URI)
	}
}

// TestFileVariables: X_FILE gives X from a file (a Docker secret), below X
// itself; a X_FILE that cannot be read is an error naming it.
func TestFileVariables(t *testing.T) {
	f := filepath.Join(t.TempDir(), "redis.url")
	if err := os.WriteFile(f, []byte("redis://:s3cret@redis:6379/0\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	c, err := Load("t", nil, env(map[string]string{"PYRUNNER_ZTRADE_CONFIG": "/nonexistent", "PYRUNNER_REDIS_URL_FILE": f}), io.Discard)
	if err != nil || c.RedisURL != "redis://:s3cret@redis:6379/0" {
		t.Fatalf("from the file: %v %q", err, c.RedisURL)
	}
	c, err = Load("t", nil, env(map[string]string{"PYRUNNER_ZTRADE_CONFIG": "/nonexistent", "PYRUNNER_REDIS_URL_FILE": f, "PYRUNNER_REDIS_URL": "redis://direct:6379"}), io.Discard)
	if err != nil || c.RedisURL != "redis://direct:6379" {
		t.Fatalf("the variable itself wins: %v %q", err, c.RedisURL)
	}
	_, err = Load("t", nil, env(map[string]string{"PYRUNNER_ZTRADE_CONFIG": "/nonexistent", "PYRUNNER_REDIS_URL_FILE": "/nonexistent/url"}), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "PYRUNNER_REDIS_URL_FILE") {
		t.Fatalf("an unreadable file: %v", err)
	}
}

// TestURIAboveYAMLNamesItsType: ztrade.yaml says sqlite, the environment
// gives a MySQL DSN and no type: it is MySQL.
func TestURIAboveYAMLNamesItsType(t *testing.T) {
	y := filepath.Join(t.TempDir(), "ztrade.yaml")
	if err := os.WriteFile(y, []byte("db:\n  readonly:\n    type: sqlite\n    uri: /var/lib/pyrunner/klines/exchange.db\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load("t", nil, env(map[string]string{"PYRUNNER_ZTRADE_CONFIG": y, "PYRUNNER_READONLY_URI": "ro:pw@tcp(mysql:3306)/exchange"}), io.Discard)
	if err != nil || c.Readonly.DBType() != "mysql" {
		t.Fatalf("type %q (%v), want mysql", c.Readonly.DBType(), err)
	}
	c, _ = Load("t", nil, env(map[string]string{"PYRUNNER_ZTRADE_CONFIG": y, "PYRUNNER_READONLY_URI": "/data/other.db"}), io.Discard)
	if c.Readonly.DBType() != "sqlite" {
		t.Errorf("a path from the environment: %q, want sqlite", c.Readonly.DBType())
	}
}

func TestTrustedProxies(t *testing.T) {
	c, err := Load("t-api", nil, env(map[string]string{"PYRUNNER_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1,::1", "PYRUNNER_ZTRADE_CONFIG": "/nonexistent"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range c.TrustedProxyNets {
		got = append(got, n.String())
	}
	if strings.Join(got, " ") != "10.0.0.0/8 127.0.0.1/32 ::1/128" {
		t.Errorf("PYRUNNER_TRUSTED_PROXIES parsed as %v", got)
	}
	_, err = Load("t-api", nil, env(map[string]string{"PYRUNNER_TRUSTED_PROXIES": "nginx", "PYRUNNER_ZTRADE_CONFIG": "/nonexistent"}), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "PYRUNNER_TRUSTED_PROXIES") || !strings.Contains(err.Error(), `"nginx"`) {
		t.Errorf("a name where an address belongs: %v", err)
	}
}
