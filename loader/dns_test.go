package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/policy"
)

// dnsClientEnv makes this test binary a DNS client for the workload side
// of the tests below: run in a confined cgroup, it uses the socket calls a
// stub resolver does and prints what it saw.
const dnsClientEnv = "BRIDLE_TEST_DNS_CLIENT"

func init() {
	if os.Getenv(dnsClientEnv) == "" {
		return
	}
	out, err := dnsClient(os.Args[1:])
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println(out)
	os.Exit(0)
}

// dnsClient runs one client action:
//
//	udp ADDRPORT            unconnected sendto, recvfrom; prints the reply's source
//	udp-from SRC ADDRPORT   udp, from IPv4 source SRC (SO_REUSEADDR)
//	udp-connected ADDRPORT  connect, send, recvfrom; prints the reply's source
//	tcp ADDRPORT            connect, a length-prefixed query and its answer; prints getpeername
//	connect ADDRPORT        a TCP connect; prints "ok"
//
// An IPv4-mapped ADDRPORT is sent from an IPv6 socket.
func dnsClient(args []string) (string, error) {
	var src netip.AddrPort
	if len(args) == 3 && args[0] == "udp-from" {
		var err error
		if src, err = netip.ParseAddrPort(args[1]); err != nil {
			return "", err
		}
		args = []string{"udp", args[2]}
	}
	if len(args) != 2 {
		return "", fmt.Errorf("usage: udp|udp-connected|tcp|connect ADDRPORT, udp-from SRC ADDRPORT")
	}
	dst, err := netip.ParseAddrPort(args[1])
	if err != nil {
		return "", err
	}
	typ := unix.SOCK_DGRAM
	if args[0] == "tcp" || args[0] == "connect" {
		typ = unix.SOCK_STREAM
	}
	fam := unix.AF_INET6
	var sa unix.Sockaddr = &unix.SockaddrInet6{Addr: dst.Addr().As16(), Port: int(dst.Port())}
	if dst.Addr().Is4() {
		fam = unix.AF_INET
		sa = &unix.SockaddrInet4{Addr: dst.Addr().As4(), Port: int(dst.Port())}
	}
	fd, err := unix.Socket(fam, typ, 0)
	if err != nil {
		return "", fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	if src.IsValid() {
		// As a second socket on another's source would.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return "", fmt.Errorf("SO_REUSEADDR: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: src.Addr().As4(), Port: int(src.Port())}); err != nil {
			return "", fmt.Errorf("bind: %w", err)
		}
	}
	tv := unix.NsecToTimeval(int64(3 * time.Second))
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	query := []byte("bridle-query")
	switch args[0] {
	case "udp":
		if err := unix.Sendto(fd, query, 0, sa); err != nil {
			return "", fmt.Errorf("sendto: %w", err)
		}
	case "udp-connected", "tcp", "connect":
		if err := unix.Connect(fd, sa); err != nil {
			return "", fmt.Errorf("connect: %w", err)
		}
		if args[0] == "connect" {
			return "ok", nil
		}
		if args[0] == "tcp" {
			query = append(binary.BigEndian.AppendUint16(nil, uint16(len(query))), query...)
		}
		if _, err := unix.Write(fd, query); err != nil {
			return "", fmt.Errorf("send: %w", err)
		}
	default:
		return "", fmt.Errorf("unknown action %q", args[0])
	}
	buf := make([]byte, 512)
	n, from, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return "", fmt.Errorf("recvfrom: %w", err)
	}
	if !strings.Contains(string(buf[:n]), "bridle-answer") {
		return "", fmt.Errorf("answer %q", buf[:n])
	}
	if args[0] == "tcp" {
		if from, err = unix.Getpeername(fd); err != nil {
			return "", fmt.Errorf("getpeername: %w", err)
		}
	}
	switch a := from.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String(), nil
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)).String(), nil
	}
	return "", fmt.Errorf("source %T", from)
}

// runClient runs the client in a cgroup and returns its output line.
func runClient(t *testing.T, cg string, args ...string) (string, error) {
	t.Helper()
	t.Setenv(dnsClientEnv, "1")
	out, err := runIn(t, cg, os.Args[0], args...)
	return strings.TrimSpace(out), err
}

// testResolver is a stand-in for Bridle's resolver: it attributes every
// query with DNSPeer and answers it.
type testResolver struct {
	mu    sync.Mutex
	peers []DNSPeer
	errs  []error
}

func (r *testResolver) record(p DNSPeer, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.errs = append(r.errs, err)
		return
	}
	r.peers = append(r.peers, p)
}

// take returns what was recorded since the last call.
func (r *testResolver) take() ([]DNSPeer, []error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, e := r.peers, r.errs
	r.peers, r.errs = nil, nil
	return p, e
}

// serve listens on UDP and TCP at the same port of addr (a free one).
func (r *testResolver) serve(t *testing.T, e *Enforcer, addr string) netip.AddrPort {
	t.Helper()
	for range 20 {
		uc, err := net.ListenPacket("udp", net.JoinHostPort(addr, "0"))
		if err != nil {
			t.Fatal(err)
		}
		ap := uc.LocalAddr().(*net.UDPAddr).AddrPort()
		ln, err := net.Listen("tcp", ap.String())
		if err != nil {
			uc.Close()
			continue
		}
		t.Cleanup(func() { uc.Close(); ln.Close() })
		go func() {
			buf := make([]byte, 512)
			for {
				n, from, err := uc.ReadFrom(buf)
				if err != nil {
					return
				}
				r.record(e.DNSPeer(policy.ProtoUDP, from.(*net.UDPAddr).AddrPort()))
				_, _ = uc.WriteTo(append(buf[:n:n], " bridle-answer"...), from)
			}
		}()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				r.record(e.DNSPeer(policy.ProtoTCP, c.RemoteAddr().(*net.TCPAddr).AddrPort()))
				var l [2]byte
				if _, err := io.ReadFull(c, l[:]); err == nil {
					q := make([]byte, binary.BigEndian.Uint16(l[:]))
					if _, err := io.ReadFull(c, q); err == nil {
						a := append(q, " bridle-answer"...)
						_, _ = c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(a))), a...))
					}
				}
				c.Close()
			}
		}()
		return ap
	}
	t.Fatal("no port free for UDP and TCP at once")
	return netip.AddrPort{}
}

// dnsWorkload is a confined cgroup bound to slot 1 (generation 1), whose
// task may run this test binary and nothing else.
func dnsWorkload(t *testing.T, e *Enforcer, listen ...policy.ListenRule) (string, uint64) {
	t.Helper()
	cg, id := testCgroup(t)
	if err := e.AttachCgroup(cg); err != nil {
		t.Fatal(err)
	}
	rs, err := policy.Compile(policy.Envelope{Listen: listen, Exec: []policy.ExecRule{{Path: os.Args[0]}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, slot := range []uint32{1, 2} {
		if err := e.WriteRules(slot, rs); err != nil {
			t.Fatal(err)
		}
		if err := e.SetTask(slot, time.Time{}, 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.BindWorkload(id, 1, WorkloadMode{}); err != nil {
		t.Fatal(err)
	}
	return cg, id
}

// A workload's DNS to any address on port 53, over UDP (unconnected and
// connected, IPv4, IPv6 and IPv4-mapped) and TCP, reaches the resolver;
// the answer seems to come from where the query was sent; the resolver
// learns from the kernel which workload asked.
func TestDNSSteeredToResolver(t *testing.T) {
	e := testEnforcer(t)
	if !e.Features().DNSRedirect {
		t.Fatalf("DNS steering not available on kernel %s: %s", e.Features().Kernel, e.Features().DNSRedirectReason)
	}
	t.Log(e.Features().DNSRedirectReason)
	var res testResolver
	v4 := res.serve(t, e, "127.0.0.1")
	v6 := res.serve(t, e, "::1")
	if err := e.SetResolver(v4, v6); err != nil {
		t.Fatal(err)
	}
	cg, id := dnsWorkload(t, e)

	cases := []struct {
		args  []string
		proto policy.Protocol
		from  string // the answer's source as the client saw it
		dest  string // DNSPeer's original destination
	}{
		{[]string{"udp", "192.0.2.1:53"}, policy.ProtoUDP, "192.0.2.1:53", "192.0.2.1:53"},
		{[]string{"udp", "[2001:db8::1]:53"}, policy.ProtoUDP, "[2001:db8::1]:53", "[2001:db8::1]:53"},
		{[]string{"udp", "[::ffff:192.0.2.7]:53"}, policy.ProtoUDP, "[::ffff:192.0.2.7]:53", "192.0.2.7:53"},
		{[]string{"udp-connected", "192.0.2.1:53"}, policy.ProtoUDP, "192.0.2.1:53", "192.0.2.1:53"},
		{[]string{"udp-connected", "[2001:db8::1]:53"}, policy.ProtoUDP, "[2001:db8::1]:53", "[2001:db8::1]:53"},
		{[]string{"udp-connected", "[::ffff:192.0.2.7]:53"}, policy.ProtoUDP, "[::ffff:192.0.2.7]:53", "192.0.2.7:53"},
		{[]string{"tcp", "[::ffff:192.0.2.7]:53"}, policy.ProtoTCP, "[::ffff:192.0.2.7]:53", "192.0.2.7:53"},
		{[]string{"tcp", "192.0.2.1:53"}, policy.ProtoTCP, "192.0.2.1:53", "192.0.2.1:53"},
		{[]string{"tcp", "[2001:db8::1]:53"}, policy.ProtoTCP, "[2001:db8::1]:53", "[2001:db8::1]:53"},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, "_"), func(t *testing.T) {
			out, err := runClient(t, cg, c.args...)
			if err != nil {
				t.Fatalf("%v: %v %q", c.args, err, out)
			}
			if c.args[0] == "tcp" && e.dnsPeername == nil {
				t.Logf("getpeername names %s: %s", out, e.Features().DNSRedirectReason)
			} else if out != c.from {
				t.Fatalf("%v: answer from %s, want %s", c.args, out, c.from)
			}
			peers, errs := res.take()
			if len(errs) > 0 || len(peers) != 1 {
				t.Fatalf("resolver saw peers %+v, errors %v; want one peer", peers, errs)
			}
			p := peers[0]
			if p.CgroupID != id || p.Slot != 1 || p.Generation != 1 || p.Dest.String() != c.dest {
				t.Fatalf("peer %+v, want cgroup %d, slot 1, generation 1, dest %s", p, id, c.dest)
			}
		})
	}

	// A source nobody confined sent from is nobody's.
	if _, err := e.DNSPeer(policy.ProtoUDP, netip.MustParseAddrPort("127.0.0.1:1")); !errors.Is(err, ErrNoPeer) {
		t.Fatalf("unknown source: %v, want ErrNoPeer", err)
	}
}

// Without a resolver for a family, port 53 is a destination like any
// other. The resolver's own address and port are reachable directly, and
// what is sent there is attributed as steered queries are.
func TestDNSWithoutResolverJudgedByRules(t *testing.T) {
	e := testEnforcer(t)
	var res testResolver
	v4 := res.serve(t, e, "127.0.0.1")
	cg, id := dnsWorkload(t, e)

	out, err := runClient(t, cg, "udp", "127.0.0.1:53")
	if err == nil || !strings.Contains(out, "operation not permitted") {
		t.Fatalf("port 53 without a resolver: %v %q, want EPERM", err, out)
	}
	// An IPv4 resolver only: IPv6 port 53 is still the rules'.
	if err := e.SetResolver(v4, netip.AddrPort{}); err != nil {
		t.Fatal(err)
	}
	if out, err := runClient(t, cg, "udp", "[2001:db8::1]:53"); err == nil || !strings.Contains(out, "operation not permitted") {
		t.Fatalf("IPv6 port 53 with an IPv4 resolver only: %v %q, want EPERM", err, out)
	}
	if out, err := runClient(t, cg, "udp", "192.0.2.1:53"); err != nil || out != "192.0.2.1:53" {
		t.Fatalf("IPv4 port 53: %v %q", err, out)
	}
	// Straight to the resolver's address and port: allowed, and
	// attributed all the same.
	res.take()
	if out, err := runClient(t, cg, "udp", v4.String()); err != nil || out != v4.String() {
		t.Fatalf("direct to the resolver: %v %q", err, out)
	}
	if peers, errs := res.take(); len(errs) > 0 || len(peers) != 1 || peers[0].CgroupID != id || peers[0].Dest != v4 {
		t.Fatalf("direct query: peers %+v, errors %v", peers, errs)
	}
	// Another port of its address is the rules' to judge.
	other := netip.AddrPortFrom(v4.Addr(), v4.Port()+1)
	if out, err := runClient(t, cg, "udp", other.String()); err == nil || !strings.Contains(out, "operation not permitted") {
		t.Fatalf("another port of the resolver's address: %v %q, want EPERM", err, out)
	}
	if err := e.SetResolver(netip.AddrPort{}, netip.AddrPort{}); err != nil {
		t.Fatal(err)
	}
	if out, err := runClient(t, cg, "udp", "192.0.2.1:53"); err == nil || !strings.Contains(out, "operation not permitted") {
		t.Fatalf("port 53 after the resolver was unset: %v %q, want EPERM", err, out)
	}
	res.take()
}

// Learned addresses allow their ports to the task that learned them, until
// they expire, and nothing else.
func TestLearnedAddresses(t *testing.T) {
	e := testEnforcer(t)
	cg, id := dnsWorkload(t, e)
	port4 := acceptAll(t, "tcp4", "127.0.0.2:0")
	port6 := acceptAll(t, "tcp6", "[::1]:0")
	dst4 := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port4)
	dst6 := netip.AddrPortFrom(netip.IPv6Loopback(), port6)
	other4 := netip.AddrPortFrom(dst4.Addr(), port4+1)

	connect := func(dst netip.AddrPort, want bool) {
		t.Helper()
		out, err := runClient(t, cg, "connect", dst.String())
		if want && (err != nil || out != "ok") {
			t.Fatalf("connect %s: %v %q, want ok", dst, err, out)
		}
		if !want && (err == nil || !strings.Contains(out, "operation not permitted")) {
			t.Fatalf("connect %s: %v %q, want EPERM", dst, err, out)
		}
	}
	learn := func(slot, gen uint32, expires time.Time) {
		t.Helper()
		err := e.Learn(slot, gen, []LearnedAddr{
			{Protocol: policy.ProtoTCP, Addr: dst4.Addr(), Ports: []policy.PortRange{{First: port4, Last: port4}}, Expires: expires},
			{Protocol: policy.ProtoTCP, Addr: dst6.Addr(), Ports: []policy.PortRange{{First: port6, Last: port6}}, Expires: expires},
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	connect(dst4, false) // before it was learned
	learn(1, 1, time.Now().Add(time.Hour))
	connect(dst4, true)
	connect(dst6, true)
	connect(other4, false) // a port the name does not allow

	rd, err := e.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	connect(other4, false)
	if ev := readUntil(t, rd, func(ev Event) bool { return ev.Action == "connect" && ev.Port == other4.Port() }); ev.Reason != "port not allowed" {
		t.Fatalf("refusal of a learned address's other port: %+v", ev)
	}

	// Another slot does not see slot 1's entries.
	if err := e.BindWorkload(id, 2, WorkloadMode{}); err != nil {
		t.Fatal(err)
	}
	connect(dst4, false)
	if err := e.BindWorkload(id, 1, WorkloadMode{}); err != nil {
		t.Fatal(err)
	}

	// A new task in the slot does not inherit them.
	if err := e.SetTask(1, time.Time{}, 2); err != nil {
		t.Fatal(err)
	}
	connect(dst4, false)
	learn(1, 2, time.Now().Add(time.Hour))
	connect(dst4, true)

	// The kernel ends an entry at its expiry.
	learn(1, 2, time.Now().Add(300*time.Millisecond))
	connect(dst4, true)
	time.Sleep(400 * time.Millisecond)
	connect(dst4, false)
	connect(dst6, false)

	// Unlearn deletes an entry, and a missing one is no error.
	learn(1, 2, time.Now().Add(time.Hour))
	gone := []LearnedAddr{{Protocol: policy.ProtoTCP, Addr: dst4.Addr()}}
	if err := e.Unlearn(1, gone); err != nil {
		t.Fatal(err)
	}
	connect(dst4, false)
	connect(dst6, true)
	if err := e.Unlearn(1, gone); err != nil {
		t.Fatalf("unlearning what is gone: %v", err)
	}

	// ClearSlot forgets them.
	learn(1, 2, time.Now().Add(time.Hour))
	if err := e.ClearSlot(1); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*ebpf.Map{e.net.BridleLearn4, e.net.BridleLearn6} {
		var k, v []byte
		if it := m.Iterate(); it.Next(&k, &v) {
			t.Fatalf("%s still holds an entry after ClearSlot", m)
		}
	}
	learn(1, 2, time.Now().Add(time.Hour))
	if err := e.ClearSlotsExcept(map[uint32]bool{2: true}); err != nil {
		t.Fatal(err)
	}
	var k, v []byte
	if it := e.net.BridleLearn4.Iterate(); it.Next(&k, &v) {
		t.Fatal("bridle_learn4 still holds an entry after ClearSlotsExcept")
	}

	// What Learn refuses.
	now := time.Now().Add(time.Hour)
	for _, bad := range []LearnedAddr{
		{Protocol: policy.ProtoTCP, Addr: dst4.Addr(), Expires: now},                                                  // no ports
		{Protocol: policy.ProtoTCP, Addr: dst4.Addr(), Ports: []policy.PortRange{{First: 1, Last: 1}}},                // no expiry
		{Protocol: policy.ProtoICMP, Addr: dst4.Addr(), Ports: []policy.PortRange{{First: 1, Last: 1}}, Expires: now}, // icmp ports
		{Protocol: policy.ProtoAny, Addr: dst4.Addr(), Ports: []policy.PortRange{{First: 1, Last: 1}}, Expires: now},  // not compiled
		{Protocol: policy.ProtoTCP, Addr: netip.Addr{}, Ports: []policy.PortRange{{First: 1, Last: 1}}, Expires: now}, // no address
	} {
		if err := e.Learn(1, 1, []LearnedAddr{bad}); err == nil {
			t.Errorf("Learn(%+v) accepted", bad)
		}
	}
}

// acceptAll listens on addr and accepts (and closes) every connection.
func acceptAll(t *testing.T, network, addr string) uint16 {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	_, p, _ := net.SplitHostPort(ln.Addr().String())
	n, _ := strconv.Atoi(p)
	return uint16(n)
}

// Two workloads' sockets can send from one source address and port
// (SO_REUSEADDR, or one after the other): the second may not take over the
// first one's attribution while it is held, so its packet is dropped and
// the resolver still sees the first.
func TestDNSSourceTakeoverRefused(t *testing.T) {
	e := testEnforcer(t)
	var res testResolver
	v4 := res.serve(t, e, "127.0.0.1")
	if err := e.SetResolver(v4, netip.AddrPort{}); err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	src := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	pc.Close()
	listen := policy.ListenRule{Protocol: policy.ProtoUDP, Ports: []policy.PortRange{{First: src.Port(), Last: src.Port()}}}
	cgA, idA := dnsWorkload(t, e, listen)
	cgB, idB := dnsWorkload(t, e, listen)
	if err := e.BindWorkload(idB, 2, WorkloadMode{}); err != nil {
		t.Fatal(err)
	}

	if out, err := runClient(t, cgA, "udp-from", src.String(), "192.0.2.1:53"); err != nil || out != "192.0.2.1:53" {
		t.Fatalf("first workload: %v %q", err, out)
	}
	out, err := runClient(t, cgB, "udp-from", src.String(), "192.0.2.9:53")
	if err == nil || !strings.Contains(out, "operation not permitted") {
		t.Fatalf("second workload from the same source: %v %q, want EPERM", err, out)
	}
	p, err := e.DNSPeer(policy.ProtoUDP, src)
	if err != nil || p.CgroupID != idA || p.Slot != 1 || p.Dest.String() != "192.0.2.1:53" {
		t.Fatalf("peer of %s: %+v %v, want the first workload (cgroup %d)", src, p, err, idA)
	}
	// The first workload itself may send from it again, from a new socket.
	if out, err := runClient(t, cgA, "udp-from", src.String(), "192.0.2.3:53"); err != nil || out != "192.0.2.3:53" {
		t.Fatalf("first workload again: %v %q", err, out)
	}
	if p, err := e.DNSPeer(policy.ProtoUDP, src); err != nil || p.CgroupID != idA || p.Dest.String() != "192.0.2.3:53" {
		t.Fatalf("peer of %s: %+v %v", src, p, err)
	}
}

// The resolver setting and learned addresses are pinned: a restarted
// daemon finds them. A pin directory of a version without these maps (an
// upgrade) gets them created.
func TestDNSStateSurvivesReload(t *testing.T) {
	requireRoot(t)
	dir := filepath.Join(DefaultPinRoot, "test", fmt.Sprintf("dns-reload-%d", time.Now().UnixNano()))
	t.Cleanup(func() { _ = RemovePins(dir) })

	first, err := Load(Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	first.Close()
	// As an earlier version left the directory.
	for _, name := range []string{"bridle_dnsconf", "bridle_dnsorig", "bridle_dnspeers", "bridle_learn4", "bridle_learn6"} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}

	second, err := Load(Options{PinDir: dir})
	if err != nil {
		t.Fatalf("load over a pin directory without the DNS maps: %v", err)
	}
	resolver := netip.MustParseAddrPort("127.0.0.1:5353")
	if err := second.SetResolver(resolver, netip.AddrPort{}); err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddr("198.51.100.7")
	err = second.Learn(5, 9, []LearnedAddr{{Protocol: policy.ProtoTCP, Addr: addr,
		Ports: []policy.PortRange{{First: 443, Last: 443}}, Expires: time.Now().Add(time.Hour)}})
	second.Close()
	if err != nil {
		t.Fatal(err)
	}

	third, err := Load(Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	var r netBridleResolver
	if err := third.net.BridleDnsconf.Lookup(uint32(0), &r); err != nil || r.Addr4 != resolver.Addr().As4() || r.Port4 != resolver.Port() {
		t.Fatalf("resolver after reload: %+v %v", r, err)
	}
	var v netBridleLearned
	k := netBridleLearn4Key{Slot: 5, Proto: uint32(policy.ProtoTCP), Addr: addr.As4()}
	if err := third.net.BridleLearn4.Lookup(&k, &v); err != nil || v.Generation != 9 || v.Ports.Count != 1 {
		t.Fatalf("learned address after reload: %+v %v", v, err)
	}
}
