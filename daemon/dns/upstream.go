package dns

import (
	"context"
	"time"

	"github.com/miekg/dns"

	"github.com/bridle-sh/bridle/policy"
)

// upstream is the resolver allowed queries go to.
type upstream interface {
	exchange(ctx context.Context, proto policy.Protocol, m *dns.Msg) (*dns.Msg, time.Duration, error)
}

// dnsUpstream forwards over the transport the workload used: a UDP
// answer the upstream truncated is passed on truncated, and the workload's
// stub retries over TCP, which is forwarded over TCP.
type dnsUpstream struct {
	addr    string
	timeout time.Duration
}

func (u *dnsUpstream) exchange(ctx context.Context, proto policy.Protocol, m *dns.Msg) (*dns.Msg, time.Duration, error) {
	c := &dns.Client{Net: "udp", Timeout: u.timeout}
	if proto == policy.ProtoTCP {
		c.Net = "tcp"
	}
	if opt := m.IsEdns0(); opt != nil {
		c.UDPSize = opt.UDPSize()
	}
	ctx, cancel := context.WithTimeout(ctx, u.timeout)
	defer cancel()
	return c.ExchangeContext(ctx, m, u.addr)
}
