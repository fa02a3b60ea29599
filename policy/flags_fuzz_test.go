package policy

import "testing"

func FuzzParseConnect(f *testing.F) {
	for _, s := range []string{
		"tcp:192.0.2.7", "udp:10.0.0.0/8:53", "tcp:10.1.2.3/8:80,443,8000-8100", "icmp:0.0.0.0/0",
		"any:[2001:db8::]/32", "tcp:[::1]:443", "tcp:[::ffff:10.0.0.0]/104", "tcp:[::ffff:1.2.3.4]:1-65535",
		"tcp:[fe80::1%eth0]", "tcp:2001:db8::1", "udp:[::ffff:0:0]/95", "tcp:1.2.3.4:0", "tcp:[]:",
		"tcp:api.github.com:443", "tcp:*.example.com:443", "any:example.com", "udp:_dns.Example.ORG:53,5353",
		"tcp:*.com", "tcp:a.*.b.com", "tcp:1.2.3", "tcp:example.com.", "icmp:x.example:1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseConnect(s)
		if err != nil {
			return
		}
		p := r.Prefix
		if r.Host != "" {
			if p.IsValid() {
				t.Fatalf("ParseConnect(%q): both host %q and prefix %v", s, r.Host, p)
			}
			if canon, err := ParseHostPattern(r.Host); err != nil || canon != r.Host {
				t.Fatalf("ParseConnect(%q): host %q is not canonical: %q, %v", s, r.Host, canon, err)
			}
		} else if !p.IsValid() || p != p.Masked() {
			t.Fatalf("ParseConnect(%q): prefix %v is not masked", s, p)
		}
		if p.Addr().Is4In6() || p.Addr().Zone() != "" {
			t.Fatalf("ParseConnect(%q): prefix %v is mapped or zoned", s, p)
		}
		if r.Protocol == ProtoICMP && len(r.Ports) > 0 {
			t.Fatalf("ParseConnect(%q): icmp rule with ports %v", s, r.Ports)
		}
		for _, pr := range r.Ports {
			if pr.First == 0 || pr.First > pr.Last {
				t.Fatalf("ParseConnect(%q): bad port range %v", s, pr)
			}
		}
		again, err := ParseConnect(r.String())
		if err != nil {
			t.Fatalf("ParseConnect(%q).String() = %q does not parse: %v", s, r.String(), err)
		}
		if !equalEgress(again, r) {
			t.Fatalf("ParseConnect(%q) = %v, but its String %q parses to %v", s, r, r.String(), again)
		}
	})
}
