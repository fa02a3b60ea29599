package run

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/daemon/audit"
)

// Each record of a run's stream reaches the summary, the terminal and
// --audit, each taking what it is for: refusals printed as they happen, a
// task's end printed when it is news and written when it counts
// suppressed decisions.
func TestRunSinks(t *testing.T) {
	var out, recs bytes.Buffer
	r := &runner{spec: RunSpec{Out: &out, Records: &recs}, stats: newSummary()}
	r.registerSinks()
	deny := audit.Record{Verdict: bpf.VerdictDeny, Action: bpf.ActionConnect, Protocol: bpf.ProtocolTCP,
		Address: "10.0.0.1", Port: 443, Comm: "curl", PID: 7, Reason: string(bpf.ReasonNoRule), Suppressed: 4}
	allow := audit.Record{Verdict: bpf.VerdictAllow, Action: bpf.ActionExec, Path: "/bin/true", Comm: "sh", PID: 8,
		Reason: string(bpf.ReasonRule)}
	r.sinks.Record(deny)
	r.sinks.Record(allow)
	r.sinks.Record(deny)
	r.ending.Store(true)
	r.sinks.Record(audit.Record{Action: bpf.ActionTaskEnd, Task: "t-1", Verdict: bpf.VerdictAllow, Reason: "command exited", Suppressed: 2})
	r.sinks.Record(audit.Record{Action: bpf.ActionTaskEnd, Task: "t-2", Verdict: bpf.VerdictAllow, Reason: bpf.TaskExpired + "; aborted 1 open connection(s) (1 tcp, 0 udp)"})

	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	want := []string{
		"bridle: " + deny.Line(),
		"bridle: " + deny.Line(),
		"bridle: task t-2 ended: expired; aborted 1 open connection(s) (1 tcp, 0 udp)",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("terminal:\n%s\nwant\n%s", out.String(), strings.Join(want, "\n"))
	}

	var actions []string
	for _, l := range strings.Split(strings.TrimSpace(recs.String()), "\n") {
		var rec audit.Record
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatal(err)
		}
		actions = append(actions, string(rec.Action)+"/"+rec.Task)
	}
	if got := strings.Join(actions, " "); got != "connect/ exec/ connect/ task_end/t-1" {
		t.Fatalf("--audit records: %s", got)
	}

	if r.stats.verdicts[bpf.VerdictDeny] != 2 || r.stats.verdicts[bpf.VerdictAllow] != 1 || r.stats.suppressed != 10 {
		t.Fatalf("summary: verdicts %v, suppressed %d; want 2 denied, 1 allowed, 10 suppressed", r.stats.verdicts, r.stats.suppressed)
	}
	if ref := r.stats.refused["connect "+deny.Target()]; ref == nil || ref.count != 2 || ref.flag != deny.AllowFlag() {
		t.Fatalf("summary refusals: %v", r.stats.refused)
	}
}

// The summary's head is one line, the suppressed count in it.
func TestSummaryHead(t *testing.T) {
	s := newSummary()
	s.Record(audit.Record{Verdict: bpf.VerdictDeny, Action: bpf.ActionExec, Path: "/usr/bin/id", Reason: string(bpf.ReasonNoRule), Suppressed: 5})
	var out bytes.Buffer
	s.print(&out, "./agent", 1, 0)
	want := "bridle: ./agent exited with status 1; 1 denied, 0 would-deny, 0 allowed (logged); 5 more suppressed (over the workload's event budget: counted, not recorded one by one)\n" +
		"bridle:   1x exec /usr/bin/id  (--allow-exec /usr/bin/id)\n"
	if out.String() != want {
		t.Fatalf("got\n%q\nwant\n%q", out.String(), want)
	}
}
