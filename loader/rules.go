package loader

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/policy"
)

// BaselineSlot holds the rules of workloads without a task.
const BaselineSlot = bpf.BaselineSlot

// MaxSlots is how many tasks can be in force at once.
const MaxSlots = bpf.MaxSlots

// WorkloadMode says how the kernel treats a workload's refusals.
type WorkloadMode struct {
	Audit     bool // record refusals as would-deny, refuse nothing
	EmitAllow bool // emit an event for every allowed action too
}

func (m WorkloadMode) flags() uint32 {
	var f uint32
	if m.Audit {
		f |= uint32(netBridleWorkloadFlagsBRIDLE_WORKLOAD_AUDIT)
	}
	if m.EmitAllow {
		f |= uint32(netBridleWorkloadFlagsBRIDLE_WORKLOAD_EMIT_ALLOW)
	}
	return f
}

// BindWorkload puts a cgroup (and its subtree) under the rules of a slot.
// This one map write is what moves a workload between tasks.
func (e *Enforcer) BindWorkload(cgroupID uint64, slot uint32, mode WorkloadMode) error {
	v := netBridleWorkload{Slot: slot, Flags: mode.flags()}
	if err := e.net.BridleCgroups.Update(cgroupID, &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("bind cgroup %d to slot %d: %w", cgroupID, slot, err)
	}
	return nil
}

// UnbindWorkload forgets a cgroup. Programs attached above it still refuse
// everything its processes try, as for any cgroup without a workload entry.
func (e *Enforcer) UnbindWorkload(cgroupID uint64) error {
	err := e.net.BridleCgroups.Delete(cgroupID)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unbind cgroup %d: %w", cgroupID, err)
	}
	return nil
}

// SetTask sets the lifetime of the task in a slot. After expires the kernel
// itself judges the slot's workloads by the baseline; zero means no expiry.
func (e *Enforcer) SetTask(slot uint32, expires time.Time, generation uint32) error {
	v := netBridleTask{Generation: generation}
	if !expires.IsZero() {
		ns, err := bootTimeNanos(expires)
		if err != nil {
			return err
		}
		v.ExpiresNs = ns
	}
	if err := e.net.BridleTasks.Update(slot, &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("set task in slot %d: %w", slot, err)
	}
	return nil
}

// bootTimeNanos converts a wall-clock instant to CLOCK_BOOTTIME, the clock
// the programs read, so expiry survives suspend and wall-clock changes.
func bootTimeNanos(t time.Time) (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0, fmt.Errorf("read boot clock: %w", err)
	}
	d := time.Until(t)
	ns := ts.Nano() + d.Nanoseconds()
	if ns <= 0 {
		ns = 1 // already expired; 0 would mean "never"
	}
	return uint64(ns), nil
}

// WriteRules adds a compiled rule set to a slot with batch updates. Slots
// are written while unbound and then bound, so a workload never sees a
// half-written rule set.
func (e *Enforcer) WriteRules(slot uint32, rs policy.RuleSet) error {
	if err := e.writeNet4(slot, rs.Net4); err != nil {
		return err
	}
	if err := e.writeNet6(slot, rs.Net6); err != nil {
		return err
	}
	if err := e.writeExec(slot, rs.Exec); err != nil {
		return err
	}
	if err := e.writeListen(slot, rs.Listen); err != nil {
		return err
	}
	return e.writeUnix(slot, rs.Unix)
}

func portsValue(rule policy.NetRule) (netBridlePorts, error) {
	var v netBridlePorts
	if len(rule.Ports) > len(v.Ranges) {
		return v, fmt.Errorf("rule %s: %d port ranges, the kernel holds %d", rule, len(rule.Ports), len(v.Ranges))
	}
	v.Count = uint32(len(rule.Ports))
	for i, p := range rule.Ports {
		v.Ranges[i] = netBridlePortRange{First: p.First, Last: p.Last}
	}
	return v, nil
}

func (e *Enforcer) writeNet4(slot uint32, rules []policy.NetRule) error {
	keys := make([]netBridleNet4Key, 0, len(rules))
	vals := make([]netBridlePorts, 0, len(rules))
	for _, r := range rules {
		if !r.Prefix.Addr().Is4() {
			return fmt.Errorf("rule %s: not an IPv4 prefix", r)
		}
		k := netBridleNet4Key{Prefixlen: 64 + uint32(r.Prefix.Bits()), Slot: slot, Proto: uint32(r.Protocol)}
		k.Addr = r.Prefix.Addr().As4()
		v, err := portsValue(r)
		if err != nil {
			return err
		}
		keys, vals = append(keys, k), append(vals, v)
	}
	return batchUpdate(e.net.BridleNet4, keys, vals)
}

func (e *Enforcer) writeNet6(slot uint32, rules []policy.NetRule) error {
	keys := make([]netBridleNet6Key, 0, len(rules))
	vals := make([]netBridlePorts, 0, len(rules))
	for _, r := range rules {
		if !r.Prefix.Addr().Is6() || r.Prefix.Addr().Is4In6() {
			return fmt.Errorf("rule %s: not an IPv6 prefix", r)
		}
		k := netBridleNet6Key{Prefixlen: 64 + uint32(r.Prefix.Bits()), Slot: slot, Proto: uint32(r.Protocol)}
		k.Addr = r.Prefix.Addr().As16()
		v, err := portsValue(r)
		if err != nil {
			return err
		}
		keys, vals = append(keys, k), append(vals, v)
	}
	return batchUpdate(e.net.BridleNet6, keys, vals)
}

func (e *Enforcer) writeExec(slot uint32, ids []policy.FileID) error {
	keys := make([]netBridleExecKey, 0, len(ids))
	vals := make([]uint8, 0, len(ids))
	for _, id := range ids {
		keys = append(keys, netBridleExecKey{Slot: slot, Dev: id.Dev, Ino: id.Ino})
		v := uint8(netBridleExecFlagsBRIDLE_EXEC_ALLOW)
		if id.ScriptOnly {
			v |= uint8(netBridleExecFlagsBRIDLE_EXEC_SCRIPT_ONLY)
		}
		vals = append(vals, v)
	}
	return batchUpdate(e.net.BridleExec, keys, vals)
}

// writeListen writes one entry per transport. The map is there whether or
// not the kernel took the listen programs; without them nothing is
// refused and the entries are unused (Features says so).
func (e *Enforcer) writeListen(slot uint32, rules []policy.ListenRule) error {
	keys := make([]netBridleListenKey, 0, len(rules))
	vals := make([]netBridlePorts, 0, len(rules))
	for _, r := range rules {
		if r.Protocol != policy.ProtoTCP && r.Protocol != policy.ProtoUDP {
			return fmt.Errorf("listen rule %s: not a compiled rule (want tcp or udp)", r)
		}
		var v netBridlePorts
		if len(r.Ports) > len(v.Ranges) {
			return fmt.Errorf("listen rule %s: %d port ranges, the kernel holds %d", r, len(r.Ports), len(v.Ranges))
		}
		v.Count = uint32(len(r.Ports))
		for i, p := range r.Ports {
			v.Ranges[i] = netBridlePortRange{First: p.First, Last: p.Last}
		}
		keys = append(keys, netBridleListenKey{Slot: slot, Proto: uint32(r.Protocol)})
		vals = append(vals, v)
	}
	return batchUpdate(e.net.BridleListen, keys, vals)
}

// UnixKey is the kernel's key for a unix socket name as --allow-unix spells
// it: an absolute path, or "@name" for an abstract name.
func unixKey(slot uint32, name string) (netBridleUnixKey, error) {
	k := netBridleUnixKey{Slot: slot}
	path := name
	if strings.HasPrefix(name, "@") {
		k.Abstract = 1
		path = name[1:]
	}
	if len(path) > len(k.Path)-1 || len(path) == 0 {
		return k, fmt.Errorf("unix socket %q: name must be 1 to %d bytes", name, len(k.Path)-1)
	}
	for i := 0; i < len(path); i++ {
		k.Path[i] = int8(path[i])
	}
	k.Len = uint16(len(path))
	return k, nil
}

func (e *Enforcer) writeUnix(slot uint32, names []string) error {
	if len(names) > 0 && e.unix == nil {
		return fmt.Errorf("unix socket rules need the unix socket hooks: %s", e.features.UnixReason)
	}
	keys := make([]netBridleUnixKey, 0, len(names))
	vals := make([]uint8, 0, len(names))
	for _, n := range names {
		k, err := unixKey(slot, n)
		if err != nil {
			return err
		}
		keys, vals = append(keys, k), append(vals, 1)
	}
	return batchUpdate(e.net.BridleUnix, keys, vals)
}

// batchUpdate writes entries in one syscall per chunk where the kernel
// supports batch operations, else one at a time.
func batchUpdate[K, V any](m *ebpf.Map, keys []K, vals []V) error {
	if len(keys) == 0 {
		return nil
	}
	const chunk = 1 << 16
	for start := 0; start < len(keys); start += chunk {
		end := min(start+chunk, len(keys))
		_, err := m.BatchUpdate(keys[start:end], vals[start:end], nil)
		if errors.Is(err, ebpf.ErrNotSupported) {
			for i := start; i < end; i++ {
				if err := m.Update(&keys[i], &vals[i], ebpf.UpdateAny); err != nil {
					return fmt.Errorf("map %s: update: %w", m.String(), err)
				}
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("map %s: batch update: %w", m.String(), err)
		}
	}
	return nil
}

// ClearSlot deletes every rule of a slot, the addresses it learned, its
// grants, and its task entry.
func (e *Enforcer) ClearSlot(slot uint32) error {
	var errs []error
	errs = append(errs, deleteWhere(e.net.BridleNet4, func(k *netBridleNet4Key) bool { return k.Slot == slot }))
	errs = append(errs, deleteWhere(e.net.BridleNet6, func(k *netBridleNet6Key) bool { return k.Slot == slot }))
	errs = append(errs, deleteWhere(e.net.BridleExec, func(k *netBridleExecKey) bool { return k.Slot == slot }))
	errs = append(errs, deleteWhere(e.net.BridleUnix, func(k *netBridleUnixKey) bool { return k.Slot == slot }))
	errs = append(errs, deleteWhere(e.net.BridleListen, func(k *netBridleListenKey) bool { return k.Slot == slot }))
	errs = append(errs, deleteWhere(e.net.BridleLearn4, func(k *netBridleLearn4Key) bool { return k.Slot == slot }))
	errs = append(errs, deleteWhere(e.net.BridleLearn6, func(k *netBridleLearn6Key) bool { return k.Slot == slot }))
	errs = append(errs, deleteWhere(e.net.BridleGrant4, func(k *netBridleLearn4Key) bool { return k.Slot == slot }))
	errs = append(errs, deleteWhere(e.net.BridleGrant6, func(k *netBridleLearn6Key) bool { return k.Slot == slot }))
	errs = append(errs, deleteWhere(e.net.BridleExgrant, func(k *netBridleExecKey) bool { return k.Slot == slot }))
	errs = append(errs, e.net.BridleTasks.Update(slot, &netBridleTask{}, ebpf.UpdateAny))
	return errors.Join(errs...)
}

// Bindings returns every cgroup the kernel has a workload entry for, with
// the slot it is bound to. A restarted daemon compares it with its task
// store: a binding the store does not explain is revoked.
func (e *Enforcer) Bindings() (map[uint64]uint32, error) {
	out := map[uint64]uint32{}
	var (
		id uint64
		v  netBridleWorkload
	)
	it := e.net.BridleCgroups.Iterate()
	for it.Next(&id, &v) {
		out[id] = v.Slot
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read workload bindings: %w", err)
	}
	return out, nil
}

// ClearSlotsExcept deletes the rules, learned addresses, grants and task entry of every task slot not
// in keep. The baseline slot is never touched. A daemon that crashed
// between writing a task's rules and recording the task leaves such slots
// behind; a later task given the slot must not inherit their rules.
func (e *Enforcer) ClearSlotsExcept(keep map[uint32]bool) error {
	stale := func(slot uint32) bool { return slot != BaselineSlot && !keep[slot] }
	var errs []error
	errs = append(errs, deleteWhere(e.net.BridleNet4, func(k *netBridleNet4Key) bool { return stale(k.Slot) }))
	errs = append(errs, deleteWhere(e.net.BridleNet6, func(k *netBridleNet6Key) bool { return stale(k.Slot) }))
	errs = append(errs, deleteWhere(e.net.BridleExec, func(k *netBridleExecKey) bool { return stale(k.Slot) }))
	errs = append(errs, deleteWhere(e.net.BridleUnix, func(k *netBridleUnixKey) bool { return stale(k.Slot) }))
	errs = append(errs, deleteWhere(e.net.BridleListen, func(k *netBridleListenKey) bool { return stale(k.Slot) }))
	errs = append(errs, deleteWhere(e.net.BridleLearn4, func(k *netBridleLearn4Key) bool { return stale(k.Slot) }))
	errs = append(errs, deleteWhere(e.net.BridleLearn6, func(k *netBridleLearn6Key) bool { return stale(k.Slot) }))
	errs = append(errs, deleteWhere(e.net.BridleGrant4, func(k *netBridleLearn4Key) bool { return stale(k.Slot) }))
	errs = append(errs, deleteWhere(e.net.BridleGrant6, func(k *netBridleLearn6Key) bool { return stale(k.Slot) }))
	errs = append(errs, deleteWhere(e.net.BridleExgrant, func(k *netBridleExecKey) bool { return stale(k.Slot) }))
	for slot := uint32(1); slot < MaxSlots; slot++ {
		if stale(slot) {
			errs = append(errs, e.net.BridleTasks.Update(slot, &netBridleTask{}, ebpf.UpdateAny))
		}
	}
	return errors.Join(errs...)
}

func deleteWhere[K any](m *ebpf.Map, match func(*K) bool) error {
	var doomed []K
	var k K
	it := m.Iterate()
	var v []byte
	for it.Next(&k, &v) {
		if match(&k) {
			doomed = append(doomed, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("map %s: iterate: %w", m.String(), err)
	}
	for i := range doomed {
		if err := m.Delete(&doomed[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("map %s: delete: %w", m.String(), err)
		}
	}
	return nil
}

// Drops returns how many events the kernel could not queue because the ring
// buffer was full, summed over CPUs.
func (e *Enforcer) Drops() (uint64, error) {
	var per []uint64
	if err := e.net.BridleDrops.Lookup(uint32(0), &per); err != nil {
		return 0, fmt.Errorf("read drop counter: %w", err)
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n, nil
}

// TakeSuppressed returns how many events the kernel left out, over the
// event budget, for the task of generation in cgroup cgroupID, and forgets
// the count. Records carry the running total as they go; this is for what
// no record carried, once the task has ended.
func (e *Enforcer) TakeSuppressed(cgroupID uint64, generation uint32) (uint64, error) {
	k := netBridleBudgetKey{CgroupId: cgroupID, Generation: generation}
	var v netBridleBudget
	if err := e.net.BridleBudgets.Lookup(&k, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0, nil
		}
		return 0, fmt.Errorf("read event budget of cgroup %d: %w", cgroupID, err)
	}
	if err := e.net.BridleBudgets.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return 0, fmt.Errorf("forget event budget of cgroup %d: %w", cgroupID, err)
	}
	return v.Suppressed, nil
}
