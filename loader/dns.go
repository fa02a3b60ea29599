package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/policy"
)

// DNS steering (docs/KERNELS.md#dns): with a resolver set, a workload's
// TCP and UDP to port 53 of any address goes to it; the egress packet
// check records which workload sent each query (DNSPeer); the resolver
// writes what a task may reach by name (Learn), and the connect, sendmsg
// and ping checks allow it until it expires.

// ErrNoPeer means no workload sent from a source address to the resolver
// recently: the query is nobody's, and must not be answered as anyone's.
var ErrNoPeer = errors.New("no workload sent from this address")

// peerHold is how long a source stays attributed without a packet
// (BRIDLE_DNS_PEER_HOLD_NS in bpf/lib/dns.h): another workload's socket
// may not take it over within this time, and a query arriving later from
// it is nobody's.
const peerHold = 30 * time.Second

// DNSPeer is the workload that sent a query to the resolver, as the kernel
// recorded it from the sending socket.
type DNSPeer struct {
	CgroupID   uint64 // the workload's cgroup
	Slot       uint32 // its task slot (BaselineSlot: no task, or it expired)
	Generation uint32 // the slot's task (0 for the baseline)
	// Dest is where the workload sent the query before it was steered
	// (the resolver itself if it was sent there directly). IPv4-mapped
	// addresses are unmapped.
	Dest netip.AddrPort
}

// LearnedAddr is an address a task may reach because a name it allows
// resolved to it.
type LearnedAddr struct {
	Protocol policy.Protocol    // ProtoTCP, ProtoUDP or ProtoICMP
	Addr     netip.Addr         // IPv4-mapped addresses count as IPv4
	Ports    []policy.PortRange // the ports of the name; none for ICMP
	Expires  time.Time          // required: the kernel ends the entry then
}

// dnsHooks are the reply half of the steering (bpf/dns.c).
type dnsHooks struct {
	Recvmsg4 *ebpf.Program `ebpf:"bridle_recvmsg4"`
	Recvmsg6 *ebpf.Program `ebpf:"bridle_recvmsg6"`
}

// peernameHooks restore the peer getpeername reports (kernel 5.8+).
type peernameHooks struct {
	Peername4 *ebpf.Program `ebpf:"bridle_peername4"`
	Peername6 *ebpf.Program `ebpf:"bridle_peername6"`
}

// loadDNS loads the reply hooks; without recvmsg hooks the steering is not
// offered (SetResolver refuses), since stub resolvers would drop every
// answer. The getpeername hooks are optional: they only matter to a
// program that asks whom its TCP or connected UDP socket talks to.
func (e *Enforcer) loadDNS(opts *ebpf.CollectionOptions) {
	spec, err := loadDns()
	if err != nil {
		e.features.DNSRedirectReason = err.Error()
		return
	}
	o := replacementsFor(spec, opts)
	var recv dnsHooks
	if err := spec.LoadAndAssign(&recv, &o); err != nil {
		e.features.DNSRedirectReason = (&UnsupportedError{Feature: "DNS steering (cgroup recvmsg4/recvmsg6, kernel 5.2+)", Err: errors.New(firstLine(verifierError(err)))}).Error()
		return
	}
	e.dns = &recv
	e.features.DNSRedirect = true
	e.features.DNSRedirectReason = "port 53 steered to Bridle's resolver by connect and sendmsg, replies restored by recvmsg"
	var peer peernameHooks
	if err := spec.LoadAndAssign(&peer, &o); err != nil {
		e.features.DNSRedirectReason += "; getpeername still names the resolver (cgroup getpeername4/6, kernel 5.8+: " + firstLine(verifierError(err)) + ")"
		return
	}
	e.dnsPeername = &peer
	e.features.DNSRedirectReason += " and getpeername"
}

func (e *Enforcer) closeDNS() error {
	var errs []error
	if e.dns != nil {
		errs = append(errs, e.dns.Recvmsg4.Close(), e.dns.Recvmsg6.Close())
		e.dns = nil
	}
	if e.dnsPeername != nil {
		errs = append(errs, e.dnsPeername.Peername4.Close(), e.dnsPeername.Peername6.Close())
		e.dnsPeername = nil
	}
	return errors.Join(errs...)
}

// SetResolver steers every workload's DNS (TCP and UDP to port 53, any
// address) of a family to the resolver given for it; the zero AddrPort
// steers nothing of that family, and the rules judge its port 53 as any
// other. IPv4 destinations (IPv4-mapped ones on IPv6 sockets included) go
// to v4, IPv6 ones to v6. The setting is pinned: it outlives this process,
// and queries sent while no resolver listens there fail.
func (e *Enforcer) SetResolver(v4, v6 netip.AddrPort) error {
	var r netBridleResolver
	if v4.IsValid() {
		a := v4.Addr().Unmap()
		if !a.Is4() || v4.Port() == 0 {
			return fmt.Errorf("set resolver: %s is not an IPv4 address and port", v4)
		}
		r.Flags |= uint32(netBridleResolverFlagsBRIDLE_RESOLVER_V4)
		r.Addr4, r.Port4 = a.As4(), v4.Port()
	}
	if v6.IsValid() {
		a := v6.Addr()
		if !a.Is6() || a.Is4In6() || a.Zone() != "" || v6.Port() == 0 {
			return fmt.Errorf("set resolver: %s is not an IPv6 address and port", v6)
		}
		r.Flags |= uint32(netBridleResolverFlagsBRIDLE_RESOLVER_V6)
		r.Addr6, r.Port6 = a.As16(), v6.Port()
	}
	if r.Flags != 0 && !e.features.DNSRedirect {
		return fmt.Errorf("set resolver: %s", e.features.DNSRedirectReason)
	}
	if err := e.net.BridleDnsconf.Update(uint32(0), &r, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("set resolver: %w", err)
	}
	return nil
}

// DNSPeer returns the workload whose socket last sent to the resolver from
// src over proto (ProtoTCP or ProtoUDP), or ErrNoPeer. The kernel recorded
// it before the packet left, so a query the resolver has received is
// always found. src may be IPv4-mapped (a dual-stack listener).
func (e *Enforcer) DNSPeer(proto policy.Protocol, src netip.AddrPort) (DNSPeer, error) {
	if proto != policy.ProtoTCP && proto != policy.ProtoUDP {
		return DNSPeer{}, fmt.Errorf("dns peer: protocol %s: want tcp or udp", proto)
	}
	k := netBridleDnsPeerKey{Port: src.Port(), Proto: uint8(proto)}
	a := src.Addr().Unmap()
	switch {
	case a.Is4():
		k.Family = 4
		b := a.As4()
		copy(k.Addr[:], b[:])
	case a.Is6():
		k.Family = 6
		k.Addr = a.As16()
	default:
		return DNSPeer{}, fmt.Errorf("dns peer: %s is not an address", src)
	}
	var v netBridleDnsPeer
	if err := e.net.BridleDnspeers.Lookup(&k, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return DNSPeer{}, ErrNoPeer
		}
		return DNSPeer{}, fmt.Errorf("dns peer %s: %w", src, err)
	}
	now, err := bootNow()
	if err != nil {
		return DNSPeer{}, err
	}
	if now-v.SeenNs >= uint64(peerHold) {
		return DNSPeer{}, ErrNoPeer
	}
	return DNSPeer{CgroupID: v.CgroupId, Slot: v.Slot, Generation: v.Generation, Dest: sockaddrPort(v.Dest)}, nil
}

// sockaddrPort reads a socket address the programs kept.
func sockaddrPort(s netBridleSockaddr) netip.AddrPort {
	if s.Family == 4 {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(s.Addr[:4])), s.Port)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(s.Addr).Unmap(), s.Port)
}

func bootNow() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0, fmt.Errorf("read boot clock: %w", err)
	}
	return uint64(ts.Nano()), nil
}

// Learn lets the task of generation in slot reach addrs on their ports
// until each one's expiry, checked by the kernel itself; an entry of an
// earlier task of the slot allows nothing. Learning an address again
// replaces its entry. Written with batch updates, before the resolver
// answers, so a connect right after the answer is never refused. The
// baseline slot's entries count with generation 0, and only while a
// workload has no task in force.
func (e *Enforcer) Learn(slot, generation uint32, addrs []LearnedAddr) error {
	if slot >= MaxSlots {
		return fmt.Errorf("learn: slot %d out of range", slot)
	}
	var (
		keys4 []netBridleLearn4Key
		vals4 []netBridleLearned
		keys6 []netBridleLearn6Key
		vals6 []netBridleLearned
	)
	for _, la := range addrs {
		a := la.Addr.Unmap()
		if !a.IsValid() || a.Zone() != "" {
			return fmt.Errorf("learn: %q is not an address", la.Addr)
		}
		v, err := timedValue("learn", la, a, generation, false)
		if err != nil {
			return err
		}
		if a.Is4() {
			keys4 = append(keys4, netBridleLearn4Key{Slot: slot, Proto: uint32(la.Protocol), Addr: a.As4()})
			vals4 = append(vals4, v)
		} else {
			keys6 = append(keys6, netBridleLearn6Key{Slot: slot, Proto: uint32(la.Protocol), Addr: a.As16()})
			vals6 = append(vals6, v)
		}
	}
	if err := batchUpdate(e.net.BridleLearn4, keys4, vals4); err != nil {
		return fmt.Errorf("learn: %w", err)
	}
	if err := batchUpdate(e.net.BridleLearn6, keys6, vals6); err != nil {
		return fmt.Errorf("learn: %w", err)
	}
	return nil
}

// Unlearn deletes learned addresses of a slot (their protocol and address;
// ports and expiry are not read). An address not learned is no error.
func (e *Enforcer) Unlearn(slot uint32, addrs []LearnedAddr) error {
	for _, la := range addrs {
		a := la.Addr.Unmap()
		var err error
		switch {
		case a.Is4():
			err = e.net.BridleLearn4.Delete(netBridleLearn4Key{Slot: slot, Proto: uint32(la.Protocol), Addr: a.As4()})
		case a.Is6():
			err = e.net.BridleLearn6.Delete(netBridleLearn6Key{Slot: slot, Proto: uint32(la.Protocol), Addr: a.As16()})
		default:
			return fmt.Errorf("unlearn: %q is not an address", la.Addr)
		}
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("unlearn %s: %w", a, err)
		}
	}
	return nil
}

// timedValue is the kernel's entry for an address a task may reach until
// an expiry (learned, or granted). op names the caller in errors. With
// untilTaskEnd a zero expiry means the entry lasts as long as the task
// (its generation); without it, an expiry is required.
func timedValue(op string, la LearnedAddr, a netip.Addr, generation uint32, untilTaskEnd bool) (netBridleLearned, error) {
	rule := policy.NetRule{Protocol: la.Protocol, Prefix: netip.PrefixFrom(a, a.BitLen()), Ports: la.Ports}
	switch la.Protocol {
	case policy.ProtoTCP, policy.ProtoUDP:
		if len(la.Ports) == 0 {
			return netBridleLearned{}, fmt.Errorf("%s %s: no ports", op, rule)
		}
	case policy.ProtoICMP:
		// Name rules hold ICMP's "every port" as {0, 65535}
		// (policy.NameRule); it means no ports here.
		if len(la.Ports) == 1 && la.Ports[0] == (policy.PortRange{First: 0, Last: 65535}) {
			rule.Ports = nil
		} else if len(la.Ports) != 0 {
			return netBridleLearned{}, fmt.Errorf("%s %s: icmp has no ports", op, rule)
		}
	default:
		return netBridleLearned{}, fmt.Errorf("%s %s: protocol must be tcp, udp or icmp", op, rule)
	}
	ports, err := portsValue(rule)
	if err != nil {
		return netBridleLearned{}, fmt.Errorf("%s: %w", op, err)
	}
	ns, err := expiryNanos(op+" "+rule.String(), la.Expires, untilTaskEnd)
	if err != nil {
		return netBridleLearned{}, err
	}
	return netBridleLearned{ExpiresNs: ns, Generation: generation, Ports: ports}, nil
}

// expiryNanos is an entry's expiry on the programs' clock. A zero expiry is
// refused, or with untilTaskEnd is the end of time: the entry then ends
// with its task, whose successor in the slot has another generation.
func expiryNanos(what string, t time.Time, untilTaskEnd bool) (uint64, error) {
	if t.IsZero() {
		if !untilTaskEnd {
			return 0, fmt.Errorf("%s: no expiry", what)
		}
		return ^uint64(0), nil
	}
	return bootTimeNanos(t)
}
