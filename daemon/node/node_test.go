package node

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/store"
	"github.com/bridle-sh/bridle/daemon/tasks"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
	"github.com/bridle-sh/bridle/policy/engine"
)

// These tests run without root: the kernel is a recorder of the writes a
// node makes through its task manager, and workloads are directories of a
// temporary tree (a cgroup's id is its directory's inode, there as in
// cgroupfs). That the kernel enforces what is written is proven by the
// end-to-end tests against real programs.

// fakeKernel notes the kernel writes in order.
type fakeKernel struct {
	mu       sync.Mutex
	calls    []string
	bindings map[uint64]uint32
	peer     *loader.DNSPeer // what DNSPeer answers
}

func (k *fakeKernel) note(format string, args ...any) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls = append(k.calls, fmt.Sprintf(format, args...))
	return nil
}

func (k *fakeKernel) log() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.calls)
}

func (k *fakeKernel) reset() {
	k.mu.Lock()
	k.calls = nil
	k.mu.Unlock()
}

func (k *fakeKernel) WriteRules(slot uint32, rs policy.RuleSet) error {
	return k.note("rules %d (%d)", slot, rs.Count())
}
func (k *fakeKernel) SetTask(slot uint32, _ time.Time, gen uint32) error {
	return k.note("task %d", slot)
}
func (k *fakeKernel) BindWorkload(cg uint64, slot uint32, _ loader.WorkloadMode) error {
	return k.note("bind %d %d", cg, slot)
}
func (k *fakeKernel) UnbindWorkload(cg uint64) error { return k.note("unbind %d", cg) }
func (k *fakeKernel) ClearSlot(slot uint32) error    { return k.note("clear %d", slot) }
func (k *fakeKernel) DestroySockets(ids ...uint64) (loader.DestroyStats, error) {
	return loader.DestroyStats{}, k.note("destroy %v", ids)
}
func (k *fakeKernel) ShutdownUnix(id uint64, _ []loader.UnixConn) (loader.UnixStats, error) {
	return loader.UnixStats{}, k.note("unix %d", id)
}
func (k *fakeKernel) Bindings() (map[uint64]uint32, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.bindings, nil
}
func (k *fakeKernel) ClearSlotsExcept(keep map[uint32]bool) error {
	var slots []uint32
	for s := range keep {
		slots = append(slots, s)
	}
	slices.Sort(slots)
	return k.note("clear all but %v", slots)
}
func (k *fakeKernel) Features() loader.Features { return loader.Features{} }
func (k *fakeKernel) UnixConnections(uint64) ([]loader.UnixConn, error) {
	return nil, nil
}
func (k *fakeKernel) TakeSuppressed(uint64, uint32) (uint64, error) { return 0, nil }
func (k *fakeKernel) AttachCgroup(path string) error                { return k.note("attach %s", path) }
func (k *fakeKernel) ForgetCgroup(id uint64) error                  { return k.note("forget %d", id) }
func (k *fakeKernel) Learn(slot, gen uint32, addrs []loader.LearnedAddr) error {
	return k.note("learn %d/%d %v", slot, gen, addrs)
}
func (k *fakeKernel) Unlearn(slot uint32, addrs []loader.LearnedAddr) error {
	return k.note("unlearn %d %v", slot, addrs)
}
func (k *fakeKernel) GrantAddrs(slot, gen uint32, addrs []loader.GrantedAddr) error {
	return k.note("grant %d/%d %v", slot, gen, addrs)
}
func (k *fakeKernel) RevokeAddrs(slot uint32, addrs []loader.GrantedAddr) error {
	return k.note("revoke %d %v", slot, addrs)
}
func (k *fakeKernel) GrantExec(slot, gen uint32, g []loader.GrantedExec) error {
	return k.note("grant exec %d/%d %v", slot, gen, g)
}
func (k *fakeKernel) RevokeExec(slot uint32, g []loader.GrantedExec) error {
	return k.note("revoke exec %d %v", slot, g)
}
func (k *fakeKernel) AbortTo(id uint64, proto policy.Protocol, addr netip.Addr, ports []policy.PortRange) (loader.DestroyStats, error) {
	return loader.DestroyStats{}, k.note("abort %d %s %s %v", id, proto, addr, ports)
}
func (k *fakeKernel) SetResolver(v4, v6 netip.AddrPort) error {
	return k.note("resolver %s %s", v4, v6)
}

// DNSPeer attributes every query to the workload the test named.
func (k *fakeKernel) DNSPeer(policy.Protocol, netip.AddrPort) (loader.DNSPeer, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.peer == nil {
		return loader.DNSPeer{}, loader.ErrNoPeer
	}
	return *k.peer, nil
}

// testNode is a node over a fake kernel and a temporary cgroup tree.
type testNode struct {
	*Node
	k    *fakeKernel
	root string // the "cgroup v2 mount"

	mu      sync.Mutex
	records []audit.Record
}

func newTestNode(t *testing.T, opt Options) *testNode {
	t.Helper()
	tn := &testNode{k: &fakeKernel{}, root: t.TempDir()}
	opt.Kernel, opt.CgroupRoot = tn.k, tn.root
	opt.Records = func(r audit.Record) {
		tn.mu.Lock()
		tn.records = append(tn.records, r)
		tn.mu.Unlock()
	}
	tn.Node = New(opt)
	t.Cleanup(tn.Wait)
	return tn
}

// workload makes an empty workload cgroup and returns its path and id.
func (tn *testNode) workload(t *testing.T, rel string) (string, uint64) {
	t.Helper()
	dir := filepath.Join(tn.root, rel)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	id, err := loader.CgroupID(dir)
	if err != nil {
		t.Fatal(err)
	}
	return rel, id
}

// ends returns the tasks whose end was recorded, in order.
func (tn *testNode) ends() []string {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	var out []string
	for _, r := range tn.records {
		if r.Action == "task_end" {
			out = append(out, r.Task)
		}
	}
	return out
}

func (tn *testNode) endReason(id string) (string, bool) {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	for _, r := range tn.records {
		if r.Action == "task_end" && r.Task == id {
			return r.Reason, true
		}
	}
	return "", false
}

func grants(t *testing.T, connect ...string) *Grants {
	t.Helper()
	env, err := policy.ParseGrants(connect, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return NewGrants(&env)
}

func TestSubAgentIsHeldWithinItsParent(t *testing.T) {
	tn := newTestNode(t, Options{})
	pw, _ := tn.workload(t, "r/parent")
	cw, _ := tn.workload(t, "r/child")
	ctx := context.Background()
	parent, err := tn.Start(ctx, Request{Workload: pw, TTL: time.Hour,
		Grants: grants(t, "tcp:10.0.0.1:443", "tcp:10.0.0.2:443")})
	if err != nil {
		t.Fatal(err)
	}
	if parent.PolicyRevision != GrantsRevision || parent.Rules != 2 {
		t.Fatalf("parent %+v", parent)
	}
	// More than the parent has, and for longer: cut to the parent's.
	child, err := tn.Start(ctx, Request{Workload: cw, TTL: 2 * time.Hour, Parent: parent.ID,
		Grants: grants(t, "tcp:10.0.0.1:443", "tcp:10.0.0.3:443")})
	if err != nil {
		t.Fatal(err)
	}
	if child.Parent != parent.ID || child.Rules != 1 || !child.Expires.Equal(parent.Expires) {
		t.Fatalf("child %+v of parent expiring %v", child, parent.Expires)
	}
	if got, _ := tn.Get(child.ID); got.Parent != parent.ID || got.Grants == nil || got.Grants.Count() != 1 {
		t.Fatalf("child as kept: %+v", got)
	}
	// A sub-agent never shares its parent's workload, nor names a parent
	// not in force.
	ow, _ := tn.workload(t, "r/other")
	var re *RequestError
	if _, err := tn.Start(ctx, Request{Workload: pw, Parent: parent.ID, Grants: grants(t)}); !errors.As(err, &re) {
		t.Fatalf("sub-agent in its parent's workload: %v", err)
	}
	if _, err := tn.Start(ctx, Request{Workload: ow, Parent: "t-none", Grants: grants(t)}); !errors.As(err, &re) {
		t.Fatalf("sub-agent of an unknown task: %v", err)
	}
}

func TestParentEndEndsItsChildrenFirst(t *testing.T) {
	tn := newTestNode(t, Options{})
	ctx := context.Background()
	var ids []string
	var cgs []uint64
	parent := ""
	for _, name := range []string{"r/a", "r/b", "r/c"} {
		w, cg := tn.workload(t, name)
		tk, err := tn.Start(ctx, Request{Workload: w, Parent: parent, Grants: grants(t, "tcp:10.0.0.1:443")})
		if err != nil {
			t.Fatal(err)
		}
		ids, cgs, parent = append(ids, tk.ID), append(cgs, cg), tk.ID
	}
	tn.k.reset()
	if _, err := tn.End(ids[0], "done"); err != nil {
		t.Fatal(err)
	}
	if got, want := tn.ends(), []string{ids[2], ids[1], ids[0]}; !slices.Equal(got, want) {
		t.Fatalf("ends %v, want %v", got, want)
	}
	var unbinds []string
	for _, c := range tn.k.log() {
		if strings.HasPrefix(c, "bind ") {
			unbinds = append(unbinds, c)
		}
	}
	want := []string{fmt.Sprintf("bind %d 0", cgs[2]), fmt.Sprintf("bind %d 0", cgs[1]), fmt.Sprintf("bind %d 0", cgs[0])}
	if !slices.Equal(unbinds, want) {
		t.Fatalf("unbinds %v, want %v", unbinds, want)
	}
	if r, _ := tn.endReason(ids[1]); r != "parent task "+ids[0]+" ended" {
		t.Fatalf("child's end: %q", r)
	}
	if len(tn.List()) != 0 {
		t.Fatalf("still in force: %v", tn.List())
	}
	if _, err := tn.End(ids[0], "again"); !errors.Is(err, ErrNoTask) {
		t.Fatalf("ending an ended task: %v", err)
	}
}

func TestExpiredTaskStillNamesLateEvents(t *testing.T) {
	tn := newTestNode(t, Options{})
	w, cg := tn.workload(t, "r/a")
	tk, err := tn.Start(context.Background(), Request{Workload: w, TTL: 50 * time.Millisecond, Grants: grants(t)})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if r, ok := tn.endReason(tk.ID); ok {
			if !strings.HasPrefix(r, "expired") {
				t.Fatalf("end reason %q", r)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("task never expired")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, ok := tn.Get(tk.ID); ok {
		t.Fatal("expired task still in force")
	}
	// A decision made just before the end, read from the ring after it.
	rec := tn.Enrich(loader.Event{CgroupID: cg, Slot: tk.Slot, Generation: tk.Generation})
	if rec.Task != tk.ID || rec.Workload != w || rec.PolicyRevision != GrantsRevision {
		t.Fatalf("late event: %+v", rec)
	}
}

// Restore through the store: stored tasks whose parent expired while no
// daemon ran end after their sub-agents; a task whose rules were kept can
// be a parent again, one whose rules were not cannot.
func TestRestoreFromTheStore(t *testing.T) {
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tn := newTestNode(t, Options{Store: st})
	past, future := time.Now().Add(-time.Minute).UTC(), time.Now().Add(time.Hour).UTC()
	pw, pcg := tn.workload(t, "r/p")
	cw, ccg := tn.workload(t, "r/c")
	kw, kcg := tn.workload(t, "r/kept")
	nw, ncg := tn.workload(t, "r/norules")
	stored := []tasks.Task{
		{ID: "t-p", Workload: pw, CgroupID: pcg, Slot: 1, Generation: 1, Expires: past, PolicyRevision: "rev"},
		{ID: "t-c", Workload: cw, CgroupID: ccg, Slot: 2, Generation: 2, Expires: past, Parent: "t-p", PolicyRevision: "rev"},
		{ID: "t-kept", Workload: kw, CgroupID: kcg, Slot: 3, Generation: 3, Expires: future, PolicyRevision: "rev", Started: past},
		{ID: "t-norules", Workload: nw, CgroupID: ncg, Slot: 4, Generation: 4, PolicyRevision: "rev", Started: past.Add(time.Second)},
	}
	kept, _ := grants(t, "tcp:10.0.0.1:443").Rules()
	for _, id := range []string{"t-p", "t-c", "t-kept", "t-gone"} {
		if err := st.SaveRules(id, kept); err != nil {
			t.Fatal(err)
		}
	}
	tn.k.bindings = map[uint64]uint32{pcg: 1, ccg: 2, kcg: 3, ncg: 4}
	tn.Restore(stored)

	if got, want := tn.ends(), []string{"t-c", "t-p"}; !slices.Equal(got, want) {
		t.Fatalf("ends %v, want %v", got, want)
	}
	if r, _ := tn.endReason("t-p"); r != "expired" {
		t.Fatalf("parent's end: %q", r)
	}
	saved, err := st.Load()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range saved {
		ids = append(ids, s.ID)
	}
	if !slices.Equal(ids, []string{"t-kept", "t-norules"}) {
		t.Fatalf("stored after restore: %v", ids)
	}
	for id, want := range map[string]bool{"t-kept": true, "t-p": false, "t-c": false, "t-gone": false} {
		if _, err := st.LoadRules(id); (err == nil) != want {
			t.Errorf("rules of %s kept: %v, want %v", id, err == nil, want)
		}
	}
	sw, _ := tn.workload(t, "r/sub")
	ctx := context.Background()
	if _, err := tn.Start(ctx, Request{Workload: sw, Parent: "t-norules", Grants: grants(t)}); err == nil {
		t.Fatal("a task restored without its rules became a parent")
	}
	sub, err := tn.Start(ctx, Request{Workload: sw, Parent: "t-kept", Grants: grants(t, "tcp:10.0.0.1:443", "tcp:10.0.0.9:443")})
	if err != nil {
		t.Fatal(err)
	}
	if sub.Rules != 1 || !sub.Expires.Equal(future) || sub.Slot == 3 || sub.Generation <= 4 {
		t.Fatalf("sub-agent of a restored task: %+v", sub)
	}
}

func TestBaselineAndRoots(t *testing.T) {
	dir := t.TempDir()
	rego := "package bridle\n\nbaseline := {\"egress\": [{\"protocol\": \"tcp\", \"cidr\": \"192.0.2.0/24\", \"ports\": [443]}]}\n\nenvelope := {}\n"
	if err := os.WriteFile(filepath.Join(dir, "policy.rego"), []byte(rego), 0o644); err != nil {
		t.Fatal(err)
	}
	e := engine.NewEngine()
	if err := e.LoadDir(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tn := newTestNode(t, Options{Engine: e, Store: st, Roots: []string{"r"}})
	b, err := tn.SetBaseline(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if b.Revision == "" || b.Rules != 1 {
		t.Fatalf("baseline %+v", b)
	}
	// A new revision clears the slot first; the same one (a restart)
	// rewrites it in place.
	if got, want := tn.k.log(), []string{"clear 0", "rules 0 (1)"}; !slices.Equal(got, want) {
		t.Fatalf("first baseline: %v, want %v", got, want)
	}
	tn.k.reset()
	if _, err := tn.SetBaseline(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := tn.k.log(), []string{"rules 0 (1)"}; !slices.Equal(got, want) {
		t.Fatalf("same baseline again: %v, want %v", got, want)
	}
	tn.k.reset()
	id, err := tn.ConfineRoot("r")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := tn.k.log(), []string{fmt.Sprintf("bind %d 0", id), "attach " + filepath.Join(tn.root, "r")}; !slices.Equal(got, want) {
		t.Fatalf("root: %v, want %v", got, want)
	}
	if rec := tn.Enrich(loader.Event{CgroupID: id}); rec.Workload != "r" || rec.PolicyRevision != b.Revision {
		t.Fatalf("baseline record: %+v", rec)
	}
}

// ForgetRoot is given cgroup ids a previous bridled kept (a state file
// that may come from before a reboot, when the kernel numbered cgroups
// anew): an id that is a root in force now, configured or adopted, is
// someone else's, and is never unbound nor detached.
func TestForgetRootSparesRootsInForce(t *testing.T) {
	tn := newTestNode(t, Options{Roots: []string{"r"}})
	rid, err := tn.ConfineRoot("r")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = tn.workload(t, "kubepods/podu")
	pid, err := tn.AdoptRoot("kubepods/podu")
	if err != nil {
		t.Fatal(err)
	}
	tn.k.reset()
	for _, id := range []uint64{rid, pid} {
		if err := tn.ForgetRoot(id); err == nil {
			t.Errorf("ForgetRoot(%d) of a root in force succeeded", id)
		}
	}
	if got := tn.k.log(); len(got) != 0 {
		t.Fatalf("kernel writes %q: a root in force was let go of", got)
	}
	_, gone := tn.workload(t, "kubepods/podgone")
	if err := tn.ForgetRoot(gone); err != nil {
		t.Fatal(err)
	}
	if got := tn.k.log(); !slices.Equal(got, []string{fmt.Sprintf("unbind %d", gone), fmt.Sprintf("forget %d", gone)}) {
		t.Fatalf("kernel writes %q", got)
	}
}
