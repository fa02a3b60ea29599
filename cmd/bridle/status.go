package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/bridle-sh/bridle/daemon/api"
	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/config"
	"github.com/bridle-sh/bridle/daemon/workload"
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
			launch := workload.Isolation
			if err := workload.CheckIsolation(); err != nil {
				launch = "NOT available: " + err.Error()
			}
			pinned, _ := filepath.Glob(filepath.Join(loader.DefaultPinRoot, "run", "t-*"))
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
			daemon, daemonErr := api.NewClient(socket).Probe(ctx)
			cancel()
			if asJSON {
				out := f.Map()
				out["active_lsms"] = f.ActiveLSMs
				out["pinned_runs"] = len(pinned)
				out["workload_launch"] = launch
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
			if f.ListenHooks {
				fmt.Printf("bind/listen:   enforced (%s)\n", f.ListenReason)
			} else {
				fmt.Printf("bind/listen:   NOT enforced — %s\n", f.ListenReason)
			}
			if f.SockoptHook {
				fmt.Printf("sockopts:      %s\n", f.SockoptReason)
			} else {
				fmt.Printf("sockopts:      NOT checked — %s\n", f.SockoptReason)
			}
			if f.DNSRedirect {
				fmt.Printf("dns:           %s\n", f.DNSRedirectReason)
			} else {
				fmt.Printf("dns:           NOT steered — %s; names in grants resolve nothing, port 53 is judged by the rules\n", f.DNSRedirectReason)
			}
			ns, fam := f.GuardLines()
			fmt.Printf("namespaces:    %s\n", ns)
			fmt.Printf("families:      %s\n", fam)
			fmt.Printf("active LSMs:   %v\n", f.ActiveLSMs)
			fmt.Printf("BTF:           %s\n", f.BTF)
			fmt.Printf("open sockets:  %s — %s\n", f.SocketDestroy.Method, f.SocketDestroy.Reason)
			fmt.Printf("bridle run:    %s\n", launch)
			fmt.Printf("unix conns:    %s — %s\n", f.UnixShutdown.Method, f.UnixShutdown.Reason)
			fmt.Printf("pinned runs:   %d under %s\n", len(pinned), filepath.Join(loader.DefaultPinRoot, "run"))
			if daemonErr != nil {
				fmt.Printf("bridled:       not answering: %s\n", audit.Printable(daemonErr.Error()))
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
// and loudest. Every string from the daemon is escaped (audit.Printable):
// root paths, policy sources and errors can carry text others chose.
func printDaemonStatus(socket string, st api.Status) {
	p := audit.Printable
	fmt.Printf("bridled:       running at %s (node %s), %d task(s) in force\n", p(socket), p(st.Node), st.Tasks)
	fmt.Printf("policy:        %s from %s, %d failed load(s)\n", p(st.Policy.Revision), p(st.Policy.Source), st.Policy.Failures)
	fmt.Printf("baseline:      %s, %d kernel rules\n", p(st.Policy.BaselineRevision), st.Policy.BaselineRules)
	for _, r := range st.Roots {
		state := "confined"
		if !r.Attached {
			state = "NOT CONFINED: " + r.Error
		}
		fmt.Printf("root:          %s %s\n", p(r.Path), p(state))
	}
	fmt.Printf("ring drops:    %d; audit records lost: %d\n", st.RingDrops, st.AuditLost)
	if d := st.DNS; d != nil {
		fmt.Printf("dns:           resolver %s %s, upstream %s; %d allowed, %d denied, %d from cache, %d upstream failures\n",
			p(d.Listen4), p(d.Listen6), p(d.Upstream), d.Allowed, d.Denied, d.CacheHits, d.UpstreamFailures)
	}
	if id := st.Identity; id != nil {
		state := "ok"
		if id.Degraded != "" {
			state = "DEGRADED"
		}
		where := ""
		if id.Endpoint != "" {
			where = " at " + p(id.Endpoint)
		}
		fmt.Printf("identity:      %s%s, %s; %d workloads followed\n", id.Source, where, state, id.Watched)
	}
	if k := st.Kubernetes; k != nil {
		fmt.Println(kubernetesLine(*k))
	}
	for _, l := range st.Listeners {
		if l.Name == "approvals-web" && l.Bound {
			fmt.Printf("approvals:     page at http://%s (sign in with: bridle approvals web)\n", p(l.Address))
		}
	}
	printHardening(st.Hardening)
	if len(st.Degraded) == 0 {
		fmt.Println("degraded:      no")
		return
	}
	for _, d := range st.Degraded {
		fmt.Printf("DEGRADED:      %s\n", p(d))
	}
}

// printHardening reports the workloads whose processes lack unit settings
// Bridle cannot give what it did not launch (docs/DAEMON.md, agent units).
func printHardening(hs []api.WorkloadHardening) {
	lacking := 0
	for _, h := range hs {
		if len(h.Missing) > 0 {
			lacking++
		}
	}
	fmt.Printf("hardening:     %d workload(s) with processes checked, %d lacking unit settings\n", len(hs), lacking)
	for _, h := range hs {
		if len(h.Missing) == 0 {
			continue
		}
		fmt.Printf("HARDENING:     %s lacks %s (pids %v)\n", printable(h.Workload), strings.Join(h.Missing, ", "), h.PIDs)
	}
}

// printable quotes a name a workload may have chosen (a cgroup it made)
// when it holds anything a terminal would act on.
func printable(s string) string {
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		return strconv.QuoteToGraphic(s)
	}
	return s
}

// kubernetesLine reports the pod watch: the node, the agent pods watched
// and bound, and whether the runtime hook is connected.
func kubernetesLine(k api.KubernetesStatus) string {
	listed := ""
	if !k.Synced {
		listed = " (pods not listed yet)"
	}
	hook := "runtime hook connected"
	if !k.Hook {
		hook = "NO runtime hook"
	}
	return fmt.Sprintf("kubernetes:    node %s, %d agent pod(s) watched, %d bound%s; %s",
		audit.Printable(k.Node), k.Watched, k.Bound, listed, hook)
}
