package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/daemon/api"
	"github.com/bridle-sh/bridle/loader"
)

// bridled under test, built once by the first daemon test.
var (
	bridledOnce sync.Once
	bridledBin  string
	bridledErr  error
)

func buildBridled(t testing.TB) string {
	t.Helper()
	bridledOnce.Do(func() {
		bridledBin = filepath.Join(binDir, "bridled")
		if b := os.Getenv("BRIDLE_E2E_BRIDLED"); b != "" {
			bridledErr = copyFile(b, bridledBin)
			return
		}
		out, err := exec.Command("go", "build", "-o", bridledBin, "../../cmd/bridled").CombinedOutput()
		if err != nil {
			bridledErr = fmt.Errorf("build bridled: %v\n%s", err, out)
		}
	})
	if bridledErr != nil {
		t.Fatal(bridledErr)
	}
	return bridledBin
}

// daemonEnv is one bridled's world: its config, root cgroup, socket, state
// and pins, all private to one test and removed when it ends.
type daemonEnv struct {
	t        *testing.T
	dir      string
	config   string
	socket   string
	root     string // cgroup path below the v2 mount
	rootDir  string // absolute
	pinDir   string
	audit    string
	stateDir string
	// inNetns runs bridled in the test network namespace, where its
	// resolver is reachable from the workloads' loopback.
	inNetns bool
	// capabilities, if set, are all bridled keeps (with no_new_privs), as
	// under the systemd unit's CapabilityBoundingSet: see unitCapabilities.
	capabilities []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	logs *syncBuffer
	done chan struct{}
}

// syncBuffer collects a daemon's log while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testPolicy allows, for a task, TCP to 127.0.0.1 and ::1 and the probe and bridle
// binaries; the baseline allows the binaries and the API socket only (so
// that a workload can reach the daemon and be refused by it, not by the
// kernel). Kernels without unix socket hooks (before 6.7) do not check unix
// sockets at all, and Bridle refuses unix rules there rather than pretend.
func testPolicy(socket string) string {
	api := fmt.Sprintf(`{"unix": %q}`, socket)
	if !features.UnixHooks {
		api = ""
	}
	taskEgress := `{"protocol": "tcp", "cidr": "127.0.0.1/32"}, {"protocol": "tcp", "cidr": "::1/128"}`
	if api != "" {
		taskEgress += ", " + api
	}
	return fmt.Sprintf(`package bridle

binaries := [{"path": %[1]q}, {"path": %[2]q}]

baseline := {"egress": [%[3]s], "exec": binaries}

envelope := {
	"egress": [%[4]s],
	"exec": binaries,
	"ttl": "1h",
}

deny contains "a task needs an intent" if input.task.intent == ""
`, probeBin, bridleBin, api, taskEgress)
}

func newDaemonEnv(t *testing.T) *daemonEnv {
	t.Helper()
	buildBridled(t)
	dir, err := os.MkdirTemp("", "bridled-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	name := strings.NewReplacer("/", "-", "_", "-").Replace(t.Name())
	e := &daemonEnv{
		t:        t,
		dir:      dir,
		config:   filepath.Join(dir, "bridled.yaml"),
		socket:   filepath.Join(dir, "api.sock"),
		root:     fmt.Sprintf("/bridle-e2e-%d-%s", os.Getpid(), name),
		pinDir:   filepath.Join(loader.DefaultPinRoot, fmt.Sprintf("test-daemon-%d-%s", os.Getpid(), name)),
		audit:    filepath.Join(dir, "audit.jsonl"),
		stateDir: filepath.Join(dir, "state"),
	}
	e.rootDir = filepath.Join(cgroupRoot(t), e.root)
	t.Cleanup(e.cleanup)
	policyDir := filepath.Join(dir, "policy")
	if err := os.Mkdir(policyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(policyDir, "test.rego"), []byte(testPolicy(e.socket)), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf("roots: [%s]\nsocket: %s\nstate_dir: %s\npin_dir: %s\npolicy_dir: %s\naudit_file: %s\nnode_name: e2e.test\n",
		e.root, e.socket, e.stateDir, e.pinDir, policyDir, e.audit)
	if err := os.WriteFile(e.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return e
}

// start runs bridled and waits (bounded) until its API answers.
func (e *daemonEnv) start() {
	e.t.Helper()
	done := e.launch()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := e.status(); err == nil {
			return
		}
		select {
		case <-done:
			e.t.Fatalf("bridled exited while starting:\n%s", e.logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("bridled did not answer within 30s:\n%s", e.logs.String())
		}
	}
}

// launch starts bridled without waiting for it; the channel closes when it
// exits.
func (e *daemonEnv) launch() <-chan struct{} {
	e.t.Helper()
	e.mu.Lock()
	argv := []string{bridledBin, "--config", e.config}
	if len(e.capabilities) > 0 {
		// setpriv executes bridled in its own place, as nsenter does.
		argv = append([]string{"setpriv", "--no-new-privs", "--bounding-set=-all,+" + strings.Join(e.capabilities, ",+"), "--"}, argv...)
	}
	if e.inNetns {
		// nsenter executes bridled in its own place: signals reach it.
		argv = append([]string{"nsenter", "--net=" + netnsPath, "--"}, argv...)
	}
	e.cmd = exec.Command(argv[0], argv[1:]...)
	e.logs = &syncBuffer{}
	e.cmd.Stdout, e.cmd.Stderr = e.logs, e.logs
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := e.cmd.Start(); err != nil {
		e.mu.Unlock()
		e.t.Fatal(err)
	}
	e.done = make(chan struct{})
	cmd, done := e.cmd, e.done
	go func() { _ = cmd.Wait(); close(done) }()
	e.mu.Unlock()
	return done
}

// stop ends bridled with sig and waits (bounded) for it to exit.
func (e *daemonEnv) stop(sig syscall.Signal) {
	e.t.Helper()
	e.mu.Lock()
	cmd, done := e.cmd, e.done
	e.cmd = nil
	e.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		e.t.Errorf("bridled ignored %v for 15s", sig)
	}
}

func (e *daemonEnv) cleanup() {
	e.stop(syscall.SIGKILL)
	// Children first: kill what runs in each cgroup, then remove it.
	var dirs []string
	_ = filepath.WalkDir(e.rootDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = os.WriteFile(filepath.Join(dirs[i], "cgroup.kill"), []byte("1"), 0)
		for start := time.Now(); time.Since(start) < 5*time.Second; time.Sleep(20 * time.Millisecond) {
			if err := os.Remove(dirs[i]); err == nil || os.IsNotExist(err) {
				break
			}
		}
	}
	if err := loader.RemovePins(e.pinDir); err != nil {
		e.t.Logf("remove pins %s: %v", e.pinDir, err)
	}
	if e.t.Failed() && e.logs != nil {
		e.t.Logf("bridled log:\n%s", e.logs.String())
	}
	_ = os.RemoveAll(e.dir)
}

func (e *daemonEnv) client() *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		// One connection per call, closed after it: a test that polls must
		// not pile up idle connections against bridled's connection caps.
		Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", e.socket)
		}},
	}
}

func (e *daemonEnv) status() (map[string]any, error) {
	resp, err := e.client().Get("http://bridled/v1/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	var st map[string]any
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// workload creates a cgroup below the root and returns its path below the
// v2 mount.
func (e *daemonEnv) workload(name string) string {
	e.t.Helper()
	if err := os.Mkdir(filepath.Join(e.rootDir, name), 0o755); err != nil {
		e.t.Fatal(err)
	}
	return e.root + "/" + name
}

// cgroupFD opens cgroup cg (a path below the v2 mount) for starting a
// process inside it (clone3 CLONE_INTO_CGROUP).
func (e *daemonEnv) cgroupFD(cg string) int {
	e.t.Helper()
	fd, err := syscall.Open(filepath.Join(cgroupRoot(e.t), cg), syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	return fd
}

// inCgroup runs a command born inside cgroup cg (clone3 CLONE_INTO_CGROUP,
// so not one instruction runs outside it), bounded to 30 s.
// It returns stdout, stderr and the exit status.
func (e *daemonEnv) inCgroup(cg string, inNs bool, argv ...string) (string, string, int) {
	e.t.Helper()
	fd := e.cgroupFD(cg)
	defer syscall.Close(fd)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, argv[0], argv[1:]...)
	c.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	var out, errOut bytes.Buffer
	c.Stdout, c.Stderr = &out, &errOut
	var err error
	run := func() { err = c.Run() }
	if inNs {
		inNetns(e.t, run)
	} else {
		run()
	}
	status := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			e.t.Fatalf("%v: %v", argv, err)
		}
		status = ee.ExitCode()
	}
	return out.String(), errOut.String(), status
}

// commandIn returns a command to be born inside cgroup cg as uid (and
// gid uid); the cgroup's descriptor stays open until the test ends.
func (e *daemonEnv) commandIn(cg string, uid uint32, argv ...string) *exec.Cmd {
	e.t.Helper()
	fd := e.cgroupFD(cg)
	e.t.Cleanup(func() { syscall.Close(fd) })
	c := exec.Command(argv[0], argv[1:]...)
	c.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd,
		Credential: &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}}
	return c
}

// probeConnect runs `probe tcp ADDR` in cg, in the test network namespace.
func (e *daemonEnv) probeConnect(cg, addr string) string {
	e.t.Helper()
	out, _, _ := e.inCgroup(cg, true, probeBin, "tcp", addr)
	line, _, _ := strings.Cut(out, "\n")
	return line
}

// bridle runs the CLI against this daemon from the test's own cgroup.
func (e *daemonEnv) bridle(args ...string) (string, error) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args = append([]string{"task", "--socket", e.socket}, args...)
	out, err := exec.CommandContext(ctx, bridleBin, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (e *daemonEnv) startTask(cg string, extra ...string) string {
	e.t.Helper()
	out, err := e.bridle(append([]string{"start", "--workload", cg, "--intent", "e2e test"}, extra...)...)
	if err != nil {
		e.t.Fatalf("task start: %v: %s", err, out)
	}
	if !strings.HasPrefix(out, "t-") {
		e.t.Fatalf("task start printed %q, want a task id", out)
	}
	return out
}

func (e *daemonEnv) listTasks() []api.Task {
	e.t.Helper()
	out, err := e.bridle("list", "--json")
	if err != nil {
		e.t.Fatalf("task list: %v: %s", err, out)
	}
	var l api.TaskList
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		e.t.Fatalf("task list --json: %v: %s", err, out)
	}
	return l.Tasks
}

// waitAudit waits (bounded) for an audit record matching want.
func (e *daemonEnv) waitAudit(want func(map[string]any) bool) map[string]any {
	e.t.Helper()
	return e.waitAuditFor(10*time.Second, want)
}

// waitAuditFor is waitAudit with a bound of d.
func (e *daemonEnv) waitAuditFor(d time.Duration, want func(map[string]any) bool) map[string]any {
	e.t.Helper()
	deadline := time.Now().Add(d)
	for {
		b, _ := os.ReadFile(e.audit)
		for _, line := range strings.Split(string(b), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && want(rec) {
				return rec
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no matching audit record within %v; records:\n%s", d, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitLog waits (bounded) until bridled's log holds every one of want; the
// log reaches the test through a pipe, a little after the daemon acts.
func (e *daemonEnv) waitLog(want ...string) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		logs, missing := e.logs.String(), ""
		for _, w := range want {
			if !strings.Contains(logs, w) {
				missing = w
				break
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("bridled never logged %q:\n%s", missing, logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func wantPrefix(t *testing.T, what, got, want string) {
	t.Helper()
	if !strings.HasPrefix(got, want) {
		t.Fatalf("%s: got %q, want %s...", what, got, want)
	}
}

// A cgroup created below a root after bridled attached is confined by the
// baseline before any task names it.
func TestDaemonConfinesNewCgroups(t *testing.T) {
	e := newDaemonEnv(t)
	e.start()
	target := fmt.Sprintf("127.0.0.1:%d", tcpListener(t, "tcp4", "127.0.0.1:0"))
	cg := e.workload("fresh")
	wantPrefix(t, "connect from a new cgroup", e.probeConnect(cg, target), "EPERM connect")
	rec := e.waitAudit(func(r map[string]any) bool { return r["action"] == "connect" && r["verdict"] == "deny" })
	if rev, _ := rec["policy_revision"].(string); !strings.HasPrefix(rev, "sha256:") {
		t.Fatalf("decision record without policy_revision: %v", rec)
	}
	// The record names the refused process's own cgroup and its identity,
	// not the root it is below: which agent unit was refused.
	if rec["workload"] != cg || rec["identity"] != "spiffe://e2e.test/workload"+cg {
		t.Fatalf("baseline decision record names %v (%v), want %s: %v", rec["workload"], rec["identity"], cg, rec)
	}
	// The daemon reports its roots attached and nothing degraded beyond
	// what the kernel lacks.
	st, err := e.status()
	if err != nil {
		t.Fatal(err)
	}
	roots, _ := st["roots"].([]any)
	if len(roots) != 1 || roots[0].(map[string]any)["attached"] != true {
		t.Fatalf("status roots: %v", st["roots"])
	}
}

// Under the baseline every cgroup below a root has an event budget of its
// own: one agent without a task flooding refusals does not use up the
// records of another, and its own left-out records are counted on its next
// record, not on another agent's.
func TestDaemonBaselineBudgetPerCgroup(t *testing.T) {
	e := newDaemonEnv(t)
	e.start()
	flooder, quiet := e.workload("flooder"), e.workload("quiet")
	// Five windows' budget at once: most of it is left out.
	flood := strconv.Itoa(5 * loader.DefaultEventBudget)
	if got := e.probeIn(flooder, "udp-flood", "127.0.0.1:9", flood); !strings.HasPrefix(got, "ok refused="+flood) {
		t.Fatalf("flood: %q", got)
	}
	wantPrefix(t, "the quiet agent, right after the flood", e.probeConnect(quiet, "127.0.0.2:9"), "EPERM connect")
	rec := e.waitAudit(func(r map[string]any) bool {
		return r["workload"] == quiet && r["action"] == "connect" && r["verdict"] == "deny"
	})
	if n, _ := rec["suppressed"].(float64); n != 0 {
		t.Fatalf("the quiet agent's record carries another's suppressed events: %v", rec)
	}
	// The flooder's next record, a window later, carries its count.
	time.Sleep(1100 * time.Millisecond)
	wantPrefix(t, "the flooder, a window later", e.probeConnect(flooder, "127.0.0.2:9"), "EPERM connect")
	rec = e.waitAudit(func(r map[string]any) bool {
		n, _ := r["suppressed"].(float64)
		return r["workload"] == flooder && r["address"] == "127.0.0.2" && n > 0
	})
	t.Logf("flooder's record: %d suppressed", int(rec["suppressed"].(float64)))
}

// task start moves a workload to its envelope; task end moves it back.
func TestDaemonTaskStartEnd(t *testing.T) {
	e := newDaemonEnv(t)
	e.start()
	target := fmt.Sprintf("127.0.0.1:%d", tcpListener(t, "tcp4", "127.0.0.1:0"))
	cg := e.workload("w1")
	wantPrefix(t, "before the task", e.probeConnect(cg, target), "EPERM connect")

	id := e.startTask(cg, "--label", "team=e2e", "--ttl", "10m")
	wantPrefix(t, "during the task", e.probeConnect(cg, target), "ok")
	// What the envelope does not allow is refused, and the record names
	// the task, its intent, identity and the policy revision.
	wantPrefix(t, "outside the envelope", e.probeConnect(cg, strings.Replace(target, "127.0.0.1", "127.0.0.2", 1)), "EPERM connect")
	rec := e.waitAudit(func(r map[string]any) bool {
		return r["action"] == "connect" && r["verdict"] == "deny" && r["task"] == id
	})
	if rec["intent"] != "e2e test" || rec["workload"] != cg || rec["identity"] != "spiffe://e2e.test/workload"+cg ||
		!strings.HasPrefix(fmt.Sprint(rec["policy_revision"]), "sha256:") {
		t.Fatalf("task decision record: %v", rec)
	}
	tasks := e.listTasks()
	if len(tasks) != 1 || tasks[0].ID != id || tasks[0].Workload != cg || tasks[0].Labels["team"] != "e2e" || tasks[0].Expires.IsZero() {
		t.Fatalf("task list: %+v", tasks)
	}
	if tasks[0].Identity != "spiffe://e2e.test/workload"+cg {
		t.Fatalf("identity %q", tasks[0].Identity)
	}
	// One task per workload.
	if out, err := e.bridle("start", "--workload", cg, "--intent", "again"); err == nil || !strings.Contains(out, "409") {
		t.Fatalf("second task on a busy workload: %v %s", err, out)
	}
	// Workloads outside the roots are refused.
	if out, err := e.bridle("start", "--workload", "/elsewhere", "--intent", "x"); err == nil || !strings.Contains(out, "400") {
		t.Fatalf("workload outside the roots: %v %s", err, out)
	}
	// The policy's deny rules refuse a task without an intent.
	if out, err := e.bridle("start", "--workload", cg, "--intent", " "); err == nil {
		t.Fatalf("task with a blank intent started: %s", out)
	}

	if out, err := e.bridle("end", id); err != nil {
		t.Fatalf("task end: %v: %s", err, out)
	}
	wantPrefix(t, "after the task", e.probeConnect(cg, target), "EPERM connect")
	if tasks := e.listTasks(); len(tasks) != 0 {
		t.Fatalf("tasks after end: %+v", tasks)
	}
}

// A process inside a workload cannot use the API, not even as root and not
// even on its own task; the refusal is logged and audited.
func TestDaemonRefusesWorkloadCallers(t *testing.T) {
	e := newDaemonEnv(t)
	e.start()
	cg := e.workload("agent")
	id := e.startTask(cg)
	for _, args := range [][]string{
		{"list"},
		{"start", "--workload", cg + "-x", "--intent", "escape"},
		{"end", id},
	} {
		argv := append([]string{bridleBin, "task", "--socket", e.socket}, args...)
		stdout, stderr, status := e.inCgroup(cg, false, argv...)
		out := stdout + stderr
		if status == 0 || !strings.Contains(out, "403") || !strings.Contains(out, "workload") {
			t.Fatalf("bridle task %v from inside a workload: status %d, %s", args, status, out)
		}
	}
	if tasks := e.listTasks(); len(tasks) != 1 || tasks[0].ID != id {
		t.Fatalf("the workload's call changed the tasks: %+v", tasks)
	}
	e.waitAudit(func(r map[string]any) bool {
		return r["action"] == "api" && r["verdict"] == "deny" && r["path"] == "DELETE /v1/tasks/"+id && r["workload"] == cg
	})
	e.waitLog("api call refused", "DELETE /v1/tasks/"+id)
}

// SIGKILL of bridled changes nothing in the kernel; a restart re-adopts the
// live task and revokes one that expired while no daemon ran.
func TestDaemonKilledKeepsEnforcingAndRestores(t *testing.T) {
	e := newDaemonEnv(t)
	e.start()
	port := tcpListener(t, "tcp4", "127.0.0.1:0")
	allowed, refused := fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("127.0.0.2:%d", port)
	long, short := e.workload("long"), e.workload("short")
	longID := e.startTask(long, "--ttl", "1h")
	shortID := e.startTask(short, "--ttl", "2s")
	shortStarted := time.Now()

	e.stop(syscall.SIGKILL)
	wantPrefix(t, "allowed connect with bridled dead", e.probeConnect(long, allowed), "ok")
	wantPrefix(t, "refused connect with bridled dead", e.probeConnect(long, refused), "EPERM connect")

	// Past the short task's expiry the kernel alone already refuses it.
	time.Sleep(time.Until(shortStarted.Add(2500 * time.Millisecond)))
	wantPrefix(t, "expired task with bridled dead", e.probeConnect(short, allowed), "EPERM connect")

	e.start()
	tasks := e.listTasks()
	if len(tasks) != 1 || tasks[0].ID != longID {
		t.Fatalf("after restart: want only %s, got %+v", longID, tasks)
	}
	e.waitLog("task expired while bridled was down; revoking\" task=" + shortID)
	wantPrefix(t, "re-adopted task", e.probeConnect(long, allowed), "ok")
	wantPrefix(t, "revoked task", e.probeConnect(short, allowed), "EPERM connect")
	// The re-adopted task can be ended by the new daemon.
	if out, err := e.bridle("end", longID); err != nil {
		t.Fatalf("end re-adopted task: %v: %s", err, out)
	}
	wantPrefix(t, "after ending the re-adopted task", e.probeConnect(long, allowed), "EPERM connect")

	// SIGTERM is a clean exit that leaves enforcement in place.
	e.stop(syscall.SIGTERM)
	wantPrefix(t, "after SIGTERM", e.probeConnect(long, allowed), "EPERM connect")
	if _, err := os.Stat(filepath.Join(e.pinDir, "bridle_cgroups")); err != nil {
		t.Fatalf("SIGTERM removed the pins: %v", err)
	}
}

// A policy that does not compile keeps bridled from starting, with OPA's
// file:line message; unknown config fields are refused.
func TestDaemonRefusesBadConfig(t *testing.T) {
	e := newDaemonEnv(t)
	policyFile := filepath.Join(e.dir, "policy", "test.rego")
	if err := os.WriteFile(policyFile, []byte("package bridle\n\nenvelope := {\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runBounded(bridledBin, "--config", e.config)
	if err == nil || !strings.Contains(out, "test.rego:") {
		t.Fatalf("bad policy: want a refusal naming test.rego:LINE, got %v: %s", err, out)
	}
	if err := os.WriteFile(e.config, []byte("roots: [/x]\npolicy_dir: /p\nsocet: /tmp/x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = runBounded(bridledBin, "--config", e.config)
	if err == nil || !strings.Contains(out, "socet") {
		t.Fatalf("unknown config field: want a refusal naming it, got %v: %s", err, out)
	}
}

func runBounded(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// --pid names the workload by one of its processes.
func TestDaemonTaskByPID(t *testing.T) {
	e := newDaemonEnv(t)
	e.start()
	cg := e.workload("bypid")
	fd, err := syscall.Open(filepath.Join(e.rootDir, "bypid"), syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	// As root, the process owns the policy's root-owned binaries: the
	// task is refused, as their rules would allow any program.
	c := exec.Command(probeBin, "sleep", "30")
	c.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	out, err := e.bridle("start", "--pid", fmt.Sprint(c.Process.Pid), "--intent", "by pid", "--json")
	_ = c.Process.Kill()
	_ = c.Wait()
	if err == nil || !strings.Contains(out, "(uid 0) can rewrite") {
		t.Fatalf("task start --pid of a root process: %v: %s", err, out)
	}
	u, err := user.Lookup(workloadUser)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	c = exec.Command(probeBin, "sleep", "30")
	c.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd,
		Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Process.Kill(); _ = c.Wait() }()
	out, err = e.bridle("start", "--pid", fmt.Sprint(c.Process.Pid), "--intent", "by pid", "--json")
	if err != nil {
		t.Fatalf("task start --pid: %v: %s", err, out)
	}
	var task api.Task
	if err := json.Unmarshal([]byte(out), &task); err != nil {
		t.Fatalf("task start --json: %v: %s", err, out)
	}
	if task.Workload != cg || task.Intent != "by pid" || !strings.HasPrefix(task.PolicyRevision, "sha256:") {
		t.Fatalf("task by pid: %+v", task)
	}
	// A process outside the roots names no workload.
	if out, err := e.bridle("start", "--pid", fmt.Sprint(os.Getpid()), "--intent", "x"); err == nil || !strings.Contains(out, "400") {
		t.Fatalf("pid outside the roots: %v %s", err, out)
	}
}

// bridled tells the service manager it is ready (sd_notify READY=1) only
// once its roots are confined, so agent units ordered after it never run
// unconfined: a process started the moment READY arrives is refused.
func TestDaemonNotifiesReadyWhenConfined(t *testing.T) {
	e := newDaemonEnv(t)
	sock := filepath.Join(e.dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	target := fmt.Sprintf("127.0.0.1:%d", tcpListener(t, "tcp4", "127.0.0.1:0"))

	// Not start(): the probe must run the moment READY arrives, without
	// waiting for the API.
	t.Setenv("NOTIFY_SOCKET", sock)
	e.launch()
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("no notification from bridled: %v\n%s", err, e.logs.String())
	}
	if !strings.Contains(string(buf[:n]), "READY=1") {
		t.Fatalf("notification %q, want READY=1", buf[:n])
	}
	cg := e.workload("early")
	wantPrefix(t, "connect right after READY", e.probeConnect(cg, target), "EPERM connect")
}

// daemonPrivileges are the ways revocation is tested to work: bridled as
// root with every capability, and as the shipped systemd unit runs it,
// where it can neither signal another user's process (no CAP_KILL) nor open
// a cgroup by its id (no CAP_DAC_READ_SEARCH).
func daemonPrivileges(t *testing.T) []struct {
	name string
	caps []string
} {
	return []struct {
		name string
		caps []string
	}{{"bridled", nil}, {"bridled under the systemd unit's capabilities", unitCapabilities(t)}}
}

// unitCapabilities is the capability bounding set of the shipped systemd
// unit (deploy/systemd/bridled.service, or BRIDLE_E2E_UNIT in the kernel
// matrix's guests), in setpriv's spelling: bridled run with only these.
func unitCapabilities(t *testing.T) []string {
	t.Helper()
	path := os.Getenv("BRIDLE_E2E_UNIT")
	if path == "" {
		path = "../../deploy/systemd/bridled.service"
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "CapabilityBoundingSet="); ok {
			var caps []string
			for _, c := range strings.Fields(v) {
				caps = append(caps, strings.ToLower(strings.TrimPrefix(c, "CAP_")))
			}
			return caps
		}
	}
	t.Fatalf("%s has no CapabilityBoundingSet= line", path)
	return nil
}
