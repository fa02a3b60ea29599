package bench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	bridledns "github.com/bridle-sh/bridle/daemon/dns"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
)

// The names the DNS benchmarks ask for. The upstream answers the cached
// one with a TTL of an hour, so after the first query Bridle answers it
// from its cache; and the forwarded one with a TTL of 0, which Bridle does
// not cache, so every query for it goes to the upstream.
const (
	cachedName    = "cached.bench.test"
	forwardedName = "forwarded.bench.test"
	// loadClients is how many sockets query at once in the throughput
	// variants, each one query at a time.
	loadClients = 8
)

// steeredTo is where the confined client sends its queries: an address
// with no server (TEST-NET-1), port 53. Only the kernel's steering can
// make an answer come back from it.
var steeredTo = netip.MustParseAddrPort("192.0.2.53:53")

// nameEnvelope allows the two benchmark names on TCP 443, as an agent's
// policy allows its API host.
func nameEnvelope() policy.Envelope {
	https := []policy.PortRange{{First: 443, Last: 443}}
	return policy.Envelope{Egress: []policy.EgressRule{
		{Protocol: policy.ProtoTCP, Host: cachedName, Ports: https},
		{Protocol: policy.ProtoTCP, Host: forwardedName, Ports: https},
	}}
}

func compileNames(tb testing.TB) policy.RuleSet {
	tb.Helper()
	rs, err := policy.Compile(nameEnvelope())
	if err != nil {
		tb.Fatal(err)
	}
	if len(rs.Names) != 2 {
		tb.Fatalf("name envelope compiled to %d name rules, want 2", len(rs.Names))
	}
	return rs
}

// startDnsmasq starts a real upstream resolver on a free loopback port of
// the host, answering the two benchmark names from its own records (no
// query log, no recursion: the upstream's own cost is as small as it
// gets), and returns where it listens once it answers.
func startDnsmasq(tb testing.TB) netip.AddrPort {
	tb.Helper()
	bin, err := exec.LookPath("dnsmasq")
	if err != nil {
		tb.Fatalf("the DNS benchmarks need dnsmasq (Debian package dnsmasq-base): %v", err)
	}
	var lastErr error
	for range 5 {
		port, err := freeLoopbackPort()
		if err != nil {
			tb.Fatal(err)
		}
		addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
		cmd := exec.Command(bin, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll",
			"--user=root", "--pid-file=", "--bind-interfaces", "--listen-address=127.0.0.1",
			fmt.Sprintf("--port=%d", port),
			"--host-record="+cachedName+",10.99.0.1,3600",
			"--host-record="+forwardedName+",10.99.0.2,0")
		out := &strings.Builder{}
		var mu sync.Mutex
		cmd.Stdout, cmd.Stderr = lockedWriter{&mu, out}, lockedWriter{&mu, out}
		if err := cmd.Start(); err != nil {
			tb.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		var stopping atomic.Bool
		stop := func() {
			stopping.Store(true)
			_ = cmd.Process.Kill()
			<-exited
		}
		if lastErr = waitAnswers(addr, exited); lastErr == nil {
			tb.Cleanup(stop)
			go func() {
				// An upstream that dies mid-run turns every later
				// query into a timeout; say why.
				err := <-exited
				if !stopping.Load() {
					upstreamGone.Store(fmt.Sprintf("dnsmasq on %s exited during the run: %v", addr, err))
				}
				exited <- err
			}()
			return addr
		}
		stop()
		mu.Lock()
		lastErr = fmt.Errorf("%w: %s", lastErr, strings.TrimSpace(out.String()))
		mu.Unlock()
	}
	tb.Fatalf("dnsmasq did not come up: %v", lastErr)
	return netip.AddrPort{}
}

// upstreamGone says why the upstream stopped answering, once it has.
var upstreamGone atomic.Value

type lockedWriter struct {
	mu *sync.Mutex
	w  *strings.Builder
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// freeLoopbackPort is a port free on 127.0.0.1 for UDP and TCP a moment
// ago; dnsmasq, which binds both, may still lose it to someone else, and
// then the caller tries another.
func freeLoopbackPort() (uint16, error) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return 0, err
	}
	defer pc.Close()
	port := pc.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)})
	if err != nil {
		return 0, fmt.Errorf("port %d taken for tcp: %w", port, err)
	}
	l.Close()
	return port, nil
}

// waitAnswers waits until the upstream answers the cached name.
func waitAnswers(addr netip.AddrPort, exited <-chan error) error {
	c := &dns.Client{Timeout: 200 * time.Millisecond}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(cachedName), dns.TypeA)
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case err := <-exited:
			return fmt.Errorf("dnsmasq exited: %v", err)
		default:
		}
		r, _, err := c.Exchange(m, addr.String())
		if err == nil && r.Rcode == dns.RcodeSuccess && len(r.Answer) == 1 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer from %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fakeKernel stands in for the enforcer in the resolver-only benchmark:
// every query is the one task's, found with a map lookup as the kernel's
// attribution is, and learned entries go into a map.
type fakeKernel struct {
	mu      sync.Mutex
	peers   map[netip.Addr]bridledns.Peer
	learned map[netip.Addr]bridledns.Learned
}

func (k *fakeKernel) Peer(_ policy.Protocol, src netip.AddrPort) (bridledns.Peer, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	p, ok := k.peers[src.Addr()]
	if !ok {
		return bridledns.Peer{}, loader.ErrNoPeer
	}
	return p, nil
}

func (k *fakeKernel) Learn(_, _ uint32, addrs []bridledns.Learned) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, a := range addrs {
		k.learned[a.Addr] = a
	}
	return nil
}

// enforcerKernel is the real enforcer behind the resolver, as bridled
// wires it (daemon/node), without the task manager around Learn.
type enforcerKernel struct{ e *loader.Enforcer }

func (k enforcerKernel) Peer(proto policy.Protocol, src netip.AddrPort) (bridledns.Peer, error) {
	p, err := k.e.DNSPeer(proto, src)
	if err != nil {
		return bridledns.Peer{}, err
	}
	return bridledns.Peer{CgroupID: p.CgroupID, Slot: p.Slot, Generation: p.Generation, Dest: p.Dest}, nil
}

func (k enforcerKernel) Learn(slot, generation uint32, addrs []bridledns.Learned) error {
	out := make([]loader.LearnedAddr, len(addrs))
	for i, a := range addrs {
		out[i] = loader.LearnedAddr{Protocol: a.Protocol, Addr: a.Addr, Ports: a.Ports, Expires: a.Expires}
	}
	return k.e.Learn(slot, generation, out)
}

// oneTask is the task of slot 1, generation 1 (what workload() sets up).
type oneTask struct{ names *policy.NameIndex }

func (t oneTask) Lookup(p bridledns.Peer) (bridledns.Asker, bool) {
	if p.Slot != 1 || p.Generation != 1 {
		return bridledns.Asker{}, false
	}
	return bridledns.Asker{TaskID: "bench", Workload: "bench", Names: t.names, Ends: time.Now().Add(time.Hour)}, true
}

// startResolver starts Bridle's resolver on 127.0.0.1 with an ephemeral
// port, forwarding to upstream.
func startResolver(tb testing.TB, upstream netip.AddrPort, k bridledns.Kernel, names *policy.NameIndex) *bridledns.Server {
	tb.Helper()
	srv, err := bridledns.New(bridledns.Config{Upstream: upstream, NoIPv6: true, Kernel: k, Tasks: oneTask{names}})
	if err != nil {
		tb.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	return srv
}

// queryVariant is one way of asking: which client, where to, for what.
type queryVariant struct {
	name    string
	client  *queryClient
	server  netip.AddrPort
	qname   string
	clients int
	// via is Bridle's resolver when the queries go through it; the
	// variant is then checked to have been answered as it claims.
	via *bridledns.Server
}

// queryVariants are the comparison the DNS benchmarks make: the same
// client asking the upstream directly (the baseline), and through Bridle
// for a cached and a forwarded name, one query at a time (latency) and
// loadClients at a time (throughput).
func queryVariants(direct, viaBridle *queryClient, upstream, bridle netip.AddrPort, srv *bridledns.Server) []queryVariant {
	var out []queryVariant
	for _, load := range []struct {
		suffix  string
		clients int
	}{{"", 1}, {"-load", loadClients}} {
		out = append(out,
			queryVariant{name: "upstream" + load.suffix, client: direct, server: upstream, qname: forwardedName, clients: load.clients},
			queryVariant{name: "cached" + load.suffix, client: viaBridle, server: bridle, qname: cachedName, clients: load.clients, via: srv},
			queryVariant{name: "forwarded" + load.suffix, client: viaBridle, server: bridle, qname: forwardedName, clients: load.clients, via: srv},
		)
	}
	return out
}

// benchQueries measures one variant and proves it measured what it says:
// every query through Bridle allowed, and every one answered from the
// cache or forwarded, as the variant's name claims.
func benchQueries(b *testing.B, v queryVariant) {
	var before bridledns.Stats
	if v.via != nil {
		before = v.via.Stats()
	}
	if why, ok := upstreamGone.Load().(string); ok {
		b.Fatal(why)
	}
	measureQueries(b, v.client, v.server, v.qname, v.clients)
	if v.via == nil {
		return
	}
	n := uint64(b.N)
	// The resolver counts a query's verdict after it has sent the reply,
	// so the last one may not be counted yet when the client has it.
	after := v.via.Stats()
	for deadline := time.Now().Add(time.Second); after.Allowed-before.Allowed < n && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
		after = v.via.Stats()
	}
	if got := after.Allowed - before.Allowed; got != n {
		b.Fatalf("%s: %d of %d queries allowed (stats %+v)", v.name, got, n, after)
	}
	hits, fwd := after.CacheHits-before.CacheHits, after.Forwarded-before.Forwarded
	if v.qname == cachedName && (hits != n || fwd != 0) {
		b.Fatalf("%s: %d cache hits and %d forwarded for %d queries, want all from the cache", v.name, hits, fwd, n)
	}
	if v.qname == forwardedName && (fwd != n || hits != 0) {
		b.Fatalf("%s: %d forwarded and %d cache hits for %d queries, want all forwarded", v.name, fwd, hits, n)
	}
}

// warm asks for the cached name once, so that it is in Bridle's cache
// before anything is measured.
func warm(tb testing.TB, c *queryClient, server netip.AddrPort) {
	tb.Helper()
	if _, err := c.query(server, cachedName, 1, 1); err != nil {
		tb.Fatalf("first query for %s: %v", cachedName, err)
	}
}

// BenchmarkDNSResolver: Bridle's resolver on its own. A client process
// queries a real upstream (dnsmasq on loopback) directly, and Bridle's
// resolver for a name it answers from its cache and for one it forwards
// to that upstream every time. The kernel side is a fake here (a map
// lookup for the attribution, a map write for the learned entries), so
// this is the resolver's own cost; BenchmarkDNSSteered is the same through
// the kernel.
func BenchmarkDNSResolver(b *testing.B) {
	upstream := startDnsmasq(b)
	rs := compileNames(b)
	k := &fakeKernel{
		peers:   map[netip.Addr]bridledns.Peer{netip.MustParseAddr("127.0.0.1"): {Slot: 1, Generation: 1, Dest: steeredTo}},
		learned: map[netip.Addr]bridledns.Learned{},
	}
	srv := startResolver(b, upstream, k, policy.NewNameIndex(rs.Names))
	bridle, _ := srv.Addrs()
	client := startQueryClient(b, "", "")
	warm(b, client, bridle)
	interleave(b, queryVariants(client, client, upstream, bridle, srv),
		func(v queryVariant) string { return v.name }, benchQueries)
}

// BenchmarkDNSSteered: the same queries from a confined workload, through
// the kernel. The client process is moved into a Bridle workload (real
// cgroup, Bridle's programs, a task whose rules name the two hosts) and
// sends every query, from a fresh unconnected socket's sendto, to
// 192.0.2.53:53, where nothing listens: the sendmsg hook steers it to
// Bridle's resolver, the egress check records which workload sent it, the
// resolver asks the enforcer (DNSPeer) and writes what the answer allows
// into the kernel (Learn) before it replies, and the recvmsg hook makes
// the reply come from 192.0.2.53:53, which the client checks. The baseline
// is the same client, in a cgroup without programs, asking the upstream.
func BenchmarkDNSSteered(b *testing.B) {
	e := benchEnforcer(b)
	if f := e.Features(); !f.DNSRedirect {
		b.Skipf("DNS steering not available on kernel %s: %s", f.Kernel, f.DNSRedirectReason)
	}
	upstream := startDnsmasq(b)
	rs := compileNames(b)
	srv := startResolver(b, upstream, enforcerKernel{e}, policy.NewNameIndex(rs.Names))
	v4, _ := srv.Addrs()
	if err := e.SetResolver(v4, netip.AddrPort{}); err != nil {
		b.Fatal(err)
	}
	tree := newCgroupTree(b)
	cg := tree.sub(b, "workload")
	workload(b, e, cg, 1, rs)
	confined := startQueryClient(b, tree.root, cg)
	direct := startQueryClient(b, tree.root, tree.sub(b, "plain"))

	// The workload cannot reach the upstream itself: only the steering
	// gets its queries anywhere.
	if _, err := confined.query(upstream, forwardedName, 1, 1); err == nil || !strings.Contains(err.Error(), "operation not permitted") {
		b.Fatalf("confined client querying the upstream %s directly: %v, want EPERM", upstream, err)
	}
	warm(b, confined, steeredTo)
	interleave(b, queryVariants(direct, confined, upstream, steeredTo, srv),
		func(v queryVariant) string { return v.name }, benchQueries)
}

// learnedRegion is where the learned filler addresses come from: disjoint
// from the rules' regions and from loopback.
var learnedRegion = netip.MustParseAddr("172.16.0.0") // a /12: 2^20 addresses

// learnedFiller is n distinct learned addresses, UDP and TCP, the ports
// an agent's names typically allow, living an hour.
func learnedFiller(n int) []loader.LearnedAddr {
	out := make([]loader.LearnedAddr, n)
	expires := time.Now().Add(time.Hour)
	for i := range out {
		proto := policy.ProtoTCP
		if i%4 == 3 {
			proto = policy.ProtoUDP
		}
		out[i] = loader.LearnedAddr{
			Protocol: proto, Addr: addrPlus(learnedRegion, scatter(i, 20)),
			Ports: []policy.PortRange{{First: 443, Last: 443}}, Expires: expires,
		}
	}
	return out
}

// learnedCount is how many learned entries a task holds in the learned
// benchmarks.
const learnedCount = 10_000

// BenchmarkDNSLearn: the time from an answer to its kernel entry. The
// resolver calls Learn with an answer's addresses before it sends the
// reply, so this is how much later the reply leaves because of it, and
// the entry is in force before the workload can read the answer. Measured
// for an answer of one address and for one of eight (a CDN's), into a
// slot that already holds 10k learned entries. Learning an address again
// replaces its entry, as every repeated answer does.
func BenchmarkDNSLearn(b *testing.B) {
	e := benchEnforcer(b)
	if err := e.Learn(1, 1, learnedFiller(learnedCount)); err != nil {
		b.Fatal(err)
	}
	answers := map[int][]loader.LearnedAddr{}
	for _, n := range []int{1, 8} {
		for i := range n {
			answers[n] = append(answers[n], loader.LearnedAddr{
				Protocol: policy.ProtoTCP, Addr: addrPlus(netip.MustParseAddr("10.99.1.0"), uint32(i)),
				Ports: []policy.PortRange{{First: 443, Last: 443}},
			})
		}
	}
	interleave(b, []int{1, 8}, func(n int) string { return fmt.Sprintf("addrs=%d", n) }, func(b *testing.B, n int) {
		addrs := answers[n]
		for b.Loop() {
			expires := time.Now().Add(time.Hour)
			for i := range addrs {
				addrs[i].Expires = expires
			}
			if err := e.Learn(1, 1, addrs); err != nil {
				b.Fatal(err)
			}
		}
	})
}
