package loader

import (
	"bufio"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/loader/sockabort"
	"github.com/bridle-sh/bridle/policy"
)

// Revocation through the enforcer: a workload holds a TCP connection made
// under its task; the task ends, the workload falls back to the baseline and
// DestroySockets aborts the connection, and the baseline refuses a new one.
// (Package sockabort tests every kind of socket and both methods.)
func TestDestroySockets(t *testing.T) {
	e := testEnforcer(t)
	if f := e.Features().SocketDestroy; f.Method == sockabort.DestroyNone {
		t.Skipf("no way to destroy sockets here: %s", f.Reason)
	}
	cg, id := testCgroup(t)
	if err := e.AttachCgroup(cg); err != nil {
		t.Fatal(err)
	}
	probe := probeBinary(t)
	exec := []policy.ExecRule{{Path: probe}}
	base, err := policy.Compile(policy.Envelope{Exec: exec})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.WriteRules(BaselineSlot, base); err != nil {
		t.Fatal(err)
	}
	egress := []policy.EgressRule{{Protocol: policy.ProtoTCP, Prefix: netip.MustParsePrefix("127.0.0.1/32")}}
	task, err := policy.Compile(policy.Envelope{Egress: egress, Exec: exec})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.WriteRules(1, task); err != nil {
		t.Fatal(err)
	}
	if err := e.SetTask(1, time.Time{}, 1); err != nil {
		t.Fatal(err)
	}
	if err := e.BindWorkload(id, 1, WorkloadMode{}); err != nil {
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
			defer c.Close()
		}
	}()
	lines := startHolder(t, cg, probe, "hold-tcp", ln.Addr().String(), "30")
	if l := <-lines; !strings.HasPrefix(l, "ok") {
		t.Fatalf("holder: %q", l)
	}

	if err := e.BindWorkload(id, BaselineSlot, WorkloadMode{}); err != nil {
		t.Fatal(err)
	}
	st, err := e.DestroySockets(id)
	if err != nil {
		t.Fatal(err)
	}
	if st.TCP != 1 || st.Failed != 0 {
		t.Errorf("stats %+v, want 1 TCP, no failure", st)
	}
	select {
	case l := <-lines:
		if l != "closed ECONNABORTED" {
			t.Errorf("holder: %q, want closed ECONNABORTED", l)
		}
	case <-time.After(2 * time.Second):
		t.Error("the connection stayed open")
	}
	if out, err := runIn(t, cg, probe, "tcp", ln.Addr().String()); err == nil || !strings.Contains(out, "EPERM connect") {
		t.Errorf("connect after revocation: %v %q", err, out)
	}
}

// startHolder starts a command in a cgroup and returns its output lines.
func startHolder(t *testing.T, cgroup, name string, args ...string) <-chan string {
	t.Helper()
	fd, err := syscall.Open(cgroup, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	lines := make(chan string, 8)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	return lines
}
