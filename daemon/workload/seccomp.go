package workload

import (
	"fmt"
	"os"
	"strconv"
	"unsafe"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// The seccomp filter every workload Bridle launches runs under. It closes
// doors no BPF hook of Bridle's guards on every kernel:
//
//   - Namespaces. In a user namespace of its own an unprivileged process
//     holds every capability, and with a mount namespace it can bind-mount
//     any unix socket over a path its rules allow (the unix hooks judge the
//     path string). unshare(2) and clone(2) with any CLONE_NEW* flag and
//     every setns(2) are refused: a workload has no use for them, and
//     without a user namespace the other kinds need CAP_SYS_ADMIN anyway.
//     clone3(2) passes its flags in memory, where a filter cannot read them,
//     so it answers ENOSYS: glibc (2.34+, pthread_create and posix_spawn)
//     and Rust's std then fall back to clone(2), which the filter reads; Go
//     uses clone(2) unless asked for a cgroup fd or a time namespace.
//   - Address families. socket(2) and socketpair(2) are refused for every
//     family but AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK. Unix and IP are
//     what Bridle's cgroup hooks judge; netlink stays because glibc's
//     getaddrinfo (AI_ADDRCONFIG) and tools such as ip(8) read interface
//     state through it, and it reaches only this kernel (changing anything
//     through it needs CAP_NET_ADMIN). Everything else — AF_VSOCK to the
//     hypervisor, AF_TIPC, AF_RDS, AF_ALG, AF_XDP, AF_BLUETOOTH, AF_SMC... —
//     is a way out or kernel attack surface no connect hook sees.
//   - io_uring. Its requests are made by the kernel on the ring's behalf,
//     without the system calls a filter sees: IORING_OP_SOCKET (5.19+)
//     makes a socket of any family. io_uring_setup, io_uring_enter and
//     io_uring_register answer ENOSYS, as if the kernel had no io_uring;
//     its users (libuv, liburing with a fallback) then use plain calls.
//   - Foreign system call ABIs. The filter knows this architecture's call
//     numbers only; a 64-bit process can still enter the kernel through the
//     32-bit ABIs (int 0x80 on x86, x32), whose numbers differ. Calls
//     through any ABI but the native one answer ENOSYS.
//
// Refusals go to a supervisor (SECCOMP_RET_USER_NOTIF): `bridle run` answers
// EPERM and writes the decision record (seccomp alone cannot record). The
// filter is fail-closed without it: once the supervisor's listener is
// closed — `bridle run` died — the kernel answers every refused call with
// ENOSYS. A workload cannot take the supervisor's place: the kernel allows
// one listener per filter chain, so its own filter cannot get one.

// SupervisorEnv names the environment variable that tells the shim which of
// its descriptors leads to the supervisor (see Supervisor). It is removed
// before the workload's command runs.
const SupervisorEnv = "BRIDLE_SECCOMP_SUPERVISOR_FD"

// allowedFamilies are the socket address families a workload may create.
var allowedFamilies = []uint64{unix.AF_UNIX, unix.AF_INET, unix.AF_INET6, unix.AF_NETLINK}

// namespaceFlags are every CLONE_NEW* flag unshare(2) takes.
const namespaceFlags = unix.CLONE_NEWUSER | unix.CLONE_NEWNS | unix.CLONE_NEWNET | unix.CLONE_NEWPID |
	unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWCGROUP | unix.CLONE_NEWTIME

// cloneNamespaceFlags are those clone(2) takes: CLONE_NEWTIME shares its
// bit with the exit signal there, and only unshare and clone3 accept it.
const cloneNamespaceFlags = namespaceFlags &^ unix.CLONE_NEWTIME

// errnoAction is SECCOMP_RET_ERRNO with an errno.
func errnoAction(e unix.Errno) seccomp.Action {
	return seccomp.ActionErrno | seccomp.Action(e)
}

// sandboxPolicy is the filter's policy: refuse is the action for the calls
// the workload may not make (USER_NOTIF, or ERRNO with EPERM).
func sandboxPolicy(refuse seccomp.Action) seccomp.Policy {
	var notAllowedFamily seccomp.ArgumentConditions
	for _, f := range allowedFamilies {
		// Compared as 64 bits: a family with high bits set is refused,
		// though the kernel reads only the low 32.
		notAllowedFamily = append(notAllowedFamily, seccomp.Condition{Argument: 0, Operation: seccomp.NotEqual, Value: f})
	}
	return seccomp.Policy{
		DefaultAction: seccomp.ActionAllow,
		Syscalls: []seccomp.SyscallGroup{
			{Names: []string{"clone3", "io_uring_setup", "io_uring_enter", "io_uring_register"}, Action: errnoAction(unix.ENOSYS)},
			{Names: []string{"setns"}, Action: refuse},
			{
				NamesWithCondtions: []seccomp.NameWithConditions{
					{Name: "unshare", Conditions: seccomp.ArgumentConditions{
						{Argument: 0, Operation: seccomp.BitsSet, Value: namespaceFlags}}},
					// clone's flags are its first argument on x86-64 and
					// arm64 (s390 swaps them; Bridle does not build there).
					{Name: "clone", Conditions: seccomp.ArgumentConditions{
						{Argument: 0, Operation: seccomp.BitsSet, Value: cloneNamespaceFlags}}},
					{Name: "socket", Conditions: notAllowedFamily},
					{Name: "socketpair", Conditions: notAllowedFamily},
				},
				Action: refuse,
			},
		},
	}
}

// sandboxProgram is the filter for this architecture.
func sandboxProgram(refuse seccomp.Action) ([]bpf.Instruction, error) {
	native, err := arch.GetInfo("")
	if err != nil {
		return nil, fmt.Errorf("workload: seccomp: %w", err)
	}
	pol := sandboxPolicy(refuse)
	body, err := pol.Assemble()
	if err != nil {
		return nil, fmt.Errorf("workload: seccomp: %w", err)
	}
	// The library sends calls of a foreign ABI to the default action
	// (allow): refuse them before it sees them.
	return append([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 4, Size: 4}, // seccomp_data.arch
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(native.ID), SkipTrue: 1},
		bpf.RetConstant{Val: uint32(errnoAction(unix.ENOSYS))},
	}, body...), nil
}

// installFilter loads the filter on every thread of this process (TSYNC)
// and returns the notification listener when refuse is USER_NOTIF (-1
// otherwise). The caller must have set no_new_privs.
func installFilter(refuse seccomp.Action) (int, error) {
	prog, err := sandboxProgram(refuse)
	if err != nil {
		return -1, err
	}
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return -1, fmt.Errorf("workload: seccomp: %w", err)
	}
	insns := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		insns[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	fprog := unix.SockFprog{Len: uint16(len(insns)), Filter: &insns[0]}
	flags := uintptr(unix.SECCOMP_FILTER_FLAG_TSYNC)
	if refuse == seccomp.ActionUserNotify {
		// TSYNC reports a thread it could not synchronise by its id, in
		// the same return value as the listener: TSYNC_ESRCH (5.7+) makes
		// that an error code instead.
		flags |= unix.SECCOMP_FILTER_FLAG_NEW_LISTENER | unix.SECCOMP_FILTER_FLAG_TSYNC_ESRCH
	}
	r, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, flags, uintptr(unsafe.Pointer(&fprog)))
	if errno != 0 {
		return -1, fmt.Errorf("workload: install seccomp filter: %w", errno)
	}
	if refuse != seccomp.ActionUserNotify {
		if r != 0 {
			return -1, fmt.Errorf("workload: install seccomp filter: thread %d could not be synchronised", r)
		}
		return -1, nil
	}
	return int(r), nil
}

// Sandbox installs the workload's seccomp filter. The shim calls it last,
// after no_new_privs and the change of user, right before it execs the
// workload's command: from here on the process may not make namespaces nor
// sockets of other families. When the shim was started with a supervisor
// (SupervisorEnv), refusals are handed to it and it records them; without
// one they are refused with EPERM, unrecorded.
func Sandbox() error {
	fdText, supervised := os.LookupEnv(SupervisorEnv)
	if !supervised {
		_, err := installFilter(errnoAction(unix.EPERM))
		return err
	}
	// The workload's command must not inherit the variable.
	if err := os.Unsetenv(SupervisorEnv); err != nil {
		return fmt.Errorf("workload: %w", err)
	}
	fd, err := strconv.Atoi(fdText)
	if err != nil || fd < 3 {
		return fmt.Errorf("workload: %s=%q: not a descriptor", SupervisorEnv, fdText)
	}
	// Never inherited by the workload, whatever happens next.
	unix.CloseOnExec(fd)
	defer unix.Close(fd)
	listener, err := installFilter(seccomp.ActionUserNotify)
	if err != nil {
		return err
	}
	defer unix.Close(listener)
	// The listener travels to the supervisor; this process keeps no copy
	// (and the kernel made it close-on-exec).
	if err := unix.Sendmsg(fd, []byte{0}, unix.UnixRights(listener), nil, 0); err != nil {
		return fmt.Errorf("workload: hand the seccomp listener to the supervisor: %w", err)
	}
	return nil
}
