package tasks

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
)

// Restored says how to check a previous daemon's tasks against this
// machine.
type Restored struct {
	// CgroupID returns the id of a workload's cgroup (a path below the
	// cgroup v2 mount) as it is now; an error or another id than the
	// stored one means the workload is gone.
	CgroupID func(workload string) (uint64, error)
	// Grants returns the compiled rules kept for a task, if any: without
	// them an adopted task cannot be a parent of sub-agents.
	Grants func(id string) (policy.RuleSet, error)
	// Log hears what was found and done; nil: nothing is logged.
	Log *slog.Logger
}

// Restore takes over the tasks a previous daemon left in force. Their rules
// and bindings are still in the pinned maps. The kernel is the truth and
// the stored tasks explain it; whatever they cannot explain is revoked, so
// a crash at any point of a task start or end never leaves a workload
// over-granted:
//   - a stored task whose workload is gone is cleared;
//   - a stored task whose workload is no longer bound to its slot (the old
//     daemon died while ending it) is cleared;
//   - a workload bound to a task slot no stored task names (the old daemon
//     died between the kernel write and the store write) goes back to the
//     baseline;
//   - rules in slots no adopted task holds are deleted, so the next task
//     given such a slot starts from nothing;
//   - a task that expired while no daemon ran is adopted and returned in
//     expired: the caller revokes it now with End (after its sub-agents).
func (m *Manager) Restore(stored []Task, how Restored) (expired []string) {
	logger := how.Log
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	bindings, err := m.k.Bindings()
	if err != nil {
		// Without the bindings nothing can be checked: take over no task
		// and revoke them all below, rather than trust the store blindly.
		logger.Error("cannot read the kernel's workload bindings; revoking every stored task", "err", err)
		bindings = map[uint64]uint32{}
	}
	keep := map[uint32]bool{}
	adopted := map[uint64]bool{}
	for _, t := range stored {
		log := logger.With("task", t.ID, "workload", t.Workload, "slot", t.Slot)
		id, err := how.CgroupID(t.Workload)
		switch {
		case err != nil || id != t.CgroupID:
			log.Warn("workload of stored task is gone; clearing its slot", "err", err)
			_ = m.k.UnbindWorkload(t.CgroupID)
			continue
		case bindings[t.CgroupID] != t.Slot:
			// Finish the revocation: the connections opened under the
			// task may not have been aborted yet.
			log.Warn("stored task is not bound in the kernel (its end was cut short); finishing it", "bound_slot", bindings[t.CgroupID])
			if _, err := m.k.DestroySockets(t.CgroupID); err != nil {
				log.Warn("connections opened under the task may still be open", "err", err)
			}
			if _, err := m.k.ShutdownUnix(t.CgroupID, t.KeepUnix); err != nil {
				log.Warn("unix connections opened under the task may still be open", "err", err)
			}
			continue
		}
		t.Grants = nil
		if how.Grants != nil {
			if rs, err := how.Grants(t.ID); err == nil {
				t.Grants = &rs
			} else {
				log.Warn("task rules not kept; it cannot be a parent of sub-agents", "err", err)
			}
		}
		if err := m.adopt(t); err != nil {
			// Without the manager's bookkeeping the task cannot be ended
			// later: revoke it now rather than leave it over-granted.
			log.Error("cannot adopt stored task; revoking it", "err", err)
			if err := m.k.BindWorkload(t.CgroupID, loader.BaselineSlot, t.Mode); err != nil {
				log.Error("revoke", "err", err)
			}
			continue
		}
		keep[t.Slot] = true
		adopted[t.CgroupID] = true
		if !t.Expires.IsZero() && !time.Now().Before(t.Expires) {
			expired = append(expired, t.ID)
			continue
		}
		log.Info("task re-adopted", "expires", t.Expires)
	}
	for cg, slot := range bindings {
		if slot != loader.BaselineSlot && !adopted[cg] {
			logger.Warn("workload bound to a task no stored record explains; back to the baseline", "cgroup_id", cg, "slot", slot)
			if err := m.k.BindWorkload(cg, loader.BaselineSlot, loader.WorkloadMode{}); err != nil {
				logger.Error("revoke unexplained binding", "cgroup_id", cg, "err", err)
			}
		}
	}
	if err := m.k.ClearSlotsExcept(keep); err != nil {
		logger.Error("clear stale task slots", "err", err)
	}
	return expired
}

// adopt takes over a task a previous daemon started, whose rules, lifetime
// and binding are already in the kernel's pinned maps: nothing is written
// to the kernel, the slot is marked used and the expiry timer re-armed.
func (m *Manager) adopt(t Task) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t.Slot == loader.BaselineSlot || t.Slot >= loader.MaxSlots {
		return fmt.Errorf("tasks: adopt %s: slot %d out of range", t.ID, t.Slot)
	}
	if m.usedSlots[t.Slot] {
		return fmt.Errorf("tasks: adopt %s: slot %d already in use", t.ID, t.Slot)
	}
	if other, busy := m.byWorkload[t.CgroupID]; busy {
		return fmt.Errorf("tasks: adopt %s: %s: %w (%s)", t.ID, t.Workload, ErrWorkloadBusy, other)
	}
	if _, dup := m.tasks[t.ID]; dup {
		return fmt.Errorf("tasks: adopt %s: already known", t.ID)
	}
	// Generations stay unique across restarts, so events still name one task.
	if t.Generation > m.generation {
		m.generation = t.Generation
	}
	task := t
	m.usedSlots[t.Slot] = true
	m.insert(&task, true)
	return nil
}
