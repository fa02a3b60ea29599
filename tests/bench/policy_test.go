package bench

import (
	"context"
	"slices"
	"testing"

	"github.com/bridle-sh/bridle/policy"
	"github.com/bridle-sh/bridle/policy/engine"
)

// examplePolicies is the example policy directory, loaded as a user would.
const examplePolicies = "../../policy/examples"

// BenchmarkPolicyEval: one task-start evaluation of the example
// coding-agent policy (engine.Evaluate: the deny rules, then the
// envelope), the step before the envelope is compiled and put in force.
// The task asks for git push, so the policy's optional grants are taken
// too; the envelope is checked to be the one the policy grants for it.
func BenchmarkPolicyEval(b *testing.B) {
	eng := engine.NewEngine()
	ctx := context.Background()
	if err := eng.LoadDir(ctx, examplePolicies); err != nil {
		b.Fatal(err)
	}
	in := engine.Input{
		Identity:  "spiffe://example.org/agent/coding/alice",
		Workload:  engine.Workload{Cgroup: "/agents/w1"},
		Task:      &engine.Task{ID: "t1", Intent: "fix the flaky test", Labels: map[string]string{"repo": "bridle", "git": "push"}},
		Requester: engine.Requester{UID: 1000, GID: 1000},
	}
	d, err := eng.Evaluate(ctx, in)
	if err != nil {
		b.Fatal(err)
	}
	if !slices.ContainsFunc(d.Envelope.Egress, func(r policy.EgressRule) bool { return r.String() == "tcp:192.0.2.10:22" }) ||
		len(d.Envelope.Egress) < 6 || len(d.Envelope.Exec) == 0 {
		b.Fatalf("example coding-agent policy granted %+v; want its push envelope (ssh to the git host among ≥ 6 egress rules, and executables)", d.Envelope)
	}

	interleave(b, []string{"coding-agent"}, func(s string) string { return s }, func(b *testing.B, _ string) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := eng.Evaluate(ctx, in); err != nil {
				b.Fatal(err)
			}
		}
	})
}
