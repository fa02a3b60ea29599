package policy

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestParseHostPattern(t *testing.T) {
	good := map[string]string{
		"api.github.com":                         "api.github.com",
		"API.GitHub.COM":                         "api.github.com",
		"*.githubusercontent.com":                "*.githubusercontent.com",
		"*.B.example.com":                        "*.b.example.com",
		"localhost":                              "localhost",
		"_sip._tcp.example.com":                  "_sip._tcp.example.com",
		"1a.example":                             "1a.example",
		"xn--bcher-kva.example":                  "xn--bcher-kva.example",
		"*." + strings.Repeat("a.", 124) + "com": "*." + strings.Repeat("a.", 124) + "com", // 253 with "x." below
	}
	for in, want := range good {
		if got, err := ParseHostPattern(in); err != nil || got != want {
			t.Errorf("ParseHostPattern(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	bad := map[string]string{
		"":                               "empty name",
		"*":                              "'*' is allowed only as the first label",
		"*.":                             "'*' is allowed only", // "*." leaves "" after the wildcard... or a trailing dot
		"a*.example.com":                 "'*' is allowed only",
		"a.*.example.com":                "'*' is allowed only",
		"*.*.example.com":                "'*' is allowed only",
		"*.com":                          "two labels or more",
		"example.com.":                   "trailing dot",
		"a..example.com":                 "empty label",
		"ex ample.com":                   "has ' '",
		"bücher.example":                 "xn--",
		"192.0.2.1":                      "is an address",
		"10.1":                           "is an address",
		"*.10.0.0":                       "is an address",
		strings.Repeat("a", 64) + ".com": "63",
		// A suffix of 252 bytes leaves no room for a name below it.
		"*." + strings.Repeat("a.", 124) + "coms": "names below it would pass",
	}
	for in, why := range bad {
		got, err := ParseHostPattern(in)
		if err == nil {
			t.Errorf("ParseHostPattern(%q) = %q, want an error containing %q", in, got, why)
			continue
		}
		if !strings.Contains(err.Error(), why) && !(in == "*." && strings.Contains(err.Error(), "empty name")) {
			t.Errorf("ParseHostPattern(%q) error %q, want it to contain %q", in, err, why)
		}
	}
}

func TestNameRuleMatches(t *testing.T) {
	tests := []struct {
		pattern, name string
		want          bool
	}{
		{"api.github.com", "api.github.com", true},
		{"api.github.com", "x.api.github.com", false},
		{"*.example.com", "a.example.com", true},
		{"*.example.com", "a.b.example.com", true},
		{"*.example.com", "example.com", false}, // below the suffix, not the suffix
		{"*.example.com", "badexample.com", false},
		{"*.example.com", "a.example.com.evil", false},
	}
	for _, tt := range tests {
		if got := (NameRule{Pattern: tt.pattern}).Matches(tt.name); got != tt.want {
			t.Errorf("%q matches %q = %v, want %v", tt.pattern, tt.name, got, tt.want)
		}
	}
}

func TestCompileNames(t *testing.T) {
	rs, err := Compile(Envelope{Egress: mustConnect(t,
		"tcp:api.github.com:443",
		"tcp:API.github.com:80,443",
		"any:*.githubusercontent.com:443",
		"any:example.com",
		"udp:example.com:53",
		"tcp:10.0.0.0/8:22",
	)})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"icmp:example.com:0-65535",
		"tcp:*.githubusercontent.com:443",
		"tcp:api.github.com:80,443",
		"tcp:example.com:0-65535",
		"udp:*.githubusercontent.com:443",
		"udp:example.com:0-65535",
	}
	if got := namesString(rs.Names); !slices.Equal(got, want) {
		t.Errorf("Names =\n%q\nwant\n%q", got, want)
	}
	// Names take no kernel entries up front and grant no address.
	if rs.Count() != 1 || len(rs.Net4) != 1 {
		t.Errorf("Count = %d, Net4 = %v", rs.Count(), rs.Net4)
	}
	p := rs.PortsForName("api.github.com")
	if !slices.Equal(p.TCP, []PortRange{{80, 80}, {443, 443}}) || p.UDP != nil || p.ICMP || p.Wildcard {
		t.Errorf("PortsForName(api.github.com) = %+v", p)
	}
	if p := rs.PortsForName("raw.githubusercontent.com"); !p.Wildcard || !slices.Equal(p.UDP, []PortRange{{443, 443}}) {
		t.Errorf("PortsForName(raw.githubusercontent.com) = %+v", p)
	}
	if p := rs.PortsForName("githubusercontent.com"); p.Allowed() {
		t.Errorf("the suffix itself is allowed: %+v", p)
	}
}

func TestCompileNamesErrors(t *testing.T) {
	pfx := mustConnect(t, "tcp:10.0.0.1")[0].Prefix
	ports := func(n int) []PortRange {
		var out []PortRange
		for i := range n {
			out = append(out, PortRange{uint16(10 * (i + 1)), uint16(10 * (i + 1))})
		}
		return out
	}
	var many []EgressRule
	for i := range MaxNames + 1 {
		many = append(many, EgressRule{Protocol: ProtoAny, Host: fmt.Sprintf("h%d.example.com", i)})
	}
	tests := []struct {
		name string
		in   []EgressRule
		why  string
	}{
		{"host and prefix", []EgressRule{{Protocol: ProtoTCP, Host: "a.example", Prefix: pfx}}, "names both a host and the prefix 10.0.0.1"},
		{"bad pattern", []EgressRule{{Protocol: ProtoTCP, Host: "a.*.example"}}, "'*' is allowed only"},
		{"icmp ports", []EgressRule{{Protocol: ProtoICMP, Host: "a.example", Ports: []PortRange{{1, 1}}}}, "icmp has no ports"},
		{"backwards ports", []EgressRule{{Protocol: ProtoTCP, Host: "a.example", Ports: []PortRange{{9, 8}}}}, "runs backwards"},
		{"unknown protocol", []EgressRule{{Protocol: 132, Host: "a.example"}}, "unknown protocol 132"},
		{"too many ranges", []EgressRule{{Protocol: ProtoTCP, Host: "a.example", Ports: ports(MaxPortRanges)}, {Protocol: ProtoTCP, Host: "A.example", Ports: []PortRange{{1, 1}}}},
			"tcp a.example needs 17 port ranges"},
		{"too many names", many, fmt.Sprintf("%d names; a rule set holds at most %d", MaxNames+1, MaxNames)},
	}
	for _, tt := range tests {
		if _, err := Compile(Envelope{Egress: tt.in}); err == nil || !strings.Contains(err.Error(), tt.why) {
			t.Errorf("%s: Compile error = %v, want one containing %q", tt.name, err, tt.why)
		}
	}
	// Exactly MaxNames fits, whatever the protocols.
	if _, err := Compile(Envelope{Egress: many[:MaxNames]}); err != nil {
		t.Errorf("Compile with %d names: %v", MaxNames, err)
	}
}

func namesString(rules []NameRule) []string {
	var out []string
	for _, r := range rules {
		out = append(out, fmt.Sprintf("%s:%s:%s", r.Protocol, r.Pattern, formatPorts(r.Ports)))
	}
	return out
}

func mustCompileNames(t testing.TB, specs ...string) RuleSet {
	t.Helper()
	rs, err := Compile(Envelope{Egress: mustConnect(t, specs...)})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func TestIntersectNames(t *testing.T) {
	tests := []struct {
		name string
		a, b []string
		want []string
	}{
		{"equal exact", []string{"tcp:x.a.com:443"}, []string{"tcp:x.a.com:443"}, []string{"tcp:x.a.com:443"}},
		{"different exact", []string{"tcp:x.a.com:443"}, []string{"tcp:y.a.com:443"}, nil},
		{"wildcard and a name below it", []string{"tcp:*.a.com"}, []string{"tcp:x.a.com:443"}, []string{"tcp:x.a.com:443"}},
		{"name below and wildcard", []string{"tcp:x.a.com:443"}, []string{"tcp:*.a.com"}, []string{"tcp:x.a.com:443"}},
		{"wildcard and its suffix", []string{"tcp:*.a.com"}, []string{"tcp:a.com"}, nil},
		{"wildcard and a deeper wildcard", []string{"tcp:*.a.com:443"}, []string{"tcp:*.b.a.com"}, []string{"tcp:*.b.a.com:443"}},
		{"deeper wildcard and wildcard", []string{"tcp:*.b.a.com"}, []string{"tcp:*.a.com:443"}, []string{"tcp:*.b.a.com:443"}},
		{"unrelated wildcards", []string{"tcp:*.a.com"}, []string{"tcp:*.b.com"}, nil},
		{"ports intersect", []string{"tcp:x.a.com:80,443,8000-8100"}, []string{"tcp:x.a.com:443-8050"}, []string{"tcp:x.a.com:443,8000-8050"}},
		{"no common port", []string{"tcp:x.a.com:80"}, []string{"tcp:x.a.com:443"}, nil},
		{"per protocol", []string{"any:x.a.com"}, []string{"udp:*.a.com:53"}, []string{"udp:x.a.com:53"}},
		{"icmp", []string{"any:*.a.com"}, []string{"icmp:x.a.com"}, []string{"icmp:x.a.com:0-65535"}},
		{"ports of every covering rule count", []string{"tcp:*.a.com:443", "tcp:x.a.com:80"}, []string{"tcp:x.a.com:80,443,22"},
			[]string{"tcp:x.a.com:80,443"}},
		// A parent's CIDR grants no name, and a name grants no CIDR.
		{"cidr grants no name", []string{"any:0.0.0.0/0", "any:[::]/0"}, []string{"tcp:x.a.com:443"}, nil},
		{"name grants no cidr", []string{"tcp:x.a.com:443"}, []string{"tcp:192.0.2.1:443"}, nil},
	}
	for _, tt := range tests {
		a, b := mustCompileNames(t, tt.a...), mustCompileNames(t, tt.b...)
		got, err := Intersect(a, b)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if s := namesString(got.Names); !slices.Equal(s, tt.want) {
			t.Errorf("%s: names %q ∩ %q = %q, want %q", tt.name, tt.a, tt.b, s, tt.want)
		}
		if len(got.Net4)+len(got.Net6) > 0 && tt.name == "name grants no cidr" {
			t.Errorf("%s: addresses %v %v", tt.name, got.Net4, got.Net6)
		}
		// Compile's shape: intersecting the result with itself keeps it.
		again, err := Intersect(got, got)
		if err != nil || !slices.Equal(namesString(again.Names), namesString(got.Names)) {
			t.Errorf("%s: result ∩ itself = %q, %v", tt.name, namesString(again.Names), err)
		}
	}
}

func TestIntersectNamesRejectsMalformed(t *testing.T) {
	ok := RuleSet{Names: []NameRule{{ProtoTCP, "*.a.com", allPorts}}}
	tests := []struct {
		name string
		bad  RuleSet
		why  string
	}{
		{"any not expanded", RuleSet{Names: []NameRule{{ProtoAny, "x.a.com", allPorts}}}, "not a compiled rule set"},
		{"upper case", RuleSet{Names: []NameRule{{ProtoTCP, "X.a.com", allPorts}}}, "not canonical"},
		{"bad wildcard", RuleSet{Names: []NameRule{{ProtoTCP, "x.*.a.com", allPorts}}}, "not canonical"},
		{"no ports", RuleSet{Names: []NameRule{{ProtoTCP, "x.a.com", nil}}}, "has no ports"},
		{"backwards ports", RuleSet{Names: []NameRule{{ProtoTCP, "x.a.com", []PortRange{{9, 8}}}}}, "runs backwards"},
	}
	for _, tt := range tests {
		for _, order := range [][2]RuleSet{{ok, tt.bad}, {tt.bad, ok}} {
			if _, err := Intersect(order[0], order[1]); err == nil || !strings.Contains(err.Error(), tt.why) {
				t.Errorf("%s: Intersect error = %v, want one containing %q", tt.name, err, tt.why)
			}
		}
	}
}

// For random rule sets and names, the intersection allows a name exactly
// the ports both sides allow it, per protocol.
func TestIntersectNamesMatchesPortsForName(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	labels := []string{"a", "b", "c"}
	randName := func() string {
		n := 1 + rng.IntN(3)
		parts := make([]string, 0, n+1)
		for range n {
			parts = append(parts, labels[rng.IntN(len(labels))])
		}
		return strings.Join(append(parts, "example"), ".")
	}
	protos := []string{"tcp", "udp", "icmp", "any"}
	randRuleSet := func() RuleSet {
		var specs []string
		for range rng.IntN(8) {
			proto := protos[rng.IntN(len(protos))]
			host := randName()
			if rng.IntN(2) == 0 {
				host = "*." + host
			}
			spec := proto + ":" + host
			if proto != "icmp" && rng.IntN(3) > 0 {
				var ps []string
				for range 1 + rng.IntN(3) {
					p := 1 + rng.IntN(20)
					ps = append(ps, fmt.Sprintf("%d-%d", p, p+rng.IntN(4)))
				}
				spec += ":" + strings.Join(ps, ",")
			}
			specs = append(specs, spec)
		}
		return mustCompileNames(t, specs...)
	}
	for round := range 500 {
		a, b := randRuleSet(), randRuleSet()
		got, err := Intersect(a, b)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if !slices.IsSortedFunc(got.Names, func(x, y NameRule) int {
			if x.Protocol != y.Protocol {
				return int(x.Protocol) - int(y.Protocol)
			}
			return strings.Compare(x.Pattern, y.Pattern)
		}) {
			t.Fatalf("round %d: names not sorted: %q", round, namesString(got.Names))
		}
		ia, ig := NewNameIndex(a.Names), NewNameIndex(got.Names)
		for range 50 {
			n := randName()
			pa, pb, pg := a.PortsForName(n), b.PortsForName(n), got.PortsForName(n)
			if xa, xg := ia.PortsForName(n), ig.PortsForName(n); !reflect.DeepEqual(xa, pa) || !reflect.DeepEqual(xg, pg) {
				t.Fatalf("round %d: %s: the index gives %+v and %+v, the scan %+v and %+v", round, n, xa, xg, pa, pg)
			}
			wantTCP := appendIntersection(nil, pa.TCP, pb.TCP)
			wantUDP := appendIntersection(nil, pa.UDP, pb.UDP)
			if !slices.Equal(pg.TCP, wantTCP) || !slices.Equal(pg.UDP, wantUDP) || pg.ICMP != (pa.ICMP && pb.ICMP) {
				t.Fatalf("round %d: %s: intersection gives %+v; a %+v, b %+v\na %q\nb %q\ngot %q",
					round, n, pg, pa, pb, namesString(a.Names), namesString(b.Names), namesString(got.Names))
			}
		}
	}
}

// BenchmarkPortsForName is the resolver's check of one query against a
// task holding MaxNames names, the worst the limit allows.
func BenchmarkPortsForName(b *testing.B) {
	var env Envelope
	for i := range MaxNames {
		env.Egress = append(env.Egress, EgressRule{Protocol: ProtoAny, Host: fmt.Sprintf("host%d.example.com", i)})
	}
	rs, err := Compile(env)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		rs.PortsForName("host1000.example.com")
	}
}

// BenchmarkNameIndex is the same check through the index the resolver
// keeps per task.
func BenchmarkNameIndex(b *testing.B) {
	var env Envelope
	for i := range MaxNames {
		env.Egress = append(env.Egress, EgressRule{Protocol: ProtoAny, Host: fmt.Sprintf("host%d.example.com", i)})
	}
	rs, err := Compile(env)
	if err != nil {
		b.Fatal(err)
	}
	x := NewNameIndex(rs.Names)
	for b.Loop() {
		x.PortsForName("host1000.example.com")
	}
}
