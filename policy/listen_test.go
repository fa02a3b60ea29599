package policy

import (
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestParseListen(t *testing.T) {
	tests := []struct {
		in   string
		want ListenRule
	}{
		{"tcp:8080", ListenRule{ProtoTCP, []PortRange{{8080, 8080}}}},
		{"udp:5353,6000-6010", ListenRule{ProtoUDP, []PortRange{{5353, 5353}, {6000, 6010}}}},
		{"any:1-65535", ListenRule{ProtoAny, []PortRange{{1, 65535}}}},
	}
	for _, tt := range tests {
		got, err := ParseListen(tt.in)
		if err != nil {
			t.Errorf("ParseListen(%q): %v", tt.in, err)
			continue
		}
		if !equalListen(got, tt.want) {
			t.Errorf("ParseListen(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
		if got.String() != tt.in {
			t.Errorf("ParseListen(%q).String() = %q", tt.in, got.String())
		}
	}
}

func TestParseListenErrors(t *testing.T) {
	tests := []struct{ in, why string }{
		{"", "no ports"},
		{"tcp", "no ports"},
		{"tcp:", "empty port list"},
		{":80", "empty protocol"},
		{"icmp:80", "icmp has no ports"},
		{"sctp:80", "unknown protocol"},
		{"tcp:0", "not a number from 1 to 65535"},
		{"tcp:65536", "not a number from 1 to 65535"},
		{"tcp:90-80", "runs backwards"},
		{"tcp:80,", "empty entry"},
		{"tcp:127.0.0.1:80", "no address"},
		{"tcp:[::1]:80", "no address"},
		{"tcp:http", "not a number"},
	}
	for _, tt := range tests {
		r, err := ParseListen(tt.in)
		if err == nil {
			t.Errorf("ParseListen(%q) = %v, want error containing %q", tt.in, r, tt.why)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, tt.why) || !strings.Contains(msg, strconv.Quote(tt.in)) || !strings.Contains(msg, "PROTO:PORTS") {
			t.Errorf("ParseListen(%q) error %q: want it to quote the input, say %q and show the expected form", tt.in, msg, tt.why)
		}
	}
	if _, err := ParseListenGrants([]string{"tcp:80", "udp"}); err == nil || !strings.HasPrefix(err.Error(), "--allow-listen: ") {
		t.Errorf("ParseListenGrants error %v: want it to name the flag", err)
	}
}

func TestDecodeListen(t *testing.T) {
	v := jsonValue(t, `{"listen": [{"protocol": "tcp", "ports": [8080, "9000-9010"]}, {"protocol": "any", "ports": [53]}]}`)
	env, _, err := DecodeEnvelope(v, "data.bridle.envelope", true)
	if err != nil {
		t.Fatal(err)
	}
	want := []ListenRule{{ProtoTCP, []PortRange{{8080, 8080}, {9000, 9010}}}, {ProtoAny, []PortRange{{53, 53}}}}
	if !slices.EqualFunc(env.Listen, want, equalListen) {
		t.Errorf("listen = %+v, want %+v", env.Listen, want)
	}
	// A policy entry and the flag that says the same compile alike.
	flag, err := ParseListen("tcp:8080,9000-9010")
	if err != nil {
		t.Fatal(err)
	}
	if !equalListen(flag, env.Listen[0]) {
		t.Errorf("flag %+v and policy entry %+v differ", flag, env.Listen[0])
	}

	for _, tt := range []struct{ in, why string }{
		{`{"listen": {"protocol": "tcp"}}`, "listen: want an array"},
		{`{"listen": ["tcp:80"]}`, "want an object {protocol, ports}"},
		{`{"listen": [{"protocol": "tcp"}]}`, "ports: required"},
		{`{"listen": [{"protocol": "tcp", "ports": []}]}`, "ports: empty list"},
		{`{"listen": [{"protocol": "icmp", "ports": [1]}]}`, "icmp has no ports"},
		{`{"listen": [{"protocol": "tcp", "ports": [0]}]}`, "not a number from 1 to 65535"},
		{`{"listen": [{"protocol": "tcp", "port": [80]}]}`, `unknown key "port"`},
		{`{"listen": [{"protocol": "tcp", "ports": [80], "cidr": "127.0.0.1"}]}`, `unknown key "cidr"`},
	} {
		_, _, err := DecodeEnvelope(jsonValue(t, tt.in), "data.bridle.envelope", true)
		if err == nil || !strings.Contains(err.Error(), tt.why) {
			t.Errorf("DecodeEnvelope(%s) error %v, want one containing %q", tt.in, err, tt.why)
		}
	}
}

func TestCompileListen(t *testing.T) {
	rs, err := Compile(Envelope{Listen: []ListenRule{
		{ProtoTCP, []PortRange{{8080, 8080}}},
		{ProtoAny, []PortRange{{8081, 8090}, {53, 53}}},
		{ProtoUDP, []PortRange{{5353, 5353}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := []ListenRule{
		{ProtoTCP, []PortRange{{53, 53}, {8080, 8090}}},
		{ProtoUDP, []PortRange{{53, 53}, {5353, 5353}, {8081, 8090}}},
	}
	if !slices.EqualFunc(rs.Listen, want, equalListen) {
		t.Errorf("compiled listen = %+v, want %+v", rs.Listen, want)
	}
	if rs.Count() != 2 {
		t.Errorf("Count = %d, want 2", rs.Count())
	}

	var many []PortRange
	for i := range MaxPortRanges + 1 {
		p := uint16(1000 + 10*i)
		many = append(many, PortRange{p, p})
	}
	for _, bad := range []ListenRule{
		{ProtoTCP, nil},
		{ProtoTCP, []PortRange{{0, 80}}},
		{ProtoUDP, []PortRange{{90, 80}}},
		{ProtoICMP, []PortRange{{80, 80}}},
		{ProtoTCP, many},
	} {
		if _, err := Compile(Envelope{Listen: []ListenRule{bad}}); err == nil {
			t.Errorf("Compile accepted listen rule %+v", bad)
		}
	}
}

func TestIntersectListen(t *testing.T) {
	a := RuleSet{Listen: []ListenRule{{ProtoTCP, []PortRange{{8000, 8100}}}, {ProtoUDP, []PortRange{{53, 53}}}}}
	b := RuleSet{Listen: []ListenRule{{ProtoTCP, []PortRange{{80, 80}, {8080, 8080}, {9000, 9000}}}}}
	got, err := Intersect(a, b)
	if err != nil {
		t.Fatal(err)
	}
	want := []ListenRule{{ProtoTCP, []PortRange{{8080, 8080}}}}
	if !slices.EqualFunc(got.Listen, want, equalListen) {
		t.Errorf("Intersect listen = %+v, want %+v", got.Listen, want)
	}
	if got, _ := Intersect(a, RuleSet{}); len(got.Listen) != 0 {
		t.Errorf("a grant without listen rules allows listening on %+v", got.Listen)
	}
	dup := RuleSet{Listen: []ListenRule{{ProtoTCP, []PortRange{{1, 1}}}, {ProtoTCP, []PortRange{{2, 2}}}}}
	if _, err := Intersect(dup, a); err == nil {
		t.Error("Intersect accepted two TCP listen entries in one rule set")
	}
	unsorted := RuleSet{Listen: []ListenRule{{ProtoTCP, []PortRange{{9, 9}, {1, 1}}}}}
	if _, err := Intersect(a, unsorted); err == nil {
		t.Error("Intersect accepted an unsorted listen port list")
	}
}
