package workload

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// call is one system call as the filter sees it.
type call struct {
	arch uint32
	nr   int
	args [6]uint64
}

// packet lays out struct seccomp_data for x/net/bpf's VM, which loads
// words big-endian: each 32-bit word the filter reads is stored big-endian
// where the native (little-endian) layout has it.
func (c call) packet() []byte {
	b := make([]byte, 64)
	binary.BigEndian.PutUint32(b[0:], uint32(c.nr))
	binary.BigEndian.PutUint32(b[4:], c.arch)
	for i, a := range c.args {
		binary.BigEndian.PutUint32(b[16+8*i:], uint32(a))       // low word first
		binary.BigEndian.PutUint32(b[16+8*i+4:], uint32(a>>32)) // then high
	}
	return b
}

func TestSandboxFilterDecisions(t *testing.T) {
	native, err := arch.GetInfo("")
	if err != nil {
		t.Skipf("no seccomp syscall table for this architecture: %v", err)
	}
	if native.ID != arch.X86_64.ID && native.ID != arch.AARCH64.ID {
		t.Skipf("the filter's tests cover x86-64 and arm64, not %s", native.Name)
	}
	prog, err := sandboxProgram(seccomp.ActionUserNotify)
	if err != nil {
		t.Fatal(err)
	}
	vm, err := bpf.NewVM(prog)
	if err != nil {
		t.Fatal(err)
	}
	const (
		allow  = uint32(seccomp.ActionAllow)
		notify = uint32(seccomp.ActionUserNotify)
		enosys = uint32(seccomp.ActionErrno) | uint32(unix.ENOSYS)
	)
	id := uint32(native.ID)
	nc := func(nr int, args ...uint64) call {
		c := call{arch: id, nr: nr}
		copy(c.args[:], args)
		return c
	}
	cases := []struct {
		name string
		c    call
		want uint32
	}{
		{"read", nc(unix.SYS_READ, 0), allow},
		{"socket AF_UNIX", nc(unix.SYS_SOCKET, unix.AF_UNIX, unix.SOCK_STREAM), allow},
		{"socket AF_INET", nc(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_DGRAM), allow},
		{"socket AF_INET6", nc(unix.SYS_SOCKET, unix.AF_INET6, unix.SOCK_STREAM), allow},
		{"socket AF_NETLINK", nc(unix.SYS_SOCKET, unix.AF_NETLINK, unix.SOCK_RAW), allow},
		{"socket AF_VSOCK", nc(unix.SYS_SOCKET, unix.AF_VSOCK, unix.SOCK_STREAM), notify},
		{"socket AF_PACKET", nc(unix.SYS_SOCKET, unix.AF_PACKET, unix.SOCK_RAW), notify},
		{"socket AF_ALG", nc(unix.SYS_SOCKET, unix.AF_ALG, unix.SOCK_SEQPACKET), notify},
		{"socket AF_UNIX with high bits", nc(unix.SYS_SOCKET, 1<<32|unix.AF_UNIX), notify},
		{"socketpair AF_UNIX", nc(unix.SYS_SOCKETPAIR, unix.AF_UNIX, unix.SOCK_STREAM), allow},
		{"socketpair AF_TIPC", nc(unix.SYS_SOCKETPAIR, unix.AF_TIPC, unix.SOCK_STREAM), notify},
		{"unshare files", nc(unix.SYS_UNSHARE, unix.CLONE_FILES|unix.CLONE_FS), allow},
		{"unshare user", nc(unix.SYS_UNSHARE, unix.CLONE_NEWUSER), notify},
		{"unshare mnt", nc(unix.SYS_UNSHARE, unix.CLONE_NEWNS), notify},
		{"unshare time", nc(unix.SYS_UNSHARE, unix.CLONE_NEWTIME), notify},
		{"unshare user with files", nc(unix.SYS_UNSHARE, unix.CLONE_FILES|unix.CLONE_NEWUSER), notify},
		{"clone fork", nc(unix.SYS_CLONE, uint64(unix.SIGCHLD)), allow},
		{"clone thread", nc(unix.SYS_CLONE, unix.CLONE_VM|unix.CLONE_FS|unix.CLONE_FILES|unix.CLONE_SIGHAND|unix.CLONE_THREAD|unix.CLONE_SYSVSEM|unix.CLONE_SETTLS|unix.CLONE_PARENT_SETTID|unix.CLONE_CHILD_CLEARTID), allow},
		// Exit signal 0x80 and up is not a signal; it shares CLONE_NEWTIME's
		// bit, which clone(2) does not take.
		{"clone exit signal bits", nc(unix.SYS_CLONE, 0xff), allow},
		{"clone user", nc(unix.SYS_CLONE, unix.CLONE_NEWUSER|uint64(unix.SIGCHLD)), notify},
		{"clone net", nc(unix.SYS_CLONE, unix.CLONE_NEWNET), notify},
		{"clone pid", nc(unix.SYS_CLONE, unix.CLONE_NEWPID), notify},
		{"clone3", nc(unix.SYS_CLONE3, 0, 88), enosys},
		{"io_uring_setup", nc(unix.SYS_IO_URING_SETUP, 4, 0), enosys},
		{"io_uring_enter", nc(unix.SYS_IO_URING_ENTER, 3, 1), enosys},
		{"io_uring_register", nc(unix.SYS_IO_URING_REGISTER, 3, 0), enosys},
		{"setns any", nc(unix.SYS_SETNS, 3, 0), notify},
		{"setns net", nc(unix.SYS_SETNS, 3, unix.CLONE_NEWNET), notify},
		// The 32-bit ABI: its numbers mean other calls (i386's 310 is
		// unshare), so nothing of it passes.
		{"foreign ABI", call{arch: uint32(arch.I386.ID), nr: 310, args: [6]uint64{unix.CLONE_NEWUSER}}, enosys},
		{"foreign ABI read", call{arch: uint32(arch.I386.ID), nr: 3}, enosys},
		{"foreign ABI arm", call{arch: uint32(arch.ARM.ID), nr: 3}, enosys},
	}
	if native.ID == arch.X86_64.ID {
		cases = append(cases, struct {
			name string
			c    call
			want uint32
		}{"x32 ABI", call{arch: id, nr: 0x40000000 | 272, args: [6]uint64{unix.CLONE_NEWUSER}}, enosys})
	}
	for _, tc := range cases {
		got, err := vm.Run(tc.c.packet())
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if uint32(got) != tc.want {
			t.Errorf("%s (nr %d args %#x): got %#x, want %#x", tc.name, tc.c.nr, tc.c.args[:2], uint32(got), tc.want)
		}
	}
}

// The helper process: sets no_new_privs, installs the filter as the shim
// does, then runs one call per line of stdin and prints its errno name.
const helperEnv = "BRIDLE_TEST_SANDBOX_HELPER"

func TestSandboxHelper(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("helper process of TestSandbox*; runs only when started by them")
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	if err := Sandbox(); err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	if mode == "exec" {
		// Hand the process to the program named in the arguments.
		argv := strings.Fields(os.Getenv(helperEnv + "_EXEC"))
		err := unix.Exec(argv[0], argv, os.Environ())
		fmt.Println("error exec", err)
		os.Exit(1)
	}
	fmt.Println("ready", os.Getenv(SupervisorEnv) == "")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var err error
		switch f := strings.Fields(sc.Text()); f[0] {
		case "socket":
			family, _ := strconv.Atoi(f[1])
			var fd int
			if fd, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err == nil {
				unix.Close(fd)
			}
		case "unshare-user":
			err = unix.Unshare(unix.CLONE_NEWUSER)
		}
		if errno, ok := err.(unix.Errno); ok {
			fmt.Println(unix.ErrnoName(errno))
		} else {
			fmt.Println("ok")
		}
	}
	os.Exit(0)
}

// helper starts the helper process in mode, supervised by sup when given.
type helper struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startHelper(t *testing.T, mode string, sup *Supervisor, extraEnv ...string) *helper {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestSandboxHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	cmd.Env = append(cmd.Env, extraEnv...)
	cmd.Stderr = os.Stderr
	if sup != nil {
		sup.Attach(cmd)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if sup != nil {
		sup.Started()
	}
	h := &helper{cmd: cmd, in: in, out: bufio.NewScanner(outPipe)}
	t.Cleanup(func() {
		in.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	if mode != "exec" {
		if line := h.line(t); line != "ready true" {
			t.Fatalf("helper: %q (want ready, with %s removed from its environment)", line, SupervisorEnv)
		}
	}
	return h
}

func (h *helper) line(t *testing.T) string {
	t.Helper()
	got := make(chan string, 1)
	go func() {
		if h.out.Scan() {
			got <- h.out.Text()
		} else {
			got <- "EOF"
		}
	}()
	select {
	case l := <-got:
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("helper did not answer within 10s")
		return ""
	}
}

func (h *helper) do(t *testing.T, req string) string {
	t.Helper()
	if _, err := fmt.Fprintln(h.in, req); err != nil {
		t.Fatal(err)
	}
	return h.line(t)
}

// reports collects what a supervisor reported.
type reports struct {
	mu   sync.Mutex
	list []Refusal
}

func (r *reports) add(ref Refusal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.list = append(r.list, ref)
}

func (r *reports) all() []Refusal {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Refusal(nil), r.list...)
}

// The supervisor sees each refused call before its caller is answered,
// answers EPERM, and lets it go on in audit mode; once it is gone the
// kernel answers ENOSYS, so the calls stay refused.
func TestSandboxSupervisor(t *testing.T) {
	for _, auditMode := range []bool{false, true} {
		t.Run(fmt.Sprintf("audit=%v", auditMode), func(t *testing.T) {
			sup, err := NewSupervisor()
			if err != nil {
				t.Fatal(err)
			}
			var got reports
			h := startHelper(t, "calls", sup)
			sup.Serve(auditMode, got.add)

			if r := h.do(t, "socket 1"); r != "ok" {
				t.Fatalf("socket(AF_UNIX): %s", r)
			}
			r := h.do(t, "socket 40")
			switch {
			case !auditMode && r != "EPERM":
				t.Fatalf("socket(AF_VSOCK): %s, want EPERM", r)
			case auditMode && r == "EPERM":
				t.Fatalf("socket(AF_VSOCK) refused in audit mode")
			}
			r = h.do(t, "unshare-user")
			if !auditMode && r != "EPERM" {
				t.Fatalf("unshare(CLONE_NEWUSER): %s, want EPERM", r)
			}
			// Reported once answered: wait for the second.
			refs := got.all()
			for deadline := time.Now().Add(5 * time.Second); len(refs) < 2 && time.Now().Before(deadline); refs = got.all() {
				time.Sleep(10 * time.Millisecond)
			}
			if len(refs) != 2 || refs[0].Action != "socket" || refs[0].Family != 40 ||
				refs[1].Action != "namespace" || refs[1].Namespaces != "user" {
				t.Fatalf("reports %+v, want a socket of family 40 and a user namespace", refs)
			}
			if refs[0].PID != uint32(h.cmd.Process.Pid) || refs[0].Comm == "" {
				t.Fatalf("report names pid %d (%q), want %d", refs[0].PID, refs[0].Comm, h.cmd.Process.Pid)
			}
			if err := sup.Stop(); err != nil {
				t.Fatal(err)
			}
			// Fail closed: no supervisor, still refused.
			if r := h.do(t, "socket 40"); r != "ENOSYS" {
				t.Fatalf("socket(AF_VSOCK) with the supervisor gone: %s, want ENOSYS", r)
			}
			if r := h.do(t, "socket 2"); r != "ok" {
				t.Fatalf("socket(AF_INET) with the supervisor gone: %s", r)
			}
		})
	}
}

// Without a supervisor the filter refuses with EPERM by itself.
func TestSandboxUnsupervised(t *testing.T) {
	h := startHelper(t, "calls", nil)
	if r := h.do(t, "socket 40"); r != "EPERM" {
		t.Fatalf("socket(AF_VSOCK): %s, want EPERM", r)
	}
	if r := h.do(t, "unshare-user"); r != "EPERM" {
		t.Fatalf("unshare(CLONE_NEWUSER): %s, want EPERM", r)
	}
}

// glibc must keep working under the filter: pthread_create and posix_spawn
// use clone3 (2.34+) and fall back to clone on ENOSYS.
func TestSandboxGlibcFallsBackFromClone3(t *testing.T) {
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skip("no C compiler (cc) to build the glibc check with")
	}
	dir := t.TempDir()
	src, bin := filepath.Join(dir, "check.c"), filepath.Join(dir, "check")
	if err := os.WriteFile(src, []byte(glibcCheck), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(cc, "-O1", "-pthread", "-o", bin, src).CombinedOutput(); err != nil {
		t.Skipf("cc cannot build the glibc check here: %v\n%s", err, out)
	}
	h := startHelper(t, "exec", nil, helperEnv+"_EXEC="+bin)
	if line := h.line(t); line != "ok" {
		t.Fatalf("glibc under the filter: %q", line)
	}
}

const glibcCheck = `#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <spawn.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static void *thread(void *arg) { return arg; }

int main(int argc, char **argv)
{
	if (argc > 1)
		return 0; /* the spawned child */
	pthread_t t;
	if (pthread_create(&t, 0, thread, 0) != 0) { puts("pthread_create failed"); return 1; }
	pthread_join(t, 0);
	pid_t pid;
	char *child[] = {argv[0], "child", 0};
	if (posix_spawn(&pid, "/proc/self/exe", 0, 0, child, environ) != 0) { puts("posix_spawn failed"); return 1; }
	int st;
	waitpid(pid, &st, 0);
	pid = fork();
	if (pid == 0) _exit(0);
	if (pid < 0) { puts("fork failed"); return 1; }
	waitpid(pid, &st, 0);
	if (syscall(SYS_clone3, 0, 0) != -1 || errno != ENOSYS) { puts("clone3 not ENOSYS"); return 1; }
	if (unshare(CLONE_NEWUSER) != -1 || errno != EPERM) { puts("unshare not EPERM"); return 1; }
	puts("ok");
	return 0;
}
`
