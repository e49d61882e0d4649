package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ztrade/pyrunner/pkg/client"
)

// schedulesCmd is `pyrunner schedules …`: list, add, pause, resume,
// trigger and rm.
func schedulesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "schedules",
		Aliases: []string{"schedule"},
		Short:   "List and manage schedules (cron specs that submit runs)",
		Example: `  pyrunner schedules
  pyrunner schedules add --name report --cron '5 0 * * *' --timezone Asia/Shanghai --script reports/daily.py
  pyrunner schedules add --name sweep --cron '@every 30s' --research request.json
  pyrunner schedules pause 7c1e…
  pyrunner schedules trigger 7c1e…`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return listSchedules(cmd) },
	}
	cmd.AddCommand(addScheduleCmd(), pauseCmd("pause", true), pauseCmd("resume", false), triggerCmd(), rmScheduleCmd())
	return cmd
}

func listSchedules(cmd *cobra.Command) error {
	list, err := newClient().Schedules(cmd.Context())
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tCRON\tTIMEZONE\tKIND\tPAUSED\tNEXT\tLAST\tLAST_RUN")
	for _, sc := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\t%s\t%s\t%s\n", sc.ID, sc.Name, sc.Cron, sc.Timezone, sc.Kind, sc.Paused,
			deref(sc.NextFireAt), deref(sc.LastResult), deref(sc.LastRunID))
	}
	return tw.Flush()
}

func addScheduleCmd() *cobra.Command {
	var name, cron, tz, overlap, script, researchFile string
	var paused bool
	cmd := &cobra.Command{
		Use:   "add --name NAME --cron SPEC (--script PATH | --research FILE)",
		Short: "Make a schedule: a script, or a research request (the JSON body of /v1/research/run) per firing",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			req := client.ScheduleRequest{Name: &name, Cron: &cron, Timezone: &tz, Overlap: &overlap, Paused: &paused}
			kind := "script"
			switch {
			case script != "" && researchFile != "":
				return fmt.Errorf("give --script or --research, not both")
			case script != "":
				req.Request, _ = json.Marshal(client.ScriptRequest{Script: script})
			case researchFile != "":
				kind = "research"
				b, err := readFileOrStdin(cmd, researchFile)
				if err != nil {
					return err
				}
				req.Request = b
			default:
				return fmt.Errorf("give --script PATH or --research FILE")
			}
			req.Kind = &kind
			sc, err := newClient().CreateSchedule(cmd.Context(), req)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s next %s\n", sc.ID, deref(sc.NextFireAt))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "the schedule's name (required)")
	f.StringVar(&cron, "cron", "", "minute hour day month weekday, @daily…, or @every 30s (required)")
	f.StringVar(&tz, "timezone", "UTC", "the time zone of the cron spec")
	f.StringVar(&overlap, "overlap", "skip", "skip (no firing while the last run is live) or allow")
	f.BoolVar(&paused, "paused", false, "make it paused")
	f.StringVar(&script, "script", "", "a script of the scripts folder to start at each firing")
	f.StringVar(&researchFile, "research", "", "a file (or - for stdin) with the research request to submit at each firing")
	required(cmd, "name", "cron")
	return cmd
}

// readFileOrStdin reads path, or stdin for "-".
func readFileOrStdin(cmd *cobra.Command, path string) ([]byte, error) {
	if path == "-" {
		var raw json.RawMessage
		if err := json.NewDecoder(cmd.InOrStdin()).Decode(&raw); err != nil {
			return nil, fmt.Errorf("stdin: %w", err)
		}
		return raw, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b, nil
}

func pauseCmd(use string, paused bool) *cobra.Command {
	return &cobra.Command{
		Use:   use + " ID",
		Short: map[bool]string{true: "Pause a schedule: no firing until resumed", false: "Resume a paused schedule"}[paused],
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sc, err := newClient().UpdateSchedule(cmd.Context(), args[0], client.ScheduleRequest{Paused: &paused})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s paused=%v next %s\n", sc.ID, sc.Paused, deref(sc.NextFireAt))
			return nil
		},
	}
}

func triggerCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "trigger ID",
		Short: "Fire a schedule now, by its rules",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := newClient().TriggerSchedule(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s %s\n", f.Result, deref(f.RunID), deref(f.Detail))
			return nil
		},
	}
}

func rmScheduleCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "rm ID",
		Aliases: []string{"delete"},
		Short:   "Delete a schedule (its runs stay)",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := newClient().DeleteSchedule(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s deleted\n", args[0])
			return nil
		},
	}
}
