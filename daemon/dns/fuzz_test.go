package dns

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/bridle-sh/bridle/policy"
)

// echoUpstream answers with whatever records the query itself carried in
// its answer and authority sections, so the fuzzer plays the upstream
// too, and logs the names it was asked.
type echoUpstream struct {
	mu    sync.Mutex
	asked []string
	req   *dns.Msg
}

func (u *echoUpstream) exchange(_ context.Context, _ policy.Protocol, m *dns.Msg) (*dns.Msg, time.Duration, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.asked = append(u.asked, m.Question[0].Name)
	r := new(dns.Msg)
	r.SetReply(m)
	r.Answer, r.Ns = u.req.Answer, u.req.Ns
	r.Truncated = u.req.Truncated
	return r, time.Millisecond, nil
}

// captureWriter is the UDP side of a query: it keeps the reply.
type captureWriter struct {
	dns.ResponseWriter
	reply *dns.Msg
}

func (w *captureWriter) RemoteAddr() net.Addr {
	return net.UDPAddrFromAddrPort(netip.AddrPortFrom(srcA, 40000))
}
func (w *captureWriter) WriteMsg(m *dns.Msg) error { w.reply = m; return nil }

// FuzzQuery feeds arbitrary messages to the resolver's handler. It must
// never panic, never forward a name the task lacks, always produce a
// reply that packs, and learn only addresses it hands out.
func FuzzQuery(f *testing.F) {
	seed := func(m *dns.Msg) {
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	q := new(dns.Msg)
	q.SetQuestion("api.example.", dns.TypeA)
	q.Answer = []dns.RR{mustRR("api.example. 60 IN CNAME x.net."), mustRR("x.net. 60 IN A 192.0.2.1"), mustRR("evil.net. 60 IN A 192.0.2.66")}
	seed(q)
	q = new(dns.Msg)
	q.SetQuestion("unlisted.example.", dns.TypeAAAA)
	q.SetEdns0(4096, true)
	seed(q)

	rules := testRules()
	f.Fuzz(func(t *testing.T, data []byte) {
		req := new(dns.Msg)
		if err := req.Unpack(data); err != nil {
			return
		}
		k := &fakeKernel{peers: map[netip.Addr]Peer{srcA: {Slot: 1, Generation: 1}}}
		tasks := fakeTasks{1: {TaskID: "t", Names: policy.NewNameIndex(rules.Names)}}
		srv, err := New(Config{Upstream: netip.MustParseAddrPort("192.0.2.53:53"), Kernel: k, Tasks: tasks,
			WildcardBurst: 1000})
		if err != nil {
			t.Fatal(err)
		}
		up := &echoUpstream{req: req.Copy()}
		srv.up = up
		w := &captureWriter{}
		srv.ServeDNS(w, req)

		for _, name := range up.asked {
			if !rules.PortsForName(strings.TrimSuffix(name, ".")).Allowed() {
				t.Fatalf("forwarded %q, which no rule allows", name)
			}
		}
		if w.reply == nil {
			if !req.Response {
				t.Fatal("a query got no reply")
			}
			return
		}
		if _, err := w.reply.Pack(); err != nil {
			t.Fatalf("reply does not pack: %v", err)
		}
		handed := map[netip.Addr]bool{}
		for _, rr := range w.reply.Answer {
			if a, ok := address(rr); ok {
				handed[a] = true
			}
		}
		for _, c := range k.learned {
			for _, l := range c.addrs {
				if !handed[l.Addr] && !w.reply.Truncated {
					t.Fatalf("learned %s, which the reply does not give", l.Addr)
				}
			}
		}
	})
}
