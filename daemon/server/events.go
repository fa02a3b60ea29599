package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/loader"
)

// Record is a decision record as bridled writes it: the schema of
// audit.Record plus the policy revision that decided.
type Record struct {
	audit.Record
	PolicyRevision string `json:"policy_revision"`
}

// auditLog writes records as JSON lines; safe for concurrent use.
type auditLog struct {
	mu  sync.Mutex
	w   io.WriteCloser
	enc *json.Encoder
}

func newAuditLog(w io.WriteCloser) *auditLog {
	return &auditLog{w: w, enc: json.NewEncoder(w)}
}

func (a *auditLog) Write(r Record) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.enc.Encode(r); err != nil {
		return fmt.Errorf("audit: write record: %w", err)
	}
	return nil
}

func (a *auditLog) Close() error { return a.w.Close() }

// readEvents turns the kernel's decisions into records until the reader is
// flushed or closed.
func (d *Daemon) readEvents(r *loader.EventReader) {
	for {
		ev, err := r.Read()
		if err != nil {
			if !errors.Is(err, loader.ErrFlushed) && !errors.Is(err, loader.ErrClosed) {
				d.log.Error("event reader stopped", "err", err)
			}
			return
		}
		if err := d.audit.Write(d.record(ev)); err != nil {
			d.log.Error("audit", "err", err)
		}
	}
}

// record enriches a kernel decision: the task the slot generation names,
// else the workload the cgroup id names under the baseline.
func (d *Daemon) record(ev loader.Event) Record {
	rec := Record{
		Record: audit.Record{
			Time: audit.Timestamp(ev.Time), Node: d.cfg.NodeName,
			PID: ev.PID, Comm: ev.Comm, Action: ev.Action, Protocol: ev.Protocol,
			Address: audit.Addr(ev.Addr), Port: ev.Port, Path: ev.Path,
			Verdict: ev.Verdict, Reason: ev.Reason, Enforcement: ev.Enforcement,
		},
		PolicyRevision: d.baselineRevision,
	}
	if ev.Slot != loader.BaselineSlot {
		if t, ok := d.tasks.ByGeneration(ev.Generation); ok {
			rec.Workload, rec.Identity, rec.Task, rec.Intent = t.Workload, t.Identity, t.ID, t.Intent
			d.mu.Lock()
			if rev := d.revisions[t.ID]; rev != "" {
				rec.PolicyRevision = rev
			}
			d.mu.Unlock()
			return rec
		}
	}
	rec.Workload = d.cgroupPath(ev.CgroupID)
	if rec.Workload != "" {
		rec.Identity = d.cfg.Identity(rec.Workload)
	}
	return rec
}

// cgroupPath finds the path of a cgroup below the roots by its id (the
// directory's inode), remembering what it found. An id not found is
// remembered as "" for a while, so a flood of events from a cgroup that is
// gone does not walk the tree per event.
func (d *Daemon) cgroupPath(id uint64) string {
	d.mu.Lock()
	p, ok := d.paths[id]
	d.mu.Unlock()
	if ok {
		return p
	}
	found := ""
	for _, r := range d.cfg.Roots {
		base := filepath.Join(d.cgRoot, r)
		_ = filepath.WalkDir(base, func(path string, de fs.DirEntry, err error) error {
			if err != nil {
				return filepath.SkipDir
			}
			if !de.IsDir() {
				return nil
			}
			if cid, err := loader.CgroupID(path); err == nil && cid == id {
				found = r + strings.TrimPrefix(path, base)
				return filepath.SkipAll
			}
			return nil
		})
		if found != "" {
			break
		}
	}
	d.mu.Lock()
	if len(d.paths) > 4096 {
		clear(d.paths) // bounded; roots are re-found on demand
	}
	d.paths[id] = found
	d.mu.Unlock()
	if found == "" {
		time.AfterFunc(10*time.Second, func() {
			d.mu.Lock()
			if d.paths[id] == "" {
				delete(d.paths, id)
			}
			d.mu.Unlock()
		})
	}
	return found
}

// comm is a process's command name, for refusal records.
func comm(pid int32) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
