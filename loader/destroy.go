package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Revocation ends a task's connections, not only its future connects: when a
// task ends, the TCP and UDP sockets its workload holds are aborted, IPv4 and
// IPv6, so nothing keeps flowing over a grant that no longer exists.
//
// What is destroyed:
//   - every TCP socket that carries or is setting up a connection
//     (SYN_SENT through LAST_ACK, both connections the workload opened and
//     ones it accepted): the process sees ECONNABORTED, the peer a reset;
//   - every bound UDP socket, connected or not: a blocked receive returns
//     ECONNABORTED and the socket loses its peer (and its local port, unless
//     the workload chose the port), so a send() on a formerly connected
//     socket fails with EDESTADDRREQ and whatever the workload sends next
//     goes through the connect/sendmsg checks again (a send on a connected
//     socket is not checked by the cgroup hooks; the kernel wakes the
//     receiver a moment before it clears the peer, so a send racing with
//     the call can still leave, none after it returns);
//   - listening TCP sockets only when asked (DestroyOptions.Listeners):
//     listening needs no grant and the workload may listen again at once, so
//     closing them would break the workload without taking anything away.
//
// Not reached: time-wait and half-open request sockets (no process can use
// them), UDP sockets never bound (they hold nothing; their first send is
// checked), UDP-Lite, and sockets of a cgroup that has already been removed
// (its id can no longer be resolved). A socket belongs to the cgroup it was
// created in, whichever process holds it now.
//
// Two ways, chosen by probing:
//   - DestroyIter: iter/tcp and iter/udp programs calling the
//     bpf_sock_destroy kfunc (kernel 6.5+). One pass over each table, in the
//     kernel, with no socket copied out.
//   - DestroyNetlink: sock_diag dumps filtered in the kernel by cgroup id
//     (INET_DIAG_BC_CGROUP_COND), then one SOCK_DESTROY per socket; needs
//     CONFIG_INET_DIAG_DESTROY.
//
// Both see the sockets of one network namespace: the one the socket table
// belongs to. DestroyOptions.NetNS picks one; by default the caller's
// namespace and every namespace a process of the workload is in are swept.

// DestroyMethod is how open sockets are destroyed on this kernel.
type DestroyMethod string

const (
	// DestroyAuto picks the best method that works.
	DestroyAuto DestroyMethod = ""
	// DestroyIter runs BPF socket iterators that call bpf_sock_destroy.
	DestroyIter DestroyMethod = "iter"
	// DestroyNetlink uses sock_diag SOCK_DESTROY, one socket at a time.
	DestroyNetlink DestroyMethod = "netlink"
	// DestroyNone: neither works; open connections survive revocation.
	DestroyNone DestroyMethod = "none"
)

// SocketDestroyFeature is what the kernel offers for destroying a workload's
// open sockets, for `bridle status`.
type SocketDestroyFeature struct {
	Method  DestroyMethod // what DestroySockets uses
	Reason  string        // why, and why a better method is not used
	Iter    bool          // BPF iterators with bpf_sock_destroy work
	Netlink bool          // sock_diag SOCK_DESTROY works
}

// DestroyOptions tune one DestroySockets call.
type DestroyOptions struct {
	// Listeners also closes listening TCP sockets.
	Listeners bool
	// NetNS is a network namespace file (such as /proc/PID/ns/net) whose
	// sockets are swept. Empty: the caller's namespace and every namespace
	// a process of the target cgroups is in.
	NetNS string
}

// DestroyStats is what one DestroySockets call did.
type DestroyStats struct {
	Method     DestroyMethod
	TCP        int           // TCP sockets aborted
	UDP        int           // UDP sockets aborted
	Failed     int           // sockets the kernel refused to abort
	Kept       int           // listening sockets left open (iter method only)
	Namespaces int           // network namespaces swept
	Duration   time.Duration // the whole call, discovery included
}

func (s *DestroyStats) add(o DestroyStats) {
	s.TCP += o.TCP
	s.UDP += o.UDP
	s.Failed += o.Failed
	s.Kept += o.Kept
}

// SocketDestroyer aborts the open sockets of workload cgroups. It is safe for
// concurrent use; calls are serialised.
type SocketDestroyer struct {
	mu      sync.Mutex
	method  DestroyMethod
	feature SocketDestroyFeature
	root    string // cgroup v2 mount point

	objs    *destroyObjects
	tcpIter *link.Iter
	udpIter *link.Iter

	// levels caches each target cgroup's depth: ids are never reused and a
	// cgroup never changes parent.
	levels map[uint64]uint32
}

// NewSocketDestroyer prepares the given method, or with DestroyAuto the best
// one this kernel supports. It fails with an *UnsupportedError saying why
// when the method (or every method) is unavailable.
func NewSocketDestroyer(method DestroyMethod) (*SocketDestroyer, error) {
	root, err := CgroupRoot()
	if err != nil {
		return nil, fmt.Errorf("socket destroyer: %w", err)
	}
	if err := checkCgroupRoot(root); err != nil {
		return nil, fmt.Errorf("socket destroyer: %w", err)
	}
	d := &SocketDestroyer{root: root, levels: map[uint64]uint32{}}
	switch method {
	case DestroyIter:
		if err := d.loadIter(); err != nil {
			return nil, &UnsupportedError{Feature: "socket destroy by BPF iterator", Err: err}
		}
		d.method = DestroyIter
		d.feature = SocketDestroyFeature{Method: DestroyIter, Iter: true,
			Reason: "iter/tcp and iter/udp with bpf_sock_destroy (requested)"}
	case DestroyNetlink:
		if err := probeNetlinkDestroy(); err != nil {
			return nil, &UnsupportedError{Feature: "socket destroy by netlink", Err: err}
		}
		d.method = DestroyNetlink
		d.feature = SocketDestroyFeature{Method: DestroyNetlink, Netlink: true,
			Reason: "sock_diag SOCK_DESTROY (requested)"}
	case DestroyAuto:
		iterErr := d.loadIter()
		nlErr := probeNetlinkDestroy()
		f := SocketDestroyFeature{Iter: iterErr == nil, Netlink: nlErr == nil}
		// Netlink first: both reach the same sockets, but the iterator
		// walks the whole connection hash table on every pass (about
		// 2.5 ms on a 6.18 host against 0.5 ms; docs/KERNELS.md).
		switch {
		case nlErr == nil:
			f.Method = DestroyNetlink
			f.Reason = "sock_diag SOCK_DESTROY filtered by cgroup"
			if iterErr == nil {
				f.Reason += "; BPF iterators also available"
			} else {
				f.Reason += "; BPF iterators not available: " + iterErr.Error()
			}
		case iterErr == nil:
			f.Method = DestroyIter
			f.Reason = "iter/tcp and iter/udp with bpf_sock_destroy; netlink SOCK_DESTROY not available: " + nlErr.Error()
		default:
			return nil, &UnsupportedError{Feature: "destroying open sockets",
				Err: fmt.Errorf("BPF iterators: %v; netlink: %v", iterErr, nlErr)}
		}
		d.method, d.feature = f.Method, f
	default:
		return nil, fmt.Errorf("socket destroyer: unknown method %q", method)
	}
	return d, nil
}

// Method is the method this destroyer uses.
func (d *SocketDestroyer) Method() DestroyMethod { return d.method }

// Feature is what the destroyer found when it was made.
func (d *SocketDestroyer) Feature() SocketDestroyFeature { return d.feature }

// Close releases the iterator programs, if loaded.
func (d *SocketDestroyer) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, l := range []*link.Iter{d.tcpIter, d.udpIter} {
		if l != nil {
			errs = append(errs, l.Close())
		}
	}
	d.tcpIter, d.udpIter = nil, nil
	if d.objs != nil {
		errs = append(errs, d.objs.Close())
		d.objs = nil
	}
	return errors.Join(errs...)
}

// loadIter loads the iterator programs and creates their links; iterators are
// opened per pass, in the namespace being swept.
func (d *SocketDestroyer) loadIter() error {
	spec, err := loadDestroy()
	if err != nil {
		return err
	}
	var objs destroyObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		if !kernelHasFunc("bpf_sock_destroy") {
			return errors.New("the kernel has no bpf_sock_destroy kfunc (kernel 6.5+)")
		}
		return errors.New(rootCause(err) + verifierTail(err))
	}
	tcp, err := link.AttachIter(link.IterOptions{Program: objs.BridleDstTcp})
	if err != nil {
		objs.Close()
		return fmt.Errorf("attach iter/tcp: %w", err)
	}
	udp, err := link.AttachIter(link.IterOptions{Program: objs.BridleDstUdp})
	if err != nil {
		tcp.Close()
		objs.Close()
		return fmt.Errorf("attach iter/udp: %w", err)
	}
	d.objs, d.tcpIter, d.udpIter = &objs, tcp, udp
	return nil
}

func kernelHasFunc(name string) bool {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return false
	}
	var fn *btf.Func
	return spec.TypeByName(name, &fn) == nil
}

// The process-wide destroyer behind Enforcer.DestroySockets. The iterator
// programs hold no state of any enforcer, so one loaded copy serves all.
// A kernel that supports no method is remembered as such (err), so each
// revocation does not try again; other failures are retried.
var shared struct {
	mu  sync.Mutex
	d   *SocketDestroyer
	err error
}

func sharedDestroyer() (*SocketDestroyer, error) {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.d != nil || shared.err != nil {
		return shared.d, shared.err
	}
	d, err := NewSocketDestroyer(DestroyAuto)
	var ue *UnsupportedError
	if errors.As(err, &ue) {
		shared.err = err
	}
	if err != nil {
		return nil, err
	}
	shared.d = d
	return d, nil
}

// ProbeSocketDestroy reports how this kernel lets Bridle destroy a workload's
// open sockets, and prepares that method (loading the iterator programs), so
// the first revocation pays no load time.
func ProbeSocketDestroy() SocketDestroyFeature {
	d, err := sharedDestroyer()
	if err != nil {
		return SocketDestroyFeature{Method: DestroyNone, Reason: err.Error() +
			"; open connections survive the end of a task"}
	}
	return d.Feature()
}

// DestroySockets aborts the open TCP and UDP sockets (IPv4 and IPv6) created
// in the given cgroups or their descendants, in the caller's network
// namespace and in every namespace a process of those cgroups is in.
// Listening sockets stay open. It uses the process-wide destroyer that
// ProbeSocketDestroy prepares (the best method here). An *UnsupportedError
// says the kernel offers no way to do it.
func (e *Enforcer) DestroySockets(cgroupIDs ...uint64) (DestroyStats, error) {
	d, err := sharedDestroyer()
	if err != nil {
		return DestroyStats{Method: DestroyNone}, err
	}
	return d.Destroy(DestroyOptions{}, cgroupIDs...)
}

// destroyTarget is one cgroup to sweep.
type destroyTarget struct {
	id    uint64
	level uint32
	path  string
}

// Destroy aborts the open sockets created in the given cgroups or their
// descendants; see DestroySockets. It does as much as it can: a cgroup that
// cannot be resolved or a socket the kernel refuses to abort is reported in
// the error, the rest are still destroyed.
func (d *SocketDestroyer) Destroy(opts DestroyOptions, cgroupIDs ...uint64) (DestroyStats, error) {
	start := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	st := DestroyStats{Method: d.method}
	if len(cgroupIDs) == 0 {
		return st, errors.New("destroy sockets: no cgroup")
	}
	var errs []error
	targets := make([]destroyTarget, 0, len(cgroupIDs))
	for _, id := range cgroupIDs {
		t, err := d.resolve(id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		targets = append(targets, t)
	}
	if len(targets) == 0 {
		return st, fmt.Errorf("destroy sockets: %w", errors.Join(errs...))
	}

	var namespaces []string
	if opts.NetNS != "" {
		namespaces = []string{opts.NetNS}
	} else {
		namespaces = append([]string{""}, workloadNetNS(targets)...)
	}
	// The netlink method filters by exact cgroup id, so it needs every
	// descendant's id; the iterators test ancestry in the kernel.
	var ids []uint64
	if d.method == DestroyNetlink {
		ids = descendantIDs(targets)
	}
	for _, ns := range namespaces {
		var one DestroyStats
		err := inNetNS(ns, func() error {
			var err error
			if d.method == DestroyIter {
				one, err = d.iterPass(targets, opts.Listeners)
			} else {
				one, err = netlinkPass(ids, opts.Listeners)
			}
			return err
		})
		if err != nil {
			if ns == "" {
				errs = append(errs, err)
			} else {
				errs = append(errs, fmt.Errorf("network namespace %s: %w", ns, err))
			}
		}
		st.add(one)
		st.Namespaces++
	}
	st.Duration = time.Since(start)
	if len(errs) > 0 {
		return st, fmt.Errorf("destroy sockets: %w", errors.Join(errs...))
	}
	return st, nil
}

// resolve finds a cgroup's path and depth from its id.
func (d *SocketDestroyer) resolve(id uint64) (destroyTarget, error) {
	if id <= 1 {
		// The root cgroup holds every process: sweeping it would cut every
		// connection of the host.
		return destroyTarget{}, fmt.Errorf("cgroup %d: refusing the root cgroup", id)
	}
	path, err := cgroupPathByID(d.root, id)
	if err != nil {
		return destroyTarget{}, fmt.Errorf("cgroup %d: %w", id, err)
	}
	level, ok := d.levels[id]
	if !ok {
		rel, err := filepath.Rel(d.root, path)
		if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
			return destroyTarget{}, fmt.Errorf("cgroup %d: path %s is not below %s", id, path, d.root)
		}
		level = uint32(strings.Count(rel, "/") + 1)
		d.levels[id] = level
	}
	return destroyTarget{id: id, level: level, path: path}, nil
}

// checkCgroupRoot makes sure the cgroup v2 mount shows the whole hierarchy
// (its root is the root cgroup, id 1), so depths counted from it are the
// kernel's levels. A mount of a subtree (a cgroup namespace) would not be.
func checkCgroupRoot(root string) error {
	id, err := CgroupID(root)
	if err != nil {
		return err
	}
	if id != 1 {
		return fmt.Errorf("cgroup v2 mount %s shows a subtree (root id %d, want 1): cgroup levels unknown", root, id)
	}
	return nil
}

// fileIDKernfs is the file handle type of kernfs (cgroupfs): the handle is
// the 64-bit node id, which is the cgroup id.
const fileIDKernfs = 0xfe

// cgroupPathByID opens a cgroup by id through a file handle and returns its
// path below the cgroup v2 mount at root.
func cgroupPathByID(root string, id uint64) (string, error) {
	mnt, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("open %s: %w", root, err)
	}
	defer unix.Close(mnt)
	h := unix.NewFileHandle(fileIDKernfs, binary.NativeEndian.AppendUint64(nil, id))
	fd, err := unix.OpenByHandleAt(mnt, h, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		if errors.Is(err, unix.ESTALE) || errors.Is(err, unix.ENOENT) {
			return "", fmt.Errorf("no such cgroup: %w", err)
		}
		return "", fmt.Errorf("open by id: %w", err)
	}
	defer unix.Close(fd)
	path, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return "", err
	}
	if strings.HasSuffix(path, " (deleted)") {
		return "", errors.New("cgroup removed")
	}
	return path, nil
}

// walkCgroups calls fn for a cgroup directory and every cgroup below it.
func walkCgroups(path string, fn func(dir string, ino uint64)) {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return
	}
	fn(path, st.Ino)
	entries, err := os.ReadDir(path)
	if err != nil {
		return
	}
	for _, ent := range entries {
		if ent.IsDir() {
			walkCgroups(filepath.Join(path, ent.Name()), fn)
		}
	}
}

// descendantIDs lists the target cgroups and every cgroup below them.
func descendantIDs(targets []destroyTarget) []uint64 {
	seen := map[uint64]bool{}
	var ids []uint64
	for _, t := range targets {
		walkCgroups(t.path, func(_ string, ino uint64) {
			if !seen[ino] {
				seen[ino] = true
				ids = append(ids, ino)
			}
		})
	}
	return ids
}

// workloadNetNS lists one namespace file per network namespace that a
// process of the targets is in, other than the caller's.
func workloadNetNS(targets []destroyTarget) []string {
	var self unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &self); err != nil {
		return nil
	}
	seen := map[uint64]bool{self.Ino: true}
	var out []string
	for _, t := range targets {
		walkCgroups(t.path, func(dir string, _ uint64) {
			b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
			if err != nil {
				return
			}
			for _, pid := range strings.Fields(string(b)) {
				p := "/proc/" + pid + "/ns/net"
				var st unix.Stat_t
				if unix.Stat(p, &st) != nil || seen[st.Ino] {
					continue
				}
				seen[st.Ino] = true
				out = append(out, p)
			}
		})
	}
	return out
}

// inNetNS runs fn in the network namespace at path ("" runs it here). The
// socket tables an iterator or a sock_diag socket sees are those of the
// namespace of the thread that creates it, so fn runs on a locked thread
// that enters the namespace and comes back. A thread that cannot come back
// stays locked, and Go retires it when the goroutine ends.
func inNetNS(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	target, err := os.Open(path)
	if err != nil {
		return err
	}
	defer target.Close()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			done <- err
			return
		}
		defer home.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("enter: %w", err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- errors.Join(ferr, fmt.Errorf("return to own network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		done <- ferr
	}()
	return <-done
}

// iterPass runs both iterators once over the current namespace's tables.
func (d *SocketDestroyer) iterPass(targets []destroyTarget, listeners bool) (DestroyStats, error) {
	var st DestroyStats
	vars := d.objs.destroyVariables
	var l uint32
	if listeners {
		l = 1
	}
	if err := vars.BridleDstListeners.Set(l); err != nil {
		return st, err
	}
	var errs []error
	for len(targets) > 0 {
		n := min(len(targets), len(destroyTargetsArray{}))
		var arr destroyTargetsArray
		for i, t := range targets[:n] {
			arr[i] = destroyBridleDstTarget{Id: t.id, Level: t.level}
		}
		targets = targets[n:]
		if err := vars.BridleDstTargets.Set(arr); err != nil {
			return st, err
		}
		if err := vars.BridleDstNtargets.Set(uint32(n)); err != nil {
			return st, err
		}
		if err := vars.BridleDstStats.Set(destroyBridleDstCounts{}); err != nil {
			return st, err
		}
		for _, it := range []*link.Iter{d.tcpIter, d.udpIter} {
			if err := runIter(it); err != nil {
				return st, err
			}
		}
		var c destroyBridleDstCounts
		if err := vars.BridleDstStats.Get(&c); err != nil {
			return st, err
		}
		st.TCP += int(c.Tcp)
		st.UDP += int(c.Udp)
		st.Failed += int(c.TcpFailed + c.UdpFailed)
		st.Kept += int(c.Skipped)
		if c.TcpFailed+c.UdpFailed > 0 {
			errs = append(errs, fmt.Errorf("%d sockets not aborted: bpf_sock_destroy: %w",
				c.TcpFailed+c.UdpFailed, unix.Errno(-c.LastErr)))
		}
	}
	return st, errors.Join(errs...)
}

// destroyTargetsArray mirrors bridle_dst_targets in bpf/destroy.c
// (BRIDLE_DST_MAX_TARGETS); Variable.Set refuses a value of another size.
type destroyTargetsArray [64]destroyBridleDstTarget

// runIter makes one pass of an iterator: the programs write nothing, so the
// read returns at the end of the table.
func runIter(it *link.Iter) error {
	r, err := it.Open()
	if err != nil {
		return fmt.Errorf("open iterator: %w", err)
	}
	defer r.Close()
	var buf [64]byte
	for {
		_, err := r.Read(buf[:])
		switch {
		case err == io.EOF:
			return nil
		case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
			// The kernel stops a pass after a million objects; the
			// next read carries on.
			continue
		case err != nil:
			return fmt.Errorf("run iterator: %w", err)
		}
	}
}

// sock_diag wire format (linux/inet_diag.h).
const (
	inetDiagReqBytecode  = 1  // INET_DIAG_REQ_BYTECODE
	inetDiagBcJmp        = 1  // INET_DIAG_BC_JMP
	inetDiagBcCgroupCond = 13 // INET_DIAG_BC_CGROUP_COND
	inetDiagCgroupID     = 21 // INET_DIAG_CGROUP_ID
	inetDiagReqLen       = 56 // struct inet_diag_req_v2
	inetDiagMsgLen       = 72 // struct inet_diag_msg
	inetDiagSockIDLen    = 48 // struct inet_diag_sockid
	// A bytecode program is one netlink attribute (16-bit length): past
	// this many ids, sockets are filtered here instead.
	maxBytecodeIDs = 2000
)

// TCP states as bits of idiag_states.
const (
	tcpEstablished = 1
	tcpSynSent     = 2
	tcpSynRecv     = 3
	tcpFinWait1    = 4
	tcpFinWait2    = 5
	tcpClose       = 7
	tcpCloseWait   = 8
	tcpLastAck     = 9
	tcpListen      = 10
	tcpClosing     = 11
)

// Every state of a socket that has or is setting up a connection. Request
// sockets answer to SYN_RECV but record no cgroup, so the filter drops them.
const tcpConnStates = 1<<tcpEstablished | 1<<tcpSynSent | 1<<tcpSynRecv | 1<<tcpFinWait1 |
	1<<tcpFinWait2 | 1<<tcpCloseWait | 1<<tcpLastAck | 1<<tcpClosing

// A bound UDP socket is ESTABLISHED when connected, CLOSE when not.
const udpStates = 1<<tcpEstablished | 1<<tcpClose

// probeNetlinkDestroy checks, without touching any socket, that sock_diag
// can both filter by cgroup and destroy. A destroy request naming no socket
// (all zero, cookie 0: no socket has cookie 0) fails with ENOENT where
// destroy is built in and EOPNOTSUPP where it is not.
func probeNetlinkDestroy() error {
	fd, err := openSockDiag()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	// Dumping with a cgroup filter proves the diag modules are there and
	// the kernel knows INET_DIAG_BC_CGROUP_COND (5.9+).
	for _, p := range []struct {
		name   string
		num    uint8
		states uint32
	}{{"tcp", unix.IPPROTO_TCP, tcpConnStates}, {"udp", unix.IPPROTO_UDP, udpStates}} {
		_, err := sockDiagDump(fd, unix.AF_INET, p.num, p.states, []uint64{^uint64(0)})
		switch {
		case err == unix.ENOENT:
			return fmt.Errorf("the kernel has no %s sock_diag (CONFIG_INET_DIAG, or the inet_diag and %s_diag modules)", p.name, p.name)
		case err == unix.EINVAL:
			return fmt.Errorf("%s sock_diag cannot filter by cgroup (kernel 5.9+)", p.name)
		case err != nil:
			return fmt.Errorf("%s sock_diag dump with a cgroup filter: %w", p.name, err)
		}
	}
	req := inetDiagReq(unix.AF_INET, unix.IPPROTO_TCP, 0, make([]byte, inetDiagSockIDLen))
	errsByIdx, err := sockDiagDestroy(fd, [][]byte{req})
	if err != nil {
		return err
	}
	switch e := errsByIdx[0]; {
	case e == unix.ENOENT || e == unix.ESTALE:
		return nil
	case e == unix.EOPNOTSUPP:
		return errors.New("the kernel cannot destroy sockets through sock_diag (CONFIG_INET_DIAG_DESTROY is off)")
	case e == nil:
		return errors.New("sock_diag destroyed a socket that should not exist")
	default:
		return fmt.Errorf("sock_diag SOCK_DESTROY: %w", e)
	}
}

func openSockDiag() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return -1, fmt.Errorf("sock_diag socket: %w", err)
	}
	// Acks carry only the header of the request they answer.
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	tv := unix.Timeval{Sec: 5}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("sock_diag bind: %w", err)
	}
	return fd, nil
}

// netlinkPass destroys the sockets of the given cgroup ids in the current
// namespace: four dumps (TCP and UDP, IPv4 and IPv6), then SOCK_DESTROY for
// each socket found.
func netlinkPass(ids []uint64, listeners bool) (DestroyStats, error) {
	var st DestroyStats
	fd, err := openSockDiag()
	if err != nil {
		return st, err
	}
	defer unix.Close(fd)
	want := make(map[uint64]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	filter := ids
	if len(filter) > maxBytecodeIDs {
		filter = nil
	}
	tcpStates := uint32(tcpConnStates)
	if listeners {
		tcpStates |= 1 << tcpListen
	}
	var errs []error
	for _, proto := range []struct {
		num    uint8
		states uint32
		count  *int
	}{{unix.IPPROTO_TCP, tcpStates, &st.TCP}, {unix.IPPROTO_UDP, udpStates, &st.UDP}} {
		for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
			socks, err := sockDiagDump(fd, family, proto.num, proto.states, filter)
			if err != nil {
				errs = append(errs, fmt.Errorf("sock_diag dump: %w", err))
				continue
			}
			var reqs [][]byte
			for _, s := range socks {
				// The kernel filtered by cgroup; the attribute
				// confirms it, and filters when the list was too
				// long for bytecode.
				if want[s.cgroup] {
					reqs = append(reqs, inetDiagReq(family, proto.num, 0, s.id))
				}
			}
			for len(reqs) > 0 {
				n := min(len(reqs), 256)
				res, err := sockDiagDestroy(fd, reqs[:n])
				reqs = reqs[n:]
				if err != nil {
					errs = append(errs, err)
					break
				}
				for _, e := range res {
					switch {
					case e == nil:
						*proto.count++
					case e == unix.ENOENT || e == unix.ESTALE:
						// Closed since the dump.
					default:
						st.Failed++
						errs = append(errs, fmt.Errorf("sock_diag SOCK_DESTROY: %w", e))
					}
				}
			}
		}
	}
	return st, errors.Join(errs...)
}

type diagSock struct {
	id     []byte // struct inet_diag_sockid, as the kernel sent it
	cgroup uint64
}

// inetDiagReq builds a struct inet_diag_req_v2.
func inetDiagReq(family, proto uint8, states uint32, id []byte) []byte {
	b := make([]byte, inetDiagReqLen)
	b[0], b[1] = family, proto
	binary.NativeEndian.PutUint32(b[4:], states)
	copy(b[8:], id)
	return b
}

// cgroupBytecode is a sock_diag filter matching any of ids. Each condition
// falls through to a jump to the end (accept) when it matches and skips
// over that jump to the next condition when it does not; the last one's
// miss jumps past the end (reject). The kernel's audit follows the "yes"
// chain, so every op must lie on it.
func cgroupBytecode(ids []uint64) []byte {
	const cond, jmp = 12, 4
	var b []byte
	for i, id := range ids {
		last := i == len(ids)-1
		no := cond + jmp
		if last {
			no = cond + 4
		}
		b = append(b, inetDiagBcCgroupCond, cond, 0, 0)
		binary.NativeEndian.PutUint16(b[len(b)-2:], uint16(no))
		b = binary.NativeEndian.AppendUint64(b, id)
		if !last {
			rest := (len(ids) - i - 1) * (cond + jmp)
			rest -= jmp // the last condition has no jump after it
			b = append(b, inetDiagBcJmp, jmp, 0, 0)
			binary.NativeEndian.PutUint16(b[len(b)-2:], uint16(jmp+rest))
		}
	}
	return b
}

func nlAttr(typ uint16, data []byte) []byte {
	b := make([]byte, 4, 4+len(data)+3)
	binary.NativeEndian.PutUint16(b[0:], uint16(4+len(data)))
	binary.NativeEndian.PutUint16(b[2:], typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func nlMsg(typ, flags uint16, seq uint32, payload []byte) []byte {
	b := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(payload))
	binary.NativeEndian.PutUint32(b[0:], uint32(unix.NLMSG_HDRLEN+len(payload)))
	binary.NativeEndian.PutUint16(b[4:], typ)
	binary.NativeEndian.PutUint16(b[6:], flags)
	binary.NativeEndian.PutUint32(b[8:], seq)
	return append(b, payload...)
}

// nlaTypeMask strips the nested and byte-order flags from an attribute type.
const nlaTypeMask = 0x3fff

type nlMessage struct {
	typ  uint16
	seq  uint32
	data []byte
}

// parseNetlink splits a datagram into netlink messages.
func parseNetlink(b []byte) ([]nlMessage, error) {
	var out []nlMessage
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b[0:]))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return nil, errors.New("malformed netlink message")
		}
		out = append(out, nlMessage{
			typ:  binary.NativeEndian.Uint16(b[4:]),
			seq:  binary.NativeEndian.Uint32(b[8:]),
			data: b[unix.NLMSG_HDRLEN:l],
		})
		b = b[min((l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1), len(b)):]
	}
	return out, nil
}

// sockDiagDump lists the sockets of one family and protocol in the given
// states, filtered in the kernel to the cgroup ids (nil: no filter), with
// each socket's cgroup id.
func sockDiagDump(fd int, family, proto uint8, states uint32, ids []uint64) ([]diagSock, error) {
	payload := inetDiagReq(family, proto, states, nil)
	if len(ids) > 0 {
		payload = append(payload, nlAttr(inetDiagReqBytecode, cgroupBytecode(ids))...)
	}
	const seq = 1
	msg := nlMsg(unix.SOCK_DIAG_BY_FAMILY, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, seq, payload)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, err
	}
	var out []diagSock
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, err
		}
		msgs, err := parseNetlink(buf[:n])
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			if m.seq != seq {
				continue
			}
			switch m.typ {
			case unix.NLMSG_DONE:
				if len(m.data) >= 4 {
					if e := int32(binary.NativeEndian.Uint32(m.data)); e < 0 {
						return nil, unix.Errno(-e)
					}
				}
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.data) >= 4 {
					if e := int32(binary.NativeEndian.Uint32(m.data)); e < 0 {
						return nil, unix.Errno(-e)
					}
				}
				return out, nil
			case unix.SOCK_DIAG_BY_FAMILY:
				if len(m.data) < inetDiagMsgLen {
					continue
				}
				s := diagSock{id: append([]byte(nil), m.data[4:4+inetDiagSockIDLen]...)}
				for a := m.data[inetDiagMsgLen:]; len(a) >= 4; {
					l := int(binary.NativeEndian.Uint16(a[0:]))
					typ := binary.NativeEndian.Uint16(a[2:]) & nlaTypeMask
					if l < 4 || l > len(a) {
						break
					}
					if typ == inetDiagCgroupID && l >= 12 {
						s.cgroup = binary.NativeEndian.Uint64(a[4:])
					}
					a = a[min((l+3)&^3, len(a)):]
				}
				out = append(out, s)
			}
		}
	}
}

// sockDiagDestroy sends SOCK_DESTROY requests in one batch and returns each
// one's result (nil: destroyed).
func sockDiagDestroy(fd int, reqs [][]byte) ([]error, error) {
	var batch []byte
	for i, r := range reqs {
		batch = append(batch, nlMsg(unix.SOCK_DESTROY, unix.NLM_F_REQUEST|unix.NLM_F_ACK, uint32(i+1), r)...)
	}
	if err := unix.Sendto(fd, batch, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag SOCK_DESTROY: %w", err)
	}
	res := make([]error, len(reqs))
	pending := len(reqs)
	buf := make([]byte, 1<<16)
	for pending > 0 {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, fmt.Errorf("sock_diag SOCK_DESTROY: %w", err)
		}
		msgs, err := parseNetlink(buf[:n])
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			i := int(m.seq) - 1
			if m.typ != unix.NLMSG_ERROR || i < 0 || i >= len(reqs) || len(m.data) < 4 {
				continue
			}
			if e := int32(binary.NativeEndian.Uint32(m.data)); e < 0 {
				res[i] = unix.Errno(-e)
			}
			pending--
		}
	}
	return res, nil
}
