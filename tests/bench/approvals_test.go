package bench

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/daemon/approvals"
	"github.com/bridle-sh/bridle/daemon/node"
	"github.com/bridle-sh/bridle/daemon/store"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
	"github.com/bridle-sh/bridle/policy/engine"
)

// askedRegion is where the approval benchmarks' workload connects to and
// is refused: loopback (a UDP connect needs no listener, and loopback is
// routed on every machine), outside the envelope, inside the approvable
// entry. Each request is for an address of its own, so none is a
// duplicate of a pending one or in a denial's cooldown.
var askedRegion = netip.MustParseAddr("127.1.0.0") // a /16

// approvalsPolicy is a task that may connect to udpTarget and may ask for
// UDP to askedRegion on the same port, as bridled's admins allow.
const approvalsPolicy = `package bridle

envelope := {"egress": [{"protocol": "udp", "cidr": "127.0.0.1/32", "ports": [5353]}], "ttl": "1h"}

approvable := {"egress": [{"protocol": "udp", "cidr": "127.1.0.0/16", "ports": [5353], "max_ttl": "10m"}]}
`

// admin answers the requests: root on the socket, an admin of every node.
var admin = approvals.Approver{UID: 0, GID: 0, Auth: engine.AuthPeerCred}

// BenchmarkApproval: one step-up approval as bridled runs it, the node,
// the event reader and the approvals manager wired as in the daemon, over
// the real kernel. Each iteration the workload connects to an address its
// envelope leaves out and an approvable entry covers; the kernel refuses
// it, the event reader turns the refusal into a record, and the manager
// opens a request and publishes it to its subscribers (the watch stream
// and the web page subscribe the same way). request-p50-ns is from the
// connect call until a subscriber holds the pending request. Then an
// admin approves it for 2 minutes: grant-p50-ns is from the Approve call
// until the workload's next connect to that address is allowed
// (retries/op counts connects still refused after Approve returned, which
// should be none: the grant is in the kernel when it returns). Each round
// is a task of its own, ended (untimed) after it.
func BenchmarkApproval(b *testing.B) {
	e := benchEnforcer(b)
	tree := newCgroupTree(b)
	req := taskWorkload(b, e, tree)
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "approvals.rego"), []byte(approvalsPolicy), 0o644); err != nil {
		b.Fatal(err)
	}
	eng := engine.NewEngine()
	ctx := context.Background()
	if err := eng.LoadDir(ctx, dir); err != nil {
		b.Fatal(err)
	}
	st, err := store.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	root, err := loader.CgroupRoot()
	if err != nil {
		b.Fatal(err)
	}
	n := node.New(node.Options{Kernel: e, Engine: eng, Store: st, CgroupRoot: root})
	m, err := approvals.New(approvals.Options{
		Kernel: n.Tasks(), Records: n.Record,
		IsAdmin:    func(a approvals.Approver) bool { return a.UID == 0 },
		MaxPending: 1, // every request is answered before the next is asked
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(m.Close)
	n.UseApprovals(m)
	events, err := e.Events()
	if err != nil {
		b.Fatal(err)
	}
	reading := make(chan struct{})
	go func() { defer close(reading); n.ReadEvents(events) }()
	b.Cleanup(func() { events.Close(); <-reading })
	changes, unsubscribe := m.Subscribe()
	b.Cleanup(unsubscribe)

	next := uint32(0) // the next address of askedRegion asked for
	interleave(b, []string{"cycle"}, func(s string) string { return s }, func(b *testing.B, _ string) {
		b.StopTimer()
		t, err := n.Start(ctx, node.Request{Workload: req.Workload, Intent: "benchmark"})
		if err != nil {
			b.Fatal(err)
		}
		allowed := sockaddr4(udpTarget)
		fd := udpSocket(b)
		defer unix.Close(fd)
		if errno := connectRaw(fd, &allowed); errno != 0 {
			b.Fatalf("task %s: connect to %s: %v, want allowed", t.ID, udpTarget, errno)
		}
		var opened, granted []time.Duration
		retries := 0
		for i := 0; i < b.N; i++ {
			next++
			addr := addrPlus(askedRegion, next%65534+1)
			sa := sockaddr4(netip.AddrPortFrom(addr, udpTarget.Port()))

			b.StartTimer()
			start := time.Now()
			if errno := connectRaw(fd, &sa); errno != unix.EPERM {
				b.Fatalf("task %s: connect to %s: got %v, want %v (no grant yet)", t.ID, addr, errnoText(errno), unix.EPERM)
			}
			r := awaitPending(b, changes, t.ID, addr)
			opened = append(opened, time.Since(start))

			start = time.Now()
			if _, err := m.Approve(r.ID, admin, 2*time.Minute); err != nil {
				b.Fatal(err)
			}
			for {
				errno := connectRaw(fd, &sa)
				if errno == 0 {
					break
				}
				if errno != unix.EPERM {
					b.Fatalf("connect to %s after approving %s: %v", addr, r.ID, errno)
				}
				if time.Since(start) > 5*time.Second {
					b.Fatalf("connect to %s still refused 5 s after approving %s", addr, r.ID)
				}
				retries++
			}
			granted = append(granted, time.Since(start))
			b.StopTimer()
		}
		if _, err := n.End(t.ID, "benchmark"); err != nil {
			b.Fatal(err)
		}
		n.Wait()
		b.ReportMetric(float64(p50(opened).Nanoseconds()), "request-p50-ns")
		b.ReportMetric(float64(p50(granted).Nanoseconds()), "grant-p50-ns")
		b.ReportMetric(float64(retries)/float64(b.N), "retries/op")
	})
}

// awaitPending waits (bounded) for the subscription to deliver the task's
// pending request for addr; other changes (the approvals of earlier
// requests) pass by.
func awaitPending(b *testing.B, changes <-chan approvals.Request, task string, addr netip.Addr) approvals.Request {
	b.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case r, ok := <-changes:
			if !ok {
				b.Fatal("the approvals manager closed the subscription")
			}
			if r.Task == task && r.State == approvals.Pending && r.Address == addr.String() {
				return r
			}
		case <-timeout:
			b.Fatalf("no request of task %s for %s within 5 s of its refusal", task, addr)
		}
	}
}

// grantCount is how many grants the task holds in the granted-connect
// benchmark: a task a person kept answering all day.
const grantCount = 1000

// BenchmarkConnectUDPGranted: BenchmarkConnectUDP's unconnected-UDP
// connect() where the destination is allowed by a grant (an approved
// request) among 1k grants of the task, against the same destination
// allowed by a rule, and against the empty connect4 program, the floor any
// connect hook costs. Both tasks have 10 rules; in "granted-1k" no rule
// allows the target, so the check looks the rules up, misses, looks the
// learned addresses up, misses, then finds the grant and checks its
// generation, expiry and port: the longest path an allowed connect takes.
func BenchmarkConnectUDPGranted(b *testing.B) {
	e := benchEnforcer(b)
	tree := newCgroupTree(b)
	empty := tree.sub(b, "emptyhook")
	attachEmptyConnect4(b, empty)
	ruleCg, grantedCg := tree.sub(b, "rule"), tree.sub(b, "granted")

	workload(b, e, ruleCg, 1, compile(b, envelope(10, policy.ProtoUDP, udpTarget), 10))
	if err := e.GrantAddrs(1, 1, learnedFiller(grantCount)); err != nil {
		b.Fatal(err)
	}

	workload(b, e, grantedCg, 2, compile(b, policy.Envelope{Egress: fillerRules(10)}, 10))
	checkUDPRefused(b, tree.root, grantedCg)
	grants := learnedFiller(grantCount)
	// The target among them, midway, where a hash map puts it no better
	// or worse than any other.
	grants[grantCount/2] = loader.GrantedAddr{
		Protocol: policy.ProtoUDP, Addr: udpTarget.Addr(),
		Ports:   []policy.PortRange{{First: udpTarget.Port(), Last: udpTarget.Port()}},
		Expires: time.Now().Add(time.Hour),
	}
	if err := e.GrantAddrs(2, 1, grants); err != nil {
		b.Fatal(err)
	}

	variants := []learnedVariant{
		{connectVariant: connectVariant{name: "nohook", cgroup: tree.sub(b, "nohook")}},
		{connectVariant: connectVariant{name: "emptyhook", cgroup: empty}},
		{connectVariant: connectVariant{name: "rule", cgroup: ruleCg, refused: unix.EPERM}},
		{connectVariant: connectVariant{name: "granted-1k", cgroup: grantedCg, refused: unix.EPERM}},
		// Timed by the kernel's run-time statistics too, as in
		// BenchmarkConnectUDPLearned.
		{connectVariant: connectVariant{name: "rule-kernel", cgroup: ruleCg}, kernelTime: true},
		{connectVariant: connectVariant{name: "granted-1k-kernel", cgroup: grantedCg}, kernelTime: true},
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
