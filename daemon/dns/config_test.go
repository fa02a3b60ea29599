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
