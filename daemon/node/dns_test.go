package node

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/daemon/dns"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy/engine"
)

// The resolver asks the node which task sent a query the kernel
// attributed; a sub-agent's names are its own, within its parent's, and a
// task that ended answers for nothing.
func TestResolverLookup(t *testing.T) {
	tn := newTestNode(t, Options{})
	pw, _ := tn.workload(t, "r/parent")
	cw, ccg := tn.workload(t, "r/child")
	ctx := context.Background()
	parent, err := tn.Start(ctx, Request{Workload: pw, TTL: time.Hour,
		Grants: grants(t, "tcp:*.a.example:443", "tcp:b.example:443")})
	if err != nil {
		t.Fatal(err)
	}
	child, err := tn.Start(ctx, Request{Workload: cw, Parent: parent.ID,
		Grants: grants(t, "tcp:x.a.example:443", "tcp:c.example:443")})
	if err != nil {
		t.Fatal(err)
	}
	peer := func(task Task) dns.Peer {
		return dns.Peer{CgroupID: task.CgroupID, Slot: task.Slot, Generation: task.Generation}
	}
	a, ok := tn.Lookup(peer(child))
	if !ok || a.TaskID != child.ID || a.Workload != cw || !a.Ends.Equal(parent.Expires) {
		t.Fatalf("child's asker %+v, %v", a, ok)
	}
	for name, want := range map[string]bool{"x.a.example": true, "y.a.example": false, "b.example": false, "c.example": false} {
		if got := a.Names.PortsForName(name).Allowed(); got != want {
			t.Errorf("child may resolve %s: %v, want %v", name, got, want)
		}
	}
	if pa, _ := tn.Lookup(peer(parent)); !pa.Names.PortsForName("y.a.example").Allowed() {
		t.Error("the parent lost its wildcard")
	}
	if _, ok := tn.Lookup(dns.Peer{CgroupID: ccg, Slot: child.Slot, Generation: child.Generation + 7}); ok {
		t.Error("a generation not in force was looked up")
	}
	if _, err := tn.End(child.ID, "done"); err != nil {
		t.Fatal(err)
	}
	if _, ok := tn.Lookup(peer(child)); ok {
		t.Error("an ended task still answers")
	}
	if b, ok := tn.Lookup(dns.Peer{CgroupID: ccg, Slot: loader.BaselineSlot}); !ok || b.TaskID != "" || b.Names.PortsForName("b.example").Allowed() {
		t.Errorf("the baseline's asker %+v, %v", b, ok)
	}
}

// Workloads without a task share the baseline's slot: a baseline that
// names hosts is refused, the one in force stays, and nothing is written.
func TestBaselineNamesNoHosts(t *testing.T) {
	dir := t.TempDir()
	rego := "package bridle\n\nbaseline := {\"egress\": [{\"protocol\": \"tcp\", \"host\": \"api.example.com\", \"ports\": [443]}]}\n\nenvelope := {}\n"
	if err := os.WriteFile(filepath.Join(dir, "policy.rego"), []byte(rego), 0o644); err != nil {
		t.Fatal(err)
	}
	e := engine.NewEngine()
	if err := e.LoadDir(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	tn := newTestNode(t, Options{Engine: e, Roots: []string{"r"}})
	_, err := tn.SetBaseline(context.Background())
	if err == nil || !strings.Contains(err.Error(), "names are allowed per task") {
		t.Fatalf("a baseline naming a host: %v", err)
	}
	if got := tn.k.log(); len(got) != 0 {
		t.Fatalf("the refused baseline wrote %v", got)
	}
}
