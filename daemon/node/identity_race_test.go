package node

import (
	"context"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/daemon/identity"
)

// withdrawingSource gives a workload an identity, then withdraws it at
// once, before the task that asked is in force: SPIRE's entry deleted
// between Identify and the task's registration. Its change is reported
// while no task is there to end.
type withdrawingSource struct {
	node      *Node
	withdrawn bool
}

func (s *withdrawingSource) Identify(_ context.Context, w identity.Workload) (identity.Identity, error) {
	id := identity.Identity{ID: "spiffe://example.org/agent/a", Source: identity.SPIRE}
	s.withdrawn = true
	s.node.IdentityChanged(identity.Change{Cgroup: w.Cgroup, From: id, Reason: "entry deleted"})
	return id, nil
}

func (s *withdrawingSource) Known(string) identity.Identity {
	if s.withdrawn {
		return identity.Identity{Source: identity.None}
	}
	return identity.Identity{ID: "spiffe://example.org/agent/a", Source: identity.SPIRE}
}
func (s *withdrawingSource) Release(string)                  {}
func (s *withdrawingSource) Adopt(string, identity.Identity) {}
func (s *withdrawingSource) Status() identity.Status         { return identity.Status{Source: identity.SPIRE} }
func (s *withdrawingSource) Close()                          {}

// An identity withdrawn while its task is being started must not leave
// the task in force under it: the change found no task to end, so the
// start itself must notice.
func TestIdentityWithdrawnDuringStartLeavesNoTask(t *testing.T) {
	src := &withdrawingSource{}
	tn := newTestNode(t, Options{Identities: src})
	src.node = tn.Node
	w, _ := tn.workload(t, "r/a")
	task, err := tn.Start(context.Background(), Request{Workload: w, TTL: time.Hour, Grants: grants(t, "tcp:10.0.0.1:443")})
	if err == nil {
		if _, inForce := tn.Get(task.ID); inForce {
			t.Fatalf("task %s in force under identity %s, withdrawn during its start", task.ID, task.Identity)
		}
	}
	if !identity.IsUnavailable(err) {
		t.Fatalf("start: %v; want the identity unavailable", err)
	}
	if len(tn.List()) != 0 {
		t.Fatalf("tasks in force: %+v", tn.List())
	}
}
