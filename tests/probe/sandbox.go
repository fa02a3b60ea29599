package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The sandbox actions try what a workload has no business doing: making
// namespaces (a private user+mount namespace lets it bind-mount any socket
// over a path its rules allow) and opening sockets of address families no
// Bridle hook judges (AF_VSOCK reaches the hypervisor, not the network).

// namespaceFlags maps the names /proc/PID/ns uses to CLONE_NEW* flags.
var namespaceFlags = map[string]uintptr{
	"user":   unix.CLONE_NEWUSER,
	"mnt":    unix.CLONE_NEWNS,
	"net":    unix.CLONE_NEWNET,
	"pid":    unix.CLONE_NEWPID,
	"uts":    unix.CLONE_NEWUTS,
	"ipc":    unix.CLONE_NEWIPC,
	"cgroup": unix.CLONE_NEWCGROUP,
}

// parseNamespaces reads "user,mnt" into CLONE_NEW* flags.
func parseNamespaces(list string) (uintptr, error) {
	var flags uintptr
	for _, k := range strings.Split(list, ",") {
		f, found := namespaceFlags[k]
		if !found {
			return 0, fmt.Errorf("unknown namespace %q (user mnt net pid uts ipc cgroup)", k)
		}
		flags |= f
	}
	return flags, nil
}

// inNamespaces builds a child of this probe that runs ACTION ARGS in new
// namespaces. With unshareCall the child calls unshare(2) itself after the
// fork (a Go process is multi-threaded, and only a single-threaded one may
// unshare a user namespace); otherwise the namespaces come from clone(2).
// With a user namespace the child maps itself to root in it, as
// `unshare -r` does, which gives it every capability there.
func inNamespaces(flags uintptr, unshareCall bool, action ...string) (*exec.Cmd, error) {
	exe, err := self()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, action...)
	attr := &syscall.SysProcAttr{}
	if unshareCall {
		attr.Unshareflags = flags
	} else {
		attr.Cloneflags = flags
	}
	if flags&unix.CLONE_NEWUSER != 0 {
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Geteuid(), Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getegid(), Size: 1}}
	}
	cmd.SysProcAttr = attr
	cmd.Stdin, cmd.Stderr = os.Stdin, os.Stderr
	return cmd, nil
}

// actUnshare: "unshare NS[,NS...]" — a child unshares the namespaces
// (e.g. `unshare user`, what `unshare -U` does) and exits.
func actUnshare(args []string) outcome {
	return namespaceChild(args, true, "unshare")
}

// actCloneNS: "clone-ns NS[,NS...]" — a child is created by clone(2) with
// the namespace flags.
func actCloneNS(args []string) outcome {
	return namespaceChild(args, false, "clone-ns")
}

func namespaceChild(args []string, unshareCall bool, name string) outcome {
	if len(args) != 1 {
		return usage("%s NS[,NS...]", name)
	}
	flags, err := parseNamespaces(args[0])
	if err != nil {
		return usage("%s: %v", name, err)
	}
	cmd, err := inNamespaces(flags, unshareCall, "sleep", "0")
	if err != nil {
		return failure("executable", err)
	}
	op := "clone"
	if unshareCall {
		op = "unshare"
	}
	if err := cmd.Run(); err != nil {
		return failure(op, err)
	}
	return ok("")
}

// actUsernsBind: "userns-bind TARGET SOURCE" — the bind-mount escape. A
// child unshares a user and a mount namespace, bind-mounts the unix socket
// SOURCE over the allowed path TARGET and connects to TARGET: a rule that
// judges the path string sees TARGET, the connection reaches SOURCE. The
// child's line says whom it reached.
func actUsernsBind(args []string) outcome {
	if len(args) != 2 {
		return usage("userns-bind TARGET SOURCE")
	}
	cmd, err := inNamespaces(unix.CLONE_NEWUSER|unix.CLONE_NEWNS, true, append([]string{"__bind-connect"}, args...)...)
	if err != nil {
		return failure("executable", err)
	}
	cmd.Stdout = os.Stdout
	if err := cmd.Start(); err != nil {
		return failure("unshare", err)
	}
	_ = cmd.Wait()
	line, code := childStatus(cmd.ProcessState)
	return outcome{line, code}
}

// actBindConnect is the namespaced half of userns-bind.
func actBindConnect(args []string) outcome {
	if len(args) != 2 {
		return usage("__bind-connect TARGET SOURCE")
	}
	target, source := args[0], args[1]
	if err := unix.Mount(source, target, "", unix.MS_BIND, ""); err != nil {
		return failure("mount", err)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return failure("socket", err)
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: target}); err != nil {
		return failure("connect", err)
	}
	// The listener greets with its name: proof of whom the path reached.
	tv := unix.NsecToTimeval((3 * time.Second).Nanoseconds())
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	buf := make([]byte, 64)
	n, err := unix.Read(fd, buf)
	if err != nil {
		return failure("read", err)
	}
	return ok("reached " + strings.TrimSpace(string(buf[:max(n, 0)])))
}

// actSetns: "setns NS" — setns(2) into this process's own namespace of that
// kind. Without a filter the kernel answers EINVAL for the user namespace
// (re-entering one's own) and EPERM for the others (no CAP_SYS_ADMIN); the
// workload's filter refuses the call itself, with EPERM, before either.
func actSetns(args []string) outcome {
	if len(args) != 1 {
		return usage("setns NS")
	}
	flag, found := namespaceFlags[args[0]]
	if !found {
		return usage("setns: unknown namespace %q", args[0])
	}
	fd, err := unix.Open("/proc/self/ns/"+args[0], unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return failure("open", err)
	}
	defer unix.Close(fd)
	if err := unix.Setns(fd, int(flag)); err != nil {
		return failure("setns", err)
	}
	return ok("")
}

// socketFamilies are the families the socket actions take by name, with a
// socket type each supports.
var socketFamilies = map[string]struct{ family, typ int }{
	"unix":      {unix.AF_UNIX, unix.SOCK_STREAM},
	"inet":      {unix.AF_INET, unix.SOCK_DGRAM},
	"inet6":     {unix.AF_INET6, unix.SOCK_DGRAM},
	"netlink":   {unix.AF_NETLINK, unix.SOCK_RAW},
	"vsock":     {unix.AF_VSOCK, unix.SOCK_STREAM},
	"tipc":      {unix.AF_TIPC, unix.SOCK_RDM},
	"alg":       {unix.AF_ALG, unix.SOCK_SEQPACKET},
	"rds":       {unix.AF_RDS, unix.SOCK_SEQPACKET},
	"bluetooth": {unix.AF_BLUETOOTH, unix.SOCK_STREAM},
	"xdp":       {unix.AF_XDP, unix.SOCK_RAW},
}

// actSocket: "socket FAMILY" — create (and close) a socket of that family.
// For AF_VSOCK the creation is the whole door: from there a connect()
// reaches the hypervisor, and no cgroup hook sees it.
func actSocket(args []string) outcome {
	if len(args) != 1 {
		return usage("socket FAMILY")
	}
	f, found := socketFamilies[args[0]]
	if !found {
		return usage("socket: unknown family %q", args[0])
	}
	fd, err := unix.Socket(f.family, f.typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return failure("socket", err)
	}
	unix.Close(fd)
	return ok("")
}

// actSocketpair: "socketpair FAMILY" — socketpair(2) of that family.
func actSocketpair(args []string) outcome {
	if len(args) != 1 {
		return usage("socketpair FAMILY")
	}
	f, found := socketFamilies[args[0]]
	if !found {
		return usage("socketpair: unknown family %q", args[0])
	}
	fds, err := unix.Socketpair(f.family, f.typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return failure("socketpair", err)
	}
	unix.Close(fds[0])
	unix.Close(fds[1])
	return ok("")
}

// ioringOpSocket is IORING_OP_SOCKET (kernel 5.19+): a socket made by the
// kernel on the ring's behalf, without the socket(2) call a seccomp filter
// sees.
const ioringOpSocket = 45

// actIOUringSocket: "iouring-socket FAMILY" — create a socket of that family
// through io_uring.
func actIOUringSocket(args []string) outcome {
	if len(args) != 1 {
		return usage("iouring-socket FAMILY")
	}
	f, found := socketFamilies[args[0]]
	if !found {
		return usage("iouring-socket: unknown family %q", args[0])
	}
	res, err := uringOne(uringSQE{opcode: ioringOpSocket, fd: int32(f.family), off: uint64(f.typ), userData: 1})
	if err != nil {
		var se setupError
		if errors.As(err, &se) {
			return failure("io_uring_setup", se.err)
		}
		return failure("io_uring", err)
	}
	if res < 0 {
		return failure("IORING_OP_SOCKET", unix.Errno(-res))
	}
	unix.Close(int(res))
	return ok("")
}

// uringOne submits one request on a new ring and returns its CQE's res.
func uringOne(sqe uringSQE) (int32, error) {
	var p uringParams
	r, _, e := unix.Syscall(unix.SYS_IO_URING_SETUP, 1, uintptr(unsafe.Pointer(&p)), 0)
	if e != 0 {
		return 0, setupError{e}
	}
	ring := int(r)
	defer unix.Close(ring)
	prot, flags := unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE
	sqSize := int(p.sqOff.array + p.sqEntries*4)
	cqSize := int(p.cqOff.cqes + p.cqEntries*sizeofCQE)
	if p.features&ioringFeatSingleMap == 0 {
		return 0, errors.New("kernel without IORING_FEAT_SINGLE_MMAP")
	}
	mem, err := unix.Mmap(ring, ioringOffSQRing, max(sqSize, cqSize), prot, flags)
	if err != nil {
		return 0, fmt.Errorf("mmap rings: %w", err)
	}
	defer unix.Munmap(mem)
	sqeMem, err := unix.Mmap(ring, ioringOffSQEs, int(p.sqEntries)*sizeofSQE, prot, flags)
	if err != nil {
		return 0, fmt.Errorf("mmap sqes: %w", err)
	}
	defer unix.Munmap(sqeMem)
	*(*uringSQE)(unsafe.Pointer(&sqeMem[0])) = sqe
	u32 := func(off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&mem[off])) }
	tail := atomic.LoadUint32(u32(p.sqOff.tail))
	unsafe.Slice(u32(p.sqOff.array), p.sqEntries)[tail&*u32(p.sqOff.ringMask)] = 0
	atomic.StoreUint32(u32(p.sqOff.tail), tail+1)
	for {
		_, _, e := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(ring), 1, 1, ioringEnterGetevent, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, fmt.Errorf("io_uring_enter: %w", e)
		}
		break
	}
	head := atomic.LoadUint32(u32(p.cqOff.head))
	if atomic.LoadUint32(u32(p.cqOff.tail)) == head {
		return 0, errors.New("no completion")
	}
	off := p.cqOff.cqes + (head&*u32(p.cqOff.ringMask))*sizeofCQE
	return int32(binary.NativeEndian.Uint32(mem[off+8:])), nil
}
