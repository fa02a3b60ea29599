package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/bridle-sh/bridle/daemon/config"
	"github.com/bridle-sh/bridle/daemon/server/api"
	"github.com/bridle-sh/bridle/loader"
)

func newStatusCommand() *cobra.Command {
	var (
		asJSON bool
		socket string
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Report what this kernel supports and how Bridle enforces here",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Geteuid() != 0 {
				return fmt.Errorf("status needs root to probe BPF support (try sudo)")
			}
			dir := filepath.Join(loader.DefaultPinRoot, fmt.Sprintf("probe-%d", os.Getpid()))
			e, err := loader.Load(loader.Options{PinDir: dir})
			if err != nil {
				return err
			}
			f := e.Features()
			_ = e.Unpin()
			_ = e.Close()
			pinned, _ := filepath.Glob(filepath.Join(loader.DefaultPinRoot, "run", "t-*"))
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
			daemon, daemonErr := api.NewClient(socket).Probe(ctx)
			cancel()
			if asJSON {
				out := map[string]any{
					"kernel": f.Kernel, "exec_mode": f.ExecMode, "exec_mode_reason": f.ExecModeReason,
					"unix_hooks": f.UnixHooks, "unix_reason": f.UnixReason, "active_lsms": f.ActiveLSMs,
					"btf": f.BTF, "pinned_runs": len(pinned),
					"socket_destroy": f.SocketDestroy.Method, "socket_destroy_reason": f.SocketDestroy.Reason,
					"seccomp_guard": f.SeccompGuard,
					"family_guard":  f.FamilyGuard, "family_guard_reason": f.FamilyGuardReason,
					"userns_guard": f.UsernsGuard, "userns_guard_reason": f.UsernsGuardReason,
				}
				if daemonErr == nil {
					out["daemon"] = daemon
				} else {
					out["daemon_error"] = daemonErr.Error()
				}
				return json.NewEncoder(os.Stdout).Encode(out)
			}
			fmt.Printf("kernel:        %s\n", f.Kernel)
			fmt.Printf("exec mode:     %s — %s\n", f.ExecMode, f.ExecModeReason)
			if f.UnixHooks {
				fmt.Printf("unix sockets:  enforced by path (%s)\n", f.UnixReason)
			} else {
				fmt.Printf("unix sockets:  NOT enforced — %s\n", f.UnixReason)
			}
			ns, fam := f.GuardLines()
			fmt.Printf("namespaces:    %s\n", ns)
			fmt.Printf("families:      %s\n", fam)
			fmt.Printf("active LSMs:   %v\n", f.ActiveLSMs)
			fmt.Printf("BTF:           %s\n", f.BTF)
			fmt.Printf("open sockets:  %s — %s\n", f.SocketDestroy.Method, f.SocketDestroy.Reason)
			fmt.Printf("pinned runs:   %d under %s\n", len(pinned), filepath.Join(loader.DefaultPinRoot, "run"))
			if daemonErr != nil {
				fmt.Printf("bridled:       not answering: %v\n", daemonErr)
				return nil
			}
			printDaemonStatus(socket, daemon)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVar(&socket, "socket", config.DefaultSocket, "bridled's API socket")
	return cmd
}

// printDaemonStatus reports bridled's state; what is degraded comes last
// and loudest.
func printDaemonStatus(socket string, st api.Status) {
	fmt.Printf("bridled:       running at %s (node %s), %d task(s) in force\n", socket, st.Node, st.Tasks)
	fmt.Printf("policy:        %s from %s, %d failed load(s)\n", st.Policy.Revision, st.Policy.Source, st.Policy.Failures)
	fmt.Printf("baseline:      %s, %d kernel rules\n", st.Policy.BaselineRevision, st.Policy.BaselineRules)
	for _, r := range st.Roots {
		state := "confined"
		if !r.Attached {
			state = "NOT CONFINED: " + r.Error
		}
		fmt.Printf("root:          %s %s\n", r.Path, state)
	}
	fmt.Printf("ring drops:    %d; audit records lost: %d\n", st.RingDrops, st.AuditLost)
	if len(st.Degraded) == 0 {
		fmt.Println("degraded:      no")
		return
	}
	for _, d := range st.Degraded {
		fmt.Printf("DEGRADED:      %s\n", d)
	}
}
