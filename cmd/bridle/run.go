package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/bridle-sh/bridle/daemon/api"
	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/config"
	"github.com/bridle-sh/bridle/daemon/dns"
	"github.com/bridle-sh/bridle/daemon/run"
)

type runFlags struct {
	connect, unix, exec []string
	listen              []string
	user, mode          string
	identity, intent    string
	ttl                 time.Duration
	audit               string
	policy, socket      string
	standalone          bool
	logAllowed, verbose bool
	writableExec        bool
	dnsUpstream         string
	dnsTTLFloor         time.Duration
}

func newRunCommand() *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run [flags] -- COMMAND [ARG...]",
		Short: "Run one command as a confined workload with one task",
		Long: `Runs COMMAND in its own cgroup as an unprivileged user, with its capabilities
dropped and no_new_privs set, in a session of its own (with a pty of its own
when run from a terminal) and its own PID, mount and IPC namespaces. The
kernel refuses every connection, datagram and exec the flags do not allow
(loopback included); running COMMAND itself is always allowed. Each denial
is printed as it happens with the flag that would allow it, and a
summary at exit. The exit status is COMMAND's (128+N for signal N).`,
		Example: `  sudo bridle run --allow-connect tcp:127.0.0.1:8080 --allow-exec /usr/bin/ -- curl http://127.0.0.1:8080/
  sudo bridle run --allow-connect tcp:api.github.com:443 --allow-connect tcp:*.githubusercontent.com:443 --allow-exec /usr/bin/ -- git clone https://github.com/bridle-sh/bridle
  sudo bridle run --allow-connect udp:[2001:db8::53]:123 --ttl 10m --audit audit.jsonl -- ./agent`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec, closeAudit, err := f.spec(args)
			if err != nil {
				return usageError{err}
			}
			defer closeAudit()
			// COMMAND runs in a session of its own, so signals meant for it
			// reach bridle: they are passed on, and bridle stays to clean up
			// and report. On a terminal, Ctrl-C is a key sent through
			// COMMAND's pty instead (bridle holds the terminal in raw mode).
			sigs := make(chan os.Signal, 4)
			signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
			defer signal.Stop(sigs)
			status, err := run.Run(cmd.Context(), spec, sigs)
			if err != nil {
				return err
			}
			exitCode = status
			return nil
		},
	}
	fl := cmd.Flags()
	fl.SetInterspersed(false) // everything from COMMAND on belongs to COMMAND
	fl.StringArrayVar(&f.connect, "allow-connect", nil, "allow PROTO:ADDR[:PORTS] (PROTO tcp|udp|icmp|any; ADDR IPv4 or [IPv6], address or CIDR, or a host name, *.SUFFIX for any name below SUFFIX; PORTS N, N-M or a list); repeatable")
	fl.StringArrayVar(&f.unix, "allow-unix", nil, "allow connecting to the unix socket PATH (@NAME for an abstract name); repeatable")
	fl.StringArrayVar(&f.listen, "allow-listen", nil, "allow binding and accepting connections on PROTO:PORTS (PROTO tcp|udp|any; PORTS N, N-M or a list); repeatable")
	fl.StringArrayVar(&f.exec, "allow-exec", nil, "allow running PATH; a directory ending in / allows the executables below it; script:PATH allows PATH only as a #! script; repeatable")
	fl.BoolVar(&f.writableExec, "allow-writable-exec", false, "accept --allow-exec files the workload's user can write (each is then an allow-all: the workload can write any program into it)")
	fl.StringVar(&f.user, "user", "", "run COMMAND as USER (default: $SUDO_USER; never root)")
	fl.StringVar(&f.mode, "mode", "enforce", "enforce: refuse what is not allowed; audit: report it as would-deny and let it through")
	fl.StringVar(&f.identity, "identity", "", "SPIFFE ID of the workload (default spiffe://bridle.local/run/USER)")
	fl.StringVar(&f.intent, "intent", "", "what the task is for, recorded with every decision")
	fl.DurationVar(&f.ttl, "ttl", 0, "lifetime of the task's grants (e.g. 10m); afterwards everything is refused")
	fl.StringVar(&f.audit, "audit", "", "write decision records as JSON lines to FILE (appended), or - for stdout")
	fl.StringVar(&f.policy, "policy", "", "decide the task's envelope with this Rego policy (a directory or an OPA bundle file); --allow-* flags then cap it")
	fl.StringVar(&f.socket, "socket", config.DefaultSocket, "bridled's API socket: when a daemon answers there, it enforces the run under the node's policy")
	fl.BoolVar(&f.standalone, "standalone", false, "enforce in this process even if bridled runs")
	fl.StringVar(&f.dnsUpstream, "dns-upstream", "", "forward the names the task may resolve to this resolver, ADDR:PORT (default: the first nameserver in /etc/resolv.conf); standalone runs")
	fl.DurationVar(&f.dnsTTLFloor, "dns-ttl-floor", 0, "keep a resolved address allowed at least this long, whatever its TTL (default 30s); standalone runs")
	fl.BoolVar(&f.logAllowed, "log-allowed", false, "record allowed decisions too, not only refusals")
	fl.BoolVarP(&f.verbose, "verbose", "v", false, "report what the kernel supports and how the task is enforced")
	return cmd
}

// spec validates every flag before anything runs.
func (f *runFlags) spec(args []string) (run.RunSpec, func(), error) {
	noop := func() {}
	spec := run.RunSpec{
		Command:    args,
		User:       f.user,
		Identity:   f.identity,
		Intent:     f.intent,
		Policy:     f.policy,
		Socket:     f.socket,
		Standalone: f.standalone,
		LogAllow:   f.logAllowed,
		Verbose:    f.verbose,

		AllowWritableExec: f.writableExec,
		Out:               os.Stderr,
	}
	grants := &api.Grants{Connect: f.connect, Unix: f.unix, Exec: f.exec, Listen: f.listen}
	if _, err := grants.Envelope(); err != nil {
		return spec, noop, err
	}
	if _, err := run.ResolveUser(f.user); err != nil {
		return spec, noop, err
	}
	if len(f.connect)+len(f.unix)+len(f.exec)+len(f.listen) > 0 {
		spec.Grants = grants
	}
	switch f.mode {
	case "enforce":
	case "audit":
		spec.Audit = true
	default:
		return spec, noop, fmt.Errorf("--mode %q: want enforce or audit", f.mode)
	}
	if f.ttl < 0 {
		return spec, noop, fmt.Errorf("--ttl %v: must be positive", f.ttl)
	}
	spec.TTL = f.ttl
	if f.dnsUpstream != "" {
		up, err := dns.ParseUpstream(f.dnsUpstream)
		if err != nil {
			return spec, noop, fmt.Errorf("--dns-upstream: %w", err)
		}
		spec.DNS.Upstream = up
	}
	if f.dnsTTLFloor < 0 {
		return spec, noop, fmt.Errorf("--dns-ttl-floor %v: must be positive", f.dnsTTLFloor)
	}
	spec.DNS.TTLFloor = f.dnsTTLFloor
	if f.policy != "" {
		if _, err := os.Stat(f.policy); err != nil {
			return spec, noop, fmt.Errorf("--policy: %w", err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return spec, noop, fmt.Errorf("find the bridle binary: %w", err)
	}
	spec.Self = self

	switch f.audit {
	case "":
	case "-":
		spec.Records = os.Stdout
	default:
		// Opened as root, but the path is often in a directory the
		// workload's user owns: audit.OpenFile follows no link there.
		file, err := audit.OpenFile(f.audit)
		if err != nil {
			return spec, noop, fmt.Errorf("--audit: %w", err)
		}
		spec.Records = file
		return spec, func() { closeQuietly(file) }, nil
	}
	return spec, noop, nil
}

func closeQuietly(c io.Closer) { _ = c.Close() }
