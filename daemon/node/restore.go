package node

import (
	"errors"
	"path/filepath"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/daemon/identity"
	"github.com/bridle-sh/bridle/daemon/tasks"
	"github.com/bridle-sh/bridle/loader"
)

// Restore takes over the tasks a previous daemon left in force, as the
// store recorded them. The task manager checks them against the kernel's
// pinned state and revokes whatever they cannot explain, so a crash at any
// point of a task start or end never leaves a workload over-granted (see
// tasks.Manager.Restore for the rules); a task that expired while no daemon
// ran is revoked here, after its sub-agents, with its end recorded.
func (n *Node) Restore(stored []tasks.Task) {
	how := tasks.Restored{
		CgroupID: func(workload string) (uint64, error) {
			return loader.CgroupID(filepath.Join(n.opt.CgroupRoot, workload))
		},
		Log: n.log,
	}
	if n.opt.Store != nil {
		how.Grants = n.opt.Store.LoadRules
	}
	for _, id := range n.tasks.Restore(stored, how) {
		n.log.Info("task expired while bridled was down; revoking", "task", id)
		if _, err := n.End(id, bpf.TaskExpired); err != nil {
			n.log.Error("revoke expired task", "task", id, "err", err)
		}
	}
	// Their identities are followed again, as at their start.
	for _, t := range n.List() {
		if t.IdentitySource != identity.Request {
			n.opt.Identities.Adopt(t.Workload, identity.Identity{ID: t.Identity, Source: t.IdentitySource, Selectors: t.IdentitySelectors})
		}
	}
	if n.opt.Store != nil {
		ids := map[string]bool{}
		for _, t := range n.List() {
			ids[t.ID] = true
		}
		n.opt.Store.RemoveRulesExcept(ids)
	}
	_ = n.persist()
}

// IdentityChanged ends the tasks decided under a workload's identity that
// its source no longer gives: a task is a grant to an identity, and a new
// identity is decided by a new task, which its orchestrator starts.
func (n *Node) IdentityChanged(c identity.Change) {
	for _, t := range n.List() {
		if t.Workload != c.Cgroup || t.IdentitySource == identity.Request || t.Identity != c.From.ID {
			continue
		}
		reason := "identity " + t.Identity + " withdrawn: " + c.Reason
		n.log.Warn("ending task: its identity changed", "task", t.ID, "workload", t.Workload,
			"from", c.From.ID, "to", c.To.ID, "reason", c.Reason)
		if _, err := n.End(t.ID, reason); err != nil && !errors.Is(err, ErrNoTask) {
			n.log.Error("end task after an identity change", "task", t.ID, "err", err)
		}
	}
}
