package daemon

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"gopkg.in/natefinch/lumberjack.v2"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/config"
)

// auditLog writes records as JSON lines to stdout or to a file rotated by
// size; safe for concurrent use. A record that cannot be written is
// counted (status, metrics) and logged once per failure streak, never
// silently dropped.
//
// Rotation deletes the oldest file once max_files are kept, so a flood must
// not be able to force it: each workload may fill at most its share of a
// file (audit_rotate.workload_percent). Its records past that are counted,
// not written, and the count goes into the next file as a "suppressed"
// record when the file rotates (or into this one when bridled stops). It
// then takes many workloads flooding at once to force a rotation, never
// one. The kernel's per-workload event budget keeps floods small already;
// this bounds what gets through it over time.
type auditLog struct {
	mu      sync.Mutex
	w       io.WriteCloser
	rotate  func() error // nil: stdout, never rotated
	enc     audit.Encoder
	size    int64            // bytes in the current file (or since the last virtual rotation)
	maxSize int64            // the file is rotated before a record would take it past this
	share   int64            // bytes of one file a workload's records may take; 0: no limit
	used    map[string]int64 // bytes per workload in the current file
	held    map[string]uint64
	node    string // for the records this writer makes itself

	lost    atomic.Uint64
	failing bool
	onLost  func(n uint64)
	onError func(err error)
}

// openAudit opens where records go: stdout, or a file appended to and
// rotated as cfg.AuditRotate says.
func openAudit(cfg *config.Config) (*auditLog, error) {
	r := cfg.AuditRotate
	maxSize := int64(r.MaxSizeMB) << 20
	share := maxSize * int64(r.WorkloadPercent) / 100
	if r.WorkloadPercent >= 100 {
		share = 0
	}
	path := cfg.AuditFile
	if path == "" || path == "-" {
		// Stdout goes to a journal that rotates by its own rules: the
		// shares apply per max_size_mb written.
		a := newAuditLog(nopCloser{os.Stdout})
		a.maxSize, a.share, a.node = maxSize, share, cfg.NodeName
		return a, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	// Open once here so that a path that cannot be written stops the
	// daemon at start instead of losing every record later.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	fi, err := f.Stat()
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	// This writer rotates; lumberjack's own limit is only a backstop.
	l := &lumberjack.Logger{
		Filename: path, MaxSize: 2*r.MaxSizeMB + 1, MaxBackups: r.MaxFiles,
		MaxAge: r.MaxAgeDays, Compress: r.Compress,
	}
	a := newAuditLog(l)
	a.rotate, a.size, a.maxSize, a.share, a.node = l.Rotate, fi.Size(), maxSize, share, cfg.NodeName
	return a, nil
}

// newAuditLog writes to w as it is: no rotation, no shares.
func newAuditLog(w io.WriteCloser) *auditLog {
	return &auditLog{w: w, used: map[string]int64{}, held: map[string]uint64{}}
}

// Write appends one record. A kernel decision of a workload past its share
// of the current file is counted instead; the daemon's own records (task
// starts and ends) are always written.
func (a *auditLog) Write(r audit.Record) {
	a.mu.Lock()
	defer a.mu.Unlock()
	b, err := a.enc.Line(r)
	if err != nil {
		a.fail(err)
		return
	}
	if a.share > 0 && r.Enforcement != bpf.EnforcementDaemon {
		key := r.Workload
		if a.used[key]+int64(len(b)) > a.share {
			if a.held[key] == 0 {
				a.notice(r)
			}
			// The decisions the record stood for: itself and those the
			// kernel had already left out before it.
			a.held[key] += 1 + r.Suppressed
			return
		}
		a.used[key] += int64(len(b))
	}
	a.emit(b)
}

// emit writes one encoded record, rotating first when it would not fit.
func (a *auditLog) emit(b []byte) {
	if a.maxSize > 0 && a.size > 0 && a.size+int64(len(b)) > a.maxSize {
		// Copied: the summaries written after the rotation reuse the
		// encoder's buffer.
		b = bytes.Clone(b)
		a.turn()
	}
	if _, err := a.w.Write(b); err != nil {
		a.fail(err)
		return
	}
	a.size += int64(len(b))
	a.failing = false
}

// turn starts a new file (or, on stdout, a new stretch of maxSize bytes)
// and writes into it what the last one left out.
func (a *auditLog) turn() {
	if a.rotate != nil {
		if err := a.rotate(); err != nil {
			a.fail(fmt.Errorf("audit: rotate: %w", err))
		}
	}
	a.size = 0
	held := a.held
	a.used, a.held = map[string]int64{}, map[string]uint64{}
	a.summarize(held, "the previous audit file")
}

// notice records that a workload reached its share of the current file.
func (a *auditLog) notice(r audit.Record) {
	a.writeOwn(audit.Record{
		Time: audit.Timestamp(time.Now()), Node: r.Node, Workload: r.Workload, Identity: r.Identity,
		Task: r.Task, Intent: r.Intent, Action: bpf.ActionSuppressed, Verdict: bpf.VerdictDeny, Enforcement: bpf.EnforcementDaemon,
		Reason: fmt.Sprintf("this workload's records reached its share of the audit file (%d bytes); "+
			"the rest until the file rotates are counted, and the count recorded then", a.share),
	})
}

// summarize writes one "suppressed" record per workload with records left
// out of a file, in sorted order.
func (a *auditLog) summarize(held map[string]uint64, where string) {
	keys := make([]string, 0, len(held))
	for k := range held {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		a.writeOwn(audit.Record{
			Time: audit.Timestamp(time.Now()), Node: a.node, Workload: k, Action: bpf.ActionSuppressed,
			Verdict: bpf.VerdictDeny, Enforcement: bpf.EnforcementDaemon, Suppressed: held[k],
			Reason: fmt.Sprintf("%d decisions of this workload were not written to %s: over its share of the file (%d bytes)", held[k], where, a.share),
		})
	}
}

// writeOwn writes a record this writer made, outside any share.
func (a *auditLog) writeOwn(r audit.Record) {
	b, err := a.enc.Line(r)
	if err != nil {
		a.fail(err)
		return
	}
	a.emit(b)
}

func (a *auditLog) fail(err error) {
	a.lost.Add(1)
	if a.onLost != nil {
		a.onLost(1)
	}
	if !a.failing && a.onError != nil {
		a.onError(err)
	}
	a.failing = true
}

// Lost is how many records could not be written.
func (a *auditLog) Lost() uint64 { return a.lost.Load() }

// Close writes what the current file left out, then closes it.
func (a *auditLog) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	held := a.held
	a.held = map[string]uint64{}
	a.summarize(held, "this audit file")
	return a.w.Close()
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }
