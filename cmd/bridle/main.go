// Command bridle runs and manages confined AI-agent workloads.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/workload"
)

// exitUsage is the status for bad flags: nothing was run.
const exitUsage = 2

// usageError marks errors in what the user typed, as opposed to failures.
type usageError struct{ error }

func main() {
	// Nothing the invoker left open reaches a workload.
	if err := workload.CloseInheritedOnExec(); err != nil {
		fmt.Fprintln(os.Stderr, "bridle:", err)
		os.Exit(1)
	}
	// The launch stages: this binary, started by `bridle run` as the init
	// of the workload's namespaces, and by that as the shim that turns
	// into the workload's command.
	if len(os.Args) > 1 && os.Args[1] == workload.InitArg {
		os.Exit(workload.Init(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == workload.ShimArg {
		err := workload.Shim(os.Args[2:])
		fmt.Fprintln(os.Stderr, "bridle:", audit.PrintableLines(err.Error()))
		os.Exit(126)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	err := newRootCommand().ExecuteContext(ctx)
	if err != nil {
		// Errors can quote what a workload or a policy chose (paths,
		// intents, deny reasons): shown escaped, line by line.
		fmt.Fprintln(os.Stderr, "bridle:", audit.PrintableLines(err.Error()))
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(exitUsage)
		}
		os.Exit(1)
	}
	os.Exit(exitCode)
}

// exitCode is set by commands that pass on a child's status.
var exitCode int

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "bridle",
		Short:         "Kernel-enforced, task-scoped permissions for AI agents",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newRunCommand(), newStatusCommand(), newTaskCommand(),
		newApprovalsCommand(), newApproveCommand(), newDenyCommand())
	return root
}
