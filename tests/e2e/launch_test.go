package e2e

import (
	"bufio"
	"bytes"
	"io"
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

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// What a workload could reach outside itself through how it was launched:
// the invoker's terminal, processes of its own uid, its cgroup membership.

// A uid-0 workload owns root's files and cgroup.procs: no capability drop
// confines it, so bridle run refuses it before anything runs.
func TestEscapeRootWorkload(t *testing.T) {
	dir := t.TempDir()
	chmodAll(t, dir)
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(dir, "ran")
	for _, name := range []string{"root", "0"} {
		t.Run("--user "+name, func(t *testing.T) {
			r := bridleRun(t, []string{"--user", name, "--allow-exec", probeBin}, probeBin, "touch", marker)
			if r.status != 2 || !strings.Contains(r.stderr, "uid 0") {
				t.Fatalf("want a refusal with status 2 saying why (uid 0), got status %d:\n%s", r.status, r.stderr)
			}
			if _, err := os.Stat(marker); err == nil {
				t.Fatal("the command ran as root")
			}
		})
	}
	t.Run("SUDO_USER root", func(t *testing.T) {
		c := exec.Command(bridleBin, "run", "--allow-exec", probeBin, "--", probeBin, "touch", marker)
		c.Env = append(os.Environ(), "SUDO_USER=root")
		out, err := c.CombinedOutput()
		if ee, isExit := err.(*exec.ExitError); !isExit || ee.ExitCode() != 2 || !strings.Contains(string(out), "--user") {
			t.Fatalf("want status 2 naming --user, got %v: %s", err, out)
		}
		if _, err := os.Stat(marker); err == nil {
			t.Fatal("the command ran as root")
		}
	})
}

// Even a workload whose user may write cgroup.procs files (here its own
// cgroup delegated to it, as systemd's Delegate= does) cannot move itself
// by writing them: the cgroup file systems are read-only in the
// workload's mount namespace. (clone3's CLONE_INTO_CGROUP is judged by
// file permission alone, which Bridle's root-owned cgroups and the
// refusal of uid 0 decide.)
func TestEscapeCgroupMove(t *testing.T) {
	uid, gid := workloadIDs(t)
	dir := t.TempDir()
	chmodAll(t, dir)
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	results := make(chan result, 1)
	go func() { results <- probe(t, nil, "cgroup-move", dir) }()
	var own []byte
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var err error
		if own, err = os.ReadFile(filepath.Join(dir, "ready")); err == nil && len(own) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the workload never said which cgroup it is in")
		}
	}
	workload := filepath.Join(cgroupRoot(t), string(own))
	target := filepath.Join(workload, "moved")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{workload, target} {
		if err := os.Chown(filepath.Join(p, "cgroup.procs"), uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "go"), []byte(target), 0o644); err != nil {
		t.Fatal(err)
	}
	r := <-results
	if line := r.probeLine(); line != "error EROFS" {
		t.Fatalf("moving into %s: want error EROFS (read-only cgroup mount), got %q", target, line)
	}
	if !strings.Contains(r.stdout, "\ncgroup "+string(own)+"\n") {
		t.Fatalf("the workload left %s:\n%s", own, r.stdout)
	}
}

func workloadIDs(t testing.TB) (int, int) {
	t.Helper()
	u, err := user.Lookup(workloadUser)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return uid, gid
}

// A process of the workload's own uid that Bridle does not confine (the
// invoker's shell, editor, agent harness) is out of the workload's reach:
// it cannot be traced, written, robbed of its fds or signalled.
func TestEscapePtraceOutside(t *testing.T) {
	uid, gid := workloadIDs(t)
	victim := exec.Command(probeBin, "victim")
	victim.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	stdin, err := victim.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := victim.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = victim.Process.Kill(); _ = victim.Wait() })
	out := bufio.NewReader(stdout)
	first, err := out.ReadString('\n')
	addr, found := strings.CutPrefix(strings.TrimSpace(first), "ok ")
	if err != nil || !found {
		t.Fatalf("victim: %q %v", first, err)
	}
	pid := strconv.Itoa(victim.Process.Pid)

	// The same uid outside any workload reaches it: the test is real.
	sanity := exec.Command(probeBin, "kill", pid, "0")
	sanity.SysProcAttr = victim.SysProcAttr
	if b, err := sanity.Output(); err != nil || !strings.HasPrefix(string(b), "ok") {
		t.Fatalf("an unconfined process of uid %d cannot signal the victim: %q %v", uid, b, err)
	}

	for _, attack := range [][]string{
		{"ptrace-attach", pid},
		{"ptrace-seize", pid},
		{"vm-write", pid, addr},
		{"mem-write", pid, addr},
		{"pidfd-getfd", pid},
		{"kill", pid, "0"},
		{"kill", pid, strconv.Itoa(int(unix.SIGTERM))},
	} {
		t.Run(strings.Join(attack[:1], " "), func(t *testing.T) {
			r := probe(t, nil, attack...)
			line := r.probeLine()
			if !strings.HasPrefix(line, "EPERM") && line != "error ESRCH" && line != "error ENOENT" {
				t.Errorf("%v reached the process outside the workload: %q", attack, line)
			}
		})
	}
	if err := unix.Kill(victim.Process.Pid, 0); err != nil {
		t.Fatalf("the victim is gone: %v", err)
	}
	stdin.Close()
	rest, _ := io.ReadAll(out)
	if err := victim.Wait(); err != nil || strings.TrimSpace(string(rest)) != "intact" {
		t.Fatalf("the victim was harmed: memory %q, exit %v", rest, err)
	}
}

// adminTerminal is a pty playing the terminal of the admin who types
// `bridle run` in a root shell.
type adminTerminal struct {
	master, slave *os.File
	saved         *unix.Termios
	mu            sync.Mutex
	out           bytes.Buffer
}

func newAdminTerminal(t *testing.T) *adminTerminal {
	t.Helper()
	master, slave, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	a := &adminTerminal{master: master, slave: slave}
	if a.saved, err = unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			a.mu.Lock()
			a.out.Write(buf[:n])
			a.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		master.Close()
		slave.Close()
		<-done
	})
	return a
}

// start runs argv as the admin's shell would: in a session whose
// controlling terminal is this one, on its stdin, stdout and stderr.
func (a *adminTerminal) start(t *testing.T, extra []*os.File, argv ...string) *exec.Cmd {
	t.Helper()
	c := exec.Command(argv[0], argv[1:]...)
	c.Stdin, c.Stdout, c.Stderr = a.slave, a.slave, a.slave
	c.ExtraFiles = extra
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(2*time.Minute, func() { _ = c.Process.Kill() })
	t.Cleanup(func() { timer.Stop(); _ = c.Process.Kill() })
	return c
}

func (a *adminTerminal) output() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.out.String()
}

// waitFor waits until the terminal has shown s. bridle run takes over
// 15 s to start in the kernel matrix's emulated guests.
func (a *adminTerminal) waitFor(t *testing.T, s string) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); !strings.Contains(a.output(), s); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the terminal never showed %q; it shows:\n%q", s, a.output())
		}
	}
}

func (a *adminTerminal) typ(t *testing.T, s string) {
	t.Helper()
	if _, err := a.master.Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
}

// exit waits for c and returns its exit status; the terminal's settings
// must be as they were before bridle ran.
func (a *adminTerminal) exit(t *testing.T, c *exec.Cmd) int {
	t.Helper()
	err := c.Wait()
	var status int
	if ee, isExit := err.(*exec.ExitError); isExit {
		status = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	a.checkRestored(t)
	t.Logf("terminal:\n%s", a.output())
	return status
}

func (a *adminTerminal) checkRestored(t *testing.T) {
	t.Helper()
	now, err := unix.IoctlGetTermios(int(a.slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if *now != *a.saved {
		t.Fatalf("terminal settings not restored:\nbefore %+v\nafter  %+v", *a.saved, *now)
	}
}

// bridleOnTerminal is `bridle run` of the probe as the workload user.
func bridleOnTerminal(action ...string) []string {
	return append([]string{bridleBin, "run", "--user", workloadUser, "--allow-exec", probeBin, "--", probeBin}, action...)
}

// The workload never holds the invoker's terminal: characters it pushes
// with TIOCSTI land in its own pty, not in the admin's shell, which would
// run them as root after bridle exits.
func TestEscapeTIOCSTI(t *testing.T) {
	if b, err := os.ReadFile("/proc/sys/dev/tty/legacy_tiocsti"); err == nil && strings.TrimSpace(string(b)) == "0" {
		t.Skip("TIOCSTI is disabled for unprivileged processes on this kernel (dev.tty.legacy_tiocsti = 0): the attack cannot happen")
	}
	a := newAdminTerminal(t)
	var st unix.Stat_t
	if err := unix.Fstat(int(a.slave.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	maj, mnr := uint64(unix.Major(st.Rdev)), uint64(unix.Minor(st.Rdev))
	adminTTY := strconv.FormatUint(mnr&0xff|maj<<8|(mnr&^0xff)<<12, 10)

	c := a.start(t, nil, bridleOnTerminal("tiocsti")...)
	if status := a.exit(t, c); status != 0 {
		t.Fatalf("status %d", status)
	}
	out := a.output()
	if !strings.Contains(out, "tty_nr ") {
		t.Fatalf("the probe did not run:\n%s", out)
	}
	if strings.Contains(out, "tty_nr "+adminTTY+"\r") || strings.Contains(out, "tty_nr 0\r") {
		t.Errorf("the workload's controlling terminal is not a pty of its own (admin's is %s):\n%s", adminTTY, out)
	}
	n, err := unix.IoctlGetInt(int(a.slave.Fd()), unix.TIOCINQ)
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		b := make([]byte, n)
		_ = unix.SetNonblock(int(a.slave.Fd()), true)
		m, _ := unix.Read(int(a.slave.Fd()), b)
		t.Fatalf("%d byte(s) pushed into the admin's terminal: %q", n, b[:max(m, 0)])
	}
}

// Through its pty an interactive workload behaves as on the terminal
// itself: it reads what is typed, Ctrl-C, Ctrl-D and Ctrl-Z do what they
// do there, the window size follows, and its exit status is bridle's.
func TestInteractivePty(t *testing.T) {
	t.Run("answer and exit status", func(t *testing.T) {
		a := newAdminTerminal(t)
		c := a.start(t, nil, bridleOnTerminal("ask", "7")...)
		a.waitFor(t, "name? ")
		a.typ(t, "world\r")
		a.waitFor(t, "hello world")
		if status := a.exit(t, c); status != 7 {
			t.Fatalf("status %d, want 7", status)
		}
	})
	t.Run("ctrl-c", func(t *testing.T) {
		a := newAdminTerminal(t)
		c := a.start(t, nil, bridleOnTerminal("ask", "0")...)
		a.waitFor(t, "name? ")
		a.typ(t, "\x03")
		if status := a.exit(t, c); status != 128+int(unix.SIGINT) {
			t.Fatalf("status %d, want 130 (SIGINT)", status)
		}
	})
	t.Run("ctrl-d", func(t *testing.T) {
		a := newAdminTerminal(t)
		c := a.start(t, nil, bridleOnTerminal("ask", "0")...)
		a.waitFor(t, "name? ")
		a.typ(t, "\x04")
		a.waitFor(t, "eof")
		if status := a.exit(t, c); status != 5 {
			t.Fatalf("status %d, want 5 (end of input)", status)
		}
	})
	t.Run("window size", func(t *testing.T) {
		a := newAdminTerminal(t)
		if err := pty.Setsize(a.master, &pty.Winsize{Rows: 33, Cols: 111}); err != nil {
			t.Fatal(err)
		}
		c := a.start(t, nil, bridleOnTerminal("winsize", "15")...)
		a.waitFor(t, "size 33 111")
		if err := pty.Setsize(a.master, &pty.Winsize{Rows: 40, Cols: 120}); err != nil {
			t.Fatal(err)
		}
		a.waitFor(t, "size 40 120")
		if status := a.exit(t, c); status != 0 {
			t.Fatalf("status %d", status)
		}
	})
	t.Run("ctrl-z", func(t *testing.T) {
		a := newAdminTerminal(t)
		reports, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer reports.Close()
		// A job-control shell runs bridle as its foreground job.
		c := a.start(t, []*os.File{w}, append([]string{probeBin, "jobs"}, bridleOnTerminal("ask", "3")...)...)
		w.Close()
		a.waitFor(t, "name? ")
		a.typ(t, "\x1a")
		stopped := make(chan string, 1)
		go func() {
			line, _ := bufio.NewReader(reports).ReadString('\n')
			stopped <- line
		}()
		select {
		case line := <-stopped:
			if !strings.HasPrefix(line, "stopped SIGTSTP") {
				t.Fatalf("job: %q", line)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("Ctrl-Z did not suspend bridle; the terminal shows:\n%q", a.output())
		}
		// Suspended, bridle gave the terminal back as it found it.
		a.checkRestored(t)
		if err := c.Process.Signal(unix.SIGUSR1); err != nil { // fg
			t.Fatal(err)
		}
		a.typ(t, "world\r")
		a.waitFor(t, "hello world")
		if status := a.exit(t, c); status != 3 {
			t.Fatalf("status %d, want 3", status)
		}
	})
}
