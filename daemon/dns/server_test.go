package dns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/policy"
)

// An allowed name is forwarded, and its addresses are in the kernel, with
// the name's ports, before the client has the answer.
func TestAllowedNameLearnedBeforeTheReply(t *testing.T) {
	h := start(t, nil)
	for _, proto := range []string{"udp", "tcp"} {
		r := h.query(t, srcA, proto, "API.example", dns.TypeA, false)
		// The fake kernel takes 20 ms to learn; had the reply left
		// first, the entry would not be there yet.
		calls := h.kernel.calls()
		if r.Rcode != dns.RcodeSuccess || !slices.Equal(addrsOf(r.Answer), []string{"192.0.2.10"}) {
			t.Fatalf("%s: answer %v", proto, r)
		}
		if len(calls) == 0 {
			t.Fatalf("%s: the reply came before the kernel learned the address", proto)
		}
		got := calls[len(calls)-1]
		want := []Learned{
			{Protocol: policy.ProtoTCP, Addr: netip.MustParseAddr("192.0.2.10"), Ports: []policy.PortRange{{First: 443, Last: 443}}, Expires: h.clock.Now().Add(300 * time.Second)},
			{Protocol: policy.ProtoICMP, Addr: netip.MustParseAddr("192.0.2.10"), Ports: []policy.PortRange{{First: 0, Last: 65535}}, Expires: h.clock.Now().Add(300 * time.Second)},
		}
		if got.slot != 1 || got.generation != 7 || !equalLearned(got.addrs, want) {
			t.Fatalf("%s: learned %+v", proto, got)
		}
	}
	recs := h.records.wait(t, 2)
	rec := recs[0]
	if rec.Action != bpf.ActionDNS || rec.Verdict != bpf.VerdictAllow || rec.Name != "api.example" || rec.QueryType != "A" ||
		!slices.Equal(rec.Answers, []string{"192.0.2.10"}) || rec.Task != "t-a" || rec.Address != "8.8.8.8" || rec.Port != 53 ||
		rec.Enforcement != bpf.EnforcementResolver || rec.Protocol != bpf.ProtocolUDP || rec.Workload != "/bridle.run/a" {
		t.Fatalf("record %+v", rec)
	}
	if recs[1].Protocol != bpf.ProtocolTCP {
		t.Fatalf("second record %+v", recs[1])
	}
}

func equalLearned(a, b []Learned) bool {
	return slices.EqualFunc(a, b, func(x, y Learned) bool {
		return x.Protocol == y.Protocol && x.Addr == y.Addr && slices.Equal(x.Ports, y.Ports) && x.Expires.Equal(y.Expires)
	})
}

// Go's own stub resolver gets both families of an allowed name, and "no
// such host" at once for a name the task lacks, which the upstream never
// sees.
func TestGoResolver(t *testing.T) {
	h := start(t, nil)
	r := h.resolver(srcA)
	addrs, err := r.LookupHost(context.Background(), "api.example")
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(addrs)
	if !slices.Equal(addrs, []string{"192.0.2.10", "2001:db8::10"}) {
		t.Fatalf("addresses %v", addrs)
	}
	_, err = r.LookupHost(context.Background(), "unlisted.example")
	var dnsErr *net.DNSError
	if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Fatalf("unlisted name: %v", err)
	}
	if h.up.wasAsked("unlisted.example") {
		t.Fatalf("the upstream was asked for an unlisted name: %v", h.up.asked())
	}
	// A name answering with many addresses is cut to MaxAnswerAddrs.
	addrs, err = r.LookupHost(context.Background(), "big.example")
	if err != nil || len(addrs) != MaxAnswerAddrs {
		t.Fatalf("big.example: %d addresses, %v", len(addrs), err)
	}
}

// A name the task lacks is NXDOMAIN, with an Extended DNS Error when the
// client speaks EDNS, answered locally.
func TestUnlistedNameAnsweredLocally(t *testing.T) {
	h := start(t, nil)
	for _, edns := range []bool{false, true} {
		r := h.query(t, srcA, "udp", "unlisted.example", dns.TypeA, edns)
		if r.Rcode != dns.RcodeNameError || len(r.Answer) != 0 {
			t.Fatalf("edns %v: %v", edns, r)
		}
		var ede *dns.EDNS0_EDE
		if opt := r.IsEdns0(); opt != nil {
			for _, o := range opt.Option {
				if e, ok := o.(*dns.EDNS0_EDE); ok {
					ede = e
				}
			}
		}
		if edns != (ede != nil) || ede != nil && ede.InfoCode != dns.ExtendedErrorCodeBlocked {
			t.Fatalf("edns %v: extended error %v", edns, ede)
		}
	}
	if len(h.up.asked()) != 0 {
		t.Fatalf("the upstream was asked: %v", h.up.asked())
	}
	if len(h.kernel.calls()) != 0 {
		t.Fatal("the kernel learned something")
	}
	rec := h.records.wait(t, 2)[0]
	if rec.Verdict != bpf.VerdictDeny || rec.Reason != audit.DNSNotAllowed || rec.Name != "unlisted.example" {
		t.Fatalf("record %+v", rec)
	}
	if line := rec.Line(); line != "denied dns A unlisted.example by the workload: name not allowed; allow with --allow-connect tcp:unlisted.example:PORT" {
		t.Fatalf("line %q", line)
	}
}

// TXT and other types of an allowed name are answered empty, not
// forwarded.
func TestOtherTypesEmpty(t *testing.T) {
	h := start(t, nil)
	for _, qtype := range []uint16{dns.TypeTXT, dns.TypeMX, dns.TypeANY, dns.TypeHTTPS} {
		r := h.query(t, srcA, "udp", "api.example", qtype, false)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer)+len(r.Ns)+len(r.Extra) != 0 {
			t.Fatalf("%s: %v", dns.TypeToString[qtype], r)
		}
	}
	if len(h.up.asked()) != 0 {
		t.Fatalf("the upstream was asked: %v", h.up.asked())
	}
	if rec := h.records.wait(t, 1)[0]; rec.Reason != audit.DNSType || rec.QueryType != "TXT" {
		t.Fatalf("record %+v", rec)
	}
}

// A CNAME chain's target addresses are learned under the name asked for;
// records for owners outside the chain are neither learned nor passed on.
func TestCNAMEChain(t *testing.T) {
	h := start(t, nil)
	r := h.query(t, srcA, "udp", "www.example", dns.TypeA, true)
	if got := addrsOf(r.Answer); !slices.Equal(got, []string{"192.0.2.20"}) {
		t.Fatalf("answer addresses %v (answer %v)", got, r.Answer)
	}
	if len(r.Answer) != 2 {
		t.Fatalf("answer %v", r.Answer)
	}
	calls := h.kernel.calls()
	if len(calls) != 1 || len(calls[0].addrs) != 1 || calls[0].addrs[0].Addr != netip.MustParseAddr("192.0.2.20") ||
		!calls[0].addrs[0].Expires.Equal(h.clock.Now().Add(60*time.Second)) {
		t.Fatalf("learned %+v", calls)
	}
}

// A UDP answer the upstream truncated is passed on truncated; over TCP the
// answer comes back, cut to MaxAnswerAddrs, and all of that is learned.
func TestTruncatedAnswerOverTCP(t *testing.T) {
	h := start(t, nil)
	r := h.query(t, srcA, "udp", "big.example", dns.TypeA, false)
	if !r.Truncated || len(r.Answer) >= 100 {
		t.Fatalf("udp: truncated %v with %d answers", r.Truncated, len(r.Answer))
	}
	r = h.query(t, srcA, "tcp", "big.example", dns.TypeA, false)
	if r.Truncated || len(r.Answer) != MaxAnswerAddrs {
		t.Fatalf("tcp: truncated %v with %d answers", r.Truncated, len(r.Answer))
	}
	calls := h.kernel.calls()
	if n := len(calls[len(calls)-1].addrs); n != MaxAnswerAddrs {
		t.Fatalf("learned %d addresses", n)
	}
	if asked := h.up.asked(); !slices.Equal(asked, []string{"big.example. A udp", "big.example. A tcp"}) {
		t.Fatalf("upstream asked %v", asked)
	}
}

// A short TTL is raised to the floor; nothing outlives its task.
func TestTTLFloorAndTaskEnd(t *testing.T) {
	h := start(t, func(c *Config) {
		c.TTLFloor = 30 * time.Second
		tasks := c.Tasks.(fakeTasks)
		b := tasks[2]
		b.Ends = c.Now().Add(10 * time.Second)
		tasks[2] = b
	})
	now := h.clock.Now()
	ends := h.tasks[2].Ends

	h.query(t, srcA, "udp", "short.example", dns.TypeA, false)
	if got := h.kernel.calls()[0].addrs[0].Expires; !got.Equal(now.Add(30 * time.Second)) {
		t.Fatalf("TTL 1 learned until %v, want the 30 s floor", got.Sub(now))
	}
	r := h.query(t, srcB, "udp", "api.example", dns.TypeA, false)
	if got := h.kernel.calls()[1].addrs[0].Expires; !got.Equal(ends) {
		t.Fatalf("learned until %v, want the task's end", got.Sub(now))
	}
	if ttl := r.Answer[0].Header().Ttl; ttl > 10 {
		t.Fatalf("the stub may keep the address %d s, past the task's end", ttl)
	}
}

// A cached answer serves a second task without the upstream, and still
// writes that task's own entries, with the time the answer has left.
func TestCacheHitLearnsForTheAsker(t *testing.T) {
	h := start(t, nil)
	h.query(t, srcA, "udp", "api.example", dns.TypeA, false)
	h.clock.advance(100 * time.Second)
	r := h.query(t, srcB, "udp", "api.example", dns.TypeA, false)
	if len(h.up.asked()) != 1 {
		t.Fatalf("upstream asked %v", h.up.asked())
	}
	if ttl := r.Answer[0].Header().Ttl; ttl != 200 {
		t.Fatalf("cached answer's TTL %d, want 200", ttl)
	}
	calls := h.kernel.calls()
	if len(calls) != 2 || calls[1].slot != 2 || calls[1].generation != 9 ||
		!calls[1].addrs[0].Expires.Equal(h.clock.Now().Add(200*time.Second)) {
		t.Fatalf("learned %+v", calls)
	}
	if h.srv.Stats().CacheHits != 1 || h.srv.Stats().Forwarded != 1 {
		t.Fatalf("stats %+v", h.srv.Stats())
	}
	// Stale: asked again.
	h.clock.advance(201 * time.Second)
	h.query(t, srcB, "udp", "api.example", dns.TypeA, false)
	if len(h.up.asked()) != 2 {
		t.Fatalf("upstream asked %v", h.up.asked())
	}
}

// Names matched only by a wildcard are budgeted per task: distinct names,
// in total and per second. A name already resolved costs nothing.
func TestWildcardBudget(t *testing.T) {
	h := start(t, func(c *Config) {
		c.WildcardNames, c.WildcardBurst, c.WildcardRate = 4, 2, 1
	})
	ask := func(src netip.Addr, name string) int {
		return h.query(t, src, "udp", name, dns.TypeA, false).Rcode
	}
	if ask(srcA, "a1.wild.example") != dns.RcodeSuccess || ask(srcA, "a2.wild.example") != dns.RcodeSuccess {
		t.Fatal("the burst was refused")
	}
	if ask(srcA, "a3.wild.example") != dns.RcodeRefused {
		t.Fatal("a third new name in the same instant passed")
	}
	if ask(srcA, "a1.wild.example") != dns.RcodeSuccess {
		t.Fatal("a name already resolved was refused")
	}
	if ask(srcB, "b1.wild.example") != dns.RcodeSuccess {
		t.Fatal("another task's budget was spent")
	}
	if ask(srcA, "api.example") != dns.RcodeSuccess {
		t.Fatal("an exact name was budgeted")
	}
	h.clock.advance(10 * time.Second)
	if ask(srcA, "a3.wild.example") != dns.RcodeSuccess || ask(srcA, "a4.wild.example") != dns.RcodeSuccess {
		t.Fatal("refilled tokens refused")
	}
	h.clock.advance(10 * time.Second)
	if ask(srcA, "a5.wild.example") != dns.RcodeRefused {
		t.Fatal("a fifth distinct name passed the total of 4")
	}
	if h.up.wasAsked("a5.wild.example") {
		t.Fatal("a name over budget was forwarded")
	}
	recs := h.records.wait(t, 9)
	if recs[2].Reason != audit.DNSBudget || recs[2].Verdict != bpf.VerdictDeny {
		t.Fatalf("record %+v", recs[2])
	}
}

// A query from no workload the kernel steered is refused and never
// forwarded.
func TestUnattributedRefused(t *testing.T) {
	h := start(t, nil)
	for _, proto := range []string{"udp", "tcp"} {
		if r := h.query(t, srcX, proto, "api.example", dns.TypeA, false); r.Rcode != dns.RcodeRefused {
			t.Fatalf("%s: %v", proto, r)
		}
	}
	if len(h.up.asked()) != 0 {
		t.Fatalf("upstream asked %v", h.up.asked())
	}
	if rec := h.records.wait(t, 2)[0]; rec.Reason != audit.DNSUnattributed || rec.Task != "" {
		t.Fatalf("record %+v", rec)
	}
}

// When the kernel does not take the addresses, the workload gets SERVFAIL,
// never an answer it could not use.
func TestLearnFailureServfail(t *testing.T) {
	h := start(t, nil)
	h.kernel.mu.Lock()
	h.kernel.learnErr = errors.New("map full")
	h.kernel.mu.Unlock()
	r := h.query(t, srcA, "udp", "api.example", dns.TypeA, false)
	if r.Rcode != dns.RcodeServerFailure || len(r.Answer) != 0 {
		t.Fatalf("%v", r)
	}
	if rec := h.records.wait(t, 1)[0]; rec.Verdict != bpf.VerdictDeny || rec.Reason != audit.DNSKernel+": map full" {
		t.Fatalf("record %+v", rec)
	}
}

// Garbage on either transport does not stop the resolver.
func TestMalformedPackets(t *testing.T) {
	h := start(t, nil)
	junk := [][]byte{{}, {0}, {0xff, 0xff}, make([]byte, 12), []byte("\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01")}
	for _, b := range junk {
		c, err := net.Dial("udp", h.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		c.Write(b)
		c.Close()
		tc, err := net.Dial("tcp", h.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		tc.Write(append([]byte{0, byte(len(b))}, b...))
		tc.Close()
	}
	if r := h.query(t, srcA, "udp", "api.example", dns.TypeA, false); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("after junk: %v", r)
	}
}

// The resolver listens on IPv6 loopback too, on UDP and TCP alike.
func TestIPv6Listener(t *testing.T) {
	h := start(t, nil)
	_, v6 := h.srv.Addrs()
	if !v6.IsValid() {
		t.Skip("no IPv6 loopback on this host")
	}
	h.kernel.mu.Lock()
	h.kernel.peers[netip.IPv6Loopback()] = h.kernel.peers[srcA]
	h.kernel.mu.Unlock()
	for _, proto := range []string{"udp", "tcp"} {
		m := new(dns.Msg)
		m.SetQuestion("api.example.", dns.TypeAAAA)
		r, _, err := (&dns.Client{Net: proto}).Exchange(m, v6.String())
		if err != nil || !slices.Equal(addrsOf(r.Answer), []string{"2001:db8::10"}) {
			t.Fatalf("%s: %v %v", proto, r, err)
		}
	}
}

// A week's TTL is cut to the ceiling: in the kernel, in the cache and for
// the stub.
func TestTTLCeiling(t *testing.T) {
	h := start(t, func(c *Config) { c.TTLCeiling = time.Hour })
	now := h.clock.Now()
	r := h.query(t, srcA, "udp", "long.example", dns.TypeA, false)
	if got := h.kernel.calls()[0].addrs[0].Expires; !got.Equal(now.Add(time.Hour)) {
		t.Fatalf("learned for %v, want the hour's ceiling", got.Sub(now))
	}
	if ttl := r.Answer[0].Header().Ttl; ttl > 3600 {
		t.Fatalf("the stub may keep the address %d s", ttl)
	}
	h.clock.advance(time.Hour + time.Second)
	h.query(t, srcA, "udp", "long.example", dns.TypeA, false)
	if asked := h.up.asked(); len(asked) != 2 {
		t.Fatalf("after the ceiling the cache still answered: upstream asked %v", asked)
	}
	if _, err := New(Config{Upstream: h.up.addr, Kernel: h.kernel, Tasks: h.tasks, TTLFloor: time.Hour, TTLCeiling: time.Minute}); err == nil {
		t.Error("a ceiling below the floor was accepted")
	}
}

// The upstream sees the name and type the workload asked, and nothing
// else it chose: not its EDNS buffer size, nor its flags.
func TestForwardedQueryCarriesNoWorkloadBits(t *testing.T) {
	h := start(t, nil)
	m := new(dns.Msg)
	m.SetQuestion("api.example.", dns.TypeA)
	m.CheckingDisabled = true
	m.AuthenticatedData = true
	m.SetEdns0(4000, true)
	c := &dns.Client{Net: "udp", Timeout: 3 * time.Second, Dialer: &net.Dialer{LocalAddr: localAddr("udp", srcA)}}
	if _, _, err := c.Exchange(m, h.addr.String()); err != nil {
		t.Fatal(err)
	}
	h.up.mu.Lock()
	defer h.up.mu.Unlock()
	if len(h.up.reqs) != 1 {
		t.Fatalf("upstream got %d queries", len(h.up.reqs))
	}
	got := h.up.reqs[0]
	opt := got.IsEdns0()
	if got.CheckingDisabled || got.AuthenticatedData || opt == nil || opt.UDPSize() != ednsSize || opt.Do() {
		t.Fatalf("forwarded query carries the workload's bits: %v", got)
	}
}

// One task's queries waiting on the upstream are bounded.
func TestQueriesInFlightBounded(t *testing.T) {
	var f inFlight
	k := budgetKey{task: "t-a"}
	for i := range 3 {
		if !f.acquire(k, 3) {
			t.Fatalf("query %d refused under the bound", i)
		}
	}
	if f.acquire(k, 3) {
		t.Fatal("a fourth query in flight was let through")
	}
	if !f.acquire(budgetKey{task: "t-b"}, 3) {
		t.Fatal("another task was held by the first one's queries")
	}
	f.release(k)
	if !f.acquire(k, 3) {
		t.Fatal("a released place was not given again")
	}
}
