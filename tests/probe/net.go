package main

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// connectTimeout bounds every connect so a silently dropped SYN cannot hang a
// test; Bridle's refusals are synchronous, so they never get near it.
const connectTimeout = 3 * time.Second

// payload is what datagram and fast-open actions send; its content is
// irrelevant, only whether the kernel lets it out.
var payload = []byte("bridle-probe")

// endpoint is a parsed destination. The family is decided by how the user
// wrote the address, not by its value: "[::ffff:127.0.0.1]:80" stays AF_INET6
// so the IPv4-mapped case really exercises the kernel's IPv6 path (the
// cgroup/connect6 hook), which is exactly what an agent would use to slip
// past a policy that only checks IPv4.
type endpoint struct {
	family int
	addr   netip.Addr
	port   int
}

// parseEndpoint accepts "1.2.3.4:80", "[::1]:80" and "[::ffff:1.2.3.4]:80".
func parseEndpoint(s string) (endpoint, error) {
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		return endpoint{}, fmt.Errorf("address %q: want ADDR:PORT or [ADDR6]:PORT", s)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return endpoint{}, fmt.Errorf("address %q: bad port", s)
	}
	ep, err := parseHost(host, strings.HasPrefix(s, "["))
	if err != nil {
		return endpoint{}, fmt.Errorf("address %q: %v", s, err)
	}
	ep.port = int(port)
	return ep, nil
}

// parseHost parses a bare address; bracketed says the text was in brackets,
// which is only allowed for IPv6.
func parseHost(host string, bracketed bool) (endpoint, error) {
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return endpoint{}, err
	}
	if addr.Is4() {
		if bracketed {
			return endpoint{}, fmt.Errorf("brackets are for IPv6 only")
		}
		return endpoint{family: unix.AF_INET, addr: addr}, nil
	}
	return endpoint{family: unix.AF_INET6, addr: addr}, nil
}

// parseBareHost is for ping, which takes an address without a port; IPv6 may
// be written with or without brackets.
func parseBareHost(s string) (endpoint, error) {
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		return parseHost(s[1:len(s)-1], true)
	}
	return parseHost(s, false)
}

func (e endpoint) String() string {
	return netip.AddrPortFrom(e.addr, uint16(e.port)).String()
}

func (e endpoint) zoneID() uint32 {
	if z := e.addr.Zone(); z != "" {
		if ifi, err := net.InterfaceByName(z); err == nil {
			return uint32(ifi.Index)
		}
		if n, err := strconv.ParseUint(z, 10, 32); err == nil {
			return uint32(n)
		}
	}
	return 0
}

func (e endpoint) sockaddr() unix.Sockaddr {
	if e.family == unix.AF_INET {
		return &unix.SockaddrInet4{Port: e.port, Addr: e.addr.As4()}
	}
	return &unix.SockaddrInet6{Port: e.port, Addr: e.addr.As16(), ZoneId: e.zoneID()}
}

// rawSockaddr encodes the endpoint as the kernel's struct sockaddr_in or
// sockaddr_in6, for the places where the probe hands memory to the kernel
// itself (sendmmsg's msg_name, an io_uring SQE).
func (e endpoint) rawSockaddr() []byte {
	if e.family == unix.AF_INET {
		b := make([]byte, unix.SizeofSockaddrInet4)
		binary.NativeEndian.PutUint16(b[0:], unix.AF_INET)
		binary.BigEndian.PutUint16(b[2:], uint16(e.port))
		a := e.addr.As4()
		copy(b[4:], a[:])
		return b
	}
	b := make([]byte, unix.SizeofSockaddrInet6)
	binary.NativeEndian.PutUint16(b[0:], unix.AF_INET6)
	binary.BigEndian.PutUint16(b[2:], uint16(e.port))
	a := e.addr.As16()
	copy(b[8:], a[:])
	binary.NativeEndian.PutUint32(b[24:], e.zoneID())
	return b
}

// oneEndpoint handles the common "ACTION ADDR:PORT" argument shape.
func oneEndpoint(args []string, what string) (endpoint, *outcome) {
	if len(args) != 1 {
		u := usage("%s ADDR:PORT", what)
		return endpoint{}, &u
	}
	ep, err := parseEndpoint(args[0])
	if err != nil {
		u := usage("%v", err)
		return endpoint{}, &u
	}
	return ep, nil
}

// pollFd waits for events on fd, restarting after EINTR (the Go runtime
// signals its threads for preemption). It reports whether the fd became ready
// before the deadline.
func pollFd(fd int, events int16, deadline time.Time) (bool, error) {
	for {
		ms := int(time.Until(deadline) / time.Millisecond)
		if ms < 0 {
			ms = 0
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: events}}
		n, err := unix.Poll(fds, ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, err
		}
		if n == 0 {
			if time.Now().Before(deadline) {
				continue
			}
			return false, nil
		}
		return true, nil
	}
}

// dialTCP does a nonblocking connect and waits for it with poll, so the
// timeout is exact and a runtime signal cannot turn into a spurious EINTR.
// It returns the connected (still nonblocking) socket, or the outcome to
// report.
func dialTCP(ep endpoint) (int, *outcome) {
	fd, err := unix.Socket(ep.family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		o := failure("socket", err)
		return -1, &o
	}
	err = unix.Connect(fd, ep.sockaddr())
	if err == nil {
		return fd, nil
	}
	if err != unix.EINPROGRESS && err != unix.EINTR {
		unix.Close(fd)
		o := failure("connect", err)
		return -1, &o
	}
	ready, err := pollFd(fd, unix.POLLOUT, time.Now().Add(connectTimeout))
	if err != nil {
		unix.Close(fd)
		o := failure("poll", err)
		return -1, &o
	}
	if !ready {
		unix.Close(fd)
		o := failure("connect", unix.ETIMEDOUT)
		return -1, &o
	}
	soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		unix.Close(fd)
		o := failure("getsockopt", err)
		return -1, &o
	}
	if soErr != 0 {
		unix.Close(fd)
		o := failure("connect", unix.Errno(soErr))
		return -1, &o
	}
	return fd, nil
}

// actTCP: plain TCP connect, the cgroup/connect4 and connect6 hooks' case.
func actTCP(args []string) outcome {
	ep, u := oneEndpoint(args, "tcp")
	if u != nil {
		return *u
	}
	fd, o := dialTCP(ep)
	if o != nil {
		return *o
	}
	unix.Close(fd)
	return ok("")
}

// actTCPFastOpen connects implicitly with sendto(MSG_FASTOPEN), which never
// calls connect(2): a policy that only hooked the syscall would miss it. The
// socket is blocking with a send timeout, so a normal result means the
// handshake finished; EINPROGRESS (timeout while connecting) is reported as ok
// per the contract, since the kernel did let the SYN out.
func actTCPFastOpen(args []string) outcome {
	ep, u := oneEndpoint(args, "tcp-fastopen")
	if u != nil {
		return *u
	}
	fd, err := unix.Socket(ep.family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return failure("socket", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(connectTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		return failure("setsockopt", err)
	}
	n, err := unix.SendmsgN(fd, payload, nil, ep.sockaddr(), unix.MSG_FASTOPEN)
	if err == unix.EINPROGRESS {
		return ok("EINPROGRESS")
	}
	if err != nil {
		return failure("sendto", err)
	}
	return ok(fmt.Sprintf("sent=%d", n))
}

// actUDPConnect: connected UDP, checked by the connect hooks at connect time.
func actUDPConnect(args []string) outcome {
	ep, u := oneEndpoint(args, "udp-connect")
	if u != nil {
		return *u
	}
	fd, err := unix.Socket(ep.family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return failure("socket", err)
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, ep.sockaddr()); err != nil {
		return failure("connect", err)
	}
	if _, err := unix.Write(fd, payload); err != nil {
		return failure("send", err)
	}
	return ok("")
}

// actUDPSendto: unconnected UDP, the cgroup/sendmsg4 and sendmsg6 hooks' case.
func actUDPSendto(args []string) outcome {
	ep, u := oneEndpoint(args, "udp-sendto")
	if u != nil {
		return *u
	}
	fd, err := unix.Socket(ep.family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return failure("socket", err)
	}
	defer unix.Close(fd)
	if err := unix.Sendto(fd, payload, 0, ep.sockaddr()); err != nil {
		return failure("sendto", err)
	}
	return ok("")
}

// actUDPSendmmsg sends one datagram per destination in a single sendmmsg(2),
// the batching an agent could use to hope only the first address is checked.
// The kernel stops at the first failing message and returns how many went
// out; to name that message's errno the probe sends it alone once.
func actUDPSendmmsg(args []string) outcome {
	if len(args) == 0 {
		return usage("udp-sendmmsg ADDR:PORT [ADDR:PORT...]")
	}
	eps := make([]endpoint, len(args))
	for i, a := range args {
		ep, err := parseEndpoint(a)
		if err != nil {
			return usage("%v", err)
		}
		if i > 0 && ep.family != eps[0].family {
			return usage("udp-sendmmsg: all destinations must be the same family")
		}
		eps[i] = ep
	}
	fd, err := unix.Socket(eps[0].family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return failure("socket", err)
	}
	defer unix.Close(fd)

	msgs := make([]unix.Mmsghdr, len(eps))
	iovs := make([]unix.Iovec, len(eps))
	names := make([][]byte, len(eps))
	for i, ep := range eps {
		names[i] = ep.rawSockaddr()
		iovs[i].Base = &payload[0]
		iovs[i].SetLen(len(payload))
		msgs[i].Hdr.Name = &names[i][0]
		msgs[i].Hdr.Namelen = uint32(len(names[i]))
		msgs[i].Hdr.Iov = &iovs[i]
		msgs[i].Hdr.SetIovlen(1)
	}
	var sent int
	for {
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), 0, 0, 0)
		if e == unix.EINTR {
			// Nothing was sent (the kernel returns a count otherwise).
			continue
		}
		if e != 0 {
			o := failure("sendmmsg", e)
			o.line += " sent=0"
			return o
		}
		sent = int(r)
		break
	}
	if sent == len(eps) {
		return ok(fmt.Sprintf("sent=%d", sent))
	}
	// Short count: learn why message number sent failed.
	err = unix.Sendto(fd, payload, 0, eps[sent].sockaddr())
	if err == nil {
		fmt.Fprintf(os.Stderr, "probe: sendmmsg sent %d of %d, but message %d alone went through\n", sent, len(eps), sent)
		return outcome{fmt.Sprintf("error partial sent=%d", sent), exitError}
	}
	o := failure(fmt.Sprintf("sendmmsg(%s)", eps[sent]), err)
	o.line += fmt.Sprintf(" sent=%d", sent)
	return o
}

// actPing sends one ICMP echo through an unprivileged ping socket (what the
// ping binary uses without CAP_NET_RAW) and waits for the reply. connected
// chooses connect()+send() versus an unconnected sendto(), which the kernel
// checks on different paths.
func actPing(args []string, connected bool) outcome {
	name := "ping-sendto"
	if connected {
		name = "ping"
	}
	if len(args) != 1 {
		return usage("%s ADDR", name)
	}
	ep, err := parseBareHost(args[0])
	if err != nil {
		return usage("%s: %v", name, err)
	}
	proto, echoType, replyType := unix.IPPROTO_ICMP, byte(8), byte(0)
	if ep.family == unix.AF_INET6 {
		proto, echoType, replyType = unix.IPPROTO_ICMPV6, 128, 129
	}
	// socket() itself fails with EACCES when our gid is outside
	// net.ipv4.ping_group_range; that is a refusal too, named "socket".
	fd, err := unix.Socket(ep.family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return failure("socket", err)
	}
	defer unix.Close(fd)
	// Type, code, checksum, identifier, sequence, then data. The kernel fills
	// in the identifier (the socket's "port") and the checksum.
	req := append([]byte{echoType, 0, 0, 0, 0, 0, 0, 1}, payload...)
	if connected {
		if err := unix.Connect(fd, ep.sockaddr()); err != nil {
			return failure("connect", err)
		}
		if _, err := unix.Write(fd, req); err != nil {
			return failure("send", err)
		}
	} else if err := unix.Sendto(fd, req, 0, ep.sockaddr()); err != nil {
		return failure("sendto", err)
	}
	deadline := time.Now().Add(2 * time.Second)
	buf := make([]byte, 1500)
	for {
		ready, err := pollFd(fd, unix.POLLIN, deadline)
		if err != nil {
			return failure("poll", err)
		}
		if !ready {
			return failure("recv", unix.ETIMEDOUT)
		}
		n, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			return failure("recv", err)
		}
		if n >= 1 && buf[0] == replyType {
			return ok("reply")
		}
	}
}

// unixSockaddr maps "@name" to an abstract address; x/sys does the leading
// NUL translation for us.
func unixSockaddr(path string) *unix.SockaddrUnix {
	return &unix.SockaddrUnix{Name: path}
}

// actUnixStream: connect to a unix socket, e.g. a container runtime's.
func actUnixStream(args []string) outcome {
	if len(args) != 1 {
		return usage("unix PATH|@abstract")
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return failure("socket", err)
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, unixSockaddr(args[0])); err != nil {
		return failure("connect", err)
	}
	return ok("")
}

// actUnixRaw: connect to a unix address given as hex bytes of sun_path,
// with the address length exactly 2 + those bytes, or ADDRLEN if given.
// The bytes may hold NULs and an address length may cut a name short:
// what a hostile caller can pass, and what x/sys never builds.
func actUnixRaw(args []string) outcome {
	if len(args) != 1 && len(args) != 2 {
		return usage("unix-raw HEX-SUN-PATH [ADDRLEN]")
	}
	path, err := hex.DecodeString(args[0])
	if err != nil || len(path) > 108 {
		return usage("unix-raw: sun_path must be at most 108 bytes of hex")
	}
	var sa unix.RawSockaddrUnix
	sa.Family = unix.AF_UNIX
	for i, b := range path {
		sa.Path[i] = int8(b)
	}
	addrlen := 2 + len(path)
	if len(args) == 2 {
		if addrlen, err = strconv.Atoi(args[1]); err != nil || addrlen < 2 || addrlen > int(unsafe.Sizeof(sa)) {
			return usage("unix-raw: ADDRLEN must be 2 to %d", unsafe.Sizeof(sa))
		}
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return failure("socket", err)
	}
	defer unix.Close(fd)
	_, _, errno := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(addrlen))
	if errno != 0 {
		return failure("connect", errno)
	}
	return ok("")
}

// actUnixDgram: an unconnected datagram to a unix socket (e.g. syslog).
func actUnixDgram(args []string) outcome {
	if len(args) != 1 {
		return usage("unix-dgram PATH|@abstract")
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return failure("socket", err)
	}
	defer unix.Close(fd)
	if err := unix.Sendto(fd, payload, 0, unixSockaddr(args[0])); err != nil {
		return failure("sendto", err)
	}
	return ok("")
}

// socketOnly creates a socket and closes it: for raw and packet sockets the
// creation is the privilege (CAP_NET_RAW, or Bridle's sock_create hook).
func socketOnly(args []string, name string, family, typ, proto int) outcome {
	if len(args) != 0 {
		return usage("%s takes no arguments", name)
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return failure("socket", err)
	}
	unix.Close(fd)
	return ok("")
}

func actRaw4(args []string) outcome {
	return socketOnly(args, "raw4", unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
}

func actRaw6(args []string) outcome {
	return socketOnly(args, "raw6", unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_ICMPV6)
}

func actPacket(args []string) outcome {
	return socketOnly(args, "packet", unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
}

// actHoldTCP keeps a connection open so a test can watch Bridle tear it down
// (e.g. on revocation). It prints "ok connected" as soon as it is up, then a
// second line "closed EOF|timeout|<ERRNO>" when the connection ends.
func actHoldTCP(args []string) outcome {
	if len(args) != 2 {
		return usage("hold-tcp ADDR:PORT SECONDS")
	}
	ep, err := parseEndpoint(args[0])
	if err != nil {
		return usage("%v", err)
	}
	secs, err := strconv.ParseFloat(args[1], 64)
	if err != nil || secs < 0 {
		return usage("hold-tcp: bad SECONDS %q", args[1])
	}
	fd, o := dialTCP(ep)
	if o != nil {
		return *o
	}
	defer unix.Close(fd)
	fmt.Println("ok connected") // os.Stdout is unbuffered: the test sees it now
	deadline := time.Now().Add(time.Duration(secs * float64(time.Second)))
	buf := make([]byte, 4096)
	for {
		ready, err := pollFd(fd, unix.POLLIN, deadline)
		if err != nil {
			return outcome{"closed " + errLabel(err), exitOK}
		}
		if !ready {
			return outcome{"closed timeout", exitOK}
		}
		n, err := unix.Read(fd, buf)
		switch {
		case err == unix.EAGAIN || err == unix.EINTR:
			continue
		case err != nil:
			return outcome{"closed " + errLabel(err), exitOK}
		case n == 0:
			return outcome{"closed EOF", exitOK}
		}
	}
}

// htons converts to network byte order whatever the host's order is.
func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

func errLabel(err error) string {
	if e, isErrno := err.(unix.Errno); isErrno {
		return errnoName(e)
	}
	return err.Error()
}

// actUDPFlood connects an unconnected UDP socket to ADDR:PORT N times as fast
// as it can: the flood an agent could use to bury its actions in decision
// events. Prints how many connects were refused and allowed.
func actUDPFlood(args []string) outcome {
	if len(args) != 2 {
		return usage("udp-flood ADDR:PORT COUNT")
	}
	ep, err := parseEndpoint(args[0])
	if err != nil {
		return usage("%v", err)
	}
	n, err := strconv.Atoi(args[1])
	if err != nil || n <= 0 {
		return usage("udp-flood: bad count %q", args[1])
	}
	fd, err := unix.Socket(ep.family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return failure("socket", err)
	}
	defer unix.Close(fd)
	sa := ep.sockaddr()
	var refused, allowed int
	for i := 0; i < n; i++ {
		switch err := unix.Connect(fd, sa); err {
		case nil:
			allowed++
		case unix.EPERM:
			refused++
		default:
			return failure("connect", err)
		}
	}
	return ok(fmt.Sprintf("refused=%d allowed=%d", refused, allowed))
}

// actTCPEvery is an agent that retries: it tries one TCP connect to
// ADDR:PORT every SECONDS until it is killed, and prints one line per
// attempt, "N VERDICT" with VERDICT as actTCP's line ("ok", "EPERM connect",
// "error ECONNREFUSED"). The systemd guest runs it as an agent unit and
// reads its journal to see the verdicts change when a task starts and ends,
// and that none slips through while bridled restarts. Each attempt is still
// one connect: nothing within an attempt is retried.
func actTCPEvery(args []string) outcome {
	if len(args) != 2 {
		return usage("tcp-every SECONDS ADDR:PORT")
	}
	secs, err := strconv.ParseFloat(args[0], 64)
	if err != nil || secs <= 0 {
		return usage("tcp-every: bad SECONDS %q", args[0])
	}
	for n := 1; ; n++ {
		o := actTCP(args[1:])
		if o.code == exitUsage {
			return o
		}
		fmt.Printf("%d %s\n", n, o.line)
		time.Sleep(time.Duration(secs * float64(time.Second)))
	}
}
