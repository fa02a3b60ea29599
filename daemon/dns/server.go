package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"github.com/miekg/dns"
)

// Server is Bridle's resolver: UDP and TCP listeners on one port per
// address family, answering the queries the kernel steers to them.
type Server struct {
	cfg      Config
	cache    *cache
	budgets  *budgets
	inFlight inFlight
	stats    counters
	up       upstream

	ctx     context.Context
	cancel  context.CancelFunc
	servers []*dns.Server
	addr4   netip.AddrPort
	addr6   netip.AddrPort
	link    *linkAddrs // the listen addresses on Config.Interface
	mu      sync.Mutex // guards servers and link
	wg      sync.WaitGroup
}

// New checks cfg and returns a resolver that is not listening yet.
func New(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:     cfg,
		cache:   newCache(cfg.CacheSize),
		budgets: newBudgets(cfg.WildcardNames, cfg.WildcardRate, cfg.WildcardBurst),
		ctx:     context.Background(),
	}
	s.up = &dnsUpstream{addr: cfg.Upstream.String(), timeout: cfg.Timeout}
	return s, nil
}

// Start binds the listeners and serves until Shutdown or until ctx ends.
// With Config.Interface it first puts the listen addresses on that link;
// if it cannot listen, it takes off again those it added.
func (s *Server) Start(ctx context.Context) error {
	if s.cfg.Interface != "" {
		addrs := []netip.Addr{s.cfg.Listen4.Addr()}
		if s.cfg.Listen6.IsValid() {
			addrs = append(addrs, s.cfg.Listen6.Addr())
		}
		link, err := addLinkAddrs(s.cfg.Interface, addrs...)
		if err != nil {
			return err
		}
		s.link = link
	}
	fail := func(err error) error {
		s.stop()
		return errors.Join(err, s.RemoveAddrs())
	}
	s.ctx, s.cancel = context.WithCancel(ctx)
	addr4, err := s.listen(s.cfg.Listen4)
	if err != nil {
		return fail(err)
	}
	s.addr4 = addr4
	if s.cfg.Listen6.IsValid() {
		addr6, err := s.listen(s.cfg.Listen6)
		switch {
		case err == nil:
			s.addr6 = addr6
		case s.cfg.Listen6.Port() == 0 && s.cfg.Listen6.Addr() == netip.IPv6Loopback() && errors.Is(err, syscall.EADDRNOTAVAIL):
			s.cfg.Log.Info("dns: no IPv6 loopback; resolving for IPv4 only", "error", err)
		default:
			return fail(err)
		}
	}
	go func() {
		<-s.ctx.Done()
		s.stop()
	}()
	return nil
}

// Addrs returns where the resolver listens, UDP and TCP alike: the
// addresses the kernel steers DNS to. A family it does not listen on is
// the zero AddrPort.
func (s *Server) Addrs() (v4, v6 netip.AddrPort) { return s.addr4, s.addr6 }

// Upstream is where allowed queries are forwarded.
func (s *Server) Upstream() netip.AddrPort { return s.cfg.Upstream }

// Stats returns the resolver's counters.
func (s *Server) Stats() Stats { return s.stats.stats() }

// TaskEnded forgets a task's wildcard budget.
func (s *Server) TaskEnded(taskID string) { s.budgets.forget(taskID) }

// Shutdown stops the listeners and waits for the queries being answered,
// until ctx ends. The addresses put on Config.Interface stay: the kernel
// keeps steering DNS to them (the setting is pinned), and while they are
// the node's own a query finds nothing listening and fails at once. Taken
// off, the node would route the queries on, off the node. RemoveAddrs
// takes them off once nothing steers there.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.cancel != nil {
		s.cancel()
	}
	done := make(chan struct{})
	go func() {
		s.stop()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("dns: shutdown: %w", ctx.Err())
	}
}

// RemoveAddrs takes off Config.Interface the listen addresses Start put
// there; those that were there already stay. Call it only once the kernel
// no longer steers DNS to them (see Shutdown).
func (s *Server) RemoveAddrs() error {
	s.mu.Lock()
	link := s.link
	s.link = nil
	s.mu.Unlock()
	return link.remove()
}

func (s *Server) stop() {
	s.mu.Lock()
	servers := s.servers
	s.servers = nil
	s.mu.Unlock()
	for _, srv := range servers {
		_ = srv.Shutdown()
	}
	s.wg.Wait()
}

// listen binds UDP and TCP on one port of addr, and serves them. With port
// 0 the kernel picks the UDP port, and TCP takes the same one; if it is
// taken for TCP, another is tried.
func (s *Server) listen(addr netip.AddrPort) (netip.AddrPort, error) {
	var err error
	for range 16 {
		var pc net.PacketConn
		pc, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("dns: listen udp %s: %w", addr, err)
		}
		bound := pc.LocalAddr().(*net.UDPAddr).AddrPort()
		var l net.Listener
		l, err = net.ListenTCP("tcp", net.TCPAddrFromAddrPort(bound))
		if err != nil {
			pc.Close()
			if addr.Port() == 0 && errors.Is(err, syscall.EADDRINUSE) {
				continue
			}
			return netip.AddrPort{}, fmt.Errorf("dns: listen tcp %s: %w", bound, err)
		}
		s.serve(&dns.Server{PacketConn: pc, Handler: s, UDPSize: dns.MaxMsgSize})
		s.serve(&dns.Server{Listener: l, Handler: s})
		return bound, nil
	}
	return netip.AddrPort{}, fmt.Errorf("dns: no port free for both udp and tcp on %s: %w", addr.Addr(), err)
}

func (s *Server) serve(srv *dns.Server) {
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	s.mu.Lock()
	s.servers = append(s.servers, srv)
	s.mu.Unlock()
	s.wg.Add(1)
	errc := make(chan error, 1)
	go func() {
		defer s.wg.Done()
		errc <- srv.ActivateAndServe()
	}()
	select {
	case <-started:
	case err := <-errc:
		s.cfg.Log.Error("dns: serve", "error", err)
	}
}

// ServeDNS answers one query (dns.Handler).
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	proto, src := transport(w.RemoteAddr())
	reply, rec := s.answer(s.ctx, proto, src, req)
	if reply != nil {
		if err := w.WriteMsg(reply); err != nil {
			s.cfg.Log.Debug("dns: write reply", "peer", src, "error", err)
		}
	}
	if rec.Action == "" {
		return // a response sent here: nothing was asked
	}
	s.account(rec)
	s.cfg.Records.Record(rec)
}
