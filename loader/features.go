package loader

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/loader/internal/kernel"
)

// ExecMode is how exec refusals are enforced on this kernel.
type ExecMode string

const (
	// ExecModeLSM refuses the exec with EPERM: nothing of the binary runs.
	ExecModeLSM ExecMode = "lsm"
	// ExecModeKill kills the new image with SIGKILL before its first
	// instruction; used where BPF LSM is not active.
	ExecModeKill ExecMode = "kill"
)

// Features is what the loader found on the running kernel, with reasons a
// person can act on.
type Features struct {
	Kernel         string   // uname release
	ActiveLSMs     []string // /sys/kernel/security/lsm
	ExecMode       ExecMode
	ExecModeReason string
	UnixHooks      bool // cgroup connect_unix/sendmsg_unix (kernel 6.7+)
	UnixReason     string
	ListenHooks    bool // cgroup bind4/bind6 and the inbound connection check
	ListenReason   string
	SockoptHook    bool // cgroup setsockopt: source routing options refused
	SockoptReason  string
	// DNSRedirect: workloads' port 53 can be steered to Bridle's resolver
	// (cgroup recvmsg4/6 restore the replies' source; Enforcer.SetResolver).
	DNSRedirect       bool
	DNSRedirectReason string
	BTF               string               // where kernel type information came from
	SocketDestroy     SocketDestroyFeature // how a revoked workload's open sockets are aborted
	UnixShutdown      UnixShutdownFeature  // how a revoked workload's unix connections are ended

	// SeccompGuard says what the launch filter of `bridle run` refuses; it
	// is in force on every kernel, for the workloads it launches.
	SeccompGuard string
	// FamilyGuard: the BPF LSM guard refuses, for every workload, sockets
	// of address families Bridle's hooks do not judge (lsm mode only).
	FamilyGuard       bool
	FamilyGuardReason string
	// UsernsGuard: the BPF LSM guard refuses user namespaces to every
	// workload (lsm mode, kernel 6.1+).
	UsernsGuard       bool
	UsernsGuardReason string
}

// Map is the features as `bridle status --json` and bridled's status
// report them, under the keys both print (docs/DAEMON.md). Each adds what
// only it knows.
func (f Features) Map() map[string]any {
	return map[string]any{
		"kernel": f.Kernel, "exec_mode": f.ExecMode, "exec_mode_reason": f.ExecModeReason,
		"unix_hooks": f.UnixHooks, "unix_reason": f.UnixReason, "btf": f.BTF,
		"socket_destroy": f.SocketDestroy.Method, "socket_destroy_reason": f.SocketDestroy.Reason,
		"listen_hooks": f.ListenHooks, "listen_reason": f.ListenReason,
		"sockopt_hook": f.SockoptHook, "sockopt_reason": f.SockoptReason,
		"dns_redirect": f.DNSRedirect, "dns_redirect_reason": f.DNSRedirectReason,
		"unix_shutdown": f.UnixShutdown.Method, "unix_shutdown_reason": f.UnixShutdown.Reason,
		"seccomp_guard": f.SeccompGuard,
		"family_guard":  f.FamilyGuard, "family_guard_reason": f.FamilyGuardReason,
		"userns_guard": f.UsernsGuard, "userns_guard_reason": f.UsernsGuardReason,
	}
}

// UnsupportedError says that a kernel feature Bridle wanted is missing, and
// why; it is errors.Is ebpf.ErrNotSupported.
type UnsupportedError = kernel.UnsupportedError

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// activeLSMs reads the kernel's active LSM list. A BPF LSM program loads and
// attaches even when "bpf" is missing from this list, and then never runs:
// only this list says whether it would enforce.
func activeLSMs() ([]string, error) {
	if err := ensureSecurityFS(); err != nil {
		return nil, err
	}
	b, err := os.ReadFile("/sys/kernel/security/lsm")
	if err != nil {
		return nil, fmt.Errorf("read active LSM list: %w", err)
	}
	return strings.Split(strings.TrimSpace(string(b)), ","), nil
}

func btfSource() string {
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err == nil {
		return "/sys/kernel/btf/vmlinux"
	}
	return "none (kernel built without CONFIG_DEBUG_INFO_BTF)"
}

// bpfLSMActive reports whether "bpf" is in the active LSM list, with the
// reason when it is not.
func bpfLSMActive(lsms []string, err error) (bool, string) {
	if err != nil {
		return false, err.Error()
	}
	for _, l := range lsms {
		if l == "bpf" {
			return true, ""
		}
	}
	return false, fmt.Sprintf("\"bpf\" is not in the active LSM list (%s); add it to the kernel's lsm= boot parameter for EPERM enforcement", strings.Join(lsms, ","))
}

// verifierError unwraps a verifier log for display.
func verifierError(err error) string {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Sprintf("%+v", ve)
	}
	return err.Error()
}
