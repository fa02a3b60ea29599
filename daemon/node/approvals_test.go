package node

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/daemon/approvals"
	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/dns"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
	"github.com/bridle-sh/bridle/policy/engine"
)

// approvablePolicy gives a task 10.0.0.0/8 and lets it ask for
// 192.0.2.0/24 and 198.51.100.0/24 on 443 and for *.github.com; a
// sub-agent asks for 192.0.2.0/24 and 203.0.113.0/24, the second of which
// its parent could not have had.
const approvablePolicy = `package bridle

envelope := {"egress": [{"protocol": "tcp", "cidr": "10.0.0.0/8", "ports": [443]}]}

github := {"protocol": "tcp", "host": "*.github.com", "ports": [443], "max_ttl": "10m"}

approvable := {"egress": [
	{"protocol": "tcp", "cidr": "192.0.2.0/24", "ports": [443]},
	{"protocol": "tcp", "cidr": "198.51.100.0/24", "ports": [443]},
	github,
]} if not input.parent

approvable := {"egress": [
	{"protocol": "tcp", "cidr": "192.0.2.0/24", "ports": [443]},
	{"protocol": "tcp", "cidr": "203.0.113.0/24", "ports": [443]},
]} if input.parent
`

func newApprovalsNode(t *testing.T) (*testNode, *approvals.Manager) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "policy.rego"), []byte(approvablePolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	e := engine.NewEngine()
	if err := e.LoadDir(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	tn := newTestNode(t, Options{Engine: e})
	m, err := approvals.New(approvals.Options{
		Kernel: tn.Tasks(), Records: tn.Record,
		IsAdmin: func(a approvals.Approver) bool { return a.UID == 0 },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	tn.UseApprovals(m)
	return tn, m
}

// refuse makes the kernel's refusal of a connect by the task's workload
// into a record, as the event reader does.
func (tn *testNode) refuse(tk Task, addr string, port uint16) audit.Record {
	ev := loader.Event{CgroupID: tk.CgroupID, Slot: tk.Slot, Generation: tk.Generation, Action: bpf.ActionConnect,
		Protocol: bpf.ProtocolTCP, Addr: netip.MustParseAddr(addr), Port: port, Verdict: bpf.VerdictDeny, PID: 9, Comm: "git"}
	rec := tn.Enrich(ev)
	tn.refusedEvent(&rec, ev)
	return rec
}

func TestRefusalOfATaskOpensARequest(t *testing.T) {
	tn, m := newApprovalsNode(t)
	w, _ := tn.workload(t, "r/agent")
	tk, err := tn.Start(context.Background(), Request{Workload: w, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	rec := tn.refuse(tk, "192.0.2.7", 443)
	if rec.Request == "" {
		t.Fatal("the refusal's record names no request")
	}
	r, ok := m.Get(rec.Request)
	if !ok || r.Task != tk.ID || r.State != approvals.Pending || r.Comm != "git" {
		t.Fatalf("request %+v", r)
	}
	if rec := tn.refuse(tk, "203.0.113.1", 443); rec.Request != "" {
		t.Fatal("a target no approvable entry covers opened a request")
	}
	if _, err := m.Approve(r.ID, approvals.Approver{UID: 0, Auth: engine.AuthPeerCred}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if log := tn.k.log(); !strings.HasPrefix(log[len(log)-1], fmt.Sprintf("grant %d/%d [", tk.Slot, tk.Generation)) || !strings.Contains(log[len(log)-1], "192.0.2.7") {
		t.Fatalf("kernel writes %v, want the grant last", log)
	}
	if _, err := tn.End(tk.ID, "done"); err != nil {
		t.Fatal(err)
	}
	if got := m.GrantedNames(tk.ID); len(got) != 0 {
		t.Fatalf("an ended task keeps granted names %v", got)
	}
}

func TestSubAgentAsksOnlyForWhatItsParentCovers(t *testing.T) {
	tn, m := newApprovalsNode(t)
	pw, _ := tn.workload(t, "r/parent")
	cw, _ := tn.workload(t, "r/child")
	ctx := context.Background()
	parent, err := tn.Start(ctx, Request{Workload: pw, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	child, err := tn.Start(ctx, Request{Workload: cw, Parent: parent.ID})
	if err != nil {
		t.Fatal(err)
	}
	a, ok := m.Approvable(child.ID)
	if !ok || len(a.Entries) != 1 || a.Entries[0].Egress.Prefix != netip.MustParsePrefix("192.0.2.0/24") {
		t.Fatalf("sub-agent's approvable set %+v, want 192.0.2.0/24 alone", a.Entries)
	}
	if rec := tn.refuse(child, "203.0.113.1", 443); rec.Request != "" {
		t.Fatal("a sub-agent asked for what its parent could not have")
	}
	rec := tn.refuse(child, "192.0.2.7", 443)
	if rec.Request == "" {
		t.Fatal("a sub-agent's refusal within its parent's approvable set opened no request")
	}
	// The parent's end ends the child's, and with it the request.
	if _, err := tn.End(parent.ID, "done"); err != nil {
		t.Fatal(err)
	}
	if r, _ := m.Get(rec.Request); r.State != approvals.Expired {
		t.Fatalf("request of an ended sub-agent is %s", r.State)
	}
}

func TestApprovedNameReachesTheResolver(t *testing.T) {
	tn, m := newApprovalsNode(t)
	w, id := tn.workload(t, "r/agent")
	tk, err := tn.Start(context.Background(), Request{Workload: w, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	peer := dns.Peer{CgroupID: id, Slot: tk.Slot, Generation: tk.Generation}
	asker, ok := tn.Lookup(peer)
	if !ok || asker.Names.PortsForName("api.github.com").Allowed() {
		t.Fatal("a name only approvable is allowed before any answer")
	}
	rec := audit.Record{Task: tk.ID, Action: bpf.ActionDNS, Verdict: bpf.VerdictDeny, Reason: audit.DNSNotAllowed, Name: "api.github.com"}
	tn.refusedName(&rec)
	if rec.Request == "" {
		t.Fatal("the resolver's refusal opened no request")
	}
	if _, err := m.Approve(rec.Request, approvals.Approver{UID: 0, Auth: engine.AuthPeerCred}, time.Hour); err != nil {
		t.Fatal(err)
	}
	asker, _ = tn.Lookup(peer)
	p := asker.Names.PortsForName("api.github.com")
	if !p.Allowed() || len(p.TCP) != 1 || p.TCP[0] != (policy.PortRange{First: 443, Last: 443}) {
		t.Fatalf("approved name's ports %+v, want tcp 443", p)
	}
	if asker.Names.PortsForName("www.github.com").Allowed() {
		t.Fatal("the approval of one name allowed another under the same pattern")
	}
	// max_ttl 10m caps the grant, and what the resolver learns ends with it.
	if d := time.Until(asker.Ends); d > 10*time.Minute || d < 9*time.Minute {
		t.Fatalf("answers end in %v, want the grant's 10m", d)
	}
}

func itoa(n uint32) string { return fmt.Sprint(n) }
