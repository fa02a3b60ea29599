package sockabort

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf/btf"
)

// Aborter ends the connections of workloads whose task ended: their TCP and
// UDP sockets (Destroy) and their unix connections leaving the workload
// (ShutdownUnix). It is what an enforcer holds: the best method of each kind
// is found, and prepared, once per Aborter. Safe for concurrent use.
type Aborter struct {
	findRoot func() (string, error)
	// types is the kernel's BTF as the enforcer decoded it, lent until the
	// destroyer is prepared (nil: decoded anew).
	types *btf.Cache

	mu   sync.Mutex
	root string     // cgroup v2 mount point, once found
	d    *Destroyer // prepared by the first call that needs it
	// dErr remembers that the kernel supports no method, so each
	// revocation does not try again; other failures are retried.
	dErr error

	unixOnce sync.Once
	unix     UnixShutdownFeature
}

// New returns an Aborter for workloads in the cgroup v2 hierarchy that
// findRoot locates; nothing is probed or loaded until first needed. types,
// if not nil, is the kernel's BTF already decoded by the caller.
func New(findRoot func() (string, error), types *btf.Cache) *Aborter {
	return &Aborter{findRoot: findRoot, types: types}
}

// Close releases the iterator programs, if loaded. A later call prepares
// them again.
func (a *Aborter) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.d == nil {
		return nil
	}
	err := a.d.Close()
	a.d = nil
	return err
}

// cgroupRoot is the cgroup v2 mount point, found once.
func (a *Aborter) cgroupRoot() (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cgroupRootLocked()
}

func (a *Aborter) cgroupRootLocked() (string, error) {
	if a.root == "" {
		root, err := a.findRoot()
		if err != nil {
			return "", err
		}
		a.root = root
	}
	return a.root, nil
}

func (a *Aborter) destroyer() (*Destroyer, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.d != nil || a.dErr != nil {
		return a.d, a.dErr
	}
	root, err := a.cgroupRootLocked()
	if err != nil {
		return nil, fmt.Errorf("socket destroyer: %w", err)
	}
	d, err := NewDestroyer(root, DestroyAuto, a.types)
	a.types = nil // not held for the process's life
	var ue *UnsupportedError
	if errors.As(err, &ue) {
		a.dErr = err
	}
	if err != nil {
		return nil, err
	}
	a.d = d
	return d, nil
}

// DestroyFeature reports how this kernel lets a workload's open sockets be
// destroyed, and prepares that method (loading the iterator programs), so
// the first revocation pays no load time.
func (a *Aborter) DestroyFeature() DestroyFeature {
	d, err := a.destroyer()
	if err != nil {
		return DestroyFeature{Method: DestroyNone, Reason: err.Error() +
			"; open connections survive the end of a task"}
	}
	return d.Feature()
}

// Destroy aborts the open TCP and UDP sockets (IPv4 and IPv6) created in the
// given cgroups or their descendants, in the caller's network namespace and
// in every namespace a process of those cgroups is in. Listening sockets
// stay open. An *UnsupportedError says the kernel offers no way to do it.
func (a *Aborter) Destroy(cgroupIDs ...uint64) (DestroyStats, error) {
	d, err := a.destroyer()
	if err != nil {
		return DestroyStats{Method: DestroyNone}, err
	}
	return d.Destroy(DestroyOptions{}, cgroupIDs...)
}

// DestroyTo aborts the sockets of the given cgroups (as Destroy does) whose
// peer matches p: the connections opened under a grant that ended, while
// the workloads' other connections stay open.
func (a *Aborter) DestroyTo(p Peer, cgroupIDs ...uint64) (DestroyStats, error) {
	d, err := a.destroyer()
	if err != nil {
		return DestroyStats{Method: DestroyNone}, err
	}
	return d.Destroy(DestroyOptions{Peer: &p}, cgroupIDs...)
}

// UnixFeature reports how a workload's unix connections are ended at a
// task's end on this kernel (given that its unix hooks exist). The kernel
// is probed once.
func (a *Aborter) UnixFeature() UnixShutdownFeature {
	a.unixOnce.Do(func() { a.unix = probeUnixShutdown() })
	return a.unix
}

// UnixConnections lists the unix connections the processes of a workload
// (its cgroup and those below) hold now that ShutdownUnix would end: taken
// when a task starts, they are kept open at its end. Nil where this kernel
// cannot end unix connections. On an error the list holds what could be
// read; a connection missing from it is only ended when it need not be.
func (a *Aborter) UnixConnections(cgroupID uint64) ([]UnixConn, error) {
	f := a.UnixFeature()
	if f.Method == UnixShutdownNone {
		return nil, nil
	}
	root, err := a.cgroupRoot()
	if err != nil {
		return nil, fmt.Errorf("unix connections: %w", err)
	}
	return unixConnections(root, cgroupID, f.Method)
}

// ShutdownUnix ends the unix connections of a workload's processes that
// leave the workload, except those in keep (see UnixConnections).
func (a *Aborter) ShutdownUnix(cgroupID uint64, keep []UnixConn) (UnixStats, error) {
	f := a.UnixFeature()
	if f.Method == UnixShutdownNone {
		return UnixStats{Method: UnixShutdownNone}, errors.New(f.Reason)
	}
	root, err := a.cgroupRoot()
	if err != nil {
		return UnixStats{Method: f.Method}, fmt.Errorf("unix connections: %w", err)
	}
	return shutdownUnix(root, cgroupID, f.Method, keep)
}
