package dns

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

func TestSystemUpstream(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ conf, want string }{
		{"search example.org\nnameserver 10.255.255.53\nnameserver 10.0.0.2\n", "10.255.255.53:53"},
		{"nameserver 2001:db8::53\n", "[2001:db8::53]:53"},
		{"options ndots:2\n", "127.0.0.1:53"},
	} {
		p := filepath.Join(dir, "resolv.conf")
		if err := os.WriteFile(p, []byte(c.conf), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := SystemUpstream(p)
		if err != nil || got != netip.MustParseAddrPort(c.want) {
			t.Errorf("%q: got %v, %v; want %s", c.conf, got, err, c.want)
		}
	}
	if got, err := SystemUpstream(filepath.Join(dir, "none")); err != nil || got != netip.MustParseAddrPort("127.0.0.1:53") {
		t.Errorf("no file: got %v, %v; want 127.0.0.1:53", got, err)
	}
}

func TestParseUpstream(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:10053": "127.0.0.1:10053", "10.0.0.2": "10.0.0.2:53",
		"[2001:db8::1]:5353": "[2001:db8::1]:5353", "2001:db8::1": "[2001:db8::1]:53",
		"[::ffff:10.0.0.2]:53": "10.0.0.2:53",
	} {
		got, err := ParseUpstream(in)
		if err != nil || got != netip.MustParseAddrPort(want) {
			t.Errorf("%q: got %v, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "dns.example:53", "10.0.0.2:99999", "10.0.0.2:"} {
		if got, err := ParseUpstream(bad); err == nil {
			t.Errorf("%q: accepted as %v", bad, got)
		}
	}
}

func TestCheckReachable(t *testing.T) {
	for a, ok := range map[string]bool{
		"169.254.20.10": true, "10.0.0.53": true, "fd00:b41d::53": true, "2001:db8::53": true,
		"127.0.0.1": false, "127.0.0.53": false, "::1": false, "0.0.0.0": false, "::": false,
		"fe80::1": false, "::ffff:169.254.20.10": false, "224.0.0.53": false,
	} {
		if err := CheckReachable(netip.MustParseAddr(a)); (err == nil) != ok {
			t.Errorf("%s: %v, want reachable %v", a, err, ok)
		}
	}
}

// With an interface, the listen addresses are the pods' way in: an IPv4
// one is required, none may be loopback, and IPv6 is off unless given.
func TestConfigInterface(t *testing.T) {
	base := Config{Upstream: netip.MustParseAddrPort("127.0.0.1:53"), Kernel: &fakeKernel{}, Tasks: fakeTasks{}, Interface: "lo"}
	for _, c := range []struct {
		name   string
		l4, l6 string
		ok     bool
	}{
		{"both", "169.254.20.10:53", "[fd00:b41d::53]:53", true},
		{"IPv4 only", "169.254.20.10:0", "", true},
		{"no IPv4", "", "[fd00:b41d::53]:53", false},
		{"IPv4 loopback", "127.0.0.1:53", "", false},
		{"IPv6 loopback", "169.254.20.10:53", "[::1]:53", false},
		{"unspecified", "0.0.0.0:53", "", false},
	} {
		cfg := base
		if c.l4 != "" {
			cfg.Listen4 = netip.MustParseAddrPort(c.l4)
		}
		if c.l6 != "" {
			cfg.Listen6 = netip.MustParseAddrPort(c.l6)
		}
		got, err := cfg.withDefaults()
		if (err == nil) != c.ok {
			t.Errorf("%s: %v, want ok %v", c.name, err, c.ok)
			continue
		}
		if err == nil && c.l6 == "" && (got.Listen6.IsValid() || !got.NoIPv6) {
			t.Errorf("%s: IPv6 listens on %s, want no IPv6 resolver", c.name, got.Listen6)
		}
	}
}
