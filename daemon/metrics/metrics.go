// Package metrics owns bridled's Prometheus metrics. They live on a registry
// of their own, together with the Go runtime and process collectors, and are
// served by Handler.
//
// Every label takes its value from a small fixed set. A value outside the set
// is counted under "other" instead of creating a series: action and verdict
// come from kernel events, which a workload can influence, and each new label
// value is a new series that Prometheus and bridled keep in memory for good.
// Clamping keeps the number of series fixed however the daemon is driven.
//
// A nil *Metrics is valid: its methods do nothing.
package metrics

import (
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/workload"
)

// other is the label value for anything outside a label's fixed set.
const other = "other"

// Label value sets. Order matters only for readability.
var (
	// actions are the kernel's actions (bpf.KernelActions).
	actions = labels(bpf.KernelActions()...)
	// verdicts are the kernel's verdicts.
	verdicts         = labels(bpf.VerdictAllow, bpf.VerdictDeny, bpf.VerdictWouldDeny)
	startFailReasons = []string{"denied", "invalid", "busy", "unavailable", "error", other}
	endReasons       = []string{EndedOnPurpose, EndedExpired, other}
)

// Reasons a task ended, for TaskEnded.
const (
	// EndedOnPurpose is a task ended by someone: the API, or its
	// command exiting.
	EndedOnPurpose = "ended"
	// EndedExpired is a task whose time ran out.
	EndedExpired = "expired"
)

// durationBuckets span 25 µs to 1 s: policy evaluation sits around
// 50–500 µs, revoke around 0.5–5 ms and apply around 1–100 ms, so each has
// several buckets where it usually lands and room above for the slow cases.
var durationBuckets = []float64{
	25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
	1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1,
}

// Sources are values read when Prometheus scrapes. A nil field leaves its
// metric out.
type Sources struct {
	// Drops returns how many events the kernel could not put on the ring
	// buffer since the program was loaded. It must not decrease.
	Drops func() (uint64, error)
	// ActiveTasks returns how many tasks are active now.
	ActiveTasks func() int
}

// Metrics records bridled's metrics. It is safe for concurrent use.
type Metrics struct {
	registry *prometheus.Registry

	decisions       map[string]map[string]prometheus.Counter // action → verdict
	tasksStarted    prometheus.Counter
	taskStartFailed map[string]prometheus.Counter
	tasksEnded      map[string]prometheus.Counter
	policyEval      prometheus.Histogram
	apply           prometheus.Histogram
	revoke          prometheus.Histogram
	policyLoads     map[bool]prometheus.Counter
	policyInfo      *infoCollector
	apiRefused      prometheus.Counter
	eventsLost      prometheus.Counter
	unhardened      prometheus.Gauge
	hardeningLacks  map[string]prometheus.Gauge // setting → workloads lacking it
	apiUnrecorded   prometheus.Counter
	apiConnRefused  prometheus.Counter
	apiUnauth       map[string]prometheus.Counter // proof (jwt-svid, x509-svid) → count
	listenerUp      map[string]prometheus.Gauge
	dnsQueries      map[string]map[string]prometheus.Counter // verdict → reason
	dnsCacheHits    prometheus.Counter
	dnsUpstream     prometheus.Histogram
	dnsUpstreamErrs prometheus.Counter
	approvalPending prometheus.Gauge
	approvalOutcome map[string]prometheus.Counter // approved, denied, expired, dropped
	approvalAnswer  prometheus.Histogram
	webhookFailures prometheus.Counter
}

// approvalOutcomes are the label values of bridle_approval_requests_total.
var approvalOutcomes = []string{"opened", "approved", "denied", "expired", "dropped", other}

// dnsReasons are the resolver's reasons (daemon/audit), the label values
// of bridle_dns_queries_total.
var dnsReasons = []string{
	audit.DNSAllowed, audit.DNSNotAllowed, audit.DNSBudget, audit.DNSType, audit.DNSInvalid,
	audit.DNSUnattributed, audit.DNSNoTask, audit.DNSUpstream, audit.DNSKernel, other,
}

// listeners are bridled's own listeners, for bridle_listener_up.
var listeners = []string{"api", "api-tcp", "metrics"}

// New registers bridled's metrics, and the Go and process collectors, on a
// new registry.
func New(src Sources) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{registry: reg}

	decisions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bridle_decisions_total",
		Help: "Kernel decisions received from the ring buffer, by action (connect, sendmsg, exec, socket, other) and verdict (allow, deny, would-deny, other).",
	}, []string{"action", "verdict"})
	m.decisions = make(map[string]map[string]prometheus.Counter, len(actions))
	for _, a := range actions {
		row := make(map[string]prometheus.Counter, len(verdicts))
		for _, v := range verdicts {
			row[v] = decisions.WithLabelValues(a, v)
		}
		m.decisions[a] = row
	}

	queries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bridle_dns_queries_total",
		Help: "Queries Bridle's resolver answered, by verdict (allow, deny) and reason (the dns record's reason, docs/EVENTS.md).",
	}, []string{"verdict", "reason"})
	m.dnsQueries = make(map[string]map[string]prometheus.Counter, len(verdicts))
	for _, v := range verdicts {
		row := make(map[string]prometheus.Counter, len(dnsReasons))
		for _, r := range dnsReasons {
			row[r] = queries.WithLabelValues(v, r)
		}
		m.dnsQueries[v] = row
	}
	m.dnsCacheHits = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "bridle_dns_cache_hits_total",
		Help: "Allowed queries the resolver answered from its cache.",
	})
	m.dnsUpstream = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "bridle_dns_upstream_duration_seconds",
		Help:    "Time of one exchange with the upstream resolver.",
		Buckets: durationBuckets,
	})
	m.dnsUpstreamErrs = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "bridle_dns_upstream_failures_total",
		Help: "Exchanges with the upstream resolver that failed (timeout, refused, malformed answer).",
	})

	m.tasksStarted = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "bridle_tasks_started_total",
		Help: "Tasks that started: their envelope was evaluated, applied and bound to the workload.",
	})
	startFailed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bridle_task_start_failures_total",
		Help: "Task start requests that did not start a task, by reason (denied, invalid, busy, unavailable, error, other).",
	}, []string{"reason"})
	m.taskStartFailed = vecCounters(startFailed, startFailReasons)
	ended := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bridle_tasks_ended_total",
		Help: "Tasks that ended and were revoked, by reason (ended, expired, other).",
	}, []string{"reason"})
	m.tasksEnded = vecCounters(ended, endReasons)

	m.policyEval = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "bridle_policy_eval_duration_seconds",
		Help:    "Time to evaluate a task envelope against the node policy.",
		Buckets: durationBuckets,
	})
	m.apply = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "bridle_task_apply_duration_seconds",
		Help:    "Time to apply a task envelope: compile the rules, write them to the kernel and bind the workload.",
		Buckets: durationBuckets,
	})
	m.revoke = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "bridle_task_revoke_duration_seconds",
		Help:    "Time to revoke a task at its end: unbind the workload and abort its sockets.",
		Buckets: durationBuckets,
	})

	loads := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bridle_policy_loads_total",
		Help: "Policy load and reload attempts, by result (success, failure).",
	}, []string{"result"})
	m.policyLoads = map[bool]prometheus.Counter{
		true:  loads.WithLabelValues("success"),
		false: loads.WithLabelValues("failure"),
	}
	m.policyInfo = &infoCollector{desc: prometheus.NewDesc(
		"bridle_policy_info",
		"The revision of the policy in force, as a label; always 1. Absent before a policy is loaded.",
		[]string{"revision"}, nil,
	)}

	m.apiRefused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "bridle_api_refused_total",
		Help: "Task API calls refused because the caller could not be identified or was not allowed to make them.",
	})
	m.eventsLost = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "bridle_audit_records_lost_total",
		Help: "Decision records that could not be written to the audit log.",
	})

	m.unhardened = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "bridle_workloads_unhardened",
		Help: "Workloads below the roots whose processes lack at least one of the unit settings adopted workloads need, at the last check.",
	})
	lacks := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "bridle_workload_hardening_missing",
		Help: "Workloads lacking each unit setting at the last check, by setting (NoNewPrivileges, SystemCallFilter, CapabilityBoundingSet, User, PrivatePIDs, ProtectProc, ProcSubset, ProtectControlGroups, RestrictNamespaces, other).",
	}, []string{"setting"})
	m.hardeningLacks = make(map[string]prometheus.Gauge, len(workload.Settings)+1)
	for _, s := range append(slices.Clone(workload.Settings), other) {
		m.hardeningLacks[s] = lacks.WithLabelValues(s)
	}
	m.apiUnrecorded = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "bridle_api_refusals_unrecorded_total",
		Help: "Refused API calls and connections not logged or written to the audit log one by one, because their uid was over its rate of recorded refusals (the next recorded one says how many).",
	})
	m.apiConnRefused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "bridle_api_connections_refused_total",
		Help: "API connections closed on accept because their caller was over a connection limit (api_limits).",
	})
	unauth := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bridle_api_unauthenticated_total",
		Help: "Task API calls and TLS connections refused because the SVID the caller offered did not hold (bad, expired, wrong audience, unknown trust domain, unauthorised ID), by kind of SVID (jwt-svid, x509-svid).",
	}, []string{"svid"})
	m.apiUnauth = map[string]prometheus.Counter{
		"jwt-svid":  unauth.WithLabelValues("jwt-svid"),
		"x509-svid": unauth.WithLabelValues("x509-svid"),
	}
	listenerUp := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "bridle_listener_up",
		Help: "1 while bridled's listener (api, api-tcp, metrics) is bound and serving, 0 while it cannot bind (another process holds the address) and bridled retries.",
	}, []string{"listener"})
	m.listenerUp = make(map[string]prometheus.Gauge, len(listeners))
	for _, l := range listeners {
		m.listenerUp[l] = listenerUp.WithLabelValues(l)
	}

	m.approvalPending = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "bridle_approval_requests_pending",
		Help: "Approval requests waiting for an answer.",
	})
	outcomes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bridle_approval_requests_total",
		Help: "Approval requests by what became of them: opened, approved, denied, expired (unanswered), dropped (not opened: the task had too many pending).",
	}, []string{"outcome"})
	m.approvalOutcome = make(map[string]prometheus.Counter, len(approvalOutcomes))
	for _, o := range approvalOutcomes {
		m.approvalOutcome[o] = outcomes.WithLabelValues(o)
	}
	m.approvalAnswer = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "bridle_approval_answer_seconds",
		Help:    "Time from an approval request's opening to its answer (approve or deny).",
		Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600},
	})
	m.webhookFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "bridle_approval_webhook_failures_total",
		Help: "New approval requests the webhook could not deliver after all its retries.",
	})

	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		decisions, m.tasksStarted, startFailed, ended,
		m.policyEval, m.apply, m.revoke,
		loads, m.policyInfo, m.apiRefused, m.eventsLost,
		m.unhardened, lacks,
		queries, m.dnsCacheHits, m.dnsUpstream, m.dnsUpstreamErrs,
		m.apiUnrecorded, m.apiConnRefused, unauth, listenerUp,
		m.approvalPending, outcomes, m.approvalAnswer, m.webhookFailures,
	)
	if src.Drops != nil {
		reg.MustRegister(newDropsCollector(src.Drops))
	}
	if src.ActiveTasks != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "bridle_tasks_active",
			Help: "Tasks active now.",
		}, func() float64 { return float64(src.ActiveTasks()) }))
	}
	return m
}

// vecCounters makes one counter per value, so every series exists from the
// start (at 0) and lookups need no lock.
func vecCounters(vec *prometheus.CounterVec, values []string) map[string]prometheus.Counter {
	m := make(map[string]prometheus.Counter, len(values))
	for _, v := range values {
		m[v] = vec.WithLabelValues(v)
	}
	return m
}

// pick returns the counter for value, or for "other" when value is not in
// the set.
func pick(m map[string]prometheus.Counter, value string) prometheus.Counter {
	if c, ok := m[value]; ok {
		return c
	}
	return m[other]
}

// Handler serves the metrics in the Prometheus exposition formats. A
// collector that fails leaves its metrics out of the scrape rather than
// failing the whole scrape; failures are counted in
// promhttp_metric_handler_errors_total.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      m.registry,
	})
}

// labels are the label values of words of the records' vocabulary, and
// "other".
func labels[T ~string](words ...T) []string {
	out := make([]string, 0, len(words)+1)
	for _, w := range words {
		out = append(out, string(w))
	}
	return append(out, other)
}

// Decision counts one kernel decision. action is one of the kernel's
// actions and verdict one of its verdicts; anything else is counted as
// "other".
func (m *Metrics) Decision(action bpf.Action, verdict bpf.Verdict) {
	if m == nil {
		return
	}
	row, ok := m.decisions[string(action)]
	if !ok {
		row = m.decisions[other]
	}
	pick(row, string(verdict)).Inc()
}

// Record counts a kernel decision's record: the metrics as a sink of the
// node's event reader. The resolver's records are counted by Query.
func (m *Metrics) Record(r audit.Record) {
	if r.Action != bpf.ActionDNS {
		m.Decision(r.Action, r.Verdict)
	}
}

// Query counts a query the resolver answered.
func (m *Metrics) Query(verdict bpf.Verdict, reason string) {
	if m == nil {
		return
	}
	row, ok := m.dnsQueries[string(verdict)]
	if !ok {
		row = m.dnsQueries[other]
	}
	pick(row, reason).Inc()
}

// CacheHit counts a query answered from the resolver's cache.
func (m *Metrics) CacheHit() {
	if m == nil {
		return
	}
	m.dnsCacheHits.Inc()
}

// Forwarded observes one exchange with the upstream resolver.
func (m *Metrics) Forwarded(rtt time.Duration, err error) {
	if m == nil {
		return
	}
	m.dnsUpstream.Observe(rtt.Seconds())
	if err != nil {
		m.dnsUpstreamErrs.Inc()
	}
}

// TaskStarted counts a task that started.
func (m *Metrics) TaskStarted() {
	if m == nil {
		return
	}
	m.tasksStarted.Inc()
}

// TaskStartFailed counts a task start request that did not start a task.
// reason is one of:
//
//	denied       the policy refused the envelope
//	invalid      the request or envelope was malformed
//	busy         the workload already has a task, or no task slot is free
//	unavailable  bridled cannot take tasks now (starting, reloading, shutting down)
//	error        anything else that went wrong
//
// Any other value is counted as "other".
func (m *Metrics) TaskStartFailed(reason string) {
	if m == nil {
		return
	}
	pick(m.taskStartFailed, reason).Inc()
}

// TaskEnded counts a task that ended. reason is EndedExpired when its time
// ran out, EndedOnPurpose when it was ended on purpose (the API, or its
// command exiting); anything else, such as a task revoked because it could
// not be persisted, should be passed as "other", and any value outside the
// set is counted as "other". Callers map their free-text end reasons to this set:
// the free text belongs in logs and the audit record, not in a label.
func (m *Metrics) TaskEnded(reason string) {
	if m == nil {
		return
	}
	pick(m.tasksEnded, reason).Inc()
}

// ObservePolicyEval records how long evaluating a task envelope against the
// policy took.
func (m *Metrics) ObservePolicyEval(d time.Duration) {
	if m == nil {
		return
	}
	m.policyEval.Observe(d.Seconds())
}

// ObserveApply records how long applying a task envelope took: compiling its
// rules, writing them to the kernel and binding the workload.
func (m *Metrics) ObserveApply(d time.Duration) {
	if m == nil {
		return
	}
	m.apply.Observe(d.Seconds())
}

// ObserveRevoke records how long revoking a task took: unbinding the
// workload and aborting its sockets.
func (m *Metrics) ObserveRevoke(d time.Duration) {
	if m == nil {
		return
	}
	m.revoke.Observe(d.Seconds())
}

// PolicyLoad counts a policy load or reload attempt and whether it worked.
func (m *Metrics) PolicyLoad(ok bool) {
	if m == nil {
		return
	}
	m.policyLoads[ok].Inc()
}

// SetPolicyInfo sets the revision of the policy in force. Only the latest
// revision is exposed, so the label never holds more than one series. An
// empty revision removes the series.
func (m *Metrics) SetPolicyInfo(revision string) {
	if m == nil {
		return
	}
	m.policyInfo.set(revision)
}

// APIRefused counts a task API call that was refused.
func (m *Metrics) APIRefused() {
	if m == nil {
		return
	}
	m.apiRefused.Inc()
}

// APIRefusalUnrecorded counts a refused API call or connection that was
// counted but not logged or recorded (its uid was over the rate).
func (m *Metrics) APIRefusalUnrecorded() {
	if m == nil {
		return
	}
	m.apiUnrecorded.Inc()
}

// APIConnectionRefused counts an API connection closed over a limit.
func (m *Metrics) APIConnectionRefused() {
	if m == nil {
		return
	}
	m.apiConnRefused.Inc()
}

// APIUnauthenticated counts a call or TLS connection refused because the
// SVID offered (svid: "jwt-svid" or "x509-svid") did not hold.
func (m *Metrics) APIUnauthenticated(svid string) {
	if m == nil {
		return
	}
	if c, ok := m.apiUnauth[svid]; ok {
		c.Inc()
	}
}

// ListenerUp sets whether listener ("api", "metrics") is bound and
// serving; other names are ignored.
func (m *Metrics) ListenerUp(listener string, up bool) {
	if m == nil {
		return
	}
	g, ok := m.listenerUp[listener]
	if !ok {
		return
	}
	if up {
		g.Set(1)
	} else {
		g.Set(0)
	}
}

// EventsLost counts n decision records that could not be written to the
// audit log.
func (m *Metrics) EventsLost(n uint64) {
	if m == nil {
		return
	}
	m.eventsLost.Add(float64(n))
}

// SetHardening publishes the last hardening check: how many workloads lack
// at least one setting, and how many lack each. Settings outside
// workload.Settings are counted as "other".
func (m *Metrics) SetHardening(unhardened int, lacking map[string]int) {
	if m == nil {
		return
	}
	m.unhardened.Set(float64(unhardened))
	counts := make(map[string]int, len(m.hardeningLacks))
	for s, n := range lacking {
		if _, known := m.hardeningLacks[s]; !known {
			s = other
		}
		counts[s] += n
	}
	for s, g := range m.hardeningLacks {
		g.Set(float64(counts[s]))
	}
}

// infoCollector exposes one info series whose label can change. Swapping the
// value under a lock means a scrape sees the old revision or the new one,
// never both and never neither, which a GaugeVec with Reset then Set cannot
// promise.
type infoCollector struct {
	desc     *prometheus.Desc
	mu       sync.Mutex
	revision string
}

func (c *infoCollector) set(revision string) {
	// Label values must be UTF-8; a bad one would fail every scrape.
	if !utf8.ValidString(revision) {
		revision = strings.ToValidUTF8(revision, "\uFFFD")
	}
	c.mu.Lock()
	c.revision = revision
	c.mu.Unlock()
}

func (c *infoCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *infoCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	revision := c.revision
	c.mu.Unlock()
	if revision == "" {
		return
	}
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, 1, revision)
}

// dropsCollector reads the kernel's drop count at scrape time. When a read
// fails it reports the last value it read, so the counter neither vanishes
// nor falls to 0 (which Prometheus would take for a restart), and counts the
// failure in bridle_ring_drops_read_errors_total: alert on that rising, since
// the drop count is stale while it does. Both come from the same Collect, so
// one scrape always shows them consistently.
type dropsCollector struct {
	read       func() (uint64, error)
	drops      *prometheus.Desc
	readErrors *prometheus.Desc

	mu       sync.Mutex
	last     uint64
	failures uint64
}

func newDropsCollector(read func() (uint64, error)) *dropsCollector {
	return &dropsCollector{
		read: read,
		drops: prometheus.NewDesc("bridle_ring_drops_total",
			"Kernel decision events dropped because the ring buffer was full, as counted by the kernel. Holds the last value read while reads fail.",
			nil, nil),
		readErrors: prometheus.NewDesc("bridle_ring_drops_read_errors_total",
			"Scrapes at which reading bridle_ring_drops_total from the kernel failed.",
			nil, nil),
	}
}

func (c *dropsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.drops
	ch <- c.readErrors
}

func (c *dropsCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	if n, err := c.read(); err != nil {
		c.failures++
	} else {
		c.last = n
	}
	last, failures := c.last, c.failures
	c.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(c.drops, prometheus.CounterValue, float64(last))
	ch <- prometheus.MustNewConstMetric(c.readErrors, prometheus.CounterValue, float64(failures))
}

// ApprovalsPending sets how many approval requests wait for an answer.
func (m *Metrics) ApprovalsPending(n int) {
	if m == nil {
		return
	}
	m.approvalPending.Set(float64(n))
}

// ApprovalRequest counts what became of an approval request: opened,
// expired or dropped. Answers are counted by ApprovalAnswered.
func (m *Metrics) ApprovalRequest(outcome string) {
	if m == nil {
		return
	}
	pick(m.approvalOutcome, outcome).Inc()
}

// ApprovalAnswered counts an answer (approved or denied) and the time the
// request waited for it.
func (m *Metrics) ApprovalAnswered(outcome string, waited time.Duration) {
	if m == nil {
		return
	}
	pick(m.approvalOutcome, outcome).Inc()
	m.approvalAnswer.Observe(waited.Seconds())
}

// ApprovalWebhookFailed counts a new request the webhook could not deliver.
func (m *Metrics) ApprovalWebhookFailed() {
	if m == nil {
		return
	}
	m.webhookFailures.Inc()
}
