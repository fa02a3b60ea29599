package e2e

import (
	"strings"
	"testing"
)

// TestSandboxGuardsReported: `bridle status` and `bridle run -v` name the
// guards in force here, and say which are missing and why: never a silent
// gap.
func TestSandboxGuardsReported(t *testing.T) {
	if features.SeccompGuard == "" {
		t.Fatal("bridle status --json has no seccomp_guard")
	}
	lsm := execMode == "lsm"
	if features.FamilyGuard != lsm {
		t.Fatalf("family_guard %v in %s mode (%s)", features.FamilyGuard, execMode, features.FamilyGuardReason)
	}
	if features.FamilyGuardReason == "" || features.UsernsGuardReason == "" {
		t.Fatalf("a guard without its reason: family %q userns %q", features.FamilyGuardReason, features.UsernsGuardReason)
	}
	if features.UsernsGuard && !lsm {
		t.Fatalf("userns_guard in force in %s mode", execMode)
	}
	r := probe(t, []string{"-v"}, "sleep", "0")
	for _, want := range []string{"namespaces:", "socket families:"} {
		if !strings.Contains(r.stderr, "bridle: "+want) {
			t.Fatalf("bridle run -v does not report %q:\n%s", want, r.stderr)
		}
	}
}

// TestEscapeAdoptedNamespaceAndFamily: a workload Bridle did not launch (a
// process born in a cgroup bridled governs) has no seccomp filter from
// Bridle; where BPF LSM is active the kernel-wide guards refuse it the same
// doors, with a record.
func TestEscapeAdoptedNamespaceAndFamily(t *testing.T) {
	if execMode != "lsm" {
		// Nothing can refuse here: the gap must be reported, which
		// TestSandboxGuardsReported checks; this checks bridled says it too.
		e := newDaemonEnv(t)
		e.start()
		st, err := e.status()
		if err != nil {
			t.Fatal(err)
		}
		f, _ := st["features"].(map[string]any)
		if f["family_guard"] != false || f["family_guard_reason"] == "" {
			t.Fatalf("bridled status features %v: want family_guard false with a reason", f)
		}
		found := false
		for _, d := range st["degraded"].([]any) {
			found = found || strings.Contains(d.(string), "address families")
		}
		if !found {
			t.Fatalf("bridled status does not list the missing guards as degraded: %v", st["degraded"])
		}
		return
	}
	e := newDaemonEnv(t)
	e.start()
	cg := e.workload("adopted")
	// Records name the refused process's own cgroup, below the root that
	// governs it.
	family := func(rec map[string]any) bool {
		return rec["action"] == "socket" && rec["reason"] == "address family not allowed" && rec["workload"] == cg
	}
	out, _, _ := e.inCgroup(cg, false, probeBin, "socket", "vsock")
	wantPrefix(t, "socket(AF_VSOCK) in an adopted workload", out, "EPERM socket")
	rec := e.waitAudit(family)
	if rec["enforcement"] != "lsm" || rec["family"] != float64(40) {
		t.Fatalf("record %v: want enforcement lsm, family 40", rec)
	}
	wantPrefix(t, "socket(AF_UNIX) in an adopted workload", firstLine(e.inCgroup(cg, false, probeBin, "socket", "unix")), "ok")

	if !features.UsernsGuard {
		t.Logf("no userns_create LSM hook on %s: %s", features.Kernel, features.UsernsGuardReason)
		return
	}
	out, _, _ = e.inCgroup(cg, false, probeBin, "unshare", "user")
	wantPrefix(t, "unshare(CLONE_NEWUSER) in an adopted workload", out, "EPERM unshare")
	e.waitAudit(func(rec map[string]any) bool {
		return rec["action"] == "namespace" && rec["workload"] == cg && rec["enforcement"] == "lsm" && rec["path"] == "user"
	})
}

func firstLine(out string, _ string, _ int) string {
	line, _, _ := strings.Cut(out, "\n")
	return line
}
