package loader

import (
	"maps"
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

// The status keys of the features are a contract (bridle status --json,
// bridled's GET /v1/status): one map for both, these keys.
func TestFeaturesMapKeys(t *testing.T) {
	m := Features{ExecMode: ExecModeKill}.Map()
	want := []string{
		"btf", "dns_redirect", "dns_redirect_reason", "exec_mode", "exec_mode_reason", "family_guard", "family_guard_reason", "kernel",
		"listen_hooks", "listen_reason", "seccomp_guard", "socket_destroy", "socket_destroy_reason",
		"sockopt_hook", "sockopt_reason", "unix_hooks", "unix_reason", "unix_shutdown",
		"unix_shutdown_reason", "userns_guard", "userns_guard_reason",
	}
	got := slices.Sorted(maps.Keys(m))
	if !slices.Equal(got, want) {
		t.Fatalf("keys %v\nwant %v", got, want)
	}
	if m["exec_mode"] != ExecModeKill {
		t.Fatalf("exec_mode = %v", m["exec_mode"])
	}
}
