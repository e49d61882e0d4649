// Command pyrunner is the command line of pyrunner, on pkg/client: run
// research snippets, start, follow and stop scripts, read logs, list runs.
// It talks to the API at PYRUNNER_URL (http://127.0.0.1:9000) with
// PYRUNNER_TOKEN, when set, as its bearer token.
package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/ztrade/pyrunner/pkg/auth"
	"github.com/ztrade/pyrunner/pkg/client"
)

// exitError ends the command with a status (a failed snippet is 1, a
// followed script its own return code) after what was printed.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := rootCmd().ExecuteContext(ctx)
	stop()
	var ee exitError
	switch {
	case errors.As(err, &ee):
		os.Exit(ee.code)
	case err != nil:
		fmt.Fprintln(os.Stderr, "pyrunner:", err)
		os.Exit(2)
	}
}

func newClient() *client.Client {
	url := os.Getenv("PYRUNNER_URL")
	if url == "" {
		url = "http://127.0.0.1:9000"
	}
	return client.New(url, client.WithToken(os.Getenv("PYRUNNER_TOKEN")))
}

func rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "pyrunner",
		Short: "Run research code and trading scripts on a pyrunner stack",
		Long: `pyrunner talks to the pyrunner API at $PYRUNNER_URL (default http://127.0.0.1:9000),
sending $PYRUNNER_TOKEN, when set, as its bearer token.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(researchCmd(), runCmd(), logsCmd(), stopCmd(), lsCmd(), scriptsCmd(), schedulesCmd(), tokenCmd())
	return root
}

// parseTime takes unix seconds, "2006-01-02 15:04:05" (UTC, as
// ztrade-mcp), "2006-01-02" or RFC 3339.
func parseTime(s string) (int64, error) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return n, nil
	}
	for _, layout := range []string{"2006-01-02 15:04:05", "2006-01-02T15:04:05", time.RFC3339, "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.Unix(), nil
		}
	}
	return 0, fmt.Errorf("%q is not a time (unix seconds, 2006-01-02 15:04:05 or RFC 3339)", s)
}

// waiting shows an elapsed-time line on a terminal until done is called;
// when stderr is not a terminal it shows nothing.
func waiting(what string) (done func()) {
	if !term.IsTerminal(int(os.Stderr.Fd())) {
		return func() {}
	}
	stop := make(chan struct{})
	finished := make(chan struct{})
	began := time.Now()
	go func() {
		defer close(finished)
		frames := `|/-\`
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				fmt.Fprint(os.Stderr, "\r\033[K")
				return
			case <-t.C:
				fmt.Fprintf(os.Stderr, "\r%c %s %.1fs", frames[i%4], what, time.Since(began).Seconds())
			}
		}
	}()
	return func() { close(stop); <-finished }
}

func researchCmd() *cobra.Command {
	var req client.ResearchRequest
	var start, end, imagesDir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "research [flags] FILE|-",
		Short: "Run a research snippet against K-lines and print its output and result",
		Long: `research sends the Python in FILE (or stdin, for -) to POST /v1/research/run and
waits for it. It prints the run's stdout, then its result as JSON; stderr goes to
stderr. It exits 1 when the snippet failed (ok: false).`,
		Example: `  echo 'result = {"rows": len(df), "last": df.close.iloc[-1]}' | \
    pyrunner research --exchange binance --symbol BTCUSDT --bin-size 1h \
      --start '2025-01-01 00:00:00' --end '2025-01-02 00:00:00' -
  pyrunner research --symbol ETHUSDT --start 1735689600 --end 1735776000 --images charts/ plot.py
  pyrunner research --json --symbol BTCUSDT --start 1735689600 --end 1735776000 snippet.py`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if req.Code, err = readCode(cmd, args[0]); err != nil {
				return err
			}
			if req.Start, err = parseTime(start); err != nil {
				return fmt.Errorf("--start: %w", err)
			}
			if req.End, err = parseTime(end); err != nil {
				return fmt.Errorf("--end: %w", err)
			}
			res, err := research(cmd.Context(), req)
			if err != nil {
				return err
			}
			if imagesDir != "" {
				if err := saveImages(imagesDir, res.Images); err != nil {
					return err
				}
			}
			printResearch(cmd, res, asJSON)
			if !res.Succeeded() {
				return exitError{1}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Exchange, "exchange", "binance", "exchange")
	f.StringVar(&req.Symbol, "symbol", "", "symbol, e.g. BTCUSDT (required)")
	f.StringVar(&req.BinSize, "bin-size", "1m", "candle size: a number plus s|m|h|d|w")
	f.StringVar(&start, "start", "", "first candle: unix seconds, '2006-01-02 15:04:05' (UTC) or RFC 3339 (required)")
	f.StringVar(&end, "end", "", "last candle, inclusive (required)")
	f.Int64Var(&req.Limit, "limit", 0, "most rows (0: the server's maximum)")
	f.IntVar(&req.TimeoutSec, "timeout", 0, "time limit in seconds (0: the server's default)")
	f.BoolVar(&asJSON, "json", false, "print the whole response as JSON")
	f.StringVar(&imagesDir, "images", "", "save the run's charts into this folder")
	required(cmd, "symbol", "start", "end")
	return cmd
}

// readCode reads the snippet in file, or stdin for "-".
func readCode(cmd *cobra.Command, file string) (string, error) {
	var code []byte
	var err error
	if file == "-" {
		code, err = io.ReadAll(cmd.InOrStdin())
	} else {
		code, err = os.ReadFile(file)
	}
	return string(code), err
}

// research runs req and waits for it to finish, past the API's wait cap.
func research(ctx context.Context, req client.ResearchRequest) (*client.ResearchResult, error) {
	done := waiting("running")
	defer done()
	res, err := newClient().Research(ctx, req)
	for err == nil && !res.Finished() {
		res, err = newClient().ResearchRun(ctx, res.ID, 60*time.Second)
	}
	return res, err
}

// printResearch prints a finished run: its stdout, its stderr to
// stderr, then its result (or its error); or all of it as JSON.
func printResearch(cmd *cobra.Command, res *client.ResearchResult, asJSON bool) {
	out := cmd.OutOrStdout()
	if asJSON {
		b, _ := json.MarshalIndent(res, "", "  ")
		fmt.Fprintln(out, string(b))
		return
	}
	fmt.Fprint(out, res.Stdout)
	fmt.Fprint(cmd.ErrOrStderr(), res.Stderr)
	if res.Succeeded() {
		var b bytes.Buffer
		if json.Indent(&b, res.Result, "", "  ") != nil {
			b.Reset()
			b.Write(res.Result) // not JSON after all: as it came
		}
		fmt.Fprintln(out, b.String())
	} else if res.Error != nil {
		fmt.Fprintln(cmd.ErrOrStderr(), "error:", *res.Error)
	}
}

func saveImages(dir string, images []client.Image) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for i, img := range images {
		b, err := base64.StdEncoding.DecodeString(img.Data)
		if err != nil {
			return fmt.Errorf("image %d: %w", i+1, err)
		}
		name := filepath.Base(img.Name)
		if name == "" || name == "." || name == "/" {
			name = fmt.Sprintf("image-%d.png", i+1)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return err
		}
		fmt.Fprintln(os.Stderr, "saved", p)
	}
	return nil
}

// follow prints a run's output as it comes and returns its final record.
func follow(ctx context.Context, cmd *cobra.Command, id, stream string) (*client.Run, error) {
	return newClient().Follow(ctx, id, stream, func(st, text string) {
		w := cmd.OutOrStdout()
		if st == "stderr" {
			w = cmd.ErrOrStderr()
		}
		fmt.Fprint(w, text)
	})
}

// exitOf is the CLI's exit status for a followed run.
func exitOf(r *client.Run) error {
	switch {
	case r.Status == "succeeded":
		return nil
	case r.ReturnCode != nil && *r.ReturnCode > 0:
		return exitError{*r.ReturnCode}
	}
	return exitError{1}
}

func runCmd() *cobra.Command {
	var req client.ScriptRequest
	var doFollow bool
	var env []string
	var restart client.RestartPolicy
	cmd := &cobra.Command{
		Use:   "run SCRIPT [flags] [-- args...]",
		Short: "Start a script of the scripts folder",
		Long: `run starts SCRIPT (a path under the scripts folder) with args and prints its run id.
With --follow it streams the script's output until it ends, and exits with the
script's status.`,
		Example: `  pyrunner run hello.py --follow -- --foo bar
  pyrunner run strategies/grid.py --env SYMBOL=BTCUSDT --duplicate
  pyrunner run bots/maker.py --restart on-failure --max-restarts 10`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Script, req.Args = args[0], args[1:]
			for _, kv := range env {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return fmt.Errorf("--env %q: want NAME=value", kv)
				}
				if req.Env == nil {
					req.Env = map[string]string{}
				}
				req.Env[k] = v
			}
			if restart.Policy != "" {
				req.Restart = &restart
			}
			r, err := newClient().Start(cmd.Context(), req)
			if err != nil {
				return err
			}
			if !doFollow {
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", r.RunID, r.Status)
				return nil
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "run %s %s\n", r.RunID, r.Status)
			end, err := follow(cmd.Context(), cmd, r.RunID, "both")
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "run %s %s\n", end.RunID, end.Status)
			return exitOf(end)
		},
	}
	cmd.Flags().BoolVarP(&doFollow, "follow", "f", false, "stream the output until the script ends, and exit with its status")
	cmd.Flags().BoolVar(&req.Duplicate, "duplicate", false, "start even if a run of this script is active")
	cmd.Flags().StringArrayVar(&env, "env", nil, "NAME=value for the script's environment (repeatable)")
	cmd.Flags().StringVar(&req.Cwd, "cwd", "", "working directory, under the scripts folder")
	cmd.Flags().IntVar(&req.TimeoutSec, "timeout", 0, "stop the script after this many seconds (0: never)")
	cmd.Flags().StringVar(&restart.Policy, "restart", "", "restart policy: no, on-failure (non-zero exit, signal, worker lost) or always")
	cmd.Flags().IntVar(&restart.MaxRestarts, "max-restarts", 0, "give up after this many restarts within --restart-window (0: 5)")
	cmd.Flags().IntVar(&restart.WindowSec, "restart-window", 0, "seconds in which --max-restarts count (0: 600)")
	cmd.Flags().Float64Var(&restart.BackoffSec, "backoff", 0, "seconds before the first restart, doubling after (0: 1)")
	return cmd
}

func logsCmd() *cobra.Command {
	var doFollow bool
	var stream string
	var tail int
	cmd := &cobra.Command{
		Use:     "logs RUN_ID",
		Short:   "Print a run's output (with -f, follow it until the run ends)",
		Example: "  pyrunner logs 3f1c…\n  pyrunner logs -f --stream stdout 3f1c…",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if doFollow {
				end, err := follow(cmd.Context(), cmd, args[0], stream)
				if err != nil {
					return err
				}
				return exitOf(end)
			}
			l, err := newClient().Logs(cmd.Context(), args[0], stream, tail)
			if err != nil {
				return err
			}
			if l.Stdout != nil {
				fmt.Fprint(cmd.OutOrStdout(), *l.Stdout)
			}
			if l.Stderr != nil {
				fmt.Fprint(cmd.ErrOrStderr(), *l.Stderr)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&doFollow, "follow", "f", false, "stream new output until the run ends")
	cmd.Flags().StringVar(&stream, "stream", "both", "stdout, stderr or both")
	cmd.Flags().IntVar(&tail, "tail", 0, "only the last bytes (0: all that is kept)")
	return cmd
}

func stopCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "stop RUN_ID",
		Short:   "Stop a script run (SIGTERM, the grace, then SIGKILL)",
		Example: "  pyrunner stop 3f1c…",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := newClient().Stop(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", r.RunID, r.Status)
			return nil
		},
	}
}

func deref(s *string) string {
	if s == nil {
		return "-"
	}
	return *s
}

func lsCmd() *cobra.Command {
	var f client.Filter
	cmd := &cobra.Command{
		Use:     "ls",
		Short:   "List runs, newest first",
		Example: "  pyrunner ls --status running\n  pyrunner ls --kind research --limit 5\n  pyrunner ls --script ticker.py",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			runs, _, err := newClient().List(cmd.Context(), f)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "RUN_ID\tKIND\tSCRIPT/MARKET\tSTATUS\tATTEMPT\tCREATED\tWORKER")
			for _, r := range runs {
				what := deref(r.Script)
				if r.Market != nil {
					what = *r.Market
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.RunID, r.Kind, what, r.Status, r.Attempt, deref(r.CreatedAt), deref(r.Worker))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&f.Status, "status", "", "only runs with this status")
	cmd.Flags().StringVar(&f.Script, "script", "", "only runs of this script")
	cmd.Flags().StringVar(&f.Kind, "kind", "", "research or script")
	cmd.Flags().IntVar(&f.Limit, "limit", 50, "most runs")
	return cmd
}

func scriptsCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "scripts",
		Short:   "List the scripts folder",
		Example: "  pyrunner scripts",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			list, err := newClient().Scripts(cmd.Context())
			if err != nil {
				return err
			}
			for _, s := range list {
				fmt.Fprintf(cmd.OutOrStdout(), "%s\t%d\n", s.Path, s.SizeBytes)
			}
			return nil
		},
	}
}

func tokenCmd() *cobra.Command {
	var sub, scopes string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "token --sub NAME --scopes LIST",
		Short: "Mint a JWT signed with $SCRIPT_JWT_SECRET (as pyrunner-api token)",
		Long: `token prints an HS256 JWT for sub with the given scopes (scripts:read, scripts:run,
logs:read, research:run, or *), signed with $SCRIPT_JWT_SECRET, with $SCRIPT_JWT_ISS
and $SCRIPT_JWT_AUD when set.`,
		Example: "  SCRIPT_JWT_SECRET=... pyrunner token --sub alice --scopes scripts:read,logs:read --ttl 8h",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			secret := os.Getenv("SCRIPT_JWT_SECRET")
			if secret == "" {
				return errors.New("SCRIPT_JWT_SECRET is not set")
			}
			m := &auth.Minter{Secret: []byte(secret), Issuer: os.Getenv("SCRIPT_JWT_ISS"), Audience: os.Getenv("SCRIPT_JWT_AUD")}
			tok, err := m.Mint(sub, strings.Split(scopes, ","), ttl, map[string]any{"type": "user"})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), tok)
			return nil
		},
	}
	cmd.Flags().StringVar(&sub, "sub", "", "subject: who the token is for (required)")
	cmd.Flags().StringVar(&scopes, "scopes", "", "comma-separated scopes (required)")
	cmd.Flags().DurationVar(&ttl, "ttl", time.Hour, "lifetime")
	required(cmd, "sub", "scopes")
	return cmd
}

// required marks flags cmd must be given (a name it has no flag for is
// a bug here, not a user's error).
func required(cmd *cobra.Command, names ...string) {
	for _, n := range names {
		if err := cmd.MarkFlagRequired(n); err != nil {
			panic(fmt.Sprintf("pyrunner: flag %q: %v", n, err))
		}
	}
}
