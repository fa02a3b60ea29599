package e2e

import (
	"fmt"
	"os"
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
	script := fmt.Sprintf("echo $$ > %s; %s wait-file %s 20 >/dev/null; exec %s exec %s sleep 0",
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
	for deadline := time.Now().Add(15 * time.Second); ; {
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
