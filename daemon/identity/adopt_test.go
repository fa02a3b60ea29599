package identity

import (
	"context"
	"log/slog"
	"testing"
	"time"
)

// A run's workload, identified by bridle:started-by-uid when its task
// started, is adopted after a restart: SPIRE still has the same entry.
func TestSPIREAdoptKeepsAStartedByIdentity(t *testing.T) {
	mount, cg := testCgroup(t, "adopt-started-by")
	sp := startSPIRE(t)
	sp.CreateEntry(t, "spiffe://example.org/agent/runs/4261", "bridle:started-by-uid:4261")
	cfg := SPIREConfig{AdminSocket: sp.AdminSocket, Attest: BySelectors, Hold: time.Minute, Timeout: 20 * time.Second, Mount: mount}
	p, err := NewSPIRE(cfg, func(Change) {}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	var id Identity
	deadline := time.Now().Add(30 * time.Second)
	for {
		id, err = p.Identify(context.Background(), Workload{Cgroup: cg, StartedBy: 4261, HasStartedBy: true})
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	if err != nil || id.ID != "spiffe://example.org/agent/runs/4261" {
		t.Fatalf("identify: %+v %v", id, err)
	}
	runIn(t, mount, cg, 4261) // the run's command starts
	p.Close()                 // bridled restarts

	changes := make(chan Change, 4)
	q, err := NewSPIRE(cfg, func(c Change) { changes <- c }, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	q.Adopt(cg, id)
	select {
	case c := <-changes:
		t.Fatalf("the adopted run lost its identity though its SPIRE entry is unchanged: %+v", c)
	case <-time.After(5 * time.Second):
	}
}
