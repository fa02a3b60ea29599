package daemon

import (
	"context"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/bridle-sh/bridle/daemon/api"
	"github.com/bridle-sh/bridle/daemon/config"
	"github.com/bridle-sh/bridle/daemon/workload"
)

// hardening keeps what the last checks found of the workloads below the
// roots: the unit settings (deploy/systemd/bridle-agent-hardening.conf)
// their processes lack. Bridle cannot give an adopted workload what its
// unit did not, so it says which ones lack it, in `bridle status`, the
// metrics and the log.
type hardening struct {
	mu      sync.Mutex
	reports map[string]workload.Hardening // by workload cgroup
	// requests asks the checker for one workload now (a task start).
	requests chan string
}

func newHardening() *hardening {
	return &hardening{reports: map[string]workload.Hardening{}, requests: make(chan string, 64)}
}

// request asks for a check of one workload soon; a full queue drops it, as
// the periodic check covers it.
func (h *hardening) request(cg string) {
	if h == nil {
		return
	}
	select {
	case h.requests <- cg:
	default:
	}
}

// runHardeningChecks checks every root at once and then at the configured
// interval, and a workload whenever a task starts on it, until ctx ends.
func (d *Daemon) runHardeningChecks(ctx context.Context) {
	t := time.NewTicker(d.cfg.HardeningCheckInterval)
	defer t.Stop()
	for _, r := range d.cfg.Roots {
		d.checkHardening(r)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			for _, r := range d.cfg.Roots {
				d.checkHardening(r)
			}
		case cg := <-d.hardening.requests:
			d.checkHardening(cg)
		}
	}
}

// checkHardening checks the processes of cgroup cg and everything below it
// and replaces what was known of that subtree.
func (d *Daemon) checkHardening(cg string) {
	host, err := workload.HostNamespaces()
	if err != nil {
		d.log.Error("hardening check", "workload", cg, "err", err)
		return
	}
	found := workload.CheckHardening(d.cgRoot, filepath.Join(d.cgRoot, cg), host)
	h := d.hardening
	h.mu.Lock()
	previous := map[string]workload.Hardening{}
	for w, r := range h.reports {
		if config.Under(w, cg) {
			previous[w] = r
			delete(h.reports, w)
		}
	}
	for _, r := range found {
		h.reports[r.Workload] = r
	}
	unhardened, lacking := 0, map[string]int{}
	for _, r := range h.reports {
		if len(r.Missing) > 0 {
			unhardened++
		}
		for _, s := range r.Missing {
			lacking[s]++
		}
	}
	h.mu.Unlock()
	d.metrics.SetHardening(unhardened, lacking)
	// Say so once per change, not at every check.
	for _, r := range found {
		if len(r.Missing) > 0 && !slices.Equal(previous[r.Workload].Missing, r.Missing) {
			d.log.Warn("workload lacks unit hardening; Bridle cannot close these doors for processes it did not launch",
				"workload", r.Workload, "missing", strings.Join(r.Missing, ","), "pids", r.PIDs)
		}
		for _, e := range r.Errors {
			d.log.Warn("hardening check", "workload", r.Workload, "err", e)
		}
	}
}

// hardeningStatus is the last check of each workload, by path.
func (d *Daemon) hardeningStatus() []api.WorkloadHardening {
	h := d.hardening
	if h == nil {
		return []api.WorkloadHardening{}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]api.WorkloadHardening, 0, len(h.reports))
	for _, r := range h.reports {
		out = append(out, api.WorkloadHardening{
			Workload: r.Workload, Processes: r.Processes, Missing: r.Missing,
			PIDs: r.PIDs, Checked: r.Checked, Errors: r.Errors,
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Workload < out[j].Workload })
	return out
}
