package main

import (
	"regexp"
	"strconv"
	"strings"
)

// guestReport is what one guest's serial output says happened.
type guestReport struct {
	Facts    map[string]string // from "@@bridle fact K=V": uname, lsm, btf, mount.*, ...
	Binaries []binaryReport
	Done     bool     // init reached its last marker: every binary ran
	Panic    string   // the first "Kernel panic" line, if the kernel died
	Dmesg    []string // kernel messages printed during the tests
}

// binaryReport is one test binary's run.
type binaryReport struct {
	Name    string
	Ended   bool // the end marker was seen
	Exit    int  // its exit status, when Ended
	Results []testResult
	Output  []string // every line between its markers
}

// testResult is one "--- PASS/FAIL/SKIP" line; subtests are counted too, as
// `go test` reports them.
type testResult struct {
	Name    string
	Status  string // PASS, FAIL or SKIP
	Elapsed string
}

var resultLine = regexp.MustCompile(`^\s*--- (PASS|FAIL|SKIP): (\S+) \(([0-9.]+s)\)`)

// parseSerial reads a guest's console output. Lines may end in \r (serial
// line discipline) and the kernel may write into the middle of a line, so
// markers are found anywhere in a line; test results only at its start.
func parseSerial(out string) guestReport {
	r := guestReport{Facts: map[string]string{}}
	var cur *binaryReport
	inDmesg := false
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimRight(line, "\r")
		if r.Panic == "" && strings.Contains(line, "Kernel panic") {
			r.Panic = strings.TrimSpace(line)
		}
		if i := strings.Index(line, markerPrefix); i >= 0 {
			m := line[i:]
			switch {
			case strings.HasPrefix(m, markerFact):
				k, v, _ := strings.Cut(strings.TrimPrefix(m, markerFact), "=")
				r.Facts[k] = v
			case strings.HasPrefix(m, markerBegin):
				r.Binaries = append(r.Binaries, binaryReport{Name: strings.TrimSpace(strings.TrimPrefix(m, markerBegin))})
				cur = &r.Binaries[len(r.Binaries)-1]
			case strings.HasPrefix(m, markerEnd):
				if cur != nil {
					if pre := line[:i]; strings.TrimSpace(pre) != "" {
						cur.Output = append(cur.Output, pre)
					}
					cur.Ended = true
					cur.Exit = -1
					if _, s, ok := strings.Cut(m, " exit="); ok {
						if n, err := strconv.Atoi(strings.TrimSpace(s)); err == nil {
							cur.Exit = n
						}
					}
					cur = nil
				}
			case strings.HasPrefix(m, markerDone):
				r.Done = true
				inDmesg = false
			case strings.HasPrefix(m, markerDmesg):
				inDmesg = true
			}
			continue
		}
		switch {
		case cur != nil:
			cur.Output = append(cur.Output, line)
			if mm := resultLine.FindStringSubmatch(line); mm != nil {
				cur.Results = append(cur.Results, testResult{Name: mm[2], Status: mm[1], Elapsed: mm[3]})
			}
		case inDmesg && strings.TrimSpace(line) != "":
			r.Dmesg = append(r.Dmesg, line)
		}
	}
	return r
}

// counts totals the results of all binaries.
func (r guestReport) counts() (pass, fail, skip int) {
	for _, b := range r.Binaries {
		for _, t := range b.Results {
			switch t.Status {
			case "PASS":
				pass++
			case "FAIL":
				fail++
			case "SKIP":
				skip++
			}
		}
	}
	return pass, fail, skip
}

// problems lists why the guest failed, or nothing if it passed: every
// expected binary must have run to its end marker with status 0 and
// reported at least one test, and init must have finished.
func (r guestReport) problems(expected []string) []string {
	var ps []string
	if r.Panic != "" {
		ps = append(ps, "kernel panic: "+r.Panic)
	}
	ran := map[string]binaryReport{}
	for _, b := range r.Binaries {
		ran[b.Name] = b
	}
	for _, name := range expected {
		b, ok := ran[name]
		switch {
		case !ok:
			ps = append(ps, name+": never started")
		case !b.Ended:
			ps = append(ps, name+": did not finish")
		case b.Exit != 0:
			ps = append(ps, name+": exit status "+strconv.Itoa(b.Exit)+failedNames(b))
		case len(b.Results) == 0:
			ps = append(ps, name+": reported no tests (all filtered out, or none built in?)")
		}
	}
	if !r.Done && len(ps) == 0 {
		ps = append(ps, "init did not reach its end marker")
	}
	return ps
}

func failedNames(b binaryReport) string {
	var fs []string
	for _, t := range b.Results {
		if t.Status == "FAIL" {
			fs = append(fs, t.Name)
		}
	}
	if len(fs) == 0 {
		return ""
	}
	return " (failed: " + strings.Join(fs, ", ") + ")"
}

// failedTestOutput returns, for each failed top-level test, its own lines:
// from its "=== RUN" to its "--- FAIL" line and the subtest results under it.
// A failing test's messages can sit thousands of lines before the binary's
// end, out of reach of a tail.
func failedTestOutput(b binaryReport) map[string][]string {
	out := map[string][]string{}
	for _, t := range b.Results {
		if t.Status != "FAIL" || strings.Contains(t.Name, "/") {
			continue
		}
		start, end := -1, -1
		for i, l := range b.Output {
			if start < 0 && strings.TrimSpace(strings.TrimPrefix(l, "=== RUN")) == t.Name && strings.HasPrefix(l, "=== RUN") {
				start = i
			}
			if strings.HasPrefix(l, "--- FAIL: "+t.Name+" (") {
				end = i
				break
			}
		}
		if end < 0 {
			continue
		}
		if start < 0 {
			start = end
		}
		// The subtests' results follow the parent's, indented.
		for end+1 < len(b.Output) && strings.HasPrefix(b.Output[end+1], "    ") {
			end++
		}
		out[t.Name] = b.Output[start : end+1]
	}
	return out
}
