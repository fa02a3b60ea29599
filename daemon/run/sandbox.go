package run

import (
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/workload"
)

// Records of the workload's seccomp refusals. The filter itself (see
// workload.Sandbox) refuses; `bridle run` supervises it, answers each
// refused call and writes the record the kernel's hooks would have.

// refusalLimit bounds the seccomp records of one run: the first
// maxRefusalRecords of each kind are recorded, and at most
// maxRefusalTotal in all (the workload picks the target, so a loop over
// targets would otherwise make kinds without end); the rest are counted.
// Every call is refused either way; the bound only keeps a workload
// looping on refused calls from filling the audit file and the terminal.
type refusalLimit struct {
	mu         sync.Mutex
	seen       map[string]int
	total      int
	suppressed int
}

const (
	maxRefusalRecords = 100
	maxRefusalTotal   = 1000
)

func (l *refusalLimit) record(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen == nil {
		l.seen = map[string]int{}
	}
	if l.seen[key] >= maxRefusalRecords || l.total >= maxRefusalTotal {
		l.suppressed++
		return false
	}
	l.seen[key]++
	l.total++
	return true
}

// seccompRefusal records one call the workload's filter stopped (let go
// on in audit mode).
func (r *runner) seccompRefusal(ref workload.Refusal) {
	auditMode := r.task.Mode.Audit
	rec := audit.Record{
		Time: audit.Timestamp(time.Now()), Node: r.nodeName(),
		Workload: r.task.Workload, Identity: r.task.Identity, Task: r.task.ID, Intent: r.task.Intent,
		PID: ref.PID, Comm: ref.Comm, Action: ref.Action,
		Verdict: bpf.VerdictDeny, Enforcement: bpf.EnforcementSeccomp, PolicyRevision: r.task.PolicyRevision,
	}
	if auditMode {
		rec.Verdict = bpf.VerdictWouldDeny
	}
	// The reasons are the kernel's words for the same refusals.
	switch ref.Action {
	case bpf.ActionSocket:
		rec.Protocol, rec.Family, rec.Reason = bpf.ProtocolOther, ref.Family, string(bpf.ReasonFamily)
	default:
		rec.Path, rec.Reason = ref.Namespaces, string(bpf.ReasonNamespace)
	}
	if r.refusals.record(string(rec.Action) + " " + rec.Target()) {
		r.sinks.Record(rec)
	}
}

// stopSupervisor ends the seccomp supervisor once the workload is gone, so
// every refusal it answered is recorded before the summary.
func (r *runner) stopSupervisor() {
	if r.sup == nil {
		return
	}
	if err := r.sup.Stop(); err != nil {
		fmt.Fprintf(r.spec.Out, "bridle: %v; its seccomp refusals were not recorded (they were still refused)\n", err)
	}
	r.sup = nil
	r.refusals.mu.Lock()
	n := r.refusals.suppressed
	r.refusals.mu.Unlock()
	if n > 0 {
		fmt.Fprintf(r.spec.Out, "bridle: %d more seccomp refusals not recorded (each kind is recorded %d times at most, %d in all)\n", n, maxRefusalRecords, maxRefusalTotal)
	}
}

// nodeName is the node name records carry: bridled's when it enforces the
// run, else this host's.
func (r *runner) nodeName() string {
	if h, ok := r.host.(*remoteHost); ok {
		return h.status.Node
	}
	name, _ := os.Hostname()
	return name
}
