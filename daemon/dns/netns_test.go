package dns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/policy"
	"github.com/bridle-sh/bridle/tests/netnstest"
)

// The resolver as pods reach it: a "node" and a "pod" network namespace of
// the test's own, joined by a veth pair, the pod's default route via the
// node's end. The resolver listens in the node namespace on addresses it
// puts on the node's lo; the pod's queries reach them through its route.

var (
	nodeV4, podV4 = netnstest.NodeV4, netnstest.PodV4
	nodeV6, podV6 = netnstest.NodeV6, netnstest.PodV6
	// The resolver's addresses, in the style of NodeLocal DNSCache.
	listenV4 = netip.MustParseAddrPort("169.254.20.10:53")
	listenV6 = netip.MustParseAddrPort("[fd00:b41d::53]:53")
)

// podNetwork is one test's node and pod namespaces.
type podNetwork struct{ node, pod string }

func newPodNetwork(t *testing.T) podNetwork {
	t.Helper()
	n := podNetwork{node: netnstest.New(t), pod: netnstest.New(t)}
	netnstest.ConnectPod(t, n.node, n.pod)
	return n
}

// in runs f on a thread inside the namespace at path: sockets and netlink
// requests f makes are that namespace's. Goroutines f starts are not.
func in(t *testing.T, path string, f func()) { netnstest.Do(t, path, f) }

// hasAddr reports whether a is on lo in the namespace at path.
func hasAddr(t *testing.T, path string, a netip.Addr) bool {
	t.Helper()
	return netnstest.HasAddr(t, netnstest.Handle(t, path), "lo", a)
}

// startOnNode starts a resolver inside the node namespace with cfg's
// listen settings, attributing the pod's addresses to task A. The
// upstream stays on the test's own loopback, where the resolver's
// forwarding goroutines run.
func startOnNode(t *testing.T, n podNetwork, tweak func(*Config)) (*harness, error) {
	t.Helper()
	h := &harness{
		kernel: &fakeKernel{peers: map[netip.Addr]Peer{
			podV4: {CgroupID: 100, Slot: 1, Generation: 7, Dest: netip.MustParseAddrPort("10.96.0.10:53")},
			podV6: {CgroupID: 100, Slot: 1, Generation: 7, Dest: netip.MustParseAddrPort("[fd00:96::a]:53")},
		}},
		tasks:   fakeTasks{1: {TaskID: "t-a", Workload: "/kubepods/pod-a", PolicyRevision: "r1", Names: policy.NewNameIndex(testRules().Names)}},
		up:      newUpstream(t),
		records: &recorder{},
		clock:   &clock{now: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)},
	}
	cfg := Config{
		Upstream: h.up.addr, Kernel: h.kernel, Tasks: h.tasks, Records: h.records, Now: h.clock.Now,
		Timeout: 2 * time.Second, Interface: "lo", Listen4: listenV4, Listen6: listenV6,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		return nil, err
	}
	in(t, n.node, func() { err = srv.Start(context.Background()) })
	if err != nil {
		return nil, err
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
	return h, nil
}

// askFrom sends one query from inside the namespace at path.
func askFrom(t *testing.T, path, proto string, to netip.AddrPort, name string, qtype uint16) (*dns.Msg, error) {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	var r *dns.Msg
	var err error
	in(t, path, func() {
		c := &dns.Client{Net: proto, Timeout: 2 * time.Second}
		r, _, err = c.Exchange(m, to.String())
	})
	return r, err
}

func TestPodReachesResolverOnNodeLink(t *testing.T) {
	n := newPodNetwork(t)
	h, err := startOnNode(t, n, nil)
	if err != nil {
		t.Fatal(err)
	}
	v4, v6 := h.srv.Addrs()
	if v4 != listenV4 || v6 != listenV6 {
		t.Fatalf("listening on %s and %s, want %s and %s", v4, v6, listenV4, listenV6)
	}
	for _, c := range []struct {
		to    netip.AddrPort
		qtype uint16
		want  string
	}{
		{listenV4, dns.TypeA, "192.0.2.10"},
		{listenV6, dns.TypeAAAA, "2001:db8::10"},
	} {
		for _, proto := range []string{"udp", "tcp"} {
			r, err := askFrom(t, n.pod, proto, c.to, "api.example", c.qtype)
			if err != nil {
				t.Fatalf("from the pod to %s over %s: %v", c.to, proto, err)
			}
			if r.Rcode != dns.RcodeSuccess || !slices.Equal(addrsOf(r.Answer), []string{c.want}) {
				t.Errorf("from the pod to %s over %s: %s %v, want NOERROR %s", c.to, proto, dns.RcodeToString[r.Rcode], addrsOf(r.Answer), c.want)
			}
		}
	}
	// The pod's own address named its task: the answer was learned for it.
	if calls := h.kernel.calls(); len(calls) == 0 || calls[0].slot != 1 {
		t.Errorf("learned %+v, want entries for slot 1", calls)
	}

	// The addresses are the node namespace's alone.
	for _, a := range []netip.Addr{listenV4.Addr(), listenV6.Addr()} {
		if !hasAddr(t, n.node, a) {
			t.Errorf("%s is not on the node's lo", a)
		}
		if hasAddr(t, n.pod, a) {
			t.Errorf("%s is on the pod's lo", a)
		}
	}

	// Shut down, the resolver leaves them (the kernel may still steer
	// there); a query finds nothing listening and fails at once.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if !hasAddr(t, n.node, listenV4.Addr()) || !hasAddr(t, n.node, listenV6.Addr()) {
		t.Error("the addresses went with the listeners")
	}
	if _, err := askFrom(t, n.pod, "tcp", listenV4, "api.example", dns.TypeA); !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("with the resolver down, a TCP query: %v, want connection refused", err)
	}
	if err := h.srv.RemoveAddrs(); err != nil {
		t.Fatal(err)
	}
	if hasAddr(t, n.node, listenV4.Addr()) || hasAddr(t, n.node, listenV6.Addr()) {
		t.Error("RemoveAddrs left the addresses it added")
	}
}

// An address that was on the link before is not the resolver's to remove.
func TestResolverKeepsAddressesItFound(t *testing.T) {
	n := newPodNetwork(t)
	netnstest.AddAddr(t, netnstest.Handle(t, n.node), "lo", netip.PrefixFrom(listenV4.Addr(), 32))
	h, err := startOnNode(t, n, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := askFrom(t, n.pod, "udp", listenV4, "api.example", dns.TypeA); err != nil || r.Rcode != dns.RcodeSuccess {
		t.Fatalf("from the pod: %v %v", r, err)
	}
	if err := h.srv.RemoveAddrs(); err != nil {
		t.Fatal(err)
	}
	if !hasAddr(t, n.node, listenV4.Addr()) {
		t.Error("the resolver removed an address it did not add")
	}
	if hasAddr(t, n.node, listenV6.Addr()) {
		t.Error("the resolver left the address it added")
	}
}

// A resolver that cannot listen takes off what it added.
func TestResolverStartFailureRemovesItsAddresses(t *testing.T) {
	n := newPodNetwork(t)
	// The IPv6 port is taken, on every address of the node.
	var taken net.PacketConn
	var err error
	in(t, n.node, func() { taken, err = net.ListenPacket("udp6", "[::]:0") })
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	port := taken.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	_, err = startOnNode(t, n, func(c *Config) { c.Listen6 = netip.AddrPortFrom(listenV6.Addr(), port) })
	if err == nil {
		t.Fatal("the resolver started on a port in use")
	}
	if hasAddr(t, n.node, listenV4.Addr()) || hasAddr(t, n.node, listenV6.Addr()) {
		t.Errorf("after %v, the addresses it added stayed", err)
	}
}

func TestResolverInterfaceRefused(t *testing.T) {
	n := newPodNetwork(t)
	// A link left down (a veth: dummy links may not be built into the kernel).
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "dns0"}, PeerName: "dns1"}
	if err := netnstest.Handle(t, n.node).LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, iface string
		want        string
	}{
		{"missing", "nosuch0", `interface "nosuch0"`},
		{"down", "dns0", `interface "dns0" is down`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := startOnNode(t, n, func(cfg *Config) { cfg.Interface = c.iface })
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("%v, want an error containing %q", err, c.want)
			}
		})
	}
}
