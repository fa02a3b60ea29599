package loader

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/policy"
)

// requireRoot fails rather than skips: these tests are the proof that the
// kernel enforces, and CI runs them as root.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("kernel tests need root (run with sudo or make test)")
	}
}

// testCgroup creates a fresh cgroup v2 directory for one test.
func testCgroup(t testing.TB) (string, uint64) {
	t.Helper()
	root, err := CgroupRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "bridle-test", fmt.Sprintf("%s-%d", sanitize(t.Name()), time.Now().UnixNano()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
		for i := 0; i < 100; i++ {
			if os.Remove(dir) == nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	id, err := CgroupID(dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir, id
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == ' ' {
			return '_'
		}
		return r
	}, s)
}

// testEnforcer loads a private enforcer pinned under a test directory.
func testEnforcer(t testing.TB) *Enforcer {
	t.Helper()
	return testEnforcerWith(t, Options{})
}

// testEnforcerWith is testEnforcer with options (PinDir is set here).
func testEnforcerWith(t testing.TB, opts Options) *Enforcer {
	t.Helper()
	requireRoot(t)
	opts.PinDir = filepath.Join(DefaultPinRoot, "test", fmt.Sprintf("%s-%d", sanitize(t.Name()), time.Now().UnixNano()))
	e, err := Load(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.Close()
		if err := e.Unpin(); err != nil {
			t.Error(err)
		}
	})
	return e
}

// runIn runs a command inside a cgroup from its first instruction.
func runIn(t testing.TB, cgroup string, name string, args ...string) (string, error) {
	t.Helper()
	fd, err := syscall.Open(cgroup, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	return out.String(), err
}

func TestLoadReportsFeatures(t *testing.T) {
	e := testEnforcer(t)
	f := e.Features()
	t.Logf("kernel %s, exec mode %s (%s), unix hooks %v (%s), LSMs %v, BTF %s",
		f.Kernel, f.ExecMode, f.ExecModeReason, f.UnixHooks, f.UnixReason, f.ActiveLSMs, f.BTF)
	if f.ExecMode != ExecModeLSM && f.ExecMode != ExecModeKill {
		t.Fatalf("exec mode %q", f.ExecMode)
	}
	if f.ExecModeReason == "" {
		t.Fatal("exec mode without a reason")
	}
}

func TestConnectAllowedAndRefused(t *testing.T) {
	e := testEnforcer(t)
	cg, id := testCgroup(t)
	if err := e.AttachCgroup(cg); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port

	probe := probeBinary(t)
	rs, err := policy.Compile(policy.Envelope{Egress: []policy.EgressRule{{
		Protocol: policy.ProtoTCP,
		Prefix:   netip.MustParsePrefix("127.0.0.1/32"),
		Ports:    []policy.PortRange{{First: uint16(port), Last: uint16(port)}},
	}}, Exec: []policy.ExecRule{{Path: probe}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.WriteRules(1, rs); err != nil {
		t.Fatal(err)
	}
	if err := e.SetTask(1, time.Time{}, 1); err != nil {
		t.Fatal(err)
	}
	if err := e.BindWorkload(id, 1, WorkloadMode{}); err != nil {
		t.Fatal(err)
	}
	rd, err := e.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()

	out, err := runIn(t, cg, probe, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil || !strings.HasPrefix(out, "ok") {
		t.Fatalf("allowed connect: %v %s", err, out)
	}
	// io_uring's connect reaches the same hook.
	out, err = runIn(t, cg, probe, "iouring-connect", fmt.Sprintf("127.0.0.1:%d", port+1))
	if err == nil || !strings.Contains(out, "EPERM IORING_OP_CONNECT") {
		t.Fatalf("refused io_uring connect: %v %s", err, out)
	}
	if ev := readUntil(t, rd, func(ev Event) bool { return ev.Action == "connect" }); ev.Verdict != "deny" {
		t.Fatalf("io_uring connect event %+v", ev)
	}
	out, err = runIn(t, cg, probe, "tcp", fmt.Sprintf("127.0.0.1:%d", port+1))
	if err == nil || !strings.Contains(out, "EPERM connect") {
		t.Fatalf("refused connect: %v %s", err, out)
	}
	ev, err := rd.Read()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("event %+v", ev)
	if ev.Verdict != "deny" || ev.Action != "connect" || ev.Port != uint16(port+1) || ev.Addr.String() != "127.0.0.1" {
		t.Fatalf("event %+v", ev)
	}
}
