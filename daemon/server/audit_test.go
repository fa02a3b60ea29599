package server

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/config"
)

// The audit file is rotated by size, and rotation loses no record.
func TestAuditFileRotates(t *testing.T) {
	dir := t.TempDir()
	cfg := &config.Config{AuditFile: filepath.Join(dir, "audit.jsonl"), AuditRotate: config.AuditRotate{MaxSizeMB: 1, MaxFiles: 3}}
	a, err := openAudit(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rec := audit.Record{Action: "connect", Verdict: "deny", Reason: strings.Repeat("x", 400)}
	const n = 6000 // about 2.7 MB: at least two rotations
	for i := 0; i < n; i++ {
		a.Write(rec)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "audit*.jsonl"))
	if len(files) < 3 {
		t.Fatalf("files after writing %d records: %v, want the current one and rotated ones", n, files)
	}
	lines := 0
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > 1<<20 {
			t.Errorf("%s is %d bytes, over the 1 MB limit", f, fi.Size())
		}
		fd, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(fd)
		for sc.Scan() {
			lines++
		}
		fd.Close()
	}
	if lines != n || a.Lost() != 0 {
		t.Fatalf("%d records in the files, %d lost; wrote %d", lines, a.Lost(), n)
	}
}

// A record that cannot be written is counted, never silently dropped.
func TestAuditCountsLostRecords(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "audit")
	if err != nil {
		t.Fatal(err)
	}
	f.Close() // writes now fail
	a := newAuditLog(f)
	var reported uint64
	var errs int
	a.onLost = func(n uint64) { reported += n }
	a.onError = func(error) { errs++ }
	a.Write(audit.Record{})
	a.Write(audit.Record{})
	if a.Lost() != 2 || reported != 2 || errs != 1 {
		t.Fatalf("lost %d, reported %d, errors logged %d; want 2, 2, 1", a.Lost(), reported, errs)
	}
}
