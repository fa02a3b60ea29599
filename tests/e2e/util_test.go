package e2e

import (
	"github.com/bridle-sh/bridle/loader"
	"os"
	"path/filepath"
	"testing"
)

func p0() int { return os.Getpid() }

func symlink(target, link string) error { return os.Symlink(target, link) }

// chmodAll opens a test directory (and what is in it) to the workload user.
func chmodAll(t testing.TB, dir string) {
	t.Helper()
	for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if d == os.TempDir() {
			break
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		_ = os.Chmod(filepath.Join(dir, e.Name()), 0o777)
	}
}

// cgroupRoot is where the cgroup v2 hierarchy is mounted here.
func cgroupRoot(t testing.TB) string {
	t.Helper()
	root, err := loader.CgroupRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}
