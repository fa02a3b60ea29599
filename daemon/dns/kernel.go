// Package dns is Bridle's resolver. The kernel steers every confined
// workload's DNS traffic (any address, port 53, UDP and TCP) here; the
// resolver finds out from the kernel which workload asked, forwards the
// query to the upstream resolver only when that workload's task allows the
// name, and writes each address of the answer into the task's kernel rules
// before the workload sees the answer. Names the task may not reach are
// answered locally and never leave the host. See docs/DNS.md.
package dns

import (
	"net/netip"
	"time"

	"github.com/bridle-sh/bridle/daemon/identity"
	"github.com/bridle-sh/bridle/policy"
)

// Peer is who sent a query, as the kernel recorded it when the workload's
// packet left for the resolver.
type Peer struct {
	CgroupID         uint64
	Slot, Generation uint32
	// Dest is where the workload sent the query before the kernel
	// steered it here (the nameserver it believes it asks).
	Dest netip.AddrPort
}

// Learned is one address a task may reach because a name it may reach
// resolved to it, until Expires.
type Learned struct {
	Protocol policy.Protocol
	Addr     netip.Addr
	Ports    []policy.PortRange
	Expires  time.Time
}

// Kernel is the enforcer's side of the resolver.
type Kernel interface {
	// Peer returns the workload whose socket sent from src over proto,
	// or an error when the kernel steered no query from there.
	Peer(proto policy.Protocol, src netip.AddrPort) (Peer, error)
	// Learn writes addrs into the rules of the task in slot at
	// generation. It returns once the kernel enforces them.
	Learn(slot, generation uint32, addrs []Learned) error
}

// Asker is the task, or the baseline, that governs a workload.
type Asker struct {
	TaskID, Identity, Intent, Workload, PolicyRevision string
	IdentitySource                                     identity.Source
	// Names answers what the task's name rules allow for a name.
	Names *policy.NameIndex
	// Ends is when the task ends; zero for none.
	Ends time.Time
}

// Tasks finds the task (or baseline) governing a workload.
type Tasks interface {
	Lookup(p Peer) (Asker, bool)
}
