package bench

import (
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
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

	variants := []learnedVariant{
		{connectVariant: connectVariant{name: "nohook", cgroup: tree.sub(b, "nohook")}},
		{connectVariant: connectVariant{name: "emptyhook", cgroup: empty}},
		{connectVariant: connectVariant{name: "rule", cgroup: ruleCg, refused: unix.EPERM}},
		{connectVariant: connectVariant{name: "learned-10k", cgroup: learnedCg, refused: unix.EPERM}},
		// The same two with the kernel's run-time statistics on, which
		// time the connect program alone, to the nanosecond the
		// difference needs; they cost every program on the machine a
		// little while on, so the variants above run without them.
		{connectVariant: connectVariant{name: "rule-kernel", cgroup: ruleCg}, kernelTime: true},
		{connectVariant: connectVariant{name: "learned-10k-kernel", cgroup: learnedCg}, kernelTime: true},
	}
	for _, v := range variants[:4] {
		checkUDPConfined(b, tree.root, v.connectVariant)
	}
	interleave(b, variants, func(v learnedVariant) string { return v.name }, func(b *testing.B, v learnedVariant) {
		inCgroup(b, tree.root, v.cgroup)
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer unix.Close(fd)
		sa := sockaddr4(udpTarget)
		var before loader.ProgramStats
		if v.kernelTime {
			stats, err := loader.EnableRunTimeStats()
			if err != nil {
				b.Fatal(err)
			}
			defer stats.Close()
			before = packetStats(b, e)["bridle_connect4"]
		}
		n := 0
		for b.Loop() {
			if errno := connectRaw(fd, &sa); errno != 0 {
				b.Fatalf("connect %s: %v", udpTarget, errno)
			}
			n++
		}
		if v.kernelTime {
			after := packetStats(b, e)["bridle_connect4"]
			runs := after.RunCount - before.RunCount
			if runs < uint64(n) {
				b.Fatalf("bridle_connect4 ran %d times for %d connects", runs, n)
			}
			b.ReportMetric(float64(after.RunTime-before.RunTime)/float64(runs), "kernel-ns/connect")
		}
	})
}

// learnedVariant is a connect variant, timed as a whole or, with
// kernelTime, also by the kernel's own clock around Bridle's program.
type learnedVariant struct {
	connectVariant
	kernelTime bool
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

// BenchmarkLearnedExpiryClock: the expiry check alone, which the learned
// path cannot be timed without. A learned entry's expiry is checked by
// comparing the boot clock (bpf_ktime_get_boot_ns) with the entry's
// expires_ns; the clock is read for it only when the task's own expiry
// check did not read it already (a task without TTL). This runs both
// forms ("expiry-check" reads, "expiry-reused-clock" compares), and
// nothing, in programs
// built here instruction by instruction, through the kernel's test runner
// (a socket filter, the simplest type it runs), many times per call. The
// difference is what the check costs per connect; the rest of what the
// learned path adds (BenchmarkConnectUDPLearned) is the hash lookup.
func BenchmarkLearnedExpiryClock(b *testing.B) {
	requireRoot(b)
	load := func(name string, body asm.Instructions) *ebpf.Program {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name: name, Type: ebpf.SocketFilter, License: "Dual BSD/GPL",
			Instructions: body,
		})
		if err != nil {
			b.Fatalf("%s program: %v", name, err)
		}
		b.Cleanup(func() { p.Close() })
		return p
	}
	expires := time.Now().Add(time.Hour).UnixNano() // a far future, as an entry's
	now := time.Now().UnixNano()
	progs := map[string]*ebpf.Program{
		// A task with a TTL: its own expiry check read the clock for this
		// decision, and the entry's check compares with that reading.
		"expiry-reused-clock": load("bench_expiry_cmp", asm.Instructions{
			asm.LoadImm(asm.R0, now, asm.DWord),
			asm.LoadImm(asm.R1, expires, asm.DWord),
			asm.JGE.Reg(asm.R0, asm.R1, "expired"),
			asm.Mov.Imm(asm.R0, 1),
			asm.Return(),
			asm.Mov.Imm(asm.R0, 0).WithSymbol("expired"),
			asm.Return(),
		}),
		"empty": load("bench_empty", asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()}),
		"expiry-check": load("bench_expiry", asm.Instructions{
			asm.FnKtimeGetBootNs.Call(),
			asm.LoadImm(asm.R1, expires, asm.DWord),
			asm.JGE.Reg(asm.R0, asm.R1, "expired"),
			asm.Mov.Imm(asm.R0, 1),
			asm.Return(),
			asm.Mov.Imm(asm.R0, 0).WithSymbol("expired"),
			asm.Return(),
		}),
	}
	packet := make([]byte, 64)
	interleave(b, []string{"empty", "expiry-check", "expiry-reused-clock"}, func(s string) string { return s }, func(b *testing.B, name string) {
		const repeat = 100_000
		var total time.Duration
		runs := 0
		for runs = 0; total < 100*time.Millisecond || runs == 0; runs += repeat {
			ret, per, err := progs[name].Benchmark(packet, repeat, nil)
			if err != nil {
				b.Fatalf("%s: %v", name, err)
			}
			if ret != 1 {
				b.Fatalf("%s returned %d, want 1 (not expired)", name, ret)
			}
			total += per * repeat
		}
		b.ReportMetric(float64(total.Nanoseconds())/float64(runs), "kernel-ns/run")
	})
}
