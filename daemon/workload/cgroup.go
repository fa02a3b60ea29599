// Package workload creates the cgroups agents run in and starts processes
// inside them with no privilege left: capabilities dropped, no_new_privs set,
// running as the requested user.
package workload

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// StandaloneParent is the cgroup, below the cgroup v2 root, that holds the
// workloads of standalone `bridle run`s (one child per run). bridled
// counts a caller in it as a workload too.
const StandaloneParent = "bridle.run"

// Cgroup is a cgroup v2 directory Bridle created for a workload.
type Cgroup struct {
	Root string // cgroup v2 mount point
	Path string // absolute directory
}

// Rel is the cgroup's path as the kernel names it: relative to the cgroup v2
// root, with a leading slash, as in /proc/PID/cgroup.
func (c Cgroup) Rel() string {
	rel, err := filepath.Rel(c.Root, c.Path)
	if err != nil {
		return c.Path
	}
	return "/" + rel
}

// Create makes a new cgroup dir below root/parent.
func Create(root, parent, name string) (Cgroup, error) {
	dir := filepath.Join(root, parent)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Cgroup{}, fmt.Errorf("workload: create cgroup %s: %w", dir, err)
	}
	path := filepath.Join(dir, name)
	if err := os.Mkdir(path, 0o755); err != nil {
		return Cgroup{}, fmt.Errorf("workload: create cgroup %s: %w", path, err)
	}
	return Cgroup{Root: root, Path: path}, nil
}

// Procs lists the processes in the cgroup and its descendants.
func (c Cgroup) Procs() ([]int, error) {
	var pids []int
	err := filepath.WalkDir(c.Path, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if err != nil {
			return err
		}
		for _, f := range strings.Fields(string(b)) {
			var pid int
			if _, err := fmt.Sscan(f, &pid); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids, err
}

// Kill ends every process in the cgroup subtree (cgroup.kill, kernel 5.14+)
// and waits until it is empty.
func (c Cgroup) Kill(timeout time.Duration) error {
	if err := os.WriteFile(filepath.Join(c.Path, "cgroup.kill"), []byte("1"), 0); err != nil {
		return fmt.Errorf("workload: kill %s: %w", c.Path, err)
	}
	deadline := time.Now().Add(timeout)
	for {
		pids, err := c.Procs()
		if err != nil || len(pids) == 0 {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("workload: %d processes still in %s after %v", len(pids), c.Path, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Remove deletes the cgroup and any sub-cgroups, deepest first. It must be
// empty of processes.
func (c Cgroup) Remove() error {
	var dirs []string
	err := filepath.WalkDir(c.Path, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return err
	})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var errs []error
	for i := len(dirs) - 1; i >= 0; i-- {
		errs = append(errs, os.Remove(dirs[i]))
	}
	return errors.Join(errs...)
}
