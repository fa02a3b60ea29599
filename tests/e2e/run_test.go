package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

func TestAuditMode(t *testing.T) {
	p := tcpListener(t, "tcp4", "127.0.0.1:0")
	r := probe(t, []string{"--mode", "audit"}, "tcp", fmt.Sprintf("127.0.0.1:%d", p))
	wantAllowed(t, r)
	rec := wantRecord(t, r, "would-deny", "connect", "tcp")
	if int(rec.Port) != p {
		t.Fatalf("record %+v", rec)
	}
	if !strings.Contains(r.stderr, "would deny connect tcp:127.0.0.1:") {
		t.Fatalf("no would-deny line:\n%s", r.stderr)
	}
	t.Run("exec runs and is recorded", func(t *testing.T) {
		r := probe(t, []string{"--mode", "audit"}, "exec", refusedTool, "sleep", "0")
		if r.status != 0 {
			t.Fatalf("status %d", r.status)
		}
		wantRecord(t, r, "would-deny", "exec", "")
	})
}

// At --ttl expiry every grant of the task is gone: a connect that worked
// before is refused after, and so is an exec, even though no process ended.
func TestTTLExpiry(t *testing.T) {
	p := tcpListener(t, "tcp4", "127.0.0.1:0")
	target := fmt.Sprintf("127.0.0.1:%d", p)
	// Three processes, all started by the shell: one connects at once, one
	// was started before expiry and connects after it, one is exec'd
	// after expiry.
	script := fmt.Sprintf("%s tcp %s; %s after 4 tcp %s; %s sleep 0 || echo exec-refused",
		probeBin, target, probeBin, target, probeBin)
	r := bridleRun(t, []string{"--ttl", "3s", "--allow-connect", "tcp:" + target, "--allow-exec", probeBin},
		"/bin/sh", "-c", script)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) < 3 || lines[0] != "ok" || !strings.HasPrefix(lines[1], "EPERM connect") || lines[len(lines)-1] != "exec-refused" {
		t.Fatalf("want ok, then EPERM connect, then exec-refused; got %q", lines)
	}
	rec := wantRecord(t, r, "deny", "connect", "tcp")
	if rec.Reason != "task expired" && rec.Reason != "no active task" {
		t.Fatalf("refusal after expiry has reason %q", rec.Reason)
	}
	wantRecord(t, r, "deny", "exec", "")
	if !strings.Contains(r.stderr, "expired") {
		t.Fatalf("expiry not reported:\n%s", r.stderr)
	}
}

// A connection opened during the task does not outlive it: at expiry the
// kernel aborts it, IPv4 and IPv6 alike.
func TestTTLExpiryAbortsOpenConnections(t *testing.T) {
	if features.SocketDestroy == "none" {
		t.Skipf("this kernel cannot abort a workload's sockets: %s", features.SocketDestroyReason)
	}
	for _, c := range []struct{ allow, target string }{
		{"tcp:127.0.0.1", fmt.Sprintf("127.0.0.1:%d", tcpHoldingListener(t, "tcp4", "127.0.0.1:0"))},
		{"tcp:[::1]", fmt.Sprintf("[::1]:%d", tcpHoldingListener(t, "tcp6", "[::1]:0"))},
	} {
		t.Run(c.target, func(t *testing.T) {
			r := probe(t, []string{"--ttl", "3s", "--allow-connect", c.allow}, "hold-tcp", c.target, "30")
			if !strings.Contains(r.stdout, "ok connected") || !strings.Contains(r.stdout, "closed ECONNABORTED") {
				t.Fatalf("want the held connection aborted at expiry, got %q", r.stdout)
			}
			if !strings.Contains(r.stderr, "aborted 1 open connection(s)") {
				t.Fatalf("abort not reported:\n%s", r.stderr)
			}
		})
	}
}

// The decision record is a contract: these field names, these formats.
func TestDecisionRecordSchema(t *testing.T) {
	p := tcpListener(t, "tcp4", "127.0.0.1:0")
	auditFile := filepath.Join(t.TempDir(), "audit.jsonl")
	c := exec.Command("nsenter", "--net="+netnsPath, "--", bridleBin, "run", "--user", workloadUser,
		"--audit", auditFile, "--intent", "fetch the docs", "--identity", "spiffe://example.org/agent/docs",
		"--log-allowed", "--allow-exec", probeBin, "--", probeBin, "tcp", fmt.Sprintf("127.0.0.1:%d", p))
	if out, err := c.CombinedOutput(); err == nil {
		t.Fatalf("connect was allowed: %s", out)
	}
	b, err := os.ReadFile(auditFile)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	var deny map[string]any
	var sawAllow bool
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal(l, &m); err != nil {
			t.Fatalf("not JSON: %q", l)
		}
		if m["verdict"] == "deny" {
			deny = m
		}
		if m["verdict"] == "allow" && m["action"] == "exec" {
			sawAllow = true
		}
	}
	if !sawAllow {
		t.Fatalf("--log-allowed: no allowed exec record in %s", b)
	}
	if deny == nil {
		t.Fatalf("no deny record in %s", b)
	}
	want := []string{"time", "node", "workload", "identity", "identity_source", "task", "intent", "pid", "comm", "action",
		"protocol", "address", "port", "path", "verdict", "reason", "enforcement", "policy_revision", "suppressed"}
	var got []string
	for k := range deny {
		got = append(got, k)
	}
	sort.Strings(got)
	sort.Strings(want)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("fields %v, want exactly %v", got, want)
	}
	host, _ := os.Hostname()
	ts, err := time.Parse(time.RFC3339Nano, deny["time"].(string))
	if err != nil || ts.Location() != time.UTC || time.Since(ts) > time.Minute || time.Since(ts) < 0 {
		t.Fatalf("time %v (%v)", deny["time"], err)
	}
	checks := map[string]any{
		"node": host, "identity": "spiffe://example.org/agent/docs", "identity_source": "request", "intent": "fetch the docs",
		"comm": "probe", "action": "connect", "protocol": "tcp", "address": "127.0.0.1",
		"port": float64(p), "path": "", "verdict": "deny", "reason": "no rule allows it", "enforcement": "cgroup",
		"policy_revision": "grants",
	}
	for k, v := range checks {
		if deny[k] != v {
			t.Errorf("%s = %#v, want %#v", k, deny[k], v)
		}
	}
	if !regexp.MustCompile(`^/bridle\.run/run-t-[0-9a-f]{12}$`).MatchString(deny["workload"].(string)) {
		t.Errorf("workload %q", deny["workload"])
	}
	if !strings.HasSuffix(deny["workload"].(string), deny["task"].(string)) {
		t.Errorf("task %q does not name the workload %q", deny["task"], deny["workload"])
	}
	if deny["pid"].(float64) <= 0 {
		t.Errorf("pid %v", deny["pid"])
	}
}

func TestExitStatus(t *testing.T) {
	if r := bridleRun(t, nil, "/bin/sh", "-c", "exit 7"); r.status != 7 {
		t.Fatalf("status %d, want 7", r.status)
	}
	if r := bridleRun(t, nil, "/bin/sh", "-c", "kill -TERM $$"); r.status != 128+15 {
		t.Fatalf("status %d, want 143", r.status)
	}
	r := bridleRun(t, nil, "/bin/sh", "-c", "exit 0")
	if r.status != 0 || !strings.Contains(r.stderr, "exited with status 0; 0 denied") {
		t.Fatalf("status %d, summary:\n%s", r.status, r.stderr)
	}
}

// Bad input is refused before anything runs.
func TestBadFlags(t *testing.T) {
	dir := t.TempDir()
	chmodAll(t, dir)
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(dir, "ran")
	cases := map[string][]string{
		"--allow-connect":  {"--allow-connect", "tcp:300.1.2.3:80"},
		"unbracketed ipv6": {"--allow-connect", "tcp:2001:db8::1:443"},
		"--allow-unix":     {"--allow-unix", "relative.sock"},
		"--allow-exec":     {"--allow-exec", "/no/such/binary"},
		"--mode":           {"--mode", "permissive"},
		"--identity":       {"--identity", "not-a-spiffe-id"},
		"--ttl":            {"--ttl", "ten minutes"},
		"--user":           {"--user", "no-such-user-here"},
	}
	for name, flags := range cases {
		t.Run(name, func(t *testing.T) {
			r := bridleRun(t, append(flags, "--allow-exec", probeBin), probeBin, "touch", marker)
			if r.status == 0 {
				t.Fatal("bad flag accepted")
			}
			if !strings.HasPrefix(r.stderr, "bridle: ") || strings.Count(r.stderr, "\n") > 3 {
				t.Fatalf("want a short clear error, got:\n%s", r.stderr)
			}
			if _, err := os.Stat(marker); err == nil {
				t.Fatal("the command ran despite the bad flag")
			}
		})
	}
	t.Run("no user and no sudo", func(t *testing.T) {
		c := exec.Command(bridleBin, "run", "--", probeBin, "touch", marker)
		c.Env = append(os.Environ(), "SUDO_USER=")
		out, err := c.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "--user") {
			t.Fatalf("want a refusal naming --user, got %v: %s", err, out)
		}
		if _, err := os.Stat(marker); err == nil {
			t.Fatal("the command ran")
		}
	})
}

// The workload runs without privilege: the requested user, no
// capabilities in any set, no_new_privs.
func TestWorkloadPrivileges(t *testing.T) {
	u, err := user.Lookup(workloadUser)
	if err != nil {
		t.Fatal(err)
	}
	r := probe(t, nil, "creds")
	if r.status != 0 {
		t.Fatalf("status %d: %s", r.status, r.stderr)
	}
	for _, want := range []string{fmt.Sprintf("Uid: %s %s %s %s", u.Uid, u.Uid, u.Uid, u.Uid),
		"CapInh: 0000000000000000", "CapPrm: 0000000000000000", "CapEff: 0000000000000000",
		"CapBnd: 0000000000000000", "CapAmb: 0000000000000000", "NoNewPrivs: 1"} {
		if !strings.Contains(r.stdout, want+"\n") {
			t.Errorf("want %q in\n%s", want, r.stdout)
		}
	}
}

// Runs started at the same time keep to their own cgroups and pins: one
// run's sweep of leftovers never takes another's.
func TestConcurrentRuns(t *testing.T) {
	p := tcpListener(t, "tcp4", "127.0.0.1:0")
	target := fmt.Sprintf("127.0.0.1:%d", p)
	const n = 4
	results := make(chan result, n)
	for i := 0; i < n; i++ {
		go func() {
			results <- probe(t, []string{"--allow-connect", "tcp:" + target}, "after", "0.5", "tcp", target)
		}()
	}
	for i := 0; i < n; i++ {
		if r := <-results; r.status != 0 || !strings.HasPrefix(r.probeLine(), "ok") {
			t.Errorf("run %d: status %d line %q\n%s", i, r.status, r.probeLine(), r.stderr)
		}
	}
}
