package policy

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestParseConnect(t *testing.T) {
	pfx := netip.MustParsePrefix
	tests := []struct {
		in   string
		want EgressRule
		str  string // String() of the result; "" means same as in
	}{
		{"tcp:192.0.2.7", EgressRule{ProtoTCP, pfx("192.0.2.7/32"), "", nil}, ""},
		{"udp:10.0.0.0/8", EgressRule{ProtoUDP, pfx("10.0.0.0/8"), "", nil}, ""},
		{"icmp:192.0.2.0/24", EgressRule{ProtoICMP, pfx("192.0.2.0/24"), "", nil}, ""},
		{"any:0.0.0.0/0", EgressRule{ProtoAny, pfx("0.0.0.0/0"), "", nil}, ""},
		{"tcp:10.1.2.3/8", EgressRule{ProtoTCP, pfx("10.0.0.0/8"), "", nil}, "tcp:10.0.0.0/8"},
		{"tcp:10.0.0.1/32", EgressRule{ProtoTCP, pfx("10.0.0.1/32"), "", nil}, "tcp:10.0.0.1"},
		{"tcp:127.0.0.1:8080", EgressRule{ProtoTCP, pfx("127.0.0.1/32"), "", []PortRange{{8080, 8080}}}, ""},
		{"tcp:10.0.0.0/8:443", EgressRule{ProtoTCP, pfx("10.0.0.0/8"), "", []PortRange{{443, 443}}}, ""},
		{"udp:10.0.0.0/8:8000-8100", EgressRule{ProtoUDP, pfx("10.0.0.0/8"), "", []PortRange{{8000, 8100}}}, ""},
		{"tcp:192.0.2.7:80,443,8000-8100", EgressRule{ProtoTCP, pfx("192.0.2.7/32"), "", []PortRange{{80, 80}, {443, 443}, {8000, 8100}}}, ""},
		{"tcp:192.0.2.7:1-65535", EgressRule{ProtoTCP, pfx("192.0.2.7/32"), "", []PortRange{{1, 65535}}}, ""},
		{"any:192.0.2.7:53", EgressRule{ProtoAny, pfx("192.0.2.7/32"), "", []PortRange{{53, 53}}}, ""},
		{"tcp:192.0.2.7:0080", EgressRule{ProtoTCP, pfx("192.0.2.7/32"), "", []PortRange{{80, 80}}}, "tcp:192.0.2.7:80"},
		{"tcp:[2001:db8::1]", EgressRule{ProtoTCP, pfx("2001:db8::1/128"), "", nil}, ""},
		{"tcp:[::1]", EgressRule{ProtoTCP, pfx("::1/128"), "", nil}, ""},
		{"tcp:[::1]:443", EgressRule{ProtoTCP, pfx("::1/128"), "", []PortRange{{443, 443}}}, ""},
		{"udp:[2001:db8::]/32", EgressRule{ProtoUDP, pfx("2001:db8::/32"), "", nil}, ""},
		{"udp:[2001:db8::]/32:53,5353", EgressRule{ProtoUDP, pfx("2001:db8::/32"), "", []PortRange{{53, 53}, {5353, 5353}}}, ""},
		{"tcp:[2001:db8::ff]/120", EgressRule{ProtoTCP, pfx("2001:db8::/120"), "", nil}, "tcp:[2001:db8::]/120"},
		{"tcp:[2001:DB8::1]", EgressRule{ProtoTCP, pfx("2001:db8::1/128"), "", nil}, "tcp:[2001:db8::1]"},
		{"any:[::]/0", EgressRule{ProtoAny, pfx("::/0"), "", nil}, ""},
		{"tcp:[::1]/128", EgressRule{ProtoTCP, pfx("::1/128"), "", nil}, "tcp:[::1]"},
		// IPv4-mapped input is stored as IPv4.
		{"tcp:[::ffff:10.0.0.0]/104", EgressRule{ProtoTCP, pfx("10.0.0.0/8"), "", nil}, "tcp:10.0.0.0/8"},
		{"tcp:[::ffff:192.0.2.7]:80", EgressRule{ProtoTCP, pfx("192.0.2.7/32"), "", []PortRange{{80, 80}}}, "tcp:192.0.2.7:80"},
		{"tcp:[::ffff:c000:207]", EgressRule{ProtoTCP, pfx("192.0.2.7/32"), "", nil}, "tcp:192.0.2.7"},
		{"tcp:[::ffff:0:0]/96", EgressRule{ProtoTCP, pfx("0.0.0.0/0"), "", nil}, "tcp:0.0.0.0/0"},
		// A name where the address stands.
		{"tcp:api.github.com:443", EgressRule{Protocol: ProtoTCP, Host: "api.github.com", Ports: []PortRange{{443, 443}}}, ""},
		{"tcp:*.example.com:443", EgressRule{Protocol: ProtoTCP, Host: "*.example.com", Ports: []PortRange{{443, 443}}}, ""},
		{"any:example.com", EgressRule{Protocol: ProtoAny, Host: "example.com"}, ""},
		{"icmp:Router.Example.COM", EgressRule{Protocol: ProtoICMP, Host: "router.example.com"}, "icmp:router.example.com"},
		{"udp:localhost:53,5353", EgressRule{Protocol: ProtoUDP, Host: "localhost", Ports: []PortRange{{53, 53}, {5353, 5353}}}, ""},
		{"tcp:1a.example:80", EgressRule{Protocol: ProtoTCP, Host: "1a.example", Ports: []PortRange{{80, 80}}}, ""},
	}
	for _, tt := range tests {
		got, err := ParseConnect(tt.in)
		if err != nil {
			t.Errorf("ParseConnect(%q): %v", tt.in, err)
			continue
		}
		if !equalEgress(got, tt.want) {
			t.Errorf("ParseConnect(%q) = %#v, want %#v", tt.in, got, tt.want)
		}
		wantStr := tt.str
		if wantStr == "" {
			wantStr = tt.in
		}
		if s := got.String(); s != wantStr {
			t.Errorf("ParseConnect(%q).String() = %q, want %q", tt.in, s, wantStr)
		}
	}
}

func TestParseConnectErrors(t *testing.T) {
	tests := []struct{ in, why string }{
		{"", "no address"},
		{"tcp", "no address"},
		{"tcp:", "empty address"},
		{":10.0.0.1", "empty protocol"},
		{"sctp:10.0.0.1", "unknown protocol"},
		{"TCP:10.0.0.1", "unknown protocol"},
		{"tcp:10.0.0.256", "not an IPv4 address"},
		{"tcp:1.2.3", "not an IPv4 address"},
		{"tcp:example.com/24", "not an IPv4 address"},
		{"tcp:a*.example.com:443", "'*' is allowed only as the first label"},
		{"tcp:api.*.example.com", "'*' is allowed only as the first label"},
		{"tcp:*:443", "'*' is allowed only as the first label"},
		{"tcp:*.com:443", "two labels or more"},
		{"tcp:example.com.:443", "trailing dot"},
		{"tcp:exa_mple..com", "empty label"},
		{"tcp:ex!ample.com", "has '!'"},
		{"tcp:example.com:0", "not a number from 1 to 65535"},
		{"icmp:example.com:80", "icmp has no ports"},
		{"tcp:example.com:", "empty port list"},
		{"tcp:10.0.0.0/33", "prefix length"},
		{"tcp:10.0.0.0/-1", "prefix length"},
		{"tcp:10.0.0.0/", "prefix length"},
		{"tcp:10.0.0.0/x", "prefix length"},
		{"tcp:[::1]/129", "prefix length"},
		{"tcp:[::1]/", "prefix length"},
		{"tcp:10.0.0.1:", "empty port list"},
		{"tcp:10.0.0.1:0", "not a number from 1 to 65535"},
		{"tcp:10.0.0.1:65536", "not a number from 1 to 65535"},
		{"tcp:10.0.0.1:-5", "not a number"},
		{"tcp:10.0.0.1:+5", "not a number"},
		{"tcp:10.0.0.1:http", "not a number"},
		{"tcp:10.0.0.1:0-80", "not a number from 1 to 65535"},
		{"tcp:10.0.0.1:90-80", "runs backwards"},
		{"tcp:10.0.0.1:80-", "not a number"},
		{"tcp:10.0.0.1:80,,443", "empty entry"},
		{"tcp:10.0.0.1:80,", "empty entry"},
		{"tcp:10.0.0.1: 80", "not a number"},
		{"icmp:10.0.0.1:80", "icmp has no ports"},
		{"icmp:[::1]:80", "icmp has no ports"},
		{"tcp:2001:db8::1", "must be in brackets"},
		{"tcp:::1", "must be in brackets"},
		{"tcp:fe80::1%eth0", "must be in brackets"},
		{"tcp:[fe80::1%eth0]", "zone"},
		{"tcp:[fe80::1%eth0]:80", "zone"},
		{"tcp:10.0.0.1%eth0", "zone"},
		{"tcp:[::1", "missing ']'"},
		{"tcp:[]", "empty address"},
		{"tcp:[]/64", "empty address"},
		{"tcp:[::1]x", "unexpected"},
		{"tcp:[::1]:", "empty port list"},
		{"tcp:[10.0.0.1]", "not IPv6"},
		{"tcp:[nope]", "not an IPv6 address"},
		{"tcp:[::ffff:10.0.0.0]/95", "shorter than /96"},
		{"tcp:[::ffff:0:0]/80", "shorter than /96"},
	}
	for _, tt := range tests {
		r, err := ParseConnect(tt.in)
		if err == nil {
			t.Errorf("ParseConnect(%q) = %v, want error containing %q", tt.in, r, tt.why)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, tt.why) || !strings.Contains(msg, strconv.Quote(tt.in)) || !strings.Contains(msg, "PROTO:ADDR[:PORTS]") {
			t.Errorf("ParseConnect(%q) error %q: want it to quote the input, say %q and show the expected form", tt.in, msg, tt.why)
		}
	}
}

func TestParseUnix(t *testing.T) {
	long := "/" + strings.Repeat("a", MaxUnixPath-1)
	tests := []struct{ in, want string }{
		{"/run/x.sock", "/run/x.sock"},
		{"/run//docker/../x.sock/", "/run/x.sock"},
		{"@name", "@name"},
		{"@/with/slashes/../kept", "@/with/slashes/../kept"},
		{"@" + strings.Repeat("n", MaxUnixPath), "@" + strings.Repeat("n", MaxUnixPath)},
		{long, long},
		{long + "/.", long},
	}
	for _, tt := range tests {
		got, err := ParseUnix(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseUnix(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	errs := []struct{ in, why string }{
		{"", "empty path"},
		{"@", "empty abstract name"},
		{"run/x.sock", "relative"},
		{"./x.sock", "relative"},
		{"/run/x\x00.sock", "NUL"},
		{long + "a", "bytes"},
		{"@" + strings.Repeat("n", MaxUnixPath+1), "bytes"},
	}
	for _, tt := range errs {
		got, err := ParseUnix(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.why) || !strings.Contains(err.Error(), strconv.Quote(tt.in)) {
			t.Errorf("ParseUnix(%q) = %q, %v; want an error quoting the input and saying %q", tt.in, got, err, tt.why)
		}
	}
}

func TestParseExec(t *testing.T) {
	tests := []struct {
		in   string
		want ExecRule
		str  string
	}{
		{"/usr/bin/git", ExecRule{Path: "/usr/bin/git", Dir: false}, "/usr/bin/git"},
		{"/usr/bin/", ExecRule{Path: "/usr/bin", Dir: true}, "/usr/bin/"},
		{"/usr//lib/../bin/", ExecRule{Path: "/usr/bin", Dir: true}, "/usr/bin/"},
		{"/opt/tool/./bin/x", ExecRule{Path: "/opt/tool/bin/x", Dir: false}, "/opt/tool/bin/x"},
		{"/", ExecRule{Path: "/", Dir: true}, "/"},
	}
	for _, tt := range tests {
		got, err := ParseExec(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseExec(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			continue
		}
		if s := got.String(); s != tt.str {
			t.Errorf("ParseExec(%q).String() = %q, want %q", tt.in, s, tt.str)
		}
	}
	for _, in := range []string{"", "git", "bin/", "./x", "/bin/x\x00"} {
		if got, err := ParseExec(in); err == nil || !strings.Contains(err.Error(), strconv.Quote(in)) {
			t.Errorf("ParseExec(%q) = %+v, %v; want an error quoting the input", in, got, err)
		}
	}
}

func TestProtocolString(t *testing.T) {
	for p, want := range map[Protocol]string{ProtoTCP: "tcp", ProtoUDP: "udp", ProtoICMP: "icmp", ProtoAny: "any", 132: "proto(132)"} {
		if got := p.String(); got != want {
			t.Errorf("Protocol(%d).String() = %q, want %q", uint8(p), got, want)
		}
	}
}

func equalEgress(a, b EgressRule) bool {
	return a.Protocol == b.Protocol && a.Prefix == b.Prefix && a.Host == b.Host && slices.Equal(a.Ports, b.Ports)
}
