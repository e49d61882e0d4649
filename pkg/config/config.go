// Package config loads pyrunner's settings with one precedence everywhere:
// command-line flags, then environment variables, then the db.readonly
// section of ztrade.yaml, then defaults. Every setting has an environment
// name from the design contract and a flag of the same name in kebab case
// (PYRUNNER_MAX_ROWS → --max-rows).
package config

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
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
	Listen   string
	RedisURL string
	// RedisSentinelPassword is the sentinels' own password, when they
	// have one (the URL's is Redis's).
	RedisSentinelPassword string
	// RedisTLS are the CA and client certificate files of a rediss:// URL.
	RedisCAFile, RedisCertFile, RedisKeyFile string
	KeyPrefix                                string
	// RequireDurableRedis refuses to start on a Redis without persistence
	// or with an eviction policy.
	RequireDurableRedis bool
	Python              string
	Token               string
	// TrustedProxies (PYRUNNER_TRUSTED_PROXIES, comma-separated CIDRs or
	// addresses) are the peers whose X-Forwarded-For names the client;
	// TrustedProxyNets is the same, parsed by Load.
	TrustedProxies   string
	TrustedProxyNets []*net.IPNet

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
	MaxQueued           int
	KlineCacheMB        int
	MaxResultBytes      int
	Preload             string
	WorkDir             string
	EnvPassthrough      []string

	ScriptsPath             string
	APIPrefix               string
	LogsDir                 string
	StateDir                string
	TerminateTimeoutSeconds int
	StartWaitSeconds        float64
	EnvFile                 string

	JWTAuth          bool
	JWTSecret        string
	JWTIss           string
	JWTAud           string
	JWTLeewaySeconds int
	JWTRequireExp    bool
	JWTExpireSeconds int
	JWTAdminSecret   string
	ZtradeConfig     string
	Readonly         ReadonlyDB
	LogLevel         string
	LogFormat        string
	MetricsListen    string
}

// setting binds one environment name to a field, for the binaries in who.
type setting struct {
	env        string
	who        program
	def, usage string
	set        func(string) error
}

// program says which binary a setting belongs to (for its flags and
// --help; the environment is read by both).
type program int

const (
	api program = 1 << iota
	worker
	both = api | worker
)

// programOf maps a binary's name to its program.
func programOf(name string) program {
	switch {
	case strings.HasSuffix(name, "-api"):
		return api
	case strings.HasSuffix(name, "-worker"):
		return worker
	}
	return both
}

func (c *Config) settings() []setting {
	return []setting{
		{"PYRUNNER_LISTEN", api, ":9000", "HTTP listen address of the API", str(&c.Listen)},
		{"PYRUNNER_REDIS_URL", both, "redis://127.0.0.1:6379/0", "Redis URL (redis://, rediss://, redis-sentinel://)", str(&c.RedisURL)},
		{"PYRUNNER_REDIS_SENTINEL_PASSWORD", both, "", "the sentinels' own password (redis-sentinel:// URLs; the URL's password is redis's)", str(&c.RedisSentinelPassword)},
		{"PYRUNNER_REDIS_CA_FILE", both, "", "CA certificate (PEM) that signed redis's TLS certificate (rediss:// URLs; default: the system's roots)", str(&c.RedisCAFile)},
		{"PYRUNNER_REDIS_CERT_FILE", both, "", "client certificate (PEM) for a TLS redis that asks for one (with PYRUNNER_REDIS_KEY_FILE)", str(&c.RedisCertFile)},
		{"PYRUNNER_REDIS_KEY_FILE", both, "", "the client certificate's key (PEM)", str(&c.RedisKeyFile)},
		{"PYRUNNER_REQUIRE_DURABLE_REDIS", both, "false", "refuse to start when redis keeps nothing on disk or may evict keys (otherwise: a loud warning)", boolean(&c.RequireDurableRedis)},
		{"PYRUNNER_KEY_PREFIX", both, "pyrunner:", "prefix of every pyrunner key in Redis", str(&c.KeyPrefix)},
		{"PYRUNNER_PYTHON", both, "", "Python interpreter (default: the first python3 that imports numpy and pandas)", str(&c.Python)},
		{"PYRUNNER_TRUSTED_PROXIES", api, "", "reverse proxies (CIDRs or addresses, comma-separated) whose X-Forwarded-For names the client (empty: the TCP peer is the client)", str(&c.TrustedProxies)},
		{"PYRUNNER_TOKEN", api, "", "static bearer token granting research:run", str(&c.Token)},
		{"PYRUNNER_MAX_ROWS", both, "200000", "most K-line rows one load returns", i64(&c.MaxRows)},
		{"PYRUNNER_MAX_CODE_BYTES", api, "262144", "largest research code accepted (413 above)", num(&c.MaxCodeBytes)},
		{"PYRUNNER_MAX_OUTPUT_BYTES", worker, "4194304", "stdout/stderr kept per stream", num(&c.MaxOutputBytes)},
		{"PYRUNNER_DEFAULT_TIMEOUT_SEC", api, "60", "research time limit when the request gives none", num(&c.DefaultTimeoutSec)},
		{"PYRUNNER_MAX_TIMEOUT_SEC", api, "600", "largest research time limit", num(&c.MaxTimeoutSec)},
		{"PYRUNNER_MAX_WAIT_SEC", api, "660", "longest a request waits for a result before answering 202", num(&c.MaxWaitSec)},
		{"PYRUNNER_MAX_IMAGES", worker, "3", "images kept per research run", num(&c.MaxImages)},
		{"PYRUNNER_MAX_IMAGE_BYTES", worker, "1048576", "largest image kept", num(&c.MaxImageBytes)},
		{"PYRUNNER_RESULT_TTL", both, "168h", "how long run records and results are kept", dur(&c.ResultTTL)},
		{"PYRUNNER_LOG_TAIL_BYTES", both, "1048576", "script output kept in Redis per stream", num(&c.LogTailBytes)},
		{"PYRUNNER_RESEARCH_CONCURRENCY", worker, strconv.Itoa(runtime.NumCPU()), "research runs at once per worker", num(&c.ResearchConcurrency)},
		{"PYRUNNER_SCRIPT_CONCURRENCY", worker, "16", "script runs at once per worker", num(&c.ScriptConcurrency)},
		{"PYRUNNER_TASK_CHECK_INTERVAL", worker, "250ms", "how often an idle worker polls asynq's queue (new runs also wake idle workers at once)", dur(&c.TaskCheckInterval)},
		{"PYRUNNER_EXECUTOR", worker, "warm", "warm (forking zygote) or cold (fresh interpreter per run)", str(&c.Executor)},
		{"PYRUNNER_PRELOAD", worker, "", "comma-separated modules the warm zygote imports besides numpy, pandas, matplotlib", str(&c.Preload)},
		{"PYRUNNER_SANDBOX", worker, "auto", "auto, bwrap or none", str(&c.Sandbox)},
		{"PYRUNNER_MEMORY_LIMIT_MB", worker, "2048", "address-space limit per run in MiB (0: none)", num(&c.MemoryLimitMB)},
		{"PYRUNNER_MAX_FILE_MB", worker, "256", "largest file a run may write, in MiB", num(&c.MaxFileMB)},
		{"PYRUNNER_MAX_PROCS", worker, "256", "processes and threads user code may have (when the worker runs as root)", num(&c.MaxProcs)},
		{"PYRUNNER_MAX_QUEUED", api, "10000", "runs that may wait in one queue; past it submissions are 429 with Retry-After (0: no cap)", num(&c.MaxQueued)},
		{"PYRUNNER_KLINE_CACHE_MB", worker, "256", "memory for the worker's cache of K-lines already read (0: off)", num(&c.KlineCacheMB)},
		{"PYRUNNER_DISK_MB", worker, "512", "all a research run may write (files, /tmp, /dev/shm together), in MiB", num(&c.DiskMB)},
		{"PYRUNNER_MAX_RESULT_BYTES", worker, "16777216", "largest research result (its JSON); a larger one is ok:false", num(&c.MaxResultBytes)},
		{"PYRUNNER_WORK_DIR", worker, os.TempDir() + "/pyrunner", "where per-run working directories are made", str(&c.WorkDir)},
		{"PYRUNNER_ENV_PASSTHROUGH", worker, "", "comma-separated worker env names or globs (BINANCE_*) passed to user code", list(&c.EnvPassthrough)},
		{"SCRIPT_SCRIPTS_PATH", both, "./scripts", "scripts folder", str(&c.ScriptsPath)},
		{"SCRIPT_API_PREFIX", api, "/v1", "prefix of the script API", str(&c.APIPrefix)},
		{"SCRIPT_LOGS_DIR", worker, "", "where full script logs are written (default: <state dir>/logs)", str(&c.LogsDir)},
		{"SCRIPT_STATE_DIR", both, ".quant-script-api", "state folder", str(&c.StateDir)},
		{"SCRIPT_TERMINATE_TIMEOUT_SECONDS", both, "10", "grace between SIGTERM and SIGKILL", num(&c.TerminateTimeoutSeconds)},
		{"SCRIPT_START_WAIT_SECONDS", api, "5", "how long POST /v1/runs waits for a worker to start the script before answering queued", flt(&c.StartWaitSeconds)},
		{"SCRIPT_ENV_FILE", worker, "", "dotenv file whose variables every script gets (where API keys scripts used to inherit go)", str(&c.EnvFile)},
		{"SCRIPT_JWT_AUTH", api, "false", "require a JWT on protected endpoints", boolean(&c.JWTAuth)},
		{"SCRIPT_JWT_SECRET", api, "", "HS256 secret", str(&c.JWTSecret)},
		{"SCRIPT_JWT_ISS", api, "", "required iss claim", str(&c.JWTIss)},
		{"SCRIPT_JWT_AUD", api, "", "required aud claim", str(&c.JWTAud)},
		{"SCRIPT_JWT_REQUIRE_EXP", api, "true", "refuse JWTs without exp (false: accept tokens that never expire)", boolean(&c.JWTRequireExp)},
		{"SCRIPT_JWT_LEEWAY_SECONDS", api, "30", "clock leeway for exp and nbf", num(&c.JWTLeewaySeconds)},
		{"SCRIPT_JWT_EXPIRE_SECONDS", api, "3600", "lifetime of minted tokens", num(&c.JWTExpireSeconds)},
		{"SCRIPT_JWT_ADMIN_SECRET", api, "", "secret exchanged for an admin token", str(&c.JWTAdminSecret)},
		{"PYRUNNER_ZTRADE_CONFIG", worker, "/etc/ztrade/ztrade.yaml", "ztrade.yaml to read db.readonly from", str(&c.ZtradeConfig)},
		{"PYRUNNER_READONLY_TYPE", worker, "", "read-only DB type: mysql or sqlite", str(&c.Readonly.Type)},
		{"PYRUNNER_READONLY_URI", worker, "", "read-only DB URI (MySQL DSN or SQLite path)", str(&c.Readonly.URI)},
		{"PYRUNNER_READONLY_HOST", worker, "", "read-only MySQL host", str(&c.Readonly.Host)},
		{"PYRUNNER_READONLY_PORT", worker, "", "read-only MySQL port (3306)", num(&c.Readonly.Port)},
		{"PYRUNNER_READONLY_DATABASE", worker, "", "read-only MySQL database", str(&c.Readonly.Database)},
		{"PYRUNNER_READONLY_USER", worker, "", "read-only MySQL user", str(&c.Readonly.User)},
		{"PYRUNNER_READONLY_PASSWORD", worker, "", "read-only MySQL password", str(&c.Readonly.Password)},
		{"PYRUNNER_LOG_FORMAT", both, "text", "text or json (one JSON object a line)", str(&c.LogFormat)},
		{"PYRUNNER_METRICS_LISTEN", worker, "", "address the worker serves /metrics (Prometheus) and /healthz on, e.g. :9101 (off when empty)", str(&c.MetricsListen)},
		{"PYRUNNER_LOG_LEVEL", both, "info", "debug, info, warn or error", str(&c.LogLevel)},
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

func flt(p *float64) func(string) error {
	return func(v string) error { n, err := strconv.ParseFloat(v, 64); *p = n; return err }
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

// ErrHelp is returned by Load after --help or --version printed what was
// asked: the program should exit 0.
var ErrHelp = errors.New("help requested")

// Version is the build's version (its VCS revision, when built from a
// checkout), for --version.
func Version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := info.Main.Version
	for _, kv := range info.Settings {
		if kv.Key == "vcs.revision" {
			v = kv.Value
		}
	}
	return v
}

// Load reads the settings for program name (pyrunner-api or
// pyrunner-worker) with one precedence: flags (--name value or
// --name=value), the environment, a .env file in the working directory
// (as quant-script-api reads one), ztrade.yaml's db.readonly, defaults.
// Any variable X may instead be given as X_FILE, the path of a file that
// holds the value (a Docker secret): PYRUNNER_REDIS_URL_FILE.
// --help lists the program's own flags with their defaults; it and
// --version print to usageOut and return ErrHelp. Unknown flags and bad
// values are errors that name the setting.
func Load(name string, args []string, getenv func(string) string, usageOut io.Writer) (*Config, error) {
	c := &Config{}
	ss := c.settings()
	fs, err := c.parseFlags(name, ss, args, usageOut)
	if err != nil {
		return nil, err
	}
	dotenv, err := ReadDotenv(".env")
	if err != nil {
		return nil, err
	}
	src := &sources{flags: fs, getenv: getenv, dotenv: dotenv}
	path := c.ZtradeConfig
	if v, ok := src.get("PYRUNNER_ZTRADE_CONFIG"); ok {
		path = v
	}
	if err := c.readZtrade(path); err != nil {
		return nil, err
	}
	// A URI given above ztrade.yaml names its own type: the yaml's type
	// (say sqlite for the demo) must not bend a MySQL DSN from .env.
	if _, uri := src.get("PYRUNNER_READONLY_URI"); uri {
		if _, typ := src.get("PYRUNNER_READONLY_TYPE"); !typ {
			c.Readonly.Type = ""
		}
	}
	for _, s := range ss {
		if v, ok := src.get(s.env); ok {
			if err := s.set(v); err != nil {
				return nil, fmt.Errorf("config: %s=%q: %w", s.env, v, err)
			}
		}
	}
	if src.fileErr != nil {
		return nil, src.fileErr
	}
	c.ZtradeConfig = path
	if c.LogsDir == "" {
		c.LogsDir = c.StateDir + "/logs"
	}
	if err := c.check(); err != nil {
		return nil, err
	}
	return c, nil
}

// parseFlags sets every setting to its default and parses args as the
// flags of program name. --help and --version return ErrHelp.
func (c *Config) parseFlags(name string, ss []setting, args []string, usageOut io.Writer) (*pflag.FlagSet, error) {
	prog := programOf(name)
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(usageOut)
	fs.SortFlags = false
	for i := range ss {
		s := &ss[i]
		if err := s.set(s.def); err != nil {
			return nil, fmt.Errorf("config: default of %s: %w", s.env, err)
		}
		if s.who&prog != 0 {
			fs.String(FlagName(s.env), s.def, s.usage+" (env "+s.env+")")
		}
	}
	version := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(usageOut, "Usage of %s (every flag also reads its environment variable, then .env):\n%s", name, fs.FlagUsagesWrapped(100))
	}
	if err := fs.Parse(args); errors.Is(err, pflag.ErrHelp) {
		return nil, ErrHelp
	} else if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if *version {
		fmt.Fprintf(usageOut, "%s %s\n", name, Version())
		return nil, ErrHelp
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("config: unexpected argument %q", fs.Arg(0))
	}
	return fs, nil
}

// sources looks a setting up where Load's precedence says: a flag given,
// the environment, X_FILE, .env. A X_FILE that cannot be read is kept in
// fileErr.
type sources struct {
	flags   *pflag.FlagSet
	getenv  func(string) string
	dotenv  map[string]string
	fileErr error
}

func (src *sources) get(k string) (string, bool) {
	if f := src.flags.Lookup(FlagName(k)); f != nil && f.Changed {
		return f.Value.String(), true
	}
	if v := src.getenv(k); v != "" {
		return v, true
	}
	if f := src.getenv(k + "_FILE"); f != "" { // a Docker secret
		b, err := os.ReadFile(f)
		if err != nil {
			src.fileErr = errors.Join(src.fileErr, fmt.Errorf("config: %s_FILE: %w", k, err))
			return "", false
		}
		return strings.TrimRight(string(b), "\r\n"), true
	}
	v, ok := src.dotenv[k]
	return v, ok && v != ""
}

// check refuses values no setting may have.
func (c *Config) check() error {
	if c.ResearchConcurrency < 1 {
		return errors.New("config: PYRUNNER_RESEARCH_CONCURRENCY must be at least 1")
	}
	switch c.Executor {
	case "warm", "cold":
	default:
		return fmt.Errorf("config: PYRUNNER_EXECUTOR must be warm or cold, not %q", c.Executor)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return fmt.Errorf("config: PYRUNNER_LOG_FORMAT must be text or json, not %q", c.LogFormat)
	}
	switch c.Sandbox {
	case "auto", "bwrap", "none":
	default:
		return fmt.Errorf("config: PYRUNNER_SANDBOX must be auto, bwrap or none, not %q", c.Sandbox)
	}
	nets, err := parseNets(c.TrustedProxies)
	if err != nil {
		return fmt.Errorf("config: PYRUNNER_TRUSTED_PROXIES: %w", err)
	}
	c.TrustedProxyNets = nets
	return nil
}

// parseNets reads comma-separated CIDRs; a bare address is a network of
// that address alone.
func parseNets(list string) ([]*net.IPNet, error) {
	var nets []*net.IPNet
	for _, f := range strings.Split(list, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		if !strings.Contains(f, "/") {
			ip := net.ParseIP(f)
			if ip == nil {
				return nil, fmt.Errorf("%q is neither an address nor a CIDR", f)
			}
			bits := 8 * len(ip.To16())
			if ip.To4() != nil {
				ip, bits = ip.To4(), 32
			}
			nets = append(nets, &net.IPNet{IP: ip, Mask: net.CIDRMask(bits, bits)})
			continue
		}
		_, n, err := net.ParseCIDR(f)
		if err != nil {
			return nil, fmt.Errorf("%q is neither an address nor a CIDR", f)
		}
		nets = append(nets, n)
	}
	return nets, nil
}

// ReadDotenv reads a dotenv file as quant-script-api does: KEY=value
// lines, # comments and blank lines skipped, an optional "export ", and
// one pair of matching quotes around a value removed. A missing file is
// an empty map.
func ReadDotenv(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config: read %s: %w", path, err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		if k = strings.TrimSpace(k); !ok || k == "" {
			continue
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		out[k] = v
	}
	return out, nil
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

// SetupLogging makes slog write to stderr at the configured level: text
// lines, or one JSON object a line with PYRUNNER_LOG_FORMAT=json.
func (c *Config) SetupLogging(program string) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.LogLevel)); err != nil {
		lvl = slog.LevelInfo
	}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})
	if c.LogFormat == "json" {
		h = slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})
	}
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
