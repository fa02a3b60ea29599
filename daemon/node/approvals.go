package node

import (
	"context"
	"github.com/bridle-sh/bridle/policy/engine"
	"slices"
	"time"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/daemon/approvals"
	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/tasks"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
)

// The node's side of step-up approvals: a task's approvable set goes to
// the approvals manager at its start and leaves at its end, and each
// refusal of a task is offered to the manager, which names the request it
// opened or matched in the refusal's record.

// UseApprovals makes the tasks started from now on ask for what their
// policy's approvable entries cover. Call it once, before tasks start:
// the manager writes its grants through the node's task manager (Tasks),
// so it is made after the node.
func (n *Node) UseApprovals(m *approvals.Manager) {
	n.mu.Lock()
	n.approvals = m
	n.mu.Unlock()
}

// Tasks is the node's task manager, the one writer of kernel state: the
// approvals manager's Kernel.
func (n *Node) Tasks() *tasks.Manager { return n.tasks }

// Record writes a record of bridled's own (the approvals manager's) where
// the node's records go.
func (n *Node) Record(r audit.Record) { n.record(r) }

func (n *Node) approvalsManager() *approvals.Manager {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.approvals
}

// approvableFor compiles what a task may be asked for; a sub-agent's is
// cut to what its parent's rules or approvable set cover (see
// policy.CompiledApprovable.Within).
func (n *Node) approvableFor(a policy.Approvable, revision string, parent *tasks.Task) (policy.CompiledApprovable, error) {
	m := n.approvalsManager()
	if len(a.Entries) == 0 || m == nil {
		return policy.CompiledApprovable{}, nil
	}
	c, err := policy.CompileApprovable(a)
	if err != nil {
		return policy.CompiledApprovable{}, &EnvelopeError{err}
	}
	if parent != nil {
		var rules policy.RuleSet
		if parent.Grants != nil {
			rules = *parent.Grants
		}
		pa, _ := m.Approvable(parent.ID)
		c = c.Within(rules, pa)
	}
	return c, nil
}

// approvalsStarted hands a started task's approvable set to the manager.
func (n *Node) approvalsStarted(t Task, a policy.CompiledApprovable) {
	m := n.approvalsManager()
	if m == nil || a.Empty() {
		return
	}
	m.TaskStarted(approvals.Task{
		ID: t.ID, Workload: t.Workload, Identity: t.Identity, Intent: t.Intent, PolicyRevision: t.PolicyRevision,
		CgroupID: t.CgroupID, Slot: t.Slot, Generation: t.Generation, Ends: t.Expires, Approvable: a,
	})
}

// refusedEvent offers a kernel refusal of a task to the manager.
func (n *Node) refusedEvent(rec *audit.Record, ev loader.Event) {
	if rec.Task == "" || ev.Verdict != bpf.VerdictDeny {
		return
	}
	m := n.approvalsManager()
	if m == nil {
		return
	}
	var t policy.Target
	switch ev.Action {
	case bpf.ActionConnect, bpf.ActionSendmsg:
		proto, ok := protocolOf(ev.Protocol)
		if !ok || !ev.Addr.IsValid() {
			return
		}
		t = policy.Target{Action: policy.TargetConnect, Protocol: proto, Addr: ev.Addr.Unmap(), Port: ev.Port}
	case bpf.ActionExec:
		t = policy.Target{Action: policy.TargetExec, Dev: ev.Dev, Ino: ev.Ino, Path: ev.Path}
	default:
		return
	}
	m.Refused(rec, t)
}

// refusedName offers the resolver's refusal of a name a task's rules do
// not allow to the manager.
func (n *Node) refusedName(rec *audit.Record) {
	if rec.Task == "" || rec.Action != bpf.ActionDNS || rec.Verdict != bpf.VerdictDeny || rec.Reason != audit.DNSNotAllowed {
		return
	}
	if m := n.approvalsManager(); m != nil {
		m.Refused(rec, policy.Target{Action: policy.TargetDNS, Name: rec.Name})
	}
}

func protocolOf(p bpf.Protocol) (policy.Protocol, bool) {
	switch p {
	case bpf.ProtocolTCP:
		return policy.ProtoTCP, true
	case bpf.ProtocolUDP:
		return policy.ProtoUDP, true
	case bpf.ProtocolICMP:
		return policy.ProtoICMP, true
	}
	return 0, false
}

// grantedNames adds the names approvals grant a task to its name rules,
// and moves the answers' end to the earliest grant's: the addresses the
// resolver learns, and the TTLs it hands the workload, must not outlive
// the grant that let the name through. While a name grant lasts, every
// answer of the task is cut to its end; the workload asks again sooner,
// nothing more.
func (n *Node) grantedNames(t Task, x *policy.NameIndex, ends time.Time) (*policy.NameIndex, time.Time) {
	m := n.approvalsManager()
	if m == nil {
		return x, ends
	}
	granted := m.GrantedNames(t.ID)
	if len(granted) == 0 {
		return x, ends
	}
	var rules []policy.NameRule
	if t.Grants != nil {
		rules = append(rules, t.Grants.Names...)
	}
	for _, g := range granted {
		rules = append(rules, g.Rule)
		if ends.IsZero() || g.Ends.Before(ends) {
			ends = g.Ends
		}
	}
	return policy.NewNameIndex(rules), ends
}

// RestoreApprovals hands the approvals manager what the tasks a previous
// bridled left in force may ask for, as the policy in force decides it now
// (parents first, so a sub-agent's set is cut to its parent's). Who asked
// for a restored task is not kept: the policy sees no requester, and a
// policy that refuses such an input gives that task nothing to ask for;
// it stays as it is, with plain refusals.
func (n *Node) RestoreApprovals(ctx context.Context) {
	if n.opt.Engine == nil || n.approvalsManager() == nil {
		return
	}
	ts := n.List()
	slices.SortStableFunc(ts, func(a, b Task) int {
		switch {
		case a.Parent == "" && b.Parent != "":
			return -1
		case a.Parent != "" && b.Parent == "":
			return 1
		}
		return 0
	})
	for _, t := range ts {
		in := engine.Input{
			Identity: t.Identity, IdentitySource: string(t.IdentitySource),
			Workload: engine.Workload{Cgroup: t.Workload},
			Task:     &engine.Task{ID: t.ID, Intent: t.Intent, Labels: t.Labels},
		}
		var parent *tasks.Task
		if t.Parent != "" {
			p, ok := n.tasks.Get(t.Parent)
			if !ok {
				continue
			}
			parent = &p
			in.Parent = &engine.Parent{ID: p.ID, Identity: p.Identity, Intent: p.Intent, Labels: p.Labels}
		}
		dec, err := n.opt.Engine.Evaluate(ctx, in)
		if err != nil {
			n.log.Warn("restored task: nothing to ask approval for (the policy did not decide)", "task", t.ID, "err", err)
			continue
		}
		a, err := n.approvableFor(dec.Approvable, dec.Revision, parent)
		if err != nil {
			n.log.Warn("restored task: nothing to ask approval for", "task", t.ID, "err", err)
			continue
		}
		n.approvalsStarted(t, a)
	}
}
