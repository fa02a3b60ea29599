package bench

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
)

// rounds is how often every variant of a comparison is measured
// (BRIDLE_BENCH_ROUNDS, default 15). Variants run interleaved, one round
// after another, so that noise from other tenants of a shared machine falls
// on all of them alike; the report takes medians over rounds. Settings are
// environment variables, not test flags, because `go test` hands its flags
// to every package's test binary and each would have to define them all.
var rounds = envInt("BRIDLE_BENCH_ROUNDS", 15)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// wakeupBytes is the event batching Bridle loads its enforcer with, so the
// enforcer measured here is the one users run.
const wakeupBytes = loader.DefaultWakeupBytes

// requireRoot fails rather than skips: a benchmark run that silently
// measured nothing would print a table that looks like a result.
func requireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Fatal("benchmarks need root: they load BPF programs and create cgroups and network namespaces (run make bench as root)")
	}
}

// benchEnforcer loads a private enforcer pinned under
// /sys/fs/bpf/bridle/bench and removes its pins when the benchmark ends.
func benchEnforcer(tb testing.TB) *loader.Enforcer {
	tb.Helper()
	requireRoot(tb)
	root := filepath.Join(loader.DefaultPinRoot, "bench")
	sweep(root, func(dir string) { _ = loader.RemovePins(dir) })
	dir := filepath.Join(root, ownedName(tb.Name()))
	e, err := loader.Load(loader.Options{PinDir: dir, WakeupBytes: wakeupBytes})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		e.Close()
		if err := e.Unpin(); err != nil {
			tb.Error(err)
		}
		_ = unix.Rmdir(root) // fails while another run still uses it
	})
	return e
}

// ownedName names a pin directory, cgroup or namespace after the benchmark
// and this process, so that a later run can tell leftovers of a run that
// was killed before its cleanup (a dead pid) from those of a live one.
func ownedName(bench string) string {
	return fmt.Sprintf("%s-%d-%d", safeName(bench), os.Getpid(), time.Now().UnixNano())
}

// ownerPID reads the pid back out of an ownedName; ok is false for names
// this package did not make.
func ownerPID(name string) (int, bool) {
	parts := strings.Split(name, "-")
	if len(parts) < 3 {
		return 0, false
	}
	pid, err := strconv.Atoi(parts[len(parts)-2])
	return pid, err == nil && pid > 0
}

// alive reports whether a process exists.
func alive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// sweep removes what dead benchmark runs left under dir.
func sweep(dir string, remove func(string)) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if pid, ok := ownerPID(e.Name()); ok && !alive(pid) {
			remove(filepath.Join(dir, e.Name()))
		}
	}
}

func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == ' ' || r == '#' {
			return '_'
		}
		return r
	}, s)
}

// cgroupTree is a private cgroup directory for one benchmark, with the
// cgroup v2 root it lives under (nftables names cgroups relative to it).
type cgroupTree struct {
	root string // cgroup v2 mount point
	dir  string // absolute path of this benchmark's directory
}

// newCgroupTree creates <cgroup2>/bridle-bench/<benchmark>-<time>. Cleanup
// brings the process home first, then kills and removes what is left.
func newCgroupTree(tb testing.TB) *cgroupTree {
	tb.Helper()
	root, err := loader.CgroupRoot()
	if err != nil {
		tb.Fatal(err)
	}
	home, err := currentCgroup(root)
	if err != nil {
		tb.Fatal(err)
	}
	base := filepath.Join(root, "bridle-bench")
	sweep(base, removeCgroup)
	dir := filepath.Join(base, ownedName(tb.Name()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		removeCgroup(dir)
		_ = os.Remove(base) // fails while another run still uses it
	})
	// Registered last so it runs first: no cgroup can be removed while
	// this process is still inside it.
	tb.Cleanup(func() {
		if err := enterCgroup(home); err != nil {
			tb.Errorf("return to cgroup %s: %v", home, err)
		}
	})
	return &cgroupTree{root: root, dir: dir}
}

// sub creates a child cgroup and returns its absolute path.
func (c *cgroupTree) sub(tb testing.TB, name string) string {
	tb.Helper()
	p := filepath.Join(c.dir, name)
	if err := os.Mkdir(p, 0o755); err != nil {
		tb.Fatal(err)
	}
	return p
}

// rel is a cgroup's path as nftables' socket cgroupv2 expression names it.
func (c *cgroupTree) rel(path string) string {
	r, _ := filepath.Rel(c.root, path)
	return r
}

// removeCgroup kills anything left in a cgroup tree and removes it, deepest
// directories first.
func removeCgroup(dir string) {
	_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.IsDir() {
			removeCgroup(filepath.Join(dir, e.Name()))
		}
	}
	for range 100 {
		if err := os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// currentCgroup is this process's cgroup v2 directory, from /proc/self/cgroup.
func currentCgroup(root string) (string, error) {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return filepath.Join(root, rest), nil
		}
	}
	return "", errors.New("no cgroup v2 entry in /proc/self/cgroup")
}

// enterCgroup moves this whole process, every thread of it, into a cgroup.
// Cgroup hooks judge a socket by the cgroup it was created in and
// bpf_get_current_cgroup_id by the caller's, so the measuring code creates
// its sockets after this.
func enterCgroup(dir string) error {
	return os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0)
}

// inCgroup moves the process into dir for the rest of a benchmark and
// checks that the kernel agrees it is there.
func inCgroup(tb testing.TB, root, dir string) {
	tb.Helper()
	home, err := currentCgroup(root)
	if err != nil {
		tb.Fatal(err)
	}
	if err := enterCgroup(dir); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := enterCgroup(home); err != nil {
			tb.Errorf("return to cgroup %s: %v", home, err)
		}
	})
	if now, err := currentCgroup(root); err != nil || now != dir {
		tb.Fatalf("process is in cgroup %s, want %s (%v)", now, dir, err)
	}
}

// workload makes a cgroup a Bridle workload: programs attached, the rule
// set written into slot, a task in force, and the cgroup bound to it.
func workload(tb testing.TB, e *loader.Enforcer, cg string, slot uint32, rs policy.RuleSet) {
	tb.Helper()
	if err := e.AttachCgroup(cg); err != nil {
		tb.Fatal(err)
	}
	id, err := loader.CgroupID(cg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := e.WriteRules(slot, rs); err != nil {
		tb.Fatal(err)
	}
	if err := e.SetTask(slot, time.Now().Add(time.Hour), 1); err != nil {
		tb.Fatal(err)
	}
	if err := e.BindWorkload(id, slot, loader.WorkloadMode{}); err != nil {
		tb.Fatal(err)
	}
}

// Address regions the filler rules are drawn from. They are disjoint from
// each other and from loopback, so every rule is its own trie entry and
// none of them ever matches a benchmark's connection.
var (
	hostRegion = netip.MustParseAddr("10.0.0.0")   // /32 hosts, 2^24 of them
	netRegion  = netip.MustParseAddr("11.0.0.0")   // /24 networks, 2^16
	smallNets  = netip.MustParseAddr("100.64.0.0") // /28 networks, 2^18
)

// scatter spreads consecutive indices over a region of 2^bits slots:
// multiplying by an odd constant is a bijection modulo 2^bits, so no two
// indices collide, and neighbours land far apart, as real destinations do.
func scatter(i, bits int) uint32 {
	return uint32(i) * 0x9E3779B1 & (1<<bits - 1)
}

func addrPlus(base netip.Addr, off uint32) netip.Addr {
	a := base.As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += off
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// fillerRules returns n egress rules shaped like a real envelope: a mix of
// hosts and networks of several sizes, TCP and UDP, single ports, port
// lists and port ranges.
func fillerRules(n int) []policy.EgressRule {
	portSets := [][]policy.PortRange{
		{{First: 443, Last: 443}},
		{{First: 80, Last: 80}, {First: 443, Last: 443}},
		{{First: 1024, Last: 65535}},
		{{First: 5432, Last: 5432}, {First: 6379, Last: 6379}, {First: 9000, Last: 9100}},
	}
	out := make([]policy.EgressRule, 0, n)
	for i := range n {
		j := i / 4
		var p netip.Prefix
		switch i % 4 {
		case 0, 1:
			p = netip.PrefixFrom(addrPlus(hostRegion, scatter(2*j+i%4, 24)), 32)
		case 2:
			p = netip.PrefixFrom(addrPlus(smallNets, scatter(j, 18)<<4), 28)
		case 3:
			p = netip.PrefixFrom(addrPlus(netRegion, scatter(j, 16)<<8), 24)
		}
		proto := policy.ProtoTCP
		if (i/2)%2 == 1 {
			proto = policy.ProtoUDP
		}
		out = append(out, policy.EgressRule{Protocol: proto, Prefix: p, Ports: portSets[j%len(portSets)]})
	}
	return out
}

// envelope is n egress rules of which exactly one allows target; the
// target's rule comes last, where a linear ruleset would find it last.
func envelope(n int, proto policy.Protocol, target netip.AddrPort) policy.Envelope {
	rules := fillerRules(n - 1)
	rules = append(rules, policy.EgressRule{
		Protocol: proto,
		Prefix:   netip.PrefixFrom(target.Addr(), 32),
		Ports:    []policy.PortRange{{First: target.Port(), Last: target.Port()}},
	})
	return policy.Envelope{Egress: rules}
}

// compile compiles an envelope and checks that it has the size the
// benchmark claims.
func compile(tb testing.TB, env policy.Envelope, want int) policy.RuleSet {
	tb.Helper()
	rs, err := policy.Compile(env)
	if err != nil {
		tb.Fatal(err)
	}
	if got := len(rs.Net4) + len(rs.Net6); got != want {
		tb.Fatalf("envelope compiled to %d network entries, want %d", got, want)
	}
	return rs
}

// sizeName is how rule counts appear in benchmark names: 10, 1k, 100k.
func sizeName(n int) string {
	if n >= 1000 && n%1000 == 0 {
		return strconv.Itoa(n/1000) + "k"
	}
	return strconv.Itoa(n)
}

// run runs a command and fails with its output.
func run(tb testing.TB, name string, args ...string) {
	tb.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
}

// interleave runs every variant once per round, rotating which goes first
// so that no variant always runs right after the setup or the same
// neighbour. Repeated sub-benchmark names get #NN suffixes from the testing
// package; the report folds them back together.
func interleave[V any](b *testing.B, variants []V, name func(V) string, bench func(*testing.B, V)) {
	for r := range rounds {
		for k := range variants {
			v := variants[(r+k)%len(variants)]
			b.Run(name(v), func(b *testing.B) { bench(b, v) })
		}
	}
}

// lockedThreadIn moves the calling goroutine's thread into a network
// namespace. The goroutine must not unlock: when it exits, the runtime
// destroys the thread rather than reuse it in the wrong namespace.
func lockedThreadIn(ns string) error {
	runtime.LockOSThread()
	fd, err := unix.Open(filepath.Join("/run/netns", ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", ns, err)
	}
	defer unix.Close(fd)
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter netns %s: %w", ns, err)
	}
	return nil
}
