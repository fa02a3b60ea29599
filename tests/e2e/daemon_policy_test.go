package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/daemon/api"
)

// runVia runs `bridle run` against this daemon's socket in the test
// namespace, as the workload user.
func (e *daemonEnv) runVia(flags []string, cmd ...string) result {
	e.t.Helper()
	return bridleRun(e.t, append([]string{"--socket", e.socket}, flags...), cmd...)
}

// With bridled running, `bridle run` hands its workload to the daemon: the
// node's policy decides the task, the records land in the node's audit
// log, and --allow-* flags can only narrow what the policy grants.
func TestRunThroughDaemon(t *testing.T) {
	e := newDaemonEnv(t)
	e.start()
	port := tcpListener(t, "tcp4", "127.0.0.1:0")
	target := fmt.Sprintf("127.0.0.1:%d", port)

	r := e.runVia([]string{"--intent", "run via daemon", "--log-allowed", "-v"}, probeBin, "tcp", target)
	wantAllowed(t, r)
	if !strings.Contains(r.stderr, "enforced by bridled at "+e.socket) {
		t.Fatalf("run did not say the daemon enforced it:\n%s", r.stderr)
	}
	rec := wantRecord(t, r, "allow", "connect", "tcp")
	if !strings.HasPrefix(rec.Workload, e.root+"/run-t-") || !strings.HasPrefix(rec.PolicyRevision, "sha256:") {
		t.Fatalf("record of a run through the daemon: %+v", rec)
	}
	// The node's own audit log has the same decision, and the task's start
	// and end.
	e.waitAudit(func(m map[string]any) bool {
		return m["action"] == "connect" && m["verdict"] == "allow" && m["task"] == rec.Task
	})
	e.waitAudit(func(m map[string]any) bool { return m["action"] == "task_start" && m["task"] == rec.Task })
	e.waitAudit(func(m map[string]any) bool { return m["action"] == "task_end" && m["task"] == rec.Task })
	if len(e.listTasks()) != 0 {
		t.Fatalf("the run's task outlived it: %+v", e.listTasks())
	}

	// Flags cap the policy: a port the flags leave out is refused although
	// the policy allows every port of 127.0.0.1.
	r = e.runVia([]string{"--intent", "capped", "--allow-connect", "tcp:127.0.0.1:1"}, probeBin, "tcp", target)
	deny := wantRefused(t, r, "connect", "tcp")
	if deny.Task == "" || !strings.Contains(r.stderr, "--allow-connect tcp:127.0.0.1:"+fmt.Sprint(port)) {
		t.Fatalf("refusal under capped grants: %+v\n%s", deny, r.stderr)
	}
	// Flags cannot widen it: a destination the policy does not grant stays
	// refused with the flag given.
	r = e.runVia([]string{"--intent", "widen", "--allow-connect", "tcp:10.0.0.0/8", "--allow-connect", "tcp:" + target}, probeBin, "tcp", "10.1.2.3:80")
	wantRefused(t, r, "connect", "tcp")

	// The daemon's policy decides: --policy and --identity are refused.
	r = e.runVia([]string{"--intent", "own policy", "--policy", e.dir}, probeBin, "tcp", target)
	if r.status == 0 || !strings.Contains(r.stderr, "--standalone") {
		t.Fatalf("--policy with a daemon: status %d\n%s", r.status, r.stderr)
	}
}

// bridle run --policy decides the task's envelope with a Rego policy,
// without a daemon.
func TestRunWithPolicy(t *testing.T) {
	dir := t.TempDir()
	port := tcpListener(t, "tcp4", "127.0.0.1:0")
	other := tcpListener(t, "tcp4", "127.0.0.1:0")
	pol := fmt.Sprintf(`package bridle

envelope := {
	"egress": [{"protocol": "tcp", "cidr": "127.0.0.1/32", "ports": [%d]}],
	"exec": [{"path": %q}],
}

deny contains "say what the run is for" if input.task.intent == ""
`, port, probeBin)
	if err := os.WriteFile(filepath.Join(dir, "run.rego"), []byte(pol), 0o644); err != nil {
		t.Fatal(err)
	}
	flags := []string{"--standalone", "--policy", dir, "--intent", "policy run"}
	wantAllowed(t, bridleRun(t, flags, probeBin, "tcp", fmt.Sprintf("127.0.0.1:%d", port)))
	r := bridleRun(t, flags, probeBin, "tcp", fmt.Sprintf("127.0.0.1:%d", other))
	rec := wantRefused(t, r, "connect", "tcp")
	if !strings.HasPrefix(rec.PolicyRevision, "sha256:") {
		t.Fatalf("record under --policy: %+v", rec)
	}
	// The policy's deny rules refuse the task before anything runs.
	r = bridleRun(t, []string{"--standalone", "--policy", dir}, probeBin, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if r.status == 0 || !strings.Contains(r.stderr, "say what the run is for") || r.stdout != "" {
		t.Fatalf("task refused by policy: status %d stdout %q\n%s", r.status, r.stdout, r.stderr)
	}
	// A policy that does not compile is refused with its file and line.
	if err := os.WriteFile(filepath.Join(dir, "run.rego"), []byte("package bridle\n\nenvelope := {\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = bridleRun(t, flags, probeBin, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if r.status == 0 || !strings.Contains(r.stderr, "run.rego:") {
		t.Fatalf("bad policy: status %d\n%s", r.status, r.stderr)
	}
}

// SIGHUP reloads the policy directory. A bad policy is rejected with its
// file and line and the policy in force keeps deciding; a good one decides
// the tasks started after it (tasks in force keep their envelope) and
// replaces the baseline.
func TestDaemonReloadsPolicy(t *testing.T) {
	e := newDaemonEnv(t)
	e.start()
	target := fmt.Sprintf("127.0.0.1:%d", tcpListener(t, "tcp4", "127.0.0.1:0"))
	policyFile := filepath.Join(e.dir, "policy", "test.rego")
	st, err := e.status()
	if err != nil {
		t.Fatal(err)
	}
	oldRev := st["policy"].(map[string]any)["revision"].(string)

	if err := os.WriteFile(policyFile, []byte("package bridle\n\nenvelope := {\"egress\": [}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.hup()
	e.waitLog("policy reload failed", "test.rego:3")
	st, _ = e.status()
	pol := st["policy"].(map[string]any)
	if pol["revision"] != oldRev || !strings.Contains(fmt.Sprint(pol["last_error"]), "test.rego:3") ||
		!strings.Contains(fmt.Sprint(st["degraded"]), "last policy load failed") {
		t.Fatalf("after a bad policy: %v", st)
	}
	out, err := exec.Command(bridleBin, "status", "--socket", e.socket).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "bridled:       running at "+e.socket) ||
		!strings.Contains(string(out), "DEGRADED:      last policy load failed") {
		t.Fatalf("bridle status after a bad policy: %v\n%s", err, out)
	}
	w1 := e.workload("w1")
	e.startTask(w1)
	wantPrefix(t, "task under the policy in force", e.probeConnect(w1, target), "ok")

	// The new policy grants tasks nothing on the network.
	newPolicy := strings.Replace(testPolicy(e.socket), `{"protocol": "tcp", "cidr": "127.0.0.1/32"}`, `{"protocol": "udp", "cidr": "192.0.2.1/32"}`, 1)
	if err := os.WriteFile(policyFile, []byte(newPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	e.hup()
	e.waitLog("policy reloaded")
	st, _ = e.status()
	pol = st["policy"].(map[string]any)
	newRev, _ := pol["revision"].(string)
	if newRev == oldRev || pol["baseline_revision"] != newRev || pol["last_error"] != nil {
		t.Fatalf("after a good policy: %v", st)
	}
	w2 := e.workload("w2")
	id2 := e.startTask(w2)
	wantPrefix(t, "task under the new policy", e.probeConnect(w2, target), "EPERM connect")
	wantPrefix(t, "task started before the reload", e.probeConnect(w1, target), "ok")
	for _, task := range e.listTasks() {
		if task.ID == id2 && task.PolicyRevision != newRev {
			t.Fatalf("new task decided by %s, want %s", task.PolicyRevision, newRev)
		}
	}
}

func (e *daemonEnv) hup() {
	e.t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		e.t.Fatal(err)
	}
}

// bundleServer serves one OPA bundle on loopback over https, replaceable
// while bridled polls it; caFile is its certificate, for ca_cert_file.
type bundleServer struct {
	mu       sync.Mutex
	revision string
	tarball  []byte
	url      string
	caFile   string
}

func newBundleServer(t *testing.T) *bundleServer {
	t.Helper()
	b := &bundleServer{}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		rev, body := b.revision, b.tarball
		b.mu.Unlock()
		if r.Header.Get("If-None-Match") == rev {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("ETag", rev)
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	b.url = srv.URL
	b.caFile = filepath.Join(t.TempDir(), "bundle-ca.pem")
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(b.caFile, ca, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

// set publishes a bundle holding one policy file.
func (b *bundleServer) set(t *testing.T, revision, rego string) {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for name, body := range map[string]string{
		"/.manifest":   fmt.Sprintf(`{"revision": %q, "roots": ["bridle"]}`, revision),
		"/policy.rego": rego,
	} {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body))}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	b.revision, b.tarball = revision, buf.Bytes()
	b.mu.Unlock()
}

// bridled follows a bundle service: an update changes the envelope of the
// tasks started after it, and every decision names the bundle revision.
func TestDaemonFollowsBundle(t *testing.T) {
	e := newDaemonEnv(t)
	srv := newBundleServer(t)
	srv.set(t, "rev-1", testPolicy(e.socket))
	cfg, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	lines := []string{}
	for _, l := range strings.Split(string(cfg), "\n") {
		if !strings.HasPrefix(l, "policy_dir:") {
			lines = append(lines, l)
		}
	}
	lines = append(lines, "policy_bundle:", "  url: "+srv.url, "  resource: bundles/bridle.tar.gz", "  ca_cert_file: "+srv.caFile,
		"  poll_min: 200ms", "  poll_max: 300ms", "metrics_listen: 127.0.0.1:0")
	if err := os.WriteFile(e.config, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.start()
	target := fmt.Sprintf("127.0.0.1:%d", tcpListener(t, "tcp4", "127.0.0.1:0"))
	w1 := e.workload("w1")
	e.startTask(w1)
	wantPrefix(t, "task under rev-1", e.probeConnect(w1, target), "ok")
	e.waitAudit(func(m map[string]any) bool { return m["action"] == "task_start" && m["policy_revision"] == "rev-1" })

	srv.set(t, "rev-2", strings.Replace(testPolicy(e.socket), `{"protocol": "tcp", "cidr": "127.0.0.1/32"}`, `{"protocol": "udp", "cidr": "192.0.2.1/32"}`, 1))
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := e.status()
		if err == nil && st["policy"].(map[string]any)["revision"] == "rev-2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bridled did not take rev-2 within 20s: %v %v", st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	w2 := e.workload("w2")
	e.startTask(w2)
	wantPrefix(t, "task under rev-2", e.probeConnect(w2, target), "EPERM connect")
	rec := e.waitAudit(func(m map[string]any) bool {
		return m["action"] == "connect" && m["verdict"] == "deny" && m["workload"] == w2
	})
	if rec["policy_revision"] != "rev-2" {
		t.Fatalf("decision under rev-2 names %v", rec["policy_revision"])
	}
	// A broken bundle is refused; rev-2 stays in force.
	srv.set(t, "rev-3", "package bridle\n\nenvelope := {\n")
	deadline = time.Now().Add(20 * time.Second)
	for {
		st, err := e.status()
		if err != nil {
			t.Fatal(err)
		}
		pol := st["policy"].(map[string]any)
		if pol["last_error"] != nil {
			if pol["revision"] != "rev-2" || !strings.Contains(pol["last_error"].(string), "policy.rego:") {
				t.Fatalf("after a broken bundle: %v", pol)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the broken bundle was never reported: %v", pol)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The metrics say the same.
	metrics := e.scrapeMetrics()
	for _, want := range []string{
		"bridle_tasks_started_total 2",
		"bridle_tasks_active 2",
		`bridle_policy_info{revision="rev-2"} 1`,
		`bridle_policy_loads_total{result="failure"}`,
		"bridle_ring_drops_total 0",
		"bridle_policy_eval_duration_seconds_count 2",
		"bridle_task_apply_duration_seconds_count 2",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if !regexp.MustCompile(`bridle_decisions_total\{action="connect",verdict="deny"\} [1-9]`).MatchString(metrics) {
		t.Errorf("metrics count no refused connect:\n%s", metrics)
	}
}

// scrapeMetrics reads bridled's Prometheus endpoint, found in its log.
func (e *daemonEnv) scrapeMetrics() string {
	e.t.Helper()
	e.waitLog("serving metrics")
	m := regexp.MustCompile(`serving metrics" address=(\S+)`).FindStringSubmatch(e.logs.String())
	if m == nil {
		e.t.Fatalf("no metrics address in the log:\n%s", e.logs.String())
	}
	resp, err := http.Get("http://" + m[1] + "/metrics")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return string(b)
}

// A sub-agent's task gets at most what its parent's task has, lives no
// longer, and ends when the parent's does.
func TestDaemonSubAgentWithinParent(t *testing.T) {
	e := newDaemonEnv(t)
	e.start()
	p1 := tcpListener(t, "tcp4", "127.0.0.1:0")
	p2 := tcpListener(t, "tcp4", "127.0.0.1:0")
	t1, t2 := fmt.Sprintf("127.0.0.1:%d", p1), fmt.Sprintf("127.0.0.1:%d", p2)

	parentCg, childCg := e.workload("orchestrator"), e.workload("sub-agent")
	parent := e.startTask(parentCg, "--ttl", "10m", "--allow-connect", "tcp:"+t1, "--allow-exec", probeBin)
	wantPrefix(t, "parent, its own port", e.probeConnect(parentCg, t1), "ok")
	wantPrefix(t, "parent, a port its grants leave out", e.probeConnect(parentCg, t2), "EPERM connect")

	// The policy would give the child every port of 127.0.0.1; the parent
	// has one.
	child := e.startTask(childCg, "--parent", parent)
	wantPrefix(t, "child, the parent's port", e.probeConnect(childCg, t1), "ok")
	wantPrefix(t, "child, a port only the policy allows", e.probeConnect(childCg, t2), "EPERM connect")
	var parentTask, childTask api.Task
	for _, task := range e.listTasks() {
		switch task.ID {
		case parent:
			parentTask = task
		case child:
			childTask = task
		}
	}
	if childTask.Parent != parent || childTask.Expires.After(parentTask.Expires) || childTask.Expires.IsZero() {
		t.Fatalf("child %+v of parent %+v", childTask, parentTask)
	}
	if out, err := e.bridle("start", "--workload", e.workload("orphan"), "--intent", "x", "--parent", "t-000000000000"); err == nil || !strings.Contains(out, "not in force") {
		t.Fatalf("child of a task not in force: %v %s", err, out)
	}

	// Ending the parent ends the child.
	if out, err := e.bridle("end", parent); err != nil {
		t.Fatalf("end parent: %v %s", err, out)
	}
	if tasks := e.listTasks(); len(tasks) != 0 {
		t.Fatalf("tasks left after the parent ended: %+v", tasks)
	}
	wantPrefix(t, "child after its parent ended", e.probeConnect(childCg, t1), "EPERM connect")
	e.waitAudit(func(m map[string]any) bool {
		return m["action"] == "task_end" && m["task"] == child && strings.Contains(fmt.Sprint(m["reason"]), "parent task "+parent+" ended")
	})
}

// A daemon killed between writing a task to the kernel and recording it
// leaves a binding its store cannot explain. The next daemon trusts the
// kernel's state only as far as the store explains it: the workload goes
// back to the baseline, and the slot's rules are deleted so the next task
// given the slot inherits nothing.
func TestDaemonRestoreRevokesUnrecordedTasks(t *testing.T) {
	e := newDaemonEnv(t)
	e.start()
	target := fmt.Sprintf("127.0.0.1:%d", tcpListener(t, "tcp4", "127.0.0.1:0"))
	w1 := e.workload("w1")
	e.startTask(w1)
	wantPrefix(t, "task in force", e.probeConnect(w1, target), "ok")

	e.stop(syscall.SIGKILL)
	// The store as it was before the task was recorded.
	if err := os.WriteFile(filepath.Join(e.stateDir, "tasks.json"), []byte(`{"version": 1, "tasks": []}`), 0o600); err != nil {
		t.Fatal(err)
	}
	e.start()
	e.waitLog("workload bound to a task no stored record explains")
	wantPrefix(t, "unrecorded task after restart", e.probeConnect(w1, target), "EPERM connect")

	// The freed slot is reused by a task that may run the probe and reach
	// nothing: had the old rules stayed, it would reach the target.
	w2 := e.workload("w2")
	e.startTask(w2, "--allow-exec", probeBin)
	wantPrefix(t, "task in a reused slot", e.probeConnect(w2, target), "EPERM connect")
}

// holdInCgroup starts `probe hold-tcp ADDR 30` born inside cgroup cg, in
// the test namespace, and returns once the probe says it is connected;
// the channel then gives the probe's last line (how the connection ended).
func (e *daemonEnv) holdInCgroup(cg, addr string) <-chan string {
	e.t.Helper()
	fd := e.cgroupFD(cg)
	defer syscall.Close(fd)
	c := exec.Command(probeBin, "hold-tcp", addr, "30")
	c.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	out, err := c.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	inNetns(e.t, func() { err = c.Start() })
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = c.Process.Kill() })
	sc := bufio.NewScanner(out)
	if !sc.Scan() || sc.Text() != "ok connected" {
		_ = c.Wait()
		e.t.Fatalf("probe hold-tcp %s in %s: %q", addr, cg, sc.Text())
	}
	last := make(chan string, 1)
	go func() {
		line := ""
		for sc.Scan() {
			line = sc.Text()
		}
		_ = c.Wait()
		last <- line
	}()
	return last
}

func waitLine(t *testing.T, what string, c <-chan string) string {
	t.Helper()
	select {
	case line := <-c:
		return line
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: the held connection was still open after 20s", what)
		return ""
	}
}

// Ending a task through bridled, or its expiry, refuses the workload's new
// connections and resets the ones it opened under the task, IPv4 and IPv6.
func TestDaemonEndAndExpiryResetConnections(t *testing.T) {
	if features.SocketDestroy == "none" {
		t.Skipf("this kernel cannot abort a workload's sockets: %s", features.SocketDestroyReason)
	}
	for _, v := range daemonPrivileges(t) {
		t.Run(v.name, func(t *testing.T) {
			e := newDaemonEnv(t)
			e.capabilities = v.caps
			e.start()
			for i, target := range []string{
				fmt.Sprintf("127.0.0.1:%d", tcpHoldingListener(t, "tcp4", "127.0.0.1:0")),
				fmt.Sprintf("[::1]:%d", tcpHoldingListener(t, "tcp6", "[::1]:0")),
			} {
				// Ended by a call.
				cg := e.workload(fmt.Sprintf("ended-%d", i))
				id := e.startTask(cg)
				held := e.holdInCgroup(cg, target)
				if out, err := e.bridle("end", id); err != nil {
					t.Fatalf("end: %v %s", err, out)
				}
				if line := waitLine(t, "task ended", held); line != "closed ECONNABORTED" {
					t.Fatalf("%s: connection opened under an ended task: %q, want it aborted", target, line)
				}
				wantPrefix(t, "new connection after the end", e.probeConnect(cg, target), "EPERM connect")
				rec := e.waitAudit(func(m map[string]any) bool { return m["action"] == "task_end" && m["task"] == id })
				if !strings.Contains(fmt.Sprint(rec["reason"]), "aborted 1 open connection(s) (1 tcp, 0 udp)") {
					t.Fatalf("task end record: %v", rec)
				}

				// Expired.
				cg = e.workload(fmt.Sprintf("expired-%d", i))
				id = e.startTask(cg, "--ttl", "3s")
				held = e.holdInCgroup(cg, target)
				if line := waitLine(t, "task expired", held); line != "closed ECONNABORTED" {
					t.Fatalf("%s: connection opened under an expired task: %q, want it aborted", target, line)
				}
				wantPrefix(t, "new connection after expiry", e.probeConnect(cg, target), "EPERM connect")
				rec = e.waitAudit(func(m map[string]any) bool { return m["action"] == "task_end" && m["task"] == id })
				if !strings.HasPrefix(fmt.Sprint(rec["reason"]), "expired; aborted 1 open connection(s)") {
					t.Fatalf("task expiry record: %v", rec)
				}
			}
		})
	}
}
