package e2e

import (
	"os"
	"strings"
	"testing"
	"time"
)

// Attacks on Bridle's resolver by a confined workload: ways past its limits
// that the other DNS tests do not try.

// upstreamQueries counts the queries of qtype the upstream logged for
// names ending in suffix.
func (u *upstream) upstreamQueries(t *testing.T, qtype, suffix string) int {
	t.Helper()
	b, err := os.ReadFile(u.log)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for line := range strings.SplitSeq(string(b), "\n") {
		_, rest, ok := strings.Cut(line, " query["+qtype+"] ")
		if !ok {
			continue
		}
		name, _, _ := strings.Cut(rest, " ")
		if strings.HasSuffix(name, suffix) {
			n++
		}
	}
	return n
}

// A wildcard rule's names are budgeted because the workload can carry data
// out in them. The choice among a few names already asked carries data as
// well, one query at a time, when every repeat reaches the upstream: here
// the upstream refuses the names (dnsmasq, no server for them), so no
// answer is cached and each repeat is forwarded. Four names carry two bits
// a query; a thousand, ten. The budget must bound the queries that leave
// the host, repeats included, not only the distinct names.
func TestDNSReviewWildcardRepeatsBudgeted(t *testing.T) {
	u := startUpstream(t)
	const queries = 300
	start := time.Now()
	r := probe(t, dnsFlags(u, "--allow-connect", "tcp:*.nx.test:443"),
		"dns-repeat", "192.0.2.1:53", "300", "a.nx.test", "b.nx.test", "c.nx.test", "d.nx.test")
	elapsed := time.Since(start)
	wantAllowed(t, r)
	time.Sleep(200 * time.Millisecond) // dnsmasq writes its log behind
	got := u.upstreamQueries(t, "A", ".nx.test")
	// The default budget: a burst of 50, then 10 a second.
	limit := 50 + int(10*elapsed.Seconds()) + 1
	if got > limit {
		t.Fatalf("%d of %d queries for four wildcard names reached the upstream in %v; the budget allows %d",
			got, queries, elapsed.Round(time.Millisecond), limit)
	}
}

// A name allowed for ICMP (--allow-connect icmp:NAME, {"protocol": "icmp",
// "host": ...}) must resolve and be pingable like a TCP one.
func TestDNSReviewICMPName(t *testing.T) {
	u := startUpstream(t)
	r := probe(t, dnsFlags(u, "--allow-connect", "icmp:api.test"), "resolve", "api.test")
	if !strings.HasPrefix(r.probeLine(), "ok ") || !strings.Contains(r.probeLine(), apiV4.String()) {
		t.Fatalf("a name allowed for icmp: %q, want ok with %s", r.probeLine(), apiV4)
	}
}
