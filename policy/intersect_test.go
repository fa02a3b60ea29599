package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func mustCompileConnect(t testing.TB, specs ...string) RuleSet {
	t.Helper()
	rs, err := Compile(Envelope{Egress: mustConnect(t, specs...)})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func TestIntersectNet(t *testing.T) {
	nested := []string{"tcp:10.0.0.0/8:443", "tcp:10.1.0.0/16:80", "udp:10.1.2.3:53", "tcp:[2001:db8::]/32:22"}
	tests := []struct {
		name       string
		a, b       []string
		net4, net6 []string
	}{
		{
			name: "disjoint prefixes",
			a:    []string{"tcp:10.0.0.0/8", "tcp:[2001:db8::]/32"},
			b:    []string{"tcp:11.0.0.0/8", "tcp:[2001:db9::]/32"},
		},
		{
			name: "disjoint protocols",
			a:    []string{"tcp:10.0.0.0/8"},
			b:    []string{"udp:10.0.0.0/8", "icmp:10.0.0.0/8"},
		},
		{
			name: "disjoint ports",
			a:    []string{"tcp:10.0.0.0/8:80"},
			b:    []string{"tcp:10.0.0.0/8:443"},
		},
		{
			name: "identical",
			a:    nested,
			b:    nested,
			net4: []string{"tcp:10.0.0.0/8:443", "tcp:10.1.0.0/16:80,443", "udp:10.1.2.3:53"},
			net6: []string{"tcp:[2001:db8::]/32:22"},
		},
		{
			name: "a wide prefix on any port against a narrow one on one port",
			a:    []string{"tcp:10.0.0.0/8"},
			b:    []string{"tcp:10.1.2.0/24:443"},
			net4: []string{"tcp:10.1.2.0/24:443"},
		},
		{
			name: "the narrow prefix's ports miss the wide prefix's, so nothing is left",
			a:    []string{"tcp:10.0.0.0/8:443"},
			b:    []string{"tcp:10.1.0.0/16:80"},
		},
		{
			name: "each prefix takes the longest entry of each side",
			a:    []string{"tcp:10.0.0.0/8:80,443", "tcp:10.1.0.0/16:22"},
			b:    []string{"tcp:0.0.0.0/0:443", "tcp:10.1.2.0/24:22"},
			net4: []string{"tcp:10.0.0.0/8:443", "tcp:10.1.0.0/16:443", "tcp:10.1.2.0/24:22,443"},
		},
		{
			name: "port ranges are cut",
			a:    []string{"tcp:10.0.0.0/8:1-100,200"},
			b:    []string{"tcp:10.0.0.0/8:50-60,90-250"},
			net4: []string{"tcp:10.0.0.0/8:50-60,90-100,200"},
		},
		{
			name: "icmp keeps every port",
			a:    []string{"any:10.0.0.0/8"},
			b:    []string{"icmp:10.1.0.0/16", "udp:10.0.0.53:53"},
			net4: []string{"icmp:10.1.0.0/16:0-65535", "udp:10.0.0.53:53"},
		},
		{
			name: "ipv6",
			a:    []string{"tcp:[2001:db8::]/32:443", "tcp:[2001:db8:1::]/48:80", "tcp:10.0.0.0/8"},
			b:    []string{"tcp:[2001::]/16", "tcp:[2001:db8:1:2::]/64:22", "udp:[::]/0"},
			net6: []string{"tcp:[2001:db8::]/32:443", "tcp:[2001:db8:1::]/48:80,443", "tcp:[2001:db8:1:2::]/64:80,443"},
		},
		{
			name: "one side empty",
			a:    []string{"tcp:10.0.0.0/8"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := mustCompileConnect(t, tt.a...), mustCompileConnect(t, tt.b...)
			for _, order := range [][2]RuleSet{{a, b}, {b, a}} {
				got, err := Intersect(order[0], order[1])
				if err != nil {
					t.Fatal(err)
				}
				if s := rulesString(got.Net4); !slices.Equal(s, tt.net4) {
					t.Errorf("Net4 = %q\nwant   %q", s, tt.net4)
				}
				if s := rulesString(got.Net6); !slices.Equal(s, tt.net6) {
					t.Errorf("Net6 = %q\nwant   %q", s, tt.net6)
				}
			}
		})
	}
}

func TestIntersectTooManyPortRanges(t *testing.T) {
	// a's ranges 10-17, 20-27, ... and b's 15-21, 25-31, ... interleave so
	// that every range of b meets two of a.
	var pa, pb []PortRange
	for i := range MaxPortRanges {
		p := uint16(10 * (i + 1))
		pa = append(pa, PortRange{p, p + 7})
		pb = append(pb, PortRange{p + 5, p + 11})
	}
	a, err := Compile(Envelope{Egress: []EgressRule{{ProtoTCP, netip.MustParsePrefix("10.0.0.0/8"), "", pa}}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Compile(Envelope{Egress: []EgressRule{{ProtoTCP, netip.MustParsePrefix("10.1.0.0/16"), "", pb}}})
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("tcp 10.1.0.0/16 needs %d port ranges", 2*MaxPortRanges-1)
	if _, err := Intersect(a, b); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Intersect error = %v, want one containing %q", err, want)
	}

	// Exactly MaxPortRanges fits.
	b.Net4[0].Ports = pb[:MaxPortRanges/2]
	got, err := Intersect(a, b)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(got.Net4[0].Ports); n != MaxPortRanges {
		t.Errorf("Intersect gave %d port ranges, want %d", n, MaxPortRanges)
	}
}

func TestIntersectUnixExec(t *testing.T) {
	a := RuleSet{
		Unix: []string{"/run/a.sock", "/run/b.sock", "@x"},
		Exec: []FileID{{Dev: 1, Ino: 10, Path: "/usr/bin/a"}, {Dev: 1, Ino: 11, Path: "/usr/bin/b"}, {Dev: 2, Ino: 10, Path: "/opt/c"}, {Dev: 1, Ino: 11, Path: "/bin/b"}},
	}
	b := RuleSet{
		Unix: []string{"@x", "/run/c.sock", "/run/b.sock", "@a.sock"},
		Exec: []FileID{{Dev: 3, Ino: 3, Path: "/x"}, {Dev: 2, Ino: 10, Path: "/elsewhere/c"}, {Dev: 1, Ino: 11, Path: "/link/to/b"}, {Dev: 1, Ino: 12, Path: "/usr/bin/a"}},
	}
	got, err := Intersect(a, b)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/run/b.sock", "@x"}; !slices.Equal(got.Unix, want) {
		t.Errorf("Unix = %q, want %q", got.Unix, want)
	}
	// Matched by (Dev, Ino), not by name; a's names and order, each once.
	if want := []FileID{{Dev: 1, Ino: 11, Path: "/usr/bin/b"}, {Dev: 2, Ino: 10, Path: "/opt/c"}}; !slices.Equal(got.Exec, want) {
		t.Errorf("Exec = %v, want %v", got.Exec, want)
	}
	if got, err := Intersect(a, RuleSet{}); err != nil || got.Count() != 0 {
		t.Errorf("Intersect with an empty rule set = %+v, %v; want nothing", got, err)
	}
}

func TestIntersectRejectsMalformed(t *testing.T) {
	pfx := netip.MustParsePrefix
	valid := RuleSet{
		Net4: []NetRule{{ProtoTCP, pfx("0.0.0.0/0"), allPorts}},
		Net6: []NetRule{{ProtoTCP, pfx("::/0"), allPorts}},
	}
	tests := []struct {
		name string
		in   RuleSet
		why  string
	}{
		{"invalid prefix", RuleSet{Net4: []NetRule{{Protocol: ProtoTCP, Ports: allPorts}}}, "invalid prefix"},
		{"unmasked prefix", RuleSet{Net4: []NetRule{{ProtoTCP, pfx("10.1.2.3/8"), allPorts}}}, "bits set past its length"},
		{"ipv6 in Net4", RuleSet{Net4: []NetRule{{ProtoTCP, pfx("2001:db8::/32"), allPorts}}}, "wrong address family"},
		{"ipv4 in Net6", RuleSet{Net6: []NetRule{{ProtoTCP, pfx("10.0.0.0/8"), allPorts}}}, "wrong address family"},
		{"mapped ipv4 in Net6", RuleSet{Net6: []NetRule{{ProtoTCP, pfx("::ffff:10.0.0.0/104"), allPorts}}}, "wrong address family"},
		{"unsorted ports", RuleSet{Net4: []NetRule{{ProtoTCP, pfx("10.0.0.0/8"), []PortRange{{443, 443}, {80, 80}}}}}, "not sorted and merged"},
		{"adjacent ports", RuleSet{Net4: []NetRule{{ProtoTCP, pfx("10.0.0.0/8"), []PortRange{{80, 80}, {81, 90}}}}}, "not sorted and merged"},
		{"backwards ports", RuleSet{Net4: []NetRule{{ProtoTCP, pfx("10.0.0.0/8"), []PortRange{{90, 80}}}}}, "not sorted and merged"},
		{"duplicate prefix", RuleSet{Net4: []NetRule{
			{ProtoTCP, pfx("10.0.0.0/8"), allPorts},
			{ProtoUDP, pfx("10.0.0.0/8"), allPorts},
			{ProtoTCP, pfx("10.0.0.0/8"), allPorts},
		}}, "tcp 10.0.0.0/8 appears more than once"},
		{"no port-union", RuleSet{Net6: []NetRule{
			{ProtoTCP, pfx("2001:db8::/32"), []PortRange{{443, 443}}},
			{ProtoTCP, pfx("2001:db8:1::/48"), []PortRange{{80, 80}}},
		}}, "tcp 2001:db8:1::/48 lacks ports 443 of 2001:db8::/32"},
	}
	for _, tt := range tests {
		if _, err := Intersect(tt.in, valid); err == nil || !strings.Contains(err.Error(), "first rule set") || !strings.Contains(err.Error(), tt.why) {
			t.Errorf("%s: Intersect(bad, valid) error = %v, want one about the first rule set containing %q", tt.name, err, tt.why)
		}
		if _, err := Intersect(valid, tt.in); err == nil || !strings.Contains(err.Error(), "second rule set") || !strings.Contains(err.Error(), tt.why) {
			t.Errorf("%s: Intersect(valid, bad) error = %v, want one about the second rule set containing %q", tt.name, err, tt.why)
		}
	}
	// A prefix in both inputs is not a duplicate.
	if _, err := Intersect(valid, valid); err != nil {
		t.Errorf("Intersect(valid, valid): %v", err)
	}
}

func TestIntersectIgnoresEntryOrder(t *testing.T) {
	a := mustCompileConnect(t, "tcp:10.0.0.0/8:443", "tcp:10.1.0.0/16:80", "tcp:10.1.2.0/24:22", "udp:10.0.0.0/8", "icmp:10.2.0.0/16")
	b := mustCompileConnect(t, "any:10.1.0.0/16", "tcp:10.2.0.0/16:443")
	want, err := Intersect(a, b)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 20 {
		sa, sb := slices.Clone(a.Net4), slices.Clone(b.Net4)
		rng.Shuffle(len(sa), func(i, j int) { sa[i], sa[j] = sa[j], sa[i] })
		rng.Shuffle(len(sb), func(i, j int) { sb[i], sb[j] = sb[j], sb[i] })
		got, err := Intersect(RuleSet{Net4: sa}, RuleSet{Net4: sb})
		if err != nil {
			t.Fatal(err)
		}
		if g, w := rulesString(got.Net4), rulesString(want.Net4); !slices.Equal(g, w) {
			t.Fatalf("shuffled input gave %q, want %q", g, w)
		}
	}
}

// TestIntersectMatchesLookup checks Intersect against its meaning on random
// rule sets in a small address space, where prefixes nest and collide
// often: a kernel-style lookup in the result must allow exactly what
// lookups in both inputs allow. It also checks that the result has the
// shape Compile gives, so it can be intersected again or loaded.
func TestIntersectMatchesLookup(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	protos := []Protocol{ProtoTCP, ProtoUDP, ProtoICMP, ProtoAny}
	randAddr := func(v6 bool) netip.Addr {
		if v6 {
			return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(rng.IntN(4)), 15: byte(rng.IntN(256))})
		}
		return netip.AddrFrom4([4]byte{10, 0, byte(rng.IntN(4)), byte(rng.IntN(256))})
	}
	randRuleSet := func() RuleSet {
		var env Envelope
		for range rng.IntN(12) {
			v6 := rng.IntN(3) == 0
			a := randAddr(v6)
			bits := a.BitLen() - rng.IntN(13)
			if rng.IntN(10) == 0 {
				bits = rng.IntN(a.BitLen() - 12) // now and then one that covers everything
			}
			r := EgressRule{Protocol: protos[rng.IntN(len(protos))], Prefix: netip.PrefixFrom(a, bits).Masked()}
			if r.Protocol != ProtoICMP && rng.IntN(4) > 0 {
				for range 1 + rng.IntN(3) {
					p := uint16(1 + rng.IntN(30))
					r.Ports = append(r.Ports, PortRange{p, p + uint16(rng.IntN(3))})
				}
			}
			env.Egress = append(env.Egress, r)
		}
		rs, err := Compile(env)
		if err != nil {
			t.Fatal(err)
		}
		return rs
	}
	for round := range 500 {
		a, b := randRuleSet(), randRuleSet()
		got, err := Intersect(a, b)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		checkCompiledShape(t, got.Net4)
		checkCompiledShape(t, got.Net6)
		// The result is a valid input, and already within a.
		again, err := Intersect(got, a)
		if err != nil {
			t.Fatalf("round %d: got∩a: %v", round, err)
		}
		for range 300 {
			v6 := rng.IntN(2) == 0
			proto := protos[rng.IntN(3)]
			addr := randAddr(v6)
			port := uint16(rng.IntN(35))
			if proto == ProtoICMP {
				port = 0
			}
			ra, rb, rg, rag := a.Net4, b.Net4, got.Net4, again.Net4
			if v6 {
				ra, rb, rg, rag = a.Net6, b.Net6, got.Net6, again.Net6
			}
			want := ruleSetAllows(ra, proto, addr, port) && ruleSetAllows(rb, proto, addr, port)
			if allowed := ruleSetAllows(rag, proto, addr, port); allowed != want {
				t.Fatalf("round %d: %s %s port %d: got∩a says %v, a and b say %v", round, proto, addr, port, allowed, want)
			}
			if allowed := ruleSetAllows(rg, proto, addr, port); allowed != want {
				t.Fatalf("round %d: %s %s port %d: intersection says %v, inputs say %v\na %q %q\nb %q %q\ngot %q %q",
					round, proto, addr, port, allowed, want,
					rulesString(a.Net4), rulesString(a.Net6), rulesString(b.Net4), rulesString(b.Net6),
					rulesString(got.Net4), rulesString(got.Net6))
			}
		}

		// Symmetric and idempotent, entry for entry.
		for _, tc := range []struct {
			name string
			x, y RuleSet
			want RuleSet
		}{
			{"b∩a", b, a, got},
			{"a∩a", a, a, a},
		} {
			r, err := Intersect(tc.x, tc.y)
			if err != nil {
				t.Fatalf("round %d: %s: %v", round, tc.name, err)
			}
			if !slices.Equal(rulesString(r.Net4), rulesString(tc.want.Net4)) || !slices.Equal(rulesString(r.Net6), rulesString(tc.want.Net6)) {
				t.Fatalf("round %d: %s = %q %q, want %q %q", round, tc.name,
					rulesString(r.Net4), rulesString(r.Net6), rulesString(tc.want.Net4), rulesString(tc.want.Net6))
			}
		}
	}
}

// checkCompiledShape checks, without using Intersect's own checks, that
// rules are what Compile would produce: sorted, one entry per (protocol,
// prefix), non-empty merged port lists that fit the kernel, and port-union.
func checkCompiledShape(t *testing.T, rules []NetRule) {
	t.Helper()
	for i, r := range rules {
		if r.Prefix != r.Prefix.Masked() {
			t.Fatalf("%v: unmasked", r)
		}
		if len(r.Ports) == 0 || len(r.Ports) > MaxPortRanges || !slices.Equal(normalizePorts(r.Ports), r.Ports) {
			t.Fatalf("%v: port list %v", r, r.Ports)
		}
		if i > 0 {
			p := rules[i-1]
			if c := cmp3(p.Protocol, r.Protocol, p.Prefix, r.Prefix); c >= 0 {
				t.Fatalf("%v does not sort before %v", p, r)
			}
		}
		for _, q := range rules {
			if q.Protocol == r.Protocol && q.Prefix.Bits() < r.Prefix.Bits() && q.Prefix.Contains(r.Prefix.Addr()) && !portsInclude(r.Ports, q.Ports) {
				t.Fatalf("%v lacks the ports of %v, which contains it", r, q)
			}
		}
	}
}

func cmp3(pa, pb Protocol, a, b netip.Prefix) int {
	switch {
	case pa != pb:
		return int(pa) - int(pb)
	case a.Addr() != b.Addr():
		return a.Addr().Compare(b.Addr())
	}
	return a.Bits() - b.Bits()
}

// BenchmarkIntersect intersects two compiled rule sets of about n entries
// each, nested up to /8 deep, as a large parent envelope and a large
// request would be.
func BenchmarkIntersect(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			rng := rand.New(rand.NewPCG(7, 8))
			ports := [][]PortRange{nil, {{22, 22}}, {{80, 80}, {443, 443}}, {{8000, 8100}}}
			randRuleSet := func() RuleSet {
				rules := make([]EgressRule, n)
				for i := range rules {
					a := netip.AddrFrom4([4]byte{10, byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))})
					if i%4 == 0 {
						a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 4: byte(rng.IntN(256)), 5: byte(rng.IntN(256)), 6: byte(rng.IntN(256))})
					}
					bits := a.BitLen() - rng.IntN(a.BitLen()-8)
					rules[i] = EgressRule{ProtoTCP, netip.PrefixFrom(a, bits).Masked(), "", ports[rng.IntN(len(ports))]}
				}
				rs, err := Compile(Envelope{Egress: rules})
				if err != nil {
					b.Fatal(err)
				}
				return rs
			}
			x, y := randRuleSet(), randRuleSet()
			for b.Loop() {
				if _, err := Intersect(x, y); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
