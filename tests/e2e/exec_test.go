package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// wantExecRefused checks the exec was stopped the way this kernel's mode
// promises: EPERM from execve under BPF LSM, SIGKILL of the new image in
// kill mode. Either way Bridle must have recorded the denial.
func wantExecRefused(t testing.TB, r result, path string) string {
	t.Helper()
	switch execMode {
	case "lsm":
		if r.status != 2 || !strings.HasPrefix(r.probeLine(), "EPERM") {
			t.Fatalf("lsm mode: want EPERM from exec, got status %d line %q", r.status, r.probeLine())
		}
	case "kill":
		if r.status != 128+9 || r.stdout != "" {
			t.Fatalf("kill mode: want the new image killed (status 137, no output), got status %d stdout %q", r.status, r.stdout)
		}
	default:
		t.Fatalf("unknown exec mode %q", execMode)
	}
	rec := wantRecord(t, r, "deny", "exec", "")
	if string(rec.Enforcement) != execMode {
		t.Fatalf("record enforcement %q, want %q", rec.Enforcement, execMode)
	}
	if path != "" && rec.Path != path {
		t.Fatalf("record path %q, want %q", rec.Path, path)
	}
	return rec.Path
}

// copyExecutable copies a binary into a fresh world-readable directory.
func copyExecutable(t testing.TB, src, name string) string {
	t.Helper()
	dir := t.TempDir()
	chmodAll(t, dir)
	dst := filepath.Join(dir, name)
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

func TestExec(t *testing.T) {
	allow := []string{"--allow-exec", allowedTool}

	t.Run("allowed", func(t *testing.T) {
		r := probe(t, allow, "exec", allowedTool, "sleep", "0")
		if r.status != 0 {
			t.Fatalf("status %d: %s", r.status, r.stderr)
		}
	})
	t.Run("refused", func(t *testing.T) {
		r := probe(t, allow, "exec", refusedTool, "sleep", "0")
		wantExecRefused(t, r, refusedTool)
		if !strings.Contains(r.stderr, "allow with --allow-exec "+refusedTool) {
			t.Fatalf("denial line does not name the flag:\n%s", r.stderr)
		}
	})
	t.Run("directory allows what is below it", func(t *testing.T) {
		r := probe(t, []string{"--allow-exec", toolsDir + "/"}, "exec", refusedTool, "sleep", "0")
		if r.status != 0 {
			t.Fatalf("status %d: %s", r.status, r.stderr)
		}
	})
	t.Run("copy of an allowed binary refused", func(t *testing.T) {
		cp := copyExecutable(t, allowedTool, "copy")
		wantExecRefused(t, probe(t, allow, "exec", cp, "sleep", "0"), cp)
	})
	t.Run("hard link of a refused binary refused", func(t *testing.T) {
		refused := copyExecutable(t, refusedTool, "refused")
		link := filepath.Join(filepath.Dir(refused), "innocent")
		if err := os.Link(refused, link); err != nil {
			t.Fatal(err)
		}
		wantExecRefused(t, probe(t, allow, "exec", link, "sleep", "0"), link)
	})
	t.Run("hard link of an allowed binary is the same binary", func(t *testing.T) {
		allowed := copyExecutable(t, allowedTool, "allowed")
		link := filepath.Join(filepath.Dir(allowed), "link")
		if err := os.Link(allowed, link); err != nil {
			t.Fatal(err)
		}
		if r := probe(t, []string{"--allow-exec", allowed}, "exec", link, "sleep", "0"); r.status != 0 {
			t.Fatalf("status %d", r.status)
		}
	})
	t.Run("symlink to a refused binary refused", func(t *testing.T) {
		dir := t.TempDir()
		chmodAll(t, dir)
		link := filepath.Join(dir, "allowed")
		if err := os.Symlink(refusedTool, link); err != nil {
			t.Fatal(err)
		}
		wantExecRefused(t, probe(t, allow, "exec", link, "sleep", "0"), link)
	})
	t.Run("memfd copy of an allowed binary refused", func(t *testing.T) {
		wantExecRefused(t, probe(t, allow, "exec-memfd", allowedTool, "sleep", "0"), "")
	})
	t.Run("execveat empty path refused", func(t *testing.T) {
		wantExecRefused(t, probe(t, allow, "execveat", refusedTool, "sleep", "0"), "")
	})
	t.Run("execveat empty path allowed", func(t *testing.T) {
		if r := probe(t, allow, "execveat", allowedTool, "sleep", "0"); r.status != 0 {
			t.Fatalf("status %d", r.status)
		}
	})
	t.Run("proc self fd refused", func(t *testing.T) {
		wantExecRefused(t, probe(t, allow, "exec-procfd", refusedTool, "sleep", "0"), "")
	})
	t.Run("dynamic loader on a refused binary refused", func(t *testing.T) {
		ldso := "/lib64/ld-linux-x86-64.so.2"
		if _, err := os.Stat(ldso); err != nil {
			t.Skipf("no dynamic loader on this system (%v): nothing to run it with", err)
		}
		// ld.so maps its argument itself, with no exec of it: the loader
		// must not be runnable, and is not unless allowed by name.
		wantExecRefused(t, probe(t, allow, "exec", ldso, refusedTool, "sleep", "0"), ldso)
	})
	script := func(t *testing.T, interpreter string) string {
		dir := t.TempDir()
		chmodAll(t, dir)
		path := filepath.Join(dir, "script")
		if err := os.WriteFile(path, []byte("#!"+interpreter+" run-script\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return path
	}
	t.Run("script with a refused interpreter refused", func(t *testing.T) {
		s := script(t, refusedTool)
		r := probe(t, []string{"--allow-exec", s}, "exec", s)
		wantExecRefused(t, r, s)
		if strings.Contains(r.stdout, "ran") {
			t.Fatal("the script ran")
		}
	})
	t.Run("script with its interpreter allowed runs", func(t *testing.T) {
		s := script(t, allowedTool)
		r := probe(t, []string{"--allow-exec", s, "--allow-exec", allowedTool}, "exec", s)
		if r.status != 0 || !strings.Contains(r.stdout, "ran "+s) {
			t.Fatalf("status %d stdout %q", r.status, r.stdout)
		}
	})
}

// Children, double-forked daemons and new sessions stay in the workload's
// cgroup and under its rules.
func TestDescendantsStayConfined(t *testing.T) {
	p := tcpListener(t, "tcp4", "127.0.0.1:0")
	target := fmt.Sprintf("127.0.0.1:%d", p)

	t.Run("fork", func(t *testing.T) {
		wantRefused(t, probe(t, nil, "spawn", "tcp", target), "connect", "tcp")
	})
	t.Run("fork allowed", func(t *testing.T) {
		wantAllowed(t, probe(t, []string{"--allow-connect", "tcp:" + target}, "spawn", "tcp", target))
	})
	t.Run("double fork and setsid", func(t *testing.T) {
		dir := t.TempDir()
		chmodAll(t, dir)
		if err := os.Chmod(dir, 0o777); err != nil { // the daemon writes here
			t.Fatal(err)
		}
		resultFile := filepath.Join(dir, "result")
		// The shell waits (boundedly) for the daemon's verdict; the daemon
		// is no longer its descendant by then.
		script := fmt.Sprintf("%s daemonize %s tcp %s >/dev/null; %s wait-file %s 10",
			probeBin, resultFile, target, probeBin, resultFile)
		r := bridleRun(t, []string{"--allow-exec", probeBin}, "/bin/sh", "-c", script)
		if !strings.HasPrefix(r.stdout, "EPERM") {
			t.Fatalf("daemonized connect: %q (status %d)", r.stdout, r.status)
		}
		wantRecord(t, r, "deny", "connect", "tcp")
	})
	t.Run("forked child exec refused", func(t *testing.T) {
		r := probe(t, nil, "spawn", "exec", refusedTool, "sleep", "0")
		switch execMode {
		case "kill":
			if !strings.HasPrefix(r.stdout, "killed SIGKILL") {
				t.Fatalf("child not killed: %q", r.stdout)
			}
		case "lsm":
			if !strings.HasPrefix(r.stdout, "EPERM") {
				t.Fatalf("child exec not refused: %q", r.stdout)
			}
		}
		wantRecord(t, r, "deny", "exec", "")
	})
}
