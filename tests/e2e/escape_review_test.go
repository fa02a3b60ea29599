package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Escapes found by a second adversarial review, after the sixteen of
// docs/SECURITY.md were closed. Each test reproduces one.

// bridleRunWithFiles is bridleRun with descriptors the invoker holds open
// (not close-on-exec) when it runs bridle: files[i] is fd 3+i. A root
// script, a CI runner or an orchestrator often has some (a lock file, a log
// opened for appending, a socket); sudo closes them, a direct call does not.
func bridleRunWithFiles(t *testing.T, files []*os.File, flags []string, cmd ...string) result {
	t.Helper()
	args := append([]string{"--net=" + netnsPath, "--", bridleBin, "run", "--user", workloadUser}, flags...)
	args = append(append(args, "--"), cmd...)
	c := exec.Command("nsenter", args...)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	c.ExtraFiles = files
	err := c.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("bridle run: %v", err)
		}
		r.status = ee.Sys().(syscall.WaitStatus).ExitStatus()
	}
	t.Logf("bridle run %v -- %v\nstatus %d\nstdout: %s\nstderr: %s", flags, cmd, r.status, r.stdout, r.stderr)
	return r
}

// A workload must start with stdin, stdout and stderr only. Whatever else
// bridle's invoker held open reaches COMMAND today: a root-only file opened
// for appending becomes writable by the workload's user, and an unconnected
// socket made outside the workload's cgroup connects anywhere, because
// cgroup socket programs run for the socket's cgroup, not the caller's
// (no record either).
func TestEscapeInheritedDescriptors(t *testing.T) {
	dir := t.TempDir()
	chmodAll(t, dir)
	rootOnly := filepath.Join(dir, "root-only.log")
	if err := os.WriteFile(rootOnly, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.OpenFile(rootOnly, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()

	port := tcpListener(t, "tcp4", "127.0.0.1:0")
	var sockFd int
	inNetns(t, func() {
		// Made here, in the test's cgroup: outside any workload.
		if sockFd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0); err != nil {
			t.Fatal(err)
		}
	})
	sock := os.NewFile(uintptr(sockFd), "socket")
	defer sock.Close()

	// fd 3 and 4 are bridle's own (control channel and seccomp supervisor
	// in bridle-init); the invoker's descriptors sit above them.
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	files := []*os.File{devnull, devnull, devnull, devnull, logf, sock} // fd 7: the log, fd 8: the socket

	t.Run("root-only file", func(t *testing.T) {
		r := bridleRunWithFiles(t, files, []string{"--allow-exec", probeBin}, probeBin, "fd-write", "7", "planted by the workload\n")
		b, _ := os.ReadFile(rootOnly)
		if len(b) > 0 || strings.HasPrefix(r.probeLine(), "ok") {
			t.Fatalf("the workload (uid nobody) wrote to a root-only file through a descriptor it inherited: %q", b)
		}
	})
	t.Run("socket made outside the workload", func(t *testing.T) {
		r := bridleRunWithFiles(t, files, []string{"--allow-exec", probeBin}, probeBin, "fd-connect", "8", fmt.Sprintf("127.0.0.1:%d", port))
		if r.status == 0 || strings.HasPrefix(r.probeLine(), "ok") {
			t.Fatalf("the workload connected to 127.0.0.1:%d, which no rule allows, through an inherited socket: %q", port, r.probeLine())
		}
	})
}

// Exec rules name an inode by (device, inode number). A root-owned,
// read-only file in a directory the workload's user may write can be
// removed, which frees the inode number; ext4 (and XFS) hand a freed number
// to the next file created nearby, so the workload would create files until
// one has it, write any program into it and run it. Such a rule is refused
// at task start, like a file the workload can write.
func TestEscapeExecInodeReuse(t *testing.T) {
	u, err := user.Lookup(workloadUser)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	dir := t.TempDir()
	chmodAll(t, dir)
	work := filepath.Join(dir, "project") // the agent's working directory
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	tool := filepath.Join(work, "tool")
	if err := os.WriteFile(tool, mustRead(t, "/bin/true"), 0o755); err != nil { // root-owned, 0755
		t.Fatal(err)
	}
	if err := os.Chown(work, uid, -1); err != nil {
		t.Fatal(err)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(work, &sfs); err != nil {
		t.Fatal(err)
	}
	// The payload: a program no rule allows (a copy of the probe).
	r := probe(t, []string{"--allow-exec", tool}, "reuse-inode", tool, refusedTool, "creds")
	if strings.HasPrefix(r.probeLine(), "ok") {
		t.Fatalf("a program no rule allows ran under the freed inode number of an allowed file: %q", r.probeLine())
	}
	if r.status == 0 || !strings.Contains(r.stderr, "can be removed and its inode number given to a new file") {
		t.Fatalf("want the rule refused at start (its directory is the workload's), got status %d:\n%s", r.status, r.stderr)
	}
	if sfs.Type == unix.TMPFS_MAGIC {
		t.Log("tmpfs does not reuse inode numbers, so only the refusal is checked here; ext4 and XFS do")
	}
}

// A standalone run's workload sits in bridle.run/, under none of bridled's
// roots, and runs as the invoking user, who is often one of bridled's
// admins. Where it may reach bridled's socket (kernels without unix hooks,
// or a rule that names it), it must still be refused as a workload.
func TestEscapeStandaloneRunCallsAPI(t *testing.T) {
	u, err := user.Lookup(workloadUser)
	if err != nil {
		t.Fatal(err)
	}
	e := newDaemonEnv(t)
	e.openToAll()
	e.appendConfig("admins: {uids: [" + u.Uid + "]}")
	e.start()
	e.startTask(e.workload("w"))
	// The same user outside any workload is an admin.
	if got := runAsNobody(t, "http-get", e.socket, "/v1/tasks"); got != "ok 200" {
		t.Fatalf("GET /v1/tasks by an admin outside any workload: %q, want ok 200", got)
	}
	flags := []string{"--standalone", "--allow-exec", probeBin}
	if features.UnixHooks {
		flags = append(flags, "--allow-unix", e.socket)
	}
	r := bridleRun(t, flags, probeBin, "http-get", e.socket, "/v1/tasks")
	if r.probeLine() != "ok 403" || !strings.Contains(r.stdout+r.stderr, "standalone bridle run") {
		t.Fatalf("a standalone run's workload called the task API as an admin: %q\n%s", r.probeLine(), r.stderr)
	}
}
