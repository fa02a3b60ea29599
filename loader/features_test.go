package loader

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// The exec mode must follow the kernel's active LSM list, never a successful
// attach: without "bpf" in the list an LSM program attaches and never runs.
// Kernel-matrix guests say which mode their boot line must produce.
func TestExecModeFollowsActiveLSMs(t *testing.T) {
	e := testEnforcer(t)
	f := e.Features()
	bpfActive := slices.Contains(f.ActiveLSMs, "bpf")
	t.Logf("active LSMs %v: exec mode %s (%s)", f.ActiveLSMs, f.ExecMode, f.ExecModeReason)

	if want := os.Getenv("BRIDLE_EXPECT_EXEC_MODE"); want != "" && string(f.ExecMode) != want {
		t.Fatalf("exec mode %s, but this guest was booted for %s", f.ExecMode, want)
	}
	switch {
	case !bpfActive:
		if f.ExecMode != ExecModeKill || !strings.Contains(f.ExecModeReason, "not in the active LSM list") {
			t.Fatalf("bpf is not an active LSM: want kill mode saying so, got %s (%s)", f.ExecMode, f.ExecModeReason)
		}
	case f.ExecMode == ExecModeKill:
		// bpf is listed, yet LSM programs did not load (this project's dev
		// hosts): the reason must say that, not blame the list.
		if !strings.Contains(f.ExecModeReason, "refuses BPF LSM programs") && !strings.Contains(f.ExecModeReason, "did not attach") {
			t.Fatalf("kill mode with bpf active needs the load failure as reason, got %q", f.ExecModeReason)
		}
	case f.ExecMode != ExecModeLSM:
		t.Fatalf("exec mode %q", f.ExecMode)
	}
}
