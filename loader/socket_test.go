package loader

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/policy"
)

// probeBinary returns the tests/probe tool: prebuilt where the environment
// says (kernel-matrix guests), else built now.
func probeBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("BRIDLE_E2E_PROBE"); p != "" {
		return p
	}
	bin := filepath.Join(t.TempDir(), "probe")
	if out, err := exec.Command("go", "build", "-o", bin, "../tests/probe").CombinedOutput(); err != nil {
		t.Fatalf("build probe: %v\n%s", err, out)
	}
	return bin
}

// allowProbe lets workloads without a task run the probe, and nothing else.
func allowProbe(t testing.TB, e *Enforcer) string {
	t.Helper()
	probe := probeBinary(t)
	rs, err := policy.Compile(policy.Envelope{Exec: []policy.ExecRule{{Path: probe}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.WriteRules(BaselineSlot, rs); err != nil {
		t.Fatal(err)
	}
	return probe
}

// A root process keeps CAP_NET_RAW here, so the kernel's own permission
// check passes: any refusal comes from Bridle's sock_create program. The
// kernel runs that hook for IPv4 and IPv6 sockets only; AF_PACKET sockets
// are kept from workloads by the CAP_NET_RAW they never have (tests/e2e).
func TestRawSocketRefusedByHook(t *testing.T) {
	e := testEnforcer(t)
	cg, id := testCgroup(t)
	if err := e.AttachCgroup(cg); err != nil {
		t.Fatal(err)
	}
	if err := e.BindWorkload(id, BaselineSlot, WorkloadMode{}); err != nil {
		t.Fatal(err)
	}
	probe := allowProbe(t, e)
	rd, err := e.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()

	for _, kind := range []string{"raw4", "raw6"} {
		// Unconfined, it works: the refusal below is Bridle's.
		if out, err := exec.Command(probe, kind).CombinedOutput(); err != nil {
			t.Fatalf("%s outside a workload: %v %s", kind, err, out)
		}
		out, err := runIn(t, cg, probe, kind)
		if err == nil || !strings.Contains(out, "EPERM socket") {
			t.Fatalf("%s in a workload: %v %q", kind, err, out)
		}
		ev := readUntil(t, rd, func(ev Event) bool { return ev.Action == "socket" })
		if ev.Protocol != "raw" || ev.Verdict != "deny" || ev.Reason != "socket type not allowed" {
			t.Fatalf("event %+v", ev)
		}
	}
}

// readUntil returns the first event matching, failing after a few seconds.
func readUntil(t testing.TB, rd *EventReader, match func(Event) bool) Event {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		ev, ok, err := rd.TryRead()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if match(ev) {
			return ev
		}
	}
	t.Fatal("no matching event")
	return Event{}
}

// A full ring buffer loses records, never silently: every refusal is either
// read or counted as dropped. (Without the event budget, which would keep
// one workload from filling the ring: see TestEventBudget.)
func TestEventLossIsCounted(t *testing.T) {
	e := testEnforcerWith(t, Options{NoEventBudget: true})
	cg, id := testCgroup(t)
	if err := e.AttachCgroup(cg); err != nil {
		t.Fatal(err)
	}
	if err := e.BindWorkload(id, BaselineSlot, WorkloadMode{}); err != nil {
		t.Fatal(err)
	}
	probe := allowProbe(t, e)
	// The ring holds about 16 MiB / 264 B = 63k records; nobody reads
	// during the flood, so most of these 150k refusals cannot be queued.
	const n = 150000
	out, err := runIn(t, cg, probe, "udp-flood", "127.0.0.1:9", fmt.Sprint(n))
	if err != nil || !strings.Contains(out, fmt.Sprintf("refused=%d", n)) {
		t.Fatalf("flood: %v %q", err, out)
	}
	drops, err := e.Drops()
	if err != nil {
		t.Fatal(err)
	}
	rd, err := e.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	var read uint64
	for {
		_, ok, err := rd.TryRead()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		read++
	}
	t.Logf("%d refusals: %d records read, %d counted as dropped", n, read, drops)
	if drops == 0 {
		t.Fatal("the ring overflowed but no drop was counted")
	}
	if read+drops != n {
		t.Fatalf("read %d + dropped %d != %d refusals: records lost silently", read, drops, n)
	}
}

// One workload's flood takes only its budget of the ring: every refusal
// past it is counted in the kernel, carried by the events that follow and
// readable at the task's end, and nothing is dropped.
func TestEventBudget(t *testing.T) {
	const budget = 500
	e := testEnforcerWith(t, Options{EventBudget: budget})
	cg, id := testCgroup(t)
	if err := e.AttachCgroup(cg); err != nil {
		t.Fatal(err)
	}
	if err := e.BindWorkload(id, BaselineSlot, WorkloadMode{}); err != nil {
		t.Fatal(err)
	}
	probe := allowProbe(t, e)
	const n = 150000
	out, err := runIn(t, cg, probe, "udp-flood", "127.0.0.1:9", fmt.Sprint(n))
	if err != nil || !strings.Contains(out, fmt.Sprintf("refused=%d", n)) {
		t.Fatalf("flood: %v %q", err, out)
	}
	rd, err := e.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	var read uint64
	var lastTotal uint32
	for {
		ev, ok, err := rd.TryRead()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		if ev.CgroupID == id && ev.Action == "connect" {
			read++
			lastTotal = max(lastTotal, ev.SuppressedTotal)
		}
	}
	drops, err := e.Drops()
	if err != nil {
		t.Fatal(err)
	}
	total, err := e.TakeSuppressed(id, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d refusals: %d records, %d suppressed (last record said %d), %d dropped", n, read, total, lastTotal, drops)
	if drops != 0 {
		t.Fatalf("%d events dropped: the budget should have kept the ring from filling", drops)
	}
	if read+total != n {
		t.Fatalf("%d records + %d suppressed != %d refusals", read, total, n)
	}
	// The flood took a few seconds at most: a few windows' budget.
	if read > 10*budget {
		t.Fatalf("%d records: the budget of %d a second did not hold", read, budget)
	}
	if uint64(lastTotal) > total {
		t.Fatalf("records said %d suppressed, the kernel counted %d", lastTotal, total)
	}
	if again, _ := e.TakeSuppressed(id, 0); again != 0 {
		t.Fatalf("the count was not forgotten: %d", again)
	}
}
