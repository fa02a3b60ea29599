package loader

import (
	"github.com/bridle-sh/bridle/loader/sockabort"
)

// A task's end also ends the connections its workload opened; package
// sockabort does it. These names keep the Enforcer's signatures and
// Features readable where the callers already use them.
type (
	// DestroyStats is what one DestroySockets call did.
	DestroyStats = sockabort.DestroyStats
	// DestroyMethod is how open sockets are destroyed on this kernel.
	DestroyMethod = sockabort.DestroyMethod
	// SocketDestroyFeature is how a revoked workload's open sockets are
	// aborted here, for `bridle status`.
	SocketDestroyFeature = sockabort.DestroyFeature
	// UnixConn is a unix socket connection a workload holds.
	UnixConn = sockabort.UnixConn
	// UnixStats is what one ShutdownUnix call did.
	UnixStats = sockabort.UnixStats
	// UnixShutdownMethod is how a workload's unix connections are ended.
	UnixShutdownMethod = sockabort.UnixShutdownMethod
	// UnixShutdownFeature is how a revoked workload's unix connections are
	// ended here, for `bridle status`.
	UnixShutdownFeature = sockabort.UnixShutdownFeature
)

// UnixShutdownNone: unix connections survive a task's end here.
const UnixShutdownNone = sockabort.UnixShutdownNone

// DestroySockets aborts the open TCP and UDP sockets (IPv4 and IPv6) created
// in the given cgroups or their descendants, in the caller's network
// namespace and in every namespace a process of those cgroups is in.
// Listening sockets stay open. It uses the best method here, prepared when
// the enforcer was loaded. An *UnsupportedError says the kernel offers no
// way to do it.
func (e *Enforcer) DestroySockets(cgroupIDs ...uint64) (DestroyStats, error) {
	return e.abort.Destroy(cgroupIDs...)
}

// UnixConnections lists the unix connections the processes of a workload
// (its cgroup and those below) hold now that ShutdownUnix would end: taken
// when a task starts, they are kept open at its end. Nil when unix sockets
// are not enforced here. On an error the list holds what could be read;
// a connection missing from it is only ended when it need not be.
func (e *Enforcer) UnixConnections(cgroupID uint64) ([]UnixConn, error) {
	if !e.features.UnixHooks {
		return nil, nil
	}
	return e.abort.UnixConnections(cgroupID)
}

// ShutdownUnix ends the unix connections of a workload's processes that
// leave the workload, except those in keep (see UnixConnections). Nothing
// is done, and no error returned, where unix sockets are not enforced: the
// workload could connect again at once.
func (e *Enforcer) ShutdownUnix(cgroupID uint64, keep []UnixConn) (UnixStats, error) {
	if !e.features.UnixHooks {
		return UnixStats{Method: UnixShutdownNone}, nil
	}
	return e.abort.ShutdownUnix(cgroupID, keep)
}
