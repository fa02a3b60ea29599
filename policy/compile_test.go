package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func mustConnect(t testing.TB, specs ...string) []EgressRule {
	t.Helper()
	var rules []EgressRule
	for _, s := range specs {
		r, err := ParseConnect(s)
		if err != nil {
			t.Fatal(err)
		}
		rules = append(rules, r)
	}
	return rules
}

// rulesString renders compiled rules compactly for comparison, with the
// port list always shown.
func rulesString(rules []NetRule) []string {
	var out []string
	for _, r := range rules {
		out = append(out, fmt.Sprintf("%s:%s:%s", r.Protocol, formatPrefix(r.Prefix), formatPorts(r.Ports)))
	}
	return out
}

func TestCompileEgress(t *testing.T) {
	tests := []struct {
		name       string
		in         []string
		net4, net6 []string
	}{
		{
			name: "nested prefixes inherit the ports of the prefixes containing them",
			in:   []string{"tcp:10.0.0.0/8:443", "tcp:10.1.0.0/16:80", "tcp:10.1.2.0/24:22"},
			net4: []string{"tcp:10.0.0.0/8:443", "tcp:10.1.0.0/16:80,443", "tcp:10.1.2.0/24:22,80,443"},
		},
		{
			name: "order of input does not matter",
			in:   []string{"tcp:10.1.2.0/24:22", "tcp:10.1.0.0/16:80", "tcp:10.0.0.0/8:443"},
			net4: []string{"tcp:10.0.0.0/8:443", "tcp:10.1.0.0/16:80,443", "tcp:10.1.2.0/24:22,80,443"},
		},
		{
			name: "siblings do not share ports",
			in:   []string{"tcp:10.0.0.0/8:1", "tcp:10.1.0.0/16:2", "tcp:10.2.0.0/16:3", "tcp:10.1.5.0/24:4", "tcp:11.0.0.0/8:5"},
			net4: []string{"tcp:10.0.0.0/8:1", "tcp:10.1.0.0/16:1-2", "tcp:10.1.5.0/24:1-2,4", "tcp:10.2.0.0/16:1,3", "tcp:11.0.0.0/8:5"},
		},
		{
			name: "a same-address longer prefix after a sibling subtree",
			in:   []string{"tcp:10.0.0.0/8:1", "tcp:10.0.0.0/9:2", "tcp:10.0.0.0/10:3", "tcp:10.128.0.0/9:4"},
			net4: []string{"tcp:10.0.0.0/8:1", "tcp:10.0.0.0/9:1-2", "tcp:10.0.0.0/10:1-3", "tcp:10.128.0.0/9:1,4"},
		},
		{
			name: "all ports in a containing prefix wins",
			in:   []string{"udp:0.0.0.0/0", "udp:10.0.0.0/8:53"},
			net4: []string{"udp:0.0.0.0/0:0-65535", "udp:10.0.0.0/8:0-65535"},
		},
		{
			name: "protocols do not share ports",
			in:   []string{"tcp:10.0.0.0/8:443", "udp:10.1.0.0/16:53"},
			net4: []string{"tcp:10.0.0.0/8:443", "udp:10.1.0.0/16:53"},
		},
		{
			name: "duplicates merge, adjacent and overlapping ranges join",
			in:   []string{"tcp:10.0.0.0/8:80", "tcp:10.0.0.0/8:81-90", "tcp:10.9.9.9/8:85-100,443", "tcp:10.0.0.0/8:442"},
			net4: []string{"tcp:10.0.0.0/8:80-100,442-443"},
		},
		{
			name: "host routes",
			in:   []string{"tcp:192.0.2.0/24:443", "tcp:192.0.2.7:8080"},
			net4: []string{"tcp:192.0.2.0/24:443", "tcp:192.0.2.7:443,8080"},
		},
		{
			name: "any expands to tcp, udp and icmp",
			in:   []string{"any:10.0.0.0/8"},
			net4: []string{"icmp:10.0.0.0/8:0-65535", "tcp:10.0.0.0/8:0-65535", "udp:10.0.0.0/8:0-65535"},
		},
		{
			name: "any with ports covers tcp and udp only",
			in:   []string{"any:10.0.0.53:53"},
			net4: []string{"tcp:10.0.0.53:53", "udp:10.0.0.53:53"},
		},
		{
			name: "any merges with explicit rules",
			in:   []string{"any:10.0.0.0/8", "tcp:10.1.0.0/16:80", "icmp:10.1.0.0/16"},
			net4: []string{"icmp:10.0.0.0/8:0-65535", "icmp:10.1.0.0/16:0-65535", "tcp:10.0.0.0/8:0-65535", "tcp:10.1.0.0/16:0-65535", "udp:10.0.0.0/8:0-65535"},
		},
		{
			name: "ipv6 nesting, mapped input goes to ipv4",
			in:   []string{"tcp:[2001:db8::]/32:443", "tcp:[2001:db8:1::]/48:80", "tcp:[2001:db9::]/32:22", "tcp:[::ffff:10.0.0.0]/104:5"},
			net4: []string{"tcp:10.0.0.0/8:5"},
			net6: []string{"tcp:[2001:db8::]/32:443", "tcp:[2001:db8:1::]/48:80,443", "tcp:[2001:db9::]/32:22"},
		},
		{
			name: "ipv4 and ipv6 never share ports",
			in:   []string{"tcp:0.0.0.0/0:1", "tcp:[::]/0:2", "tcp:[::1]:3", "tcp:127.0.0.1:4"},
			net4: []string{"tcp:0.0.0.0/0:1", "tcp:127.0.0.1:1,4"},
			net6: []string{"tcp:[::]/0:2", "tcp:[::1]:2-3"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := Compile(Envelope{Egress: mustConnect(t, tt.in...)})
			if err != nil {
				t.Fatal(err)
			}
			if got := rulesString(rs.Net4); !slices.Equal(got, tt.net4) {
				t.Errorf("Net4 = %q\nwant   %q", got, tt.net4)
			}
			if got := rulesString(rs.Net6); !slices.Equal(got, tt.net6) {
				t.Errorf("Net6 = %q\nwant   %q", got, tt.net6)
			}
			if want := len(tt.net4) + len(tt.net6); rs.Count() != want {
				t.Errorf("Count() = %d, want %d", rs.Count(), want)
			}
		})
	}
}

func TestCompileEgressErrors(t *testing.T) {
	ports := func(n int) []PortRange {
		var out []PortRange
		for i := range n {
			out = append(out, PortRange{uint16(10 * (i + 1)), uint16(10 * (i + 1))})
		}
		return out
	}
	pfx := netip.MustParsePrefix
	tests := []struct {
		name string
		in   []EgressRule
		why  string
	}{
		{"too many ranges", []EgressRule{{ProtoTCP, pfx("10.0.0.0/8"), "", ports(MaxPortRanges + 1)}}, "tcp 10.0.0.0/8 needs 17 port ranges"},
		{"too many ranges once inherited", []EgressRule{
			{ProtoTCP, pfx("10.0.0.0/8"), "", ports(MaxPortRanges)},
			{ProtoTCP, pfx("10.1.0.0/16"), "", []PortRange{{1, 1}}},
		}, "tcp 10.1.0.0/16 needs 17 port ranges"},
		{"too many ranges once duplicates merge", []EgressRule{
			{ProtoUDP, pfx("2001:db8::/32"), "", ports(MaxPortRanges)},
			{ProtoUDP, pfx("2001:db8::/32"), "", []PortRange{{1, 1}}},
		}, "udp 2001:db8::/32 needs 17"},
		{"invalid prefix", []EgressRule{{Protocol: ProtoTCP}}, "invalid prefix"},
		{"short mapped prefix", []EgressRule{{ProtoTCP, pfx("::ffff:0:0/90"), "", nil}}, "shorter than /96"},
		{"backwards range", []EgressRule{{ProtoTCP, pfx("10.0.0.0/8"), "", []PortRange{{9, 8}}}}, "runs backwards"},
		{"icmp with ports", []EgressRule{{ProtoICMP, pfx("10.0.0.0/8"), "", []PortRange{{9, 9}}}}, "icmp has no ports"},
		{"unknown protocol", []EgressRule{{132, pfx("10.0.0.0/8"), "", nil}}, "unknown protocol 132"},
	}
	for _, tt := range tests {
		_, err := Compile(Envelope{Egress: tt.in})
		if err == nil || !strings.Contains(err.Error(), tt.why) {
			t.Errorf("%s: Compile error = %v, want one containing %q", tt.name, err, tt.why)
		}
	}
	// Exactly MaxPortRanges fits.
	if _, err := Compile(Envelope{Egress: []EgressRule{{ProtoTCP, pfx("10.0.0.0/8"), "", ports(MaxPortRanges)}}}); err != nil {
		t.Errorf("Compile with %d ranges: %v", MaxPortRanges, err)
	}
	if _, err := Compile(Envelope{TTL: -1}); err == nil {
		t.Error("Compile with a negative TTL succeeded")
	}
}

func TestCompileNormalizesHandBuiltRules(t *testing.T) {
	rs, err := Compile(Envelope{Egress: []EgressRule{
		{ProtoTCP, netip.MustParsePrefix("::ffff:10.1.2.3/104"), "", []PortRange{{90, 100}, {80, 89}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"tcp:10.0.0.0/8:80-100"}
	if got := rulesString(rs.Net4); !slices.Equal(got, want) || len(rs.Net6) != 0 {
		t.Errorf("Net4 = %q, Net6 = %q; want %q and none", got, rulesString(rs.Net6), want)
	}
}

// TestCompileMatchesEnvelope checks the compiled rules against the meaning
// of the envelope on random inputs: a longest-prefix lookup followed by a
// port check must allow exactly what some envelope rule allows.
func TestCompileMatchesEnvelope(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	protos := []Protocol{ProtoTCP, ProtoUDP, ProtoICMP, ProtoAny}
	randAddr := func() netip.Addr {
		// A small space so that prefixes nest and collide often.
		return netip.AddrFrom4([4]byte{10, 0, byte(rng.IntN(4)), byte(rng.IntN(256))})
	}
	for round := range 300 {
		var env Envelope
		for range 1 + rng.IntN(12) {
			r := EgressRule{
				Protocol: protos[rng.IntN(len(protos))],
				Prefix:   netip.PrefixFrom(randAddr(), 20+rng.IntN(13)).Masked(),
			}
			if r.Protocol != ProtoICMP && rng.IntN(4) > 0 {
				for range 1 + rng.IntN(3) {
					a := uint16(1 + rng.IntN(30))
					r.Ports = append(r.Ports, PortRange{a, a + uint16(rng.IntN(3))})
				}
			}
			env.Egress = append(env.Egress, r)
		}
		rs, err := Compile(env)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		for range 200 {
			proto := protos[rng.IntN(3)]
			addr := randAddr()
			port := uint16(rng.IntN(35))
			if proto == ProtoICMP {
				port = 0
			}
			if want, got := envelopeAllows(env, proto, addr, port), ruleSetAllows(rs.Net4, proto, addr, port); got != want {
				t.Fatalf("round %d: %s %s port %d: compiled rules say %v, envelope says %v\nenvelope %v\nrules %q",
					round, proto, addr, port, got, want, env.Egress, rulesString(rs.Net4))
			}
		}
	}
}

func envelopeAllows(env Envelope, proto Protocol, addr netip.Addr, port uint16) bool {
	for _, r := range env.Egress {
		if !r.Prefix.Contains(addr) {
			continue
		}
		switch {
		case r.Protocol == proto && proto == ProtoICMP:
			return true
		case r.Protocol == proto, r.Protocol == ProtoAny && proto != ProtoICMP:
			if len(r.Ports) == 0 {
				return true
			}
			for _, pr := range r.Ports {
				if pr.First <= port && port <= pr.Last {
					return true
				}
			}
		case r.Protocol == ProtoAny && len(r.Ports) == 0:
			return true
		}
	}
	return false
}

// ruleSetAllows looks a destination up the way the BPF program does.
func ruleSetAllows(rules []NetRule, proto Protocol, addr netip.Addr, port uint16) bool {
	best := -1
	for i, r := range rules {
		if r.Protocol == proto && r.Prefix.Contains(addr) && (best < 0 || r.Prefix.Bits() > rules[best].Prefix.Bits()) {
			best = i
		}
	}
	if best < 0 {
		return false
	}
	for _, pr := range rules[best].Ports {
		if pr.First <= port && port <= pr.Last {
			return true
		}
	}
	return false
}

func TestCompileUnix(t *testing.T) {
	rs, err := Compile(Envelope{Unix: []string{"/run/b.sock", "@abs", "/run//b.sock", "/run/a.sock"}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/run/a.sock", "/run/b.sock", "@abs"}; !slices.Equal(rs.Unix, want) {
		t.Errorf("Unix = %q, want %q", rs.Unix, want)
	}
	if _, err := Compile(Envelope{Unix: []string{"x.sock"}}); err == nil {
		t.Error("Compile accepted a relative unix socket path")
	}
}

func TestKernelDev(t *testing.T) {
	// stat(2) puts minor 1 of major 8 at 0x801; the kernel at 0x800001.
	if got := kernelDev(unix.Mkdev(8, 1)); got != 8<<20|1 {
		t.Errorf("kernelDev(8:1) = %#x, want %#x", got, 8<<20|1)
	}
	// Large minors (e.g. NVMe partitions, anonymous devices) use the high
	// bits of stat's encoding.
	if got := kernelDev(unix.Mkdev(259, 300)); got != 259<<20|300 {
		t.Errorf("kernelDev(259:300) = %#x, want %#x", got, 259<<20|300)
	}
}

func writeFile(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

func TestFileIDOf(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tool")
	writeFile(t, file, 0o755)
	id, err := FileIDOf(file)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(file, &st); err != nil {
		t.Fatal(err)
	}
	if id.Ino != st.Ino || id.Dev != uint64(unix.Major(uint64(st.Dev)))<<20|uint64(unix.Minor(uint64(st.Dev))) || id.Path != file {
		t.Errorf("FileIDOf(%q) = %v, stat says dev %#x ino %d", file, id, st.Dev, st.Ino)
	}

	link := filepath.Join(dir, "symlink")
	if err := os.Symlink("tool", link); err != nil {
		t.Fatal(err)
	}
	hard := filepath.Join(dir, "hardlink")
	if err := os.Link(file, hard); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{link, hard} {
		got, err := FileIDOf(p)
		if err != nil {
			t.Fatal(err)
		}
		if got.Dev != id.Dev || got.Ino != id.Ino || got.Path != p {
			t.Errorf("FileIDOf(%q) = %v, want the id of %v under its own name", p, got, id)
		}
	}

	cp := filepath.Join(dir, "copy")
	writeFile(t, cp, 0o755)
	if got, err := FileIDOf(cp); err != nil || got.Dev == id.Dev && got.Ino == id.Ino {
		t.Errorf("FileIDOf(copy) = %v, %v; want a different id from %v", got, err, id)
	}

	if _, err := FileIDOf(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("FileIDOf(dir) error = %v, want not a regular file", err)
	}
	if _, err := FileIDOf(filepath.Join(dir, "missing")); !os.IsNotExist(unwrapAll(err)) {
		t.Errorf("FileIDOf(missing) error = %v, want not exist", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

func TestCompileExec(t *testing.T) {
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	outside := filepath.Join(dir, "outside")
	writeFile(t, filepath.Join(tree, "a"), 0o755)
	writeFile(t, filepath.Join(tree, "data"), 0o644)
	writeFile(t, filepath.Join(tree, "sub", "deep", "b"), 0o700)
	writeFile(t, filepath.Join(tree, "sub", "c"), 0o711)
	writeFile(t, filepath.Join(outside, "d"), 0o755)
	writeFile(t, filepath.Join(outside, "hidden", "e"), 0o755)
	symlinks := map[string]string{
		filepath.Join(tree, "to-d"):        filepath.Join(outside, "d"),       // file symlink: counts
		filepath.Join(tree, "to-hidden"):   filepath.Join(outside, "hidden"),  // dir symlink: not followed
		filepath.Join(tree, "broken"):      filepath.Join(outside, "nothing"), // skipped
		filepath.Join(tree, "to-data"):     filepath.Join(tree, "data"),       // not executable
		filepath.Join(dir, "tree-link"):    tree,                              // a rule may name a symlinked dir
		filepath.Join(tree, "sub", "to-a"): filepath.Join(tree, "a"),          // duplicate of a
	}
	for link, target := range symlinks {
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Link(filepath.Join(tree, "a"), filepath.Join(tree, "sub", "hard-a")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(tree, "fifo"), 0o777); err != nil {
		t.Fatal(err)
	}

	idOf := func(p string) FileID {
		id, err := FileIDOf(p)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	wantIDs := func(paths ...string) []FileID {
		var ids []FileID
		for _, p := range paths {
			ids = append(ids, idOf(p))
		}
		return ids
	}

	tests := []struct {
		name  string
		rules []ExecRule
		want  []FileID
	}{
		{"dir", []ExecRule{{Path: tree, Dir: true}}, wantIDs(
			filepath.Join(tree, "a"),
			filepath.Join(tree, "sub", "c"),
			filepath.Join(tree, "sub", "deep", "b"),
			filepath.Join(tree, "to-d"),
		)},
		{"symlinked dir keeps the name given", []ExecRule{{Path: filepath.Join(dir, "tree-link"), Dir: true}}, wantIDs(
			filepath.Join(dir, "tree-link", "a"),
			filepath.Join(dir, "tree-link", "sub", "c"),
			filepath.Join(dir, "tree-link", "sub", "deep", "b"),
			filepath.Join(dir, "tree-link", "to-d"),
		)},
		{"files and dirs deduplicate", []ExecRule{
			{Path: filepath.Join(outside, "d"), Dir: false},
			{Path: filepath.Join(tree, "sub", "hard-a"), Dir: false},
			{Path: tree, Dir: true},
		}, wantIDs(
			filepath.Join(outside, "d"),
			filepath.Join(tree, "sub", "hard-a"),
			filepath.Join(tree, "sub", "c"),
			filepath.Join(tree, "sub", "deep", "b"),
		)},
		{"file symlink", []ExecRule{{Path: filepath.Join(tree, "to-d"), Dir: false}}, wantIDs(filepath.Join(tree, "to-d"))},
	}
	for _, tt := range tests {
		rs, err := Compile(Envelope{Exec: tt.rules})
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if !slices.Equal(rs.Exec, tt.want) {
			t.Errorf("%s: Exec =\n%v\nwant\n%v", tt.name, rs.Exec, tt.want)
		}
	}

	errs := []struct {
		rule ExecRule
		why  string
	}{
		{ExecRule{Path: filepath.Join(dir, "missing"), Dir: false}, "no such file"},
		{ExecRule{Path: filepath.Join(dir, "missing"), Dir: true}, "no such file"},
		{ExecRule{Path: filepath.Join(tree, "data"), Dir: false}, "not executable"},
		{ExecRule{Path: filepath.Join(tree, "to-data"), Dir: false}, "not executable"},
		{ExecRule{Path: filepath.Join(tree, "broken"), Dir: false}, "no such file"},
		{ExecRule{Path: tree, Dir: false}, "not a regular file"},
		{ExecRule{Path: filepath.Join(tree, "fifo"), Dir: false}, "not a regular file"},
		{ExecRule{Path: filepath.Join(tree, "a"), Dir: true}, "not a directory"},
		{ExecRule{Path: "relative/x", Dir: false}, "absolute"},
	}
	for _, tt := range errs {
		_, err := Compile(Envelope{Exec: []ExecRule{tt.rule}})
		if err == nil || !strings.Contains(err.Error(), tt.why) || !strings.Contains(err.Error(), tt.rule.String()) {
			t.Errorf("Compile(%v) error = %v, want one naming the rule and saying %q", tt.rule, err, tt.why)
		}
	}
}

// benchEnvelope builds n random, heavily nested IPv4 and IPv6 rules.
func benchEnvelope(n int) Envelope {
	rng := rand.New(rand.NewPCG(3, 4))
	protos := []Protocol{ProtoTCP, ProtoUDP, ProtoAny}
	env := Envelope{Egress: make([]EgressRule, 0, n)}
	for range n {
		var a netip.Addr
		var bits int
		if rng.IntN(4) == 0 {
			var b [16]byte
			b[0], b[1], b[2], b[3] = 0x20, 0x01, 0x0d, 0xb8
			for i := 4; i < 16; i++ {
				b[i] = byte(rng.Uint32())
			}
			a, bits = netip.AddrFrom16(b), 32+rng.IntN(97)
		} else {
			a = netip.AddrFrom4([4]byte{10, byte(rng.IntN(256)), byte(rng.Uint32()), byte(rng.Uint32())})
			bits = 8 + rng.IntN(25)
		}
		r := EgressRule{Protocol: protos[rng.IntN(len(protos))], Prefix: netip.PrefixFrom(a, bits).Masked()}
		if rng.IntN(2) == 0 {
			p := uint16(1 + rng.IntN(1000))
			r.Ports = []PortRange{{p, p}}
		}
		env.Egress = append(env.Egress, r)
	}
	return env
}

func BenchmarkCompile100k(b *testing.B) {
	env := benchEnvelope(100_000)
	// Bound the inherited port lists: prefixes near the top carry all
	// ports, as a broad grant would.
	env.Egress = append(env.Egress, EgressRule{ProtoAny, netip.MustParsePrefix("10.0.0.0/8"), "", nil}, EgressRule{ProtoAny, netip.MustParsePrefix("2001:db8::/32"), "", nil})
	b.ReportAllocs()
	var rs RuleSet
	for b.Loop() {
		var err error
		if rs, err = Compile(env); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(rs.Count()), "entries")
}
