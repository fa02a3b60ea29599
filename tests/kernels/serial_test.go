package main

import (
	"slices"
	"strings"
	"testing"
)

// sampleConsole is shaped like a real guest's ttyS0: CRLF line ends, kernel
// messages, a partial line before an end marker, a subtest.
const sampleConsole = "[    0.000000] Linux version 6.1.0-56-cloud-amd64\r\n" +
	"[    1.390458] Run /init as init process\r\n" +
	"@@bridle fact mount.cgroup2=ok\r\n" +
	"@@bridle fact uname=6.1.0-56-cloud-amd64\r\n" +
	"@@bridle fact lsm=lockdown,capability,landlock,yama,apparmor,bpf\r\n" +
	"@@bridle begin loader.test\r\n" +
	"=== RUN   TestProbe\r\n" +
	"--- PASS: TestProbe (0.01s)\r\n" +
	"=== RUN   TestExec\r\n" +
	"=== RUN   TestExec/memfd\r\n" +
	"    exec_test.go:10: denied\r\n" +
	"--- FAIL: TestExec (0.20s)\r\n" +
	"    --- FAIL: TestExec/memfd (0.10s)\r\n" +
	"=== RUN   TestOld\r\n" +
	"    old_test.go:3: needs 6.5\r\n" +
	"--- SKIP: TestOld (0.00s)\r\n" +
	"FAIL\r\n" +
	"no newline here\r\n" +
	"@@bridle end loader.test exit=1\r\n" +
	"@@bridle begin e2e.test\r\n" +
	"--- PASS: TestRun (1.50s)\r\n" +
	"PASS\r\n" +
	"half a line@@bridle end e2e.test exit=0\r\n" +
	"@@bridle dmesg\r\n" +
	"[    9.1] bpf: something\r\n" +
	"@@bridle done\r\n" +
	"[    9.2] reboot: Power down\r\n"

func TestParseSerial(t *testing.T) {
	r := parseSerial(sampleConsole)
	if r.Facts["uname"] != "6.1.0-56-cloud-amd64" || r.Facts["mount.cgroup2"] != "ok" ||
		r.Facts["lsm"] != "lockdown,capability,landlock,yama,apparmor,bpf" {
		t.Errorf("facts %v", r.Facts)
	}
	if !r.Done || r.Panic != "" {
		t.Errorf("done %v panic %q", r.Done, r.Panic)
	}
	if len(r.Binaries) != 2 {
		t.Fatalf("%d binaries, want 2", len(r.Binaries))
	}
	l := r.Binaries[0]
	if l.Name != "loader.test" || !l.Ended || l.Exit != 1 || len(l.Results) != 4 {
		t.Errorf("loader: %+v", l)
	}
	if want := (testResult{Name: "TestExec/memfd", Status: "FAIL", Elapsed: "0.10s"}); l.Results[2] != want {
		t.Errorf("subtest result %+v, want %+v", l.Results[2], want)
	}
	if e := r.Binaries[1]; e.Exit != 0 || !slices.Contains(e.Output, "half a line") {
		t.Errorf("e2e: %+v", e)
	}
	if p, f, s := r.counts(); p != 2 || f != 2 || s != 1 {
		t.Errorf("counts %d/%d/%d, want 2/2/1", p, f, s)
	}
	if len(r.Dmesg) != 1 || !strings.Contains(r.Dmesg[0], "bpf: something") {
		t.Errorf("dmesg %q", r.Dmesg)
	}
	ps := r.problems([]string{"loader.test", "e2e.test"})
	if len(ps) != 1 || !strings.Contains(ps[0], "loader.test: exit status 1 (failed: TestExec, TestExec/memfd)") {
		t.Errorf("problems %q", ps)
	}
}

func TestProblems(t *testing.T) {
	for name, tc := range map[string]struct {
		console string
		want    string
	}{
		"ok": {
			"@@bridle begin a.test\n--- PASS: TestA (0.00s)\n@@bridle end a.test exit=0\n@@bridle done\n", "",
		},
		"no tests": {
			"@@bridle begin a.test\ntesting: warning: no tests to run\nPASS\n@@bridle end a.test exit=0\n@@bridle done\n",
			"a.test: reported no tests",
		},
		"hung": {
			"@@bridle begin a.test\n=== RUN   TestA\n", "a.test: did not finish",
		},
		"panic before tests": {
			"[ 1.0] Kernel panic - not syncing: Attempted to kill init!\n", "kernel panic: [ 1.0] Kernel panic - not syncing",
		},
		"missing binary": {
			"@@bridle done\n", "a.test: never started",
		},
	} {
		ps := parseSerial(tc.console).problems([]string{"a.test"})
		switch {
		case tc.want == "" && len(ps) > 0:
			t.Errorf("%s: unexpected problems %q", name, ps)
		case tc.want != "" && (len(ps) == 0 || !strings.HasPrefix(ps[0], tc.want)):
			t.Errorf("%s: problems %q, want one starting %q", name, ps, tc.want)
		}
	}
}

func TestFailedTestOutput(t *testing.T) {
	r := parseSerial(sampleConsole)
	got := failedTestOutput(r.Binaries[0])
	want := []string{
		"=== RUN   TestExec",
		"=== RUN   TestExec/memfd",
		"    exec_test.go:10: denied",
		"--- FAIL: TestExec (0.20s)",
		"    --- FAIL: TestExec/memfd (0.10s)",
	}
	if len(got) != 1 || !slices.Equal(got["TestExec"], want) {
		t.Errorf("failed output %q, want only TestExec's %q", got, want)
	}
}
