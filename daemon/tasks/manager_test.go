package tasks

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
)

// recorder notes the order of the manager's kernel writes. Ordering is the
// manager's whole contract with the kernel (rules before binding, unbinding
// before deleting); whether the kernel then enforces is proven by the
// end-to-end tests against real programs.
type recorder struct {
	mu       sync.Mutex
	calls    []string
	fail     string            // calls starting with one of these ("|"-separated) fail
	bindings map[uint64]uint32 // what Bindings reads
	bindErr  error
}

func (r *recorder) note(s string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, s)
	for _, f := range strings.Split(r.fail, "|") {
		if f != "" && strings.HasPrefix(s, f) {
			return errors.New("injected failure")
		}
	}
	return nil
}

func (r *recorder) WriteRules(slot uint32, rs policy.RuleSet) error {
	return r.note(fmt.Sprintf("rules %d", slot))
}
func (r *recorder) SetTask(slot uint32, expires time.Time, gen uint32) error {
	return r.note(fmt.Sprintf("task %d", slot))
}
func (r *recorder) BindWorkload(cg uint64, slot uint32, _ loader.WorkloadMode) error {
	return r.note(fmt.Sprintf("bind %d %d", cg, slot))
}
func (r *recorder) UnbindWorkload(cg uint64) error { return r.note(fmt.Sprintf("unbind %d", cg)) }
func (r *recorder) ClearSlot(slot uint32) error    { return r.note(fmt.Sprintf("clear %d", slot)) }
func (r *recorder) Bindings() (map[uint64]uint32, error) {
	return r.bindings, r.bindErr
}
func (r *recorder) ClearSlotsExcept(keep map[uint32]bool) error {
	var slots []uint32
	for s := range keep {
		slots = append(slots, s)
	}
	slices.Sort(slots)
	return r.note(fmt.Sprintf("clear all but %v", slots))
}
func (r *recorder) DestroySockets(ids ...uint64) (loader.DestroyStats, error) {
	return loader.DestroyStats{}, r.note(fmt.Sprintf("destroy %v", ids))
}

func (r *recorder) ShutdownUnix(id uint64, _ []loader.UnixConn) (loader.UnixStats, error) {
	return loader.UnixStats{}, r.note(fmt.Sprintf("unix %d", id))
}

func (r *recorder) Learn(slot, gen uint32, addrs []loader.LearnedAddr) error {
	return r.note(fmt.Sprintf("learn %d/%d %d", slot, gen, len(addrs)))
}

func (r *recorder) Unlearn(slot uint32, addrs []loader.LearnedAddr) error {
	return r.note(fmt.Sprintf("unlearn %d %d", slot, len(addrs)))
}

func (r *recorder) GrantAddrs(slot, gen uint32, addrs []loader.GrantedAddr) error {
	return r.note(fmt.Sprintf("grant %d/%d %d", slot, gen, len(addrs)))
}

func (r *recorder) RevokeAddrs(slot uint32, addrs []loader.GrantedAddr) error {
	return r.note(fmt.Sprintf("revoke %d %d", slot, len(addrs)))
}

func (r *recorder) GrantExec(slot, gen uint32, g []loader.GrantedExec) error {
	return r.note(fmt.Sprintf("grant exec %d/%d %d", slot, gen, len(g)))
}

func (r *recorder) RevokeExec(slot uint32, g []loader.GrantedExec) error {
	return r.note(fmt.Sprintf("revoke exec %d %d", slot, len(g)))
}

func (r *recorder) AbortTo(id uint64, proto policy.Protocol, addr netip.Addr, ports []policy.PortRange) (loader.DestroyStats, error) {
	return loader.DestroyStats{}, r.note(fmt.Sprintf("abort %d %s %s %v", id, proto, addr, ports))
}

func (r *recorder) log() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.calls, "; ")
}

func TestStartWritesRulesBeforeBinding(t *testing.T) {
	k := &recorder{}
	m := NewManager(k, nil)
	if _, err := m.Start("t-1", StartRequest{CgroupID: 7}); err != nil {
		t.Fatal(err)
	}
	if got, want := k.log(), "rules 1; task 1; bind 7 1"; got != want {
		t.Fatalf("start: %s, want %s", got, want)
	}
	k.calls = nil
	if err := m.End("t-1", "done"); err != nil {
		t.Fatal(err)
	}
	m.Wait() // the rules are deleted after End returns
	if got, want := k.log(), "bind 7 0; destroy [7]; unix 7; clear 1"; got != want {
		t.Fatalf("end: %s, want %s", got, want)
	}
}

func TestOneTaskPerWorkload(t *testing.T) {
	m := NewManager(&recorder{}, nil)
	if _, err := m.Start("t-1", StartRequest{CgroupID: 7}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Start("t-2", StartRequest{CgroupID: 7}); !errors.Is(err, ErrWorkloadBusy) {
		t.Fatalf("second task on one workload: %v", err)
	}
	b, err := m.Start("t-3", StartRequest{CgroupID: 8})
	if err != nil || b.Slot != 2 {
		t.Fatalf("other workload: slot %d, %v", b.Slot, err)
	}
	if err := m.End("t-1", "done"); err != nil {
		t.Fatal(err)
	}
	m.Wait() // a slot is reused once its rules are deleted
	c, err := m.Start("t-4", StartRequest{CgroupID: 7})
	if err != nil || c.Slot != 1 || c.Generation <= b.Generation {
		t.Fatalf("slot reuse: slot %d gen %d, %v", c.Slot, c.Generation, err)
	}
}

func TestFailedBindLeavesNoTask(t *testing.T) {
	k := &recorder{fail: "bind"}
	m := NewManager(k, nil)
	if _, err := m.Start("t-1", StartRequest{CgroupID: 7}); err == nil {
		t.Fatal("start succeeded with a failing bind")
	}
	if len(m.List()) != 0 || !strings.HasSuffix(k.log(), "clear 1") {
		t.Fatalf("tasks %v, calls %s", m.List(), k.log())
	}
}

func TestExpiryEndsTheTask(t *testing.T) {
	ended := make(chan string, 1)
	m := NewManager(&recorder{}, func(e End) { ended <- e.Task.ID + " " + e.Reason })
	if _, err := m.Start("t-1", StartRequest{CgroupID: 7, TTL: 20 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-ended:
		if got != "t-1 expired" {
			t.Fatalf("ended %q", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("task did not expire")
	}
	if _, ok := m.Get("t-1"); ok {
		t.Fatal("expired task still listed")
	}
}

// An ended task still names its generation's late events for a while, and
// its workload counts as governed until its end is reported.
func TestEndedTaskStillNamesItsEvents(t *testing.T) {
	var m *Manager
	governedAtEnd := false
	m = NewManager(&recorder{}, func(e End) { governedAtEnd = m.Governed(e.Task.CgroupID) })
	tk, err := m.Start("t-1", StartRequest{CgroupID: 7, PolicyRevision: "rev", Parent: "t-0"})
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := m.ByGeneration(tk.Generation); !ok || got.ID != "t-1" || got.PolicyRevision != "rev" || got.Parent != "t-0" {
		t.Fatalf("in force: %+v %v", got, ok)
	}
	if err := m.End("t-1", "done"); err != nil {
		t.Fatal(err)
	}
	if !governedAtEnd {
		t.Fatal("workload counted as without a task before its end was reported")
	}
	if m.Governed(7) {
		t.Fatal("workload still governed after its task's end was reported")
	}
	if got, ok := m.ByGeneration(tk.Generation); !ok || got.ID != "t-1" {
		t.Fatalf("ended: %+v %v", got, ok)
	}
	if _, ok := m.Get("t-1"); ok {
		t.Fatal("ended task still in force")
	}
}

func TestChildrenAndBaselineWrites(t *testing.T) {
	k := &recorder{}
	m := NewManager(k, nil)
	for _, r := range []struct{ id, parent string }{{"t-p", ""}, {"t-b", "t-p"}, {"t-a", "t-p"}, {"t-x", "t-b"}} {
		if _, err := m.Start(r.id, StartRequest{CgroupID: uint64(len(r.id) + len(m.List())), Parent: r.parent}); err != nil {
			t.Fatal(err)
		}
	}
	if got := m.Children("t-p"); !slices.Equal(got, []string{"t-a", "t-b"}) {
		t.Fatalf("children %v", got)
	}
	k.calls = nil
	if err := m.SetBaseline(policy.RuleSet{}, true); err != nil {
		t.Fatal(err)
	}
	if err := m.SetBaseline(policy.RuleSet{}, false); err != nil {
		t.Fatal(err)
	}
	if err := m.BindRoot(3); err != nil {
		t.Fatal(err)
	}
	if got, want := k.log(), "clear 0; rules 0; rules 0; bind 3 0"; got != want {
		t.Fatalf("baseline writes %q, want %q", got, want)
	}
}

// A start that fails after writing rules, in a slot that then cannot be
// cleared, must not hand that slot to the next task: it could inherit the
// leftover rules.
func TestUnclearedSlotIsNotReused(t *testing.T) {
	k := &recorder{fail: "bind|clear"}
	m := NewManager(k, nil)
	if _, err := m.Start("t-1", StartRequest{CgroupID: 7}); err == nil {
		t.Fatal("start succeeded with a failing bind")
	}
	if m.StuckSlots() != 1 {
		t.Fatalf("stuck slots %d, want 1", m.StuckSlots())
	}
	k.mu.Lock()
	k.fail = ""
	k.mu.Unlock()
	task, err := m.Start("t-2", StartRequest{CgroupID: 8})
	if err != nil {
		t.Fatal(err)
	}
	if task.Slot == 1 {
		t.Fatalf("the next task got slot 1, which may still hold t-1's rules (calls %s)", k.log())
	}
}

// An expiry whose rebind fails is tried again until it succeeds.
func TestFailedExpiryIsRetried(t *testing.T) {
	k := &recorder{}
	ended := make(chan string, 1)
	m := NewManager(k, func(e End) { ended <- e.Task.ID + " " + e.Reason })
	if _, err := m.Start("t-1", StartRequest{CgroupID: 7, TTL: 20 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	k.mu.Lock()
	k.fail = "bind 7 0" // the return to the baseline fails at first
	k.mu.Unlock()
	time.Sleep(200 * time.Millisecond)
	if _, ok := m.Get("t-1"); !ok {
		t.Fatal("the task was dropped although its end failed")
	}
	k.mu.Lock()
	k.fail = ""
	k.mu.Unlock()
	select {
	case got := <-ended:
		if got != "t-1 expired" {
			t.Fatalf("ended %q", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the failed expiry was not tried again (calls %s)", k.log())
	}
}

func TestLearnOnlyForTasksInForce(t *testing.T) {
	k := &recorder{}
	m := NewManager(k, nil)
	task, err := m.Start("t-1", StartRequest{CgroupID: 7})
	if err != nil {
		t.Fatal(err)
	}
	addrs := []loader.LearnedAddr{{Protocol: policy.ProtoTCP}}
	if err := m.Learn(task.Slot, task.Generation, addrs); err != nil {
		t.Fatalf("learn for a task in force: %v", err)
	}
	for _, c := range []struct {
		name      string
		slot, gen uint32
	}{
		{"another slot", task.Slot + 1, task.Generation},
		{"an older generation", task.Slot, task.Generation - 1},
		{"the baseline at a task's generation", loader.BaselineSlot, task.Generation},
		{"the baseline", loader.BaselineSlot, 0},
	} {
		if err := m.Learn(c.slot, c.gen, addrs); !errors.Is(err, ErrNotInForce) {
			t.Errorf("%s: %v, want ErrNotInForce", c.name, err)
		}
	}
	if err := m.End("t-1", "done"); err != nil {
		t.Fatal(err)
	}
	m.Wait()
	if err := m.Learn(task.Slot, task.Generation, addrs); !errors.Is(err, ErrNotInForce) {
		t.Errorf("learn after the end: %v, want ErrNotInForce", err)
	}
	if got := strings.Count(k.log(), "learn "); got != 1 {
		t.Errorf("%d kernel writes, want 1 (the task in force): %s", got, k.log())
	}
}

// Grants, their revocation and the abort of their connections reach the
// kernel only for the task in force at that slot and generation: an ended
// task's slot may be cleared or given to another task, whose grants and
// connections are not the ended one's to change.
func TestGrantsOnlyForTasksInForce(t *testing.T) {
	k := &recorder{}
	m := NewManager(k, nil)
	task, err := m.Start("t-1", StartRequest{CgroupID: 7})
	if err != nil {
		t.Fatal(err)
	}
	peer := netip.MustParseAddr("192.0.2.7")
	addrs := []loader.GrantedAddr{{Protocol: policy.ProtoTCP, Addr: peer}}
	bins := []loader.GrantedExec{{Dev: 1, Ino: 2}}
	ports := []policy.PortRange{{First: 443, Last: 443}}
	calls := func(slot, gen uint32) []error {
		errs := []error{
			m.GrantAddrs(slot, gen, addrs),
			m.RevokeAddrs(slot, gen, addrs),
			m.GrantExec(slot, gen, bins),
			m.RevokeExec(slot, gen, bins),
		}
		_, err := m.AbortTo(slot, gen, policy.ProtoTCP, peer, ports)
		return append(errs, err)
	}
	k.calls = nil
	for i, err := range calls(task.Slot, task.Generation) {
		if err != nil {
			t.Errorf("call %d for the task in force: %v", i, err)
		}
	}
	want := fmt.Sprintf("grant %[1]d/%[2]d 1; revoke %[1]d 1; grant exec %[1]d/%[2]d 1; revoke exec %[1]d 1; abort 7 tcp 192.0.2.7 [443]",
		task.Slot, task.Generation)
	if got := k.log(); got != want {
		t.Errorf("kernel calls %q, want %q", got, want)
	}
	for _, c := range []struct {
		name      string
		slot, gen uint32
	}{
		{"another slot", task.Slot + 1, task.Generation},
		{"an older generation", task.Slot, task.Generation - 1},
		{"the baseline", loader.BaselineSlot, 0},
	} {
		for i, err := range calls(c.slot, c.gen) {
			if !errors.Is(err, ErrNotInForce) {
				t.Errorf("%s, call %d: %v, want ErrNotInForce", c.name, i, err)
			}
		}
	}
	if err := m.End("t-1", "done"); err != nil {
		t.Fatal(err)
	}
	m.Wait()
	k.calls = nil
	for i, err := range calls(task.Slot, task.Generation) {
		if !errors.Is(err, ErrNotInForce) {
			t.Errorf("after the end, call %d: %v, want ErrNotInForce", i, err)
		}
	}
	if got := k.log(); got != "" {
		t.Errorf("kernel calls for an ended task: %s", got)
	}

	// A kernel failure is reported, wrapped.
	task, err = m.Start("t-2", StartRequest{CgroupID: 8})
	if err != nil {
		t.Fatal(err)
	}
	k.fail = "grant"
	if err := m.GrantAddrs(task.Slot, task.Generation, addrs); err == nil || !strings.Contains(err.Error(), "injected failure") {
		t.Errorf("grant with a failing kernel: %v", err)
	}
}

// One task cannot fill the learned maps every task shares: past
// MaxLearned it must wait for its own entries to expire.
func TestLearnedAddressesAreBoundedPerTask(t *testing.T) {
	k := &recorder{}
	m := NewManager(k, nil)
	task, err := m.Start("t-1", StartRequest{CgroupID: 7})
	if err != nil {
		t.Fatal(err)
	}
	addrs := func(first, n int, expires time.Time) []loader.LearnedAddr {
		var out []loader.LearnedAddr
		for i := first; i < first+n; i++ {
			a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
			out = append(out, loader.LearnedAddr{Protocol: policy.ProtoTCP, Addr: a, Expires: expires})
		}
		return out
	}
	soon, later := time.Now().Add(50*time.Millisecond), time.Now().Add(time.Hour)
	if err := m.Learn(task.Slot, task.Generation, addrs(0, MaxLearned/2, soon)); err != nil {
		t.Fatal(err)
	}
	if err := m.Learn(task.Slot, task.Generation, addrs(MaxLearned/2, MaxLearned/2, later)); err != nil {
		t.Fatal(err)
	}
	// Full: an address it holds may be learned again, a new one may not.
	if err := m.Learn(task.Slot, task.Generation, addrs(0, 1, later)); err != nil {
		t.Errorf("learning a held address again: %v", err)
	}
	if err := m.Learn(task.Slot, task.Generation, addrs(MaxLearned, 1, later)); !errors.Is(err, ErrLearnedFull) {
		t.Fatalf("past the bound: %v, want ErrLearnedFull", err)
	}
	// Once the first half expired, it makes room (all but the one
	// learned again).
	time.Sleep(60 * time.Millisecond)
	if err := m.Learn(task.Slot, task.Generation, addrs(MaxLearned, MaxLearned/2-1, later)); err != nil {
		t.Fatalf("after the expiry: %v", err)
	}
	if !strings.Contains(k.log(), fmt.Sprintf("unlearn %d %d", task.Slot, MaxLearned/2-1)) {
		t.Errorf("the expired entries were not deleted from the kernel: %s", k.log())
	}
	// Another task has its own bound.
	other, err := m.Start("t-2", StartRequest{CgroupID: 8})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Learn(other.Slot, other.Generation, addrs(0, MaxLearned, later)); err != nil {
		t.Errorf("another task: %v", err)
	}
}

// The addresses a task learned whose life ends at a given time: those a
// name grant's end must reset the connections of.
func TestLearnedEndingAt(t *testing.T) {
	m := NewManager(&recorder{}, nil)
	task, err := m.Start("t-1", StartRequest{CgroupID: 7})
	if err != nil {
		t.Fatal(err)
	}
	end := time.Now().Add(time.Minute)
	a, b := netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("192.0.2.8")
	if err := m.Learn(task.Slot, task.Generation, []loader.LearnedAddr{
		{Protocol: policy.ProtoTCP, Addr: a, Expires: end},
		{Protocol: policy.ProtoTCP, Addr: b, Expires: end.Add(time.Hour)},
	}); err != nil {
		t.Fatal(err)
	}
	got := m.LearnedEndingAt(task.Slot, task.Generation, end)
	if len(got) != 1 || got[0].Addr != a {
		t.Fatalf("learned ending at the grant's end: %+v, want only %s", got, a)
	}
	if got := m.LearnedEndingAt(task.Slot, task.Generation+1, end); len(got) != 0 {
		t.Fatalf("another generation's: %+v", got)
	}
}
