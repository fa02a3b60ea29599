package workload

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/bpf"
)

// Refusal is one call the workload's seccomp filter stopped.
type Refusal struct {
	PID  uint32 // thread-group id, in the supervisor's PID namespace
	Comm string
	// Action is bpf.ActionNamespace (unshare, clone, setns) or
	// bpf.ActionSocket (socket, socketpair).
	Action bpf.Action
	// Namespaces names the namespaces asked for ("user,mnt"; "any" for a
	// setns that names no kind); Family the refused address family.
	Namespaces string
	Family     uint16
}

// Supervisor answers the refusals of one workload's seccomp filter. The
// shim hands it the filter's listener over a socket pair; every refused call
// then waits until Serve has answered it (EPERM, or "go on" in audit mode),
// and Serve reports each call it answered. If the supervisor dies, the
// kernel answers ENOSYS: the calls stay refused, unrecorded.
type Supervisor struct {
	conn  *net.UnixConn // our end of the pair
	child *os.File      // the shim's end, until it is started

	stop     chan struct{}
	stopOnce sync.Once
	serving  bool
	done     chan struct{}
	err      error // why Serve stopped early
}

// NewSupervisor makes the socket pair a shim hands its listener over.
func NewSupervisor() (*Supervisor, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("workload: supervisor socket: %w", err)
	}
	ours := os.NewFile(uintptr(fds[0]), "seccomp-supervisor")
	defer ours.Close() // FileConn holds its own copy
	c, err := net.FileConn(ours)
	if err != nil {
		unix.Close(fds[1])
		return nil, fmt.Errorf("workload: supervisor socket: %w", err)
	}
	return &Supervisor{
		conn:  c.(*net.UnixConn),
		child: os.NewFile(uintptr(fds[1]), "seccomp-shim"),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}, nil
}

// Attach passes the shim's end to cmd (built by Command): one more
// inherited descriptor and SupervisorEnv naming it.
func (s *Supervisor) Attach(cmd *exec.Cmd) {
	fd := 3 + len(cmd.ExtraFiles)
	cmd.ExtraFiles = append(cmd.ExtraFiles, s.child)
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	cmd.Env = append(cmd.Env, SupervisorEnv+"="+strconv.Itoa(fd))
}

// Started closes this process's copy of the shim's end once the shim holds
// its own, so that a shim that dies without handing over a listener ends
// Serve's wait for it.
func (s *Supervisor) Started() {
	if s.child != nil {
		_ = s.child.Close()
		s.child = nil
	}
}

// Serve receives the listener and answers every refusal, in a goroutine of
// its own, until Stop or until no process uses the filter any more: EPERM,
// or in audit mode (allow) "go on". report is called for each call once it
// is answered; Stop returns only after the last report.
func (s *Supervisor) Serve(allow bool, report func(Refusal)) {
	s.serving = true
	go func() {
		defer close(s.done)
		s.err = s.serve(allow, report)
	}()
}

func (s *Supervisor) serve(allow bool, report func(Refusal)) error {
	listener, err := s.receive()
	if err != nil || listener < 0 {
		return err
	}
	defer unix.Close(listener)
	for {
		select {
		case <-s.stop:
			return nil
		default:
		}
		// RECV blocks until a notification arrives, so wait in poll (with a
		// bound, to notice Stop) and receive only what is pending.
		pfd := []unix.PollFd{{Fd: int32(listener), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, 100)
		if errors.Is(err, unix.EINTR) || n == 0 {
			continue
		}
		if err != nil {
			return fmt.Errorf("workload: seccomp supervisor: poll: %w", err)
		}
		if pfd[0].Revents&unix.POLLIN == 0 {
			if pfd[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0 {
				return nil // every process of the workload has exited
			}
			continue
		}
		if err := answer(listener, allow, report); err != nil {
			return err
		}
	}
}

// Stop ends Serve, waits for it (within its poll interval) and returns why
// it had stopped early, if it had: a workload whose shim never handed over
// its listener ran with refusals unrecorded (still refused: ENOSYS).
func (s *Supervisor) Stop() error {
	s.stopOnce.Do(func() {
		close(s.stop)
		_ = s.conn.Close() // ends a receive still waiting for the shim
	})
	s.Started()
	if !s.serving {
		return nil
	}
	<-s.done
	return s.err
}

// errNoListener: the shim ended before it handed over its listener.
var errNoListener = errors.New("workload: the shim sent no seccomp listener")

// receive waits for the listener the shim sends (Sandbox).
func (s *Supervisor) receive() (int, error) {
	buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := s.conn.ReadMsgUnix(buf, oob)
	select {
	case <-s.stop:
		if oobn == 0 {
			return -1, nil // stopped before the shim got that far
		}
	default:
	}
	if err != nil {
		return -1, fmt.Errorf("workload: seccomp supervisor: %w", err)
	}
	_ = s.conn.Close()
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return -1, errNoListener
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return -1, errNoListener
	}
	unix.CloseOnExec(fds[0])
	return fds[0], nil
}

// seccompData mirrors struct seccomp_data.
type seccompData struct {
	Nr                 int32
	Arch               uint32
	InstructionPointer uint64
	Args               [6]uint64
}

// seccompNotif mirrors struct seccomp_notif.
type seccompNotif struct {
	ID    uint64
	PID   uint32
	Flags uint32
	Data  seccompData
}

// seccompNotifResp mirrors struct seccomp_notif_resp.
type seccompNotifResp struct {
	ID    uint64
	Val   int64
	Error int32
	Flags uint32
}

// answer receives one pending notification, answers it and reports it.
// A caller interrupted by a signal before the answer retries its call,
// which comes back as a new notification: only answered calls are
// reported, so each is recorded once.
func answer(listener int, allow bool, report func(Refusal)) error {
	var n seccompNotif // the kernel wants it zeroed
	if err := ioctl(listener, unix.SECCOMP_IOCTL_NOTIF_RECV, unsafe.Pointer(&n)); err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINTR) {
			return nil // the caller was interrupted before we got to it
		}
		return fmt.Errorf("workload: seccomp supervisor: receive: %w", err)
	}
	ref := describe(n)
	// The pid is only a name for the record: check the call is still
	// waiting after /proc was read, so the name belonged to its caller.
	if ioctl(listener, unix.SECCOMP_IOCTL_NOTIF_ID_VALID, unsafe.Pointer(&n.ID)) != nil {
		return nil
	}
	resp := seccompNotifResp{ID: n.ID, Error: -int32(unix.EPERM)}
	if allow {
		// Audit mode. Safe to continue here: the filter judged register
		// arguments only, which the caller cannot change meanwhile.
		resp = seccompNotifResp{ID: n.ID, Flags: unix.SECCOMP_USER_NOTIF_FLAG_CONTINUE}
	}
	err := ioctl(listener, unix.SECCOMP_IOCTL_NOTIF_SEND, unsafe.Pointer(&resp))
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil // interrupted meanwhile: its retry is a new notification
	case err != nil:
		return fmt.Errorf("workload: seccomp supervisor: answer: %w", err)
	}
	report(ref)
	return nil
}

// describe turns a notification into a Refusal.
func describe(n seccompNotif) Refusal {
	var ref Refusal
	ref.PID, ref.Comm = process(n.PID)
	switch int(n.Data.Nr) {
	case unix.SYS_SOCKET, unix.SYS_SOCKETPAIR:
		ref.Action = bpf.ActionSocket
		ref.Family = uint16(min(n.Data.Args[0], 0xffff))
	case unix.SYS_SETNS:
		ref.Action = bpf.ActionNamespace
		ref.Namespaces = namespaceNames(n.Data.Args[1])
	default: // unshare, clone
		ref.Action = bpf.ActionNamespace
		ref.Namespaces = namespaceNames(n.Data.Args[0])
	}
	return ref
}

var namespaceKinds = []struct {
	flag uint64
	name string
}{
	{unix.CLONE_NEWUSER, "user"}, {unix.CLONE_NEWNS, "mnt"}, {unix.CLONE_NEWNET, "net"},
	{unix.CLONE_NEWPID, "pid"}, {unix.CLONE_NEWUTS, "uts"}, {unix.CLONE_NEWIPC, "ipc"},
	{unix.CLONE_NEWCGROUP, "cgroup"}, {unix.CLONE_NEWTIME, "time"},
}

// namespaceNames lists the namespace kinds in CLONE_NEW* flags, as
// /proc/PID/ns names them; "any" when there are none (setns with 0).
func namespaceNames(flags uint64) string {
	var names []string
	for _, k := range namespaceKinds {
		if flags&k.flag != 0 {
			names = append(names, k.name)
		}
	}
	if len(names) == 0 {
		return "any"
	}
	return strings.Join(names, ",")
}

// process names the caller of a notification, which the kernel gives as a
// thread id: its thread group (the pid records carry) and its command name.
func process(tid uint32) (pid uint32, comm string) {
	pid = tid
	b, err := os.ReadFile("/proc/" + strconv.FormatUint(uint64(tid), 10) + "/status")
	if err != nil {
		return pid, ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		v = strings.TrimSpace(v)
		switch k {
		case "Name":
			comm = v
		case "Tgid":
			if n, err := strconv.ParseUint(v, 10, 32); err == nil {
				pid = uint32(n)
			}
		}
	}
	return pid, comm
}

func ioctl(fd int, req uint, arg unsafe.Pointer) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
}
