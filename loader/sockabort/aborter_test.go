package sockabort

import (
	"errors"
	"strings"
	"testing"
)

// Without a cgroup v2 mount nothing can be swept: the Aborter says so, and
// asks again next time (the mount may appear), unlike a kernel that lacks
// every method. Needs no root.
func TestAborterWithoutCgroupRoot(t *testing.T) {
	calls := 0
	a := New(func() (string, error) {
		calls++
		return "", errors.New("cgroup v2 is not mounted")
	}, nil)
	f := a.DestroyFeature()
	if f.Method != DestroyNone || !strings.Contains(f.Reason, "socket destroyer: cgroup v2 is not mounted") {
		t.Fatalf("feature %+v", f)
	}
	st, err := a.Destroy(42)
	if st.Method != DestroyNone || err == nil {
		t.Fatalf("destroy: %+v %v", st, err)
	}
	if calls != 2 {
		t.Fatalf("cgroup root looked up %d times, want once per call", calls)
	}
	if a.UnixFeature().Method == UnixShutdownNone {
		return // the rest needs pidfd_getfd
	}
	if _, err := a.UnixConnections(42); err == nil || !strings.Contains(err.Error(), "unix connections: cgroup v2 is not mounted") {
		t.Fatalf("unix connections: %v", err)
	}
	if _, err := a.ShutdownUnix(42, nil); err == nil {
		t.Fatal("unix shutdown without a cgroup root succeeded")
	}
}
