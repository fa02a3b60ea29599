package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/policy"
)

// fakeKernel attributes queries by their source address (tests send from
// different loopback addresses to be different workloads) and records
// what it learns. Learn takes a while, so a reply sent before it finished
// would reach the client before the entry exists.
type fakeKernel struct {
	mu       sync.Mutex
	peers    map[netip.Addr]Peer
	learned  []learnCall
	learnErr error
}

type learnCall struct {
	slot, generation uint32
	addrs            []Learned
}

func (k *fakeKernel) Peer(proto policy.Protocol, src netip.AddrPort) (Peer, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	p, ok := k.peers[src.Addr()]
	if !ok {
		return Peer{}, errors.New("no peer")
	}
	return p, nil
}

func (k *fakeKernel) Learn(slot, generation uint32, addrs []Learned) error {
	time.Sleep(20 * time.Millisecond)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.learnErr != nil {
		return k.learnErr
	}
	k.learned = append(k.learned, learnCall{slot, generation, slices.Clone(addrs)})
	return nil
}

func (k *fakeKernel) calls() []learnCall {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.learned)
}

// fakeTasks maps a slot to its task.
type fakeTasks map[uint32]Asker

func (t fakeTasks) Lookup(p Peer) (Asker, bool) {
	a, ok := t[p.Slot]
	return a, ok
}

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type recorder struct {
	mu   sync.Mutex
	recs []audit.Record
}

func (r *recorder) Record(rec audit.Record) {
	r.mu.Lock()
	r.recs = append(r.recs, rec)
	r.mu.Unlock()
}

// wait returns the records once there are n (they are written after the
// reply).
func (r *recorder) wait(t *testing.T, n int) []audit.Record {
	t.Helper()
	for range 200 {
		r.mu.Lock()
		got := slices.Clone(r.recs)
		r.mu.Unlock()
		if len(got) >= n {
			return got
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("fewer than %d records", n)
	return nil
}

// upstreamServer is a real DNS server on loopback with a small zone and a
// log of the questions it was asked.
type upstreamServer struct {
	addr netip.AddrPort
	mu   sync.Mutex
	log  []string   // "name type proto"
	reqs []*dns.Msg // the queries as they arrived
	zone map[string][]dns.RR
}

// mustRR parses a record of the tests' fixed data.
func mustRR(s string) dns.RR {
	r, err := dns.NewRR(s)
	if err != nil {
		panic(err)
	}
	return r
}

func newUpstream(t testing.TB) *upstreamServer {
	u := &upstreamServer{zone: map[string][]dns.RR{}}
	add := func(name string, rrs ...string) {
		for _, s := range rrs {
			u.zone[name] = append(u.zone[name], mustRR(s))
		}
	}
	add("api.example.", "api.example. 300 IN A 192.0.2.10", "api.example. 300 IN AAAA 2001:db8::10", `api.example. 300 IN TXT "secret"`)
	add("unlisted.example.", "unlisted.example. 300 IN A 192.0.2.99")
	add("short.example.", "short.example. 1 IN A 192.0.2.30")
	add("long.example.", "long.example. 604800 IN A 192.0.2.31")
	// A chain, with records for owners the chain does not reach.
	add("www.example.", "www.example. 300 IN CNAME edge.cdn.net.", "edge.cdn.net. 60 IN A 192.0.2.20",
		"unlisted.example. 300 IN A 192.0.2.66", "other.cdn.net. 300 IN A 192.0.2.67")
	// More than fits the 1232 bytes the resolver offers upstream.
	for i := range 100 {
		add("big.example.", fmt.Sprintf("big.example. 300 IN A 198.51.100.%d", i+1))
	}
	mux := dns.HandlerFunc(u.serve)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	l, err := net.Listen("tcp", u.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: mux}, {Listener: l, Handler: mux}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	return u
}

func (u *upstreamServer) serve(w dns.ResponseWriter, req *dns.Msg) {
	q := req.Question[0]
	_, udp := w.RemoteAddr().(*net.UDPAddr)
	proto := "tcp"
	if udp {
		proto = "udp"
	}
	u.mu.Lock()
	u.log = append(u.log, fmt.Sprintf("%s %s %s", strings.ToLower(q.Name), dns.TypeToString[q.Qtype], proto))
	u.reqs = append(u.reqs, req.Copy())
	u.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(req)
	name := strings.ToLower(q.Name)
	rrs, ok := u.zone[name]
	if !ok && strings.HasSuffix(name, ".wild.example.") {
		rrs, ok = []dns.RR{mustRR(name + " 300 IN A 192.0.2.40")}, true
	}
	if !ok {
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{mustRR("example. 300 IN SOA ns.example. host.example. 1 3600 600 86400 120")}
	}
	for _, r := range rrs {
		if r.Header().Rrtype == q.Qtype || r.Header().Rrtype == dns.TypeCNAME || (name == "www.example." && q.Qtype == dns.TypeA) {
			m.Answer = append(m.Answer, r)
		}
	}
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(opt.UDPSize(), false)
	}
	if udp {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
		m.Truncate(size)
	}
	w.WriteMsg(m)
}

func (u *upstreamServer) asked() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.log)
}

func (u *upstreamServer) wasAsked(name string) bool {
	for _, l := range u.asked() {
		if strings.HasPrefix(l, name+". ") {
			return true
		}
	}
	return false
}

var (
	srcA = netip.MustParseAddr("127.0.0.2") // task A's workload
	srcB = netip.MustParseAddr("127.0.0.3") // task B's workload
	srcX = netip.MustParseAddr("127.0.0.9") // no workload the kernel knows
)

func testRules() policy.RuleSet {
	all := []policy.PortRange{{First: 0, Last: 65535}}
	https := []policy.PortRange{{First: 443, Last: 443}}
	return policy.RuleSet{Names: []policy.NameRule{
		{Protocol: policy.ProtoICMP, Pattern: "api.example", Ports: all},
		{Protocol: policy.ProtoTCP, Pattern: "*.wild.example", Ports: https},
		{Protocol: policy.ProtoTCP, Pattern: "api.example", Ports: https},
		{Protocol: policy.ProtoTCP, Pattern: "big.example", Ports: https},
		{Protocol: policy.ProtoTCP, Pattern: "short.example", Ports: https},
		{Protocol: policy.ProtoTCP, Pattern: "long.example", Ports: https},
		{Protocol: policy.ProtoTCP, Pattern: "www.example", Ports: https},
	}}
}

type harness struct {
	srv     *Server
	kernel  *fakeKernel
	tasks   fakeTasks
	up      *upstreamServer
	records *recorder
	clock   *clock
	addr    netip.AddrPort // the resolver's IPv4 address
}

func start(t *testing.T, tweak func(*Config)) *harness {
	t.Helper()
	h := &harness{
		kernel: &fakeKernel{peers: map[netip.Addr]Peer{
			srcA: {CgroupID: 100, Slot: 1, Generation: 7, Dest: netip.MustParseAddrPort("8.8.8.8:53")},
			srcB: {CgroupID: 200, Slot: 2, Generation: 9, Dest: netip.MustParseAddrPort("1.1.1.1:53")},
		}},
		tasks: fakeTasks{
			1: {TaskID: "t-a", Identity: "spiffe://test/a", Workload: "/bridle.run/a", PolicyRevision: "r1", Names: policy.NewNameIndex(testRules().Names)},
			2: {TaskID: "t-b", Identity: "spiffe://test/b", Workload: "/bridle.run/b", PolicyRevision: "r1", Names: policy.NewNameIndex(testRules().Names)},
		},
		up:      newUpstream(t),
		records: &recorder{},
		clock:   &clock{now: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)},
	}
	cfg := Config{
		Upstream: h.up.addr, Kernel: h.kernel, Tasks: h.tasks, Records: h.records, Now: h.clock.Now,
		Timeout: 2 * time.Second, Node: "n1",
	}
	if tweak != nil {
		tweak(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	h.srv = srv
	h.addr, _ = srv.Addrs()
	return h
}

// query asks the resolver from src over proto ("udp" or "tcp").
func (h *harness) query(t *testing.T, src netip.Addr, proto, name string, qtype uint16, edns bool) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	if edns {
		m.SetEdns0(1232, false)
	}
	c := &dns.Client{Net: proto, Timeout: 3 * time.Second, Dialer: &net.Dialer{LocalAddr: localAddr(proto, src)}}
	r, _, err := c.Exchange(m, h.addr.String())
	if err != nil {
		t.Fatalf("%s %s over %s: %v", name, dns.TypeToString[qtype], proto, err)
	}
	return r
}

func localAddr(proto string, src netip.Addr) net.Addr {
	if proto == "tcp" {
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
	}
	return net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
}

// resolver is Go's own stub resolver, sending from src to the resolver.
func (h *harness) resolver(src netip.Addr) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: localAddr(network[:3], src)}
		return d.DialContext(ctx, network, h.addr.String())
	}}
}

func addrsOf(rrs []dns.RR) []string {
	var out []string
	for _, r := range rrs {
		if a, ok := address(r); ok {
			out = append(out, a.String())
		}
	}
	return out
}
