package pods

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// root is a pod root as the state file keeps it.
type root struct {
	Cgroup   string `json:"cgroup"`
	CgroupID uint64 `json:"cgroup_id"`
	// Boot is the kernel's boot id when the root was adopted: the file
	// outlives a reboot, cgroup ids do not (the kernel numbers cgroups
	// anew, and an old id may be a live cgroup's).
	Boot string `json:"boot,omitempty"`
	// Annotated: the pod's annotation was acted on (its task asked for),
	// once in the pod's life: a restarted bridled does not ask again.
	Annotated bool `json:"annotated,omitempty"`
}

// bootID is this boot's id; "" if the kernel does not say.
func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// saveRoots writes the adopted pod roots, by pod uid, to the state file
// (temporary file and rename). Called with mu held.
func (w *Watcher) saveRoots() {
	if w.opt.StateFile == "" {
		return
	}
	roots := map[string]root{}
	boot := bootID()
	for uid, st := range w.pods {
		if st.Bound {
			roots[uid] = root{Cgroup: st.Cgroup, CgroupID: st.cgroupID, Boot: boot, Annotated: st.annotationDone}
		}
	}
	b, _ := json.Marshal(roots)
	tmp := w.opt.StateFile + ".tmp"
	err := os.WriteFile(tmp, b, 0o600)
	if err == nil {
		err = os.Rename(tmp, w.opt.StateFile)
	}
	if err != nil {
		w.log.Warn("pod roots not kept; a restart may leave the bindings of pods deleted meanwhile", "file", w.opt.StateFile, "err", err)
	}
}

// loadRoots reads the roots the previous bridled kept, before the watch
// starts (which writes the file anew).
func (w *Watcher) loadRoots() map[string]root {
	if w.opt.StateFile == "" {
		return nil
	}
	b, err := os.ReadFile(w.opt.StateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	var roots map[string]root
	if err == nil {
		err = json.Unmarshal(b, &roots)
	}
	if err != nil {
		w.log.Warn("pod roots of the previous bridled not read", "file", filepath.Clean(w.opt.StateFile), "err", err)
		return nil
	}
	return roots
}

// forgetStaleRoots lets go of the roots a previous bridled adopted for
// pods that are gone: their bindings and pinned links would otherwise
// stay. Called with mu held, once the pods are listed.
func (w *Watcher) forgetStaleRoots(previous map[string]root) {
	boot := bootID()
	for uid, r := range previous {
		if st := w.pods[uid]; st != nil && (st.cgroupID == r.CgroupID || !st.Bound && st.Cgroup == r.Cgroup) {
			continue // the pod is there (adopted again, or about to be)
		}
		w.forgetConfined(uid)
		if boot == "" || r.Boot != boot {
			// Adopted in another boot (or one the file does not name):
			// its pins went with that boot, and its id may now be
			// another cgroup's.
			continue
		}
		if err := w.opt.Node.ForgetRoot(r.CgroupID); err != nil {
			w.log.Warn("root of a gone pod not let go of", "pod_uid", uid, "cgroup", r.Cgroup, "err", err)
			continue
		}
		w.log.Info("let go of the root of a pod gone while bridled was away", "pod_uid", uid, "cgroup", r.Cgroup)
	}
	w.saveRoots()
}
