package loader

import (
	"strings"
	"testing"
)

// Where BPF LSM is active the guards refuse every workload sockets of the
// families no hook judges, and user namespaces (6.1+), with a record; the
// process here is root, so nothing but the guard refuses it. Elsewhere the
// enforcer must say why they are missing.
func TestGuards(t *testing.T) {
	e := testEnforcer(t)
	f := e.Features()
	if f.SeccompGuard == "" || f.FamilyGuardReason == "" || f.UsernsGuardReason == "" {
		t.Fatalf("guards reported without their reasons: %+v", f)
	}
	if !f.FamilyGuard {
		if f.ExecMode == ExecModeLSM {
			t.Fatalf("BPF LSM refuses execs here, yet the family guard is missing: %s", f.FamilyGuardReason)
		}
		if f.UsernsGuard {
			t.Fatal("the userns guard is in force without the family guard")
		}
		t.Skipf("the guards need BPF LSM, which is not in force on %s: %s", f.Kernel, f.FamilyGuardReason)
	}
	cg, id := testCgroup(t)
	if err := e.BindWorkload(id, BaselineSlot, WorkloadMode{}); err != nil {
		t.Fatal(err)
	}
	probe := allowProbe(t, e)
	rd, err := e.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()

	out, err := runIn(t, cg, probe, "socket", "vsock")
	if err == nil || !strings.Contains(out, "EPERM socket") {
		t.Fatalf("socket(AF_VSOCK) in a workload: %v %q", err, out)
	}
	ev := readUntil(t, rd, func(ev Event) bool { return ev.Action == "socket" })
	if ev.Reason != "address family not allowed" || ev.Family != 40 || ev.Verdict != "deny" || ev.Enforcement != "lsm" || ev.Addr.IsValid() {
		t.Fatalf("event %+v: want a denial of family 40 by lsm, with no address", ev)
	}
	for _, family := range []string{"unix", "inet", "inet6", "netlink"} {
		if out, err := runIn(t, cg, probe, "socket", family); err != nil {
			t.Fatalf("socket(%s) in a workload: %v %q", family, err, out)
		}
	}
	// Outside any workload the guard lets everything be.
	if out, _ := runIn(t, testCgroupPath(t), probe, "socket", "vsock"); strings.Contains(out, "EPERM") {
		t.Fatalf("socket(AF_VSOCK) outside a workload refused: %q", out)
	}

	if f.UsernsGuard {
		out, err := runIn(t, cg, probe, "unshare", "user")
		if err == nil || !strings.Contains(out, "EPERM unshare") {
			t.Fatalf("unshare(CLONE_NEWUSER) in a workload: %v %q", err, out)
		}
		ev := readUntil(t, rd, func(ev Event) bool { return ev.Action == "namespace" })
		if ev.Reason != "namespaces not allowed" || ev.Path != "user" || ev.Verdict != "deny" {
			t.Fatalf("event %+v", ev)
		}
	} else {
		t.Logf("no userns guard on %s: %s", f.Kernel, f.UsernsGuardReason)
	}

	// Audit mode records would-deny and refuses nothing.
	if err := e.BindWorkload(id, BaselineSlot, WorkloadMode{Audit: true}); err != nil {
		t.Fatal(err)
	}
	if out, _ := runIn(t, cg, probe, "socket", "vsock"); strings.Contains(out, "EPERM") {
		t.Fatalf("socket(AF_VSOCK) refused in audit mode: %q", out)
	}
	ev = readUntil(t, rd, func(ev Event) bool { return ev.Action == "socket" })
	if ev.Verdict != "would-deny" {
		t.Fatalf("audit-mode event %+v", ev)
	}
}

// testCgroupPath is a cgroup no enforcer governs.
func testCgroupPath(t testing.TB) string {
	t.Helper()
	cg, _ := testCgroup(t)
	return cg
}
