package run

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/daemon/workload"
	"github.com/bridle-sh/bridle/loader"
)

// lockParent holds one lock file per live standalone run. A run holds its
// lock (flock) from before it creates anything until it has removed it all;
// the kernel drops the lock when the run dies, however it dies. It is
// private (0700); its parent, bridle's runtime directory, also holds
// bridled's API socket and stays traversable (0755), or admins who are not
// root could not reach the socket.
var lockParent = "/run/bridle/run"

// runLock is a held run lock.
type runLock struct {
	f *os.File
}

// lockRun creates and takes the lock of a new run.
func lockRun(taskID string) (*runLock, error) {
	if err := makeLockParent(); err != nil {
		return nil, fmt.Errorf("run lock: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(lockParent, taskID+".lock"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("run lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("run lock: %w", err)
	}
	return &runLock{f: f}, nil
}

// makeLockParent creates the runtime directory 0755 and the lock
// directory 0700 below it (whatever the umask), and opens a runtime
// directory that earlier versions left 0700.
func makeLockParent() error {
	runtimeDir := filepath.Dir(lockParent)
	if err := os.MkdirAll(runtimeDir, 0o755); err != nil {
		return err
	}
	fi, err := os.Stat(runtimeDir)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o011 != 0o011 {
		if err := os.Chmod(runtimeDir, fi.Mode().Perm()|0o755); err != nil {
			return err
		}
	}
	if err := os.Mkdir(lockParent, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return os.Chmod(lockParent, 0o700)
}

// release removes the lock file, then drops the lock.
func (l *runLock) release() {
	_ = os.Remove(l.f.Name())
	_ = l.f.Close()
}

// ownerGone reports whether the run that owns taskID's pins is dead: its
// lock file is missing or can be locked.
func ownerGone(taskID string) bool {
	f, err := os.OpenFile(filepath.Join(lockParent, taskID+".lock"), os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return true
	}
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return false // held: the run is alive
	}
	_ = os.Remove(f.Name())
	return true
}

// sweepStale removes what earlier runs left behind when they were killed
// before cleaning up. Their pins keep enforcing while processes of the
// workload remain (fail closed); once the owner is dead and the workload
// empty they are removed. Runs in progress are never touched.
func sweepStale() {
	root, err := loader.CgroupRoot()
	if err != nil {
		return
	}
	entries, err := os.ReadDir(pinParent)
	if err != nil {
		return
	}
	for _, ent := range entries {
		if !ent.IsDir() || !strings.HasPrefix(ent.Name(), "t-") {
			continue
		}
		cg := workload.Cgroup{Root: root, Path: filepath.Join(root, cgroupParent, "run-"+ent.Name())}
		if pids, err := cg.Procs(); err == nil && len(pids) > 0 {
			continue
		}
		if !ownerGone(ent.Name()) {
			continue
		}
		_ = loader.RemovePins(filepath.Join(pinParent, ent.Name()))
		_ = cg.Remove()
	}
}
