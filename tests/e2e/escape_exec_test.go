package e2e

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/loader"
)

// A workload whose cgroup tree is delegated can nest cgroups as deep as it
// likes. A process 20 levels below its workload cgroup must still be found
// as the workload's and have its exec refused: finding nothing is no
// reason to let it run.
func TestEscapeExecDeepCgroup(t *testing.T) {
	const depth = 20
	cgRoot, err := loader.CgroupRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	chmodAll(t, dir)
	if err := os.Chmod(dir, 0o777); err != nil { // the workload writes its pid here
		t.Fatal(err)
	}
	pidFile, goFile := filepath.Join(dir, "pid"), filepath.Join(dir, "go")

	// The shell waits (boundedly) until the test has moved it, then runs
	// the probe, which tries the refused binary.
	script := fmt.Sprintf("echo $$ > %s; %s wait-file %s 120 >/dev/null; exec %s exec %s sleep 0",
		pidFile, probeBin, goFile, probeBin, refusedTool)
	moved := make(chan error, 1)
	go func() { moved <- moveDeep(cgRoot, pidFile, goFile, depth) }()
	r := bridleRun(t, []string{"--allow-exec", probeBin}, "/bin/sh", "-c", script)
	if err := <-moved; err != nil {
		t.Fatalf("moving the workload down %d levels: %v", depth, err)
	}
	wantExecRefused(t, r, refusedTool)
}

// moveDeep waits for the pid in pidFile, moves that process depth cgroup
// levels below its cgroup (as root, as a delegated workload could itself),
// and then lets it go on by writing goFile.
func moveDeep(cgRoot, pidFile, goFile string, depth int) error {
	defer os.WriteFile(goFile, []byte("go\n"), 0o644)
	var pid int
	// A launch takes seconds in the kernel guests (one emulated CPU):
	// the wait is for a slow start, not for a normal one.
	for deadline := time.Now().Add(90 * time.Second); ; {
		b, err := os.ReadFile(pidFile)
		if err == nil {
			if pid, err = strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no pid in %s", pidFile)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The workload has a PID namespace of its own: $$ is its pid there.
	pid, err := hostPID(pid)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return err
	}
	var rel string
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			rel = p
		}
	}
	if rel == "" {
		return fmt.Errorf("process %d: no cgroup v2 path in %q", pid, b)
	}
	cg := filepath.Join(cgRoot, rel)
	for i := range depth {
		cg = filepath.Join(cg, fmt.Sprintf("d%d", i))
	}
	if err := os.MkdirAll(cg, 0o755); err != nil {
		return err
	}
	// bridle run removes the workload's cgroup tree, nested ones included.
	return os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0)
}

// hostPID finds the process of a `bridle run` workload whose pid in the
// workload's own PID namespace is nsPID (NSpid's last field), among the
// processes in bridle run's cgroups.
func hostPID(nsPID int) (int, error) {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		status, err := os.ReadFile(filepath.Join(d, "status"))
		if err != nil {
			continue
		}
		cg, err := os.ReadFile(filepath.Join(d, "cgroup"))
		if err != nil || !strings.Contains(string(cg), "/bridle.run/") {
			continue
		}
		for _, line := range strings.Split(string(status), "\n") {
			f, ok := strings.CutPrefix(line, "NSpid:")
			if !ok {
				continue
			}
			ids := strings.Fields(f)
			if len(ids) >= 2 && ids[len(ids)-1] == strconv.Itoa(nsPID) {
				return strconv.Atoi(ids[0])
			}
		}
	}
	return 0, fmt.Errorf("no workload process has pid %d in its namespace", nsPID)
}

// A workload deeper than the programs look is refused when its task starts,
// with the reason, rather than confined in part.
func TestDaemonRefusesDeepWorkload(t *testing.T) {
	e := newDaemonEnv(t)
	e.start()
	cg := e.root
	for level := 2; level <= loader.MaxWorkloadLevel+1; level++ {
		cg += fmt.Sprintf("/l%d", level)
	}
	if err := os.MkdirAll(filepath.Join(cgroupRoot(t), cg), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := e.bridle("start", "--workload", cg, "--intent", "e2e test")
	if err == nil || !strings.Contains(out, "levels below the cgroup v2 root") {
		t.Fatalf("task start on a level %d cgroup: %v: %s", loader.MaxWorkloadLevel+1, err, out)
	}
	e.startTask(filepath.Dir(cg)) // one level up is accepted
}

// nobodyOwned writes body to a new file owned by the workload user, so the
// workload can rewrite it.
func nobodyOwned(t *testing.T, name string, body []byte) string {
	t.Helper()
	dir := t.TempDir()
	chmodAll(t, dir)
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, body, 0o755); err != nil {
		t.Fatal(err)
	}
	u, err := user.Lookup(workloadUser)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	if err := os.Chown(p, uid, -1); err != nil {
		t.Fatal(err)
	}
	return p
}

// The everyday `bridle run -- ./agent.sh` names a script its user can write.
// The agent rewrites the script's inode with a program's bytes and runs it:
// the rule that allows the script must not allow what it became.
func TestEscapeRewriteCommand(t *testing.T) {
	script := nobodyOwned(t, "agent.sh", []byte(fmt.Sprintf(
		"#!/bin/sh\n%[1]s overwrite %[1]s \"$0\" >/dev/null || exit 9\nexec %[1]s exec \"$0\" creds\n", probeBin)))
	r := bridleRun(t, []string{"--allow-exec", probeBin}, script)
	if r.status == 9 {
		t.Fatalf("the workload could not rewrite its script: %s", r.stderr)
	}
	wantExecRefused(t, r, script)
	rec := wantRecord(t, r, "deny", "exec", "")
	if !strings.Contains(rec.Reason, "#! script") {
		t.Fatalf("reason %q does not say the file may run only as a script", rec.Reason)
	}

	// Unrewritten, the script runs as before.
	ok := nobodyOwned(t, "ok.sh", []byte(fmt.Sprintf("#!/bin/sh\nexec %s creds\n", probeBin)))
	wantAllowed(t, bridleRun(t, []string{"--allow-exec", probeBin}, ok))
}

// An --allow-exec rule for a file the workload's user can write allows
// every program (the workload writes one into it): refused at start with
// the reason and the fix, accepted only when asked for.
func TestEscapeWritableExecRule(t *testing.T) {
	tool := nobodyOwned(t, "tool", mustRead(t, probeBin))
	r := probe(t, []string{"--allow-exec", tool}, "exec", tool, "creds")
	if r.status == 0 || strings.HasPrefix(r.probeLine(), "ok") {
		t.Fatalf("a task with a writable exec rule started: status %d, stdout %q", r.status, r.stdout)
	}
	for _, want := range []string{tool, "can rewrite", "owned by uid", "--allow-writable-exec"} {
		if !strings.Contains(r.stderr, want) {
			t.Fatalf("the refusal does not say %q:\n%s", want, r.stderr)
		}
	}
	wantAllowed(t, probe(t, []string{"--allow-exec", tool, "--allow-writable-exec"}, "exec", tool, "creds"))

	t.Run("directory rule", func(t *testing.T) {
		r := probe(t, []string{"--allow-exec", filepath.Dir(tool) + "/"}, "exec", tool, "creds")
		if r.status == 0 || !strings.Contains(r.stderr, "--allow-writable-exec") {
			t.Fatalf("a directory rule covering a writable file was accepted: status %d\n%s", r.status, r.stderr)
		}
	})
	t.Run("group-writable", func(t *testing.T) {
		g := copyExecutable(t, probeBin, "group-tool")
		u, err := user.Lookup(workloadUser)
		if err != nil {
			t.Fatal(err)
		}
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(g, 0, gid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(g, 0o775); err != nil {
			t.Fatal(err)
		}
		r := probe(t, []string{"--allow-exec", g}, "exec", g, "creds")
		if r.status == 0 || !strings.Contains(r.stderr, "group") {
			t.Fatalf("a group-writable exec rule was accepted: status %d\n%s", r.status, r.stderr)
		}
	})
	t.Run("root-owned is accepted", func(t *testing.T) {
		wantAllowed(t, probe(t, []string{"--allow-exec", allowedTool}, "exec", allowedTool, "creds"))
	})
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
