// Command report turns the output of one `make bench` run into Bridle's
// benchmark table: each measurement's median over the run's interleaved
// rounds, its ratio to the hook-free baseline measured in the same run, and
// whether it meets the target set in the design. It reads `go test -bench`
// output on stdin (or from the files named as arguments), passes it through
// so the run stays visible, and prints the table at the end.
//
// Missing targets do not make it fail: the table says so. It exits non-zero
// only when a benchmark failed or a row has no data, because then the table
// would not describe the run.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"golang.org/x/sys/unix"
)

// sample is one benchmark result line: its metrics by unit.
type sample map[string]float64

// results are the samples of a run, by benchmark name with the round
// suffix (#NN) and the GOMAXPROCS suffix removed.
type results struct {
	samples map[string][]sample
	failed  []string
	cpu     string
	load    string
}

var (
	benchLine = regexp.MustCompile(`^(Benchmark\S+)\s+(\d+)\s+(.+)$`)
	roundTag  = regexp.MustCompile(`#\d+$`)
	procsTag  = regexp.MustCompile(`-(\d+)$`)
)

func parse(r io.Reader, echo io.Writer) (*results, error) {
	res := &results{samples: map[string][]sample{}}
	type line struct {
		name string
		s    sample
	}
	var lines []line
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		text := sc.Text()
		if echo != nil {
			fmt.Fprintln(echo, text)
		}
		if strings.HasPrefix(text, "--- FAIL") || strings.HasPrefix(text, "FAIL") || strings.HasPrefix(text, "panic:") {
			res.failed = append(res.failed, text)
		}
		if cpu, ok := strings.CutPrefix(text, "cpu: "); ok {
			res.cpu = cpu
		}
		m := benchLine.FindStringSubmatch(text)
		if m == nil {
			continue
		}
		f := strings.Fields(m[3])
		s := sample{}
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("report: %q: metric %q: %w", text, f[i], err)
			}
			s[f[i+1]] = v
		}
		lines = append(lines, line{m[1], s})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	// The testing package appends -GOMAXPROCS to every name when it is
	// above 1; strip it only when all names carry the same one, since a
	// variant name may itself end in digits.
	suffix := ""
	for i, l := range lines {
		m := procsTag.FindString(l.name)
		if i == 0 {
			suffix = m
		}
		if m == "" || m != suffix {
			suffix = ""
			break
		}
	}
	for _, l := range lines {
		name := roundTag.ReplaceAllString(strings.TrimSuffix(l.name, suffix), "")
		res.samples[name] = append(res.samples[name], l.s)
	}
	return res, nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// stat is the median of one metric of one benchmark, and how many rounds
// it was taken over.
func (r *results) stat(bench, unit string) (float64, int, bool) {
	var v []float64
	for _, s := range r.samples[bench] {
		if x, ok := s[unit]; ok {
			v = append(v, x)
		}
	}
	return median(v), len(v), len(v) > 0
}

// row is one line of the table.
type row struct {
	label  string
	bench  string
	unit   string // metric the row reports; ns/op unless said otherwise
	base   string // benchmark the ratio is taken against; "" for none
	target string
	// met judges the row; nil means the row is for information.
	met func(value, ratio float64, r *results) bool
	// value formats the row's value; nil means a duration from ns.
	value func(v float64, r *results) string
	// optional rows are left out when absent: the exec benchmark runs in
	// whichever mode the kernel supports.
	optional bool
	// minus, when set, makes the row the difference bench − minus of the
	// medians, in the row's unit: what one variant adds to another.
	minus string
}

const (
	udp  = "BenchmarkConnectUDP/"
	tcp  = "BenchmarkConnectTCP/"
	ring = "BenchmarkRingBuffer/"
	pkt  = "BenchmarkPacketCheck/"
	// learnedUDP is BenchmarkConnectUDP with the destination learned.
	learnedUDP = "BenchmarkConnectUDPLearned/"
)

func atMost(limit float64) func(v, ratio float64, r *results) bool {
	return func(v, _ float64, _ *results) bool { return v <= limit }
}

func ratioAtMost(limit float64) func(v, ratio float64, r *results) bool {
	return func(_, ratio float64, _ *results) bool { return ratio <= limit }
}

// most is the largest value of a metric over all rounds. Losses are judged
// by their worst round: a median would hide a round that lost events.
func (r *results) most(bench, unit string) float64 {
	m := 0.0
	for _, s := range r.samples[bench] {
		m = max(m, s[unit])
	}
	return m
}

// least is the smallest value of a metric over all rounds.
func (r *results) least(bench, unit string) float64 {
	m, first := 0.0, true
	for _, s := range r.samples[bench] {
		if v, ok := s[unit]; ok && (first || v < m) {
			m, first = v, false
		}
	}
	return m
}

// pacedValue shows the read rate and the worst round's losses.
func pacedValue(v float64, r *results) string {
	return fmt.Sprintf("%s/s; worst round: %s dropped, %s lost", count(v),
		count(r.most(ring+"paced", "dropped")), count(r.most(ring+"paced", "lost")))
}

// floodValue shows the reader's ceiling and that every round counted its
// drops and lost nothing.
func floodValue(v float64, r *results) string {
	return fmt.Sprintf("%s/s; every round: ≥ %s dropped (counted), %s lost", count(v),
		count(r.least(ring+"flood", "dropped")), count(r.most(ring+"flood", "lost")))
}

func table() []row {
	rows := []row{
		{label: "UDP connect(), hooks off machine-wide (no connect4 program anywhere)", bench: "BenchmarkConnectUDPHooksOff/floor",
			base: "BenchmarkConnectUDPHooksOff/floor", target: "floor", optional: true},
		{label: "UDP connect(), no hook on this cgroup (hook switched on by others)", bench: udp + "nohook",
			base: "BenchmarkConnectUDPHooksOff/floor", optional: true},
		{label: "UDP connect(), no hook", bench: udp + "nohook", base: udp + "nohook", target: "baseline"},
		{label: "UDP connect(), Bridle, 10 rules", bench: udp + "bridle-10", base: udp + "nohook"},
		{label: "UDP connect(), Bridle, 1k rules", bench: udp + "bridle-1k", base: udp + "nohook"},
		{label: "UDP connect(), Bridle, 100k rules", bench: udp + "bridle-100k", base: udp + "nohook",
			target: "≤ 1.20x", met: ratioAtMost(1.20)},
		{label: "UDP connect(), empty connect4 program (the hook's floor)", bench: udp + "emptyhook", base: udp + "nohook"},
		{label: "UDP connect(), Bridle, 100k rules, to the hook's floor", bench: udp + "bridle-100k", base: udp + "emptyhook",
			target: "≤ 1.10x", met: ratioAtMost(1.10)},
		{label: "TCP connect+close, no hook", bench: tcp + "nohook", base: tcp + "nohook", target: "baseline"},
		{label: "TCP connect+close, Bridle, 10k rules", bench: tcp + "bridle-10k", base: tcp + "nohook"},
	}
	for _, v := range []struct{ name, label string }{
		{"nft-chain", "nftables, chain of 10k rules"},
		{"nft-chain-ct", "nftables, chain of 10k rules + ct"},
		{"nft-interval", "nftables, interval set of 10k"},
		{"nft-interval-ct", "nftables, interval set of 10k + ct"},
		{"nft-hash", "nftables, hash set of 10k hosts"},
		{"nft-hash-ct", "nftables, hash set of 10k hosts + ct"},
	} {
		rows = append(rows, row{label: "TCP connect+close, " + v.label, bench: tcp + v.name, base: tcp + "nohook"})
	}
	rows = append(rows,
		row{label: "exec check, kernel time per exec (kill mode)", bench: "BenchmarkExecCheck/kill", unit: "kernel-ns/exec",
			target: "≤ 3 µs", met: atMost(3000), optional: true},
		row{label: "exec check, kernel time per exec (lsm mode)", bench: "BenchmarkExecCheck/lsm", unit: "kernel-ns/exec",
			target: "≤ 3 µs", met: atMost(3000), optional: true},
		row{label: "UDP send+receive on loopback, no hook", bench: pkt + "nohook", base: pkt + "nohook", target: "baseline"},
		row{label: "UDP send+receive on loopback, Bridle's packet checks", bench: pkt + "bridle", base: pkt + "nohook"},
		row{label: "egress packet check, kernel time per packet", bench: pkt + "bridle", unit: "egress-ns/packet"},
		row{label: "inbound packet check, kernel time per packet", bench: pkt + "bridle", unit: "ingress-ns/packet"},
		row{label: "compile 10k-rule envelope", bench: "BenchmarkCompile/rules=10k"},
		row{label: "apply 10k-rule envelope (write, task, bind)", bench: "BenchmarkApply/rules=10k",
			target: "≤ 50 ms", met: atMost(50e6)},
		row{label: "task start, 10k rules (compile + apply)", bench: "BenchmarkCompile/rules=10k+BenchmarkApply/rules=10k",
			target: "≤ 50 ms", met: atMost(50e6)},
		row{label: "compile 100k-rule envelope", bench: "BenchmarkCompile/rules=100k"},
		row{label: "apply 100k-rule envelope", bench: "BenchmarkApply/rules=100k"},
		row{label: "task start → enforced, 10 rules (compile, Start, allowed connect)", bench: "BenchmarkTaskStart/rules=10"},
		row{label: "task start → enforced, 1k rules", bench: "BenchmarkTaskStart/rules=1k"},
		row{label: "task start → enforced, 10k rules", bench: "BenchmarkTaskStart/rules=10k",
			target: "≤ 50 ms", met: atMost(50e6)},
		row{label: "task start → enforced as bridled does it, 10 rules (OPA, compile, kernel, store, connect)", bench: "BenchmarkTaskStartDaemon/rules=10"},
		row{label: "task start → enforced as bridled does it, 1k rules", bench: "BenchmarkTaskStartDaemon/rules=1k"},
		row{label: "task start → enforced as bridled does it, 10k rules", bench: "BenchmarkTaskStartDaemon/rules=10k",
			target: "≤ 50 ms", met: atMost(50e6)},
		row{label: "revocation: End call → a running workload's first refused connect, 10 rules", bench: "BenchmarkRevocation/rules=10",
			unit: "first-refused-ns/op", target: "≤ 1 ms", met: atMost(1e6)},
		row{label: "revocation: End call → first refused connect, 1k rules", bench: "BenchmarkRevocation/rules=1k",
			unit: "first-refused-ns/op", target: "≤ 1 ms", met: atMost(1e6)},
		row{label: "revocation: End call → first refused connect, 10k rules", bench: "BenchmarkRevocation/rules=10k",
			unit: "first-refused-ns/op", target: "≤ 1 ms", met: atMost(1e6)},
		row{label: "End returns (rebind + open sockets aborted) → next connect refused, 10 rules", bench: "BenchmarkRevocation/rules=10"},
		row{label: "End returns (rebind + open sockets aborted) → next connect refused, 10k rules", bench: "BenchmarkRevocation/rules=10k"},
		row{label: "End → workload bound to the baseline, 10k rules", bench: "BenchmarkRevocation/rules=10k",
			unit: "rebind-ns/op"},
	)
	rows = append(rows, dnsRows("BenchmarkDNSResolver/", "resolver alone")...)
	rows = append(rows, dnsRows("BenchmarkDNSSteered/", "from a workload, steered by the kernel")...)
	rows = append(rows,
		row{label: "answer → kernel entry (Learn, before the reply), 1 address, 10k learned", bench: "BenchmarkDNSLearn/addrs=1"},
		row{label: "answer → kernel entry (Learn, before the reply), 8 addresses, 10k learned", bench: "BenchmarkDNSLearn/addrs=8"},
		row{label: "UDP connect(), no hook (learned-entry run)", bench: learnedUDP + "nohook", base: learnedUDP + "nohook", target: "baseline"},
		row{label: "UDP connect(), allowed by a rule, 10 rules + 10k learned", bench: learnedUDP + "rule", base: learnedUDP + "nohook"},
		row{label: "UDP connect(), allowed by a learned entry among 10k", bench: learnedUDP + "learned-10k", base: learnedUDP + "nohook"},
		row{label: "UDP connect(), empty connect4 program (learned-entry run)", bench: learnedUDP + "emptyhook", base: learnedUDP + "nohook"},
		row{label: "UDP connect(), learned entry among 10k, to the hook's floor", bench: learnedUDP + "learned-10k", base: learnedUDP + "emptyhook",
			target: "≤ 1.10x (as the rules)", met: ratioAtMost(1.10)},
		row{label: "connect4 program, kernel time, allowed by a rule", bench: learnedUDP + "rule-kernel", unit: "kernel-ns/connect"},
		row{label: "connect4 program, kernel time, allowed by a learned entry among 10k", bench: learnedUDP + "learned-10k-kernel", unit: "kernel-ns/connect"},
		row{label: "learned path added to a connect, kernel time (learned − rule: hash lookup, generation, expiry, port)",
			bench: learnedUDP + "learned-10k-kernel", minus: learnedUDP + "rule-kernel", unit: "kernel-ns/connect"},
		row{label: "expiry check, task with a TTL (the task's clock reading reused), kernel time", bench: "BenchmarkLearnedExpiryClock/expiry-reused-clock",
			minus: "BenchmarkLearnedExpiryClock/empty", unit: "kernel-ns/run", target: "≤ 15 ns", met: atMost(15)},
		row{label: "expiry check, task without TTL (boot clock read + compare), kernel time", bench: "BenchmarkLearnedExpiryClock/expiry-check",
			minus: "BenchmarkLearnedExpiryClock/empty", unit: "kernel-ns/run", target: "≤ 15 ns", met: atMost(15)},
		row{label: "learned-entry check added to a connect, whole connect() (learned − rule)", bench: learnedUDP + "learned-10k",
			minus: learnedUDP + "rule"},
		row{label: "OPA envelope evaluation (example coding agent)", bench: "BenchmarkPolicyEval/coding-agent"},
		row{label: "kernel BTF decoded once", bench: "BenchmarkLoad/kernel-btf", base: "BenchmarkLoad/kernel-btf", target: "baseline"},
		row{label: "load every program and map (bridle run's and bridled's start), to one BTF decode", bench: "BenchmarkLoad/bridle",
			base: "BenchmarkLoad/kernel-btf"},
	)
	rows = append(rows, approvalRows()...)
	rows = append(rows, callerRows()...)
	rows = append(rows,
		row{label: "decision events, paced (read rate)", bench: ring + "paced", unit: "events/s",
			target: "≥ 500k/s, none dropped or lost", value: pacedValue,
			met: func(v, _ float64, r *results) bool {
				return v >= 500e3 && r.most(ring+"paced", "dropped") == 0 && r.most(ring+"paced", "lost") == 0
			}},
		row{label: "decision events, ring overfilled (read rate)", bench: ring + "flood", unit: "events/s",
			target: "drops counted, none lost", value: floodValue,
			met: func(v, _ float64, r *results) bool {
				return r.least(ring+"flood", "dropped") > 0 && r.most(ring+"flood", "lost") == 0
			}},
	)
	return rows
}

// approvalRows are the rows of step-up approvals: how soon a refusal is
// a question a person sees, how soon an answer lets the workload through,
// and what a task's grants cost its connects.
func approvalRows() []row {
	const (
		cycle   = "BenchmarkApproval/cycle"
		granted = "BenchmarkConnectUDPGranted/"
	)
	ms := func(v float64, _ *results) string { return fmt.Sprintf("%.3f ms", v/1e6) }
	return []row{
		{label: "approvals: refusal → request visible to a watcher (kernel event, manager, subscriber), p50", bench: cycle,
			unit: "request-p50-ns", target: "≤ 100 ms", met: atMost(100e6), value: ms},
		{label: "approvals: Approve call → the workload's next connect allowed, p50", bench: cycle,
			unit: "grant-p50-ns", target: "≤ 10 ms", met: atMost(10e6), value: ms},
		{label: "UDP connect(), no hook (grant run)", bench: granted + "nohook", base: granted + "nohook", target: "baseline"},
		{label: "UDP connect(), allowed by a rule, 10 rules (grant run)", bench: granted + "rule", base: granted + "nohook"},
		{label: "UDP connect(), allowed by a grant among 1k", bench: granted + "granted-1k", base: granted + "nohook"},
		{label: "UDP connect(), empty connect4 program (grant run)", bench: granted + "emptyhook", base: granted + "nohook"},
		{label: "UDP connect(), grant among 1k, to the hook's floor", bench: granted + "granted-1k", base: granted + "emptyhook",
			target: "≤ 1.10x (as the rules)", met: ratioAtMost(1.10)},
		{label: "connect4 program, kernel time, allowed by a rule (grant run)", bench: granted + "rule-kernel", unit: "kernel-ns/connect"},
		{label: "connect4 program, kernel time, allowed by a grant among 1k", bench: granted + "granted-1k-kernel", unit: "kernel-ns/connect"},
		{label: "grant path added to a connect, kernel time (granted − rule: rules, learned and grant lookups)",
			bench: granted + "granted-1k-kernel", minus: granted + "rule-kernel", unit: "kernel-ns/connect"},
	}
}

// callerRows are the rows of the benchmarks that need a real SPIRE: they
// skip, and their rows are left out, where SPIRE's binaries are absent
// (outside CI; under CI a missing binary fails the run instead).
func callerRows() []row {
	const start = "BenchmarkTaskStartCaller/"
	ms := func(v float64, _ *results) string { return fmt.Sprintf("%.3f ms", v/1e6) }
	return []row{
		{label: "task start through bridled's API socket, peer-credential caller, p50", bench: start + "peercred", unit: "p50-ns",
			base: start + "peercred", target: "baseline", optional: true},
		{label: "task start through bridled's API socket, JWT-SVID caller (real SPIRE's bundle), p50", bench: start + "jwt-svid", unit: "p50-ns",
			base: start + "peercred", optional: true},
		{label: "task start, JWT-SVID caller vs peer-credential caller (p50 difference)", bench: start + "jwt-svid", minus: start + "peercred",
			unit: "p50-ns", target: "the token check adds ≤ 1 ms p50", met: atMost(1e6), value: ms, optional: true},
		{label: "first process to SPIRE-attested identity in force (selectors; SPIREProvider.Identify), p50", bench: "BenchmarkSPIREIdentity/selectors",
			unit: "p50-ns", value: ms, optional: true},
	}
}

// dnsRows are the rows of one DNS benchmark: the same client asking the
// upstream directly (the baseline), and Bridle's resolver answering from
// its cache and forwarding, one query at a time (latency, p50 and p99) and
// from several sockets at once (throughput).
func dnsRows(bench, how string) []row {
	up := bench + "upstream"
	upLoad := bench + "upstream-load"
	perSecond := func(v float64, _ *results) string { return count(v) + "/s" }
	overUpstream := func(v float64, r *results) string {
		u, _, _ := r.stat(up, "p50-ns")
		return fmt.Sprintf("%s (upstream + %s)", duration(v), duration(v-u))
	}
	return []row{
		{label: "DNS query, client → upstream (dnsmasq) directly, p50 (" + how + " run)", bench: up, unit: "p50-ns", base: up, target: "baseline"},
		{label: "DNS query, client → upstream directly, p99", bench: up, unit: "p99-ns", base: up, target: "baseline"},
		{label: "DNS query answered from Bridle's cache, p50, " + how, bench: bench + "cached", unit: "p50-ns", base: up,
			target: "≤ 50 µs", met: atMost(50e3)},
		{label: "DNS query answered from Bridle's cache, p99, " + how, bench: bench + "cached", unit: "p99-ns", base: up},
		{label: "DNS query forwarded by Bridle to the upstream, p50, " + how, bench: bench + "forwarded", unit: "p50-ns", base: up,
			target: "≤ upstream + 200 µs", value: overUpstream,
			met: func(v, _ float64, r *results) bool {
				u, _, ok := r.stat(up, "p50-ns")
				return ok && v-u <= 200e3
			}},
		{label: "DNS query forwarded by Bridle to the upstream, p99, " + how, bench: bench + "forwarded", unit: "p99-ns", base: up},
		{label: "DNS queries/s, 8 sockets, upstream directly", bench: upLoad, unit: "queries/s", base: upLoad, target: "baseline", value: perSecond},
		{label: "DNS queries/s, 8 sockets, from Bridle's cache, " + how, bench: bench + "cached-load", unit: "queries/s", base: upLoad,
			target: "≥ 20k/s", met: func(v, _ float64, _ *results) bool { return v >= 20e3 }, value: perSecond},
		{label: "DNS queries/s, 8 sockets, forwarded by Bridle, " + how, bench: bench + "forwarded-load", unit: "queries/s", base: upLoad, value: perSecond},
	}
}

// roundDiffs is the range of bench − minus taken round by round.
func (r *results) roundDiffs(bench, minus, unit string) (lo, hi float64, ok bool) {
	v, m := r.samples[bench], r.samples[minus]
	if len(v) != len(m) || len(v) < 2 {
		return 0, 0, false
	}
	for i := range v {
		x := v[i][unit] - m[i][unit]
		if i == 0 || x < lo {
			lo = x
		}
		if i == 0 || x > hi {
			hi = x
		}
	}
	return lo, hi, true
}

// roundRatios is the range of a variant's ratio to the baseline taken
// round by round (round k of each, measured moments apart), which shows how
// much the machine's noise moved the ratio during the run.
func (r *results) roundRatios(bench, base, unit string) (lo, hi float64, ok bool) {
	v, b := r.samples[bench], r.samples[base]
	if len(v) != len(b) || len(v) < 2 {
		return 0, 0, false
	}
	for i := range v {
		if b[i][unit] <= 0 {
			return 0, 0, false
		}
		x := v[i][unit] / b[i][unit]
		if i == 0 || x < lo {
			lo = x
		}
		if i == 0 || x > hi {
			hi = x
		}
	}
	return lo, hi, true
}

// value of a row: a benchmark's median, or the sum of medians for a row
// that adds steps ("a+b").
func (r *results) value(bench, unit string) (float64, int, bool) {
	var sum float64
	n := 0
	for _, part := range strings.Split(bench, "+") {
		v, k, ok := r.stat(part, unit)
		if !ok {
			return 0, 0, false
		}
		sum += v
		if n == 0 || k < n {
			n = k
		}
	}
	return sum, n, true
}

func duration(ns float64) string {
	// By magnitude: a difference of two medians can be negative.
	switch a := math.Abs(ns); {
	case a >= 1e6:
		return fmt.Sprintf("%.1f ms", ns/1e6)
	case a >= 1e3:
		return fmt.Sprintf("%.2f µs", ns/1e3)
	}
	return fmt.Sprintf("%.0f ns", ns)
}

func count(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.0fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

// loadAverage is the one-minute load average, or "?" where unreadable.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "?"
}

// machine describes where the run happened, for the record.
func machine(cpu string) string {
	var u unix.Utsname
	kernel := "unknown kernel"
	if unix.Uname(&u) == nil {
		kernel = "kernel " + unix.ByteSliceToString(u.Release[:])
	}
	if cpu == "" {
		cpu = "unknown CPU"
	}
	return fmt.Sprintf("%s, %d CPUs, %s", cpu, runtime.NumCPU(), kernel)
}

func main() {
	quiet := flag.Bool("q", false, "print only the table, not the benchmark output")
	flag.Parse()
	var in io.Reader = os.Stdin
	if flag.NArg() > 0 {
		var readers []io.Reader
		for _, name := range flag.Args() {
			f, err := os.Open(name)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(2)
			}
			defer f.Close()
			readers = append(readers, f)
		}
		in = io.MultiReader(readers...)
	}
	// The pipeline starts this reader with the benchmarks, so the load
	// now and after the last line frames the run: other tenants of a shared
	// machine show up here, and the table should be read with them in mind.
	loadBefore := loadAverage()
	var echo io.Writer = os.Stdout
	if *quiet {
		echo = nil
	}
	res, err := parse(in, echo)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	res.load = fmt.Sprintf("load average (1 min) %s at start, %s at end", loadBefore, loadAverage())
	bad := render(os.Stdout, res)
	for _, f := range res.failed {
		fmt.Fprintln(os.Stderr, "report: benchmark failure:", f)
	}
	if bad || len(res.failed) > 0 {
		os.Exit(1)
	}
}

// render prints the table and reports whether any row had no data.
func render(w io.Writer, res *results) bool {
	fmt.Fprintf(w, "\nBridle benchmarks — %s\n", machine(res.cpu))
	if res.load != "" {
		fmt.Fprintln(w, res.load)
	}
	fmt.Fprintln(w, "medians over interleaved rounds; ratio = median / median of the no-hook baseline of the same run,")
	fmt.Fprintln(w, "in brackets the lowest and highest ratio of a single round")
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "measurement\tmedian\tratio\trounds\ttarget\tmet")
	missing := false
	optionalShown := false
	for _, rw := range table() {
		unit := rw.unit
		if unit == "" {
			unit = "ns/op"
		}
		v, n, ok := res.value(rw.bench, unit)
		if !ok && rw.optional {
			continue
		}
		optionalShown = optionalShown || rw.optional
		if !ok {
			fmt.Fprintf(tw, "%s\tmissing\t\t\t%s\t\n", rw.label, rw.target)
			missing = true
			continue
		}
		ratio, ratioText := 0.0, "—"
		if rw.minus != "" {
			m, _, ok := res.stat(rw.minus, unit)
			if !ok {
				fmt.Fprintf(tw, "%s\tmissing\t\t\t%s\t\n", rw.label, rw.target)
				missing = true
				continue
			}
			v -= m
			if lo, hi, ok := res.roundDiffs(rw.bench, rw.minus, unit); ok {
				ratioText = fmt.Sprintf("— (rounds %s … %s)", duration(lo), duration(hi))
			}
		}
		shown := duration(v)
		if rw.value != nil {
			shown = rw.value(v, res)
		}
		if rw.base != "" {
			if b, _, ok := res.stat(rw.base, unit); ok && b > 0 {
				ratio = v / b
				ratioText = fmt.Sprintf("%.2fx", ratio)
				if lo, hi, ok := res.roundRatios(rw.bench, rw.base, unit); ok && rw.bench != rw.base {
					ratioText += fmt.Sprintf(" (%.2f–%.2f)", lo, hi)
				}
			}
		}
		target, met := rw.target, "info"
		if target == "" {
			target = "—"
		}
		if rw.met != nil {
			met = "no"
			if rw.met(v, ratio, res) {
				met = "yes"
			}
		} else if rw.target == "baseline" {
			met = "—"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", rw.label, shown, ratioText, n, target, met)
	}
	if !optionalShown {
		fmt.Fprintf(tw, "exec check, kernel time per exec\tmissing\t\t\t≤ 3 µs\t\n")
		missing = true
	}
	tw.Flush()
	return missing
}
