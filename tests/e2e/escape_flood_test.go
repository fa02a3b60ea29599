package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/daemon/audit"
)

// One workload floods refusals (as fast as it can, hundreds of thousands)
// while another, quiet one is refused a few times. The quiet workload's
// records must all arrive, its record from before the flood must survive in
// bridled's audit file (the flood must not force the rotation that deletes
// it), and the flood must be accounted for: every refusal is either a record
// or counted in a record's "suppressed".
func TestEscapeEventFlood(t *testing.T) {
	const floodCount = 300000
	e := newDaemonEnv(t)
	// Small files, one kept: unlimited, the flood rotates the audit file
	// dozens of times and deletes everything before it.
	f, err := os.OpenFile(e.config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "audit_rotate:\n  max_size_mb: 1\n  max_files: 1\n")
	f.Close()
	e.start()
	quiet, flood := e.workload("quiet"), e.workload("flood")
	e.startTask(quiet)
	floodTask := e.startTask(flood)

	// Before the flood: evidence that must survive it.
	wantPrefix(t, "quiet workload before the flood", e.probeConnect(quiet, "127.0.0.2:1"), "EPERM")

	floodOut := make(chan string, 1)
	go func() { floodOut <- e.floodIn(flood, floodCount) }()
	quietRefusals := 1
	for done := false; !done; {
		select {
		case out := <-floodOut:
			floodOut <- out
			done = true
		default:
			wantPrefix(t, "quiet workload during the flood", e.probeConnect(quiet, "127.0.0.2:2"), "EPERM")
			quietRefusals++
		}
	}
	out := <-floodOut
	if want := fmt.Sprintf("ok refused=%d", floodCount); !strings.HasPrefix(out, want) {
		t.Fatalf("flood: %q, want %s", out, want)
	}
	if out, err := e.bridle("end", floodTask); err != nil {
		t.Fatalf("task end: %v: %s", err, out)
	}
	e.waitAudit(func(r map[string]any) bool { return r["action"] == "task_end" && r["task"] == floodTask })
	// A clean stop writes what the audit file left out.
	e.stop(syscall.SIGTERM)

	st := readAuditFiles(t, filepath.Dir(e.audit))
	quietRecs := 0
	var floodRecords, floodSuppressed uint64
	for _, r := range st {
		switch {
		case r.Workload == quiet && r.Action == "connect" && r.Verdict == "deny":
			quietRecs++
		case r.Workload == flood && r.Action == "connect":
			floodRecords++
			floodSuppressed += r.Suppressed
		case r.Workload == flood:
			floodSuppressed += r.Suppressed // task_end, and the audit file's own count
		}
	}
	t.Logf("flood of %d: %d records, %d counted as suppressed; quiet: %d of %d records", floodCount, floodRecords, floodSuppressed, quietRecs, quietRefusals)
	if quietRecs != quietRefusals {
		t.Fatalf("the quiet workload was refused %d times, %d records in the audit files", quietRefusals, quietRecs)
	}
	if floodSuppressed == 0 {
		t.Fatalf("the flood of %d refusals reported no suppressed count", floodCount)
	}
	if floodRecords+floodSuppressed != floodCount {
		t.Fatalf("flood: %d records + %d suppressed, want %d refusals accounted for", floodRecords, floodSuppressed, floodCount)
	}
}

// floodIn runs `probe udp-flood` in cgroup cg (in the test namespace) and
// returns its line. Safe to call from another goroutine: it reports
// failures in its result instead of failing the test.
func (e *daemonEnv) floodIn(cg string, n int) string {
	fd, err := syscall.Open(filepath.Join(cgroupRoot(e.t), cg), syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return "error " + err.Error()
	}
	defer syscall.Close(fd)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, probeBin, "udp-flood", "127.0.0.1:9", strconv.Itoa(n))
	c.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	var stdout bytes.Buffer
	c.Stdout = &stdout
	inNetns(e.t, func() { err = c.Run() })
	if err != nil {
		return fmt.Sprintf("error %v: %s", err, stdout.String())
	}
	return strings.TrimSpace(stdout.String())
}

// readAuditFiles reads every record of an audit file and its rotated
// copies in dir.
func readAuditFiles(t *testing.T, dir string) []audit.Record {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "audit*.jsonl*"))
	var out []audit.Record
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if line == "" {
				continue
			}
			var r audit.Record
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("%s: %q: %v", f, line, err)
			}
			out = append(out, r)
		}
	}
	return out
}
