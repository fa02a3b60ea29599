package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Peer is the process on the other end of an API connection, as the kernel
// reports it: it cannot be claimed by the caller.
//
// Who the caller is (uid, gid, groups) comes from data the kernel bound to
// the connection when the caller connected: SO_PEERCRED and SO_PEERGROUPS.
// Where it runs (its cgroup, which decides whether it is a workload) is
// not bound to the connection and can only be read from /proc/PID; a PID,
// though, can be reused as soon as the caller exits, by any process. So
// the cgroup is read through a pidfd of the caller (SO_PEERPIDFD, Linux
// 6.5+) and trusted only if that very process is still alive after the
// read (its PID cannot have changed hands meanwhile). Without SO_PEERPIDFD
// see readProcs.
type Peer struct {
	UID    uint32
	GID    uint32
	PID    int32
	Groups []uint32 // primary and supplementary groups, as of connect()
	Cgroup string   // cgroup v2 path; "" when it could not be read
	Comm   string   // the caller's command name, for records
	Err    error    // why the caller cannot be trusted, if it cannot
}

type peerKey struct{}

func peerFrom(ctx context.Context) Peer {
	p, ok := ctx.Value(peerKey{}).(Peer)
	if !ok {
		return Peer{Err: errors.New("no peer credentials")}
	}
	return p
}

// peerPidfd says whether to ask for SO_PEERPIDFD; tests turn it off to
// run the path older kernels take.
var peerPidfd = true

func readPeer(c net.Conn) Peer {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Peer{Err: fmt.Errorf("not a unix socket connection: %T", c)}
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Peer{Err: fmt.Errorf("peer credentials: %w", err)}
	}
	var p Peer
	if err := raw.Control(func(fd uintptr) { p = peerOf(int(fd)) }); err != nil {
		return Peer{Err: fmt.Errorf("peer credentials: %w", err)}
	}
	return p
}

// peerOf reads the peer of a connected unix socket.
func peerOf(fd int) Peer {
	cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return Peer{Err: fmt.Errorf("peer credentials: %w", err)}
	}
	p := Peer{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid, Groups: []uint32{cred.Gid}}
	groups, err := peerGroups(fd)
	if err != nil {
		// Without them an admin by supplementary group would be
		// refused; refusing everyone says why.
		p.Err = fmt.Errorf("peer groups (SO_PEERGROUPS): %w", err)
		return p
	}
	p.Groups = append(p.Groups, groups...)

	pidfd, bound, err := callerPidfd(fd, int(cred.Pid))
	if err != nil {
		p.Err = err
		return p
	}
	defer unix.Close(pidfd)
	if err := p.readProcs(pidfd, bound); err != nil {
		p.Err = err
	}
	return p
}

// callerPidfd returns a pidfd of the caller. bound says whether it is the
// connection's own (SO_PEERPIDFD: the process that called connect(),
// whatever happened to its PID since) or, on kernels without it, one
// opened by PID now (pidfd_open: whichever process holds that PID now).
func callerPidfd(fd, pid int) (pidfd int, bound bool, err error) {
	if peerPidfd {
		pidfd, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEERPIDFD)
		switch {
		case err == nil:
			return pidfd, true, nil
		case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ESRCH):
			// 6.5 to 6.15 refuse a pidfd for a process already gone.
			return -1, false, fmt.Errorf("the caller (pid %d) exited before it could be identified", pid)
		case !errors.Is(err, unix.ENOPROTOOPT):
			return -1, false, fmt.Errorf("caller pidfd (SO_PEERPIDFD): %w", err)
		}
	}
	pidfd, err = unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return -1, false, fmt.Errorf("the caller (pid %d) exited before it could be identified", pid)
	}
	if err != nil {
		return -1, false, fmt.Errorf("caller pidfd (pidfd_open): %w", err)
	}
	return pidfd, false, nil
}

// readProcs reads the caller's cgroup and comm from /proc/PID, then checks
// that the process pidfd names was alive all along: a live process keeps
// its PID, so what was read was that process's.
//
// When the pidfd is bound to the connection, that is the caller. When it
// was opened by PID (kernels before 6.5), it names whoever held the PID
// when bridled accepted the connection, which may be a process that took
// the PID between the caller's connect() and that accept(). Such a
// process is told apart when its credentials differ from the
// connection's (which the caller's were at connect time): then the call is
// refused. What remains is a process with exactly the caller's
// credentials, outside the roots, taking the caller's PID within that
// window: docs/DAEMON.md says so.
func (p *Peer) readProcs(pidfd int, bound bool) error {
	cg, cgErr := procCgroup(int(p.PID))
	comm := readComm(p.PID)
	var credErr error
	if !bound {
		credErr = p.sameCreds()
	}
	exited, err := pidfdExited(pidfd)
	switch {
	case err != nil:
		return fmt.Errorf("caller liveness: %w", err)
	case exited:
		return fmt.Errorf("the caller (pid %d) exited before it could be identified", p.PID)
	case cgErr != nil:
		return cgErr
	case credErr != nil:
		return credErr
	}
	p.Cgroup, p.Comm = cg, comm
	return nil
}

// sameCreds checks that the process now at the caller's PID runs with the
// credentials the connection carries (effective uid and gid, groups).
func (p *Peer) sameCreds() error {
	st, err := procStatus(int(p.PID))
	if err != nil {
		return err
	}
	want := slices.Clone(p.Groups[1:])
	slices.Sort(want)
	have := slices.Clone(st.groups)
	slices.Sort(have)
	if st.euid != p.UID || st.egid != p.GID || !slices.Equal(slices.Compact(want), slices.Compact(have)) {
		return fmt.Errorf("the process now at the caller's pid %d runs as uid %d gid %d, not as the caller connected (uid %d gid %d): the pid was reused, the caller cannot be identified",
			p.PID, st.euid, st.egid, p.UID, p.GID)
	}
	return nil
}

// pidfdExited reports whether the process of pidfd has exited (a zombie
// included): a pidfd polls readable then.
func pidfdExited(pidfd int) (bool, error) {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, err
		}
		return n > 0 && fds[0].Revents&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) != 0, nil
	}
}

// peerGroups reads the supplementary groups the caller had when it
// connected (SO_PEERGROUPS, Linux 4.13+).
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]uint32, 64)
	for {
		size := uint32(len(buf) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		switch {
		case errno == unix.ERANGE && int(size/4) > len(buf):
			buf = make([]uint32, size/4)
			continue
		case errno != 0:
			return nil, errno
		}
		return buf[:size/4], nil
	}
}

// procCgroup reads the cgroup v2 path of a process from /proc/PID/cgroup
// (the "0::" line). The caller makes sure the PID is the process it means.
func procCgroup(pid int) (string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", fmt.Errorf("cgroup of pid %d: %w", pid, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			// A cgroup removed while the process is in it reads "/x (deleted)".
			rest, _ = strings.CutSuffix(rest, " (deleted)")
			return rest, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("cgroup of pid %d: %w", pid, err)
	}
	return "", fmt.Errorf("cgroup of pid %d: no cgroup v2 entry", pid)
}

// liveCgroup reads the cgroup of the process with this PID, making sure
// the process read is one that was alive from before the read to after it
// (not a PID recycled in between).
func liveCgroup(pid int) (string, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return "", fmt.Errorf("pid %d: %w", pid, err)
	}
	defer unix.Close(pidfd)
	cg, err := procCgroup(pid)
	if err != nil {
		return "", err
	}
	if exited, err := pidfdExited(pidfd); err != nil || exited {
		return "", fmt.Errorf("pid %d exited", pid)
	}
	return cg, nil
}

type procCreds struct {
	euid, egid uint32
	groups     []uint32
}

// procStatus reads a process's effective ids and supplementary groups.
func procStatus(pid int) (procCreds, error) {
	var st procCreds
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return st, fmt.Errorf("credentials of pid %d: %w", pid, err)
	}
	var seen int
	for _, line := range strings.Split(string(b), "\n") {
		key, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		switch key {
		case "Uid", "Gid":
			if len(fields) < 2 {
				return st, fmt.Errorf("credentials of pid %d: bad %s line", pid, key)
			}
			n, err := strconv.ParseUint(fields[1], 10, 32)
			if err != nil {
				return st, fmt.Errorf("credentials of pid %d: %w", pid, err)
			}
			if key == "Uid" {
				st.euid = uint32(n)
			} else {
				st.egid = uint32(n)
			}
			seen++
		case "Groups":
			for _, g := range fields {
				n, err := strconv.ParseUint(g, 10, 32)
				if err != nil {
					return st, fmt.Errorf("credentials of pid %d: %w", pid, err)
				}
				st.groups = append(st.groups, uint32(n))
			}
			seen++
		}
	}
	if seen != 3 {
		return st, fmt.Errorf("credentials of pid %d: incomplete status", pid)
	}
	return st, nil
}

// readComm is a process's command name.
func readComm(pid int32) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(b), "\n")
}
