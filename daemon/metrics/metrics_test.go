package metrics

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/daemon/audit"
)

func TestDecisionClampsUnknownValues(t *testing.T) {
	m := New(Sources{})
	m.Decision("connect", "deny")
	m.Decision("connect", "deny")
	m.Decision("exec", "would-deny")
	m.Decision("socket", "allow")
	// Values a workload could steer must not create series.
	for i := range 100 {
		m.Decision(bpf.Action(fmt.Sprintf("action-%d", i)), "deny")
		m.Decision("sendmsg", bpf.Verdict(fmt.Sprintf("verdict-%d", i)))
	}
	m.Decision("", "")

	// 9 actions × 4 verdicts, all present from the start.
	if n, err := testutil.GatherAndCount(m.registry, "bridle_decisions_total"); err != nil || n != 36 {
		t.Fatalf("bridle_decisions_total series = %d, %v; want 36", n, err)
	}
	for _, c := range []struct {
		action, verdict string
		want            float64
	}{
		{"connect", "deny", 2},
		{"exec", "would-deny", 1},
		{"socket", "allow", 1},
		{"other", "deny", 100},
		{"sendmsg", "other", 100},
		{"other", "other", 1},
		{"connect", "allow", 0},
	} {
		if got := testutil.ToFloat64(m.decisions[c.action][c.verdict]); got != c.want {
			t.Errorf("decisions{action=%q,verdict=%q} = %v, want %v", c.action, c.verdict, got, c.want)
		}
	}
}

func TestCounters(t *testing.T) {
	m := New(Sources{})
	m.TaskStarted()
	m.TaskStarted()
	m.TaskStartFailed("denied")
	m.TaskStartFailed("busy")
	m.TaskStartFailed("uid 1000 is not an admin") // free text: clamped
	m.TaskEnded("expired")
	m.TaskEnded("ended")
	m.TaskEnded("command exited") // free text: clamped
	m.PolicyLoad(true)
	m.PolicyLoad(true)
	m.PolicyLoad(false)
	m.APIRefused()
	m.EventsLost(3)
	m.EventsLost(0)

	const want = `
# HELP bridle_api_refused_total Task API calls refused because the caller could not be identified or was not allowed to make them.
# TYPE bridle_api_refused_total counter
bridle_api_refused_total 1
# HELP bridle_audit_records_lost_total Decision records that could not be written to the audit log.
# TYPE bridle_audit_records_lost_total counter
bridle_audit_records_lost_total 3
# HELP bridle_policy_loads_total Policy load and reload attempts, by result (success, failure).
# TYPE bridle_policy_loads_total counter
bridle_policy_loads_total{result="failure"} 1
bridle_policy_loads_total{result="success"} 2
# HELP bridle_task_start_failures_total Task start requests that did not start a task, by reason (denied, invalid, busy, unavailable, error, other).
# TYPE bridle_task_start_failures_total counter
bridle_task_start_failures_total{reason="busy"} 1
bridle_task_start_failures_total{reason="denied"} 1
bridle_task_start_failures_total{reason="error"} 0
bridle_task_start_failures_total{reason="invalid"} 0
bridle_task_start_failures_total{reason="other"} 1
bridle_task_start_failures_total{reason="unavailable"} 0
# HELP bridle_tasks_ended_total Tasks that ended and were revoked, by reason (ended, expired, other).
# TYPE bridle_tasks_ended_total counter
bridle_tasks_ended_total{reason="ended"} 1
bridle_tasks_ended_total{reason="expired"} 1
bridle_tasks_ended_total{reason="other"} 1
# HELP bridle_tasks_started_total Tasks that started: their envelope was evaluated, applied and bound to the workload.
# TYPE bridle_tasks_started_total counter
bridle_tasks_started_total 2
`
	if err := testutil.GatherAndCompare(m.registry, strings.NewReader(want),
		"bridle_api_refused_total", "bridle_audit_records_lost_total", "bridle_policy_loads_total",
		"bridle_task_start_failures_total", "bridle_tasks_ended_total", "bridle_tasks_started_total",
	); err != nil {
		t.Fatal(err)
	}
}

func TestDurations(t *testing.T) {
	m := New(Sources{})
	m.ObservePolicyEval(200 * time.Microsecond)
	m.ObservePolicyEval(300 * time.Microsecond)
	m.ObserveApply(20 * time.Millisecond)
	m.ObserveRevoke(2 * time.Millisecond)

	for _, c := range []struct {
		name  string
		h     interface{ Write(*dto.Metric) error }
		count uint64
		sum   float64
		le    float64 // an upper bound whose bucket must hold every observation
	}{
		{"policy eval", m.policyEval, 2, 500e-6, 500e-6},
		{"apply", m.apply, 1, 20e-3, 25e-3},
		{"revoke", m.revoke, 1, 2e-3, 2.5e-3},
	} {
		var d dto.Metric
		if err := c.h.Write(&d); err != nil {
			t.Fatal(err)
		}
		h := d.GetHistogram()
		if h.GetSampleCount() != c.count || !near(h.GetSampleSum(), c.sum) {
			t.Errorf("%s: count %d sum %v, want %d and %v", c.name, h.GetSampleCount(), h.GetSampleSum(), c.count, c.sum)
		}
		found := false
		for _, b := range h.GetBucket() {
			if b.GetUpperBound() == c.le {
				found = true
				if b.GetCumulativeCount() != c.count {
					t.Errorf("%s: bucket le=%v holds %d, want %d", c.name, c.le, b.GetCumulativeCount(), c.count)
				}
			}
		}
		if !found {
			t.Errorf("%s: no bucket le=%v", c.name, c.le)
		}
	}
}

func near(a, b float64) bool { d := a - b; return d < 1e-12 && d > -1e-12 }

func TestDropsKeepLastGoodValue(t *testing.T) {
	var (
		n   uint64
		err error
	)
	m := New(Sources{Drops: func() (uint64, error) { return n, err }})
	scrape := func(drops, readErrors int) {
		t.Helper()
		want := fmt.Sprintf(`
# HELP bridle_ring_drops_total Kernel decision events dropped because the ring buffer was full, as counted by the kernel. Holds the last value read while reads fail.
# TYPE bridle_ring_drops_total counter
bridle_ring_drops_total %d
# HELP bridle_ring_drops_read_errors_total Scrapes at which reading bridle_ring_drops_total from the kernel failed.
# TYPE bridle_ring_drops_read_errors_total counter
bridle_ring_drops_read_errors_total %d
`, drops, readErrors)
		if err := testutil.GatherAndCompare(m.registry, strings.NewReader(want),
			"bridle_ring_drops_total", "bridle_ring_drops_read_errors_total"); err != nil {
			t.Fatal(err)
		}
	}

	n = 7
	scrape(7, 0)
	n, err = 0, errors.New("map lookup: operation not permitted")
	scrape(7, 1) // the last good value, not 0
	scrape(7, 2)
	n, err = 9, nil
	scrape(9, 2)
}

func TestPolicyInfoHoldsOnlyCurrentRevision(t *testing.T) {
	m := New(Sources{})
	if n, err := testutil.GatherAndCount(m.registry, "bridle_policy_info"); err != nil || n != 0 {
		t.Fatalf("before a load: %d series, %v; want none", n, err)
	}
	m.SetPolicyInfo("sha256:aaaa")
	m.SetPolicyInfo("sha256:bbbb")
	const want = `
# HELP bridle_policy_info The revision of the policy in force, as a label; always 1. Absent before a policy is loaded.
# TYPE bridle_policy_info gauge
bridle_policy_info{revision="sha256:bbbb"} 1
`
	if err := testutil.GatherAndCompare(m.registry, strings.NewReader(want), "bridle_policy_info"); err != nil {
		t.Fatal(err)
	}

	m.SetPolicyInfo("bad\xffutf8") // must not break the scrape
	if n, err := testutil.GatherAndCount(m.registry, "bridle_policy_info"); err != nil || n != 1 {
		t.Fatalf("invalid UTF-8: %d series, %v; want 1", n, err)
	}
	m.SetPolicyInfo("")
	if n, err := testutil.GatherAndCount(m.registry, "bridle_policy_info"); err != nil || n != 0 {
		t.Fatalf("after clearing: %d series, %v; want none", n, err)
	}
}

func TestNilSourcesLeaveMetricsOut(t *testing.T) {
	m := New(Sources{})
	for _, name := range []string{"bridle_ring_drops_total", "bridle_ring_drops_read_errors_total", "bridle_tasks_active"} {
		if n, err := testutil.GatherAndCount(m.registry, name); err != nil || n != 0 {
			t.Errorf("%s: %d series, %v; want none", name, n, err)
		}
	}
}

func TestNilMetricsIsNoop(t *testing.T) {
	var m *Metrics
	m.Decision("connect", "deny")
	m.TaskStarted()
	m.TaskStartFailed("denied")
	m.TaskEnded("ended")
	m.ObservePolicyEval(time.Millisecond)
	m.ObserveApply(time.Millisecond)
	m.ObserveRevoke(time.Millisecond)
	m.PolicyLoad(true)
	m.SetPolicyInfo("r1")
	m.APIRefused()
	m.EventsLost(1)
}

func TestHandlerScrape(t *testing.T) {
	m := New(Sources{
		Drops:       func() (uint64, error) { return 42, nil },
		ActiveTasks: func() int { return 3 },
	})
	m.Decision("connect", "deny")
	m.Decision("not-an-action", "allow")
	m.TaskStarted()
	m.TaskStartFailed("invalid")
	m.TaskEnded("expired")
	m.ObservePolicyEval(100 * time.Microsecond)
	m.ObserveApply(5 * time.Millisecond)
	m.ObserveRevoke(time.Millisecond)
	m.PolicyLoad(true)
	m.SetPolicyInfo("r7")
	m.APIRefused()
	m.EventsLost(2)

	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %s:\n%s", resp.Status, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type %q, want text/plain", ct)
	}

	lines := map[string]bool{}
	for _, l := range strings.Split(string(body), "\n") {
		lines[l] = true
	}
	for _, want := range []string{
		`bridle_decisions_total{action="connect",verdict="deny"} 1`,
		`bridle_decisions_total{action="other",verdict="allow"} 1`,
		`bridle_decisions_total{action="exec",verdict="would-deny"} 0`,
		`bridle_tasks_started_total 1`,
		`bridle_task_start_failures_total{reason="invalid"} 1`,
		`bridle_tasks_ended_total{reason="expired"} 1`,
		`bridle_tasks_active 3`,
		`bridle_ring_drops_total 42`,
		`bridle_ring_drops_read_errors_total 0`,
		`bridle_policy_eval_duration_seconds_count 1`,
		`bridle_policy_eval_duration_seconds_bucket{le="0.0001"} 1`,
		`bridle_task_apply_duration_seconds_count 1`,
		`bridle_task_apply_duration_seconds_bucket{le="0.005"} 1`,
		`bridle_task_revoke_duration_seconds_count 1`,
		`bridle_task_revoke_duration_seconds_bucket{le="0.001"} 1`,
		`bridle_policy_loads_total{result="success"} 1`,
		`bridle_policy_loads_total{result="failure"} 0`,
		`bridle_policy_info{revision="r7"} 1`,
		`bridle_api_refused_total 1`,
		`bridle_audit_records_lost_total 2`,
		`# TYPE bridle_ring_drops_total counter`,
		`# TYPE bridle_tasks_active gauge`,
		`# TYPE bridle_task_apply_duration_seconds histogram`,
	} {
		if !lines[want] {
			t.Errorf("scrape lacks line %q", want)
		}
	}
	// The Go and process collectors are registered too.
	for _, prefix := range []string{"go_goroutines ", "process_start_time_seconds "} {
		if !strings.Contains(string(body), "\n"+prefix) {
			t.Errorf("scrape lacks %s", strings.TrimSpace(prefix))
		}
	}
}

// TestConcurrentUse runs recording and scraping at once; run with -race.
func TestConcurrentUse(t *testing.T) {
	m := New(Sources{
		Drops:       func() (uint64, error) { return 1, nil },
		ActiveTasks: func() int { return 1 },
	})
	h := m.Handler()
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range 200 {
				m.Decision("connect", "allow")
				m.SetPolicyInfo(fmt.Sprint("r", i))
				m.TaskEnded("ended")
			}
		}()
		go func() {
			defer wg.Done()
			for range 10 {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
				if rec.Code != http.StatusOK {
					t.Errorf("scrape status %d", rec.Code)
				}
			}
		}()
	}
	wg.Wait()
	if got := testutil.ToFloat64(m.decisions["connect"]["allow"]); got != 800 {
		t.Errorf("decisions = %v, want 800", got)
	}
	if n, err := testutil.GatherAndCount(m.registry, "bridle_policy_info"); err != nil || n != 1 {
		t.Errorf("bridle_policy_info: %d series, %v; want 1", n, err)
	}
}

// TestLint checks names, units and help texts with Prometheus's own linter.
func TestLint(t *testing.T) {
	m := New(Sources{
		Drops:       func() (uint64, error) { return 0, nil },
		ActiveTasks: func() int { return 0 },
	})
	m.SetPolicyInfo("r1")
	problems, err := testutil.GatherAndLint(m.registry)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "bridle_") {
			t.Errorf("%s: %s", p.Metric, p.Text)
		}
	}
}

func TestHardening(t *testing.T) {
	m := New(Sources{})
	// Every setting has a series from the start.
	if n, err := testutil.GatherAndCount(m.registry, "bridle_workload_hardening_missing"); err != nil || n != 10 {
		t.Fatalf("bridle_workload_hardening_missing series = %d, %v; want 10", n, err)
	}
	m.SetHardening(2, map[string]int{"NoNewPrivileges": 2, "PrivatePIDs": 1, "Bogus": 3})
	m.SetHardening(1, map[string]int{"PrivatePIDs": 1}) // replaces, not adds
	for s, want := range map[string]float64{"NoNewPrivileges": 0, "PrivatePIDs": 1, "other": 0} {
		if got := testutil.ToFloat64(m.hardeningLacks[s]); got != want {
			t.Errorf("hardening_missing{setting=%q} = %v, want %v", s, got, want)
		}
	}
	if got := testutil.ToFloat64(m.unhardened); got != 1 {
		t.Errorf("workloads_unhardened = %v, want 1", got)
	}
	if n, err := testutil.GatherAndCount(m.registry, "bridle_workload_hardening_missing"); err != nil || n != 10 {
		t.Fatalf("unknown settings made series: %d, %v", n, err)
	}
}

func TestDNSQueries(t *testing.T) {
	m := New(Sources{})
	m.Query(bpf.VerdictAllow, audit.DNSAllowed)
	m.Query(bpf.VerdictDeny, audit.DNSNotAllowed)
	m.Query(bpf.VerdictDeny, audit.DNSNotAllowed)
	m.Query(bpf.VerdictDeny, "a reason from a newer resolver")
	m.Record(audit.Record{Action: bpf.ActionDNS, Verdict: bpf.VerdictDeny}) // counted by Query, not twice
	m.CacheHit()
	m.Forwarded(300*time.Microsecond, nil)
	m.Forwarded(5*time.Second, errors.New("timeout"))
	for _, c := range []struct {
		verdict, reason string
		want            float64
	}{
		{"allow", audit.DNSAllowed, 1}, {"deny", audit.DNSNotAllowed, 2}, {"deny", other, 1},
	} {
		if got := testutil.ToFloat64(m.dnsQueries[c.verdict][c.reason]); got != c.want {
			t.Errorf("queries %s/%s = %v, want %v", c.verdict, c.reason, got, c.want)
		}
	}
	if got := testutil.ToFloat64(m.decisions[other][other]) + testutil.ToFloat64(m.decisions[other]["deny"]); got != 0 {
		t.Errorf("a dns record was counted as a kernel decision (%v)", got)
	}
	if testutil.ToFloat64(m.dnsCacheHits) != 1 || testutil.ToFloat64(m.dnsUpstreamErrs) != 1 {
		t.Error("cache hits or upstream failures not counted")
	}
	if n, err := testutil.GatherAndCount(m.registry, "bridle_dns_upstream_duration_seconds"); err != nil || n != 1 {
		t.Errorf("upstream histogram: %d, %v", n, err)
	}
}
