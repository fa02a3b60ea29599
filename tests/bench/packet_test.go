package bench

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
)

// BenchmarkPacketCheck: what Bridle's packet programs cost per packet. A
// workload's UDP socket on loopback sends a datagram to itself and reads
// it back, so every op is one packet through the egress check (which every
// packet a workload sends passes: one header byte read, then its socket
// type) and one through the inbound check (every packet delivered to a
// workload's socket: one read of the socket's state). The kernel-ns
// metrics come from BPF run-time statistics; ns/op against the same loop
// in a cgroup without programs shows the whole cost, hook mechanism
// included.
func BenchmarkPacketCheck(b *testing.B) {
	e := benchEnforcer(b)
	tree := newCgroupTree(b)
	cg := tree.sub(b, "packet")
	self := netip.MustParseAddr("127.0.0.1")
	workload(b, e, cg, 1, compile(b, policy.Envelope{Egress: []policy.EgressRule{
		{Protocol: policy.ProtoUDP, Prefix: netip.PrefixFrom(self, 32)},
	}}, 1))
	stats, err := loader.EnableRunTimeStats()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stats.Close() })

	variants := []connectVariant{{name: "nohook", cgroup: tree.sub(b, "nohook")}, {name: "bridle", cgroup: cg}}
	interleave(b, variants, func(v connectVariant) string { return v.name }, func(b *testing.B, v connectVariant) {
		inCgroup(b, tree.root, v.cgroup)
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer unix.Close(fd)
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: self.As4()}); err != nil {
			b.Fatal(err)
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			b.Fatal(err)
		}
		if err := unix.Connect(fd, sa); err != nil {
			b.Fatal(err)
		}
		msg, buf := []byte("bridle-bench"), make([]byte, 64)
		before := packetStats(b, e)
		n := 0
		for b.Loop() {
			if _, err := unix.Write(fd, msg); err != nil {
				b.Fatalf("send: %v", err)
			}
			if _, err := unix.Read(fd, buf); err != nil {
				b.Fatalf("receive: %v", err)
			}
			n++
		}
		after := packetStats(b, e)
		for name, unit := range map[string]string{"bridle_ping_egress": "egress-ns/packet", "bridle_accept": "ingress-ns/packet"} {
			runs := after[name].RunCount - before[name].RunCount
			if v.name == "nohook" {
				continue
			}
			if runs < uint64(n) {
				b.Fatalf("%s ran %d times for %d packets", name, runs, n)
			}
			b.ReportMetric(float64(after[name].RunTime-before[name].RunTime)/float64(runs), unit)
		}
	})
}

func packetStats(b *testing.B, e *loader.Enforcer) map[string]loader.ProgramStats {
	b.Helper()
	all, err := e.ProgramStats()
	if err != nil {
		b.Fatal(err)
	}
	out := map[string]loader.ProgramStats{}
	for _, s := range all {
		out[s.Name] = s
	}
	return out
}
