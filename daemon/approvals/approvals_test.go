package approvals

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
	"github.com/bridle-sh/bridle/policy/engine"
)

// fakeKernel records the grant writes the manager makes.
type fakeKernel struct {
	mu      sync.Mutex
	calls   []string
	addrs   []loader.GrantedAddr
	execs   []loader.GrantedExec
	aborted []netip.Addr
	learned []loader.LearnedAddr // what LearnedEndingAt answers
	fail    error
}

func (k *fakeKernel) log(s string) { k.mu.Lock(); k.calls = append(k.calls, s); k.mu.Unlock() }

func (k *fakeKernel) GrantAddrs(slot, gen uint32, a []loader.GrantedAddr) error {
	if k.fail != nil {
		return k.fail
	}
	k.log("grant-addrs")
	k.mu.Lock()
	k.addrs = append(k.addrs, a...)
	k.mu.Unlock()
	return nil
}
func (k *fakeKernel) RevokeAddrs(slot, gen uint32, a []loader.GrantedAddr) error {
	k.log("revoke-addrs")
	return nil
}
func (k *fakeKernel) GrantExec(slot, gen uint32, g []loader.GrantedExec) error {
	k.log("grant-exec")
	k.mu.Lock()
	k.execs = append(k.execs, g...)
	k.mu.Unlock()
	return nil
}
func (k *fakeKernel) RevokeExec(slot, gen uint32, g []loader.GrantedExec) error {
	k.log("revoke-exec")
	return nil
}
func (k *fakeKernel) AbortTo(slot, gen uint32, p policy.Protocol, a netip.Addr, ports []policy.PortRange) (loader.DestroyStats, error) {
	k.log("abort")
	k.mu.Lock()
	k.aborted = append(k.aborted, a)
	k.mu.Unlock()
	return loader.DestroyStats{TCP: 1}, nil
}

func (k *fakeKernel) LearnedEndingAt(slot, gen uint32, at time.Time) []loader.GrantedAddr {
	k.log("learned-ending")
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.learned
}

func (k *fakeKernel) called() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.calls...)
}

// recorder keeps the records the manager writes.
type recorder struct {
	mu   sync.Mutex
	recs []audit.Record
}

func (r *recorder) record(rec audit.Record) { r.mu.Lock(); r.recs = append(r.recs, rec); r.mu.Unlock() }

func (r *recorder) actions() []bpf.Action {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []bpf.Action
	for _, rec := range r.recs {
		out = append(out, rec.Action)
	}
	return out
}

// clock is a settable clock.
type clock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return time.Now().Add(c.off) }
func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.off += d
	c.mu.Unlock()
}

var admin = Approver{UID: 0, Auth: engine.AuthPeerCred}

func approvable(t *testing.T, entries ...policy.ApprovableEntry) policy.CompiledApprovable {
	t.Helper()
	c, err := policy.CompileApprovable(policy.Approvable{Entries: entries})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func netEntry(cidr string, port uint16, maxTTL time.Duration) policy.ApprovableEntry {
	return policy.ApprovableEntry{
		Egress: &policy.EgressRule{Protocol: policy.ProtoTCP, Prefix: netip.MustParsePrefix(cidr), Ports: []policy.PortRange{{First: port, Last: port}}},
		MaxTTL: maxTTL,
	}
}

type harness struct {
	m   *Manager
	k   *fakeKernel
	rec *recorder
	clk *clock
}

func newHarness(t *testing.T, opt Options, a policy.CompiledApprovable) harness {
	t.Helper()
	h := harness{k: &fakeKernel{}, rec: &recorder{}, clk: &clock{}}
	opt.Kernel, opt.Records, opt.Now = h.k, h.rec.record, h.clk.now
	if opt.IsAdmin == nil {
		opt.IsAdmin = func(a Approver) bool { return a.hasUID() && a.UID == 0 }
	}
	m, err := New(opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	h.m = m
	m.TaskStarted(Task{ID: "t1", Workload: "/w", Identity: "spiffe://example.org/agent", Intent: "fix", PolicyRevision: "rev",
		CgroupID: 7, Slot: 3, Generation: 9, Ends: h.clk.now().Add(time.Hour), Approvable: a})
	return h
}

func connect(addr string, port uint16) policy.Target {
	return policy.Target{Action: policy.TargetConnect, Protocol: policy.ProtoTCP, Addr: netip.MustParseAddr(addr), Port: port}
}

func (h harness) refuse(t *testing.T, target policy.Target) string {
	t.Helper()
	rec := audit.Record{Task: "t1", PID: 42, Comm: "curl", Verdict: bpf.VerdictDeny, Reason: "no_rule"}
	h.m.Refused(&rec, target)
	return rec.Request
}

func TestRefusalOpensOneRequestPerTarget(t *testing.T) {
	h := newHarness(t, Options{}, approvable(t, netEntry("192.0.2.0/24", 443, 0)))
	id := h.refuse(t, connect("192.0.2.7", 443))
	if id == "" {
		t.Fatal("no request opened for an approvable target")
	}
	if again := h.refuse(t, connect("192.0.2.7", 443)); again != id {
		t.Fatalf("second refusal of the same target: request %q, want the pending %q", again, id)
	}
	if other := h.refuse(t, connect("192.0.2.8", 443)); other == "" || other == id {
		t.Fatalf("another target: request %q, want a new one", other)
	}
	if none := h.refuse(t, connect("192.0.2.7", 80)); none != "" {
		t.Fatalf("a port the entry does not hold opened request %s", none)
	}
	if none := h.refuse(t, connect("198.51.100.1", 443)); none != "" {
		t.Fatalf("an unapprovable address opened request %s", none)
	}
	r, ok := h.m.Get(id)
	if !ok || r.State != Pending || r.Target != "tcp 192.0.2.7:443" || r.PID != 42 || r.Comm != "curl" ||
		r.Identity != "spiffe://example.org/agent" || r.PolicyRevision != "rev" || r.Reason != "no_rule" {
		t.Fatalf("request %+v", r)
	}
	if got := h.m.List(); len(got) != 2 || got[0].Address != "192.0.2.8" {
		t.Fatalf("List: %+v, want two, newest first", got)
	}
	if got := h.rec.actions(); len(got) != 2 || got[0] != bpf.ActionApprovalRequest {
		t.Fatalf("records %v, want two approval_request", got)
	}
}

func TestNoRequestWithoutApprovableOrTask(t *testing.T) {
	h := newHarness(t, Options{}, approvable(t, netEntry("192.0.2.0/24", 443, 0)))
	rec := audit.Record{Task: "other"}
	h.m.Refused(&rec, connect("192.0.2.7", 443))
	if rec.Request != "" {
		t.Fatal("a task the manager does not know opened a request")
	}
	h.m.TaskStarted(Task{ID: "plain"}) // no approvable set: not kept
	rec = audit.Record{Task: "plain"}
	h.m.Refused(&rec, connect("192.0.2.7", 443))
	if rec.Request != "" {
		t.Fatal("a task without approvable entries opened a request")
	}
}

func TestApproveWritesGrantCappedByMaxTTL(t *testing.T) {
	h := newHarness(t, Options{}, approvable(t, netEntry("192.0.2.0/24", 443, 10*time.Minute)))
	id := h.refuse(t, connect("192.0.2.7", 443))
	r, err := h.m.Approve(id, admin, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != Approved || r.Answer == nil || r.Answer.For != 10*time.Minute || r.Answer.UID == nil || *r.Answer.UID != 0 {
		t.Fatalf("approved request %+v answer %+v", r, r.Answer)
	}
	if len(h.k.addrs) != 1 {
		t.Fatalf("kernel grants %+v", h.k.addrs)
	}
	g := h.k.addrs[0]
	if g.Addr != netip.MustParseAddr("192.0.2.7") || g.Protocol != policy.ProtoTCP || len(g.Ports) != 1 || g.Ports[0].First != 443 ||
		g.Expires.Sub(h.clk.now()) > 10*time.Minute {
		t.Fatalf("grant %+v: want tcp 192.0.2.7:443 for at most 10m", g)
	}
	if _, err := h.m.Approve(id, admin, time.Minute); !errors.Is(err, ErrNotPending) {
		t.Fatalf("second answer: %v, want ErrNotPending", err)
	}
	if _, err := h.m.Approve("req-nope", admin, time.Minute); !errors.Is(err, ErrNoRequest) {
		t.Fatalf("unknown id: %v, want ErrNoRequest", err)
	}
	if got := h.rec.actions(); got[len(got)-1] != bpf.ActionApprovalGranted {
		t.Fatalf("records %v, want approval_granted last", got)
	}
}

func TestApproveCappedByTaskEnd(t *testing.T) {
	h := newHarness(t, Options{}, approvable(t, netEntry("192.0.2.0/24", 443, 0)))
	id := h.refuse(t, connect("192.0.2.7", 443))
	r, err := h.m.Approve(id, admin, 0) // as long as allowed: the task's end
	if err != nil {
		t.Fatal(err)
	}
	if d := r.Answer.For; d < 59*time.Minute || d > time.Hour {
		t.Fatalf("grant for %v, want the task's remaining hour", d)
	}
}

func TestApproverChecks(t *testing.T) {
	e := netEntry("192.0.2.0/24", 443, 0)
	e.Approvers = &policy.Approvers{UIDs: []uint32{1000}, GIDs: []uint32{50}, Identities: []string{"spiffe://ops.example"}}
	h := newHarness(t, Options{}, approvable(t, e, netEntry("198.51.100.0/24", 443, 0)))
	id := h.refuse(t, connect("192.0.2.7", 443))

	var na *NotApproverError
	if _, err := h.m.Approve(id, admin, time.Minute); !errors.As(err, &na) {
		t.Fatalf("admin on an entry with its own approvers: %v, want NotApproverError", err)
	}
	if got := h.rec.actions(); got[len(got)-1] != bpf.ActionAPI {
		t.Fatalf("a refused answer is recorded: records %v", got)
	}
	if _, err := h.m.Approve(id, Approver{UID: 1001, Auth: engine.AuthPeerCred}, time.Minute); !errors.As(err, &na) {
		t.Fatalf("uid 1001: %v, want NotApproverError", err)
	}
	// Over mutual TLS the uid is not the kernel's: 1000 there is no one.
	if _, err := h.m.Approve(id, Approver{UID: 1000, Identity: "spiffe://other.example/x", Auth: engine.AuthX509SVID}, time.Minute); !errors.As(err, &na) {
		t.Fatalf("uid claimed over mTLS: %v, want NotApproverError", err)
	}
	if _, err := h.m.Approve(id, Approver{UID: 5, GID: 5, Groups: []uint32{50}, Auth: engine.AuthPeerCred}, time.Minute); err != nil {
		t.Fatalf("member of group 50: %v", err)
	}
	id2 := h.refuse(t, connect("192.0.2.9", 443))
	if _, err := h.m.Deny(id2, Approver{Identity: "spiffe://ops.example/oncall", Auth: engine.AuthX509SVID}, "no"); err != nil {
		t.Fatalf("an identity of the trust domain: %v", err)
	}
	// The second entry names nobody: admins answer.
	id3 := h.refuse(t, connect("198.51.100.1", 443))
	if _, err := h.m.Approve(id3, Approver{UID: 1000, Auth: engine.AuthPeerCred}, time.Minute); !errors.As(err, &na) {
		t.Fatalf("non-admin on an entry without approvers: %v", err)
	}
	if _, err := h.m.Approve(id3, admin, time.Minute); err != nil {
		t.Fatal(err)
	}
}

func TestDenialCooldown(t *testing.T) {
	h := newHarness(t, Options{Cooldown: time.Minute}, approvable(t, netEntry("192.0.2.0/24", 443, 0)))
	id := h.refuse(t, connect("192.0.2.7", 443))
	r, err := h.m.Deny(id, admin, "not today")
	if err != nil {
		t.Fatal(err)
	}
	if r.State != Denied || r.Answer.Reason != "not today" {
		t.Fatalf("denied request %+v", r)
	}
	if again := h.refuse(t, connect("192.0.2.7", 443)); again != "" {
		t.Fatalf("refusal in the cooldown opened %s", again)
	}
	if other := h.refuse(t, connect("192.0.2.8", 443)); other == "" {
		t.Fatal("another target is not in the cooldown")
	}
	h.clk.advance(61 * time.Second)
	if again := h.refuse(t, connect("192.0.2.7", 443)); again == "" || again == id {
		t.Fatalf("after the cooldown: request %q, want a new one", again)
	}
}

func TestUnansweredRequestExpires(t *testing.T) {
	h := newHarness(t, Options{RequestTTL: 30 * time.Millisecond}, approvable(t, netEntry("192.0.2.0/24", 443, 0)))
	c, stop := h.m.Subscribe()
	defer stop()
	id := h.refuse(t, connect("192.0.2.7", 443))
	want := []string{Pending, Expired}
	for _, state := range want {
		select {
		case r := <-c:
			if r.ID != id || r.State != state {
				t.Fatalf("change %s %s, want %s %s", r.ID, r.State, id, state)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no %s change", state)
		}
	}
	if _, err := h.m.Approve(id, admin, time.Minute); !errors.Is(err, ErrNotPending) {
		t.Fatalf("answer after expiry: %v", err)
	}
	if again := h.refuse(t, connect("192.0.2.7", 443)); again == "" || again == id {
		t.Fatal("an expired request keeps the target from asking again")
	}
}

func TestPendingBoundPerTask(t *testing.T) {
	h := newHarness(t, Options{MaxPending: 2}, approvable(t, netEntry("192.0.2.0/24", 443, 0)))
	a, b := h.refuse(t, connect("192.0.2.1", 443)), h.refuse(t, connect("192.0.2.2", 443))
	if a == "" || b == "" {
		t.Fatal("requests under the bound not opened")
	}
	if c := h.refuse(t, connect("192.0.2.3", 443)); c != "" {
		t.Fatalf("request %s opened past the bound", c)
	}
	if _, err := h.m.Deny(a, admin, ""); err != nil {
		t.Fatal(err)
	}
	if c := h.refuse(t, connect("192.0.2.3", 443)); c == "" {
		t.Fatal("an answer did not free room for a new request")
	}
}

func TestGrantEndsOnTime(t *testing.T) {
	h := newHarness(t, Options{}, approvable(t, netEntry("192.0.2.0/24", 443, 0)))
	id := h.refuse(t, connect("192.0.2.7", 443))
	if _, err := h.m.Approve(id, admin, 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(h.k.called()) >= 3 })
	got := h.k.called()
	if got[0] != "grant-addrs" || got[1] != "revoke-addrs" || got[2] != "abort" {
		t.Fatalf("kernel calls %v, want grant, revoke, abort", got)
	}
	waitFor(t, func() bool { a := h.rec.actions(); return a[len(a)-1] == bpf.ActionGrantEnded })
}

func TestTaskEndEndsRequestsAndGrants(t *testing.T) {
	h := newHarness(t, Options{}, approvable(t, netEntry("192.0.2.0/24", 443, 0)))
	pending := h.refuse(t, connect("192.0.2.1", 443))
	granted := h.refuse(t, connect("192.0.2.2", 443))
	if _, err := h.m.Approve(granted, admin, time.Minute); err != nil {
		t.Fatal(err)
	}
	h.m.TaskEnded("t1")
	if r, _ := h.m.Get(pending); r.State != Expired {
		t.Fatalf("pending request of an ended task is %s", r.State)
	}
	if got := h.k.called(); len(got) != 1 {
		t.Fatalf("kernel calls %v: the task's end cleared its slot, nothing to revoke", got)
	}
	acts := h.rec.actions()
	if acts[len(acts)-1] != bpf.ActionGrantEnded || acts[len(acts)-2] != bpf.ActionApprovalExpired {
		t.Fatalf("records %v", acts)
	}
	if id := h.refuse(t, connect("192.0.2.3", 443)); id != "" {
		t.Fatal("an ended task opened a request")
	}
}

func TestExecTarget(t *testing.T) {
	id, err := policy.FileIDOf("/usr/bin/true")
	if err != nil {
		t.Skipf("no /usr/bin/true to stat: %v", err)
	}
	h := newHarness(t, Options{}, approvable(t, policy.ApprovableEntry{Exec: &policy.ExecRule{Path: "/usr/bin/true"}, MaxTTL: time.Minute}))
	req := h.refuse(t, policy.Target{Action: policy.TargetExec, Path: "/usr/bin/true", Dev: id.Dev, Ino: id.Ino})
	if req == "" {
		t.Fatal("exec of an approvable program opened no request")
	}
	if other := h.refuse(t, policy.Target{Action: policy.TargetExec, Path: "/usr/bin/true", Dev: id.Dev, Ino: id.Ino + 1}); other != "" {
		t.Fatal("another file under the same name opened a request")
	}
	if _, err := h.m.Approve(req, admin, 0); err != nil {
		t.Fatal(err)
	}
	if len(h.k.execs) != 1 || h.k.execs[0].Dev != id.Dev || h.k.execs[0].Ino != id.Ino {
		t.Fatalf("exec grants %+v", h.k.execs)
	}
}

func TestGrantedNames(t *testing.T) {
	e := policy.ApprovableEntry{Egress: &policy.EgressRule{Protocol: policy.ProtoTCP, Host: "*.github.com", Ports: []policy.PortRange{{First: 443, Last: 443}}}}
	h := newHarness(t, Options{}, approvable(t, e))
	id := h.refuse(t, policy.Target{Action: policy.TargetDNS, Name: "api.github.com"})
	if id == "" {
		t.Fatal("refused name under an approvable pattern opened no request")
	}
	if h.refuse(t, policy.Target{Action: policy.TargetDNS, Name: "github.com"}) != "" {
		t.Fatal("a wildcard's suffix itself opened a request")
	}
	if len(h.m.GrantedNames("t1")) != 0 {
		t.Fatal("names granted before an answer")
	}
	if _, err := h.m.Approve(id, admin, time.Minute); err != nil {
		t.Fatal(err)
	}
	names := h.m.GrantedNames("t1")
	if len(names) != 1 || names[0].Rule.Pattern != "api.github.com" || names[0].Rule.Protocol != policy.ProtoTCP ||
		len(names[0].Rule.Ports) != 1 || names[0].Rule.Ports[0].First != 443 {
		t.Fatalf("granted names %+v: want the name asked for, tcp 443", names)
	}
	if len(h.k.called()) != 0 {
		t.Fatalf("a name grant wrote to the kernel: %v (the resolver learns its addresses)", h.k.called())
	}
	// Its end resets the connections to what the resolver learned under
	// it (the addresses whose life ends with it).
	h.k.learned = []loader.LearnedAddr{{Protocol: policy.ProtoTCP, Addr: netip.MustParseAddr("140.82.112.5")}}
	h.m.endGrant(id)
	if len(h.k.aborted) != 1 || h.k.aborted[0] != netip.MustParseAddr("140.82.112.5") {
		t.Fatalf("connections reset at the name grant's end: %v", h.k.aborted)
	}
	if got := h.rec.actions(); got[len(got)-1] != bpf.ActionGrantEnded {
		t.Fatalf("records %v, want grant_ended last", got)
	}
}

func TestGrantsSurviveRestart(t *testing.T) {
	file := filepath.Join(t.TempDir(), "grants.json")
	h := newHarness(t, Options{StateFile: file}, approvable(t, netEntry("192.0.2.0/24", 443, 0)))
	id := h.refuse(t, connect("192.0.2.7", 443))
	if _, err := h.m.Approve(id, admin, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	h.m.Close() // bridled stops; the grant's timer with it

	k, rec := &fakeKernel{}, &recorder{}
	m, err := New(Options{Kernel: k, Records: rec.record, StateFile: file})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	waitFor(t, func() bool { return len(k.called()) >= 2 })
	if got := k.called(); got[0] != "revoke-addrs" || got[1] != "abort" || k.aborted[0] != netip.MustParseAddr("192.0.2.7") {
		t.Fatalf("restarted manager's calls %v", got)
	}
	waitFor(t, func() bool { a := rec.actions(); return len(a) == 1 && a[0] == bpf.ActionGrantEnded })
	if r := rec.recs[0]; r.Request != id || r.Task != "t1" || r.Address != "192.0.2.7" {
		t.Fatalf("grant_ended record %+v", r)
	}
}

func TestKernelFailureLeavesRequestPending(t *testing.T) {
	h := newHarness(t, Options{}, approvable(t, netEntry("192.0.2.0/24", 443, 0)))
	id := h.refuse(t, connect("192.0.2.7", 443))
	h.k.fail = errors.New("task not in force")
	if _, err := h.m.Approve(id, admin, time.Minute); err == nil {
		t.Fatal("approve succeeded without a grant in the kernel")
	}
	if r, _ := h.m.Get(id); r.State != Pending {
		t.Fatalf("request %s after a failed grant, want pending", r.State)
	}
}

func TestWebhookRetries(t *testing.T) {
	var hits atomic.Int32
	got := make(chan []byte, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) < 3 {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		b, _ := io.ReadAll(r.Body)
		got <- b
	}))
	defer srv.Close()
	h := newHarness(t, Options{Webhook: Webhook{URL: srv.URL, Retries: 3, Backoff: 10 * time.Millisecond}},
		approvable(t, netEntry("192.0.2.0/24", 443, 0)))
	id := h.refuse(t, connect("192.0.2.7", 443))
	select {
	case b := <-got:
		if !json200(b, id) {
			t.Fatalf("webhook body %s does not carry request %s", b, id)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("webhook not delivered after %d attempts", hits.Load())
	}
}

func TestWebhookGivesUp(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Error(w, "down", http.StatusInternalServerError)
	}))
	defer srv.Close()
	h := newHarness(t, Options{Webhook: Webhook{URL: srv.URL, Retries: 2, Backoff: 5 * time.Millisecond}},
		approvable(t, netEntry("192.0.2.0/24", 443, 0)))
	h.refuse(t, connect("192.0.2.7", 443))
	waitFor(t, func() bool { return hits.Load() == 3 })
	h.m.Close() // waits for the delivery to give up
	if n := hits.Load(); n != 3 {
		t.Fatalf("%d attempts, want 1 + 2 retries", n)
	}
}

func json200(b []byte, id string) bool {
	return len(b) > 0 && strings.Contains(string(b), `"id":"`+id+`"`) && strings.Contains(string(b), `"state":"pending"`)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The webhook's body gives durations as the API does.
func TestRequestJSONDurations(t *testing.T) {
	b, err := json.Marshal(Request{ID: "req-1", MaxTTL: 30 * time.Minute, Answer: &Answer{By: "uid 0", For: 2 * time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	if s := string(b); !strings.Contains(s, `"max_ttl":"30m0s"`) || !strings.Contains(s, `"for":"2m0s"`) || strings.Count(s, "max_ttl") != 1 {
		t.Fatalf("json %s", s)
	}
}

// A workload cannot answer its own request by the SPIFFE ID it runs
// under: over mutual TLS no cgroup tells bridled the caller is a
// workload, and an entry's approvers naming a whole trust domain include
// the workload's own ID. Nor can another task's workload (a sub-agent's
// parent, a sibling) answer by its ID.
func TestWorkloadIdentityMayNotAnswer(t *testing.T) {
	e := netEntry("192.0.2.0/24", 443, 0)
	e.Approvers = &policy.Approvers{GIDs: []uint32{engine.NoUID}, Identities: []string{"spiffe://example.org"}}
	// sibling is the workload of a task with no approvable entries, which
	// the manager does not hold: the node says it is a workload's.
	h := newHarness(t, Options{IsWorkloadIdentity: func(id string) bool { return id == "spiffe://example.org/sibling" }}, approvable(t, e))
	h.m.TaskStarted(Task{ID: "t2", Workload: "/w2", Identity: "spiffe://example.org/parent", Slot: 4, Generation: 1,
		Ends: h.clk.now().Add(time.Hour), Approvable: approvable(t, e)})
	id := h.refuse(t, connect("192.0.2.7", 443))

	var na *NotApproverError
	for _, by := range []Approver{
		{UID: engine.NoUID, GID: engine.NoUID, Identity: "spiffe://example.org/agent", Auth: engine.AuthX509SVID},
		{UID: 1000, GID: 1000, Identity: "spiffe://example.org/agent", Auth: engine.AuthJWTSVID},
		{UID: engine.NoUID, GID: engine.NoUID, Identity: "spiffe://example.org/parent", Auth: engine.AuthX509SVID},
		{UID: engine.NoUID, GID: engine.NoUID, Identity: "spiffe://example.org/sibling", Auth: engine.AuthX509SVID},
		// Over mutual TLS no gid is the kernel's either.
		{UID: engine.NoUID, GID: engine.NoUID, Identity: "spiffe://other.example/x", Auth: engine.AuthX509SVID},
	} {
		if _, err := h.m.Approve(id, by, time.Minute); !errors.As(err, &na) {
			t.Fatalf("%s approved: %v, want NotApproverError", by, err)
		}
	}
	if _, err := h.m.Approve(id, Approver{UID: engine.NoUID, GID: engine.NoUID, Identity: "spiffe://example.org/oncall", Auth: engine.AuthX509SVID}, time.Minute); err != nil {
		t.Fatalf("a person of the trust domain: %v", err)
	}
}

// Two grants to one address share the kernel's entry for it: the entry
// holds both ports until the first grant's end, then is rewritten from
// the one left, never deleted under it.
func TestGrantsToOneAddressShareItsEntry(t *testing.T) {
	h := newHarness(t, Options{}, approvable(t, netEntry("192.0.2.0/24", 443, 0), netEntry("192.0.2.0/24", 22, 0)))
	long := h.refuse(t, connect("192.0.2.7", 443))
	short := h.refuse(t, connect("192.0.2.7", 22))
	if _, err := h.m.Approve(long, admin, 30*time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := h.m.Approve(short, admin, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	last := h.k.addrs[len(h.k.addrs)-1]
	if len(last.Ports) != 2 || last.Expires.Sub(h.clk.now()) > 2*time.Minute {
		t.Fatalf("entry after the second grant %+v: want ports 443 and 22 until the shorter end", last)
	}
	calls := len(h.k.called())
	h.clk.advance(2 * time.Minute)
	h.m.endGrant(short)
	after := h.k.called()[calls:]
	if slices.Contains(after, "revoke-addrs") {
		t.Fatalf("the shorter grant's end deleted the entry the longer one still needs: %v", after)
	}
	last = h.k.addrs[len(h.k.addrs)-1]
	if len(last.Ports) != 1 || last.Ports[0].First != 443 || last.Expires.Sub(h.clk.now()) < 27*time.Minute {
		t.Fatalf("entry after the shorter grant ended %+v: want 443 until the longer end", last)
	}
	h.m.endGrant(long)
	if got := h.k.called(); got[len(got)-2] != "revoke-addrs" {
		t.Fatalf("the last grant's end: calls %v, want the entry revoked", got)
	}
}
