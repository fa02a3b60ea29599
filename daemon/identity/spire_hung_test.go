package identity

import (
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// agentPID finds the test's own spire-agent, by its directory.
func agentPID(t *testing.T, dir string) int {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		s := string(b)
		if strings.Contains(s, "spire-agent") && strings.Contains(s, dir) {
			return pid
		}
	}
	t.Fatal("no agent")
	return 0
}

// A SPIRE agent that hangs (stopped, deadlocked) answers nothing and
// closes nothing: its connection stays open. The hold must be bounded all
// the same, and the source shown degraded.
func TestSPIREHungAgentHoldBounded(t *testing.T) {
	mount, cg := testCgroup(t, "hung")
	sp := startSPIRE(t)
	sp.CreateEntry(t, "spiffe://example.org/agent/h", "bridle:cgroup:"+cg)
	changes := make(chan Change, 4)
	p, err := NewSPIRE(SPIREConfig{AdminSocket: sp.AdminSocket, Attest: BySelectors, Hold: 2 * time.Second, Timeout: 20 * time.Second, Mount: mount},
		func(c Change) { changes <- c }, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if id, err := identifyEventually(t, p, cg); err != nil || id.ID == "" {
		t.Fatalf("identify %v %v", id, err)
	}
	pid := agentPID(t, sp.Dir)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = syscall.Kill(pid, syscall.SIGCONT) }()
	select {
	case c := <-changes:
		if c.To.ID != "" || !strings.Contains(c.Reason, "unresponsive") {
			t.Fatalf("change %+v", c)
		}
		if st := p.Status(); st.Degraded == "" {
			t.Fatalf("status while the agent hangs: %+v", st)
		}
		t.Logf("change %+v", c)
	case <-time.After(30 * time.Second):
		t.Fatalf("hold 2s, agent hung for 30s: identity still held; status %+v", p.Status())
	}
}
