package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/daemon/api"
)

// Step-up approvals end to end: a real bridled whose policy lets tasks ask
// for a little more than their envelope, workloads the kernel refuses, and
// answers given with the bridle CLI.

// approverUID is the only approver of the guarded entry: neither the
// test's uid nor the workload user's, so neither root nor an admin of the
// task API may answer for it.
const approverUID = 4242

// approvalsEnv is a bridled whose policy makes some refusals questions.
// Each target is a loopback address of the test namespace with a listener
// of its own that holds what it accepts.
type approvalsEnv struct {
	*daemonEnv
	granted string // approvable by the admins, max_ttl 5s
	guarded string // approvable by approverUID only
	stray   string // approvable only in a sub-agent's policy, outside its parent's
	plain   string // no entry covers it
	// tool is approvable (max_ttl 4s); strayTool only in a sub-agent's
	// policy. Both are copies of the probe: programs no rule allows.
	tool, strayTool string
}

// approvalsPolicy is testPolicy's baseline and envelope, with approvable
// entries: a top-level task may ask for granted, guarded and tool; a
// sub-agent's policy asks for more (granted for an hour, stray, strayTool),
// which its parent's cut must take back.
func (e *approvalsEnv) policy() string {
	port := func(addr string) string { return addr[strings.LastIndexByte(addr, ':')+1:] }
	return testPolicy(e.socket) + fmt.Sprintf(`
approvable := {
	"egress": [
		{"protocol": "tcp", "cidr": "127.0.0.2/32", "ports": [%[1]s], "max_ttl": "5s"},
		{"protocol": "tcp", "cidr": "127.0.0.3/32", "ports": [%[2]s], "max_ttl": "5s", "approvers": {"uids": [%[6]d]}},
	],
	"exec": [{"path": %[4]q, "max_ttl": "4s"}],
} if {
	not input.parent
} else := {
	"egress": [
		{"protocol": "tcp", "cidr": "127.0.0.2/32", "ports": [%[1]s], "max_ttl": "1h"},
		{"protocol": "tcp", "cidr": "127.0.0.4/32", "ports": [%[3]s]},
	],
	"exec": [{"path": %[4]q}, {"path": %[5]q}],
}
`, port(e.granted), port(e.guarded), port(e.stray), e.tool, e.strayTool, approverUID)
}

func newApprovalsEnv(t *testing.T) *approvalsEnv {
	t.Helper()
	e := &approvalsEnv{daemonEnv: newDaemonEnv(t)}
	listen := func(ip string) string {
		return fmt.Sprintf("%s:%d", ip, tcpHoldingListener(t, "tcp4", ip+":0"))
	}
	e.granted, e.guarded, e.stray, e.plain = listen("127.0.0.2"), listen("127.0.0.3"), listen("127.0.0.4"), listen("127.0.0.5")
	e.tool, e.strayTool = copyExecutable(t, probeBin, "tool"), copyExecutable(t, probeBin, "stray-tool")
	if err := os.WriteFile(filepath.Join(e.dir, "policy", "test.rego"), []byte(e.policy()), 0o644); err != nil {
		t.Fatal(err)
	}
	// Callers other than root answer too (the workload user is an admin
	// of the task API; approverUID is nobody's admin).
	e.openToAll()
	e.appendConfig(
		"admins:",
		fmt.Sprintf("  uids: [%d]", nobodyID),
		"approvals:",
		`  web_listen: ""`,
	)
	e.start()
	return e
}

// startTask starts a task through the API with its allowed decisions
// recorded, so that what a grant lets through shows in the records.
func (e *approvalsEnv) startTask(cg, parent string) string {
	e.t.Helper()
	body, _ := json.Marshal(api.StartRequest{Workload: cg, Intent: "approvals e2e", Parent: parent, LogAllowed: true})
	resp, err := e.client().Post("http://bridled/v1/tasks", "application/json", bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var task api.Task
	if err := json.NewDecoder(resp.Body).Decode(&task); err != nil || resp.StatusCode != http.StatusCreated {
		e.t.Fatalf("task start on %s (parent %q): %s %v %+v", cg, parent, resp.Status, err, task)
	}
	return task.ID
}

// cliAs runs `bridle ARGS... --socket S` as uid (0: as the test), outside
// any workload, bounded to 30 s.
func (e *approvalsEnv) cliAs(uid uint32, args ...string) (string, error) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, bridleBin, append(args, "--socket", e.socket)...)
	if uid != 0 {
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}}
		c.Env = []string{"PATH=/usr/bin:/bin"}
	}
	out, err := c.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (e *approvalsEnv) cli(args ...string) (string, error) {
	e.t.Helper()
	return e.cliAs(0, args...)
}

// approvals is `bridle approvals --json`.
func (e *approvalsEnv) approvals() []api.Approval {
	e.t.Helper()
	out, err := e.cli("approvals", "--json")
	if err != nil {
		e.t.Fatalf("bridle approvals: %v: %s", err, out)
	}
	var l api.ApprovalList
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		e.t.Fatalf("bridle approvals --json: %v: %s", err, out)
	}
	return l.Approvals
}

// requestsOf returns the requests of task.
func (e *approvalsEnv) requestsOf(task string) []api.Approval {
	e.t.Helper()
	var out []api.Approval
	for _, a := range e.approvals() {
		if a.Task == task {
			out = append(out, a)
		}
	}
	return out
}

// waitPending waits (bounded) for a pending request of task for an action;
// the refusal reaches bridled through the ring buffer, a little after the
// workload saw it.
func (e *approvalsEnv) waitPending(task, action string) api.Approval {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, a := range e.requestsOf(task) {
			if a.State == "pending" && a.Action == action {
				return a
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no pending %s request of task %s within 30s: %+v", action, task, e.approvals())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// approve is `bridle approve ID --for D` as the test (root, an admin).
func (e *approvalsEnv) approve(id, d string) api.Approval {
	e.t.Helper()
	out, err := e.cli("approve", id, "--for", d, "--json")
	if err != nil {
		e.t.Fatalf("bridle approve %s --for %s: %v: %s", id, d, err, out)
	}
	var a api.Approval
	if err := json.Unmarshal([]byte(out), &a); err != nil || a.State != "approved" || a.Answer == nil || a.Answer.GrantEnds.IsZero() {
		e.t.Fatalf("bridle approve --json: %v: %s", err, out)
	}
	return a
}

// records returns the audit records matching want, in the file's order.
func (e *approvalsEnv) records(want func(map[string]any) bool) []map[string]any {
	b, _ := os.ReadFile(e.audit)
	var out []map[string]any
	for _, line := range strings.Split(string(b), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && want(rec) {
			out = append(out, rec)
		}
	}
	return out
}

// waitRecords waits (bounded) until n records match want and returns them.
// bridled offers a refusal to the approvals manager before it writes the
// refusal's record, so once the record is there, whatever request the
// refusal could open is open.
func (e *approvalsEnv) waitRecords(n int, want func(map[string]any) bool) []map[string]any {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if recs := e.records(want); len(recs) >= n {
			return recs
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(e.audit)
			e.t.Fatalf("fewer than %d matching audit records within 30s; records:\n%s", n, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitAudit is daemonEnv's, with a bound for slow kernel guests.
func (e *approvalsEnv) waitAudit(want func(map[string]any) bool) map[string]any {
	e.t.Helper()
	return e.waitAuditFor(30*time.Second, want)
}

// refusals matches the task's refused decisions of action to target
// (an address:port, or an exec's path).
func refusals(task, action, target string) func(map[string]any) bool {
	return func(r map[string]any) bool {
		return r["task"] == task && r["action"] == action && r["verdict"] == "deny" && recordTarget(r) == target
	}
}

// recordTarget is a decision record's target as the tests name it.
func recordTarget(r map[string]any) string {
	if r["action"] == "exec" {
		return fmt.Sprint(r["path"])
	}
	return fmt.Sprintf("%v:%v", r["address"], r["port"])
}

// approvalRecord matches bridled's record of action for request id.
func approvalRecord(action, id string) func(map[string]any) bool {
	return func(r map[string]any) bool { return r["action"] == action && r["request"] == id }
}

// pastEnd waits until a grant has ended, with a margin for the kernel's
// clock (the grant's end is written as CLOCK_BOOTTIME).
func pastEnd(a api.Approval) {
	time.Sleep(time.Until(a.Answer.GrantEnds.Add(250 * time.Millisecond)))
}

// execIn runs `probe exec PATH sleep 0` born in cg, bounded to 30 s: its
// exit status (128+N when signal N killed it) and first line.
func (e *approvalsEnv) execIn(cg, path string) (int, string) {
	e.t.Helper()
	fd := e.cgroupFD(cg)
	defer syscall.Close(fd)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, probeBin, "exec", path, "sleep", "0")
	c.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	var out []byte
	var err error
	inNetns(e.t, func() { out, err = c.Output() })
	line, _, _ := strings.Cut(string(out), "\n")
	if err == nil {
		return 0, line
	}
	ee, ok := err.(*exec.ExitError)
	if !ok {
		e.t.Fatalf("probe exec %s: %v", path, err)
	}
	if ws := ee.Sys().(syscall.WaitStatus); ws.Signaled() {
		return 128 + int(ws.Signal()), line
	}
	return ee.ExitCode(), line
}

// wantExecRefusedIn checks an exec was stopped the way this kernel's mode
// promises (see wantExecRefused).
func (e *approvalsEnv) wantExecRefusedIn(what, cg, path string) {
	e.t.Helper()
	status, out := e.execIn(cg, path)
	switch {
	case execMode == "lsm" && status == 2 && strings.HasPrefix(out, "EPERM"):
	case execMode == "kill" && status == 128+9 && out == "":
	default:
		e.t.Fatalf("%s: exec of %s in %s mode: status %d, %q", what, path, execMode, status, out)
	}
}

// kernelDev is a file's device as the kernel reports an exec: major<<20 | minor.
func kernelDev(t *testing.T, path string) (dev, ino uint64) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return uint64(unix.Major(st.Dev))<<20 | uint64(unix.Minor(st.Dev)), st.Ino
}

// A connect the kernel refuses opens a request; approved from the CLI, the
// same connect succeeds until the grant's end, then is refused again, and
// the connection opened under the grant is reset.
func TestApprovalConnect(t *testing.T) {
	e := newApprovalsEnv(t)
	cg := e.workload("agent")
	id := e.startTask(cg, "")

	wantPrefix(t, "before any answer", e.probeConnect(cg, e.granted), "EPERM connect")
	req := e.waitPending(id, "connect")
	if req.Target != "tcp "+e.granted || req.Protocol != "tcp" || fmt.Sprintf("%s:%d", req.Address, req.Port) != e.granted ||
		req.Workload != cg || req.Identity != "spiffe://e2e.test/workload"+cg || req.Intent != "approvals e2e" ||
		req.Comm != "probe" || req.PID == 0 || req.Reason != "no rule allows it" || req.MaxTTL != "5s" ||
		!strings.HasPrefix(req.PolicyRevision, "sha256:") || !req.Expires.After(req.Opened) {
		t.Fatalf("request: %+v", req)
	}
	if rec := e.waitRecords(1, refusals(id, "connect", e.granted))[0]; rec["request"] != req.ID {
		t.Fatalf("the refusal does not name request %s: %v", req.ID, rec)
	}
	e.waitAudit(approvalRecord("approval_request", req.ID))
	// A second refusal of the same target names the same request: one
	// question per task and target while it is pending.
	wantPrefix(t, "again before the answer", e.probeConnect(cg, e.granted), "EPERM connect")
	if rec := e.waitRecords(2, refusals(id, "connect", e.granted))[1]; rec["request"] != req.ID {
		t.Fatalf("the second refusal does not name request %s: %v", req.ID, rec)
	}
	if reqs := e.requestsOf(id); len(reqs) != 1 {
		t.Fatalf("two refusals of one target opened %d requests: %+v", len(reqs), reqs)
	}

	ans := e.approve(req.ID, "5s")
	if ans.ID != req.ID || ans.Answer.For != "5s" || ans.Answer.By != "uid 0" || ans.Answer.UID == nil || *ans.Answer.UID != 0 {
		t.Fatalf("answer: %+v %+v", ans, ans.Answer)
	}
	var held <-chan string
	if features.SocketDestroy != "none" {
		held = e.holdInCgroup(cg, e.granted)
	}
	wantPrefix(t, "under the grant", e.probeConnect(cg, e.granted), "ok")
	e.waitAudit(func(r map[string]any) bool {
		return r["task"] == id && r["action"] == "connect" && r["verdict"] == "allow" &&
			r["reason"] == "allowed by an approval" && recordTarget(r) == e.granted
	})
	// The grant is the target that was refused, not more of the address.
	other := fmt.Sprintf("127.0.0.2:%d", req.Port+1)
	wantPrefix(t, "another port of the granted address", e.probeConnect(cg, other), "EPERM connect")

	pastEnd(ans)
	wantPrefix(t, "after the grant's end", e.probeConnect(cg, e.granted), "EPERM connect")
	end := e.waitAudit(approvalRecord("grant_ended", req.ID))
	if held != nil {
		if line := waitLine(t, "grant ended", held); line != "closed ECONNABORTED" {
			t.Fatalf("connection opened under the grant: %q, want it aborted", line)
		}
		if !strings.Contains(fmt.Sprint(end["reason"]), "reset 1 connection(s) opened under it (1 tcp, 0 udp)") {
			t.Fatalf("grant_ended record: %v", end)
		}
	} else {
		t.Logf("held connection not checked: this kernel cannot abort a workload's sockets: %s", features.SocketDestroyReason)
	}
	if end["task"] != id || recordTarget(end) != e.granted || !strings.HasPrefix(fmt.Sprint(end["reason"]), "grant's time is up") {
		t.Fatalf("grant_ended record: %v", end)
	}
	granted := e.waitAudit(approvalRecord("approval_granted", req.ID))
	if !strings.HasPrefix(fmt.Sprint(granted["reason"]), "approved by uid 0 for 5s, until ") || granted["task"] != id {
		t.Fatalf("approval_granted record: %v", granted)
	}
	for _, a := range e.requestsOf(id) {
		if a.ID == req.ID && a.State != "approved" {
			t.Fatalf("request after its grant: %+v", a)
		}
	}
}

// The same for an exec: the program a request names runs once approved,
// for no longer than its entry's max_ttl, and is refused after.
func TestApprovalExec(t *testing.T) {
	e := newApprovalsEnv(t)
	cg := e.workload("agent")
	id := e.startTask(cg, "")

	e.wantExecRefusedIn("before any answer", cg, e.tool)
	req := e.waitPending(id, "exec")
	dev, ino := kernelDev(t, e.tool)
	if req.Path != e.tool || req.Dev != dev || req.Ino != ino || !strings.HasPrefix(req.Target, e.tool+" (dev ") ||
		req.MaxTTL != "4s" || req.Identity != "spiffe://e2e.test/workload"+cg {
		t.Fatalf("request: %+v (want %s, dev %d ino %d)", req, e.tool, dev, ino)
	}
	rec := e.waitRecords(1, refusals(id, "exec", e.tool))[0]
	if rec["request"] != req.ID || rec["enforcement"] != execMode {
		t.Fatalf("the refusal does not name request %s: %v", req.ID, rec)
	}

	// Asked for an hour, granted the entry's max_ttl.
	ans := e.approve(req.ID, "1h")
	if ans.Answer.For != "4s" || ans.Answer.GrantEnds.After(time.Now().Add(4*time.Second)) {
		t.Fatalf("an hour asked of an entry with max_ttl 4s: %+v", ans.Answer)
	}
	if status, out := e.execIn(cg, e.tool); status != 0 {
		t.Fatalf("exec under the grant: status %d, %q", status, out)
	}
	e.waitAudit(func(r map[string]any) bool {
		return r["task"] == id && r["action"] == "exec" && r["verdict"] == "allow" &&
			r["reason"] == "allowed by an approval" && r["path"] == e.tool
	})
	// The grant is that program: another copy of the same bytes is not it.
	e.wantExecRefusedIn("another copy under the grant", cg, e.strayTool)

	pastEnd(ans)
	e.wantExecRefusedIn("after the grant's end", cg, e.tool)
	end := e.waitAudit(approvalRecord("grant_ended", req.ID))
	if end["task"] != id || end["path"] != e.tool {
		t.Fatalf("grant_ended record: %v", end)
	}
	e.waitAudit(approvalRecord("approval_request", req.ID))
	e.waitAudit(approvalRecord("approval_granted", req.ID))
}

// A denial is recorded with its reason, and the same refusal right after
// opens no new request: the cooldown.
func TestApprovalDenyCooldown(t *testing.T) {
	e := newApprovalsEnv(t)
	cg := e.workload("agent")
	id := e.startTask(cg, "")

	wantPrefix(t, "before any answer", e.probeConnect(cg, e.granted), "EPERM connect")
	req := e.waitPending(id, "connect")
	if out, err := e.cli("deny", req.ID, "--reason", "not this one"); err != nil || !strings.HasPrefix(out, "denied "+req.ID) {
		t.Fatalf("bridle deny: %v: %s", err, out)
	}
	rec := e.waitAudit(approvalRecord("approval_denied", req.ID))
	if rec["reason"] != "denied by uid 0: not this one" || rec["verdict"] != "deny" || rec["task"] != id || recordTarget(rec) != e.granted {
		t.Fatalf("approval_denied record: %v", rec)
	}
	reqs := e.requestsOf(id)
	if len(reqs) != 1 || reqs[0].State != "denied" || reqs[0].Answer == nil || reqs[0].Answer.Reason != "not this one" {
		t.Fatalf("requests after the denial: %+v", reqs)
	}

	wantPrefix(t, "after the denial", e.probeConnect(cg, e.granted), "EPERM connect")
	again := e.waitRecords(2, refusals(id, "connect", e.granted))[1]
	if _, ok := again["request"]; ok {
		t.Fatalf("a refusal in the cooldown names a request: %v", again)
	}
	if reqs := e.requestsOf(id); len(reqs) != 1 {
		t.Fatalf("a refusal in the cooldown opened a request: %+v", reqs)
	}
	// The denied request cannot be approved after all.
	if out, err := e.cli("approve", req.ID, "--for", "2s"); err == nil || !strings.Contains(out, "409") {
		t.Fatalf("approve a denied request: %v: %s", err, out)
	}
}

// What no approvable entry covers stays a plain refusal and asks nobody.
func TestApprovalUncoveredOpensNothing(t *testing.T) {
	e := newApprovalsEnv(t)
	cg := e.workload("agent")
	id := e.startTask(cg, "")

	wantPrefix(t, "an address no entry covers", e.probeConnect(cg, e.plain), "EPERM connect")
	// stray is approvable only in a sub-agent's policy.
	wantPrefix(t, "an address only a sub-agent's entry names", e.probeConnect(cg, e.stray), "EPERM connect")
	e.wantExecRefusedIn("a program no entry covers", cg, e.strayTool)
	for _, rec := range []map[string]any{
		e.waitRecords(1, refusals(id, "connect", e.plain))[0],
		e.waitRecords(1, refusals(id, "connect", e.stray))[0],
		e.waitRecords(1, refusals(id, "exec", e.strayTool))[0],
	} {
		if _, ok := rec["request"]; ok {
			t.Fatalf("a refusal no entry covers names a request: %v", rec)
		}
	}
	if reqs := e.approvals(); len(reqs) != 0 {
		t.Fatalf("requests opened for what no entry covers: %+v", reqs)
	}
	if recs := e.records(func(r map[string]any) bool { return r["action"] == "approval_request" }); len(recs) != 0 {
		t.Fatalf("approval_request records: %v", recs)
	}
}

// Only the entry's approvers answer: an admin of the task API (and root)
// who is not among them is refused with 403 and a record, and the request
// stays pending until an approver answers; the workload cannot answer at
// all.
func TestApprovalNonApproverRefused(t *testing.T) {
	e := newApprovalsEnv(t)
	cg := e.workload("agent")
	id := e.startTask(cg, "")

	wantPrefix(t, "before any answer", e.probeConnect(cg, e.guarded), "EPERM connect")
	req := e.waitPending(id, "connect")
	if req.Target != "tcp "+e.guarded {
		t.Fatalf("request: %+v", req)
	}
	for _, c := range []struct {
		uid  uint32
		args []string
	}{
		{nobodyID, []string{"approve", req.ID, "--for", "2s"}},
		{nobodyID, []string{"deny", req.ID, "--reason", "not mine to say"}},
		{0, []string{"approve", req.ID, "--for", "2s"}},
	} {
		out, err := e.cliAs(c.uid, c.args...)
		if err == nil || !strings.Contains(out, "403") || !strings.Contains(out, fmt.Sprintf("uid %d may not answer approval request %s", c.uid, req.ID)) {
			t.Fatalf("bridle %v as uid %d (not an approver): %v: %s", c.args, c.uid, err, out)
		}
		path := fmt.Sprintf("POST /v1/approvals/%s/%s", req.ID, c.args[0])
		e.waitAudit(func(r map[string]any) bool {
			return r["action"] == "api" && r["verdict"] == "deny" && r["path"] == path &&
				strings.Contains(fmt.Sprint(r["reason"]), fmt.Sprintf("uid %d may not answer", c.uid))
		})
	}
	// The manager's own record of a refused answer names the request.
	if recs := e.waitRecords(3, func(r map[string]any) bool {
		return r["action"] == "api" && r["verdict"] == "deny" && r["request"] == req.ID && r["task"] == id
	}); len(recs) != 3 {
		t.Fatalf("refused answers recorded with the request: %v", recs)
	}
	// The workload itself is refused before any approver check.
	stdout, stderr, status := e.inCgroup(cg, false, bridleBin, "approve", req.ID, "--for", "2s", "--socket", e.socket)
	if status == 0 || !strings.Contains(stdout+stderr, "403") || !strings.Contains(stdout+stderr, "workload") {
		t.Fatalf("bridle approve from inside the workload: status %d: %s%s", status, stdout, stderr)
	}
	reqs := e.requestsOf(id)
	if len(reqs) != 1 || reqs[0].ID != req.ID || reqs[0].State != "pending" || reqs[0].Answer != nil {
		t.Fatalf("request after refused answers: %+v", reqs)
	}
	wantPrefix(t, "after refused answers", e.probeConnect(cg, e.guarded), "EPERM connect")

	// The entry's approver answers.
	out, err := e.cliAs(approverUID, "approve", req.ID, "--for", "5s")
	if err != nil || !strings.HasPrefix(out, "approved "+req.ID) {
		t.Fatalf("bridle approve as the approver (uid %d): %v: %s", approverUID, err, out)
	}
	wantPrefix(t, "approved by the approver", e.probeConnect(cg, e.guarded), "ok")
	rec := e.waitAudit(approvalRecord("approval_granted", req.ID))
	if !strings.HasPrefix(fmt.Sprint(rec["reason"]), fmt.Sprintf("approved by uid %d for 5s", approverUID)) {
		t.Fatalf("approval_granted record: %v", rec)
	}
}

// A sub-agent cannot be approved beyond its parent: its policy's entries
// outside what the parent's envelope or approvable set covers open no
// request, and an entry inside the parent's approvable set is capped by
// the parent's max_ttl. The kernel never grants the child more.
func TestApprovalSubAgentWithinParent(t *testing.T) {
	e := newApprovalsEnv(t)
	parentCg, childCg := e.workload("parent"), e.workload("child")
	parent := e.startTask(parentCg, "")
	child := e.startTask(childCg, parent)

	// Outside the parent: no request, however often asked.
	for i := 1; i <= 2; i++ {
		wantPrefix(t, "child to an address beyond its parent", e.probeConnect(childCg, e.stray), "EPERM connect")
		e.wantExecRefusedIn("child's program beyond its parent", childCg, e.strayTool)
		for _, rec := range []map[string]any{
			e.waitRecords(i, refusals(child, "connect", e.stray))[i-1],
			e.waitRecords(i, refusals(child, "exec", e.strayTool))[i-1],
		} {
			if _, ok := rec["request"]; ok {
				t.Fatalf("a child's refusal beyond its parent names a request: %v", rec)
			}
		}
	}
	if reqs := e.approvals(); len(reqs) != 0 {
		t.Fatalf("requests beyond the parent: %+v", reqs)
	}

	// Inside the parent's approvable set: asked, and capped by the
	// parent's entry (5s), not the child's (1h).
	wantPrefix(t, "child to an address its parent may ask for", e.probeConnect(childCg, e.granted), "EPERM connect")
	req := e.waitPending(child, "connect")
	if req.Target != "tcp "+e.granted || req.MaxTTL != "5s" {
		t.Fatalf("child's request: %+v", req)
	}
	ans := e.approve(req.ID, "1h")
	if ans.Answer.For != "5s" || ans.Answer.GrantEnds.After(time.Now().Add(5*time.Second)) {
		t.Fatalf("an hour asked for a child whose parent's entry has max_ttl 5s: %+v", ans.Answer)
	}
	wantPrefix(t, "child under its grant", e.probeConnect(childCg, e.granted), "ok")
	// The grant is the child's alone, and takes nothing else along.
	wantPrefix(t, "parent while its child holds a grant", e.probeConnect(parentCg, e.granted), "EPERM connect")
	wantPrefix(t, "child beyond its parent while it holds a grant", e.probeConnect(childCg, e.stray), "EPERM connect")
	e.wantExecRefusedIn("child's program beyond its parent while it holds a grant", childCg, e.strayTool)

	pastEnd(ans)
	wantPrefix(t, "child after its grant's end", e.probeConnect(childCg, e.granted), "EPERM connect")
	e.waitAudit(approvalRecord("grant_ended", req.ID))
	// The parent's own refusal above asked too, for what it may ask for.
	for _, a := range e.approvals() {
		if a.Target != "tcp "+e.granted {
			t.Fatalf("a request beyond the parent: %+v", a)
		}
	}
}

// bridled killed between an approval and the grant's end: the kernel ends
// the grant on time by itself, and the next bridled resets what was opened
// under it and records the end.
func TestApprovalGrantEndsWhileDaemonDown(t *testing.T) {
	e := newApprovalsEnv(t)
	cg := e.workload("agent")
	id := e.startTask(cg, "")

	wantPrefix(t, "before any answer", e.probeConnect(cg, e.granted), "EPERM connect")
	req := e.waitPending(id, "connect")
	ans := e.approve(req.ID, "5s")
	var held <-chan string
	if features.SocketDestroy != "none" {
		held = e.holdInCgroup(cg, e.granted)
	}
	e.stop(syscall.SIGKILL)
	if time.Now().After(ans.Answer.GrantEnds) {
		t.Fatalf("bridled was killed only after the grant's end (%v): too slow to test anything", ans.Answer.GrantEnds)
	}

	pastEnd(ans)
	wantPrefix(t, "after the grant's end, bridled down", e.probeConnect(cg, e.granted), "EPERM connect")
	if recs := e.records(approvalRecord("grant_ended", req.ID)); len(recs) != 0 {
		t.Fatalf("grant_ended recorded before the restart: %v", recs)
	}

	e.start()
	end := e.waitAudit(approvalRecord("grant_ended", req.ID))
	if end["task"] != id || recordTarget(end) != e.granted {
		t.Fatalf("grant_ended record after the restart: %v", end)
	}
	if held != nil {
		if line := waitLine(t, "grant ended while bridled was down", held); line != "closed ECONNABORTED" {
			t.Fatalf("connection opened under the grant: %q, want it aborted after the restart", line)
		}
	}
	wantPrefix(t, "after the restart", e.probeConnect(cg, e.granted), "EPERM connect")
	// The restored task may ask again: its refusal opens a new request.
	if r := e.waitPending(id, "connect"); r.ID == req.ID {
		t.Fatalf("the restored task's refusal matched the old request: %+v", r)
	}
}

// A grant never outlives its task: ending the task ends the grant, resets
// the connection opened under it, and leaves nothing for a later task of
// the same workload.
func TestApprovalGrantEndsWithTask(t *testing.T) {
	e := newApprovalsEnv(t)
	cg := e.workload("agent")
	id := e.startTask(cg, "")

	wantPrefix(t, "before any answer", e.probeConnect(cg, e.granted), "EPERM connect")
	req := e.waitPending(id, "connect")
	e.approve(req.ID, "5s")
	var held <-chan string
	if features.SocketDestroy != "none" {
		held = e.holdInCgroup(cg, e.granted)
	}
	if out, err := e.bridle("end", id); err != nil {
		t.Fatalf("task end: %v: %s", err, out)
	}
	end := e.waitAudit(approvalRecord("grant_ended", req.ID))
	if !strings.HasPrefix(fmt.Sprint(end["reason"]), "task ended") || end["task"] != id {
		t.Fatalf("grant_ended record: %v", end)
	}
	if held != nil {
		if line := waitLine(t, "task ended under a grant", held); line != "closed ECONNABORTED" {
			t.Fatalf("connection opened under the grant: %q, want it aborted", line)
		}
	}
	next := e.startTask(cg, "")
	wantPrefix(t, "the workload's next task", e.probeConnect(cg, e.granted), "EPERM connect")
	if r := e.waitPending(next, "connect"); r.ID == req.ID {
		t.Fatalf("the next task's refusal matched the ended task's request: %+v", r)
	}
}

// `bridle run` through bridled says, on its terminal, when its workload's
// refusal opened a request, and how to answer it. The workload lives on
// after the refusal, as an agent does: a task that ended before its
// refusal was read has nothing left to grant, and opens no request.
func TestApprovalRunLiveLine(t *testing.T) {
	e := newApprovalsEnv(t)
	r := e.runVia([]string{"--intent", "run asks"}, probeBin, "linger", "2", "tcp", e.granted)
	wantRefused(t, r, "connect", "tcp")
	if !strings.Contains(r.stderr, "is pending: bridle approve req-") {
		t.Fatalf("bridle run did not name the request it opened:\n%s", r.stderr)
	}
}
