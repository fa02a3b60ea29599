package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/bridle-sh/bridle/daemon/api"
	"github.com/bridle-sh/bridle/daemon/audit"
)

func newApprovalsCommand() *cobra.Command {
	var (
		c      callerFlags
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "approvals [--json]",
		Short: "List step-up approval requests: pending newest first, then the recent answers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			list, err := cl.Approvals(cmd.Context())
			if err != nil {
				return err
			}
			list = pendingFirst(list)
			if asJSON {
				return json.NewEncoder(os.Stdout).Encode(api.ApprovalList{Approvals: list})
			}
			return printApprovals(os.Stdout, list, time.Now())
		},
	}
	c.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(newApprovalsWatchCommand(c.client), newApprovalsWebCommand(c.client))
	return cmd
}

// pendingFirst orders requests as a person answers them: the pending ones
// newest first, then the rest newest first.
func pendingFirst(list []api.Approval) []api.Approval {
	out := append([]api.Approval(nil), list...)
	sort.SliceStable(out, func(i, j int) bool {
		pi, pj := out[i].State == "pending", out[j].State == "pending"
		if pi != pj {
			return pi
		}
		return out[i].Opened.After(out[j].Opened)
	})
	return out
}

func printApprovals(w io.Writer, list []api.Approval, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAGE\tTASK\tIDENTITY\tINTENT\tACTION\tTARGET\tWHY\tSTATE")
	for _, a := range list {
		// Intents, targets, reasons and answers are free text (an
		// agent's words, a program's path): escaped, so a newline or tab
		// cannot forge a row or a column, nor ESC drive the terminal.
		p := audit.Printable
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p(a.ID), ago(now.Sub(a.Opened)), p(a.Task), p(a.Identity),
			p(a.Intent), p(a.Action), p(a.Target), p(a.Reason), p(state(a)))
	}
	return tw.Flush()
}

// state is a request's state with its answer: who, for how long or why.
func state(a api.Approval) string {
	s := a.State
	an := a.Answer
	if an == nil {
		return s
	}
	var parts []string
	if by := answeredBy(an); by != "" {
		parts = append(parts, "by "+by)
	}
	if an.For != "" {
		parts = append(parts, "for "+an.For)
	}
	if an.Reason != "" {
		parts = append(parts, fmt.Sprintf("%q", an.Reason))
	}
	if len(parts) > 0 {
		s += " (" + strings.Join(parts, ", ") + ")"
	}
	return s
}

func answeredBy(an *api.ApprovalAnswer) string {
	switch {
	case an.By != "":
		return an.By
	case an.Identity != "":
		return an.Identity
	case an.UID != nil:
		return fmt.Sprintf("uid %d", *an.UID)
	}
	return ""
}

// ago is a short age: 42s, 5m, 3h, 2d.
func ago(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", max(0, int(d/time.Second)))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	}
	return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
}

func newApprovalsWatchCommand(client func() (*api.Client, error)) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "watch [--json]",
		Short: "Print a line for each request opened, answered or expired, as it happens",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			changes, done, err := c.WatchApprovals(cmd.Context())
			if err != nil {
				return err
			}
			enc := json.NewEncoder(os.Stdout)
			for a := range changes {
				if asJSON {
					if err := enc.Encode(a); err != nil {
						return err
					}
					continue
				}
				fmt.Println(watchLine(a))
			}
			return done()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print each change as a JSON line")
	return cmd
}

// watchLine is one change, on one line.
func watchLine(a api.Approval) string {
	p := audit.Printable
	line := fmt.Sprintf("%s %s %s: %s %s by %s (%s) for task %s %q",
		time.Now().Format(time.TimeOnly), p(a.ID), p(state(a)), p(a.Action), p(a.Target),
		p(a.Comm), p(a.Identity), p(a.Task), p(a.Intent))
	if a.State == "pending" {
		line += fmt.Sprintf(": bridle approve %s --for 10m | bridle deny %s", p(a.ID), p(a.ID))
	}
	return line
}

func newApprovalsWebCommand(client func() (*api.Client, error)) *cobra.Command {
	return &cobra.Command{
		Use:   "web",
		Short: "Print a one-time sign-in link to the approvals page (answers given there are yours)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			l, err := c.ApprovalsWebLink(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Println(l.URL)
			fmt.Fprintf(os.Stderr, "good once, until %s; whoever opens it answers as you\n", l.Expires.Local().Format(time.TimeOnly))
			return nil
		},
	}
}

func newApproveCommand() *cobra.Command {
	var (
		c      callerFlags
		dur    time.Duration
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "approve ID [--for DURATION]",
		Short: "Approve a pending request: a grant in the workload's kernel rules until the duration ends",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dur < 0 {
				return usageError{fmt.Errorf("--for %s: must not be negative", dur)}
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			a, err := cl.Approve(cmd.Context(), args[0], dur)
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(os.Stdout).Encode(a)
			}
			msg := fmt.Sprintf("approved %s: %s %s", audit.Printable(a.ID), audit.Printable(a.Action), audit.Printable(a.Target))
			if an := a.Answer; an != nil && !an.GrantEnds.IsZero() {
				msg += " until " + an.GrantEnds.Local().Format(time.DateTime)
			}
			fmt.Println(msg)
			return nil
		},
	}
	c.register(cmd)
	cmd.Flags().DurationVar(&dur, "for", 0, "how long the grant lasts (capped by the entry's max_ttl and the task's end; 0: as long as those allow)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the answered request as JSON")
	return cmd
}

func newDenyCommand() *cobra.Command {
	var (
		c      callerFlags
		reason string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "deny ID [--reason TEXT]",
		Short: "Deny a pending request; the task does not ask again for the same target for a while",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			a, err := cl.Deny(cmd.Context(), args[0], reason)
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(os.Stdout).Encode(a)
			}
			fmt.Printf("denied %s: %s %s\n", audit.Printable(a.ID), audit.Printable(a.Action), audit.Printable(a.Target))
			return nil
		},
	}
	c.register(cmd)
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the record")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the answered request as JSON")
	return cmd
}
