// Package tasks keeps the tasks in force on this node: which workload each
// task governs, the kernel slot holding its rules, and its lifetime. It is
// the one place that moves a workload between its baseline and a task's
// grants, for `bridle run` and the node daemon alike.
package tasks

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
)

// Kernel is what the manager needs from the loaded BPF programs
// (*loader.Enforcer).
type Kernel interface {
	WriteRules(slot uint32, rs policy.RuleSet) error
	SetTask(slot uint32, expires time.Time, generation uint32) error
	BindWorkload(cgroupID uint64, slot uint32, mode loader.WorkloadMode) error
	ClearSlot(slot uint32) error
	DestroySockets(cgroupIDs ...uint64) (loader.DestroyStats, error)
	ShutdownUnix(cgroupID uint64, keep []loader.UnixConn) (loader.UnixStats, error)
}

// Task is one task in force.
type Task struct {
	ID         string              `json:"id"`
	Workload   string              `json:"workload"` // cgroup path below the cgroup v2 root
	CgroupID   uint64              `json:"cgroup_id"`
	Identity   string              `json:"identity"`
	Intent     string              `json:"intent"`
	Labels     map[string]string   `json:"labels,omitempty"`
	Slot       uint32              `json:"slot"`
	Generation uint32              `json:"generation"`
	Started    time.Time           `json:"started"`
	Expires    time.Time           `json:"expires,omitzero"` // zero: no expiry
	Rules      int                 `json:"rules"`            // kernel entries in force
	Mode       loader.WorkloadMode `json:"mode"`
	// KeepUnix are the unix connections the workload held before the
	// task: they were not made under it and stay open at its end.
	KeepUnix []loader.UnixConn `json:"keep_unix,omitempty"`
}

// StartRequest asks for a task on a workload with a compiled envelope.
type StartRequest struct {
	Workload string
	CgroupID uint64
	Identity string
	Intent   string
	Labels   map[string]string
	TTL      time.Duration // 0: no expiry
	// NotAfter, if set, bounds the expiry (a sub-agent's task ends with
	// its parent's at the latest).
	NotAfter time.Time
	Rules    policy.RuleSet
	Mode     loader.WorkloadMode
	// KeepUnix are the unix connections the workload holds before the
	// task (loader's UnixConnections), left open at its end.
	KeepUnix []loader.UnixConn
}

// ErrWorkloadBusy is returned when a workload already has an active task.
var ErrWorkloadBusy = errors.New("workload already has an active task")

// ErrNoSlot is returned when every kernel slot is in use.
var ErrNoSlot = errors.New("no free task slot")

// Manager owns the task slots of one loaded enforcer.
type Manager struct {
	mu         sync.Mutex
	k          Kernel
	tasks      map[string]*Task
	byWorkload map[uint64]string
	usedSlots  map[uint32]bool
	generation uint32
	timers     map[string]*time.Timer
	onEnd      func(End)
	clearing   sync.WaitGroup // slots of ended tasks being cleared
	stuckSlots int
}

// NewManager manages the slots of k. onEnd, if set, is told about every task
// that ends, by call or by expiry.
func NewManager(k Kernel, onEnd func(End)) *Manager {
	return &Manager{
		k:          k,
		tasks:      map[string]*Task{},
		byWorkload: map[uint64]string{},
		usedSlots:  map[uint32]bool{},
		timers:     map[string]*time.Timer{},
		onEnd:      onEnd,
	}
}

// NewTaskID returns a fresh task id: "t-" and 12 hex digits.
func NewTaskID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "t-" + hex.EncodeToString(b[:])
}

// Start puts a task in force. The rules are written into a free slot first
// and the workload is switched to it last, with one map write, so the
// workload never sees half a rule set. The lifetime starts now.
func (m *Manager) Start(id string, req StartRequest) (Task, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if other, busy := m.byWorkload[req.CgroupID]; busy {
		return Task{}, fmt.Errorf("tasks: %s: %w (%s)", req.Workload, ErrWorkloadBusy, other)
	}
	slot, err := m.freeSlot()
	if err != nil {
		return Task{}, err
	}
	m.generation++
	t := &Task{
		ID: id, Workload: req.Workload, CgroupID: req.CgroupID, Identity: req.Identity,
		Intent: req.Intent, Labels: req.Labels, Slot: slot, Generation: m.generation,
		Started: time.Now().UTC(), Rules: req.Rules.Count(), Mode: req.Mode, KeepUnix: req.KeepUnix,
	}
	if req.TTL > 0 {
		t.Expires = t.Started.Add(req.TTL)
	}
	if !req.NotAfter.IsZero() && (t.Expires.IsZero() || t.Expires.After(req.NotAfter)) {
		t.Expires = req.NotAfter.UTC()
	}
	if err := m.k.WriteRules(slot, req.Rules); err != nil {
		_ = m.k.ClearSlot(slot)
		return Task{}, fmt.Errorf("tasks: write rules: %w", err)
	}
	if err := m.k.SetTask(slot, t.Expires, t.Generation); err != nil {
		_ = m.k.ClearSlot(slot)
		return Task{}, fmt.Errorf("tasks: set lifetime: %w", err)
	}
	if err := m.k.BindWorkload(req.CgroupID, slot, req.Mode); err != nil {
		_ = m.k.ClearSlot(slot)
		return Task{}, fmt.Errorf("tasks: bind workload: %w", err)
	}
	m.usedSlots[slot] = true
	m.tasks[id] = t
	m.byWorkload[req.CgroupID] = id
	if !t.Expires.IsZero() {
		m.timers[id] = time.AfterFunc(time.Until(t.Expires), func() { _ = m.End(id, bpf.TaskExpired) })
	}
	return *t, nil
}

func (m *Manager) freeSlot() (uint32, error) {
	for s := uint32(1); s < loader.MaxSlots; s++ {
		if !m.usedSlots[s] {
			return s, nil
		}
	}
	return 0, ErrNoSlot
}

// End revokes a task: its workload falls back to the baseline at once (one
// map write), the sockets it opened are aborted and its unix connections
// opened under the task shut down; then, in the background, the task's
// rules are deleted and its slot freed. The kernel
// already refuses by the baseline from an expiry instant on; End is what
// removes the rules.
func (m *Manager) End(id, reason string) error {
	m.mu.Lock()
	t, ok := m.tasks[id]
	if !ok {
		m.mu.Unlock()
		return fmt.Errorf("tasks: no task %s", id)
	}
	if timer := m.timers[id]; timer != nil {
		timer.Stop()
		delete(m.timers, id)
	}
	err := m.k.BindWorkload(t.CgroupID, loader.BaselineSlot, t.Mode)
	if err != nil {
		m.mu.Unlock()
		// The workload still points at the slot: keep the task so the
		// caller can retry; the kernel's expiry check still applies.
		return fmt.Errorf("tasks: revoke %s: %w", id, err)
	}
	delete(m.tasks, id)
	delete(m.byWorkload, t.CgroupID)
	// Connections opened under the task end with it.
	stats, destroyErr := m.k.DestroySockets(t.CgroupID)
	ended := End{Task: *t, Reason: reason, Sockets: stats, SocketsErr: destroyErr}
	m.mu.Unlock()
	// Unix connections are ended from userspace, one process at a time:
	// outside the lock, so a large workload holds up no other task. The
	// workload is on the baseline already, so it cannot open new ones.
	ended.Unix, ended.UnixErr = m.k.ShutdownUnix(t.CgroupID, t.KeepUnix)
	// The rules are deleted after End returns: nothing refers to the slot
	// any more, and deleting thousands of entries one by one would hold up
	// the revocation by milliseconds. The slot is reused only once empty.
	m.clearing.Add(1)
	go m.clearSlot(t.Slot)
	if m.onEnd != nil {
		m.onEnd(ended)
	}
	return nil
}

// clearSlot deletes an ended task's rules and frees its slot. A slot that
// cannot be cleared stays reserved, so no later task inherits its rules.
func (m *Manager) clearSlot(slot uint32) {
	defer m.clearing.Done()
	err := m.k.ClearSlot(slot)
	if err != nil {
		err = m.k.ClearSlot(slot)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		m.stuckSlots++
		return
	}
	delete(m.usedSlots, slot)
}

// StuckSlots is how many slots could not be cleared after their task
// ended; they stay out of use.
func (m *Manager) StuckSlots() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stuckSlots
}

// Wait waits until the rules of every ended task are deleted.
func (m *Manager) Wait() { m.clearing.Wait() }

// End reports a task that ended: why, and what became of its open sockets.
type End struct {
	Task       Task
	Reason     string // bpf.TaskExpired, or what the caller of End said
	Sockets    loader.DestroyStats
	SocketsErr error // open sockets could not be aborted (kernel support, or failures)
	Unix       loader.UnixStats
	UnixErr    error // unix connections could not all be shut down
}

// Get returns a task by id.
func (m *Manager) Get(id string) (Task, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.tasks[id]
	if !ok {
		return Task{}, false
	}
	return *t, true
}

// List returns the tasks in force.
func (m *Manager) List() []Task {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Task, 0, len(m.tasks))
	for _, t := range m.tasks {
		out = append(out, *t)
	}
	return out
}

// ByGeneration finds the task a kernel event names (slot generations are
// unique while the manager lives).
func (m *Manager) ByGeneration(gen uint32) (Task, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, t := range m.tasks {
		if t.Generation == gen {
			return *t, true
		}
	}
	return Task{}, false
}
