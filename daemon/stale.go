package daemon

import (
	"os"
	"path/filepath"
	"strings"

	"github.com/bridle-sh/bridle/daemon/workload"
	"github.com/bridle-sh/bridle/loader"
)

// sweepStale removes what earlier runs left behind when they were killed
// before cleaning up. Their pins keep enforcing while processes of the
// workload remain (fail closed); once the workload is empty they are removed.
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
		_ = loader.RemovePins(filepath.Join(pinParent, ent.Name()))
		_ = cg.Remove()
	}
}
