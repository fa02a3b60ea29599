// Package tasks keeps the tasks in force on this node: which workload each
// task governs, the kernel slot holding its rules, its lifetime, the policy
// revision that decided it and its parent. It is the one place that writes
// the kernel's workload bindings, task slots and rules (the baseline's
// included), for `bridle run` and the node daemon alike; what to write is
// decided by the caller.
package tasks

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/daemon/identity"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
)

// Kernel is what the manager needs from the loaded BPF programs
// (*loader.Enforcer).
type Kernel interface {
	WriteRules(slot uint32, rs policy.RuleSet) error
	SetTask(slot uint32, expires time.Time, generation uint32) error
	BindWorkload(cgroupID uint64, slot uint32, mode loader.WorkloadMode) error
	UnbindWorkload(cgroupID uint64) error
	ClearSlot(slot uint32) error
	DestroySockets(cgroupIDs ...uint64) (loader.DestroyStats, error)
	ShutdownUnix(cgroupID uint64, keep []loader.UnixConn) (loader.UnixStats, error)
	// Bindings and ClearSlotsExcept are what a restart reads and clears
	// of a previous daemon's state (see Restore).
	Bindings() (map[uint64]uint32, error)
	ClearSlotsExcept(keep map[uint32]bool) error
	// Learn writes addresses the resolver learned for a task's names;
	// Unlearn deletes some.
	Learn(slot, generation uint32, addrs []loader.LearnedAddr) error
	Unlearn(slot uint32, addrs []loader.LearnedAddr) error
	// GrantAddrs and GrantExec write what a person approved for a task,
	// each with an expiry the kernel checks; RevokeAddrs and RevokeExec
	// delete some; AbortTo resets a workload's connections to a peer
	// whose grant ended.
	GrantAddrs(slot, generation uint32, addrs []loader.GrantedAddr) error
	RevokeAddrs(slot uint32, addrs []loader.GrantedAddr) error
	GrantExec(slot, generation uint32, g []loader.GrantedExec) error
	RevokeExec(slot uint32, g []loader.GrantedExec) error
	AbortTo(cgroupID uint64, proto policy.Protocol, addr netip.Addr, ports []policy.PortRange) (loader.DestroyStats, error)
}

// Task is one task in force.
type Task struct {
	ID       string `json:"id"`
	Workload string `json:"workload"` // cgroup path below the cgroup v2 root
	CgroupID uint64 `json:"cgroup_id"`
	Identity string `json:"identity"`
	// IdentitySource is where Identity came from.
	IdentitySource identity.Source `json:"identity_source,omitempty"`
	// IdentitySelectors are the selectors the identity was attested by
	// (SPIRE, selectors mode), to ask the same way after a restart.
	IdentitySelectors []string            `json:"identity_selectors,omitempty"`
	Intent            string              `json:"intent"`
	Labels            map[string]string   `json:"labels,omitempty"`
	Slot              uint32              `json:"slot"`
	Generation        uint32              `json:"generation"`
	Started           time.Time           `json:"started"`
	Expires           time.Time           `json:"expires,omitzero"` // zero: no expiry
	Rules             int                 `json:"rules"`            // kernel entries in force
	Mode              loader.WorkloadMode `json:"mode"`
	// KeepUnix are the unix connections the workload held before the
	// task: they were not made under it and stay open at its end.
	KeepUnix []loader.UnixConn `json:"keep_unix,omitempty"`
	// PolicyRevision is the policy revision that decided the task's
	// envelope; its decision records name it.
	PolicyRevision string `json:"policy_revision"`
	// Parent is the task this one is a sub-agent of, "" for none.
	Parent string `json:"parent,omitempty"`
	// Pod is the Kubernetes pod the workload belongs to, "NS/NAME/UID";
	// "" for other workloads.
	Pod string `json:"pod,omitempty"`
	// Grants are the compiled rules in force, which bound a sub-agent's.
	// They are kept in files of their own, not with the task; nil when
	// unknown (a task restored without them cannot be a parent).
	Grants *policy.RuleSet `json:"-"`
}

// StartRequest asks for a task on a workload with a compiled envelope.
type StartRequest struct {
	Workload          string
	CgroupID          uint64
	Identity          string
	IdentitySource    identity.Source
	IdentitySelectors []string
	Intent            string
	Labels            map[string]string
	TTL               time.Duration // 0: no expiry
	// NotAfter, if set, bounds the expiry (a sub-agent's task ends with
	// its parent's at the latest).
	NotAfter time.Time
	Rules    policy.RuleSet
	Mode     loader.WorkloadMode
	// KeepUnix are the unix connections the workload holds before the
	// task (loader's UnixConnections), left open at its end.
	KeepUnix []loader.UnixConn
	// PolicyRevision decided the rules; Parent is the task this one is a
	// sub-agent of (its Rules and NotAfter are within the parent's).
	PolicyRevision string
	Parent         string
	Pod            string // see Task.Pod
}

// ErrWorkloadBusy is returned when a workload already has an active task.
var ErrWorkloadBusy = errors.New("workload already has an active task")

// ErrNoSlot is returned when every kernel slot is in use.
var ErrNoSlot = errors.New("no free task slot")

// Manager owns the task slots of one loaded enforcer: the one map of the
// node's tasks.
type Manager struct {
	mu         sync.Mutex
	k          Kernel
	tasks      map[string]*Task
	byWorkload map[uint64]string
	usedSlots  map[uint32]bool
	generation uint32
	// learned holds, per slot generation of a task in force, the expiry of
	// each address learned for it: what it holds in the kernel's learned
	// maps, which all tasks share (see Learn).
	learned    map[uint32]map[learnedKey]time.Time
	timers     map[string]*time.Timer
	onEnd      func(End)
	clearing   sync.WaitGroup // slots of ended tasks being cleared
	stuckSlots int

	// The event path's index, under a lock of its own so that reading
	// events never waits for a task's kernel writes.
	index sync.RWMutex
	// byGeneration names the task of a slot generation: in force, or
	// ended within EndedRetention, so that decisions it made just before
	// its end, read from the ring afterwards, still name it.
	byGeneration map[uint32]indexed
	// governed counts, per cgroup id, the tasks in force on the workload
	// and those whose end is still being reported.
	governed map[uint64]int
}

type indexed struct {
	task  Task
	ended time.Time // zero while in force
}

// EndedRetention is how long an ended task still names late events.
const EndedRetention = time.Minute

// NewManager manages the slots of k. onEnd, if set, is told about every task
// that ends, by call or by expiry.
func NewManager(k Kernel, onEnd func(End)) *Manager {
	return &Manager{
		k:            k,
		tasks:        map[string]*Task{},
		byWorkload:   map[uint64]string{},
		usedSlots:    map[uint32]bool{},
		learned:      map[uint32]map[learnedKey]time.Time{},
		timers:       map[string]*time.Timer{},
		onEnd:        onEnd,
		byGeneration: map[uint32]indexed{},
		governed:     map[uint64]int{},
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
		ID: id, Workload: req.Workload, CgroupID: req.CgroupID, Identity: req.Identity, IdentitySource: req.IdentitySource, IdentitySelectors: req.IdentitySelectors,
		Intent: req.Intent, Labels: req.Labels, Slot: slot, Generation: m.generation,
		Started: time.Now().UTC(), Rules: req.Rules.Count(), Mode: req.Mode, KeepUnix: req.KeepUnix,
		PolicyRevision: req.PolicyRevision, Parent: req.Parent, Pod: req.Pod, Grants: &req.Rules,
	}
	if req.TTL > 0 {
		t.Expires = t.Started.Add(req.TTL)
	}
	if !req.NotAfter.IsZero() && (t.Expires.IsZero() || t.Expires.After(req.NotAfter)) {
		t.Expires = req.NotAfter.UTC()
	}
	// Named before the binding, so that the task's first events, read
	// while Start still runs, already name it.
	m.index.Lock()
	m.byGeneration[t.Generation] = indexed{task: *t}
	m.index.Unlock()
	if err := m.write(slot, t, req); err != nil {
		if m.k.ClearSlot(slot) != nil {
			// Part of the rules may still be there: a later task given
			// this slot would inherit them. It stays out of use.
			m.usedSlots[slot] = true
			m.stuckSlots++
		}
		m.index.Lock()
		delete(m.byGeneration, t.Generation)
		m.index.Unlock()
		return Task{}, err
	}
	m.usedSlots[slot] = true
	m.insert(t, false)
	return *t, nil
}

// insert registers a task whose rules and binding are in the kernel, and
// arms its expiry; an adopted task already expired is left to the caller to
// end (see Restore). Called with mu held.
func (m *Manager) insert(t *Task, adopted bool) {
	m.tasks[t.ID] = t
	m.byWorkload[t.CgroupID] = t.ID
	m.index.Lock()
	m.byGeneration[t.Generation] = indexed{task: *t}
	m.governed[t.CgroupID]++
	m.index.Unlock()
	if !t.Expires.IsZero() && (!adopted || time.Until(t.Expires) > 0) {
		id := t.ID
		m.timers[id] = time.AfterFunc(time.Until(t.Expires), func() { _ = m.End(id, bpf.TaskExpired) })
	}
}

// write puts a task's rules, lifetime and binding in the kernel, the
// binding last.
func (m *Manager) write(slot uint32, t *Task, req StartRequest) error {
	if err := m.k.WriteRules(slot, req.Rules); err != nil {
		return fmt.Errorf("tasks: write rules: %w", err)
	}
	if err := m.k.SetTask(slot, t.Expires, t.Generation); err != nil {
		return fmt.Errorf("tasks: set lifetime: %w", err)
	}
	if err := m.k.BindWorkload(req.CgroupID, slot, req.Mode); err != nil {
		return fmt.Errorf("tasks: bind workload: %w", err)
	}
	return nil
}

func (m *Manager) freeSlot() (uint32, error) {
	for s := uint32(1); s < loader.MaxSlots; s++ {
		if !m.usedSlots[s] {
			return s, nil
		}
	}
	return 0, ErrNoSlot
}

// endRetry is how soon an expiry whose end failed is tried again.
const endRetry = time.Second

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
	err := m.k.BindWorkload(t.CgroupID, loader.BaselineSlot, t.Mode)
	if err != nil {
		// The workload still points at the slot: keep the task so the
		// caller can retry; the kernel's expiry check still applies. An
		// expiry whose end failed is tried again, not forgotten.
		if reason == bpf.TaskExpired {
			m.timers[id] = time.AfterFunc(endRetry, func() { _ = m.End(id, bpf.TaskExpired) })
		}
		m.mu.Unlock()
		return fmt.Errorf("tasks: revoke %s: %w", id, err)
	}
	if timer := m.timers[id]; timer != nil {
		timer.Stop()
		delete(m.timers, id)
	}
	delete(m.tasks, id)
	delete(m.byWorkload, t.CgroupID)
	delete(m.learned, t.Generation) // the slot's clearing deletes them
	m.index.Lock()
	now := time.Now()
	m.byGeneration[t.Generation] = indexed{task: *t, ended: now}
	for gen, it := range m.byGeneration {
		if !it.ended.IsZero() && now.Sub(it.ended) > EndedRetention {
			delete(m.byGeneration, gen)
		}
	}
	m.index.Unlock()
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
	// Only now, with the end reported, does the workload count as
	// without a task (see Governed).
	m.index.Lock()
	if m.governed[t.CgroupID]--; m.governed[t.CgroupID] <= 0 {
		delete(m.governed, t.CgroupID)
	}
	m.index.Unlock()
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

// List returns the tasks in force, oldest first.
func (m *Manager) List() []Task {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Task, 0, len(m.tasks))
	for _, t := range m.tasks {
		out = append(out, *t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Started.Before(out[j].Started) })
	return out
}

// Children returns the ids of the tasks in force that are sub-agents of
// the task id, sorted.
func (m *Manager) Children(id string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, t := range m.tasks {
		if t.Parent == id {
			out = append(out, t.ID)
		}
	}
	sort.Strings(out)
	return out
}

// ByGeneration finds the task a kernel event names: in force, or ended
// within EndedRetention (slot generations are unique while the manager
// lives, and across restarts).
func (m *Manager) ByGeneration(gen uint32) (Task, bool) {
	m.index.RLock()
	defer m.index.RUnlock()
	it, ok := m.byGeneration[gen]
	return it.task, ok
}

// Governed reports whether a workload has a task: in force, or ended but
// its end not yet reported to onEnd (so that whoever waits for the
// workload to be without a task also gets that report).
func (m *Manager) Governed(cgroupID uint64) bool {
	m.index.RLock()
	defer m.index.RUnlock()
	return m.governed[cgroupID] > 0
}

// SetBaseline writes the baseline's rules into the slot every workload
// without a task is bound to. fresh clears the slot first, so that a
// baseline that shrank leaves nothing behind; for that moment workloads
// without a task are refused more, never allowed more. Without fresh the
// rules are rewritten in place and workloads never see the slot empty.
func (m *Manager) SetBaseline(rs policy.RuleSet, fresh bool) error {
	if fresh {
		if err := m.k.ClearSlot(loader.BaselineSlot); err != nil {
			return err
		}
	}
	return m.k.WriteRules(loader.BaselineSlot, rs)
}

// ErrNotInForce is returned by Learn and the grant methods for a slot
// generation whose task has ended (or never was).
var ErrNotInForce = errors.New("task not in force")

// MaxLearned is how many learned addresses (per protocol) one task may
// hold in the kernel at once. The learned maps are shared by
// every task and hold 1M entries per address family: without a bound, one
// task whose names answer with ever new addresses would fill them, and
// every other task's names would stop resolving. An agent reaches tens of
// services, each behind a handful of addresses at a time.
const MaxLearned = 2048

// ErrLearnedFull is returned by Learn when a task holds MaxLearned
// addresses that have not expired.
var ErrLearnedFull = errors.New("the task holds as many learned addresses as it may")

type learnedKey struct {
	proto policy.Protocol
	addr  netip.Addr
}

// Learn writes addresses the resolver learned for a name into the rules of
// the task at slot and generation, while it is in force (a baseline names
// no hosts, and learns nothing). The kernel honours an entry only
// for its generation and until its expiry; checking here as well keeps an
// ended task's slot, about to be cleared or given to another task, free of
// entries written after the end. A task holds at most MaxLearned entries:
// past that, its expired ones are deleted to make room, and if none has
// expired, nothing is written (ErrLearnedFull).
func (m *Manager) Learn(slot, generation uint32, addrs []loader.LearnedAddr) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.inForceLocked(slot, generation); !ok {
		return fmt.Errorf("tasks: learn for slot %d generation %d: %w", slot, generation, ErrNotInForce)
	}
	held := m.learned[generation]
	if held == nil {
		held = map[learnedKey]time.Time{}
		m.learned[generation] = held
	}
	fresh := 0
	for _, a := range addrs {
		if _, ok := held[learnedKey{a.Protocol, a.Addr.Unmap()}]; !ok {
			fresh++
		}
	}
	if len(held)+fresh > MaxLearned {
		if err := m.forgetExpired(slot, held); err != nil {
			return err
		}
		if len(held)+fresh > MaxLearned {
			return fmt.Errorf("tasks: learn %d addresses for slot %d: %w (%d)", fresh, slot, ErrLearnedFull, MaxLearned)
		}
	}
	if err := m.k.Learn(slot, generation, addrs); err != nil {
		return fmt.Errorf("tasks: learn: %w", err)
	}
	for _, a := range addrs {
		k := learnedKey{a.Protocol, a.Addr.Unmap()}
		held[k] = a.Expires
	}
	return nil
}

// inForceLocked returns the task of generation in slot while it is in
// force; the baseline slot holds none. Called with mu held, which keeps it
// in force until mu is released.
func (m *Manager) inForceLocked(slot, generation uint32) (*Task, bool) {
	m.index.RLock()
	it, ok := m.byGeneration[generation]
	m.index.RUnlock()
	if slot == loader.BaselineSlot || !ok || !it.ended.IsZero() || it.task.Slot != slot {
		return nil, false
	}
	t := m.tasks[it.task.ID]
	return t, t != nil
}

// GrantAddrs writes address grants a person approved into the kernel for
// the task at slot and generation, while it is in force (ErrNotInForce
// otherwise): an ended task's slot, about to be cleared or given to
// another task, gets no entries. The kernel honours each only for that
// generation and until its expiry, so it ends on time without bridled.
func (m *Manager) GrantAddrs(slot, generation uint32, addrs []loader.GrantedAddr) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.inForceLocked(slot, generation); !ok {
		return fmt.Errorf("tasks: grant for slot %d generation %d: %w", slot, generation, ErrNotInForce)
	}
	if err := m.k.GrantAddrs(slot, generation, addrs); err != nil {
		return fmt.Errorf("tasks: grant: %w", err)
	}
	return nil
}

// RevokeAddrs deletes address grants of the task at slot and generation
// while it is in force. For a task that has ended it does nothing and
// returns ErrNotInForce: its grants went with its slot, and the slot may
// hold another task's by now.
func (m *Manager) RevokeAddrs(slot, generation uint32, addrs []loader.GrantedAddr) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.inForceLocked(slot, generation); !ok {
		return fmt.Errorf("tasks: revoke grant for slot %d generation %d: %w", slot, generation, ErrNotInForce)
	}
	if err := m.k.RevokeAddrs(slot, addrs); err != nil {
		return fmt.Errorf("tasks: revoke grant: %w", err)
	}
	return nil
}

// GrantExec writes binary grants for the task at slot and generation, as
// GrantAddrs does addresses.
func (m *Manager) GrantExec(slot, generation uint32, g []loader.GrantedExec) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.inForceLocked(slot, generation); !ok {
		return fmt.Errorf("tasks: grant exec for slot %d generation %d: %w", slot, generation, ErrNotInForce)
	}
	if err := m.k.GrantExec(slot, generation, g); err != nil {
		return fmt.Errorf("tasks: grant exec: %w", err)
	}
	return nil
}

// RevokeExec deletes binary grants of the task at slot and generation, as
// RevokeAddrs does addresses.
func (m *Manager) RevokeExec(slot, generation uint32, g []loader.GrantedExec) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.inForceLocked(slot, generation); !ok {
		return fmt.Errorf("tasks: revoke exec grant for slot %d generation %d: %w", slot, generation, ErrNotInForce)
	}
	if err := m.k.RevokeExec(slot, g); err != nil {
		return fmt.Errorf("tasks: revoke exec grant: %w", err)
	}
	return nil
}

// AbortTo resets the open TCP/UDP connections of the workload of the task
// at slot and generation whose peer is addr on one of ports (all when
// none): those opened under a grant that ended. Only while the task is in
// force (ErrNotInForce otherwise): a task's end resets all its
// connections already, and the workload may have a new task by now whose
// connections to the peer are its own. A connection to the peer that the
// task's rules allow as well is reset too; the workload may open it again.
func (m *Manager) AbortTo(slot, generation uint32, proto policy.Protocol, addr netip.Addr, ports []policy.PortRange) (loader.DestroyStats, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.inForceLocked(slot, generation)
	if !ok {
		return loader.DestroyStats{}, fmt.Errorf("tasks: abort connections for slot %d generation %d: %w", slot, generation, ErrNotInForce)
	}
	st, err := m.k.AbortTo(t.CgroupID, proto, addr, ports)
	if err != nil {
		return st, fmt.Errorf("tasks: abort connections of %s to %s: %w", t.ID, addr, err)
	}
	return st, nil
}

// forgetExpired deletes a task's expired learned entries from the kernel
// and from held. Called with mu held.
func (m *Manager) forgetExpired(slot uint32, held map[learnedKey]time.Time) error {
	now := time.Now()
	var gone []loader.LearnedAddr
	for k, exp := range held {
		if !exp.After(now) {
			gone = append(gone, loader.LearnedAddr{Protocol: k.proto, Addr: k.addr})
		}
	}
	if err := m.k.Unlearn(slot, gone); err != nil {
		return fmt.Errorf("tasks: delete expired learned addresses: %w", err)
	}
	for _, g := range gone {
		delete(held, learnedKey{g.Protocol, g.Addr})
	}
	return nil
}

// LearnedEndingAt lists the addresses the task in force at slot and
// generation learned from the resolver whose life ends at t (within a
// second): those whose answer was cut to the end of a grant that let their
// name through.
func (m *Manager) LearnedEndingAt(slot, generation uint32, t time.Time) []loader.LearnedAddr {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.index.RLock()
	it, ok := m.byGeneration[generation]
	m.index.RUnlock()
	if !ok || it.task.Slot != slot {
		return nil
	}
	var out []loader.LearnedAddr
	for k, exp := range m.learned[generation] {
		if d := exp.Sub(t); d > -time.Second && d < time.Second {
			out = append(out, loader.LearnedAddr{Protocol: k.proto, Addr: k.addr, Expires: exp})
		}
	}
	return out
}

// BindRoot binds a root cgroup to the baseline: the workloads below it
// without a binding of their own are governed by it.
func (m *Manager) BindRoot(cgroupID uint64) error {
	return m.k.BindWorkload(cgroupID, loader.BaselineSlot, loader.WorkloadMode{})
}
