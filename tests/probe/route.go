package main

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The source-routing actions send one UDP datagram to an address the
// workload may reach while asking the kernel to deliver it through another
// address first: an IPv6 routing header or IPv4 loose source route. The
// datagram's payload is MARKER, so a test watching the wire can tell
// whether it left for the VIA address. Each reports the first call the
// kernel refused.
//
//	rthdr6 ADDR6:PORT VIA6 MARKER         sticky IPV6_RTHDR (segment routing header) by setsockopt
//	rthdr6-compat ADDR6:PORT VIA6 MARKER  the same option through the 32-bit system call entry
//	rthdr6-cmsg ADDR6:PORT VIA6 MARKER    a type 2 routing header as sendmsg ancillary data
//	srr4 ADDR4:PORT VIA4 MARKER           sticky IP_OPTIONS with a loose source route
//	srr4-cmsg ADDR4:PORT VIA4 MARKER      the same options as IP_RETOPTS ancillary data
//	rr4-cmsg ADDR4:PORT MARKER            a record route option as IP_RETOPTS ancillary data
//	dstopts6-cmsg ADDR6:PORT MARKER       a destination options header as ancillary data (needs CAP_NET_RAW)
//
// (rr4-cmsg changes no destination. Newer kernels refuse source routes to
// processes without CAP_NET_RAW, but any process may still put a record
// route option on its packets: it shows whether optioned packets leave.)

// routeArgs parses "ADDR:PORT VIA MARKER" for an action of family.
func routeArgs(args []string, name string, family int) (endpoint, netip.Addr, []byte, *outcome) {
	if len(args) != 3 {
		u := usage("%s ADDR:PORT VIA MARKER", name)
		return endpoint{}, netip.Addr{}, nil, &u
	}
	ep, err := parseEndpoint(args[0])
	if err == nil && ep.family != family {
		err = fmt.Errorf("%s: wrong address family for %s", args[0], name)
	}
	var via netip.Addr
	if err == nil {
		via, err = netip.ParseAddr(args[1])
	}
	if err == nil && via.Is4() != (family == unix.AF_INET) {
		err = fmt.Errorf("%s: wrong address family for %s", args[1], name)
	}
	if err != nil {
		u := usage("%v", err)
		return endpoint{}, netip.Addr{}, nil, &u
	}
	return ep, via, []byte(args[2]), nil
}

// segmentRoutingHeader is an IPv6 segment routing header (RFC 8754, routing
// type 4) that visits via before the final destination. The kernel puts
// the sockaddr's address in segment 0 and sends the packet to segment
// segments_left, i.e. to via.
func segmentRoutingHeader(via netip.Addr) []byte {
	h := make([]byte, 8+2*16)
	h[1] = byte(len(h)/8 - 1) // header length in 8-byte units after the first 8
	h[2] = 4                  // routing type: segment routing
	h[3] = 1                  // segments left
	h[4] = 1                  // last entry
	a := via.As16()
	copy(h[8+16:], a[:])
	return h
}

// type2RoutingHeader is a Mobile IPv6 routing header (routing type 2), the
// only kind the kernel accepts as ancillary data: the packet goes to via
// and carries the sockaddr's address as the home address.
func type2RoutingHeader(via netip.Addr) []byte {
	h := make([]byte, 24)
	h[1] = 2 // header length
	h[2] = 2 // routing type 2
	h[3] = 1 // segments left
	a := via.As16()
	copy(h[8:], a[:])
	return h
}

// IPv4 option types (RFC 791), which x/sys/unix does not name.
const (
	ipoptNOP  = 1
	ipoptRR   = 7
	ipoptLSRR = 0x83
)

// looseSourceRoute is IPv4 options holding a loose source route through
// via: the kernel sends the packet to via, with the sockaddr's address as
// the last hop in the option.
func looseSourceRoute(via netip.Addr) []byte {
	a := via.As4()
	return []byte{ipoptNOP, ipoptLSRR, 7, 4, a[0], a[1], a[2], a[3]}
}

// recordRoute is IPv4 options asking every hop to add its address.
func recordRoute() []byte {
	return []byte{ipoptNOP, ipoptRR, 7, 4, 0, 0, 0, 0}
}

// cmsg encodes one ancillary data item.
func cmsg(level, typ int, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = int32(level), int32(typ)
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

func udpSocket(family int) (int, *outcome) {
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		o := failure("socket", err)
		return -1, &o
	}
	return fd, nil
}

// sendRouted sets a sticky option with set (nil for none), then sends
// marker to ep with oob as ancillary data.
func sendRouted(family int, ep endpoint, marker, oob []byte, set func(fd int) error) outcome {
	fd, o := udpSocket(family)
	if o != nil {
		return *o
	}
	defer unix.Close(fd)
	if set != nil {
		if err := set(fd); err != nil {
			return failure("setsockopt", err)
		}
	}
	if _, err := unix.SendmsgN(fd, marker, oob, ep.sockaddr(), 0); err != nil {
		return failure("sendmsg", err)
	}
	return ok("")
}

func actRthdr6(args []string) outcome {
	ep, via, marker, u := routeArgs(args, "rthdr6", unix.AF_INET6)
	if u != nil {
		return *u
	}
	return sendRouted(unix.AF_INET6, ep, marker, nil, func(fd int) error {
		return unix.SetsockoptString(fd, unix.IPPROTO_IPV6, unix.IPV6_RTHDR, string(segmentRoutingHeader(via)))
	})
}

// actRthdr6Compat sets the routing header through the 32-bit system call
// entry, which the kernel's cgroup setsockopt hook never sees: what a
// 32-bit program does without trying.
func actRthdr6Compat(args []string) outcome {
	ep, via, marker, u := routeArgs(args, "rthdr6-compat", unix.AF_INET6)
	if u != nil {
		return *u
	}
	if o := compatAvailable(); o != nil {
		return *o
	}
	return sendRouted(unix.AF_INET6, ep, marker, nil, func(fd int) error {
		return setsockoptCompat(fd, unix.IPPROTO_IPV6, unix.IPV6_RTHDR, segmentRoutingHeader(via))
	})
}

func actRthdr6Cmsg(args []string) outcome {
	ep, via, marker, u := routeArgs(args, "rthdr6-cmsg", unix.AF_INET6)
	if u != nil {
		return *u
	}
	return sendRouted(unix.AF_INET6, ep, marker, cmsg(unix.IPPROTO_IPV6, unix.IPV6_RTHDR, type2RoutingHeader(via)), nil)
}

func actSrr4(args []string) outcome {
	ep, via, marker, u := routeArgs(args, "srr4", unix.AF_INET)
	if u != nil {
		return *u
	}
	return sendRouted(unix.AF_INET, ep, marker, nil, func(fd int) error {
		return unix.SetsockoptString(fd, unix.IPPROTO_IP, unix.IP_OPTIONS, string(looseSourceRoute(via)))
	})
}

func actSrr4Cmsg(args []string) outcome {
	ep, via, marker, u := routeArgs(args, "srr4-cmsg", unix.AF_INET)
	if u != nil {
		return *u
	}
	return sendRouted(unix.AF_INET, ep, marker, cmsg(unix.IPPROTO_IP, unix.IP_RETOPTS, looseSourceRoute(via)), nil)
}

func actRR4Cmsg(args []string) outcome {
	if len(args) != 2 {
		return usage("rr4-cmsg ADDR:PORT MARKER")
	}
	ep, err := parseEndpoint(args[0])
	if err != nil || ep.family != unix.AF_INET {
		return usage("rr4-cmsg: want an IPv4 ADDR:PORT, got %q", args[0])
	}
	return sendRouted(unix.AF_INET, ep, []byte(args[1]), cmsg(unix.IPPROTO_IP, unix.IP_RETOPTS, recordRoute()), nil)
}

// actDstopts6Cmsg sends with an IPv6 destination options header holding
// only padding, which the kernel accepts as ancillary data from a process
// with CAP_NET_RAW.
func actDstopts6Cmsg(args []string) outcome {
	if len(args) != 2 {
		return usage("dstopts6-cmsg ADDR:PORT MARKER")
	}
	ep, err := parseEndpoint(args[0])
	if err != nil || ep.family != unix.AF_INET6 {
		return usage("dstopts6-cmsg: want an IPv6 [ADDR]:PORT, got %q", args[0])
	}
	padN := []byte{0, 0, 1, 4, 0, 0, 0, 0} // next header (set by the kernel), length 0, PadN of 4
	return sendRouted(unix.AF_INET6, ep, []byte(args[1]), cmsg(unix.IPPROTO_IPV6, unix.IPV6_DSTOPTS, padN), nil)
}

// compatAvailable runs a 32-bit getpid in a child: on a kernel without
// 32-bit system calls the instruction kills the process, so the probe
// learns that from a child rather than dying itself.
func compatAvailable() *outcome {
	exe, err := self()
	if err != nil {
		o := failure("executable", err)
		return &o
	}
	cmd := exec.Command(exe, "__compat-check")
	cmd.Stderr = os.Stderr
	out, _ := cmd.Output()
	if string(out) != "ok\n" {
		fmt.Fprintf(os.Stderr, "probe: 32-bit system call check: %q %v\n", out, cmd.ProcessState)
		return &outcome{"error ENOSYS no 32-bit system calls", exitError}
	}
	return nil
}

func actCompatCheck([]string) outcome {
	if err := compatGetpid(); err != nil {
		return failure("getpid", err)
	}
	return ok("")
}

// actSockoptPassThrough sets options Bridle has no business with, one of
// them through a buffer larger than a page, which the kernel hands to
// cgroup setsockopt programs cut to a page: they must still work.
func actSockoptPassThrough(args []string) outcome {
	if len(args) != 0 {
		return usage("sockopt-pass takes no arguments")
	}
	fd6, o := udpSocket(unix.AF_INET6)
	if o != nil {
		return *o
	}
	defer unix.Close(fd6)
	if err := unix.SetsockoptInt(fd6, unix.IPPROTO_IPV6, unix.IPV6_TCLASS, 0x20); err != nil {
		return failure("setsockopt IPV6_TCLASS", err)
	}
	fd, o := udpSocket(unix.AF_INET)
	if o != nil {
		return *o
	}
	defer unix.Close(fd)
	big := make([]byte, 2*os.Getpagesize())
	big[0] = 0x10 // IP_TOS reads an int from the start of the buffer
	if err := unix.SetsockoptString(fd, unix.IPPROTO_IP, unix.IP_TOS, string(big)); err != nil {
		return failure("setsockopt IP_TOS (2 pages)", err)
	}
	tos, err := unix.GetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TOS)
	if err != nil {
		return failure("getsockopt IP_TOS", err)
	}
	if tos != 0x10 {
		return outcome{fmt.Sprintf("error IP_TOS is %#x after setting 0x10", tos), exitError}
	}
	return ok("")
}
