package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/bridle-sh/bridle/daemon/api"
	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/config"
)

func newTaskCommand() *cobra.Command {
	var c callerFlags
	cmd := &cobra.Command{
		Use:   "task",
		Short: "Start, end and list tasks through the node daemon (bridled)",
	}
	c.register(cmd)
	cmd.AddCommand(newTaskStartCommand(c.client), newTaskEndCommand(c.client), newTaskListCommand(c.client))
	return cmd
}

// callerFlags say where bridled is and how the caller proves who it is:
// by its uid on the socket, plus a JWT-SVID if --token-file; or by its
// X.509-SVID over mutual TLS (--api).
type callerFlags struct {
	socket, tokenFile                 string
	apiURL, svidCert, svidKey, bundle string
}

// register adds the flags to cmd and its subcommands.
func (f *callerFlags) register(cmd *cobra.Command) {
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.socket, "socket", config.DefaultSocket, "bridled's API socket")
	pf.StringVar(&f.tokenFile, "token-file", os.Getenv("BRIDLE_TOKEN_FILE"), "send the JWT-SVID in FILE as the caller's proof of identity on the socket (env BRIDLE_TOKEN_FILE)")
	pf.StringVar(&f.apiURL, "api", "", "call bridled's API over mutual TLS at https://HOST:PORT instead of the socket (needs --svid-cert, --svid-key, --bundle)")
	pf.StringVar(&f.svidCert, "svid-cert", "", "with --api: the caller's X.509-SVID, PEM (leaf first)")
	pf.StringVar(&f.svidKey, "svid-key", "", "with --api: the SVID's private key, PEM")
	pf.StringVar(&f.bundle, "bundle", "", "with --api: the trust bundle bridled's SVID must chain to, PEM")
}

func (f *callerFlags) client() (*api.Client, error) {
	if f.apiURL == "" {
		if f.svidCert != "" || f.svidKey != "" || f.bundle != "" {
			return nil, usageError{fmt.Errorf("--svid-cert, --svid-key and --bundle go with --api")}
		}
		c := api.NewClient(f.socket)
		if f.tokenFile != "" {
			c.WithTokenFile(f.tokenFile)
		}
		return c, nil
	}
	if f.svidCert == "" || f.svidKey == "" || f.bundle == "" {
		return nil, usageError{fmt.Errorf("--api needs --svid-cert, --svid-key and --bundle: bridled's TCP listener takes callers by X.509-SVID only")}
	}
	if f.tokenFile != "" {
		return nil, usageError{fmt.Errorf("--token-file with --api: over mutual TLS the X.509-SVID is the caller's proof; send one, not two (unset BRIDLE_TOKEN_FILE)")}
	}
	return api.NewTLSClient(f.apiURL, f.svidCert, f.svidKey, f.bundle)
}

func newTaskStartCommand(client func() (*api.Client, error)) *cobra.Command {
	var (
		req                 api.StartRequest
		labels              []string
		ttl                 time.Duration
		asJSON              bool
		connect, unix, exec []string
		listen              []string
		writableExec        bool
	)
	cmd := &cobra.Command{
		Use:   "start --workload CGROUP|--pid PID|--pod NS/NAME[/CONTAINER] --intent TEXT [--label k=v]... [--ttl D]",
		Short: "Start a task on a workload; prints the task id",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkWorkloadFlags(req); err != nil {
				return usageError{err}
			}
			if strings.TrimSpace(req.Intent) == "" {
				return usageError{fmt.Errorf("--intent is required: say what the task is for")}
			}
			for _, l := range labels {
				k, v, ok := strings.Cut(l, "=")
				if !ok || k == "" {
					return usageError{fmt.Errorf("--label %q: want KEY=VALUE", l)}
				}
				if req.Labels == nil {
					req.Labels = map[string]string{}
				}
				req.Labels[k] = v
			}
			if ttl < 0 {
				return usageError{fmt.Errorf("--ttl %s: must not be negative", ttl)}
			}
			if ttl > 0 {
				req.TTL = ttl.String()
			}
			grants := &api.Grants{Connect: connect, Unix: unix, Exec: exec, Listen: listen, AllowWritableExec: writableExec}
			if _, err := grants.Envelope(); err != nil {
				return usageError{err}
			}
			if len(connect)+len(unix)+len(exec)+len(listen) > 0 {
				req.Grants = grants
			}
			c, err := client()
			if err != nil {
				return err
			}
			var t api.Task
			if err := c.Do(cmd.Context(), http.MethodPost, "/v1/tasks", req, &t); err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(os.Stdout).Encode(t)
			}
			fmt.Println(audit.Printable(t.ID))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Workload, "workload", "", "the workload's cgroup path below the cgroup v2 mount")
	f.IntVar(&req.PID, "pid", 0, "a process in the workload")
	f.StringVar(&req.Pod, "pod", "", "an agent pod on the daemon's node, NAMESPACE/NAME (the pod's cgroup) or NAMESPACE/NAME/CONTAINER (one container's)")
	f.StringVar(&req.Intent, "intent", "", "what the task is for")
	f.StringArrayVar(&labels, "label", nil, "task label KEY=VALUE (repeatable)")
	f.DurationVar(&ttl, "ttl", 0, "requested lifetime (capped by the policy; 0: as long as the policy allows)")
	f.StringVar(&req.Parent, "parent", "", "start a sub-agent's task under task ID: it gets at most what the parent has and ends with it")
	f.StringArrayVar(&connect, "allow-connect", nil, "cap the task's network grants to PROTO:ADDR[:PORTS] (repeatable; the policy still decides within)")
	f.StringArrayVar(&unix, "allow-unix", nil, "cap the task's unix socket grants to PATH (repeatable)")
	f.StringArrayVar(&exec, "allow-exec", nil, "cap the task's exec grants to PATH or DIR/ (repeatable)")
	f.StringArrayVar(&listen, "allow-listen", nil, "cap the task's listen grants to PROTO:PORTS (repeatable)")
	f.BoolVar(&writableExec, "allow-writable-exec", false, "accept exec rules whose file the workload's users can write (each is then an allow-all); the policy's envelope must say allow_writable_exec too")
	f.BoolVar(&asJSON, "json", false, "print the task as JSON")
	return cmd
}

// checkWorkloadFlags wants exactly one of --workload, --pid and --pod,
// and a pod as NAMESPACE/NAME[/CONTAINER].
func checkWorkloadFlags(req api.StartRequest) error {
	n := 0
	for _, set := range []bool{req.Workload != "", req.PID != 0, req.Pod != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		return fmt.Errorf("name the workload with exactly one of --workload, --pid and --pod")
	}
	if req.Pod != "" {
		parts := strings.Split(req.Pod, "/")
		if len(parts) < 2 || len(parts) > 3 || slices.Contains(parts, "") {
			return fmt.Errorf("--pod %q: want NAMESPACE/NAME or NAMESPACE/NAME/CONTAINER", req.Pod)
		}
	}
	return nil
}

func newTaskEndCommand(client func() (*api.Client, error)) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "end ID",
		Short: "End a task: its grants are revoked and its open connections aborted",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			var t api.Task
			if err := c.Do(cmd.Context(), http.MethodDelete, "/v1/tasks/"+args[0], nil, &t); err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(os.Stdout).Encode(t)
			}
			fmt.Printf("task %s ended\n", audit.Printable(t.ID))
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the ended task as JSON")
	return cmd
}

func newTaskListCommand(client func() (*api.Client, error)) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the tasks in force",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			var out api.TaskList
			if err := c.Do(cmd.Context(), http.MethodGet, "/v1/tasks", nil, &out); err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(os.Stdout).Encode(out)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tWORKLOAD\tIDENTITY\tINTENT\tPARENT\tRULES\tEXPIRES")
			for _, t := range out.Tasks {
				exp := "never"
				if !t.Expires.IsZero() {
					exp = t.Expires.Local().Format(time.DateTime)
				}
				parent := t.Parent
				if parent == "" {
					parent = "-"
				}
				// Intents and labels are free text (an agent's words,
				// often): escaped, so a newline or tab cannot forge a
				// row or a column, nor ESC drive the terminal.
				p := audit.Printable
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", p(t.ID), p(t.Workload), p(t.Identity)+" ("+string(t.IdentitySource)+")", p(t.Intent), p(parent), t.Rules, exp)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
