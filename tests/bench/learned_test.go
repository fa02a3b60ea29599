package bench

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
)

// BenchmarkConnectUDPLearned: BenchmarkConnectUDP's unconnected-UDP
// connect() where the destination is allowed by an address the task
// learned from a resolver answer, among 10k learned entries, against the
// same destination allowed by a rule. Both tasks have 10 rules and 10k
// learned entries; in "learned" no rule allows the target, so the check
// looks the rules up, misses, then looks up the learned entry and checks
// its generation, expiry (the boot clock) and port. "learned" minus "rule"
// is what the learned path adds to a connect.
func BenchmarkConnectUDPLearned(b *testing.B) {
	e := benchEnforcer(b)
	tree := newCgroupTree(b)
	empty := tree.sub(b, "emptyhook")
	attachEmptyConnect4(b, empty)
	ruleCg, learnedCg := tree.sub(b, "rule"), tree.sub(b, "learned")

	workload(b, e, ruleCg, 1, compile(b, envelope(10, policy.ProtoUDP, udpTarget), 10))
	if err := e.Learn(1, 1, learnedFiller(learnedCount)); err != nil {
		b.Fatal(err)
	}

	workload(b, e, learnedCg, 2, compile(b, policy.Envelope{Egress: fillerRules(10)}, 10))
	checkUDPRefused(b, tree.root, learnedCg)
	addrs := learnedFiller(learnedCount)
	// The target among them, midway, where a hash map puts it no better
	// or worse than any other.
	addrs[learnedCount/2] = loader.LearnedAddr{
		Protocol: policy.ProtoUDP, Addr: udpTarget.Addr(),
		Ports:   []policy.PortRange{{First: udpTarget.Port(), Last: udpTarget.Port()}},
		Expires: time.Now().Add(time.Hour),
	}
	if err := e.Learn(2, 1, addrs); err != nil {
		b.Fatal(err)
	}

	variants := []connectVariant{
		{name: "nohook", cgroup: tree.sub(b, "nohook")},
		{name: "emptyhook", cgroup: empty},
		{name: "rule", cgroup: ruleCg, refused: unix.EPERM},
		{name: "learned-10k", cgroup: learnedCg, refused: unix.EPERM},
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

// checkUDPRefused proves that nothing but a learned entry could allow the
// target in a workload: before it is learned, the connect is refused.
func checkUDPRefused(b *testing.B, root, cgroup string) {
	b.Run("check-unlearned", func(b *testing.B) {
		inCgroup(b, root, cgroup)
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer unix.Close(fd)
		sa := sockaddr4(udpTarget)
		if errno := connectRaw(fd, &sa); errno != unix.EPERM {
			b.Fatalf("connect to %s before it was learned: got %v, want %v", udpTarget, errno, unix.EPERM)
		}
		b.SkipNow()
	})
}
