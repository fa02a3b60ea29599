package sockabort

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// requireRoot fails rather than skips: these tests are the proof that the
// kernel aborts, and CI runs them as root.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("kernel tests need root (run with sudo or make test)")
	}
}

// testCgroupRoot is the cgroup v2 mount point: where unified hosts and the
// kernel-matrix guests mount it, or where hybrid hosts do.
func testCgroupRoot(t testing.TB) string {
	t.Helper()
	root, err := findCgroupRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func findCgroupRoot() (string, error) {
	for _, dir := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var st unix.Statfs_t
		if unix.Statfs(dir, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return dir, nil
		}
	}
	return "", errors.New("no cgroup v2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified")
}

// testAborter is an Aborter of this test, closed at its end.
func testAborter(t testing.TB) *Aborter {
	t.Helper()
	a := New(findCgroupRoot, nil)
	t.Cleanup(func() { a.Close() })
	return a
}

// testCgroup creates a fresh cgroup v2 directory for one test.
func testCgroup(t testing.TB) (string, uint64) {
	t.Helper()
	parent := filepath.Join(testCgroupRoot(t), "bridle-test")
	if err := os.MkdirAll(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	dir := subCgroup(t, parent, fmt.Sprintf("%s-%d", name, time.Now().UnixNano()))
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	return dir, st.Ino
}

// probeBinary returns the tests/probe tool: prebuilt where the environment
// says (kernel-matrix guests), else built now.
func probeBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("BRIDLE_E2E_PROBE"); p != "" {
		return p
	}
	bin := filepath.Join(t.TempDir(), "probe")
	if out, err := exec.Command("go", "build", "-o", bin, "../../tests/probe").CombinedOutput(); err != nil {
		t.Fatalf("build probe: %v\n%s", err, out)
	}
	return bin
}
