package e2e

import (
	"bufio"
	"fmt"
	"io"
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

	// The workload connects 5 s in, long after bridle is gone, and writes
	// its verdict to a file it holds open (its stdout).
	out, err := os.Create(result)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	c := exec.Command("nsenter", "--net="+netnsPath, "--", bridleBin, "run", "-v", "--user", workloadUser,
		"--allow-exec", probeBin, "--", probeBin, "after", "5", "tcp", target)
	c.Stdout = out
	// Own process group, so killing bridle does not reach the workload.
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A pipe of the test's own, not StderrPipe: Wait would close that, and
	// the workload, which shares bridle's stderr, would die of SIGPIPE.
	stderrPipe, stderrW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stderrPipe.Close()
	c.Stderr = stderrW
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	stderrW.Close()
	// -v names the task and its pins before the command starts.
	var stderr strings.Builder
	var pins, workload string
	sc := bufio.NewScanner(stderrPipe)
	for (pins == "" || workload == "") && sc.Scan() {
		line := sc.Text()
		stderr.WriteString(line + "\n")
		if m := regexp.MustCompile(`pinned at (\S+)`).FindStringSubmatch(line); m != nil {
			pins = m[1]
		}
		if m := regexp.MustCompile(`workload (\S+),`).FindStringSubmatch(line); m != nil {
			workload = m[1]
		}
	}
	go func() { _, _ = io.Copy(io.Discard, stderrPipe) }()
	if pins == "" || workload == "" {
		t.Fatalf("bridle run -v did not name its pins and workload:\n%s", stderr.String())
	}
	// Kill bridle -9 once the workload's command is running (it sleeps 5 s
	// before it connects).
	for start := time.Now(); !processRunning(probeBin, "after", "5", "tcp", target); time.Sleep(20 * time.Millisecond) {
		if time.Since(start) > 20*time.Second {
			b, _ := os.ReadFile(out.Name())
			t.Fatalf("the workload never started\nbridle stderr:\n%s\nworkload stdout: %q", stderr.String(), b)
		}
	}
	if err := c.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = c.Wait()

	deadline := time.Now().Add(30 * time.Second)
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
	if _, err := os.Stat(pins); err != nil {
		t.Fatalf("the killed run's pins vanished before any sweep: %v", err)
	}
	r := bridleRun(t, nil, "/bin/sh", "-c", "exit 0")
	if r.status != 0 {
		t.Fatalf("next run: status %d", r.status)
	}
	if _, err := os.Stat(pins); err == nil {
		t.Fatalf("%s left behind after its workload ended", pins)
	}
}

// processRunning reports whether a process with exactly this command line
// exists.
func processRunning(argv ...string) bool {
	want := strings.Join(argv, "\x00") + "\x00"
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, d := range dirs {
		if b, err := os.ReadFile(d); err == nil && string(b) == want {
			return true
		}
	}
	return false
}
