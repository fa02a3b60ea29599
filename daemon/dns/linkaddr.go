package dns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Workloads in network namespaces of their own (pods) cannot reach the
// node's loopback: their 127.0.0.1 is their own. The kernel steers their
// DNS to the resolver's address, so that address must be one their
// namespace routes to the node (through its default route), and the
// resolver puts it on a link of the node itself (Config.Interface).

// CheckReachable refuses a listen address that a workload in another
// network namespace cannot reach: loopback (each namespace has its own),
// unspecified (the kernel steers to one address; 0.0.0.0 in a pod is the
// pod itself), link-local IPv6 (needs a zone, which the steering has not),
// multicast and IPv4-mapped addresses.
func CheckReachable(a netip.Addr) error {
	switch {
	case !a.IsValid():
		return errors.New("no address")
	case a.IsLoopback():
		return fmt.Errorf("%s is loopback: every network namespace has its own, so workloads in another one (pods) cannot reach it", a)
	case a.IsUnspecified():
		return fmt.Errorf("%s is unspecified: the kernel steers DNS to one address, name it", a)
	case a.Is4In6():
		return fmt.Errorf("%s is IPv4-mapped: give it as IPv4", a)
	case a.Is6() && (a.IsLinkLocalUnicast() || a.Zone() != ""):
		return fmt.Errorf("%s is IPv6 link-local: it needs a zone, which the steering cannot carry (use a ULA such as fd00:b41d::53)", a)
	case a.IsMulticast():
		return fmt.Errorf("%s is multicast", a)
	}
	return nil
}

// linkAddrs are the resolver's addresses on a link of the node, and which
// of them it added itself (the others were there already, put by an
// administrator or by an earlier bridled, and are not its to remove).
type linkAddrs struct {
	// h speaks to the network namespace the addresses were added in,
	// whichever thread removes them.
	h     *netlink.Handle
	link  netlink.Link
	added []*netlink.Addr
}

// addLinkAddrs puts each address on the named link, as a host address
// (/32, /128), without duplicate address detection for IPv6: a tentative
// address cannot be bound, and the resolver must listen at once. The link
// must be up, or its addresses are not local and nothing reaches them.
func addLinkAddrs(name string, addrs ...netip.Addr) (*linkAddrs, error) {
	// Route only: with no family named, netlink also opens XFRM and
	// netfilter sockets, and a node kernel built without them refuses.
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("dns: netlink: %w", err)
	}
	link, err := h.LinkByName(name)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("dns: interface %q: %w", name, err)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		h.Close()
		return nil, fmt.Errorf("dns: interface %q is down: its addresses would not be the node's", name)
	}
	l := &linkAddrs{h: h, link: link}
	for _, a := range addrs {
		na := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}}
		if a.Is6() {
			na.Flags = unix.IFA_F_NODAD
		}
		err := h.AddrAdd(link, na)
		switch {
		case err == nil:
			l.added = append(l.added, na)
		case errors.Is(err, syscall.EEXIST):
			// There already: kept, and left there at the end.
		default:
			_ = l.remove()
			return nil, fmt.Errorf("dns: add %s to interface %q: %w", a, name, err)
		}
	}
	return l, nil
}

// remove takes off the link the addresses this resolver added.
func (l *linkAddrs) remove() error {
	if l == nil || l.h == nil {
		return nil
	}
	var errs []error
	for _, a := range l.added {
		if err := l.h.AddrDel(l.link, a); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
			errs = append(errs, fmt.Errorf("dns: remove %s from interface %q: %w", a.IP, l.link.Attrs().Name, err))
		}
	}
	l.added = nil
	l.h.Close()
	l.h = nil
	return errors.Join(errs...)
}
