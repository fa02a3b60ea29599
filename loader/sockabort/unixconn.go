package sockabort

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/loader/alive"
)

// Unix connections end with the task too. The kernel has no way to destroy
// a unix socket from outside (no bpf_sock_destroy, no SOCK_DESTROY for
// AF_UNIX), and the connect_unix hook only judges new connects, so a
// connection made under a task's grant would keep talking after the task.
// It is ended from userspace instead: for each process of the workload,
// each unix socket it holds that is connected to something outside the
// workload is copied into bridled with pidfd_getfd (Linux 5.6+, root with
// CAP_SYS_PTRACE) and shut down for reading and writing (shutdown(2) acts
// on the socket, whichever descriptor names it), and the copy is closed.
// The workload's reads then see end of file and its writes EPIPE; so does
// the peer.
//
// Which connections:
//   - connected stream and seqpacket sockets, and connected datagram
//     sockets, whose peer no process of the workload holds (ends held
//     inside the workload, such as the socketpairs a shell or Node.js make
//     for their children's stdio, join the workload to itself and need no
//     grant);
//   - in both directions: a connection accepted by a workload's listener
//     during the task is ended too (the agent may have invited it through a
//     grant, e.g. by asking a granted service to call back);
//   - except those the workload already held, with the same peer, when the
//     task started (UnixConnections): they were not made under the task,
//     e.g. a systemd unit's stdout stream to journald. A datagram socket
//     re-pointed at another peer during the task is not kept.
//
// Peers come from sock_diag (unix_diag, CONFIG_UNIX_DIAG). Where the kernel
// has none, every connected unix socket the workload did not hold at the
// task's start counts as leaving the workload (internal socketpairs
// included) and datagram sockets are never kept: safe, and said so in
// `bridle status`.
//
// Out of reach: a socket held by no process of the workload at the moment
// of the sweep (in flight in an SCM_RIGHTS message, queued unaccepted on a
// listener, or held only by a process outside the workload). A process is
// acted on only through a pidfd whose /proc view was checked afterwards to
// be alive and in the workload, so a reused PID is never touched.
//
// Cost: at most three descriptors at any moment (a pidfd and one /proc file
// or directory, or the pidfd and the copy being shut down; a sock_diag
// socket, and two namespace files while a foreign network namespace is
// dumped), and one pass per process over its descriptor table.

// UnixConn is a unix socket connection a workload holds: the socket's inode
// and its peer's (0 when unknown).
type UnixConn struct {
	Inode uint64 `json:"inode"`
	Peer  uint64 `json:"peer,omitempty"`
}

// UnixShutdownMethod is how a workload's unix connections are ended.
type UnixShutdownMethod string

const (
	// UnixShutdownDiag knows each connection's peer from sock_diag, so
	// connections inside the workload are left alone.
	UnixShutdownDiag UnixShutdownMethod = "sock_diag"
	// UnixShutdownAll does not know peers: every unix connection opened
	// during the task is ended, internal ones included.
	UnixShutdownAll UnixShutdownMethod = "all"
	// UnixShutdownNone: unix connections survive a task's end (unix
	// sockets are not enforced at all, or pidfd_getfd is unavailable).
	UnixShutdownNone UnixShutdownMethod = "none"
)

// UnixShutdownFeature is what the kernel offers for ending a workload's unix
// connections, for `bridle status`.
type UnixShutdownFeature struct {
	Method UnixShutdownMethod
	Reason string
}

// UnixStats is what one ShutdownUnix call did.
type UnixStats struct {
	Method    UnixShutdownMethod
	Shut      int // connections shut down
	Kept      int // held since before the task, left open
	Internal  int // both ends held by the workload, left open
	Processes int // processes whose descriptors were read (last pass)
	Passes    int
	Duration  time.Duration
}

// kcmpFiles is KCMP_FILES (linux/kcmp.h): do two tasks share a file table?
const kcmpFiles = 2

// unix_diag wire format (linux/unix_diag.h).
const (
	unixDiagReqLen    = 24 // struct unix_diag_req
	unixDiagMsgLen    = 16 // struct unix_diag_msg
	udiagShowPeer     = 0x4
	unixDiagPeer      = 2 // UNIX_DIAG_PEER
	unixDiagShutdown  = 6 // UNIX_DIAG_SHUTDOWN
	shutdownMask      = 3 // RCV_SHUTDOWN|SEND_SHUTDOWN
	maxUnixSweepPass  = 3
	unixDiagAllStates = ^uint32(0)
)

func probeUnixShutdown() UnixShutdownFeature {
	pidfd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err == nil {
		var fd int
		fd, err = unix.PidfdGetfd(pidfd, pidfd, 0)
		if err == nil {
			unix.Close(fd)
		}
		unix.Close(pidfd)
	}
	if err != nil {
		return UnixShutdownFeature{Method: UnixShutdownNone,
			Reason: fmt.Sprintf("pidfd_getfd (Linux 5.6+) failed: %v; unix connections survive the end of a task", err)}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/yama/ptrace_scope"); err == nil && strings.TrimSpace(string(b)) == "3" {
		return UnixShutdownFeature{Method: UnixShutdownNone,
			Reason: "Yama ptrace_scope is 3, which refuses pidfd_getfd to everyone; unix connections survive the end of a task"}
	}
	if err := probeUnixDiag(); err != nil {
		return UnixShutdownFeature{Method: UnixShutdownAll,
			Reason: "pidfd_getfd and shutdown; no unix sock_diag (" + err.Error() + "), so every unix connection opened during a task ends with it, internal ones included"}
	}
	return UnixShutdownFeature{Method: UnixShutdownDiag,
		Reason: "pidfd_getfd and shutdown of the connections leaving the workload, peers from unix sock_diag"}
}

func probeUnixDiag() error {
	c, err := openSockDiag()
	if err != nil {
		return err
	}
	defer c.Close()
	// No state selected: the dump is empty, or fails if unix_diag is absent.
	_, err = c.unixDump(0, nil)
	if err == unix.ENOENT {
		return errors.New("the kernel has no unix_diag (CONFIG_UNIX_DIAG)")
	}
	return err
}

// unixConnections lists the connections of a workload that shutdownUnix
// would end; see Aborter.UnixConnections.
func unixConnections(root string, cgroupID uint64, method UnixShutdownMethod) ([]UnixConn, error) {
	s, err := newUnixSweep(root, cgroupID, method == UnixShutdownDiag)
	if err != nil {
		return nil, fmt.Errorf("unix connections: %w", err)
	}
	var out []UnixConn
	_, errs := s.pass(nil, func(c UnixConn, _ sockHolder) error {
		out = append(out, c)
		return nil
	})
	if len(errs) > 0 {
		return out, fmt.Errorf("unix connections: %w", errors.Join(errs...))
	}
	return out, nil
}

// shutdownUnix ends the connections of a workload that leave it, except
// those in keep; see Aborter.ShutdownUnix. A pass that shut
// something down is followed by another (at most three), so that a socket
// moved between processes during a pass is still found.
func shutdownUnix(root string, cgroupID uint64, method UnixShutdownMethod, keep []UnixConn) (UnixStats, error) {
	start := time.Now()
	st := UnixStats{Method: method}
	s, err := newUnixSweep(root, cgroupID, method == UnixShutdownDiag)
	if err != nil {
		return st, fmt.Errorf("unix connections: %w", err)
	}
	kept := make(map[UnixConn]bool, len(keep))
	for _, c := range keep {
		kept[c] = true
	}
	var errs []error
	for st.Passes < maxUnixSweepPass {
		st.Passes++
		shut := 0
		ps, perrs := s.pass(kept, func(c UnixConn, h sockHolder) error {
			done, err := s.withCopy(h, c.Inode, func(fd int) error {
				return unix.Shutdown(fd, unix.SHUT_RDWR)
			})
			if done {
				shut++
				s.done[c.Inode] = true
			}
			return err
		})
		st.Shut += shut
		st.Kept, st.Internal, st.Processes = ps.Kept, ps.Internal, ps.Processes
		errs = perrs
		if shut == 0 {
			break
		}
	}
	st.Duration = time.Since(start)
	if len(errs) > 0 {
		return st, fmt.Errorf("unix connections: %w", errors.Join(errs...))
	}
	return st, nil
}

// unixSweep is one workload's sweep.
type unixSweep struct {
	dir  string          // the workload's cgroup directory
	rel  string          // the workload as /proc/PID/cgroup names it
	diag bool            // peers from sock_diag
	done map[uint64]bool // sockets shut down by an earlier pass
}

// newUnixSweep prepares a sweep of the workload cgroup with the given id
// in the cgroup v2 hierarchy mounted at root.
func newUnixSweep(root string, cgroupID uint64, diag bool) (*unixSweep, error) {
	if cgroupID <= 1 {
		return nil, fmt.Errorf("cgroup %d: refusing the root cgroup", cgroupID)
	}
	dir, err := cgroupPathByID(root, cgroupID)
	if err != nil {
		return nil, fmt.Errorf("cgroup %d: %w", cgroupID, err)
	}
	rel, err := filepath.Rel(root, dir)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
		return nil, fmt.Errorf("cgroup %d: path %s is not below %s", cgroupID, dir, root)
	}
	return &unixSweep{dir: dir, rel: "/" + rel, diag: diag, done: map[uint64]bool{}}, nil
}

// sockHolder is where a socket was seen: descriptor fd of process pid's
// file table, or of thread tid's own table (tid 0: the process's).
type sockHolder struct{ pid, tid, fd int }

// held is what one scan of the workload found.
type held struct {
	socks map[uint64]sockHolder // socket inode → one place it is held
	netns map[uint64]int        // network namespace inode → a pid in it
	procs int
}

// passStats are the counts of one pass that are not actions.
type passStats struct{ Kept, Internal, Processes int }

// pass scans the workload, learns the peers of its unix sockets and calls
// act for each connection that leaves the workload and is not in keep.
func (s *unixSweep) pass(keep map[UnixConn]bool, act func(UnixConn, sockHolder) error) (passStats, []error) {
	h, errs := s.scan()
	ps := passStats{Processes: h.procs}
	if len(h.socks) == 0 {
		return ps, errs
	}
	var diag map[uint64]unixDiagSock
	if s.diag {
		var err error
		if diag, err = s.peers(h); err != nil {
			errs = append(errs, err)
		}
	}
	for ino, at := range h.socks {
		d, known := diag[ino]
		if !known {
			// Not in any table dumped: not a unix socket, or one made
			// in another network namespace, or no sock_diag here. Its
			// peer is unknown: judged on a copy below.
			if s.done[ino] || !isUnixSocket(at) {
				continue
			}
			kept, err := s.judgeUnknown(keep, ino, at, act)
			if err != nil {
				errs = append(errs, err)
			}
			if kept {
				ps.Kept++
			}
			continue
		}
		if !d.connected || d.shutdown == shutdownMask || s.done[ino] {
			continue // not connected (a listener, an unconnected socket), or already shut down
		}
		// Peer 0: connected to a listener that has not accepted yet, so
		// no one holds the other end; it will work once accepted.
		if _, in := h.socks[d.peer]; in && d.peer != 0 {
			ps.Internal++
			continue
		}
		c := UnixConn{Inode: ino, Peer: d.peer}
		if keep[c] {
			ps.Kept++
			continue
		}
		if err := act(c, at); err != nil {
			errs = append(errs, err)
		}
	}
	return ps, errs
}

// judgeUnknown decides on a unix socket whose peer sock_diag did not give,
// from a copy of it: a connected one leaves the workload, as far as Bridle
// can tell; datagram sockets are never kept (they can be re-pointed).
func (s *unixSweep) judgeUnknown(keep map[UnixConn]bool, ino uint64, at sockHolder, act func(UnixConn, sockHolder) error) (kept bool, err error) {
	var connected, stream bool
	_, err = s.withCopy(at, ino, func(fd int) error {
		typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
		if err != nil {
			return err
		}
		stream = typ == unix.SOCK_STREAM || typ == unix.SOCK_SEQPACKET
		if _, err := unix.Getpeername(fd); err != nil {
			return nil // not connected
		}
		// Hung up both ways: shut down already, or its peer is gone.
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		if _, err := unix.Poll(pfd, 0); err == nil && pfd[0].Revents&unix.POLLHUP != 0 {
			return nil
		}
		connected = true
		return nil
	})
	if err != nil || !connected {
		return false, err
	}
	c := UnixConn{Inode: ino}
	if stream && keep[c] {
		return true, nil
	}
	return false, act(c, at)
}

// scan lists the sockets the workload's processes hold. Each process is
// opened as a pidfd first, read through /proc, and counted only if its
// pidfd still shows it alive afterwards: a PID is not reused before its
// process is reaped, so what was read was that process.
func (s *unixSweep) scan() (held, []error) {
	h := held{socks: map[uint64]sockHolder{}, netns: map[uint64]int{}}
	var errs []error
	walkCgroups(s.dir, func(dir string, _ uint64) {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, err)
			}
			return
		}
		for _, f := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(f)
			if err != nil {
				continue
			}
			if err := s.scanProcess(pid, &h); err != nil {
				errs = append(errs, err)
			}
		}
	})
	return h, errs
}

func (s *unixSweep) scanProcess(pid int, h *held) error {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if err == unix.ESRCH {
			return nil // exited since cgroup.procs was read
		}
		return fmt.Errorf("pid %d: pidfd_open: %w", pid, err)
	}
	defer unix.Close(pidfd)
	if !s.member(fmt.Sprintf("/proc/%d/cgroup", pid)) {
		return nil
	}
	found := map[uint64]sockHolder{}
	proc := fmt.Sprintf("/proc/%d", pid)
	readSockets(proc+"/fd", sockHolder{pid: pid}, found)
	// A thread cloned without CLONE_FILES has a file table of its own.
	if tasks, err := os.ReadDir(proc + "/task"); err == nil && len(tasks) > 1 {
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil || tid == pid || sameFiles(pid, tid) {
				continue
			}
			readSockets(fmt.Sprintf("%s/task/%d/fd", proc, tid), sockHolder{pid: pid, tid: tid}, found)
		}
	}
	var ns unix.Stat_t
	nsErr := unix.Stat(proc+"/ns/net", &ns)
	if !alive.Pidfd(pidfd) {
		return nil // exited meanwhile: what was read may be another process's
	}
	h.procs++
	for ino, at := range found {
		if _, dup := h.socks[ino]; !dup {
			h.socks[ino] = at
		}
	}
	if nsErr == nil {
		if _, dup := h.netns[ns.Ino]; !dup {
			h.netns[ns.Ino] = pid
		}
	}
	return nil
}

// member reports whether the process whose cgroup file this is belongs to
// the workload.
func (s *unixSweep) member(cgroupFile string) bool {
	b, err := os.ReadFile(cgroupFile)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p == s.rel || strings.HasPrefix(p, s.rel+"/")
		}
	}
	return false
}

// sameFiles reports whether thread tid shares process pid's file table.
// When the kernel cannot say (no kcmp), the thread's table is read too:
// sockets are deduplicated by inode.
func sameFiles(pid, tid int) bool {
	r, _, errno := unix.Syscall6(unix.SYS_KCMP, uintptr(pid), uintptr(tid), kcmpFiles, 0, 0, 0)
	return errno == 0 && r == 0
}

// readSockets adds the socket descriptors of one fd directory to found.
func readSockets(dir string, at sockHolder, found map[uint64]sockHolder) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	var buf [64]byte
	for _, ent := range entries {
		fd, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		n, err := unix.Readlink(dir+"/"+ent.Name(), buf[:])
		if err != nil {
			continue
		}
		link := string(buf[:n])
		num, ok := strings.CutPrefix(link, "socket:[")
		if !ok {
			continue
		}
		ino, err := strconv.ParseUint(strings.TrimSuffix(num, "]"), 10, 64)
		if err != nil {
			continue
		}
		if _, dup := found[ino]; !dup {
			h := at
			h.fd = fd
			found[ino] = h
		}
	}
}

// fdPath is the /proc path of a held descriptor.
func (h sockHolder) fdPath() string {
	if h.tid != 0 {
		return fmt.Sprintf("/proc/%d/task/%d/fd/%d", h.pid, h.tid, h.fd)
	}
	return fmt.Sprintf("/proc/%d/fd/%d", h.pid, h.fd)
}

// isUnixSocket asks sockfs for the protocol of a held socket ("UNIX",
// "UNIX-STREAM"…) without copying it. A wrong answer (the PID was reused)
// only costs a copy whose inode then does not match.
func isUnixSocket(h sockHolder) bool {
	var buf [32]byte
	n, err := unix.Getxattr(h.fdPath(), "system.sockprotoname", buf[:])
	return err == nil && strings.HasPrefix(string(buf[:n]), "UNIX")
}

// withCopy runs fn on a copy of the socket with inode ino that h names,
// taken with pidfd_getfd from a process (or thread) checked to be alive and
// in the workload, and closes the copy. It reports whether fn ran. A
// process or descriptor that is gone is not an error: the socket went with
// it, or is held elsewhere and found by the next pass.
func (s *unixSweep) withCopy(h sockHolder, ino uint64, fn func(fd int) error) (bool, error) {
	target, flags, cgroupFile := h.pid, 0, fmt.Sprintf("/proc/%d/cgroup", h.pid)
	if h.tid != 0 {
		target, flags = h.tid, unix.PIDFD_THREAD
		cgroupFile = fmt.Sprintf("/proc/%d/task/%d/cgroup", h.pid, h.tid)
	}
	pidfd, err := unix.PidfdOpen(target, flags)
	switch {
	case err == unix.ESRCH:
		return false, nil
	case err == unix.EINVAL && h.tid != 0:
		return false, fmt.Errorf("pid %d: thread %d holds a unix socket in a file table of its own, which needs pidfd_open(PIDFD_THREAD) (Linux 6.9+)", h.pid, h.tid)
	case err != nil:
		return false, fmt.Errorf("pid %d: pidfd_open: %w", target, err)
	}
	defer unix.Close(pidfd)
	if !s.member(cgroupFile) {
		return false, nil
	}
	fd, err := unix.PidfdGetfd(pidfd, h.fd, 0)
	switch {
	case err == unix.EBADF || err == unix.ESRCH:
		return false, nil
	case err != nil:
		return false, fmt.Errorf("pid %d: pidfd_getfd: %w", target, err)
	}
	defer unix.Close(fd)
	// The membership read above was of this process only if it is still
	// alive; the descriptor number may have been reused for another file.
	if !alive.Pidfd(pidfd) {
		return false, nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Ino != ino || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return false, nil
	}
	if err := fn(fd); err != nil {
		return false, fmt.Errorf("pid %d: socket %d: %w", target, ino, err)
	}
	return true, nil
}

// unixDiagSock is what sock_diag says of one unix socket.
type unixDiagSock struct {
	connected bool   // it has a peer
	peer      uint64 // the peer's inode; 0 while the peer waits in a listener's queue
	shutdown  uint8
}

// peers dumps the unix socket table of every network namespace the
// workload's processes are in (a unix socket is listed in the namespace it
// was made in) and keeps what it says of the sockets the workload holds.
func (s *unixSweep) peers(h held) (map[uint64]unixDiagSock, error) {
	var self unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &self); err != nil {
		return nil, err
	}
	out := map[uint64]unixDiagSock{}
	var errs []error
	dump := func() error {
		c, err := openSockDiag()
		if err != nil {
			return err
		}
		defer c.Close()
		got, err := c.unixDump(unixDiagAllStates, h.socks)
		for ino, d := range got {
			out[ino] = d
		}
		return err
	}
	if err := dump(); err != nil {
		errs = append(errs, fmt.Errorf("unix sock_diag: %w", err))
	}
	for ino, pid := range h.netns {
		if ino == self.Ino {
			continue
		}
		err := inNetNS(fmt.Sprintf("/proc/%d/ns/net", pid), func() error {
			// The PID may have been reused: dump only the namespace
			// the scan saw.
			var now unix.Stat_t
			if err := unix.Stat("/proc/thread-self/ns/net", &now); err != nil || now.Ino != ino {
				return nil
			}
			return dump()
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("unix sock_diag in network namespace %d: %w", ino, err))
		}
	}
	return out, errors.Join(errs...)
}

// unixDiagReq is a struct unix_diag_req asking for every unix socket in
// the given states with its peer.
type unixDiagReq struct{ states uint32 }

func (r *unixDiagReq) Len() int { return unixDiagReqLen }

func (r *unixDiagReq) Serialize() []byte {
	b := make([]byte, unixDiagReqLen)
	b[0] = unix.AF_UNIX
	nl.NativeEndian().PutUint32(b[4:], r.states)
	nl.NativeEndian().PutUint32(b[12:], udiagShowPeer)
	return b
}

// unixDump lists the unix sockets of the current network namespace in the
// given states (TCP state bits; 0: none) with their peers, keeping those in
// want.
func (c *diagConn) unixDump(states uint32, want map[uint64]sockHolder) (map[uint64]unixDiagSock, error) {
	req := nl.NewNetlinkRequest(unix.SOCK_DIAG_BY_FAMILY, unix.NLM_F_DUMP)
	req.AddData(&unixDiagReq{states: states})
	out := map[uint64]unixDiagSock{}
	err := c.dump(req, func(msg []byte) {
		if len(msg) < unixDiagMsgLen {
			return
		}
		ino := uint64(nl.NativeEndian().Uint32(msg[4:]))
		if _, ok := want[ino]; !ok {
			return
		}
		var d unixDiagSock
		attrs(msg[unixDiagMsgLen:], func(typ uint16, val []byte) {
			switch typ {
			case unixDiagPeer:
				// Present whenever there is a peer; its inode is 0
				// until accept() gives it a file.
				if len(val) >= 4 {
					d.connected = true
					d.peer = uint64(nl.NativeEndian().Uint32(val))
				}
			case unixDiagShutdown:
				if len(val) >= 1 {
					d.shutdown = val[0]
				}
			}
		})
		out[ino] = d
	})
	return out, err
}
