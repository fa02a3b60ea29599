package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/daemon/audit"
)

// nobodyID is the uid and gid of the workload user in these tests.
const nobodyID = 65534

// The agent swaps the audit file of the next `sudo bridle run --audit FILE`,
// in a directory its user owns, for a link to a root-owned shell rc file,
// and names itself "$(sh /tmp/x)": had root appended its records through
// the link, the next root shell would run the agent's program. bridle
// follows no link there (symlink, symlinked directory, hard link, FIFO):
// it refuses before anything runs, and the target is untouched. A record
// whose comm holds "$(...)" and a newline stays one valid JSON line.
func TestEscapeAuditSymlink(t *testing.T) {
	// Root's rc file, in a directory only root can write.
	rootDir := t.TempDir()
	rc := filepath.Join(rootDir, "rc.sh")
	const rcBody = "# root's shell rc\n"
	if err := os.WriteFile(rc, []byte(rcBody), 0o644); err != nil {
		t.Fatal(err)
	}
	// The agent's directory, owned by its user.
	agentDir := t.TempDir()
	chmodAll(t, agentDir)
	if err := os.Chown(agentDir, nobodyID, nobodyID); err != nil {
		t.Fatal(err)
	}
	plant := map[string]func(p string) error{
		"symlink":           func(p string) error { return os.Symlink(rc, p) },
		"hard link":         func(p string) error { return os.Link(rc, p) },
		"symlinked dir":     func(p string) error { return os.Symlink(rootDir, p) },
		"fifo":              func(p string) error { return unix.Mkfifo(p, 0o666) },
		"symlink to a file": func(p string) error { return os.Symlink(filepath.Join(agentDir, "real.jsonl"), p) },
	}
	port := tcpListener(t, "tcp4", "127.0.0.1:0")
	for name, make := range plant {
		t.Run(strings.ReplaceAll(name, " ", "-"), func(t *testing.T) {
			p := filepath.Join(agentDir, strings.ReplaceAll(name, " ", "-"))
			if err := make(p); err != nil {
				t.Fatal(err)
			}
			_ = os.Lchown(p, nobodyID, nobodyID) // the agent made it
			auditPath := p
			if name == "symlinked dir" {
				auditPath = filepath.Join(p, "rc.sh")
			}
			// The workload would leave a record: a refused connect.
			r := runBounded30(t, "--audit", auditPath, "--allow-exec", probeBin, "--", probeBin,
				"seq", "touch", filepath.Join(agentDir, "ran-"+filepath.Base(p)), "+", "tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if r.status != 2 || !strings.Contains(r.stderr, "--audit") && !strings.Contains(r.stderr, auditPath) {
				t.Fatalf("--audit %s (%s): status %d, stderr %q; want a refusal (status 2) naming the file", auditPath, name, r.status, r.stderr)
			}
			if _, err := os.Stat(filepath.Join(agentDir, "ran-"+filepath.Base(p))); err == nil {
				t.Fatal("the command ran although its audit file was refused")
			}
			if b, _ := os.ReadFile(rc); string(b) != rcBody {
				t.Fatalf("root's rc file was written through the %s: %q", name, b)
			}
		})
	}

	// A plain file in the agent's directory works; the agent's comm with a
	// command substitution and a newline is one JSON string on one line.
	good := filepath.Join(agentDir, "audit.jsonl")
	const comm = "$(sh /tmp/x)\n;"
	r := probe(t, []string{"--audit", good}, "seq", "comm", comm, "+", "tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if !strings.Contains(r.stdout, "EPERM connect") {
		t.Fatalf("the refused connect did not happen: %q %q", r.stdout, r.stderr)
	}
	b, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, line := range bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n")) {
		var rec audit.Record
		if err := json.Unmarshal(line, &rec); err != nil {
			t.Fatalf("audit line is not one JSON record: %q: %v", line, err)
		}
		if rec.Action == "connect" && rec.Verdict == "deny" {
			found = true
			if rec.Comm != comm {
				t.Fatalf("comm %q, want %q exactly", rec.Comm, comm)
			}
		}
	}
	if !found {
		t.Fatalf("no refused connect in %s", b)
	}
	var st unix.Stat_t
	if err := unix.Stat(good, &st); err != nil || st.Uid != 0 || st.Mode&0o777 != 0o600 {
		t.Fatalf("audit file: uid %d mode %#o (%v); want root's, 0600", st.Uid, st.Mode&0o777, err)
	}
}

// The agent names itself (PR_SET_NAME) and a program it runs with a
// newline, ESC sequences and a bidi override, hoping bridle prints them raw
// and a forged "exited with status 0; 0 denied" line, or a cleared screen,
// reaches the admin's terminal. Every line bridle prints is escaped: its
// stderr has exactly the lines it should and no control character at all.
func TestEscapeControlChars(t *testing.T) {
	port := tcpListener(t, "tcp4", "127.0.0.1:0")
	dir := t.TempDir()
	chmodAll(t, dir)
	evil := filepath.Join(dir, "x\nbridle: agent exited with status 0; 0 denied\x1b[2K\u202e")
	if err := copyFile(refusedTool, evil); err != nil {
		t.Fatal(err)
	}
	const comm = "\nbridle: ok\x1b[2J" // 15 bytes, all the kernel keeps
	r := probe(t, nil, "seq", "comm", comm, "+", "tcp", fmt.Sprintf("127.0.0.1:%d", port), "+", "exec", evil, "ok")

	if len(r.records) < 2 {
		t.Fatalf("want a refused connect and a refused exec recorded, got %+v", r.records)
	}
	var bridleLines []string
	sc := bufio.NewScanner(strings.NewReader(r.stderr))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "bridle: "):
			bridleLines = append(bridleLines, line)
		case strings.HasPrefix(line, "probe: "):
			// The workload's own stderr, which it shares.
		default:
			t.Errorf("stderr line of unknown origin (a forged line?): %q", line)
		}
	}
	// Two refusals as they happen, the summary line and one line per
	// refused target.
	if len(bridleLines) != 5 {
		t.Errorf("bridle printed %d lines, want 5:\n%s", len(bridleLines), strings.Join(bridleLines, "\n"))
	}
	for i, c := range []byte(r.stderr) {
		if c < 0x20 && c != '\n' || c == 0x7f {
			t.Fatalf("stderr holds control byte %#x at %d: %q", c, i, r.stderr)
		}
	}
	for _, rn := range r.stderr {
		if rn == utf8.RuneError || rn > unicode.MaxASCII && !unicode.IsPrint(rn) {
			t.Fatalf("stderr holds %U: %q", rn, r.stderr)
		}
	}
	for _, want := range []string{`\nbridle: ok\x1b[2J[`, `x\nbridle: agent exited with status 0; 0 denied\x1b[2K\u202e`} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr does not show %q escaped:\n%s", want, r.stderr)
		}
	}
}

// runBounded30 runs `bridle run --user nobody ARGS...` in the test network
// namespace and kills it after 30 s: an attack that makes bridle block (a
// FIFO for an audit file) must fail the test, not hang it.
func runBounded30(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	argv := append([]string{"--net=" + netnsPath, "--", bridleBin, "run", "--user", workloadUser}, args...)
	c := exec.CommandContext(ctx, "nsenter", argv...)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	if ctx.Err() != nil {
		t.Fatalf("bridle run %v did not finish within 30s (blocked?)\nstderr: %s", args, stderr.String())
	}
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.status = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	t.Logf("bridle run %q\nstatus %d\nstdout: %s\nstderr: %s", args, r.status, r.stdout, r.stderr)
	return r
}

// asNobody starts the probe as the workload user, outside any workload: a
// local user of the machine. It returns once the probe printed its first
// line, with that line; the probe is killed when the test ends (or by the
// test, through the process returned).
func asNobody(t *testing.T, args ...string) (string, *os.Process) {
	t.Helper()
	c := exec.Command(probeBin, args...)
	c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobodyID, Gid: nobodyID, Groups: []uint32{}}}
	out, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c.Stderr = os.Stderr
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Process.Kill(); _ = c.Wait() })
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Scan()
		line <- sc.Text()
		for sc.Scan() {
		}
	}()
	select {
	case l := <-line:
		return l, c.Process
	case <-time.After(120 * time.Second):
		t.Fatalf("probe %v printed nothing within 120s", args)
		return "", nil
	}
}

// runAsNobody runs the probe as the workload user outside any workload and
// returns its first stdout line.
func runAsNobody(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, probeBin, args...)
	c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobodyID, Gid: nobodyID, Groups: []uint32{}}}
	var stderr bytes.Buffer
	c.Stderr = &stderr
	out, _ := c.Output()
	line, _, _ := strings.Cut(string(out), "\n")
	t.Logf("probe %v as nobody: %s %s", args, line, strings.TrimSpace(stderr.String()))
	return line
}

// openToAll lets local users reach the daemon's socket directory.
func (e *daemonEnv) openToAll() {
	e.t.Helper()
	if err := os.Chmod(e.dir, 0o755); err != nil {
		e.t.Fatal(err)
	}
}

func (e *daemonEnv) appendConfig(lines ...string) {
	e.t.Helper()
	f, err := os.OpenFile(e.config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(strings.Join(lines, "\n") + "\n"); err != nil {
		e.t.Fatal(err)
	}
}

func (e *daemonEnv) pid() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cmd.Process.Pid
}

func openFDs(t *testing.T, pid int) int {
	t.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// Any local user could hold thousands of idle connections to bridled's
// socket (0666), each a descriptor, until bridled had none left: a task's
// expiry then could not abort the connection its workload held open. Now
// connections are counted per caller as they are accepted and those over
// the limits are closed at once: the flood is turned away, bridled's
// descriptors stay bounded, an admin can still call the API, and the
// expiry still aborts the workload's connection while the flood holds.
func TestEscapeAPIExhaustion(t *testing.T) {
	// Where the kernel cannot abort sockets, the flood is still turned
	// away; only the expiry's abort is not checked.
	canAbort := features.SocketDestroy != "none"
	if !canAbort {
		t.Logf("this kernel cannot abort a workload's sockets (%s): the expiry part is left out", features.SocketDestroyReason)
	}
	const flood = 2000
	e := newDaemonEnv(t)
	e.openToAll()
	e.start()
	// Below the flood, as a daemon whose descriptor limit is modest: the
	// attack then takes every descriptor there is.
	lim := unix.Rlimit{Cur: 1024, Max: 1024}
	if err := unix.Prlimit(e.pid(), unix.RLIMIT_NOFILE, &lim, nil); err != nil {
		t.Fatal(err)
	}
	target := fmt.Sprintf("127.0.0.1:%d", tcpHoldingListener(t, "tcp4", "127.0.0.1:0"))
	cg := e.workload("flooded")
	// Short enough to expire during the flood where its connection can be
	// aborted (checked below); elsewhere it must outlive a slow flood.
	ttl := "8s"
	if !canAbort {
		ttl = "1h"
	}
	id := e.startTask(cg, "--ttl", ttl)
	var held <-chan string
	if canAbort {
		held = e.holdInCgroup(cg, target)
	}
	before := openFDs(t, e.pid())

	floodStart := time.Now()
	line, _ := asNobody(t, "connect-flood", e.socket, fmt.Sprint(flood), "60")
	var connected, closed, refused int
	if _, err := fmt.Sscanf(line, "ok connected %d closed %d refused %d", &connected, &closed, &refused); err != nil {
		t.Fatalf("connect-flood: %q: %v", line, err)
	}
	t.Logf("flood: %d connected, %d closed by bridled, %d refused; bridled's descriptors: %d before", connected, closed, refused, before)
	if open := connected - closed; open > 8 {
		t.Errorf("%d of nobody's connections stay open, want at most 8 (api_limits.connections_per_uid)", open)
	}
	if during := openFDs(t, e.pid()); during > before+8+8 {
		t.Errorf("bridled holds %d descriptors during the flood, %d before", during, before)
	}
	// An admin still gets through.
	if out, err := e.bridle("list"); err != nil || !strings.Contains(out, id) {
		t.Fatalf("admin's task list during the flood: %v: %s", err, out)
	}
	// The task expires while the flood holds: its connection is aborted.
	if canAbort {
		if got := waitLine(t, "task expired during the flood", held); got != "closed ECONNABORTED" {
			t.Fatalf("the workload's connection after expiry during the flood: %q, want it aborted", got)
		}
		e.waitAudit(func(m map[string]any) bool {
			return m["action"] == "task_end" && m["task"] == id && strings.HasPrefix(fmt.Sprint(m["reason"]), "expired; aborted 1 open connection(s)")
		})
	}
	// The refusals are counted, not written out one by one: a burst of 20
	// records, then one a second (an emulated guest floods for longer),
	// and a few of other callers.
	b, _ := os.ReadFile(e.audit)
	limit := 20 + int(time.Since(floodStart).Seconds()) + 10
	if n := strings.Count(string(b), `"action":"api"`); n > limit {
		t.Errorf("%d refusal records for one flood of %v: the audit log is flooded (at most %d)", n, time.Since(floodStart).Round(time.Second), limit)
	}
}

// A workload or local user holding metrics_listen's port kept bridled from
// starting (and so from restarting). Now bridled starts and enforces, says
// it is degraded, and binds the port once it is free.
func TestEscapeMetricsSquat(t *testing.T) {
	line, squatter := asNobody(t, "listen-tcp", "127.0.0.1:0", "60")
	addr, ok := strings.CutPrefix(line, "ok listening ")
	if !ok {
		t.Fatalf("squatter: %q", line)
	}
	e := newDaemonEnv(t)
	e.appendConfig("metrics_listen: " + addr)
	e.start() // fails if bridled exits
	st, err := e.status()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(fmt.Sprint(st["degraded"]), "metrics listener "+addr+" not bound") {
		t.Fatalf("status while the port is squatted: degraded %v", st["degraded"])
	}
	e.waitLog("listener not serving", "listener=metrics")
	// Enforcement goes on.
	target := fmt.Sprintf("127.0.0.1:%d", tcpListener(t, "tcp4", "127.0.0.1:0"))
	cg := e.workload("w")
	wantPrefix(t, "baseline while squatted", e.probeConnect(cg, target), "EPERM connect")
	e.startTask(cg)
	wantPrefix(t, "task while squatted", e.probeConnect(cg, target), "ok")

	// The squatter leaves; bridled binds the port.
	if err := squatter.Kill(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := e.status()
		if err == nil && !strings.Contains(fmt.Sprint(st["degraded"]), "metrics listener") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics still not bound 30s after the squatter left: %v %v", st["degraded"], err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `bridle_listener_up{listener="metrics"} 1`) {
		t.Fatalf("metrics after binding:\n%s", body)
	}
}

// Any local user could list every task (intents, labels, identities) and
// read the status. Reads now need an admin or a configured reader.
func TestEscapeAPIReads(t *testing.T) {
	e := newDaemonEnv(t)
	e.openToAll()
	e.start()
	e.startTask(e.workload("w"), "--label", "secret=yes")
	for _, path := range []string{"/v1/tasks", "/v1/status"} {
		if got := runAsNobody(t, "http-get", e.socket, path); got != "ok 403" {
			t.Errorf("GET %s by a local user: %q, want ok 403", path, got)
		}
	}
	e.stop(syscall.SIGTERM)
	e.appendConfig("readers: {uids: [65534]}")
	e.start()
	for _, path := range []string{"/v1/tasks", "/v1/status"} {
		if got := runAsNobody(t, "http-get", e.socket, path); got != "ok 200" {
			t.Errorf("GET %s by a reader: %q, want ok 200", path, got)
		}
	}
	if got := runAsNobody(t, "http-get", e.socket, "/v1/events?workload="+e.root+"/w"); got != "ok 403" {
		t.Errorf("an event stream for a reader: %q, want ok 403 (admins only)", got)
	}
}

// bridle's runtime directory holds bridled's socket: a standalone run
// (which keeps its locks there) left it 0700, so that no admin but root
// could reach the socket. It stays traversable, the locks private.
func TestEscapeRunDirTraversable(t *testing.T) {
	wantAllowed(t, probe(t, []string{"--standalone"}, "sleep", "0"))
	for dir, check := range map[string]func(os.FileMode) bool{
		"/run/bridle":     func(m os.FileMode) bool { return m&0o011 == 0o011 },
		"/run/bridle/run": func(m os.FileMode) bool { return m&0o077 == 0 },
	} {
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if !check(fi.Mode().Perm()) {
			t.Errorf("%s is %v after a standalone run", dir, fi.Mode().Perm())
		}
	}
}
