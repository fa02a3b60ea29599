package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/loader"
)

// sweepLeftovers removes what an earlier e2e run that was killed before its
// cleanup left behind: a daemon test's pins (whose pinned links keep
// programs attached, and the kernel's hooks switched on for every cgroup)
// and its root cgroups. Only what a dead process owned is touched, so a
// run beside this one keeps its own.
func sweepLeftovers() {
	pins, _ := filepath.Glob(filepath.Join(loader.DefaultPinRoot, "test-daemon-*"))
	for _, dir := range pins {
		if ownerDead(filepath.Base(dir), "test-daemon-") {
			_ = loader.RemovePins(dir)
		}
	}
	root, err := loader.CgroupRoot()
	if err != nil {
		return
	}
	cgroups, _ := filepath.Glob(filepath.Join(root, "bridle-e2e-*"))
	for _, dir := range cgroups {
		if ownerDead(filepath.Base(dir), "bridle-e2e-") {
			removeCgroupTree(dir)
		}
	}
}

// ownerDead reads the pid after prefix in name (PREFIX<pid>-...) and
// reports whether that process is gone.
func ownerDead(name, prefix string) bool {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return false
	}
	pidText, _, _ := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(pidText)
	if err != nil || pid <= 0 {
		return false
	}
	return unix.Kill(pid, 0) == unix.ESRCH
}

// removeCgroupTree kills what runs in a cgroup tree and removes it, deepest
// first.
func removeCgroupTree(dir string) {
	_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.IsDir() {
			removeCgroupTree(filepath.Join(dir, e.Name()))
		}
	}
	_ = unix.Rmdir(dir)
}
