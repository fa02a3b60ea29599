package policy

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestDecodeApprovable(t *testing.T) {
	a, err := DecodeApprovable(jsonValue(t, `{
		"egress": [
			{"protocol": "tcp", "cidr": "192.0.2.0/24", "ports": [443], "max_ttl": "30m"},
			{"protocol": "tcp", "host": "*.GitHub.com", "ports": [443], "approvers": {"uids": [1000], "gids": [10], "identities": ["spiffe://example.org"]}}
		],
		"exec": [{"path": "/bin/sh", "max_ttl": "10m"}, {"dir": "/usr/bin"}]
	}`), "data.bridle.approvable")
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Entries) != 4 {
		t.Fatalf("entries %+v", a.Entries)
	}
	e := a.Entries[0]
	if e.Egress.Prefix != netip.MustParsePrefix("192.0.2.0/24") || e.MaxTTL != 30*time.Minute || e.Approvers != nil {
		t.Errorf("entry 0 %+v", e)
	}
	e = a.Entries[1]
	if e.Egress.Host != "*.github.com" || e.Approvers == nil || e.Approvers.UIDs[0] != 1000 || e.Approvers.GIDs[0] != 10 {
		t.Errorf("entry 1 %+v", e)
	}
	if a.Entries[2].Exec.Path != "/bin/sh" || a.Entries[2].MaxTTL != 10*time.Minute || !a.Entries[3].Exec.Dir {
		t.Errorf("exec entries %+v %+v", a.Entries[2], a.Entries[3])
	}
}

func TestDecodeApprovableRefuses(t *testing.T) {
	tests := []struct{ in, want string }{
		{`[]`, "want an object {egress, exec}"},
		{`{"listen": []}`, `unknown key "listen"`},
		{`{"egress": [{"protocol": "tcp", "cidr": "192.0.2.0/24", "max_ttl": "-1m"}]}`, "max_ttl: must be positive"},
		{`{"egress": [{"protocol": "tcp", "cidr": "192.0.2.0/24", "max_ttl": 60}]}`, "max_ttl: want a duration string"},
		{`{"egress": [{"protocol": "tcp", "cidr": "192.0.2.0/24", "ttl": "1m"}]}`, `unknown key "ttl"`},
		{`{"egress": [{"unix": "/run/x.sock"}]}`, "unix sockets cannot be approved"},
		{`{"exec": [{"script": "/bin/sh"}]}`, "#! scripts"},
		{`{"exec": [{"path": "/bin/sh", "approvers": {"uids": [-1]}}]}`, "approvers: uids"},
		{`{"exec": [{"path": "/bin/sh", "approvers": {"identities": ["example.org"]}}]}`, "SPIFFE ID or trust domain"},
		{`{"exec": [{"path": "/bin/sh", "approvers": {"users": [1]}}]}`, `unknown key "users"`},
		{`{"exec": [{"path": "/bin/sh", "approvers": {"uids": []}}]}`, "names nobody"},
	}
	for _, tt := range tests {
		_, err := DecodeApprovable(jsonValue(t, tt.in), "data.bridle.approvable")
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want %q", tt.in, err, tt.want)
		}
	}
	// An entry's error names the entry, as the envelope's do, so the
	// engine can find where the policy wrote it.
	_, err := DecodeApprovable(jsonValue(t, `{"egress": [{"protocol": "tcp", "cidr": "192.0.2.0/24", "max_ttl": "soon"}]}`), "data.bridle.approvable")
	var ee *EntryError
	if !errors.As(err, &ee) || ee.Where != "egress[0]" || ee.Value != "soon" {
		t.Fatalf("error %v (%+v), want an EntryError at egress[0] about \"soon\"", err, ee)
	}
}

func mustCompileApprovable(t *testing.T, entries ...ApprovableEntry) CompiledApprovable {
	t.Helper()
	c, err := CompileApprovable(Approvable{Entries: entries})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func egressEntry(proto Protocol, cidr string, ports ...PortRange) ApprovableEntry {
	return ApprovableEntry{Egress: &EgressRule{Protocol: proto, Prefix: netip.MustParsePrefix(cidr), Ports: ports}}
}

func hostEntry(proto Protocol, host string, ports ...PortRange) ApprovableEntry {
	return ApprovableEntry{Egress: &EgressRule{Protocol: proto, Host: host, Ports: ports}}
}

func TestApprovableMatch(t *testing.T) {
	sh, err := FileIDOf("/bin/sh")
	if err != nil {
		t.Skipf("no /bin/sh to stat: %v", err)
	}
	c := mustCompileApprovable(t,
		egressEntry(ProtoTCP, "192.0.2.0/24", PortRange{443, 443}),
		egressEntry(ProtoAny, "2001:db8::/32", PortRange{53, 53}),
		hostEntry(ProtoTCP, "*.github.com", PortRange{443, 443}),
		ApprovableEntry{Exec: &ExecRule{Path: "/bin/sh"}},
	)
	conn := func(p Protocol, a string, port uint16) Target {
		return Target{Action: TargetConnect, Protocol: p, Addr: netip.MustParseAddr(a), Port: port}
	}
	tests := []struct {
		name  string
		t     Target
		entry int
	}{
		{"in prefix and port", conn(ProtoTCP, "192.0.2.7", 443), 0},
		{"IPv4-mapped", conn(ProtoTCP, "::ffff:192.0.2.7", 443), 0},
		{"other port", conn(ProtoTCP, "192.0.2.7", 80), -1},
		{"other protocol", conn(ProtoUDP, "192.0.2.7", 443), -1},
		{"outside prefix", conn(ProtoTCP, "192.0.3.1", 443), -1},
		{"any with ports: udp", conn(ProtoUDP, "2001:db8::1", 53), 1},
		{"any with ports: not icmp", conn(ProtoICMP, "2001:db8::1", 0), -1},
		{"host entry never covers an address", conn(ProtoTCP, "140.82.112.3", 443), -1},
		{"name under wildcard", Target{Action: TargetDNS, Name: "api.github.com"}, 2},
		{"wildcard's suffix", Target{Action: TargetDNS, Name: "github.com"}, -1},
		{"exec by dev:ino", Target{Action: TargetExec, Dev: sh.Dev, Ino: sh.Ino, Path: "/anything"}, 3},
		{"exec of another file by the same name", Target{Action: TargetExec, Dev: sh.Dev, Ino: sh.Ino + 1, Path: "/bin/sh"}, -1},
	}
	for _, tt := range tests {
		i, ok := c.Match(tt.t)
		if tt.entry < 0 && ok || tt.entry >= 0 && (!ok || i != tt.entry) {
			t.Errorf("%s: Match = %d, %v; want %d", tt.name, i, ok, tt.entry)
		}
	}
	rules := c.NameRules(2, "api.github.com")
	if len(rules) != 1 || rules[0].Protocol != ProtoTCP || rules[0].Pattern != "api.github.com" || len(rules[0].Ports) != 1 || rules[0].Ports[0] != (PortRange{443, 443}) {
		t.Errorf("NameRules %+v", rules)
	}
}

func TestApprovableWithin(t *testing.T) {
	parentRules, err := Compile(Envelope{Egress: []EgressRule{
		{Protocol: ProtoTCP, Prefix: netip.MustParsePrefix("10.0.0.0/8"), Ports: []PortRange{{443, 443}}},
		{Protocol: ProtoTCP, Host: "*.example.com", Ports: []PortRange{{443, 443}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	parent := mustCompileApprovable(t,
		ApprovableEntry{Egress: &EgressRule{Protocol: ProtoTCP, Prefix: netip.MustParsePrefix("192.0.2.0/24")}, MaxTTL: 5 * time.Minute},
		hostEntry(ProtoTCP, "*.github.com", PortRange{443, 443}),
	)
	child := mustCompileApprovable(t,
		egressEntry(ProtoTCP, "10.1.0.0/16", PortRange{443, 443}),  // 0: in the parent's rules
		egressEntry(ProtoTCP, "10.1.0.0/16", PortRange{80, 80}),    // 1: rules hold 443 only
		egressEntry(ProtoTCP, "192.0.2.128/25", PortRange{22, 22}), // 2: in the parent's entry, capped to 5m
		egressEntry(ProtoTCP, "192.0.0.0/16", PortRange{22, 22}),   // 3: wider than the parent's entry
		egressEntry(ProtoUDP, "192.0.2.0/24", PortRange{53, 53}),   // 4: other protocol
		hostEntry(ProtoTCP, "api.github.com", PortRange{443, 443}), // 5: under the parent's wildcard entry
		hostEntry(ProtoTCP, "*.example.com", PortRange{443, 443}),  // 6: in the parent's name rules
		hostEntry(ProtoTCP, "*.gitlab.com", PortRange{443, 443}),   // 7: nowhere
	)
	got := child.Within(parentRules, parent)
	var kept []string
	for _, e := range got.Entries {
		kept = append(kept, e.String())
	}
	want := []string{"tcp:10.1.0.0/16:443", "tcp:192.0.2.128/25:22", "tcp:api.github.com:443", "tcp:*.example.com:443"}
	if strings.Join(kept, " ") != strings.Join(want, " ") {
		t.Fatalf("kept %v, want %v", kept, want)
	}
	if got.Entries[1].MaxTTL != 5*time.Minute || got.Entries[0].MaxTTL != 0 {
		t.Errorf("max_ttl %v %v: want the parent entry's 5m on the second only", got.Entries[0].MaxTTL, got.Entries[1].MaxTTL)
	}
	if _, ok := got.Match(Target{Action: TargetConnect, Protocol: ProtoTCP, Addr: netip.MustParseAddr("192.0.2.200"), Port: 22}); !ok {
		t.Error("kept entry does not match")
	}
}

func TestApprovableWithinLongerParentPrefix(t *testing.T) {
	// The parent allows 10/8 on 443 but 10.9/16 on 22 only: a longer
	// prefix inside the child's entry that refuses its port.
	rules, err := Compile(Envelope{Egress: []EgressRule{
		{Protocol: ProtoTCP, Prefix: netip.MustParsePrefix("10.0.0.0/8"), Ports: []PortRange{{443, 443}}},
		{Protocol: ProtoTCP, Prefix: netip.MustParsePrefix("10.9.0.0/16"), Ports: []PortRange{{22, 22}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	// Compile's port-union gives 10.9/16 443 too, so the child is held.
	child := mustCompileApprovable(t, egressEntry(ProtoTCP, "10.0.0.0/8", PortRange{443, 443}), egressEntry(ProtoTCP, "10.0.0.0/8", PortRange{22, 22}))
	got := child.Within(rules, CompiledApprovable{})
	if len(got.Entries) != 1 || got.Entries[0].Egress.Ports[0].First != 443 {
		t.Fatalf("kept %+v, want the 443 entry only", got.Entries)
	}
}

func TestApprovableWithinExec(t *testing.T) {
	sh, err := FileIDOf("/bin/sh")
	if err != nil {
		t.Skipf("no /bin/sh: %v", err)
	}
	child := mustCompileApprovable(t, ApprovableEntry{Exec: &ExecRule{Path: "/bin/sh"}})
	if got := child.Within(RuleSet{}, CompiledApprovable{}); len(got.Entries) != 0 {
		t.Fatal("exec kept with nothing in the parent")
	}
	if got := child.Within(RuleSet{Exec: []FileID{sh}}, CompiledApprovable{}); len(got.Entries) != 1 {
		t.Fatal("exec in the parent's rules dropped")
	}
	parent := mustCompileApprovable(t, ApprovableEntry{Exec: &ExecRule{Path: "/bin/sh"}, MaxTTL: time.Minute})
	got := child.Within(RuleSet{}, parent)
	if len(got.Entries) != 1 || got.Entries[0].MaxTTL != time.Minute {
		t.Fatalf("exec in the parent's approvable: %+v", got.Entries)
	}
	if _, ok := got.Match(Target{Action: TargetExec, Dev: sh.Dev, Ino: sh.Ino}); !ok {
		t.Fatal("kept exec entry does not match")
	}
}

func TestApproversAllows(t *testing.T) {
	a := Approvers{UIDs: []uint32{1000}, GIDs: []uint32{50}, Identities: []string{"spiffe://ops.example", "spiffe://example.org/alice"}}
	tests := []struct {
		name     string
		uid      uint32
		hasUID   bool
		gids     []uint32
		identity string
		want     bool
	}{
		{"uid", 1000, true, nil, "", true},
		{"uid the kernel did not vouch for", 1000, false, nil, "", false},
		{"group", 5, true, []uint32{7, 50}, "", true},
		{"exact identity", 0, false, nil, "spiffe://example.org/alice", true},
		{"other identity of that domain", 0, false, nil, "spiffe://example.org/bob", false},
		{"identity in a listed trust domain", 0, false, nil, "spiffe://ops.example/oncall", true},
		{"a domain whose name extends a listed one", 0, false, nil, "spiffe://ops.example.evil/x", false},
		{"nobody", 5, true, []uint32{5}, "", false},
	}
	for _, tt := range tests {
		if got := a.Allows(tt.uid, tt.hasUID, tt.gids, tt.identity); got != tt.want {
			t.Errorf("%s: Allows = %v, want %v", tt.name, got, tt.want)
		}
	}
}
