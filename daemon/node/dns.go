package node

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/dns"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
)

// The node's side of Bridle's resolver: the kernel names the workload that
// sent a query, the node names its task (or the baseline) and the rules its
// names allow, and the task manager writes what the answer taught.

// StartResolver starts a resolver for this node's workloads and steers
// their DNS to it. Its records go where the kernel's decisions go. cfg's
// Kernel, Tasks, Records, Node and Log are set here.
func (n *Node) StartResolver(ctx context.Context, cfg dns.Config) (*dns.Server, error) {
	if f := n.opt.Kernel.Features(); !f.DNSRedirect {
		return nil, &NoSteeringError{Reason: f.DNSRedirectReason}
	}
	cfg.Kernel = resolverKernel{n}
	cfg.Tasks = n
	sinks := n.sinks()
	cfg.Records = audit.SinkFunc(func(rec audit.Record) {
		n.refusedName(&rec)
		sinks.Record(rec)
	})
	cfg.Node = n.opt.NodeName
	cfg.Log = n.log
	srv, err := dns.New(cfg)
	if err != nil {
		return nil, err
	}
	if err := srv.Start(ctx); err != nil {
		return nil, err
	}
	v4, v6 := srv.Addrs()
	// The steering is the enforcer's setting, not a task's rule: the one
	// kernel write outside the task manager.
	if err := n.opt.Kernel.SetResolver(v4, v6); err != nil {
		_ = srv.Shutdown(context.Background())
		_ = srv.RemoveAddrs() // the kernel was not steered to them
		return nil, fmt.Errorf("steer DNS to the resolver: %w", err)
	}
	n.mu.Lock()
	n.resolver = srv
	n.mu.Unlock()
	n.log.Info("resolver listening; workloads' DNS steered to it", "ipv4", v4, "ipv6", v6, "upstream", cfg.Upstream)
	return srv, nil
}

// NoSteeringError says the kernel cannot steer DNS to a resolver. Nothing
// is open then: port 53 is judged by the rules like any port, and names
// in envelopes resolve nothing.
type NoSteeringError struct{ Reason string }

func (e *NoSteeringError) Error() string {
	return "the kernel cannot steer DNS to Bridle's resolver: " + e.Reason
}

// Lookup names the task, or the baseline, governing the workload the
// kernel attributed a query to. A task that ended, or a slot generation
// not in force, is nobody's.
func (n *Node) Lookup(p dns.Peer) (dns.Asker, bool) {
	if p.Slot == loader.BaselineSlot {
		// A baseline names no hosts (see SetBaseline): every name is
		// answered NXDOMAIN, and nothing is learned.
		n.mu.Lock()
		a := dns.Asker{PolicyRevision: n.baseline}
		n.mu.Unlock()
		a.Workload = n.cgroupPath(p.CgroupID)
		if a.Workload != "" {
			known := n.opt.Identities.Known(a.Workload)
			a.Identity, a.IdentitySource = known.ID, known.Source
		}
		return a, true
	}
	t, ok := n.tasks.ByGeneration(p.Generation)
	if !ok || t.Slot != p.Slot {
		return dns.Asker{}, false
	}
	if cur, ok := n.tasks.Get(t.ID); !ok || cur.Generation != p.Generation {
		return dns.Asker{}, false
	}
	names, ends := n.grantedNames(t, n.taskNames(t), t.Expires)
	return dns.Asker{
		TaskID: t.ID, Identity: t.Identity, IdentitySource: t.IdentitySource, Intent: t.Intent, Workload: t.Workload,
		PolicyRevision: t.PolicyRevision, Names: names, Ends: ends,
	}, true
}

// taskNames returns the name index of a task's rules, built once per task.
func (n *Node) taskNames(t Task) *policy.NameIndex {
	n.mu.Lock()
	defer n.mu.Unlock()
	if x, ok := n.names[t.Generation]; ok {
		return x
	}
	var x *policy.NameIndex
	if t.Grants != nil {
		x = policy.NewNameIndex(t.Grants.Names)
	}
	n.names[t.Generation] = x
	return x
}

// resolverKernel is the kernel as the resolver sees it: who sent a query,
// and the task manager's one path for writing what an answer taught.
type resolverKernel struct{ n *Node }

func (k resolverKernel) Peer(proto policy.Protocol, src netip.AddrPort) (dns.Peer, error) {
	p, err := k.n.opt.Kernel.DNSPeer(proto, src)
	if err != nil {
		return dns.Peer{}, err
	}
	return dns.Peer{CgroupID: p.CgroupID, Slot: p.Slot, Generation: p.Generation, Dest: p.Dest}, nil
}

func (k resolverKernel) Learn(slot, generation uint32, addrs []dns.Learned) error {
	out := make([]loader.LearnedAddr, len(addrs))
	for i, a := range addrs {
		out[i] = loader.LearnedAddr{Protocol: a.Protocol, Addr: a.Addr, Ports: a.Ports, Expires: a.Expires}
	}
	return k.n.tasks.Learn(slot, generation, out)
}

// sinks are where a decision record goes: the records (audit file), the
// metrics, the subscriptions of its workload, then extra.
func (n *Node) sinks(extra ...audit.Sink) audit.Sinks {
	return append(audit.Sinks{audit.SinkFunc(n.record), n.opt.Metrics, audit.SinkFunc(n.deliverRecord)}, extra...)
}
