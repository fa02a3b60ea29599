package sockabort

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"

	"github.com/bridle-sh/bridle/loader/internal/kernel"
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

// DestroyFeature is what the kernel offers for destroying a workload's open
// sockets, for `bridle status`.
type DestroyFeature struct {
	Method  DestroyMethod // what Destroy uses
	Reason  string        // why, and why a better method is not used
	Iter    bool          // BPF iterators with bpf_sock_destroy work
	Netlink bool          // sock_diag SOCK_DESTROY works
}

// DestroyOptions tune one Destroy call.
type DestroyOptions struct {
	// Listeners also closes listening TCP sockets.
	Listeners bool
	// NetNS is a network namespace file (such as /proc/PID/ns/net) whose
	// sockets are swept. Empty: the caller's namespace and every namespace
	// a process of the target cgroups is in.
	NetNS string
	// Peer, when set, limits the call to sockets whose peer it matches:
	// the connections made under a grant that ended, while the
	// workload's others stay open.
	Peer *Peer
}

// Peer names the remote end of the connections to abort.
type Peer struct {
	// TCP and UDP pick the transports; neither set picks both.
	TCP, UDP bool
	// Addr is the peer's address; an IPv4 address also matches IPv6
	// sockets that reach it IPv4-mapped.
	Addr netip.Addr
	// Ports are the peer's ports; none: every port.
	Ports []PortRange
}

// PortRange is an inclusive range of ports.
type PortRange struct{ First, Last uint16 }

// valid reports what is wrong with p, if anything.
func (p *Peer) valid() error {
	if !p.Addr.IsValid() || p.Addr.Zone() != "" {
		return fmt.Errorf("peer %q is not an address", p.Addr)
	}
	for _, r := range p.Ports {
		if r.First > r.Last {
			return fmt.Errorf("peer port range %d-%d is empty", r.First, r.Last)
		}
	}
	return nil
}

// transports reports which socket tables p reaches; nil p reaches both.
func (p *Peer) transports() (tcp, udp bool) {
	if p == nil || (!p.TCP && !p.UDP) {
		return true, true
	}
	return p.TCP, p.UDP
}

// matches reports whether a socket whose peer is addr:port is p's; nil p
// matches every socket.
func (p *Peer) matches(addr netip.Addr, port uint16) bool {
	if p == nil {
		return true
	}
	if addr.Unmap() != p.Addr.Unmap() {
		return false
	}
	if len(p.Ports) == 0 {
		return true
	}
	for _, r := range p.Ports {
		if port >= r.First && port <= r.Last {
			return true
		}
	}
	return false
}

// DestroyStats is what one Destroy call did.
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

// UnsupportedError says that the kernel offers no way to do what was asked,
// and why.
type UnsupportedError = kernel.UnsupportedError

// Destroyer aborts the open sockets of workload cgroups. It is safe for
// concurrent use; calls are serialised.
type Destroyer struct {
	mu      sync.Mutex
	method  DestroyMethod
	feature DestroyFeature
	root    string // cgroup v2 mount point

	objs    *destroyObjects
	tcpIter *link.Iter
	udpIter *link.Iter

	// levels caches each target cgroup's depth: ids are never reused and a
	// cgroup never changes parent.
	levels map[uint64]uint32
}

// NewDestroyer prepares the given method, or with DestroyAuto the best one
// this kernel supports, for the cgroup v2 hierarchy mounted at root. It
// fails with an *UnsupportedError saying why when the method (or every
// method) is unavailable. types, if not nil, is the kernel's BTF already
// decoded by the caller.
func NewDestroyer(root string, method DestroyMethod, types *btf.Cache) (*Destroyer, error) {
	if err := checkCgroupRoot(root); err != nil {
		return nil, fmt.Errorf("socket destroyer: %w", err)
	}
	d := &Destroyer{root: root, levels: map[uint64]uint32{}}
	switch method {
	case DestroyIter:
		if err := d.loadIter(types); err != nil {
			return nil, &UnsupportedError{Feature: "socket destroy by BPF iterator", Err: err}
		}
		d.method = DestroyIter
		d.feature = DestroyFeature{Method: DestroyIter, Iter: true,
			Reason: "iter/tcp and iter/udp with bpf_sock_destroy (requested)"}
	case DestroyNetlink:
		if err := probeNetlinkDestroy(); err != nil {
			return nil, &UnsupportedError{Feature: "socket destroy by netlink", Err: err}
		}
		d.method = DestroyNetlink
		d.feature = DestroyFeature{Method: DestroyNetlink, Netlink: true,
			Reason: "sock_diag SOCK_DESTROY (requested)"}
	case DestroyAuto:
		iterErr := d.loadIter(types)
		nlErr := probeNetlinkDestroy()
		f := DestroyFeature{Iter: iterErr == nil, Netlink: nlErr == nil}
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
func (d *Destroyer) Method() DestroyMethod { return d.method }

// Feature is what the destroyer found when it was made.
func (d *Destroyer) Feature() DestroyFeature { return d.feature }

// Close releases the iterator programs, if loaded.
func (d *Destroyer) Close() error {
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

// destroyTarget is one cgroup to sweep.
type destroyTarget struct {
	id    uint64
	level uint32
	path  string
}

// Destroy aborts the open TCP and UDP sockets (IPv4 and IPv6) created in the
// given cgroups or their descendants, in the namespaces opts names (by
// default the caller's and every one a process of those cgroups is in).
// It does as much as it can: a cgroup that cannot be resolved or a socket
// the kernel refuses to abort is reported in the error, the rest are still
// destroyed.
func (d *Destroyer) Destroy(opts DestroyOptions, cgroupIDs ...uint64) (DestroyStats, error) {
	start := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	st := DestroyStats{Method: d.method}
	if len(cgroupIDs) == 0 {
		return st, errors.New("destroy sockets: no cgroup")
	}
	if opts.Peer != nil {
		if err := opts.Peer.valid(); err != nil {
			return st, fmt.Errorf("destroy sockets: %w", err)
		}
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
				one, err = d.iterPass(targets, opts.Listeners, opts.Peer)
			} else {
				one, err = netlinkPass(ids, opts.Listeners, opts.Peer)
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
func (d *Destroyer) resolve(id uint64) (destroyTarget, error) {
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
