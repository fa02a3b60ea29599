package tasks

import (
	"testing"
	"time"

	"github.com/bridle-sh/bridle/policy"
)

// Adopting writes nothing to the kernel, keeps the slot and generation
// taken, and re-arms the expiry.
func TestAdoptTakesOverWithoutWriting(t *testing.T) {
	r := &recorder{}
	ended := make(chan End, 1)
	m := NewManager(r, func(e End) { ended <- e })
	old := Task{ID: "t-old", Workload: "/r/w", CgroupID: 7, Slot: 1, Generation: 41, Expires: time.Now().Add(200 * time.Millisecond)}
	if err := m.Adopt(old); err != nil {
		t.Fatal(err)
	}
	if got := r.log(); got != "" {
		t.Fatalf("adopt wrote to the kernel: %s", got)
	}
	if err := m.Adopt(Task{ID: "t-dup", CgroupID: 8, Slot: 1}); err == nil {
		t.Fatal("a second task adopted into a used slot")
	}
	if err := m.Adopt(Task{ID: "t-busy", CgroupID: 7, Slot: 2}); err == nil {
		t.Fatal("a second task adopted on a busy workload")
	}
	nt, err := m.Start("t-new", StartRequest{Workload: "/r/x", CgroupID: 9, Rules: policy.RuleSet{}})
	if err != nil {
		t.Fatal(err)
	}
	if nt.Slot == 1 || nt.Generation <= 41 {
		t.Fatalf("new task reuses slot %d or generation %d", nt.Slot, nt.Generation)
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
