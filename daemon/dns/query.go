package dns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/policy"
)

// ednsSize is the UDP payload size the resolver offers in its replies
// (the DNS flag day 2020 value, which avoids IP fragmentation).
const ednsSize = 1232

// transport returns the protocol and source address of a query.
func transport(a net.Addr) (policy.Protocol, netip.AddrPort) {
	switch a := a.(type) {
	case *net.TCPAddr:
		return policy.ProtoTCP, unmapped(a.AddrPort())
	case *net.UDPAddr:
		return policy.ProtoUDP, unmapped(a.AddrPort())
	}
	return policy.ProtoUDP, netip.AddrPort{}
}

func unmapped(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// forwarded reports the types the resolver asks the upstream for: the
// ones that yield addresses. Any other type of an allowed name (TXT, MX,
// SRV, HTTPS, ANY…) is answered empty: those answers carry data the
// kernel cannot turn into rules, and a TXT record is the classic channel
// for bringing data in through DNS.
func forwarded(qtype uint16) bool {
	return qtype == dns.TypeA || qtype == dns.TypeAAAA || qtype == dns.TypeCNAME
}

// answer decides one query and returns the reply (nil: none) and its
// record.
func (s *Server) answer(ctx context.Context, proto policy.Protocol, src netip.AddrPort, req *dns.Msg) (*dns.Msg, audit.Record) {
	now := s.cfg.Now()
	rec := audit.Record{
		Time: audit.Timestamp(now), Node: s.cfg.Node, Action: bpf.ActionDNS,
		Protocol: bpf.Protocol(proto.String()), Enforcement: bpf.EnforcementResolver,
	}
	if len(req.Question) > 0 {
		q := req.Question[0]
		rec.Name = strings.TrimSuffix(q.Name, ".")
		rec.QueryType = typeName(q.Qtype)
	}
	deny := func(rcode int, reason string) (*dns.Msg, audit.Record) {
		rec.Verdict, rec.Reason = bpf.VerdictDeny, reason
		return s.reply(req, rcode), rec
	}

	peer, err := s.cfg.Kernel.Peer(proto, src)
	if err != nil {
		s.cfg.Log.Debug("dns: query from no workload", "protocol", proto, "source", src, "error", err)
		return deny(dns.RcodeRefused, audit.DNSUnattributed)
	}
	rec.CgroupID = peer.CgroupID
	rec.Address, rec.Port = audit.Addr(peer.Dest.Addr()), peer.Dest.Port()
	asker, ok := s.cfg.Tasks.Lookup(peer)
	if !ok {
		return deny(dns.RcodeRefused, audit.DNSNoTask)
	}
	rec.Task, rec.Identity, rec.Intent = asker.TaskID, asker.Identity, asker.Intent
	rec.IdentitySource = asker.IdentitySource
	rec.Workload, rec.PolicyRevision = asker.Workload, asker.PolicyRevision

	switch {
	case req.Response:
		return nil, audit.Record{} // not a query: nothing to answer, nothing decided
	case req.Opcode != dns.OpcodeQuery:
		return deny(dns.RcodeNotImplemented, audit.DNSInvalid+": opcode "+dns.OpcodeToString[req.Opcode])
	case len(req.Question) != 1:
		return deny(dns.RcodeFormatError, fmt.Sprintf("%s: %d questions", audit.DNSInvalid, len(req.Question)))
	case req.Question[0].Qclass != dns.ClassINET:
		return deny(dns.RcodeRefused, audit.DNSInvalid+": class "+className(req.Question[0].Qclass))
	}
	q := req.Question[0]
	name, err := policy.CanonicalName(q.Name)
	if err != nil {
		return deny(dns.RcodeRefused, audit.DNSInvalid+": "+err.Error())
	}
	rec.Name = name

	ports := asker.Names.PortsForName(name)
	if !ports.Allowed() {
		reply, rec := deny(dns.RcodeNameError, audit.DNSNotAllowed)
		blocked(reply, req)
		return reply, rec
	}
	if !forwarded(q.Qtype) {
		return deny(dns.RcodeSuccess, audit.DNSType)
	}
	key := cacheKey{name, q.Qtype}
	got, hit := s.cache.get(key, now)
	if hit {
		s.stats.cacheHits.Add(1)
		s.cfg.Metrics.CacheHit()
	} else {
		// Budgeted when it would leave the host, repeats included: a
		// name the upstream answers uncacheably (TTL 0, a failure)
		// would otherwise carry data out at any rate.
		bk := budgetKey{asker.TaskID, asker.Workload}
		if ports.Wildcard && !s.budgets.take(bk, asker.Ends, name, now) {
			return deny(dns.RcodeRefused, audit.DNSBudget)
		}
		// A task's queries waiting on the upstream are bounded, so a
		// slow upstream and uncached names cannot have one task hold
		// the resolver's (and the upstream's) capacity.
		if !s.inFlight.acquire(bk, s.cfg.MaxInFlight) {
			return deny(dns.RcodeRefused, audit.DNSInFlight)
		}
		got, err = s.forward(ctx, proto, req, name, now)
		s.inFlight.release(bk)
		if err != nil {
			return deny(dns.RcodeServerFailure, audit.DNSUpstream+": "+err.Error())
		}
	}

	ends := now.Add(s.cfg.TTLCeiling)
	if !asker.Ends.IsZero() && asker.Ends.Before(ends) {
		ends = asker.Ends
	}
	ageTTLs(got.msg.Answer, now.Sub(got.stored), now, ends)
	ageTTLs(got.msg.Ns, now.Sub(got.stored), now, ends)
	entries, shown := learnedEntries(ports, got.msg.Answer, now, s.cfg.TTLFloor, ends)
	if len(entries) > 0 {
		// Before the reply: a connect right after the answer must find
		// the entry in place.
		if err := s.cfg.Kernel.Learn(peer.Slot, peer.Generation, entries); err != nil {
			s.cfg.Log.Warn("dns: learned entries not written", "task", asker.TaskID, "name", name, "error", err)
			return deny(dns.RcodeServerFailure, audit.DNSKernel+": "+err.Error())
		}
	}
	reply := s.reply(req, got.msg.Rcode)
	reply.Truncated = got.msg.Truncated
	reply.Answer, reply.Ns = got.msg.Answer, got.msg.Ns
	fit(reply, req, proto)
	rec.Verdict, rec.Reason, rec.Answers = bpf.VerdictAllow, audit.DNSAllowed, shown
	return reply, rec
}

// forward asks the upstream and caches what it may. The answer comes back
// cut to the records that speak for name (keepChain).
func (s *Server) forward(ctx context.Context, proto policy.Protocol, req *dns.Msg, name string, now time.Time) (cached, error) {
	q := req.Question[0]
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), q.Qtype)
	// Nothing of the workload's query but its name and type reaches the
	// upstream: its flags and EDNS values would be bits it chose, sent
	// out with every query. The reply is cut to the workload's own size
	// (fit).
	if proto == policy.ProtoUDP {
		m.SetEdns0(ednsSize, false)
	}
	up, rtt, err := s.up.exchange(ctx, proto, m)
	s.stats.forwarded.Add(1)
	s.stats.upstreamNanos.Add(int64(rtt))
	s.cfg.Metrics.Forwarded(rtt, err)
	if err == nil && up.Rcode != dns.RcodeSuccess && up.Rcode != dns.RcodeNameError && up.Rcode != dns.RcodeServerFailure && up.Rcode != dns.RcodeRefused {
		err = fmt.Errorf("answer %s", dns.RcodeToString[up.Rcode])
	}
	if err != nil {
		s.stats.failures.Add(1)
		return cached{}, err
	}
	got := new(dns.Msg)
	got.Rcode = up.Rcode
	got.Truncated = up.Truncated
	got.Answer = capAddresses(keepChain(name, up.Answer), MaxAnswerAddrs)
	got.Ns = keepSOA(up.Ns)
	c := cached{msg: got, stored: now}
	var ttl time.Duration
	switch {
	case up.Truncated || (up.Rcode != dns.RcodeSuccess && up.Rcode != dns.RcodeNameError):
		// Incomplete or failed: the next query asks again.
	case len(got.Answer) > 0:
		ttl = min(time.Duration(minTTL(got.Answer))*time.Second, s.cfg.TTLCeiling)
	default:
		ttl = negativeTTL(got.Ns, s.cfg.NegativeTTLCap)
	}
	if ttl > 0 {
		c.expires = now.Add(ttl)
		s.cache.put(cacheKey{name, q.Qtype}, c)
	}
	return c, nil
}

// reply starts the reply to req.
func (s *Server) reply(req *dns.Msg, rcode int) *dns.Msg {
	m := new(dns.Msg)
	m.SetRcode(req, rcode)
	m.RecursionAvailable = true
	if req.IsEdns0() != nil {
		m.SetEdns0(ednsSize, false)
	}
	return m
}

// blocked attaches an Extended DNS Error (RFC 8914) saying why the name
// was refused, when the client speaks EDNS.
func blocked(reply, req *dns.Msg) {
	if req.IsEdns0() == nil {
		return
	}
	opt := reply.IsEdns0()
	opt.Option = append(opt.Option, &dns.EDNS0_EDE{
		InfoCode:  dns.ExtendedErrorCodeBlocked,
		ExtraText: "name not allowed for this task",
	})
}

// fit truncates a UDP reply to what the client can take, setting TC so it
// asks again over TCP.
func fit(reply, req *dns.Msg, proto policy.Protocol) {
	if proto != policy.ProtoUDP {
		return
	}
	size := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		size = int(opt.UDPSize())
	}
	reply.Truncate(size)
}

func typeName(t uint16) string {
	if n, ok := dns.TypeToString[t]; ok {
		return n
	}
	return fmt.Sprintf("TYPE%d", t)
}

func className(c uint16) string {
	if n, ok := dns.ClassToString[c]; ok {
		return n
	}
	return fmt.Sprintf("CLASS%d", c)
}

// account counts a decided query.
func (s *Server) account(rec audit.Record) {
	if rec.Verdict == bpf.VerdictAllow {
		s.stats.allowed.Add(1)
	} else {
		s.stats.denied.Add(1)
	}
	cause, _, _ := strings.Cut(rec.Reason, ": ")
	s.cfg.Metrics.Query(rec.Verdict, cause)
}
