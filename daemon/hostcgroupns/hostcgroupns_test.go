package hostcgroupns

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// childEnv makes the test binary act as a bridled started in a cgroup
// namespace of its own: it calls Enter and prints the namespace it ends in.
// Its target is the test's own namespace: PID 1's /proc may be closed to
// the test where it runs.
const childEnv = "BRIDLE_HOSTCGROUPNS_CHILD"

func TestMain(m *testing.M) {
	if target := os.Getenv(childEnv); target != "" {
		if err := enter(target, "/proc/self/ns/cgroup"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		ns, err := os.Readlink("/proc/self/ns/cgroup")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(ns)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: making a cgroup namespace and joining PID 1's take CAP_SYS_ADMIN and PID 1's /proc")
	}
}

func TestEnterSameNamespace(t *testing.T) {
	needRoot(t)
	// Nothing to do, no exec: the test runs in the namespace it names.
	if err := enter(ownNS(), "/proc/self/ns/cgroup"); err != nil {
		t.Fatal(err)
	}
}

// ownNS names the test's cgroup namespace through its pid, which a child
// can open.
func ownNS() string { return fmt.Sprintf("/proc/%d/ns/cgroup", os.Getpid()) }

func TestEnterFromOwnNamespace(t *testing.T) {
	needRoot(t)
	host, err := os.Readlink(ownNS())
	if err != nil {
		t.Fatal(err)
	}
	run := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Env = append(os.Environ(), childEnv+"="+ownNS())
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWCGROUP}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s %v: %v", name, args, err)
		}
		return strings.TrimSpace(string(out))
	}
	// A child made this way does start in a namespace of its own...
	if own := run("readlink", "/proc/self/ns/cgroup"); own == host {
		t.Fatalf("a child cloned with CLONE_NEWCGROUP is in the host's namespace %s", own)
	}
	// ...and enter moves it to the target's before it goes on.
	if got := run(os.Args[0], "-test.run=^$"); got != host {
		t.Errorf("after enter the process is in cgroup namespace %s, want the test's %s", got, host)
	}
}
