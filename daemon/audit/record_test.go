package audit

import (
	"bytes"
	"testing"

	"github.com/bridle-sh/bridle/bpf"
)

// The JSON lines are the contract of docs/EVENTS.md: the same bytes for the
// same record, whatever Go types hold the words.
func TestRecordJSONLine(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for _, r := range []Record{
		{
			Time: "2026-12-01T10:00:00.5Z", Node: "n1", Workload: "/bridle.run/w", Identity: "spiffe://x/y",
			Task: "t-1", Intent: "fix <bug> & test", PID: 42, Comm: "curl", Action: "connect", Protocol: "tcp",
			Address: "10.0.0.1", Port: 443, Verdict: "deny", Reason: "no rule allows it", Enforcement: "cgroup",
			PolicyRevision: "r1", Suppressed: 3, CgroupID: 7, // not written
		},
		{Action: "socket", Protocol: "other", Family: 40, Verdict: "would-deny", Reason: "address family not allowed", Enforcement: "seccomp"},
		{Action: "dns", Protocol: "udp", Address: "8.8.8.8", Port: 53, Name: "api.example", QueryType: "A", Answers: []string{"192.0.2.1", "192.0.2.2"}, Verdict: "allow", Reason: "allowed by rule", Enforcement: "resolver"},
		{Action: "task_end", Verdict: "allow", Reason: "expired; aborted 1 open connection(s) (1 tcp, 0 udp)", Enforcement: "daemon"},
		{},
	} {
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	const want = `{"time":"2026-12-01T10:00:00.5Z","node":"n1","workload":"/bridle.run/w","identity":"spiffe://x/y","task":"t-1","intent":"fix \u003cbug\u003e \u0026 test","pid":42,"comm":"curl","action":"connect","protocol":"tcp","address":"10.0.0.1","port":443,"path":"","verdict":"deny","reason":"no rule allows it","enforcement":"cgroup","policy_revision":"r1","suppressed":3}
{"time":"","node":"","workload":"","identity":"","task":"","intent":"","pid":0,"comm":"","action":"socket","protocol":"other","address":"","port":0,"path":"","family":40,"verdict":"would-deny","reason":"address family not allowed","enforcement":"seccomp","policy_revision":"","suppressed":0}
{"time":"","node":"","workload":"","identity":"","task":"","intent":"","pid":0,"comm":"","action":"dns","protocol":"udp","address":"8.8.8.8","port":53,"path":"","verdict":"allow","reason":"allowed by rule","enforcement":"resolver","policy_revision":"","suppressed":0,"name":"api.example","qtype":"A","answers":["192.0.2.1","192.0.2.2"]}
{"time":"","node":"","workload":"","identity":"","task":"","intent":"","pid":0,"comm":"","action":"task_end","protocol":"","address":"","port":0,"path":"","verdict":"allow","reason":"expired; aborted 1 open connection(s) (1 tcp, 0 udp)","enforcement":"daemon","policy_revision":"","suppressed":0}
{"time":"","node":"","workload":"","identity":"","task":"","intent":"","pid":0,"comm":"","action":"","protocol":"","address":"","port":0,"path":"","verdict":"","reason":"","enforcement":"","policy_revision":"","suppressed":0}
`
	if got := buf.String(); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

// A task's expiry is the cause its task_end record opens with, not any
// reason that happens to start with the word.
func TestTaskExpired(t *testing.T) {
	for _, c := range []struct {
		rec  Record
		want bool
	}{
		{Record{Action: bpf.ActionTaskEnd, Reason: bpf.TaskExpired}, true},
		{Record{Action: bpf.ActionTaskEnd, Reason: bpf.TaskExpired + "; aborted 2 open connection(s) (2 tcp, 0 udp)"}, true},
		{Record{Action: bpf.ActionTaskEnd, Reason: "command exited"}, false},
		{Record{Action: bpf.ActionTaskEnd, Reason: "expired-ish"}, false},
		{Record{Action: bpf.ActionTaskStart, Reason: bpf.TaskExpired}, false},
		{Record{Action: bpf.ActionConnect, Reason: string(bpf.ReasonTaskExpired)}, false},
	} {
		if got := c.rec.TaskExpired(); got != c.want {
			t.Errorf("%s %q: TaskExpired = %v, want %v", c.rec.Action, c.rec.Reason, got, c.want)
		}
	}
}
