package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/tests/spiretest"
)

const (
	agentA = "spiffe://example.org/agent/a"
	agentB = "spiffe://example.org/agent/b"
)

// spireDaemon is a bridled whose workloads get their identities from a
// real SPIRE agent, with a policy that gives agent A one port and agent B
// another, and nothing to an identity SPIRE did not attest.
type spireDaemon struct {
	*daemonEnv
	spire            *spiretest.SPIRE
	portA, portB     int
	targetA, targetB string
}

func newSPIREDaemon(t *testing.T, attest string, hold time.Duration) *spireDaemon {
	t.Helper()
	spiretest.Bins(t)
	sp := spiretest.Start(t, spiretest.Options{Delegates: []string{"spiffe://example.org/bridled"}})
	e := newDaemonEnv(t)
	s := &spireDaemon{daemonEnv: e, spire: sp}
	s.portA = tcpListener(t, "tcp4", "127.0.0.1:0")
	s.portB = tcpListener(t, "tcp4", "127.0.0.1:0")
	s.targetA, s.targetB = fmt.Sprintf("127.0.0.1:%d", s.portA), fmt.Sprintf("127.0.0.1:%d", s.portB)
	api := fmt.Sprintf(`{"unix": %q}`, e.socket)
	if !features.UnixHooks {
		api = ""
	}
	pol := fmt.Sprintf(`package bridle

binaries := [{"path": %[1]q}, {"path": %[2]q}]

baseline := {"egress": [%[3]s], "exec": binaries}

envelope := {"egress": [{"protocol": "tcp", "cidr": "127.0.0.1/32", "ports": [%[4]d]}], "exec": binaries, "ttl": "1h"} if {
	input.identity == %[6]q
}

envelope := {"egress": [{"protocol": "tcp", "cidr": "127.0.0.1/32", "ports": [%[5]d]}], "exec": binaries, "ttl": "1h"} if {
	input.identity == %[7]q
}

deny contains "only identities SPIRE attested get a task" if input.identity_source != "spire"
`, probeBin, bridleBin, api, s.portA, s.portB, agentA, agentB)
	if err := os.WriteFile(filepath.Join(e.dir, "policy", "test.rego"), []byte(pol), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(e.config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "identity:\n  source: spire\n  spire:\n    admin_socket: %s\n    attest: %s\n    hold: %s\n    timeout: 20s\n",
		sp.AdminSocket, attest, hold)
	f.Close()
	return s
}

// Two workloads, one told apart by its cgroup and one by the uid its
// processes run as, get different SPIFFE IDs from SPIRE and so different
// envelopes; the identity and its source are in the task list and in every
// decision record. Deleting a workload's entry in SPIRE ends its task.
func TestIdentityFromSPIRE(t *testing.T) {
	s := newSPIREDaemon(t, "selectors", time.Minute)
	s.start()
	cgA, cgB := s.workload("a"), s.workload("b")
	entryA := s.spire.CreateEntry(t, agentA, "bridle:cgroup:"+cgA)
	s.spire.CreateEntry(t, agentB, "bridle:uid:4302")
	// B's process runs as uid 4302 before its task: that is what bridled
	// attests.
	stopB := s.sleepIn(cgB, 4302)
	defer stopB()

	idA := s.startTaskEventually(cgA)
	idB := s.startTaskEventually(cgB)
	for _, tk := range s.listTasks() {
		want := map[string]string{idA: agentA, idB: agentB}[tk.ID]
		if tk.Identity != want || tk.IdentitySource != "spire" {
			t.Fatalf("task %s: identity %q from %q, want %q from spire", tk.ID, tk.Identity, tk.IdentitySource, want)
		}
	}
	wantPrefix(t, "A to its port", s.probeConnect(cgA, s.targetA), "ok")
	wantPrefix(t, "A to B's port", s.probeConnect(cgA, s.targetB), "EPERM connect")
	wantPrefix(t, "B to its port", s.probeAs(cgB, 4302, s.targetB), "ok")
	wantPrefix(t, "B to A's port", s.probeAs(cgB, 4302, s.targetA), "EPERM connect")

	for _, want := range []struct{ action, verdict, task, id string }{
		{"task_start", "allow", idA, agentA},
		{"connect", "deny", idA, agentA},
		{"connect", "deny", idB, agentB},
	} {
		rec := s.waitAudit(func(r map[string]any) bool {
			return r["action"] == want.action && r["verdict"] == want.verdict && r["task"] == want.task
		})
		if rec["identity"] != want.id || rec["identity_source"] != "spire" {
			t.Fatalf("%s record of %s: identity %v from %v", want.action, want.task, rec["identity"], rec["identity_source"])
		}
	}

	// The entry goes: SPIRE no longer names A, and A's grants end.
	s.spire.DeleteEntry(t, entryA)
	rec := s.waitAuditFor(30*time.Second, func(r map[string]any) bool {
		return r["action"] == "task_end" && r["task"] == idA
	})
	if !strings.Contains(fmt.Sprint(rec["reason"]), "withdrawn") || rec["identity_source"] != "spire" {
		t.Fatalf("task end record: %v", rec)
	}
	wantPrefix(t, "A after its entry was deleted", s.probeConnect(cgA, s.targetA), "EPERM connect")
	// A new task for A is refused: SPIRE names no identity for it.
	if out, err := s.bridle("start", "--workload", cgA, "--intent", "again"); err == nil || !strings.Contains(out, "503") {
		t.Fatalf("task for a workload SPIRE names nothing: %v %s", err, out)
	}
	wantPrefix(t, "B unaffected", s.probeAs(cgB, 4302, s.targetB), "ok")
}

// SPIRE's agent stops: bridled says DEGRADED, the workload keeps its last
// identity (and its task) for the hold time, then falls to the baseline;
// no new task starts meanwhile. The agent back, the source recovers.
func TestIdentitySPIREUnreachable(t *testing.T) {
	const hold = 6 * time.Second
	s := newSPIREDaemon(t, "selectors", hold)
	s.start()
	cgA := s.workload("a")
	s.spire.CreateEntry(t, agentA, "bridle:cgroup:"+cgA)
	cgB := s.workload("b")
	s.spire.CreateEntry(t, agentB, "bridle:cgroup:"+cgB)
	id := s.startTaskEventually(cgA)

	s.spire.StopAgent(t)
	stopped := time.Now()
	s.waitDegraded(true, "identity source spire degraded")
	if time.Since(stopped) < hold-time.Second {
		wantPrefix(t, "within the hold time", s.probeConnect(cgA, s.targetA), "ok")
	}
	if out, err := s.bridle("start", "--workload", cgB, "--intent", "x"); err == nil || !strings.Contains(out, "503") {
		t.Fatalf("task start with SPIRE down: %v %s", err, out)
	}
	rec := s.waitAuditFor(hold+20*time.Second, func(r map[string]any) bool {
		return r["action"] == "task_end" && r["task"] == id
	})
	if held := time.Since(stopped); held < hold {
		t.Fatalf("task ended %v after SPIRE stopped, before the hold time %v: %v", held, hold, rec)
	}
	if !strings.Contains(fmt.Sprint(rec["reason"]), "SPIRE unreachable") {
		t.Fatalf("task end record: %v", rec)
	}
	wantPrefix(t, "after the hold time: the baseline", s.probeConnect(cgA, s.targetA), "EPERM connect")

	s.spire.StartAgent(t)
	s.startTaskEventually(cgB)
	s.waitDegraded(false, "identity source")
	wantPrefix(t, "B under SPIRE again", s.probeConnect(cgB, s.targetB), "ok")
}

// startTaskEventually starts a task, retrying while SPIRE has not yet
// synced the entries just created (503: no identity yet).
func (s *spireDaemon) startTaskEventually(cg string) string {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := s.bridle("start", "--workload", cg, "--intent", "identity test")
		if err == nil && strings.HasPrefix(out, "t-") {
			return out
		}
		if time.Now().After(deadline) || !strings.Contains(out, "503") {
			s.t.Fatalf("task start for %s: %v: %s", cg, err, out)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// sleepIn runs a process as uid in cg until the returned func is called.
func (s *spireDaemon) sleepIn(cg string, uid uint32) func() {
	s.t.Helper()
	c := s.commandIn(cg, uid, probeBin, "sleep", "600")
	if err := c.Start(); err != nil {
		s.t.Fatal(err)
	}
	return func() { _ = c.Process.Kill(); _ = c.Wait() }
}

// probeAs is probeConnect as uid.
func (s *spireDaemon) probeAs(cg string, uid uint32, addr string) string {
	s.t.Helper()
	c := s.commandIn(cg, uid, probeBin, "tcp", addr)
	var out []byte
	inNetns(s.t, func() { out, _ = c.Output() })
	line, _, _ := strings.Cut(string(out), "\n")
	return line
}

// waitDegraded waits until the status's degraded list does (or, with
// want false, does not) hold a line containing text.
func (s *spireDaemon) waitDegraded(want bool, text string) {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := s.status()
		found := false
		if err == nil {
			for _, d := range st["degraded"].([]any) {
				found = found || strings.Contains(fmt.Sprint(d), text)
			}
		}
		if err == nil && found == want {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("status degraded %q: want present %v; status %v, %v", text, want, st, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// `bridle run` through a bridled under SPIRE: the run's workload has no
// process when its task starts, and is attested by the uid the kernel
// reported for the caller (bridle:started-by-uid); its records carry the
// identity SPIRE gave.
func TestIdentityRunUnderSPIRE(t *testing.T) {
	s := newSPIREDaemon(t, "selectors", time.Minute)
	s.start()
	s.spire.CreateEntry(t, agentA, fmt.Sprintf("bridle:started-by-uid:%d", os.Getuid()))
	// Until the agent has synced both entries (bridled's as a delegate and
	// the run's), bridled answers 503, as startTaskEventually expects.
	var r result
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		r = s.runVia([]string{"--intent", "run under spire"}, probeBin, "tcp", s.targetA)
		if !strings.Contains(r.stderr, "bridled refused (503)") || time.Now().After(deadline) {
			break
		}
	}
	wantAllowed(t, r)
	r = s.runVia([]string{"--intent", "run under spire"}, probeBin, "tcp", s.targetB)
	rec := wantRefused(t, r, "connect", "tcp")
	if rec.Identity != agentA || rec.IdentitySource != "spire" {
		t.Fatalf("a run's refusal: identity %q from %q, want %s from spire", rec.Identity, rec.IdentitySource, agentA)
	}
}

// bridled is killed while a workload's task runs under a SPIRE identity,
// and the entry is deleted while it is down: the restarted bridled follows
// the restored task's identity again, finds it withdrawn, and ends it.
func TestIdentitySPIREAfterRestart(t *testing.T) {
	s := newSPIREDaemon(t, "selectors", time.Minute)
	s.start()
	cgA := s.workload("a")
	entry := s.spire.CreateEntry(t, agentA, "bridle:cgroup:"+cgA)
	id := s.startTaskEventually(cgA)
	s.stop(syscall.SIGKILL)
	s.spire.DeleteEntry(t, entry)
	s.start()
	rec := s.waitAuditFor(30*time.Second, func(r map[string]any) bool {
		return r["action"] == "task_end" && r["task"] == id
	})
	if !strings.Contains(fmt.Sprint(rec["reason"]), "withdrawn") {
		t.Fatalf("task end record: %v", rec)
	}
	wantPrefix(t, "after the restored task ended", s.probeConnect(cgA, s.targetA), "EPERM connect")
}
