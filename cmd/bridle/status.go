package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/bridle-sh/bridle/loader"
)

func newStatusCommand() *cobra.Command {
	var asJSON bool
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
			if asJSON {
				return json.NewEncoder(os.Stdout).Encode(map[string]any{
					"kernel": f.Kernel, "exec_mode": f.ExecMode, "exec_mode_reason": f.ExecModeReason,
					"unix_hooks": f.UnixHooks, "unix_reason": f.UnixReason, "active_lsms": f.ActiveLSMs,
					"btf": f.BTF, "pinned_runs": len(pinned),
					"socket_destroy": f.SocketDestroy.Method, "socket_destroy_reason": f.SocketDestroy.Reason,
				})
			}
			fmt.Printf("kernel:        %s\n", f.Kernel)
			fmt.Printf("exec mode:     %s — %s\n", f.ExecMode, f.ExecModeReason)
			if f.UnixHooks {
				fmt.Printf("unix sockets:  enforced by path (%s)\n", f.UnixReason)
			} else {
				fmt.Printf("unix sockets:  NOT enforced — %s\n", f.UnixReason)
			}
			fmt.Printf("active LSMs:   %v\n", f.ActiveLSMs)
			fmt.Printf("BTF:           %s\n", f.BTF)
			fmt.Printf("open sockets:  %s — %s\n", f.SocketDestroy.Method, f.SocketDestroy.Reason)
			fmt.Printf("pinned runs:   %d under %s\n", len(pinned), filepath.Join(loader.DefaultPinRoot, "run"))
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
