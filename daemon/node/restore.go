package node

import (
	"path/filepath"
	"time"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/daemon/store"
	"github.com/bridle-sh/bridle/loader"
)

// Restore takes over the tasks a previous daemon left in force. Their rules
// and bindings are still in the pinned maps. The kernel is the truth and
// the store explains it; whatever the store cannot explain is revoked, so a
// crash at any point of a task start or end never leaves a workload
// over-granted:
//   - a stored task whose workload is gone is cleared;
//   - a stored task whose workload is no longer bound to its slot (the old
//     daemon died while ending it) is cleared;
//   - a workload bound to a task slot no stored task names (the old daemon
//     died between the kernel write and the store write) goes back to the
//     baseline;
//   - rules in slots no adopted task holds are deleted, so the next task
//     given such a slot starts from nothing;
//   - a task that expired while no daemon ran is revoked now.
func (n *Node) Restore(stored []store.Entry) {
	k := n.opt.Kernel
	bindings, err := k.Bindings()
	if err != nil {
		// Without the bindings nothing can be checked: take over no task
		// and revoke them all below, rather than trust the store blindly.
		n.log.Error("cannot read the kernel's workload bindings; revoking every stored task", "err", err)
		bindings = map[uint64]uint32{}
	}
	keep := map[uint32]bool{}
	adopted := map[uint64]bool{}
	var expired []string
	for _, e := range stored {
		t := e.Task
		log := n.log.With("task", t.ID, "workload", t.Workload, "slot", t.Slot)
		id, err := loader.CgroupID(filepath.Join(n.opt.CgroupRoot, t.Workload))
		switch {
		case err != nil || id != t.CgroupID:
			log.Warn("workload of stored task is gone; clearing its slot", "err", err)
			_ = k.UnbindWorkload(t.CgroupID)
			continue
		case bindings[t.CgroupID] != t.Slot:
			// Finish the revocation: the connections opened under the
			// task may not have been aborted yet.
			log.Warn("stored task is not bound in the kernel (its end was cut short); finishing it", "bound_slot", bindings[t.CgroupID])
			if _, err := k.DestroySockets(t.CgroupID); err != nil {
				log.Warn("connections opened under the task may still be open", "err", err)
			}
			if _, err := k.ShutdownUnix(t.CgroupID, t.KeepUnix); err != nil {
				log.Warn("unix connections opened under the task may still be open", "err", err)
			}
			continue
		}
		if err := n.tasks.Adopt(t); err != nil {
			// Without the manager's bookkeeping the task cannot be ended
			// later: revoke it now rather than leave it over-granted.
			log.Error("cannot adopt stored task; revoking it", "err", err)
			if err := k.BindWorkload(t.CgroupID, loader.BaselineSlot, t.Mode); err != nil {
				log.Error("revoke", "err", err)
			}
			continue
		}
		keep[t.Slot] = true
		adopted[t.CgroupID] = true
		n.mu.Lock()
		n.revisions[t.ID] = e.PolicyRevision
		n.workloads[t.CgroupID] = t.ID
		n.known[t.Generation] = knownTask{task: t, revision: e.PolicyRevision}
		if e.Parent != "" {
			n.parents[t.ID] = e.Parent
		}
		n.mu.Unlock()
		if n.opt.Store != nil {
			if rs, err := n.opt.Store.LoadRules(t.ID); err == nil {
				n.mu.Lock()
				n.rules[t.ID] = rs
				n.mu.Unlock()
			} else {
				log.Warn("task rules not kept; it cannot be a parent of sub-agents", "err", err)
			}
		}
		if !t.Expires.IsZero() && !time.Now().Before(t.Expires) {
			expired = append(expired, t.ID)
			continue
		}
		log.Info("task re-adopted", "expires", t.Expires)
	}
	for cg, slot := range bindings {
		if slot != loader.BaselineSlot && !adopted[cg] {
			n.log.Warn("workload bound to a task no stored record explains; back to the baseline", "cgroup_id", cg, "slot", slot)
			if err := k.BindWorkload(cg, loader.BaselineSlot, loader.WorkloadMode{}); err != nil {
				n.log.Error("revoke unexplained binding", "cgroup_id", cg, "err", err)
			}
		}
	}
	if err := k.ClearSlotsExcept(keep); err != nil {
		n.log.Error("clear stale task slots", "err", err)
	}
	for _, id := range expired {
		n.log.Info("task expired while bridled was down; revoking", "task", id)
		if _, err := n.End(id, bpf.TaskExpired); err != nil {
			n.log.Error("revoke expired task", "task", id, "err", err)
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
