package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/policy"
)

// The example policies in examples/ are loaded by the engine exactly as a
// user would load them; `opa test policy/examples` runs their Rego tests.

func loadExamples(t testing.TB) *Engine {
	t.Helper()
	e := NewEngine()
	if err := e.LoadDir(context.Background(), "../examples"); err != nil {
		t.Fatal(err)
	}
	return e
}

func exampleTask(identity, intent string, labels map[string]string, ttl time.Duration) Input {
	return Input{
		Identity:  identity,
		Workload:  Workload{Cgroup: "/agents/w1"},
		Task:      &Task{ID: "t1", Intent: intent, Labels: labels, TTL: ttl},
		Requester: Requester{UID: 1000, GID: 1000},
	}
}

func TestExampleCodingAgent(t *testing.T) {
	e := loadExamples(t)
	in := exampleTask("spiffe://example.org/agent/coding/alice", "fix the flaky test", map[string]string{"repo": "bridle"}, 0)
	d, err := e.Evaluate(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	var egress []string
	for _, r := range d.Envelope.Egress {
		egress = append(egress, r.String())
	}
	slices.Sort(egress)
	want := []string{
		"any:192.0.2.53:53",
		"tcp:192.0.2.10:443",
		"tcp:198.51.100.0/25:443",
		"tcp:203.0.113.0/24:443",
		"tcp:[2001:db8:1::]/48:443",
	}
	if !slices.Equal(egress, want) {
		t.Errorf("egress = %q\nwant %q", egress, want)
	}
	if got := fmt.Sprint(d.Envelope.Exec); got != "[/usr/lib/git-core/ /usr/local/go/bin/ /usr/local/go/pkg/tool/ /usr/bin/git]" {
		t.Errorf("exec = %s", got)
	}
	if d.Envelope.TTL != 2*time.Hour || d.MaxTTL != 2*time.Hour {
		t.Errorf("TTL %v, max %v; want 2h", d.Envelope.TTL, d.MaxTTL)
	}
	checkCompiles(t, d.Envelope)

	in.Task.Labels["git"] = "push"
	in.Task.TTL = 20 * time.Minute
	d, err = e.Evaluate(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(d.Envelope.Egress, func(r policy.EgressRule) bool { return r.String() == "tcp:192.0.2.10:22" }) ||
		!slices.Contains(d.Envelope.Exec, policy.ExecRule{Path: "/usr/bin/ssh"}) {
		t.Errorf("push task: %+v, want ssh to the git host", d.Envelope)
	}
	if d.Envelope.TTL != 20*time.Minute {
		t.Errorf("TTL %v, want the 20m asked for", d.Envelope.TTL)
	}
	checkCompiles(t, d.Envelope)
}

func TestExampleResearchAgent(t *testing.T) {
	e := loadExamples(t)
	in := exampleTask("spiffe://example.org/agent/research/bob", "survey eBPF papers", nil, 3*time.Hour)
	d, err := e.Evaluate(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Envelope.Exec) != 0 || len(d.Envelope.Unix) != 0 {
		t.Errorf("research agent may run or reach locally: %+v", d.Envelope)
	}
	for _, r := range d.Envelope.Egress {
		if !slices.Equal(r.Ports, []policy.PortRange{{First: 443, Last: 443}}) && r.String() != "any:192.0.2.53:53" {
			t.Errorf("research egress %s is not HTTPS", r)
		}
	}
	if len(d.Envelope.Egress) != 5 {
		t.Errorf("egress = %v", d.Envelope.Egress)
	}
	if d.Envelope.TTL != 30*time.Minute {
		t.Errorf("TTL %v, want the 30m maximum", d.Envelope.TTL)
	}
	checkCompiles(t, d.Envelope)

	in.Task.Labels = map[string]string{"access": "write"}
	_, err = e.Evaluate(context.Background(), in)
	var denied *DeniedError
	if !errors.As(err, &denied) || !strings.Contains(denied.Reasons[0], "read-only") {
		t.Errorf("write task: %v, want refused as read-only", err)
	}
}

func TestExampleRefusals(t *testing.T) {
	e := loadExamples(t)
	for name, tc := range map[string]struct {
		in   Input
		want string
	}{
		"unknown identity": {exampleTask("spiffe://example.org/agent/other/x", "x", nil, 0), "no kind of agent"},
		"no intent":        {exampleTask("spiffe://example.org/agent/research/bob", " ", nil, 0), "needs an intent"},
		"no repo":          {exampleTask("spiffe://example.org/agent/coding/alice", "fix", nil, 0), "name its repository"},
		"sub-agent of another kind": {func() Input {
			in := exampleTask("spiffe://example.org/agent/coding/alice", "fix", map[string]string{"repo": "r"}, 0)
			in.Parent = &Parent{ID: "t0", Identity: "spiffe://example.org/agent/research/bob", Intent: "survey"}
			return in
		}(), "same kind of agent as its parent"},
	} {
		_, err := e.Evaluate(context.Background(), tc.in)
		var denied *DeniedError
		if !errors.As(err, &denied) || !strings.Contains(strings.Join(denied.Reasons, "\n"), tc.want) {
			t.Errorf("%s: %v, want refused saying %q", name, err, tc.want)
		}
	}

	d, err := e.Baseline(context.Background(), Input{Identity: "spiffe://example.org/agent/coding/alice"})
	if err != nil || len(d.Envelope.Egress)+len(d.Envelope.Exec)+len(d.Envelope.Unix) != 0 {
		t.Errorf("example baseline = %+v, %v; want nothing", d.Envelope, err)
	}
}

// checkCompiles compiles env the way the daemon would. The programs the
// examples name are not on every machine (a CI runner or a minimal guest has
// no /usr/local/go), so each exec rule is rebuilt below a scratch directory
// first: a file rule becomes an executable file, a directory rule a
// directory holding one. What is checked is the envelope's shape, not this
// host's software.
func checkCompiles(t *testing.T, env policy.Envelope) {
	t.Helper()
	root := t.TempDir()
	var exec []policy.ExecRule
	for _, r := range env.Exec {
		p := filepath.Join(root, r.Path)
		file := p
		if r.Dir {
			file = filepath.Join(p, "tool")
		}
		if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		exec = append(exec, policy.ExecRule{Path: p, Dir: r.Dir})
	}
	env.Exec = exec
	rs, err := policy.Compile(env)
	if err != nil {
		t.Fatalf("policy.Compile(example envelope): %v", err)
	}
	if len(rs.Exec) != len(exec) {
		t.Errorf("compiled %d executables from %d exec rules", len(rs.Exec), len(exec))
	}
	if len(rs.Net4)+len(rs.Net6) == 0 {
		t.Error("compiled no network rules")
	}
}

// BenchmarkEvaluate measures one task-start evaluation (deny and envelope)
// of the example coding-agent policy.
func BenchmarkEvaluate(b *testing.B) {
	e := loadExamples(b)
	in := exampleTask("spiffe://example.org/agent/coding/alice", "fix the flaky test", map[string]string{"repo": "bridle", "git": "push"}, 0)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.Evaluate(ctx, in); err != nil {
			b.Fatal(err)
		}
	}
}

// The orchestrator example: team A's orchestrator, known by the SPIFFE ID
// it proved, starts coding tasks for team A's agents and nothing else;
// an SVID the policy does not know starts nothing; a local admin known by
// uid alone is not restricted by it.
func TestExampleOrchestrator(t *testing.T) {
	e := loadExamples(t)
	const teamA = "spiffe://example.org/orchestrator/team-a"
	for _, tc := range []struct {
		name      string
		requester Requester
		agent     string
		refused   string // part of a deny reason; "" for allowed
	}{
		{"team A's coding agent", Requester{UID: NoUID, GID: NoUID, Identity: teamA, Auth: AuthX509SVID}, "spiffe://example.org/agent/team-a/coding/alice", ""},
		{"by JWT-SVID likewise", Requester{UID: 1000, GID: 1000, Identity: teamA, Auth: AuthJWTSVID}, "spiffe://example.org/agent/team-a/coding/alice", ""},
		{"another team's coding agent", Requester{Identity: teamA, Auth: AuthJWTSVID}, "spiffe://example.org/agent/coding/bob", "may start tasks only for agents under spiffe://example.org/agent/team-a/"},
		{"a team A agent of no coding kind", Requester{Identity: teamA, Auth: AuthJWTSVID}, "spiffe://example.org/agent/team-a/research/carol", "may start only [\"coding\"] tasks"},
		{"an unknown orchestrator", Requester{Identity: "spiffe://example.org/orchestrator/ci", Auth: AuthX509SVID}, "spiffe://example.org/agent/team-a/coding/alice", "is not an orchestrator this policy knows"},
		{"a local admin", Requester{UID: 1000, GID: 1000, Auth: AuthPeerCred}, "spiffe://example.org/agent/coding/bob", ""},
	} {
		in := exampleTask(tc.agent, "fix the build", map[string]string{"repo": "bridle"}, 0)
		in.Requester = tc.requester
		d, err := e.Evaluate(context.Background(), in)
		var denied *DeniedError
		switch {
		case tc.refused == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.refused == "" && d.Envelope.TTL != 2*time.Hour:
			t.Errorf("%s: envelope %+v, want the coding one", tc.name, d.Envelope)
		case tc.refused != "" && !errors.As(err, &denied):
			t.Errorf("%s: %v, want a refusal saying %q", tc.name, err, tc.refused)
		case tc.refused != "" && !slices.ContainsFunc(denied.Reasons, func(r string) bool { return strings.Contains(r, tc.refused) }):
			t.Errorf("%s: reasons %q, want one saying %q", tc.name, denied.Reasons, tc.refused)
		}
	}
}

// The coding example's approvable entries decode, and their programs and
// addresses compile as a node would compile them at task start.
func TestExampleApprovable(t *testing.T) {
	e := loadExamples(t)
	in := exampleTask("spiffe://example.org/agent/coding/alice", "fix the flaky test", map[string]string{"repo": "bridle"}, 0)
	d, err := e.Evaluate(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range d.Approvable.Entries {
		got = append(got, fmt.Sprintf("%s %v", a, a.MaxTTL))
	}
	slices.Sort(got)
	want := []string{"/usr/bin/ssh 30m0s", "tcp:*.github.com:443 30m0s", "tcp:192.0.2.10:22 30m0s", "tcp:198.51.100.128/25:443 1h0m0s"}
	if !slices.Equal(got, want) {
		t.Fatalf("approvable = %q\nwant %q", got, want)
	}
	if _, err := os.Stat("/usr/bin/ssh"); err == nil {
		if _, err := policy.CompileApprovable(d.Approvable); err != nil {
			t.Fatalf("compile: %v", err)
		}
	}
	research := exampleTask("spiffe://example.org/agent/research/bob", "summarise", nil, 0)
	if d, err := e.Evaluate(context.Background(), research); err != nil || len(d.Approvable.Entries) != 0 {
		t.Fatalf("research approvable %+v, err %v; want none", d.Approvable, err)
	}
}
