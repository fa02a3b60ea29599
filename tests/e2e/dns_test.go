package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/dns"
)

// Egress by name through Bridle's resolver, with a real upstream (dnsmasq)
// and the workload's own stub resolvers: Go's (the probe), glibc's
// (getent) and CPython's getaddrinfo. Every test runs in the test network
// namespace, where the zone's addresses live on the loopback.

// dnsFlags point a standalone run's resolver at the test's upstream.
func dnsFlags(u *upstream, more ...string) []string {
	return append([]string{"--dns-upstream", u.addr.String()}, more...)
}

// dnsRecord finds the resolver's record for a name and type.
func dnsRecord(t *testing.T, r result, name, qtype string) audit.Record {
	t.Helper()
	for _, rec := range r.records {
		if rec.Action == "dns" && rec.Name == name && rec.QueryType == qtype {
			return rec
		}
	}
	t.Fatalf("no dns record for %s %s among %+v", qtype, name, r.records)
	return audit.Record{}
}

func TestDNSNames(t *testing.T) {
	u := startUpstream(t)
	tcpListener(t, "tcp4", netip.AddrPortFrom(apiV4, servicePort).String())
	tcpListener(t, "tcp6", netip.AddrPortFrom(apiV6, servicePort).String())
	tcpListener(t, "tcp4", netip.AddrPortFrom(cdnV4, servicePort).String())
	allowAPI := dnsFlags(u, "--allow-connect", "tcp:api.test:8443")

	t.Run("allowed name resolves and connects over IPv4 and IPv6", func(t *testing.T) {
		for family, want := range map[string]netip.Addr{"4": apiV4, "6": apiV6} {
			r := probe(t, allowAPI, "resolve-tcp", "api.test:8443", family)
			if r.probeLine() != "ok "+want.String() {
				t.Fatalf("IPv%s: %q, want ok %s\n%s", family, r.probeLine(), want, r.stderr)
			}
			rec := dnsRecord(t, r, "api.test", map[string]string{"4": "A", "6": "AAAA"}[family])
			if rec.Verdict != "allow" || !slices.Contains(rec.Answers, want.String()) || rec.Task == "" {
				t.Errorf("record %+v: want allow, answering %s, naming the task", rec, want)
			}
		}
		if !u.queried(t, "A", "api.test") || !u.queried(t, "AAAA", "api.test") {
			t.Error("the upstream was not asked for api.test")
		}
	})

	t.Run("an address is refused before its name resolved", func(t *testing.T) {
		wantRefused(t, probe(t, allowAPI, "tcp", netip.AddrPortFrom(apiV4, servicePort).String()), "connect", "tcp")
	})

	t.Run("an unlisted name is answered here and never forwarded", func(t *testing.T) {
		r := probe(t, allowAPI, "resolve", "other.test")
		if r.probeLine() != "error NXDOMAIN" {
			t.Fatalf("%q, want error NXDOMAIN", r.probeLine())
		}
		if rec := dnsRecord(t, r, "other.test", "A"); rec.Verdict != "deny" || rec.Reason != audit.DNSNotAllowed {
			t.Errorf("record %+v", rec)
		}
		if !strings.Contains(r.stderr, "--allow-connect tcp:other.test:PORT") {
			t.Errorf("the denial line names no flag:\n%s", r.stderr)
		}
		if u.queried(t, "A", "other.test") || u.queried(t, "AAAA", "other.test") {
			t.Error("other.test reached the upstream")
		}
	})

	t.Run("other record types of an allowed name are answered empty, not forwarded", func(t *testing.T) {
		r := probe(t, allowAPI, "dns-query", "127.0.0.1:53", "api.test", "TXT")
		if r.probeLine() != "ok NOERROR" {
			t.Fatalf("%q, want ok NOERROR with no answer", r.probeLine())
		}
		if rec := dnsRecord(t, r, "api.test", "TXT"); rec.Reason != audit.DNSType {
			t.Errorf("record %+v", rec)
		}
		if u.queried(t, "TXT", "api.test") {
			t.Error("the TXT query reached the upstream")
		}
	})

	t.Run("a CNAME chain allows its target's addresses", func(t *testing.T) {
		r := probe(t, dnsFlags(u, "--allow-connect", "tcp:alias.test:8443"), "resolve-tcp", "alias.test:8443", "4")
		if r.probeLine() != "ok "+cdnV4.String() {
			t.Fatalf("%q, want ok %s", r.probeLine(), cdnV4)
		}
		// The target itself is no name of the task's.
		r = probe(t, dnsFlags(u, "--allow-connect", "tcp:alias.test:8443"), "resolve", "cdn.test")
		if r.probeLine() != "error NXDOMAIN" {
			t.Errorf("cdn.test by its own name: %q, want error NXDOMAIN", r.probeLine())
		}
	})

	t.Run("a truncated answer is retried over TCP", func(t *testing.T) {
		r := probe(t, dnsFlags(u, "--allow-connect", "tcp:big.test:443"), "resolve", "big.test")
		if !strings.HasPrefix(r.probeLine(), "ok ") || strings.Count(r.probeLine(), ",")+1 != dns.MaxAnswerAddrs {
			t.Fatalf("%q, want %d addresses (of %d: Bridle hands out dns.MaxAnswerAddrs)", r.probeLine(), dns.MaxAnswerAddrs, bigCount)
		}
		found := false
		for _, rec := range r.records {
			if rec.Action == "dns" && rec.Name == "big.test" && rec.Protocol == "tcp" && rec.Verdict == "allow" {
				found = true
			}
		}
		if !found {
			t.Errorf("no allowed dns record over tcp for big.test among %+v", r.records)
		}
	})

	t.Run("a learned address ends with its TTL", func(t *testing.T) {
		// dnsmasq answers with TTL 1; the floor lets it live 1s.
		r := probe(t, dnsFlags(u, "--dns-ttl-floor", "1s", "--allow-connect", "tcp:api.test:8443"),
			"resolve-tcp", "api.test:8443", "4", "2500ms")
		if r.probeLine() != "EPERM connect again" {
			t.Fatalf("%q, want the connect after the TTL refused (EPERM connect again)", r.probeLine())
		}
	})

	t.Run("the upstream itself is out of reach", func(t *testing.T) {
		wantRefused(t, probe(t, allowAPI, "udp-sendto", u.addr.String()), "sendmsg", "udp")
		wantRefused(t, probe(t, allowAPI, "tcp", u.addr.String()), "connect", "tcp")
		if r := probe(t, allowAPI, "dns-query", u.addr.String(), "api.test", "A"); !strings.HasPrefix(r.probeLine(), "EPERM") {
			t.Errorf("a query to the upstream's own port: %q, want EPERM", r.probeLine())
		}
	})

	t.Run("a query to any address on port 53 goes to Bridle", func(t *testing.T) {
		for _, to := range []string{netip.AddrPortFrom(u.addr.Addr(), 53).String(), "192.0.2.53:53", "[2001:db8::53]:53"} {
			for _, transport := range []string{"udp", "tcp"} {
				r := probe(t, allowAPI, "dns-query", to, "leak-"+transport+".other.test", "A", transport)
				if r.probeLine() != "ok NXDOMAIN" {
					t.Errorf("%s over %s: %q, want ok NXDOMAIN (answered by Bridle)", to, transport, r.probeLine())
				}
			}
		}
		if u.queried(t, "A", "leak-udp.other.test") || u.queried(t, "A", "leak-tcp.other.test") {
			t.Error("a query sent to port 53 reached the upstream")
		}
	})

	t.Run("DNS on another port is an ordinary destination", func(t *testing.T) {
		r := probe(t, allowAPI, "dns-query", netip.AddrPortFrom(apiV4, 5353).String(), "api.test", "A")
		if !strings.HasPrefix(r.probeLine(), "EPERM") {
			t.Errorf("%q, want EPERM", r.probeLine())
		}
	})

	t.Run("glibc's resolver", func(t *testing.T) {
		r := bridleRun(t, append(allowAPI, "--allow-exec", "/usr/bin/getent"), "/usr/bin/getent", "ahosts", "api.test")
		if r.status != 0 || !strings.Contains(r.stdout, apiV4.String()) {
			t.Fatalf("getent ahosts api.test: status %d\n%s", r.status, r.stdout)
		}
	})

	t.Run("busybox's own resolver (nslookup)", func(t *testing.T) {
		busybox, err := filepath.EvalSymlinks("/bin/busybox")
		if err != nil {
			t.Fatalf("the DNS tests need /bin/busybox (the kernel guests' shell; .ci/run installs busybox-static): %v", err)
		}
		r := bridleRun(t, append(allowAPI, "--allow-exec", busybox), busybox, "nslookup", "api.test")
		if r.status != 0 || !strings.Contains(r.stdout, apiV4.String()) {
			t.Fatalf("nslookup api.test: status %d\n%s", r.status, r.stdout)
		}
		r = bridleRun(t, append(allowAPI, "--allow-exec", busybox), busybox, "nslookup", "other.test")
		if r.status == 0 || strings.Contains(r.stdout, otherV4.String()) {
			t.Fatalf("nslookup other.test: status %d\n%s", r.status, r.stdout)
		}
	})

	t.Run("CPython's getaddrinfo", func(t *testing.T) {
		python, err := filepath.EvalSymlinks("/usr/bin/python3")
		if err != nil && os.Getenv("BRIDLE_E2E_BRIDLE") != "" {
			t.Skip("CPython is not in the kernel guests (its standard library would have to come with it); the host run covers it")
		}
		if err != nil {
			t.Fatalf("the DNS tests need /usr/bin/python3 (.ci/run installs it): %v", err)
		}
		if _, err := os.Stat(python); err != nil {
			t.Fatal(err)
		}
		r := bridleRun(t, append(allowAPI, "--allow-exec", python), python, "-c",
			"import socket; print(sorted({a[4][0] for a in socket.getaddrinfo('api.test', 8443)}))")
		if r.status != 0 || !strings.Contains(r.stdout, apiV4.String()) || !strings.Contains(r.stdout, apiV6.String()) {
			t.Fatalf("getaddrinfo: status %d\n%s", r.status, r.stdout)
		}
	})
}

// dnsPolicy gives every task two names and the test's binaries.
func dnsPolicy() string {
	return fmt.Sprintf(`package bridle

binaries := [{"path": %q}]

baseline := {"exec": binaries}

envelope := {
	"egress": [
		{"protocol": "tcp", "host": "api.test", "ports": [8443]},
		{"protocol": "tcp", "host": "cdn.test", "ports": [8443]},
	],
	"exec": binaries,
	"ttl": "1h",
}
`, probeBin)
}

// newDNSDaemon is bridled in the test namespace, resolving through u, with
// dnsPolicy.
func newDNSDaemon(t *testing.T, u *upstream) *daemonEnv {
	t.Helper()
	e := newDaemonEnv(t)
	e.inNetns = true
	if err := os.WriteFile(filepath.Join(e.dir, "policy", "test.rego"), []byte(dnsPolicy()), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(e.config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := fmt.Fprintf(f, "dns:\n  upstream: %s\n", u.addr); err != nil {
		t.Fatal(err)
	}
	e.start()
	return e
}

// probeIn runs the probe in a workload of e and returns its line.
func (e *daemonEnv) probeIn(cg string, args ...string) string {
	e.t.Helper()
	out, errOut, _ := e.inCgroup(cg, true, append([]string{probeBin}, args...)...)
	line, _, _ := strings.Cut(out, "\n")
	e.t.Logf("probe %v in %s: %q %s", args, cg, line, errOut)
	return line
}

func TestDNSDaemonTasks(t *testing.T) {
	u := startUpstream(t)
	tcpListener(t, "tcp4", netip.AddrPortFrom(apiV4, servicePort).String())
	tcpListener(t, "tcp4", netip.AddrPortFrom(cdnV4, servicePort).String())
	e := newDNSDaemon(t, u)
	api := netip.AddrPortFrom(apiV4, servicePort).String()

	wa, wb, wc := e.workload("a"), e.workload("b"), e.workload("c")
	a := e.startTask(wa)
	e.startTask(wb)

	t.Run("two tasks see only their own learned addresses", func(t *testing.T) {
		if got := e.probeIn(wa, "resolve-tcp", "api.test:8443", "4"); got != "ok "+apiV4.String() {
			t.Fatalf("task a: %q", got)
		}
		// b may resolve the name too, but has not: a's answer is a's.
		if got := e.probeIn(wb, "tcp", api); got != "EPERM connect" {
			t.Fatalf("task b reached %s on task a's answer: %q", api, got)
		}
	})

	t.Run("a sub-agent resolves only names its grants and its parent's share", func(t *testing.T) {
		e.startTask(wc, "--parent", a, "--allow-connect", "tcp:cdn.test:8443", "--allow-exec", probeBin)
		if got := e.probeIn(wc, "resolve", "api.test"); got != "error NXDOMAIN" {
			t.Errorf("the sub-agent resolved its parent's other name: %q", got)
		}
		if got := e.probeIn(wc, "resolve-tcp", "cdn.test:8443", "4"); got != "ok "+cdnV4.String() {
			t.Errorf("the sub-agent's own name: %q", got)
		}
	})

	t.Run("learned addresses outlive a restart of bridled, and DNS fails closed meanwhile", func(t *testing.T) {
		e.stop(syscall.SIGTERM)
		if got := e.probeIn(wa, "tcp", api); got != "ok" {
			t.Errorf("with bridled stopped, the learned address: %q, want ok", got)
		}
		if got := e.probeIn(wa, "resolve", "cdn.test"); strings.HasPrefix(got, "ok") {
			t.Errorf("with bridled stopped, a query was answered: %q", got)
		}
		if got := e.probeIn(wb, "tcp", api); got != "EPERM connect" {
			t.Errorf("with bridled stopped, task b: %q", got)
		}
		e.start()
		if got := e.probeIn(wa, "tcp", api); got != "ok" {
			t.Errorf("after the restart, the learned address: %q, want ok", got)
		}
		if got := e.probeIn(wa, "resolve-tcp", "cdn.test:8443", "4"); got != "ok "+cdnV4.String() {
			t.Errorf("after the restart, a new name: %q", got)
		}
	})

	t.Run("a task's end removes what it learned", func(t *testing.T) {
		if out, err := e.bridle("end", a); err != nil {
			t.Fatalf("task end: %v: %s", err, out)
		}
		if got := e.probeIn(wa, "tcp", api); got != "EPERM connect" {
			t.Errorf("after the end: %q", got)
		}
	})
}

// A workload of bridled has no seccomp filter of Bridle's (bridle run's
// refuses io_uring outright), so the ways to the upstream resolver that
// the kernel's socket hooks must see, io_uring's among them, are tried
// there: every one is refused, or steered to Bridle's resolver.
func TestDNSDaemonNoWayAroundTheResolver(t *testing.T) {
	u := startUpstream(t)
	e := newDNSDaemon(t, u)
	wa := e.workload("a")
	e.startTask(wa)
	up := u.addr.String()
	mapped := "[::ffff:" + u.addr.Addr().String() + "]:" + strings.TrimPrefix(up, u.addr.Addr().String()+":")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"iouring-connect", up}, "EPERM IORING_OP_CONNECT"},
		{[]string{"iouring-connect", mapped}, "EPERM IORING_OP_CONNECT"},
		{[]string{"tcp-fastopen", up}, "EPERM sendto"},
		{[]string{"tcp-fastopen", mapped}, "EPERM sendto"},
		{[]string{"udp-sendto", up}, "EPERM sendto"},
		{[]string{"udp-sendto", mapped}, "EPERM sendto"},
		{[]string{"udp-sendmmsg", "192.0.2.1:53", up}, "EPERM sendmmsg(" + up + ") sent=1"},
		// No route leads to 192.0.2.1: only the steering to Bridle's
		// resolver makes these succeed.
		{[]string{"iouring-connect", "192.0.2.1:53"}, "ok"},
		{[]string{"iouring-connect", "[::ffff:192.0.2.1]:53"}, "ok"},
	} {
		if got := e.probeIn(wa, c.args...); got != c.want {
			t.Errorf("%v: %q, want %q", c.args, got, c.want)
		}
	}
}
