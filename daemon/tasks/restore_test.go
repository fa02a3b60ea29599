package tasks

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/policy"
)

// workloads answers Restored.CgroupID from a table: a workload missing
// from it is gone.
func workloads(ids map[string]uint64) func(string) (uint64, error) {
	return func(w string) (uint64, error) {
		id, ok := ids[w]
		if !ok {
			return 0, fmt.Errorf("cgroup %s: gone", w)
		}
		return id, nil
	}
}

// The crash-recovery rules: the kernel is the truth, the stored tasks
// explain it, and whatever they cannot explain is revoked.
func TestRestoreRevokesWhatTheStoreCannotExplain(t *testing.T) {
	future, past := time.Now().Add(time.Hour), time.Now().Add(-time.Minute)
	stored := []Task{
		{ID: "t-gone", Workload: "/r/gone", CgroupID: 10, Slot: 1, Generation: 1},
		{ID: "t-moved", Workload: "/r/moved", CgroupID: 11, Slot: 2, Generation: 2},
		{ID: "t-unbound", Workload: "/r/unbound", CgroupID: 12, Slot: 3, Generation: 3},
		{ID: "t-live", Workload: "/r/live", CgroupID: 13, Slot: 4, Generation: 40, Expires: future, PolicyRevision: "rev-a"},
		{ID: "t-expired", Workload: "/r/expired", CgroupID: 14, Slot: 5, Generation: 5, Expires: past},
		{ID: "t-clash", Workload: "/r/clash", CgroupID: 15, Slot: 4, Generation: 6},
	}
	k := &recorder{bindings: map[uint64]uint32{
		1:  0, // a root on the baseline: left alone
		11: 2,
		12: 0, // its end was cut short after the unbind
		13: 4,
		14: 5,
		15: 4,
		99: 7, // bound, but no stored task explains it
	}}
	m := NewManager(k, nil)
	expired := m.Restore(stored, Restored{
		CgroupID: workloads(map[string]uint64{
			"/r/moved": 111, "/r/unbound": 12, "/r/live": 13, "/r/expired": 14, "/r/clash": 15,
		}),
		Grants: func(id string) (policy.RuleSet, error) {
			if id == "t-live" {
				return policy.RuleSet{}, nil
			}
			return policy.RuleSet{}, errors.New("no file")
		},
	})
	if !slices.Equal(expired, []string{"t-expired"}) {
		t.Fatalf("expired %v", expired)
	}
	calls := k.calls
	for _, want := range []string{
		"unbind 10", "unbind 11", // workload gone, or another cgroup now
		"destroy [12]", "unix 12", // finish the end that was cut short
		"bind 15 0", // cannot be adopted (its slot is taken): revoked
		"bind 99 0", // unexplained binding back to the baseline
		"clear all but [4 5]",
	} {
		if !slices.Contains(calls, want) {
			t.Errorf("missing %q in %v", want, calls)
		}
	}
	// Every binding to a task slot that no adopted task holds goes back
	// to the baseline, whatever was done for its stored task before:
	// 11 and 15 a second time.
	if len(calls) != 9 || !slices.Contains(calls, "bind 11 0") {
		t.Errorf("kernel writes %v, want the seven above, bind 11 0 and bind 15 0 again", calls)
	}
	if slices.Index(calls, "bind 99 0") > slices.Index(calls, "clear all but [4 5]") {
		t.Errorf("slots cleared before the unexplained binding was revoked: %v", calls)
	}
	var ids []string
	for _, tk := range m.List() {
		ids = append(ids, tk.ID)
	}
	slices.Sort(ids)
	if !slices.Equal(ids, []string{"t-expired", "t-live"}) {
		t.Fatalf("adopted %v", ids)
	}
	live, _ := m.Get("t-live")
	if live.Grants == nil || live.PolicyRevision != "rev-a" {
		t.Fatalf("adopted task lost its rules or revision: %+v", live)
	}
	if ex, _ := m.Get("t-expired"); ex.Grants != nil {
		t.Fatal("a task restored without its rules file has rules")
	}
	if got, ok := m.ByGeneration(40); !ok || got.ID != "t-live" {
		t.Fatalf("generation 40 names %+v %v", got, ok)
	}
	if !m.Governed(13) || m.Governed(12) {
		t.Fatal("governed workloads wrong after restore")
	}
	// Slots and generations of adopted tasks are never handed out again.
	nt, err := m.Start("t-new", StartRequest{CgroupID: 20})
	if err != nil {
		t.Fatal(err)
	}
	if nt.Slot == 4 || nt.Slot == 5 || nt.Generation <= 40 {
		t.Fatalf("new task got slot %d generation %d", nt.Slot, nt.Generation)
	}
}

// Without the kernel's bindings nothing can be checked: no stored task is
// taken over, and every slot is cleared.
func TestRestoreWithoutBindingsTakesOverNothing(t *testing.T) {
	k := &recorder{bindErr: errors.New("injected")}
	m := NewManager(k, nil)
	stored := []Task{{ID: "t-1", Workload: "/r/a", CgroupID: 7, Slot: 1, Generation: 1}}
	if exp := m.Restore(stored, Restored{CgroupID: workloads(map[string]uint64{"/r/a": 7})}); len(exp) != 0 {
		t.Fatalf("expired %v", exp)
	}
	if got, want := k.log(), "destroy [7]; unix 7; clear all but []"; got != want {
		t.Fatalf("kernel writes %q, want %q", got, want)
	}
	if len(m.List()) != 0 {
		t.Fatalf("took over %v", m.List())
	}
}

// An adopted task writes nothing to the kernel, and its expiry is re-armed.
func TestRestoredTaskExpires(t *testing.T) {
	k := &recorder{bindings: map[uint64]uint32{7: 1}}
	ended := make(chan End, 1)
	m := NewManager(k, func(e End) { ended <- e })
	old := Task{ID: "t-old", Workload: "/r/w", CgroupID: 7, Slot: 1, Generation: 41, Expires: time.Now().Add(200 * time.Millisecond)}
	if exp := m.Restore([]Task{old}, Restored{CgroupID: workloads(map[string]uint64{"/r/w": 7})}); len(exp) != 0 {
		t.Fatalf("expired %v", exp)
	}
	if got := k.log(); got != "clear all but [1]" {
		t.Fatalf("adopt wrote to the kernel: %s", got)
	}
	select {
	case e := <-ended:
		if e.Task.ID != "t-old" || e.Reason != "expired" {
			t.Fatalf("ended %+v", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("adopted task never expired")
	}
}
