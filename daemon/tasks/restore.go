package tasks

import (
	"fmt"
	"time"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/loader"
)

// Adopt takes over a task a previous daemon started, whose rules, lifetime
// and binding are already in the kernel's pinned maps: nothing is written
// to the kernel, the slot is marked used and the expiry timer re-armed.
// A task that expired meanwhile is left to the caller to revoke with End
// after adopting it.
func (m *Manager) Adopt(t Task) error {
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
	m.tasks[t.ID] = &task
	m.byWorkload[t.CgroupID] = t.ID
	m.usedSlots[t.Slot] = true
	if !t.Expires.IsZero() && time.Until(t.Expires) > 0 {
		id := t.ID
		m.timers[id] = time.AfterFunc(time.Until(t.Expires), func() { _ = m.End(id, bpf.TaskExpired) })
	}
	return nil
}
