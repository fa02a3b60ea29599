package loader

import (
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"testing"
)

// AttachedAt sees the programs attached to a cgroup, and notices when
// someone detaches them.
func TestAttachedAtNoticesDetachedPrograms(t *testing.T) {
	e := testEnforcer(t)
	dir, id := testCgroup(t)
	missing, err := e.AttachedAt(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) != len(e.cgroupHooks()) {
		t.Fatalf("before attaching: missing %v, want every hook", missing)
	}
	if err := e.AttachCgroup(dir); err != nil {
		t.Fatal(err)
	}
	if missing, err := e.AttachedAt(dir); err != nil || len(missing) != 0 {
		t.Fatalf("after attaching: missing %v, %v", missing, err)
	}
	// Detach one link, as a root user outside Bridle could.
	var detached bool
	for _, l := range e.cgLinks {
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		if info.Program == mustProgramID(t, e.net.BridleConnect4) {
			if err := os.Remove(pinPath(e.pinDir, fmt.Sprintf("cg%d_connect4", id))); err != nil {
				t.Fatal(err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			detached = true
		}
	}
	if !detached {
		t.Fatal("no connect4 link found")
	}
	// The kernel drops a link whose pin is removed after an RCU grace
	// period, so the detach shows a moment later.
	deadline := time.Now().Add(5 * time.Second)
	for {
		missing, err = e.AttachedAt(dir)
		if err == nil && slices.Equal(missing, []string{"connect4"}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after detaching connect4: missing %v, %v", missing, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func mustProgramID(t *testing.T, p *ebpf.Program) ebpf.ProgramID {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("program id unknown")
	}
	return id
}
