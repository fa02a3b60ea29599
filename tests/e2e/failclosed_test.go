package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// If bridle run itself is killed, its pinned programs keep the workload
// confined: the kernel, not the bridle process, enforces.
func TestKilledBridleStaysClosed(t *testing.T) {
	p := tcpListener(t, "tcp4", "127.0.0.1:0")
	target := fmt.Sprintf("127.0.0.1:%d", p)
	dir := t.TempDir()
	chmodAll(t, dir)
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	result := filepath.Join(dir, "result")

	// The workload connects 3 s in, long after bridle is gone, and writes
	// its verdict to a file it holds open (its stdout).
	out, err := os.Create(result)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	c := exec.Command("nsenter", "--net="+netnsPath, "--", bridleBin, "run", "-v", "--user", workloadUser,
		"--allow-exec", probeBin, "--", probeBin, "after", "3", "tcp", target)
	c.Stdout = out
	// Own process group, so killing bridle does not reach the workload.
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stderr bytes.Buffer
	c.Stderr = &stderr
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill bridle -9 while the workload sleeps.
	time.Sleep(1500 * time.Millisecond)
	if err := c.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = c.Wait()

	deadline := time.Now().Add(15 * time.Second)
	var b []byte
	for time.Now().Before(deadline) {
		var err error
		if b, err = os.ReadFile(result); err == nil && len(b) > 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.HasPrefix(string(b), "EPERM connect") {
		t.Fatalf("after bridle was killed the workload's connect gave %q, want EPERM\nbridle stderr:\n%s", b, stderr.String())
	}

	// The next run sweeps what the killed one left once its workload is
	// empty: pins of dead runs do not accumulate.
	m := regexp.MustCompile(`pinned at (\S+)`).FindStringSubmatch(stderr.String())
	if m == nil {
		t.Fatalf("killed run did not say where it pinned:\n%s", stderr.String())
	}
	if _, err := os.Stat(m[1]); err != nil {
		t.Fatalf("the killed run's pins vanished before any sweep: %v", err)
	}
	r := bridleRun(t, nil, "/bin/sh", "-c", "exit 0")
	if r.status != 0 {
		t.Fatalf("next run: status %d", r.status)
	}
	if _, err := os.Stat(m[1]); err == nil {
		t.Fatalf("%s left behind after its workload ended", m[1])
	}
}
