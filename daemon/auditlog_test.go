package daemon

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/config"
)

// The audit file is rotated by size, and rotation loses no record of
// workloads within their share.
func TestAuditFileRotates(t *testing.T) {
	dir := t.TempDir()
	cfg := &config.Config{AuditFile: filepath.Join(dir, "audit.jsonl"), AuditRotate: config.AuditRotate{MaxSizeMB: 1, MaxFiles: 3, WorkloadPercent: 10}}
	a, err := openAudit(cfg)
	if err != nil {
		t.Fatal(err)
	}
	const n = 6000 // about 2.7 MB: at least two rotations
	for i := 0; i < n; i++ {
		// 30 workloads, none past its 10% of a file.
		a.Write(audit.Record{Workload: fmt.Sprintf("/w%02d", i%30), Action: "connect", Verdict: "deny", Reason: strings.Repeat("x", 400)})
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

// readAudit returns the records of the audit file and its rotated copies.
func readAudit(t *testing.T, dir string) []audit.Record {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "audit*.jsonl"))
	var out []audit.Record
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			var r audit.Record
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("%s: %q: %v", f, line, err)
			}
			out = append(out, r)
		}
	}
	return out
}

// One workload flooding the audit file cannot force the rotation that
// deletes the oldest file: earlier records of others survive, and the
// flood is accounted for by count.
func TestAuditFloodKeepsEarlierRecords(t *testing.T) {
	dir := t.TempDir()
	cfg := &config.Config{AuditFile: filepath.Join(dir, "audit.jsonl"), AuditRotate: config.AuditRotate{MaxSizeMB: 1, MaxFiles: 1, WorkloadPercent: 10}}
	a, err := openAudit(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a.Write(audit.Record{Workload: "/quiet", Action: "exec", Verdict: "deny", Path: "/evidence"})
	const flood = 50000 // about 20 MB of records
	for i := 0; i < flood; i++ {
		a.Write(audit.Record{Workload: "/flood", Action: "sendmsg", Verdict: "deny", Reason: strings.Repeat("x", 300)})
	}
	a.Write(audit.Record{Workload: "/quiet", Action: "exec", Verdict: "deny", Path: "/after"})
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	recs := readAudit(t, dir)
	var evidence, after bool
	var written, suppressed uint64
	for _, r := range recs {
		switch {
		case r.Path == "/evidence":
			evidence = true
		case r.Path == "/after":
			after = true
		case r.Workload == "/flood" && r.Action == "sendmsg":
			written++
		case r.Workload == "/flood" && r.Action == "suppressed":
			suppressed += r.Suppressed
		}
	}
	if !evidence || !after {
		t.Fatalf("the quiet workload's records: before the flood %v, after %v", evidence, after)
	}
	if written+suppressed != flood {
		t.Fatalf("flood: %d written + %d counted as suppressed, want %d in all", written, suppressed, flood)
	}
	if written > 1<<20/10/300 {
		t.Fatalf("flood: %d records written, past its share of the file", written)
	}
}
