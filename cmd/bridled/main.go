// Command bridled is Bridle's node daemon: it confines every cgroup below
// the configured roots and serves the task API. See docs/DAEMON.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/bridle-sh/bridle/daemon"
	"github.com/bridle-sh/bridle/daemon/config"
	"github.com/bridle-sh/bridle/daemon/hostcgroupns"
)

func main() {
	configFile := flag.String("config", "/etc/bridle/bridled.yaml", "configuration file (YAML)")
	logJSON := flag.Bool("log-json", false, "log JSON lines instead of text")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bridled: unexpected arguments %v\n", flag.Args())
		os.Exit(2)
	}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, nil)
	if *logJSON {
		h = slog.NewJSONHandler(os.Stderr, nil)
	}
	log := slog.New(h)

	// In a container of its own cgroup namespace (a DaemonSet pod on a
	// cgroup-v2-only node) bridled re-executes itself in the host's.
	if err := hostcgroupns.Enter(); err != nil {
		fmt.Fprintln(os.Stderr, "bridled:", err)
		os.Exit(1)
	}

	cfg, err := config.Load(*configFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bridled:", err)
		os.Exit(2)
	}
	// SIGHUP reloads the policy (its default action would kill the daemon).
	// SIGTERM and SIGINT stop the daemon; the kernel keeps enforcing.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	reload := make(chan os.Signal, 1)
	signal.Notify(reload, syscall.SIGHUP)
	if err := daemon.Run(ctx, cfg, log, reload); err != nil {
		fmt.Fprintln(os.Stderr, "bridled:", err)
		os.Exit(1)
	}
}
