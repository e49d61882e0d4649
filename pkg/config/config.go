// Package config loads pyrunner's settings with one precedence everywhere:
// command-line flags, then environment variables, then the db.readonly
// section of ztrade.yaml, then defaults. Every setting has an environment
// name from the design contract and a flag of the same name in kebab case
// (PYRUNNER_MAX_ROWS → --max-rows).
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// ReadonlyDB is ztrade.yaml's db.readonly section.
type ReadonlyDB struct {
	Type     string `yaml:"type"`
	URI      string `yaml:"uri"`
	Host     string `yaml:"host"`
	Port     int    `yaml:"port"`
	Database string `yaml:"database"`
	User     string `yaml:"user"`
	Password string `yaml:"password"`
}

// Missing says what is lacking for a usable configuration, or "" when
// there is enough to connect.
func (c ReadonlyDB) Missing() string {
	if c.URI != "" {
		return ""
	}
	if c.Host != "" && c.Database != "" && c.User != "" {
		return ""
	}
	if c.Host != "" || c.Database != "" || c.User != "" {
		return "db.readonly needs uri, or host, database and user (PYRUNNER_READONLY_URI or PYRUNNER_READONLY_HOST/_DATABASE/_USER)"
	}
	return "no read-only K-line database configured: set db.readonly.uri in ztrade.yaml or PYRUNNER_READONLY_URI (plus PYRUNNER_READONLY_TYPE=mysql|sqlite)"
}

// DBType is "mysql" or "sqlite": the explicit type, else inferred from the
// URI ("@tcp(" → mysql), else mysql for split fields.
func (c ReadonlyDB) DBType() string {
	if t := strings.ToLower(c.Type); t != "" {
		return t
	}
	if c.URI == "" || strings.Contains(c.URI, "@tcp(") || strings.Contains(c.URI, "@unix(") {
		return "mysql"
	}
	return "sqlite"
}

// Config is every setting of the API and the worker.
type Config struct {
	Listen    string
	RedisURL  string
	KeyPrefix string
	Python    string
	Token     string

	MaxRows           int64
	MaxCodeBytes      int
	MaxOutputBytes    int
	DefaultTimeoutSec int
	MaxTimeoutSec     int
	MaxWaitSec        int
	MaxImages         int
	MaxImageBytes     int
	ResultTTL         time.Duration
	LogTailBytes      int

	ResearchConcurrency int
	ScriptConcurrency   int
	TaskCheckInterval   time.Duration
	Executor            string
	Sandbox             string
	MemoryLimitMB       int
	MaxFileMB           int
	MaxProcs            int
	DiskMB              int
	MaxResultBytes      int
	Preload             string
	WorkDir             string
	EnvPassthrough      []string

	ScriptsPath             string
	APIPrefix               string
	LogsDir                 string
	StateDir                string
	TerminateTimeoutSeconds int

	JWTAuth          bool
	JWTSecret        string
	JWTIss           string
	JWTAud           string
	JWTLeewaySeconds int
	JWTExpireSeconds int
	JWTAdminSecret   string
	ZtradeConfig     string
	Readonly         ReadonlyDB
	LogLevel         string
}

// setting binds one environment name to a field.
type setting struct {
	env, def, usage string
	set             func(string) error
}

func (c *Config) settings() []setting {
	return []setting{
		{"PYRUNNER_LISTEN", ":9000", "HTTP listen address of the API", str(&c.Listen)},
		{"PYRUNNER_REDIS_URL", "redis://127.0.0.1:6379/0", "Redis URL (redis://, rediss://, redis-sentinel://)", str(&c.RedisURL)},
		{"PYRUNNER_KEY_PREFIX", "pyrunner:", "prefix of every pyrunner key in Redis", str(&c.KeyPrefix)},
		{"PYRUNNER_PYTHON", "", "Python interpreter (default: the first python3 that imports numpy and pandas)", str(&c.Python)},
		{"PYRUNNER_TOKEN", "", "static bearer token granting research:run", str(&c.Token)},
		{"PYRUNNER_MAX_ROWS", "200000", "most K-line rows one load returns", i64(&c.MaxRows)},
		{"PYRUNNER_MAX_CODE_BYTES", "262144", "largest research code accepted (413 above)", num(&c.MaxCodeBytes)},
		{"PYRUNNER_MAX_OUTPUT_BYTES", "4194304", "stdout/stderr kept per stream", num(&c.MaxOutputBytes)},
		{"PYRUNNER_DEFAULT_TIMEOUT_SEC", "60", "research time limit when the request gives none", num(&c.DefaultTimeoutSec)},
		{"PYRUNNER_MAX_TIMEOUT_SEC", "600", "largest research time limit", num(&c.MaxTimeoutSec)},
		{"PYRUNNER_MAX_WAIT_SEC", "660", "longest a request waits for a result before answering 202", num(&c.MaxWaitSec)},
		{"PYRUNNER_MAX_IMAGES", "3", "images kept per research run", num(&c.MaxImages)},
		{"PYRUNNER_MAX_IMAGE_BYTES", "1048576", "largest image kept", num(&c.MaxImageBytes)},
		{"PYRUNNER_RESULT_TTL", "168h", "how long run records and results are kept", dur(&c.ResultTTL)},
		{"PYRUNNER_LOG_TAIL_BYTES", "1048576", "script output kept in Redis per stream", num(&c.LogTailBytes)},
		{"PYRUNNER_RESEARCH_CONCURRENCY", strconv.Itoa(runtime.NumCPU()), "research runs at once per worker", num(&c.ResearchConcurrency)},
		{"PYRUNNER_SCRIPT_CONCURRENCY", "16", "script runs at once per worker", num(&c.ScriptConcurrency)},
		{"PYRUNNER_TASK_CHECK_INTERVAL", "250ms", "how often an idle worker polls asynq's queue (new runs also wake idle workers at once)", dur(&c.TaskCheckInterval)},
		{"PYRUNNER_EXECUTOR", "warm", "warm (forking zygote) or cold (fresh interpreter per run)", str(&c.Executor)},
		{"PYRUNNER_PRELOAD", "", "comma-separated modules the warm zygote imports besides numpy, pandas, matplotlib", str(&c.Preload)},
		{"PYRUNNER_SANDBOX", "auto", "auto, bwrap or none", str(&c.Sandbox)},
		{"PYRUNNER_MEMORY_LIMIT_MB", "2048", "address-space limit per run in MiB (0: none)", num(&c.MemoryLimitMB)},
		{"PYRUNNER_MAX_FILE_MB", "256", "largest file a run may write, in MiB", num(&c.MaxFileMB)},
		{"PYRUNNER_MAX_PROCS", "256", "processes and threads user code may have (when the worker runs as root)", num(&c.MaxProcs)},
		{"PYRUNNER_DISK_MB", "512", "all a research run may write (files, /tmp, /dev/shm together), in MiB", num(&c.DiskMB)},
		{"PYRUNNER_MAX_RESULT_BYTES", "16777216", "largest research result (its JSON); a larger one is ok:false", num(&c.MaxResultBytes)},
		{"PYRUNNER_WORK_DIR", os.TempDir() + "/pyrunner", "where per-run working directories are made", str(&c.WorkDir)},
		{"PYRUNNER_ENV_PASSTHROUGH", "", "comma-separated worker env names passed to user code", list(&c.EnvPassthrough)},
		{"SCRIPT_SCRIPTS_PATH", "./scripts", "scripts folder", str(&c.ScriptsPath)},
		{"SCRIPT_API_PREFIX", "/v1", "prefix of the script API", str(&c.APIPrefix)},
		{"SCRIPT_LOGS_DIR", "", "where full script logs are written (default: <state dir>/logs)", str(&c.LogsDir)},
		{"SCRIPT_STATE_DIR", ".quant-script-api", "state folder", str(&c.StateDir)},
		{"SCRIPT_TERMINATE_TIMEOUT_SECONDS", "10", "grace between SIGTERM and SIGKILL", num(&c.TerminateTimeoutSeconds)},
		{"SCRIPT_JWT_AUTH", "false", "require a JWT on protected endpoints", boolean(&c.JWTAuth)},
		{"SCRIPT_JWT_SECRET", "", "HS256 secret", str(&c.JWTSecret)},
		{"SCRIPT_JWT_ISS", "", "required iss claim", str(&c.JWTIss)},
		{"SCRIPT_JWT_AUD", "", "required aud claim", str(&c.JWTAud)},
		{"SCRIPT_JWT_LEEWAY_SECONDS", "30", "clock leeway for exp and nbf", num(&c.JWTLeewaySeconds)},
		{"SCRIPT_JWT_EXPIRE_SECONDS", "3600", "lifetime of minted tokens", num(&c.JWTExpireSeconds)},
		{"SCRIPT_JWT_ADMIN_SECRET", "", "secret exchanged for an admin token", str(&c.JWTAdminSecret)},
		{"PYRUNNER_ZTRADE_CONFIG", "/etc/ztrade/ztrade.yaml", "ztrade.yaml to read db.readonly from", str(&c.ZtradeConfig)},
		{"PYRUNNER_READONLY_TYPE", "", "read-only DB type: mysql or sqlite", str(&c.Readonly.Type)},
		{"PYRUNNER_READONLY_URI", "", "read-only DB URI (MySQL DSN or SQLite path)", str(&c.Readonly.URI)},
		{"PYRUNNER_READONLY_HOST", "", "read-only MySQL host", str(&c.Readonly.Host)},
		{"PYRUNNER_READONLY_PORT", "", "read-only MySQL port (3306)", num(&c.Readonly.Port)},
		{"PYRUNNER_READONLY_DATABASE", "", "read-only MySQL database", str(&c.Readonly.Database)},
		{"PYRUNNER_READONLY_USER", "", "read-only MySQL user", str(&c.Readonly.User)},
		{"PYRUNNER_READONLY_PASSWORD", "", "read-only MySQL password", str(&c.Readonly.Password)},
		{"PYRUNNER_LOG_LEVEL", "info", "debug, info, warn or error", str(&c.LogLevel)},
	}
}

func str(p *string) func(string) error { return func(v string) error { *p = v; return nil } }

func num(p *int) func(string) error {
	return func(v string) error {
		if v == "" {
			*p = 0
			return nil
		}
		n, err := strconv.Atoi(v)
		*p = n
		return err
	}
}

func i64(p *int64) func(string) error {
	return func(v string) error { n, err := strconv.ParseInt(v, 10, 64); *p = n; return err }
}

func boolean(p *bool) func(string) error {
	return func(v string) error { b, err := strconv.ParseBool(v); *p = b; return err }
}

// dur takes a Go duration ("90s", "168h") or a bare number of seconds.
func dur(p *time.Duration) func(string) error {
	return func(v string) error {
		if n, err := strconv.ParseFloat(v, 64); err == nil {
			*p = time.Duration(n * float64(time.Second))
			return nil
		}
		d, err := time.ParseDuration(v)
		*p = d
		return err
	}
}

func list(p *[]string) func(string) error {
	return func(v string) error {
		*p = nil
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				*p = append(*p, s)
			}
		}
		return nil
	}
}

// FlagName turns PYRUNNER_MAX_ROWS into max-rows (and SCRIPT_SCRIPTS_PATH
// into scripts-path, as quant-script-api's --scripts-path).
func FlagName(env string) string {
	n := strings.TrimPrefix(strings.TrimPrefix(env, "PYRUNNER_"), "SCRIPT_")
	return strings.ReplaceAll(strings.ToLower(n), "_", "-")
}

// Load reads the settings for program name from args and getenv. Unknown
// flags and bad values are errors that name the setting.
func Load(name string, args []string, getenv func(string) string, usageOut io.Writer) (*Config, error) {
	c := &Config{}
	ss := c.settings()
	for _, s := range ss {
		if err := s.set(s.def); err != nil {
			return nil, fmt.Errorf("config: default of %s: %w", s.env, err)
		}
	}
	// ztrade.yaml first (lowest of the set sources), then env, then flags.
	path := getenv("PYRUNNER_ZTRADE_CONFIG")
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(usageOut)
	for _, a := range args { // the config path may come as a flag too
		if v, ok := strings.CutPrefix(a, "--ztrade-config="); ok {
			path = v
		}
	}
	if path == "" {
		path = c.ZtradeConfig
	}
	if err := c.readZtrade(path); err != nil {
		return nil, err
	}
	for _, s := range ss {
		if v, ok := lookup(getenv, s.env); ok {
			if err := s.set(v); err != nil {
				return nil, fmt.Errorf("config: %s=%q: %w", s.env, v, err)
			}
		}
		s := s
		fs.Func(FlagName(s.env), s.usage+" (env "+s.env+")", func(v string) error {
			if err := s.set(v); err != nil {
				return fmt.Errorf("%s: %w", s.env, err)
			}
			return nil
		})
	}
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("config: unexpected argument %q", fs.Arg(0))
	}
	c.ZtradeConfig = path
	if c.LogsDir == "" {
		c.LogsDir = c.StateDir + "/logs"
	}
	if c.ResearchConcurrency < 1 {
		return nil, errors.New("config: PYRUNNER_RESEARCH_CONCURRENCY must be at least 1")
	}
	switch c.Executor {
	case "warm", "cold":
	default:
		return nil, fmt.Errorf("config: PYRUNNER_EXECUTOR must be warm or cold, not %q", c.Executor)
	}
	switch c.Sandbox {
	case "auto", "bwrap", "none":
	default:
		return nil, fmt.Errorf("config: PYRUNNER_SANDBOX must be auto, bwrap or none, not %q", c.Sandbox)
	}
	return c, nil
}

func lookup(getenv func(string) string, k string) (string, bool) {
	v := getenv(k)
	return v, v != ""
}

// readZtrade fills Readonly from ztrade.yaml's db.readonly section. A
// missing file is fine (the environment may configure everything).
func (c *Config) readZtrade(path string) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("config: read %s: %w", path, err)
	}
	var doc struct {
		DB struct {
			Readonly ReadonlyDB `yaml:"readonly"`
		} `yaml:"db"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("config: parse %s: %w", path, err)
	}
	c.Readonly = doc.DB.Readonly
	return nil
}

// SetupLogging makes slog write text lines to stderr at the configured level.
func (c *Config) SetupLogging(program string) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.LogLevel)); err != nil {
		lvl = slog.LevelInfo
	}
	h := slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})
	slog.SetDefault(slog.New(h).With("program", program))
}

// RedactURL hides the password of a URL for logs.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable url)"
	}
	return u.Redacted()
}
