package dns

import (
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/bridle-sh/bridle/policy"
)

// owner returns an owner or target name as rules compare names. A name
// with escapes or odd bytes comes back as is and matches no canonical name.
func owner(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}

// keepChain returns the records of an answer section that speak for name:
// the CNAMEs from name on, and the A and AAAA records of name and of the
// names those CNAMEs lead to. Everything else is dropped, so an upstream
// (or a cache) cannot hand the workload addresses for names it did not
// ask for, nor have the kernel learn them under this name's ports.
func keepChain(name string, answer []dns.RR) []dns.RR {
	names := map[string]bool{name: true}
	// Each pass adds at least one target or ends; a chain is never longer
	// than the section.
	for range answer {
		grew := false
		for _, rr := range answer {
			if c, ok := rr.(*dns.CNAME); ok && names[owner(c.Hdr.Name)] && !names[owner(c.Target)] {
				names[owner(c.Target)] = true
				grew = true
			}
		}
		if !grew {
			break
		}
	}
	var kept []dns.RR
	for _, rr := range answer {
		switch rr.(type) {
		case *dns.CNAME, *dns.A, *dns.AAAA:
			if names[owner(rr.Header().Name)] {
				kept = append(kept, rr)
			}
		}
	}
	return kept
}

// MaxAnswerAddrs is how many addresses of one answer a task learns and is
// handed. Services answer with a handful; a name answering with hundreds
// would spend the task's share of the kernel's learned entries at once.
const MaxAnswerAddrs = 32

// capAddresses keeps the first max A and AAAA records of rrs, and every
// other record.
func capAddresses(rrs []dns.RR, max int) []dns.RR {
	out := rrs[:0:0]
	n := 0
	for _, rr := range rrs {
		switch rr.(type) {
		case *dns.A, *dns.AAAA:
			if n == max {
				continue
			}
			n++
		}
		out = append(out, rr)
	}
	return out
}

// keepSOA returns the SOA records of an authority section: what a stub
// needs to cache a negative answer. Name servers and their glue are
// nothing a stub needs.
func keepSOA(ns []dns.RR) []dns.RR {
	var kept []dns.RR
	for _, rr := range ns {
		if _, ok := rr.(*dns.SOA); ok {
			kept = append(kept, rr)
		}
	}
	return kept
}

// address returns the address of an A or AAAA record. An IPv4-mapped
// address becomes IPv4, as the kernel's rules hold it. The unspecified
// address is refused: a connect to it reaches the host itself.
func address(rr dns.RR) (netip.Addr, bool) {
	var a netip.Addr
	switch r := rr.(type) {
	case *dns.A:
		a, _ = netip.AddrFromSlice(r.A)
	case *dns.AAAA:
		a, _ = netip.AddrFromSlice(r.AAAA)
	}
	a = a.Unmap()
	if !a.IsValid() || a.IsUnspecified() {
		return netip.Addr{}, false
	}
	return a, true
}

// learnedEntries returns the entries a task gets for the addresses of a
// kept answer: one per address and per protocol the name allows, living
// max(TTL, floor) from now, never past ends (the task's end, or the TTL
// ceiling).
func learnedEntries(ports policy.NamePorts, answer []dns.RR, now time.Time, floor time.Duration, ends time.Time) ([]Learned, []string) {
	var entries []Learned
	var shown []string
	all := []policy.PortRange{{First: 0, Last: 65535}}
	for _, rr := range answer {
		a, ok := address(rr)
		if !ok {
			continue
		}
		expires := now.Add(max(time.Duration(rr.Header().Ttl)*time.Second, floor))
		if !ends.IsZero() && expires.After(ends) {
			expires = ends
		}
		add := func(p policy.Protocol, pr []policy.PortRange) {
			entries = append(entries, Learned{Protocol: p, Addr: a, Ports: pr, Expires: expires})
		}
		if len(ports.TCP) > 0 {
			add(policy.ProtoTCP, ports.TCP)
		}
		if len(ports.UDP) > 0 {
			add(policy.ProtoUDP, ports.UDP)
		}
		if ports.ICMP {
			add(policy.ProtoICMP, all)
		}
		shown = append(shown, a.String())
	}
	return entries, shown
}

// minTTL is the shortest TTL of rrs, in seconds.
func minTTL(rrs []dns.RR) uint32 {
	m := ^uint32(0)
	for _, rr := range rrs {
		m = min(m, rr.Header().Ttl)
	}
	return m
}

// negativeTTL is how long a negative answer may be cached (RFC 2308: the
// SOA's TTL or its MINIMUM, whichever is less), at most limit. Without a
// SOA it is not cached.
func negativeTTL(ns []dns.RR, limit time.Duration) time.Duration {
	for _, rr := range ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return min(time.Duration(min(soa.Hdr.Ttl, soa.Minttl))*time.Second, limit)
		}
	}
	return 0
}

// ageTTLs lowers the TTLs of rrs by the time an answer spent in the cache
// and to the time left until ends (the task's end, or the TTL ceiling): a
// stub must not keep an address longer than the kernel allows it.
func ageTTLs(rrs []dns.RR, age time.Duration, now, ends time.Time) {
	aged := uint32(age / time.Second)
	for _, rr := range rrs {
		h := rr.Header()
		h.Ttl -= min(h.Ttl, aged)
		if !ends.IsZero() {
			left := max(ends.Sub(now), 0)
			h.Ttl = min(h.Ttl, uint32(left/time.Second))
		}
	}
}
