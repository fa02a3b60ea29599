package e2e

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/daemon/audit"
)

// The connect and sendmsg hooks judge the address a program passes to the
// kernel, not the packet the kernel builds from it. An IPv6 routing header
// or an IPv4 source route makes the packet go to another address first, so
// a workload allowed one host could send to any other. These tests send one
// datagram to the allowed address through the other one and watch the wire
// (the test namespace's loopback) for a packet to the other address.

// The allowed host and the one a routing header would reach instead.
var (
	allowed6 = netip.MustParseAddr("fd99::2")
	other6   = netip.MustParseAddr("fd99::3")
	allowed4 = netip.MustParseAddr("127.0.0.2")
	other4   = netip.MustParseAddr("127.0.0.3")
)

// netStatus is what `bridle status --json` says about the hooks these
// tests need.
type netStatus struct {
	ListenHooks   bool   `json:"listen_hooks"`
	ListenReason  string `json:"listen_reason"`
	SockoptHook   bool   `json:"sockopt_hook"`
	SockoptReason string `json:"sockopt_reason"`
}

var (
	netOnce     sync.Once
	netFeatures netStatus
)

func netHooks(t testing.TB) netStatus {
	t.Helper()
	netOnce.Do(func() {
		out, err := exec.Command(bridleBin, "status", "--json").Output()
		if err == nil {
			err = json.Unmarshal(out, &netFeatures)
		}
		if err != nil {
			t.Fatalf("bridle status: %v", err)
		}
	})
	return netFeatures
}

// Reasons as records spell them (loader's reason names).
const (
	reasonSockopt   = "option can send packets elsewhere"
	reasonExtHeader = "packet has routing or extension headers or IP options"
)

// routeHosts puts the two IPv6 test hosts on the namespace's loopback.
func routeHosts(t testing.TB) {
	t.Helper()
	for _, a := range []netip.Addr{allowed6, other6} {
		// Loopback addresses skip duplicate address detection: usable at
		// once. (busybox's ip, in the kernel guests, has no replace or nodad.)
		out, err := exec.Command("nsenter", "--net="+netnsPath, "ip", "-6", "addr", "add", a.String()+"/128", "dev", "lo").CombinedOutput()
		if err != nil && !strings.Contains(string(out), "exists") && !strings.Contains(string(out), "already assigned") {
			t.Fatalf("add %s to lo: %v %s", a, err, out)
		}
	}
}

// wire records, from a packet socket on the test namespace's loopback, the
// destination of every IP packet that carries one of the markers handed
// out by marker.
type wire struct {
	fd   int
	mu   sync.Mutex
	seen map[string]map[netip.Addr]bool // marker -> destinations
	stop chan struct{}
	done chan struct{}
}

func watchWire(t testing.TB) *wire {
	t.Helper()
	w := &wire{seen: map[string]map[netip.Addr]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	inNetns(t, func() {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			t.Fatalf("packet socket: %v", err)
		}
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: lo.Index}); err != nil {
			t.Fatalf("bind packet socket to lo: %v", err)
		}
		tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			t.Fatal(err)
		}
		w.fd = fd
	})
	go w.read()
	t.Cleanup(func() {
		close(w.stop)
		<-w.done
		unix.Close(w.fd)
	})
	return w
}

func (w *wire) read() {
	defer close(w.done)
	buf := make([]byte, 65536)
	for {
		select {
		case <-w.stop:
			return
		default:
		}
		n, _, err := unix.Recvfrom(w.fd, buf, 0)
		if err != nil {
			continue // the receive timeout: look at stop again
		}
		pkt := buf[:n]
		var dst netip.Addr
		switch {
		case n >= 20 && pkt[0]>>4 == 4:
			dst = netip.AddrFrom4([4]byte(pkt[16:20]))
		case n >= 40 && pkt[0]>>4 == 6:
			dst = netip.AddrFrom16([16]byte(pkt[24:40]))
		default:
			continue
		}
		w.mu.Lock()
		for m, dsts := range w.seen {
			if bytes.Contains(pkt, []byte(m)) {
				dsts[dst] = true
			}
		}
		w.mu.Unlock()
	}
}

// marker returns a payload no other packet carries, and starts looking
// for it.
func (w *wire) marker(tag string) string {
	m := fmt.Sprintf("bridle-%s-%d-%d", tag, os.Getpid(), time.Now().UnixNano())
	w.mu.Lock()
	w.seen[m] = map[netip.Addr]bool{}
	w.mu.Unlock()
	return m
}

// destinations returns where packets carrying m went, after giving the
// last of them a moment to be read.
func (w *wire) destinations(m string) []netip.Addr {
	time.Sleep(200 * time.Millisecond)
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []netip.Addr
	for a := range w.seen[m] {
		out = append(out, a)
	}
	return out
}

// wantNotDelivered fails the test if a packet carrying m went to other.
func (w *wire) wantNotDelivered(t testing.TB, m string, other netip.Addr) {
	t.Helper()
	dsts := w.destinations(m)
	t.Logf("packets carrying the marker went to %v", dsts)
	for _, a := range dsts {
		if a == other {
			t.Fatalf("a packet the workload addressed to an allowed host left for %s, which no rule allows", other)
		}
	}
}

// htons puts a 16-bit value in network byte order, as packet sockets take
// protocol numbers.
func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// wantRouteRefused checks a refusal of action, recorded with reason and the
// details want checks.
func wantRouteRefused(t testing.TB, r result, action, reason string, want func(audit.Record) bool) {
	t.Helper()
	rec := wantRefused(t, r, action, "udp")
	if rec.Reason != reason || !want(rec) {
		t.Fatalf("record %+v", rec)
	}
	if !strings.Contains(r.stderr, "no flag allows this") {
		t.Fatalf("the denial line should say that no flag allows this:\n%s", r.stderr)
	}
}

// wantSockoptRefused checks a source routing option was refused at
// setsockopt and recorded. Where the kernel took no setsockopt program,
// the packet check must drop the datagram instead; where the kernel
// refused the option itself, there is nothing left to test (false).
func wantSockoptRefused(t *testing.T, r result, other netip.Addr) bool {
	t.Helper()
	if nh := netHooks(t); !nh.SockoptHook {
		if strings.HasPrefix(r.probeLine(), "EPERM setsockopt") && len(r.records) == 0 {
			t.Skipf("kernel %s refuses this option to the workload itself, and runs no setsockopt program (%s)", features.Kernel, nh.SockoptReason)
		}
		t.Logf("no setsockopt program on kernel %s (%s): the packet check must drop the datagram", features.Kernel, nh.SockoptReason)
		wantRouteRefused(t, r, "sendmsg", reasonExtHeader, func(rec audit.Record) bool { return rec.Address == other.String() })
		return false
	}
	if r.status != 2 || !strings.HasPrefix(r.probeLine(), "EPERM setsockopt") {
		t.Fatalf("want EPERM setsockopt, got status %d line %q\n%s", r.status, r.probeLine(), r.stderr)
	}
	rec := wantRecord(t, r, "deny", "setsockopt", "udp")
	if rec.Reason != reasonSockopt || !strings.Contains(r.stderr, "no flag allows this") {
		t.Fatalf("record %+v\n%s", rec, r.stderr)
	}
	return true
}

func TestEscapeIPv6RoutingHeaderSockopt(t *testing.T) {
	routeHosts(t)
	w := watchWire(t)
	allow := []string{"--allow-connect", "udp:[fd99::2]:5300"}
	to := "[fd99::2]:5300"

	t.Run("without a header the datagram goes where it was sent", func(t *testing.T) {
		wantAllowed(t, probe(t, allow, "udp-sendto", to))
	})
	t.Run("routing header refused", func(t *testing.T) {
		m := w.marker("rthdr6")
		r := probe(t, allow, "rthdr6", to, other6.String(), m)
		w.wantNotDelivered(t, m, other6)
		if !wantSockoptRefused(t, r, other6) {
			return
		}
		if rec := wantRecord(t, r, "deny", "setsockopt", "udp"); rec.Path != "IPV6_RTHDR" {
			t.Fatalf("record %+v", rec)
		}
	})
	t.Run("audit mode records and lets it through", func(t *testing.T) {
		if !netHooks(t).SockoptHook {
			t.Skipf("no setsockopt program on kernel %s: %s", features.Kernel, netHooks(t).SockoptReason)
		}
		r := probe(t, append([]string{"--mode", "audit"}, allow...), "rthdr6", to, other6.String(), w.marker("rthdr6-audit"))
		wantAllowed(t, r)
		wantRecord(t, r, "would-deny", "setsockopt", "udp")
	})
}

func TestEscapeIPv6RoutingHeaderCmsg(t *testing.T) {
	routeHosts(t)
	w := watchWire(t)
	allow := []string{"--allow-connect", "udp:[fd99::2]:5300"}
	to := "[fd99::2]:5300"
	dropped := func(rec audit.Record) bool { return rec.Address == other6.String() && rec.Port == 5300 }

	t.Run("ancillary data", func(t *testing.T) {
		m := w.marker("rthdr6-cmsg")
		r := probe(t, allow, "rthdr6-cmsg", to, other6.String(), m)
		w.wantNotDelivered(t, m, other6)
		if r.probeLine() == "error EINVAL" {
			t.Skipf("kernel %s refuses routing headers as ancillary data (only type 2 is accepted there, with CONFIG_IPV6_MIP6): this path does not exist on it", features.Kernel)
		}
		wantRouteRefused(t, r, "sendmsg", reasonExtHeader, dropped)
	})
	// The kernel runs no cgroup setsockopt program for 32-bit system calls,
	// so only the packet check stands between such a program and the
	// routing header.
	t.Run("32-bit setsockopt", func(t *testing.T) {
		m := w.marker("rthdr6-compat")
		r := probe(t, allow, "rthdr6-compat", to, other6.String(), m)
		w.wantNotDelivered(t, m, other6)
		if strings.HasPrefix(r.probeLine(), "error ENOSYS") {
			t.Skipf("kernel %s runs no 32-bit system calls: this path does not exist on it", features.Kernel)
		}
		wantRouteRefused(t, r, "sendmsg", reasonExtHeader, dropped)
	})
}

// Newer kernels (6.18 here) refuse IPv4 source routes to processes without
// CAP_NET_RAW themselves; Bridle's setsockopt program runs before that
// check, so its refusal and record are the same on every kernel.
func TestEscapeIPv4OptionsSockopt(t *testing.T) {
	w := watchWire(t)
	allow := []string{"--allow-connect", "udp:127.0.0.2:5300"}
	t.Run("source route refused", func(t *testing.T) {
		m := w.marker("srr4")
		r := probe(t, allow, "srr4", "127.0.0.2:5300", other4.String(), m)
		w.wantNotDelivered(t, m, other4)
		if !wantSockoptRefused(t, r, other4) {
			return
		}
		if rec := wantRecord(t, r, "deny", "setsockopt", "udp"); rec.Path != "IP_OPTIONS" {
			t.Fatalf("record %+v", rec)
		}
	})
	// Options that do not change where packets go pass untouched, including
	// one whose value is larger than the page a setsockopt program sees.
	t.Run("other options pass", func(t *testing.T) {
		wantAllowed(t, probe(t, nil, "sockopt-pass"))
	})
}

func TestEscapeIPv4OptionsCmsg(t *testing.T) {
	w := watchWire(t)
	allow := []string{"--allow-connect", "udp:127.0.0.2:5300"}
	t.Run("source route", func(t *testing.T) {
		m := w.marker("srr4-cmsg")
		r := probe(t, allow, "srr4-cmsg", "127.0.0.2:5300", other4.String(), m)
		w.wantNotDelivered(t, m, other4)
		if strings.HasPrefix(r.probeLine(), "EPERM") && len(r.records) == 0 {
			t.Skipf("kernel %s refuses source routes to processes without CAP_NET_RAW before any packet is built: this path does not exist on it", features.Kernel)
		}
		wantRouteRefused(t, r, "sendmsg", reasonExtHeader, func(rec audit.Record) bool {
			return rec.Address == other4.String() && rec.Port == 5300
		})
	})
	// Any process may still put options on its packets (record route): the
	// packet check drops every IPv4 packet of a workload that has options.
	t.Run("record route", func(t *testing.T) {
		m := w.marker("rr4-cmsg")
		r := probe(t, allow, "rr4-cmsg", "127.0.0.2:5300", m)
		if dsts := w.destinations(m); len(dsts) != 0 {
			t.Fatalf("a packet with IP options left the workload for %v", dsts)
		}
		wantRouteRefused(t, r, "sendmsg", reasonExtHeader, func(rec audit.Record) bool {
			return rec.Address == allowed4.String() && rec.Port == 5300
		})
	})
}
