package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
