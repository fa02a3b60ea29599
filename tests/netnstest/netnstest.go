// Package netnstest builds network namespaces for tests through netlink:
// a namespace of the test's own, and a "pod" joined to a "node" by a veth
// pair, as a container network is. It needs no ip command (the kernel
// matrix's guests have BusyBox's); a kernel without veth skips the pod
// tests with the reason.
package netnstest

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The pod network ConnectPod builds: the node's end of the veth and the
// pod's, in a /24 and a /64; the pod's default routes lead to the node.
var (
	NodeV4 = netip.MustParseAddr("10.244.0.1")
	PodV4  = netip.MustParseAddr("10.244.0.2")
	NodeV6 = netip.MustParseAddr("fd00:244::1")
	PodV6  = netip.MustParseAddr("fd00:244::2")
)

// The veth's ends: NodeLink in the node's namespace, PodLink in the pod's.
const (
	NodeLink = "veth-pod"
	PodLink  = "eth0"
)

// New creates a network namespace with lo up and returns the path that
// keeps it alive (a bind mount of its handle, removed when t ends).
func New(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("creating network namespaces needs root (run with sudo or make test)")
	}
	path := filepath.Join(t.TempDir(), "netns")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		// The thread stays locked and ends with the goroutine: it is in
		// the new namespace and must not run anything else.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- unix.Mount("/proc/thread-self/ns/net", path, "", unix.MS_BIND, "")
	}()
	if err := <-errc; err != nil {
		t.Fatalf("new network namespace: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(path, unix.MNT_DETACH) })
	h := Handle(t, path)
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("lo up: %v", err)
	}
	return path
}

// Handle returns a netlink handle for the namespace at path, closed when t
// ends.
func Handle(t testing.TB, path string) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatalf("network namespace %s: %v", path, err)
	}
	defer ns.Close()
	// Route only: with no family named, netlink also opens XFRM and
	// netfilter sockets, and a kernel built without them refuses.
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatalf("netlink in %s: %v", path, err)
	}
	t.Cleanup(h.Close)
	return h
}

// Do runs f on a thread inside the namespace at path: sockets f creates
// and processes it starts are that namespace's. Goroutines f starts are
// not.
func Do(t testing.TB, path string, f func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic("netnstest: cannot return to the test's network namespace: " + err.Error())
		}
	}()
	f()
}

// ConnectPod joins the pod namespace to the node namespace with a veth
// pair (NodeLink, PodLink) carrying the addresses above, and routes the
// pod's traffic to the node. The pair goes when t ends.
func ConnectPod(t testing.TB, node, pod string) {
	t.Helper()
	nh, ph := Handle(t, node), Handle(t, pod)
	podNS, err := netns.GetFromPath(pod)
	if err != nil {
		t.Fatal(err)
	}
	defer podNS.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: NodeLink},
		PeerName:      PodLink,
		PeerNamespace: netlink.NsFd(podNS),
	}
	if err := nh.LinkAdd(veth); errors.Is(err, unix.EOPNOTSUPP) {
		// Debian's kernels build veth as a module; the kernel matrix's
		// guests load none. The host runs these tests with make test.
		t.Skipf("this kernel has no veth (a module it has not loaded): %v", err)
	} else if err != nil {
		t.Fatalf("veth %s/%s: %v", NodeLink, PodLink, err)
	}
	t.Cleanup(func() { _ = nh.LinkDel(veth) })
	up(t, nh, NodeLink, netip.PrefixFrom(NodeV4, 24), netip.PrefixFrom(NodeV6, 64))
	eth := up(t, ph, PodLink, netip.PrefixFrom(PodV4, 24), netip.PrefixFrom(PodV6, 64))
	for _, r := range []struct {
		dst netip.Prefix
		gw  netip.Addr
	}{
		{netip.MustParsePrefix("0.0.0.0/0"), NodeV4},
		{netip.MustParsePrefix("::/0"), NodeV6},
	} {
		route := &netlink.Route{LinkIndex: eth.Attrs().Index, Dst: ipNet(r.dst), Gw: net.IP(r.gw.AsSlice())}
		if err := ph.RouteAdd(route); err != nil {
			t.Fatalf("pod route %s via %s: %v", r.dst, r.gw, err)
		}
	}
}

// up puts the addresses on the link named name (without duplicate address
// detection, so IPv6 ones serve at once) and sets it up.
func up(t testing.TB, h *netlink.Handle, name string, addrs ...netip.Prefix) netlink.Link {
	t.Helper()
	link, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	for _, a := range addrs {
		AddAddr(t, h, name, a)
	}
	if err := h.LinkSetUp(link); err != nil {
		t.Fatalf("%s up: %v", name, err)
	}
	return link
}

// AddAddr puts a on the link named name, without duplicate address
// detection.
func AddAddr(t testing.TB, h *netlink.Handle, name string, a netip.Prefix) {
	t.Helper()
	link, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	if err := h.AddrAdd(link, &netlink.Addr{IPNet: ipNet(a), Flags: unix.IFA_F_NODAD}); err != nil {
		t.Fatalf("address %s on %s: %v", a, name, err)
	}
}

// HasAddr reports whether a is on the link named name.
func HasAddr(t testing.TB, h *netlink.Handle, name string, a netip.Addr) bool {
	t.Helper()
	link, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatalf("addresses of %s: %v", name, err)
	}
	return slices.ContainsFunc(addrs, func(x netlink.Addr) bool {
		got, ok := netip.AddrFromSlice(x.IP)
		return ok && got.Unmap() == a
	})
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
