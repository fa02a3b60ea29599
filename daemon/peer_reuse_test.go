package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/daemon/config"
)

// adminGID is the admin group of the PID reuse test.
const adminGID = 4242

// reuseResult is what the server side of the PID reuse test read.
type reuseResult struct {
	UID, GID uint32
	Groups   []uint32
	Cgroup   string
	Err      string
	Admin    bool // the config's verdict on the credentials read
	PID      int  // the caller's PID, as SO_PEERCRED gives it
	Reused   int  // the PID of the admin-group process that took it over
	Skip     string
}

// A caller (nobody) connects to the API socket, hands the connection to a
// child and exits; a process in the admin group is made to take its PID
// before bridled accepts (here in a PID namespace of the test's own, with
// ns_last_pid; on a host, by cycling PIDs). bridled used to read the
// groups and the cgroup from /proc/PID, the new process's, and ran the
// call as an admin. Now the groups are those bound to the connection
// (SO_PEERGROUPS), and the cgroup is trusted only when read from a process
// proven to be the caller: the peer is nobody, not an admin, and its
// location cannot be trusted, so every call of it is refused.
func TestEscapePeerPIDReuse(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a PID namespace, ns_last_pid and processes of other users")
	}
	if _, err := os.Stat("/proc/sys/kernel/ns_last_pid"); err != nil {
		t.Skipf("no /proc/sys/kernel/ns_last_pid (CONFIG_CHECKPOINT_RESTORE): the test cannot place a process at a chosen PID: %v", err)
	}
	// The helpers run as nobody: the test binary goes where nobody can
	// run it.
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	self := filepath.Join(dir, "server.test")
	if b, err := os.ReadFile(os.Args[0]); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(self, b, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		pidfd bool
	}{{"SO_PEERPIDFD", true}, {"pidfd_open", false}} {
		t.Run(c.name, func(t *testing.T) {
			if c.pidfd {
				if err := probePeerPidfd(); err != nil {
					t.Skipf("this kernel has no SO_PEERPIDFD (Linux 6.5+): %v", err)
				}
			}
			r := runReuse(t, self, dir, c.pidfd)
			if r.Skip != "" {
				t.Skip(r.Skip)
			}
			t.Logf("caller pid %d taken over by pid %d; read %+v", r.PID, r.Reused, r)
			if r.Reused != r.PID {
				t.Fatalf("the admin-group process has pid %d, not the caller's %d", r.Reused, r.PID)
			}
			if r.UID != 65534 || r.GID != 65534 || slices.Contains(r.Groups, adminGID) || r.Admin {
				t.Fatalf("read uid %d gid %d groups %v (admin %v): the new process's, not the caller's", r.UID, r.GID, r.Groups, r.Admin)
			}
			if r.Err == "" {
				t.Fatalf("the cgroup %q of whoever holds the pid now was trusted as the caller's", r.Cgroup)
			}
		})
	}
}

func probePeerPidfd() error {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	fd, err := unix.GetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_PEERPIDFD)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

// runReuse runs the scenario's server side as PID 1 of a new PID and mount
// namespace, where PIDs are few and ns_last_pid picks the next one.
func runReuse(t *testing.T, self, dir string, pidfd bool) reuseResult {
	t.Helper()
	cmd := exec.Command(self, "-test.run=^TestPeerReuseHelper$")
	cmd.Env = append(os.Environ(), "BRIDLE_REUSE_ROLE=init", "BRIDLE_REUSE_DIR="+dir, "BRIDLE_REUSE_PIDFD="+strconv.FormatBool(pidfd))
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS}
	cmd.Stderr = os.Stderr
	timer := time.AfterFunc(60*time.Second, func() { _ = cmd.Process.Kill() })
	defer timer.Stop()
	out, err := cmd.Output()
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, "RESULT "); ok {
			var r reuseResult
			if err := json.Unmarshal([]byte(rest), &r); err != nil {
				t.Fatal(err)
			}
			return r
		}
	}
	t.Fatalf("the namespace's init gave no result (%v):\n%s", err, out)
	return reuseResult{}
}

// TestPeerReuseHelper is the processes of TestEscapePeerPIDReuse; it does
// nothing unless started by it.
func TestPeerReuseHelper(t *testing.T) {
	switch os.Getenv("BRIDLE_REUSE_ROLE") {
	case "":
		t.Skip("a helper process of TestEscapePeerPIDReuse")
	case "init":
		r, err := reuseInit()
		if err != nil {
			fmt.Printf("HELPER-ERROR %v\n", err)
			os.Exit(1)
		}
		b, _ := json.Marshal(r)
		fmt.Printf("RESULT %s\n", b)
	case "caller":
		// Connect, hand the connection to a child that keeps it, exit.
		c, err := net.Dial("unix", os.Getenv("BRIDLE_REUSE_SOCK"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "caller:", err)
			os.Exit(1)
		}
		f, err := c.(*net.UnixConn).File()
		if err != nil {
			os.Exit(1)
		}
		child := exec.Command(os.Args[0], "-test.run=^TestPeerReuseHelper$")
		child.Env = append(os.Environ(), "BRIDLE_REUSE_ROLE=sleep")
		child.ExtraFiles = []*os.File{f}
		if err := child.Start(); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	case "sleep":
		time.Sleep(time.Minute)
	}
}

// reuseInit is PID 1 of the test's namespace: the server side.
func reuseInit() (reuseResult, error) {
	var r reuseResult
	peerPidfd = os.Getenv("BRIDLE_REUSE_PIDFD") == "true"
	// This namespace's own /proc, so that PIDs read are its PIDs.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return r, fmt.Errorf("private mounts: %w", err)
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return r, fmt.Errorf("mount proc: %w", err)
	}
	sock := filepath.Join(os.Getenv("BRIDLE_REUSE_DIR"), fmt.Sprintf("api-%t.sock", peerPidfd))
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return r, err
	}
	defer ln.Close()
	if err := os.Chmod(sock, 0o666); err != nil {
		return r, err
	}

	// The caller, as nobody. Its connection waits in the backlog: bridled
	// has not accepted it yet.
	caller := exec.Command(os.Args[0], "-test.run=^TestPeerReuseHelper$")
	caller.Env = append(os.Environ(), "BRIDLE_REUSE_ROLE=caller", "BRIDLE_REUSE_SOCK="+sock)
	caller.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	caller.Stderr = os.Stderr
	if err := caller.Run(); err != nil {
		return r, fmt.Errorf("caller: %w", err)
	}
	r.PID = caller.Process.Pid // reaped by Run: the PID is free

	// An admin-group process takes the caller's PID.
	var admin *exec.Cmd
	for range 50 {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(r.PID-1)), 0); err != nil {
			return r, fmt.Errorf("ns_last_pid: %w", err)
		}
		c := exec.Command(os.Args[0], "-test.run=^TestPeerReuseHelper$")
		c.Env = append(os.Environ(), "BRIDLE_REUSE_ROLE=sleep")
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 0, Gid: 0, Groups: []uint32{adminGID}}}
		if err := c.Start(); err != nil {
			return r, err
		}
		if c.Process.Pid == r.PID {
			admin = c
			break
		}
		// A thread of this process took the PID first; again.
		_ = c.Process.Kill()
		_ = c.Wait()
	}
	if admin == nil {
		r.Skip = fmt.Sprintf("could not start a process at pid %d in 50 tries", r.PID)
		return r, nil
	}
	defer func() { _ = admin.Process.Kill(); _ = admin.Wait() }()
	r.Reused = admin.Process.Pid

	// Only now does the server accept the connection and read its peer.
	c, err := ln.Accept()
	if err != nil {
		return r, err
	}
	defer c.Close()
	p := readPeer(c)
	cfg := &config.Config{Admins: config.Admins{GIDs: []uint32{adminGID}}}
	r.UID, r.GID, r.Groups, r.Cgroup = p.UID, p.GID, p.Groups, p.Cgroup
	r.Admin = cfg.IsAdmin(p.UID, p.Groups)
	if p.Err != nil {
		r.Err = p.Err.Error()
	}
	if r.PID != int(p.PID) {
		return r, errors.New("SO_PEERCRED names another pid than the caller's")
	}
	return r, nil
}
