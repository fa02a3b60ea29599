package identity

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	delegatedv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"

	"github.com/bridle-sh/bridle/tests/spiretest"
)

const bridledID = "spiffe://example.org/bridled"

func startSPIRE(t *testing.T) *spiretest.SPIRE {
	t.Helper()
	spiretest.Bins(t)
	return spiretest.Start(t, spiretest.Options{Delegates: []string{bridledID}})
}

type syncLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// identifyEventually asks until SPIRE has synced the entries just made.
func identifyEventually(t *testing.T, p *SPIREProvider, cgroup string) (Identity, error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		id, err := p.Identify(context.Background(), Workload{Cgroup: cgroup})
		if err == nil || time.Now().After(deadline) || !IsUnavailable(err) {
			return id, err
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// A process of workload A is asked about by PID; just before SPIRE looks,
// it exits and a process of workload B (another uid, another entry) takes
// its PID. SPIRE answers with B's identity for that PID. bridled must not
// take it for A: the pinned process is gone, so the answer is discarded
// and A is attested through another of its processes.
func TestSPIREPIDReuseCannotTakeAnIdentity(t *testing.T) {
	mount, cgA := testCgroup(t, "reuse-a")
	_, cgB := testCgroup(t, "reuse-b")
	if _, err := os.Stat("/proc/sys/kernel/ns_last_pid"); err != nil {
		t.Skipf("no ns_last_pid (CONFIG_CHECKPOINT_RESTORE): cannot give a process a chosen PID: %v", err)
	}
	sp := startSPIRE(t)
	sp.CreateEntry(t, "spiffe://example.org/agent/a", "unix:uid:4301")
	sp.CreateEntry(t, "spiffe://example.org/agent/b", "unix:uid:4302")
	a1 := runIn(t, mount, cgA, 4301)
	a2 := runIn(t, mount, cgA, 4301)
	procs := map[int]*exec.Cmd{a1.Process.Pid: a1, a2.Process.Pid: a2}

	// First, without any reuse, the provider attests A (and waits for
	// SPIRE to have synced both entries).
	logs := &syncLog{}
	p, err := NewSPIRE(SPIREConfig{AdminSocket: sp.AdminSocket, Attest: ByPID, Hold: time.Minute, Timeout: 20 * time.Second, Mount: mount},
		func(Change) {}, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if id, err := identifyEventually(t, p, cgA); err != nil || id.ID != "spiffe://example.org/agent/a" {
		t.Fatalf("A before any reuse: %+v %v", id, err)
	}
	p.Release(cgA)
	// B is known to SPIRE too: its uid has an entry.
	bProbe := runIn(t, mount, cgB, 4302)
	if id, err := identifyEventually(t, p, cgB); err != nil || id.ID != "spiffe://example.org/agent/b" {
		t.Fatalf("B: %+v %v", id, err)
	}
	p.Release(cgB)
	_ = bProbe.Process.Kill()
	_ = bProbe.Wait()

	var reusedBy *exec.Cmd
	victim := 0
	beforeAsk = func(pid int) {
		if victim != 0 {
			return
		}
		victim = pid
		c := procs[pid]
		_ = c.Process.Kill()
		_ = c.Wait()
		reusedBy = startAtPID(t, mount, cgB, 4302, pid)
	}
	defer func() { beforeAsk = nil }()
	id, err := p.Identify(context.Background(), Workload{Cgroup: cgA})
	if reusedBy == nil || reusedBy.Process.Pid != victim {
		t.Fatalf("the scenario did not happen: pid %d not taken over", victim)
	}
	t.Logf("pid %d of A was taken over by a process of B", victim)
	if err != nil || id.ID != "spiffe://example.org/agent/a" {
		t.Fatalf("A after its pinned process's PID went to B: %+v %v\n%s", id, err, logs)
	}
	if !strings.Contains(logs.String(), "SPIRE's answer for a PID discarded") {
		t.Fatalf("the answer about the reused PID was not discarded:\n%s", logs)
	}
	// What SPIRE says of that PID now is B's identity: the answer that was
	// discarded.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := p.client.SubscribeToX509SVIDs(ctx, &delegatedv1.SubscribeToX509SVIDsRequest{Pid: int32(victim)})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if id, err := Choose(resp.GetX509Svids()); err != nil || id != "spiffe://example.org/agent/b" {
		t.Fatalf("SPIRE on the reused pid: %q %v", id, err)
	}
}

// startAtPID starts a sleeping process as uid in cgroup at PID pid, by
// setting the PID namespace's last PID just before the fork. Other forks
// on the machine can get in between: it retries.
func startAtPID(t *testing.T, mount, cgroup string, uid uint32, pid int) *exec.Cmd {
	t.Helper()
	fd, err := syscall.Open(filepath.Join(mount, cgroup), syscall.O_DIRECTORY|syscall.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	for range 200 {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
			t.Fatal(err)
		}
		c := exec.Command("sleep", "600")
		c.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd,
			Credential: &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Process.Kill(); _ = c.Wait() })
		if c.Process.Pid == pid {
			return c
		}
		_ = c.Process.Kill()
		_ = c.Wait()
	}
	return nil
}

// A workload's entry changes in SPIRE while it is followed: the change is
// reported, from the old identity to the new.
func TestSPIREEntryChangeReported(t *testing.T) {
	mount, cg := testCgroup(t, "change")
	sp := startSPIRE(t)
	entry := sp.CreateEntry(t, "spiffe://example.org/agent/one", "bridle:cgroup:"+cg)
	changes := make(chan Change, 4)
	p, err := NewSPIRE(SPIREConfig{AdminSocket: sp.AdminSocket, Attest: BySelectors, Hold: time.Minute, Timeout: 20 * time.Second, Mount: mount},
		func(c Change) { changes <- c }, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	id, err := identifyEventually(t, p, cg)
	if err != nil || id.ID != "spiffe://example.org/agent/one" || id.Source != SPIRE || len(id.Selectors) == 0 {
		t.Fatalf("identify: %+v %v", id, err)
	}
	if st := p.Status(); st.Watched != 1 || st.Degraded != "" {
		t.Fatalf("status %+v", st)
	}
	sp.CreateEntry(t, "spiffe://example.org/agent/two", "bridle:cgroup:"+cg)
	sp.DeleteEntry(t, entry)
	select {
	case c := <-changes:
		if c.Cgroup != cg || c.From.ID != "spiffe://example.org/agent/one" {
			t.Fatalf("change %+v", c)
		}
		t.Logf("change: %+v", c)
	case <-time.After(30 * time.Second):
		t.Fatal("no change reported within 30s")
	}
	p.Release(cg)
	if st := p.Status(); st.Watched != 0 {
		t.Fatalf("watched after release: %+v", st)
	}
}

// A process of the workload runs a setuid-root program: its real uid is
// the workload's, its effective uid is root's. SPIRE's unix attestor
// selects by the effective uid, so asked about that PID it names root's
// entry (here bridled's own). The workload chooses which of its processes
// is pinned (the first in cgroup.procs: the oldest still there), so it
// could choose one running a setuid program: such a process must never
// be the one asked about.
func TestSPIREPIDModeSetuidProcessCannotTakeRootsIdentity(t *testing.T) {
	mount, cg := testCgroup(t, "setuid")
	sp := startSPIRE(t)
	sp.CreateEntry(t, "spiffe://example.org/agent/mine", "unix:uid:4311")

	// A setuid-root copy of sleep, run as uid 4311: ruid 4311, euid 0.
	dir, err := os.MkdirTemp("", "bridle-suid")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	suid := filepath.Join(dir, "suid-sleep")
	b, err := os.ReadFile("/usr/bin/sleep")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(suid, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Chmod(suid, 0o4755); err != nil {
		t.Fatal(err)
	}
	fd, err := syscall.Open(filepath.Join(mount, cg), syscall.O_DIRECTORY|syscall.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	c := exec.Command(suid, "600")
	c.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd,
		Credential: &syscall.Credential{Uid: 4311, Gid: 4311, Groups: []uint32{}}}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Process.Kill(); _ = c.Wait() })
	time.Sleep(100 * time.Millisecond)
	st, _ := os.ReadFile("/proc/" + strconv.Itoa(c.Process.Pid) + "/status")
	if !strings.Contains(string(st), "Uid:\t4311\t0\t0") {
		t.Skipf("the setuid program did not run setuid (nosuid mount?):\n%s", st)
	}
	// The workload's ordinary process, after the setuid one.
	runIn(t, mount, cg, 4311)

	p, err := NewSPIRE(SPIREConfig{AdminSocket: sp.AdminSocket, Attest: ByPID, Hold: time.Minute, Timeout: 20 * time.Second, Mount: mount},
		func(Change) {}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	id, err := identifyEventually(t, p, cg)
	if id.ID == bridledID {
		t.Fatalf("the workload (uid 4311) was given root's identity %s through its setuid process", id.ID)
	}
	if err != nil || id.ID != "spiffe://example.org/agent/mine" {
		t.Fatalf("identify: %+v %v", id, err)
	}
}

// In pid mode a workload whose processes all sit in a cgroup below its
// own (a unit with DelegateSubgroup=) is attested through one of them.
func TestSPIREPIDModeProcessInAChildCgroup(t *testing.T) {
	mount, cg := testCgroup(t, "pid-child")
	child := cg + "/inner"
	if err := os.Mkdir(filepath.Join(mount, child), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(filepath.Join(mount, child)) })
	sp := startSPIRE(t)
	sp.CreateEntry(t, "spiffe://example.org/agent/inner", "unix:uid:4331")
	runIn(t, mount, child, 4331)
	p, err := NewSPIRE(SPIREConfig{AdminSocket: sp.AdminSocket, Attest: ByPID, Hold: time.Minute, Timeout: 20 * time.Second, Mount: mount},
		func(Change) {}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if id, err := identifyEventually(t, p, cg); err != nil || id.ID != "spiffe://example.org/agent/inner" {
		t.Fatalf("a workload whose process is in its child cgroup: %+v %v", id, err)
	}
}
