package policy

import (
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// jsonValue decodes s the way OPA hands results over: numbers as json.Number.
func jsonValue(t *testing.T, s string) any {
	t.Helper()
	d := json.NewDecoder(strings.NewReader(s))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatalf("%s: %v", s, err)
	}
	return v
}

func TestDecodeEnvelope(t *testing.T) {
	v := jsonValue(t, `{
		"egress": [
			{"protocol": "tcp", "cidr": "192.0.2.10", "ports": [443, "8000-8100", "22"]},
			{"protocol": "udp", "cidr": "2001:db8::/32", "ports": [53]},
			{"protocol": "any", "cidr": "::ffff:198.51.100.0/120"},
			{"protocol": "icmp", "cidr": "203.0.113.0/24"},
			{"unix": "/run/agent//tools.sock"},
			{"unix": "@broker"},
			{"protocol": "tcp", "host": "API.GitHub.com", "ports": [443]},
			{"protocol": "any", "host": "*.githubusercontent.com"}
		],
		"exec": [{"path": "/usr/bin/git"}, {"dir": "/usr/local/go/bin"}, {"dir": "/opt/tools/"}],
		"ttl": "90m"
	}`)
	env, maxTTL, err := DecodeEnvelope(v, "data.bridle.envelope", true)
	if err != nil {
		t.Fatal(err)
	}
	want := Envelope{
		Egress: []EgressRule{
			{Protocol: ProtoTCP, Prefix: netip.MustParsePrefix("192.0.2.10/32"), Ports: []PortRange{{443, 443}, {8000, 8100}, {22, 22}}},
			{Protocol: ProtoUDP, Prefix: netip.MustParsePrefix("2001:db8::/32"), Ports: []PortRange{{53, 53}}},
			// IPv4-mapped prefixes become IPv4, as for the flag.
			{Protocol: ProtoAny, Prefix: netip.MustParsePrefix("198.51.100.0/24")},
			{Protocol: ProtoICMP, Prefix: netip.MustParsePrefix("203.0.113.0/24")},
			{Protocol: ProtoTCP, Host: "api.github.com", Ports: []PortRange{{443, 443}}},
			{Protocol: ProtoAny, Host: "*.githubusercontent.com"},
		},
		Unix: []string{"/run/agent/tools.sock", "@broker"},
		Exec: []ExecRule{{Path: "/usr/bin/git"}, {Path: "/usr/local/go/bin", Dir: true}, {Path: "/opt/tools", Dir: true}},
	}
	if !equalEnvelope(env, want) {
		t.Errorf("decodeEnvelope =\n%+v\nwant\n%+v", env, want)
	}
	if maxTTL != 90*time.Minute {
		t.Errorf("max TTL = %v, want 90m", maxTTL)
	}
}

func equalEnvelope(a, b Envelope) bool {
	return slices.EqualFunc(a.Egress, b.Egress, equalEgress) &&
		slices.Equal(a.Unix, b.Unix) && slices.Equal(a.Exec, b.Exec) && a.TTL == b.TTL &&
		slices.EqualFunc(a.Listen, b.Listen, equalListen)
}

func equalListen(a, b ListenRule) bool {
	return a.Protocol == b.Protocol && slices.Equal(a.Ports, b.Ports)
}

func TestDecodeTTL(t *testing.T) {
	for in, want := range map[string]time.Duration{`7200`: 2 * time.Hour, `"2h"`: 2 * time.Hour, `"1m30s"`: 90 * time.Second, `1`: time.Second} {
		_, got, err := DecodeEnvelope(jsonValue(t, `{"ttl": `+in+`}`), "data.bridle.envelope", true)
		if err != nil || got != want {
			t.Errorf("ttl %s = %v, %v; want %v", in, got, err, want)
		}
	}
}

func TestDecodeEnvelopeErrors(t *testing.T) {
	tests := []struct {
		name, in string
		baseline bool
		// every string must appear in the error, so that it names the
		// entry and says what is wrong with it
		want []string
	}{
		{"not an object", `[]`, false, []string{"data.bridle.envelope", "want an object", "got an array"}},
		{"unknown top-level key", `{"egress": [], "approvals": []}`, false, []string{`unknown key "approvals"`}},
		{"egress not a list", `{"egress": {"protocol": "tcp"}}`, false, []string{"egress: want an array or set"}},
		{"bad cidr", `{"egress": [{"protocol": "tcp", "cidr": "10.0.0.0/8"}, {"protocol": "tcp", "cidr": "10.0.0.0/33"}]}`, false,
			[]string{`egress[1] {"cidr":"10.0.0.0/33","protocol":"tcp"}`, `prefix length "33" out of range 0-32`}},
		{"name as cidr", `{"egress": [{"protocol": "tcp", "cidr": "example.com"}]}`, false, []string{`"example.com" is not an IPv4 or IPv6 address`, `{"host": "example.com"}`}},
		{"bracketed cidr", `{"egress": [{"protocol": "tcp", "cidr": "[2001:db8::1]"}]}`, false, []string{"cidr:", "not an IPv4 or IPv6 address"}},
		{"zone", `{"egress": [{"protocol": "tcp", "cidr": "fe80::1%eth0"}]}`, false, []string{"zones are not allowed"}},
		{"missing cidr", `{"egress": [{"protocol": "tcp"}]}`, false, []string{"cidr: want an address or CIDR string", "got null"}},
		{"missing protocol", `{"egress": [{"cidr": "192.0.2.1"}]}`, false, []string{"protocol: want one of"}},
		{"bad protocol", `{"egress": [{"protocol": "sctp", "cidr": "192.0.2.1"}]}`, false, []string{`unknown protocol "sctp"`}},
		{"unknown egress key", `{"egress": [{"protocol": "tcp", "cidr": "192.0.2.1", "port": 443}]}`, false, []string{`egress[0]`, `unknown key "port"`}},
		{"port zero", `{"egress": [{"protocol": "tcp", "cidr": "192.0.2.1", "ports": [0]}]}`, false, []string{`port "0" is not a number from 1 to 65535`}},
		{"port too big", `{"egress": [{"protocol": "tcp", "cidr": "192.0.2.1", "ports": [70000]}]}`, false, []string{`port "70000"`}},
		{"fractional port", `{"egress": [{"protocol": "tcp", "cidr": "192.0.2.1", "ports": [443.5]}]}`, false, []string{`port "443.5"`}},
		{"backwards range", `{"egress": [{"protocol": "tcp", "cidr": "192.0.2.1", "ports": ["90-80"]}]}`, false, []string{`port range "90-80" runs backwards`}},
		{"port list string", `{"egress": [{"protocol": "tcp", "cidr": "192.0.2.1", "ports": "80,443"}]}`, false, []string{"ports: want an array", "got a string"}},
		{"port comma string", `{"egress": [{"protocol": "tcp", "cidr": "192.0.2.1", "ports": ["80,443"]}]}`, false, []string{`port "80,443"`}},
		{"empty ports", `{"egress": [{"protocol": "tcp", "cidr": "192.0.2.1", "ports": []}]}`, false, []string{"empty list; leave ports out"}},
		{"port as bool", `{"egress": [{"protocol": "tcp", "cidr": "192.0.2.1", "ports": [true]}]}`, false, []string{"got a boolean"}},
		{"icmp ports", `{"egress": [{"protocol": "icmp", "cidr": "192.0.2.1", "ports": [1]}]}`, false, []string{"icmp has no ports"}},
		{"host without protocol", `{"egress": [{"host": "api.example.com", "ports": [443]}]}`, false, []string{`egress[0] {"host":"api.example.com","ports":[443]}`, "protocol: want one of"}},
		{"host with cidr", `{"egress": [{"protocol": "tcp", "cidr": "192.0.2.1", "host": "x.example"}]}`, false, []string{"host and cidr together"}},
		{"host star inside", `{"egress": [{"protocol": "tcp", "host": "api.*.example.com"}]}`, false, []string{`host "api.*.example.com": '*' is allowed only as the first label`}},
		{"host star in label", `{"egress": [{"protocol": "tcp", "host": "*api.example.com"}]}`, false, []string{"'*' is allowed only as the first label"}},
		{"host star alone", `{"egress": [{"protocol": "tcp", "host": "*"}]}`, false, []string{"'*' is allowed only as the first label"}},
		{"host wildcard over a tld", `{"egress": [{"protocol": "tcp", "host": "*.com"}]}`, false, []string{"two labels or more"}},
		{"host trailing dot", `{"egress": [{"protocol": "tcp", "host": "example.com."}]}`, false, []string{"without a trailing dot"}},
		{"host ipv4", `{"egress": [{"protocol": "tcp", "host": "192.0.2.1"}]}`, false, []string{`"192.0.2.1" is an address, not a name; use cidr`}},
		{"host ipv6", `{"egress": [{"protocol": "tcp", "host": "2001:db8::1"}]}`, false, []string{"is an address, not a name; use cidr"}},
		{"host prefix", `{"egress": [{"protocol": "tcp", "host": "10.0.0.0/8"}]}`, false, []string{"is an address, not a name; use cidr"}},
		{"host numeric", `{"egress": [{"protocol": "tcp", "host": "10.1"}]}`, false, []string{"is an address, not a name"}},
		{"host bad byte", `{"egress": [{"protocol": "tcp", "host": "exa mple.com"}]}`, false, []string{`label "exa mple" has ' '`}},
		{"host not string", `{"egress": [{"protocol": "tcp", "host": ["a.example"]}]}`, false, []string{"host: want a name string", "got an array"}},
		{"host unknown key", `{"egress": [{"protocol": "tcp", "host": "a.example", "port": 443}]}`, false, []string{`unknown key "port"`, "a host entry has protocol, host, ports"}},
		{"host icmp ports", `{"egress": [{"protocol": "icmp", "host": "a.example", "ports": [1]}]}`, false, []string{"icmp has no ports"}},
		{"host empty ports", `{"egress": [{"protocol": "tcp", "host": "a.example", "ports": []}]}`, false, []string{"empty list"}},
		{"unix extra key", `{"egress": [{"unix": "/run/x.sock", "protocol": "tcp"}]}`, false, []string{`unknown key "protocol"`, "only the key unix"}},
		{"unix relative", `{"egress": [{"unix": "run/x.sock"}]}`, false, []string{"unix: path is relative"}},
		{"unix not string", `{"egress": [{"unix": 1}]}`, false, []string{"unix: want a socket path string"}},
		{"entry not object", `{"egress": ["tcp:192.0.2.1:443"]}`, false, []string{"egress[0]", "want an object", "got a string"}},
		{"exec relative", `{"exec": [{"path": "bin/git"}]}`, false, []string{`exec[0] {"path":"bin/git"}`, "path must be absolute"}},
		{"exec path with slash", `{"exec": [{"path": "/usr/bin/"}]}`, false, []string{`write {dir: "/usr/bin/"}`}},
		{"exec two keys", `{"exec": [{"path": "/usr/bin/git", "dir": "/usr/bin"}]}`, false, []string{"exactly one of the keys path, dir, script, sha256; got dir, path"}},
		{"exec unknown key", `{"exec": [{"file": "/usr/bin/git"}]}`, false, []string{`unknown key "file"`}},
		{"exec sha256", `{"exec": [{"sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}]}`, false, []string{"not supported yet", "device and inode"}},
		{"exec dir not string", `{"exec": [{"dir": ["/usr/bin"]}]}`, false, []string{"dir: want an absolute path string, got an array"}},
		{"ttl zero", `{"ttl": 0}`, false, []string{"ttl 0", "from 1 to"}},
		{"ttl negative", `{"ttl": "-5m"}`, false, []string{"must be positive"}},
		{"ttl fraction", `{"ttl": 1.5}`, false, []string{"whole number of seconds"}},
		{"ttl garbage", `{"ttl": "soon"}`, false, []string{`ttl "soon"`, "duration string"}},
		{"ttl bool", `{"ttl": true}`, false, []string{"got a boolean"}},
		{"baseline ttl", `{"ttl": "1h"}`, true, []string{"data.bridle.baseline", "a baseline has no ttl"}},
		{"baseline unknown key", `{"egress": [], "deny": []}`, true, []string{`unknown key "deny" (want egress, exec or listen)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rule := "data.bridle.envelope"
			if tt.baseline {
				rule = "data.bridle.baseline"
			}
			env, _, err := DecodeEnvelope(jsonValue(t, tt.in), rule, !tt.baseline)
			if err == nil {
				t.Fatalf("DecodeEnvelope(%s) = %+v, want an error", tt.in, env)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

func TestDecodeDeny(t *testing.T) {
	got, err := DecodeDeny(jsonValue(t, `["a", ""]`))
	if err != nil || !slices.Equal(got, []string{"a", "(a deny rule gave an empty message)"}) {
		t.Errorf("decodeDeny = %q, %v", got, err)
	}
	for _, in := range []string{`true`, `"no"`, `[1]`, `[{"msg": "x"}]`} {
		if got, err := DecodeDeny(jsonValue(t, in)); err == nil {
			t.Errorf("DecodeDeny(%s) = %q, want an error", in, got)
		}
	}
}

// A policy's entries must decode to exactly what the equivalent flags
// give, since both feed the same Compile.
func TestDecodeMatchesFlags(t *testing.T) {
	pairs := []struct{ entry, flag string }{
		{`{"protocol": "tcp", "cidr": "10.1.2.3/8", "ports": [80, 443, "8000-8100"]}`, "tcp:10.1.2.3/8:80,443,8000-8100"},
		{`{"protocol": "udp", "cidr": "2001:db8::1", "ports": [53]}`, "udp:[2001:db8::1]:53"},
		{`{"protocol": "any", "cidr": "::ffff:10.0.0.0/104"}`, "any:[::ffff:10.0.0.0]/104"},
		{`{"protocol": "icmp", "cidr": "0.0.0.0/0"}`, "icmp:0.0.0.0/0"},
		{`{"protocol": "tcp", "host": "api.github.com", "ports": [443]}`, "tcp:api.github.com:443"},
		{`{"protocol": "any", "host": "*.Example.com"}`, "any:*.example.com"},
		{`{"protocol": "udp", "host": "_sip._udp.example.com", "ports": ["5060-5061"]}`, "udp:_sip._udp.example.com:5060-5061"},
	}
	for _, p := range pairs {
		got, _, err := decodeEgress(jsonValue(t, p.entry))
		if err != nil {
			t.Fatalf("%s: %v", p.entry, err)
		}
		want, err := ParseConnect(p.flag)
		if err != nil {
			t.Fatal(err)
		}
		if !equalEgress(got, want) {
			t.Errorf("%s = %v, flag %s = %v", p.entry, got, p.flag, want)
		}
	}
}

// A refused entry carries itself and the string that is wrong, which the
// engine looks up in the policy's source.
func TestDecodeEnvelopeEntryError(t *testing.T) {
	_, _, err := DecodeEnvelope(jsonValue(t, `{"egress": [{"protocol": "tcp", "host": "a.*.example.com"}]}`), "data.bridle.envelope", true)
	var ee *EntryError
	if !errors.As(err, &ee) {
		t.Fatalf("error %v is not an *EntryError", err)
	}
	if ee.Where != "egress[0]" || ee.Value != "a.*.example.com" || ee.Rule != "data.bridle.envelope" {
		t.Errorf("EntryError = %+v", ee)
	}
	_, _, err = DecodeEnvelope(jsonValue(t, `{"exec": [{"path": "bin/git"}]}`), "data.bridle.envelope", true)
	if !errors.As(err, &ee) || ee.Value != "bin/git" || ee.Where != "exec[0]" {
		t.Errorf("exec error %v: EntryError %+v", err, ee)
	}
}
