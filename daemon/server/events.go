package server

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"gopkg.in/natefinch/lumberjack.v2"

	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/config"
)

// auditLog writes records as JSON lines to stdout or to a file rotated by
// size; safe for concurrent use. A record that cannot be written is
// counted (status, metrics) and logged once per failure streak, never
// silently dropped.
type auditLog struct {
	mu      sync.Mutex
	w       io.WriteCloser
	enc     *json.Encoder
	lost    atomic.Uint64
	failing bool
	onLost  func(n uint64)
	onError func(err error)
}

// openAudit opens where records go: stdout, or a file appended to and
// rotated as cfg.AuditRotate says.
func openAudit(cfg *config.Config) (*auditLog, error) {
	path := cfg.AuditFile
	if path == "" || path == "-" {
		return newAuditLog(nopCloser{os.Stdout}), nil
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
	f.Close()
	r := cfg.AuditRotate
	return newAuditLog(&lumberjack.Logger{
		Filename: path, MaxSize: r.MaxSizeMB, MaxBackups: r.MaxFiles,
		MaxAge: r.MaxAgeDays, Compress: r.Compress,
	}), nil
}

func newAuditLog(w io.WriteCloser) *auditLog {
	return &auditLog{w: w, enc: json.NewEncoder(w)}
}

// Write appends one record.
func (a *auditLog) Write(r audit.Record) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.enc.Encode(r); err != nil {
		a.lost.Add(1)
		if a.onLost != nil {
			a.onLost(1)
		}
		if !a.failing && a.onError != nil {
			a.onError(err)
		}
		a.failing = true
		return
	}
	a.failing = false
}

// Lost is how many records could not be written.
func (a *auditLog) Lost() uint64 { return a.lost.Load() }

func (a *auditLog) Close() error { return a.w.Close() }

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }
