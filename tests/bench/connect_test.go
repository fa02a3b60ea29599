package bench

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/policy"
)

// sockaddr4 is the raw address connect(2) takes, built once so that the
// measured loop is the system call and nothing else.
func sockaddr4(ap netip.AddrPort) unix.RawSockaddrInet4 {
	sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ap.Addr().As4()}
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p[0], p[1] = byte(ap.Port()>>8), byte(ap.Port())
	return sa
}

func connectRaw(fd int, sa *unix.RawSockaddrInet4) unix.Errno {
	_, _, errno := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(sa)), unix.SizeofSockaddrInet4)
	return errno
}

// connectVariant is one way of running the same connect: a cgroup to run
// in and, for TCP, a network namespace.
type connectVariant struct {
	name   string
	cgroup string
	netns  string
	// refused is how a connect to a destination the variant does not
	// allow ends: the check that the measuring process is confined.
	refused unix.Errno
}

// udpTarget is where the UDP benchmark connects. Connecting a UDP socket
// only records the peer and sends nothing, so no listener is needed and
// the measurement is the hook and the route lookup alone.
var udpTarget = netip.MustParseAddrPort("127.0.0.1:5353")

// BenchmarkConnectUDPHooksOff: the same connect while no connect4 program
// is attached anywhere on the machine. The kernel switches its cgroup
// connect hook on for every cgroup as soon as one program is attached to
// any (a static key), and the switched-on path costs about as much as an
// empty program, whether or not the connecting cgroup has one; so the "no
// hook" variant of BenchmarkConnectUDP, which runs beside Bridle's
// programs, already pays it. This is the floor without it. It runs before
// BenchmarkConnectUDP attaches anything, and refuses to measure when
// another program on the machine (a bridled, say) holds the hook on.
func BenchmarkConnectUDPHooksOff(b *testing.B) {
	requireRoot(b)
	if id, ok := connect4LinkAttached(b); ok {
		b.Skipf("a connect4 program is attached on this machine (link %d): the hook cannot be measured switched off", id)
	}
	tree := newCgroupTree(b)
	cg := tree.sub(b, "hooksoff")
	for range rounds {
		b.Run("floor", func(b *testing.B) {
			inCgroup(b, tree.root, cg)
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				b.Fatal(err)
			}
			defer unix.Close(fd)
			sa := sockaddr4(udpTarget)
			for b.Loop() {
				if errno := connectRaw(fd, &sa); errno != 0 {
					b.Fatalf("connect %s: %v", udpTarget, errno)
				}
			}
		})
	}
}

// connect4LinkAttached reports a cgroup connect4 link anywhere on the
// machine. Programs attached the older way (without a link) are not seen:
// Bridle and current tools attach with links.
func connect4LinkAttached(tb testing.TB) (link.ID, bool) {
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			continue
		}
		if cg := info.Cgroup(); cg != nil && ebpf.AttachType(cg.AttachType) == ebpf.AttachCGroupInet4Connect {
			return it.ID, true
		}
	}
	if err := it.Err(); err != nil {
		tb.Fatalf("list the machine's BPF links: %v", err)
	}
	return 0, false
}

// BenchmarkConnectUDP: unconnected-UDP connect() with no hook, under an
// empty connect4 program (the floor any cgroup connect hook costs), and
// inside a Bridle workload whose task holds 10, 1k or 100k rules. All three
// slots live in one enforcer, so the 100k trie also holds the others'
// entries.
func BenchmarkConnectUDP(b *testing.B) {
	e := benchEnforcer(b)
	tree := newCgroupTree(b)
	empty := tree.sub(b, "emptyhook")
	attachEmptyConnect4(b, empty)
	variants := []connectVariant{
		{name: "nohook", cgroup: tree.sub(b, "nohook")},
		// The empty program allows all: a neighbouring port connects too.
		{name: "emptyhook", cgroup: empty},
	}
	for i, n := range []int{10, 1000, 100_000} {
		cg := tree.sub(b, "rules"+sizeName(n))
		workload(b, e, cg, uint32(i+1), compile(b, envelope(n, policy.ProtoUDP, udpTarget), n))
		variants = append(variants, connectVariant{name: "bridle-" + sizeName(n), cgroup: cg, refused: unix.EPERM})
	}
	for _, v := range variants {
		checkUDPConfined(b, tree.root, v)
	}
	interleave(b, variants, func(v connectVariant) string { return v.name }, func(b *testing.B, v connectVariant) {
		inCgroup(b, tree.root, v.cgroup)
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer unix.Close(fd)
		sa := sockaddr4(udpTarget)
		for b.Loop() {
			if errno := connectRaw(fd, &sa); errno != 0 {
				b.Fatalf("connect %s: %v", udpTarget, errno)
			}
		}
	})
}

// attachEmptyConnect4 attaches to cg a connect4 program that only returns
// "allow": what the kernel spends to run any program on that hook, the
// honest floor of Bridle's own connect check. Built here, instruction by
// instruction, because it is a yardstick, not part of Bridle.
func attachEmptyConnect4(tb testing.TB, cg string) {
	tb.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "bench_empty4", Type: ebpf.CGroupSockAddr, AttachType: ebpf.AttachCGroupInet4Connect,
		License:      "Dual BSD/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
	})
	if err != nil {
		tb.Fatalf("empty connect4 program: %v", err)
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: cg, Attach: ebpf.AttachCGroupInet4Connect, Program: prog})
	if err != nil {
		prog.Close()
		tb.Fatalf("attach the empty connect4 program: %v", err)
	}
	tb.Cleanup(func() {
		l.Close()
		prog.Close()
	})
}

// checkUDPConfined proves a variant measures what it says: in a workload
// the allowed target connects and a neighbouring port is refused; without
// a hook both connect.
func checkUDPConfined(b *testing.B, root string, v connectVariant) {
	b.Run("check-"+v.name, func(b *testing.B) {
		inCgroup(b, root, v.cgroup)
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer unix.Close(fd)
		ok, other := sockaddr4(udpTarget), sockaddr4(netip.AddrPortFrom(udpTarget.Addr(), udpTarget.Port()+1))
		if errno := connectRaw(fd, &ok); errno != 0 {
			b.Fatalf("%s: allowed connect: %v", v.name, errno)
		}
		if errno := connectRaw(fd, &other); errno != v.refused {
			b.Fatalf("%s: connect to a port no rule allows: got %v, want %v", v.name, errno, v.refused)
		}
		b.SkipNow() // a check, not a measurement: keep it out of the results
	})
}

// tcpTarget is the loopback listener inside each benchmark namespace.
var tcpTarget = netip.MustParseAddrPort("127.0.0.1:8080")

// tcpRules is the size of the envelope in the TCP comparison.
const tcpRules = 10_000

// BenchmarkConnectTCP: TCP connect+close to a loopback listener, in network
// namespaces of its own, with no filter, under Bridle, and under nftables
// rulesets that do the same job with a socket cgroupv2 match: a linear
// chain of one rule per destination, one lookup in an interval set (what
// an envelope with networks and port ranges needs), and one lookup in a
// hash set of exact address.port pairs (nftables' best case, which only
// an envelope of single hosts and single ports allows). Each runs with and
// without conntrack letting established packets skip the rules.
func BenchmarkConnectTCP(b *testing.B) {
	requireRoot(b)
	hostRules := hostRuleset(b)
	b.Cleanup(func() {
		if now := hostRuleset(b); now != hostRules {
			b.Errorf("the host's nftables ruleset changed during the benchmark")
		}
	})
	e := benchEnforcer(b)
	tree := newCgroupTree(b)
	env := envelope(tcpRules, policy.ProtoTCP, tcpTarget)

	plain := newNetns(b, "plain")
	listen(b, plain, tcpTarget)
	bridleCg := tree.sub(b, "bridle")
	workload(b, e, bridleCg, 1, compile(b, env, tcpRules))
	variants := []connectVariant{
		{name: "nohook", cgroup: tree.sub(b, "nohook"), netns: plain, refused: unix.ECONNREFUSED},
		{name: "bridle-" + sizeName(tcpRules), cgroup: bridleCg, netns: plain, refused: unix.EPERM},
	}
	nftCg := tree.sub(b, "nft")
	hosts := hostEnvelope(tcpRules, tcpTarget)
	for _, style := range []nftStyle{
		{}, {ct: true},
		{set: "interval"}, {set: "interval", ct: true},
		{set: "hash"}, {set: "hash", ct: true},
	} {
		rules := env
		if style.set == "hash" {
			rules = hosts
		}
		ns := newNetns(b, style.name())
		listen(b, ns, tcpTarget)
		loadNft(b, ns, nftRuleset(style, rules, tree.rel(nftCg)))
		// A dropped SYN is never answered: the connect times out.
		variants = append(variants, connectVariant{name: style.name(), cgroup: nftCg, netns: ns, refused: unix.EINPROGRESS})
	}
	for _, v := range variants {
		checkTCPConfined(b, tree.root, v)
	}
	interleave(b, variants, func(v connectVariant) string { return v.name }, func(b *testing.B, v connectVariant) {
		inCgroup(b, tree.root, v.cgroup)
		if err := lockedThreadIn(v.netns); err != nil {
			b.Fatal(err)
		}
		sa := sockaddr4(tcpTarget)
		for b.Loop() {
			if err := connectClose(&sa, 0); err != nil {
				b.Fatalf("%s: %v", v.name, err)
			}
		}
	})
}

// hostEnvelope is n TCP destinations that are each one host and one port,
// the last of them target: the only shape an nftables hash set can hold.
func hostEnvelope(n int, target netip.AddrPort) policy.Envelope {
	var env policy.Envelope
	for i := range n - 1 {
		env.Egress = append(env.Egress, policy.EgressRule{
			Protocol: policy.ProtoTCP,
			Prefix:   netip.PrefixFrom(addrPlus(hostRegion, scatter(i, 24)), 32),
			Ports:    []policy.PortRange{{First: 443, Last: 443}},
		})
	}
	env.Egress = append(env.Egress, policy.EgressRule{
		Protocol: policy.ProtoTCP,
		Prefix:   netip.PrefixFrom(target.Addr(), 32),
		Ports:    []policy.PortRange{{First: target.Port(), Last: target.Port()}},
	})
	return env
}

// connectClose opens a TCP connection and aborts it. SO_LINGER 0 closes
// with a reset, so no TIME_WAIT state piles up over millions of
// connections; every variant pays for the same four packets.
func connectClose(sa *unix.RawSockaddrInet4, timeout time.Duration) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
		return err
	}
	if timeout > 0 {
		tv := unix.NsecToTimeval(timeout.Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
			return err
		}
	}
	_, _, errno := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(sa)), unix.SizeofSockaddrInet4)
	if errno != 0 {
		return errno
	}
	return nil
}

// checkTCPConfined connects once to the listener and once to a port nobody
// listens on: unfiltered that is refused by the peer, under Bridle by the
// hook (EPERM), under nftables the SYN is dropped and the connect times out.
func checkTCPConfined(b *testing.B, root string, v connectVariant) {
	b.Run("check-"+v.name, func(b *testing.B) {
		inCgroup(b, root, v.cgroup)
		if err := lockedThreadIn(v.netns); err != nil {
			b.Fatal(err)
		}
		ok := sockaddr4(tcpTarget)
		if err := connectClose(&ok, time.Second); err != nil {
			b.Fatalf("%s: allowed connect: %v", v.name, err)
		}
		other := sockaddr4(netip.AddrPortFrom(tcpTarget.Addr(), tcpTarget.Port()+1))
		err := connectClose(&other, 200*time.Millisecond)
		if !errors.Is(err, v.refused) {
			b.Fatalf("%s: connect to a port no rule allows: got %v, want %v", v.name, err, v.refused)
		}
		b.SkipNow()
	})
}

// newNetns creates a network namespace with loopback up, named so that a
// leftover is recognisable, and deletes it when the benchmark ends.
func newNetns(tb testing.TB, tag string) string {
	tb.Helper()
	sweepNetns()
	name := fmt.Sprintf("bridle-bench-%s-%d-%d", tag, os.Getpid(), time.Now().UnixNano())
	run(tb, "ip", "netns", "add", name)
	tb.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
			tb.Errorf("delete netns %s: %v %s", name, err, out)
		}
	})
	run(tb, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

// sweepNetns deletes namespaces that killed benchmark runs left behind.
func sweepNetns() {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "bridle-bench-") {
			continue
		}
		if pid, ok := ownerPID(e.Name()); ok && !alive(pid) {
			_ = exec.Command("ip", "netns", "delete", e.Name()).Run()
		}
	}
}

// listen starts a TCP listener inside a namespace that accepts and closes
// every connection. It is created from this process's own cgroup, so its
// packets are nobody's workload traffic.
func listen(tb testing.TB, ns string, at netip.AddrPort) {
	tb.Helper()
	fdc := make(chan int, 1)
	errc := make(chan error, 1)
	go func() {
		// This goroutine's thread is discarded on return (see
		// lockedThreadIn); the socket keeps the namespace it was made in.
		if err := lockedThreadIn(ns); err != nil {
			errc <- err
			return
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
		if err == nil {
			err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		}
		if err == nil {
			err = unix.Bind(fd, &unix.SockaddrInet4{Port: int(at.Port()), Addr: at.Addr().As4()})
		}
		if err == nil {
			err = unix.Listen(fd, 4096)
		}
		if err != nil {
			errc <- fmt.Errorf("listen on %s in %s: %w", at, ns, err)
			return
		}
		fdc <- fd
	}()
	var fd int
	select {
	case err := <-errc:
		tb.Fatal(err)
	case fd = <-fdc:
	}
	f := os.NewFile(uintptr(fd), "listener")
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue // a connection reset before it was accepted
			}
			c.Close()
		}
	}()
}

// nftStyle is one way a user could write the same policy in nftables.
type nftStyle struct {
	set string // "": a rule per destination; "interval" or "hash": one set lookup
	ct  bool   // established and related packets accepted first (conntrack)
}

func (s nftStyle) name() string {
	n := "nft-chain"
	if s.set != "" {
		n = "nft-" + s.set
	}
	if s.ct {
		n += "-ct"
	}
	return n
}

// nftRuleset writes an envelope as nftables rules for sockets of one
// cgroup: what Bridle allows, accept; anything else from that cgroup, drop;
// everybody else's traffic untouched. In the chain the allowed destination
// is the last rule, as it is last in the envelope.
func nftRuleset(s nftStyle, env policy.Envelope, cgroup string) string {
	level := strings.Count(cgroup, "/") + 1
	match := fmt.Sprintf("socket cgroupv2 level %d %q", level, cgroup)
	var w strings.Builder
	w.WriteString("table inet bridle_bench {\n")
	switch s.set {
	case "interval":
		w.WriteString("\tset allowed {\n\t\ttype inet_proto . ipv4_addr . inet_service\n\t\tflags interval\n\t\telements = {\n")
		for _, r := range env.Egress {
			for _, p := range r.Ports {
				fmt.Fprintf(&w, "\t\t\t%s . %s . %s,\n", r.Protocol, r.Prefix.Masked(), nftPorts(p))
			}
		}
		w.WriteString("\t\t}\n\t}\n")
	case "hash":
		w.WriteString("\tset allowed {\n\t\ttype ipv4_addr . inet_service\n\t\telements = {\n")
		for _, r := range env.Egress {
			fmt.Fprintf(&w, "\t\t\t%s . %d,\n", r.Prefix.Addr(), r.Ports[0].First)
		}
		w.WriteString("\t\t}\n\t}\n")
	}
	w.WriteString("\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n")
	if s.ct {
		w.WriteString("\t\tct state established,related accept\n")
	}
	switch s.set {
	case "interval":
		fmt.Fprintf(&w, "\t\t%s meta l4proto . ip daddr . th dport @allowed accept\n", match)
	case "hash":
		fmt.Fprintf(&w, "\t\t%s ip daddr . tcp dport @allowed accept\n", match)
	default:
		for _, r := range env.Egress {
			ports := make([]string, len(r.Ports))
			for i, p := range r.Ports {
				ports[i] = nftPorts(p)
			}
			list := ports[0]
			if len(ports) > 1 {
				list = "{ " + strings.Join(ports, ", ") + " }"
			}
			fmt.Fprintf(&w, "\t\t%s ip daddr %s %s dport %s accept\n", match, r.Prefix.Masked(), r.Protocol, list)
		}
	}
	fmt.Fprintf(&w, "\t\t%s drop\n\t}\n}\n", match)
	return w.String()
}

func nftPorts(p policy.PortRange) string {
	if p.First == p.Last {
		return fmt.Sprint(p.First)
	}
	return fmt.Sprintf("%d-%d", p.First, p.Last)
}

// loadNft loads a ruleset into a namespace's own nftables. nft resolves
// cgroup paths under /sys/fs/cgroup, which on hybrid hosts is not the
// cgroup v2 mount, so cgroup2 is mounted there inside the private mount
// namespace that `ip netns exec` makes; the host sees none of it.
func loadNft(tb testing.TB, ns, ruleset string) {
	tb.Helper()
	file := filepath.Join(tb.TempDir(), "ruleset.nft")
	if err := os.WriteFile(file, []byte(ruleset), 0o600); err != nil {
		tb.Fatal(err)
	}
	run(tb, "ip", "netns", "exec", ns, "sh", "-c",
		`mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec nft -f "$1"`, "sh", file)
}

// hostRuleset is the host's nftables ruleset, to prove it is left alone.
func hostRuleset(tb testing.TB) string {
	tb.Helper()
	out, err := exec.Command("nft", "list", "ruleset").Output()
	if err != nil {
		tb.Fatalf("nft list ruleset: %v", err)
	}
	return string(out)
}
