package dns

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/bridle-sh/bridle/daemon/audit"
)

// Defaults of Config.
const (
	DefaultTTLFloor = 30 * time.Second
	// DefaultTTLCeiling bounds how long an answer lives, whatever its
	// TTL: an address learned for a day would outlive most reasons it
	// was allowed for.
	DefaultTTLCeiling = time.Hour
	// DefaultMaxInFlight is how many of one task's queries may wait on
	// the upstream at once.
	DefaultMaxInFlight    = 32
	DefaultNegativeTTLCap = 30 * time.Second
	DefaultCacheSize      = 4096
	DefaultTimeout        = 5 * time.Second
	// DefaultWildcardNames is how many distinct names one task may
	// resolve through wildcard rules alone, over its whole life.
	DefaultWildcardNames = 1000
	// DefaultWildcardRate is how many queries for such names (new or
	// asked before) a task may send to the upstream per second, after a
	// burst of DefaultWildcardBurst; the cache's answers are free.
	DefaultWildcardRate  = 10
	DefaultWildcardBurst = 50
)

// Config configures a Server. Zero fields take the defaults above.
type Config struct {
	// Upstream is the resolver allowed queries are forwarded to.
	Upstream netip.AddrPort
	// Listen4 and Listen6 are where to listen, UDP and TCP on the same
	// port. Zero: 127.0.0.1:0 and [::1]:0 (an ephemeral port each); a
	// host without IPv6 loopback then listens on IPv4 only. The port is
	// the same for UDP and TCP because the kernel steers both to one
	// address and port per family.
	Listen4, Listen6 netip.AddrPort
	// NoIPv6 listens on IPv4 only.
	NoIPv6 bool
	// Interface, if set, is a link of the node (lo, a dummy) the resolver
	// puts its listen addresses on before listening, for workloads in
	// network namespaces of their own (pods) to reach through their route
	// to the node. Listen4 is then required, and no listen address may be
	// one CheckReachable refuses; without Listen6 there is no IPv6
	// resolver (::1 would be each pod's own).
	Interface string

	// TTLFloor is the shortest life of a learned address, whatever the
	// answer's TTL: a name with TTL 0 must still be connectable right
	// after it resolved.
	TTLFloor time.Duration
	// TTLCeiling is the longest life of a learned address and of a
	// cached answer, whatever the answer's TTL.
	TTLCeiling time.Duration
	// MaxInFlight is how many of one task's queries may wait on the
	// upstream at once; past it, queries are refused.
	MaxInFlight int
	// NegativeTTLCap caps how long an NXDOMAIN or empty answer from the
	// upstream is cached.
	NegativeTTLCap time.Duration
	// CacheSize is how many (name, type) answers are cached at most.
	CacheSize int
	// Timeout bounds one exchange with the upstream.
	Timeout time.Duration
	// WildcardNames, WildcardRate and WildcardBurst are the per-task
	// budget for names matched only by wildcard rules: distinct names
	// over the task's life, and queries forwarded per second.
	WildcardNames int
	WildcardRate  float64
	WildcardBurst int

	Kernel Kernel
	Tasks  Tasks
	// Records receives one record per query. Nil: none.
	Records audit.Sink
	// Metrics is told about each query. Nil: nothing.
	Metrics Metrics
	// Node is the host name records carry.
	Node string
	Log  *slog.Logger
	// Now is the clock; nil: time.Now. Learned entries' expiry and the
	// cache read it.
	Now func() time.Time
}

func (c Config) withDefaults() (Config, error) {
	if !c.Upstream.IsValid() {
		return c, errors.New("dns: no upstream resolver")
	}
	if c.Kernel == nil || c.Tasks == nil {
		return c, errors.New("dns: the kernel and the tasks are required")
	}
	if c.Interface != "" {
		if !c.Listen4.IsValid() {
			return c, fmt.Errorf("dns: interface %q: no IPv4 listen address to put on it", c.Interface)
		}
		for _, ap := range []netip.AddrPort{c.Listen4, c.Listen6} {
			if !ap.IsValid() {
				continue
			}
			if err := CheckReachable(ap.Addr()); err != nil {
				return c, fmt.Errorf("dns: listen address on interface %q: %w", c.Interface, err)
			}
		}
		c.NoIPv6 = c.NoIPv6 || !c.Listen6.IsValid()
	}
	if !c.Listen4.IsValid() {
		c.Listen4 = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 0)
	}
	if !c.Listen6.IsValid() && !c.NoIPv6 {
		c.Listen6 = netip.AddrPortFrom(netip.IPv6Loopback(), 0)
	}
	if c.TTLFloor <= 0 {
		c.TTLFloor = DefaultTTLFloor
	}
	if c.TTLCeiling <= 0 {
		c.TTLCeiling = DefaultTTLCeiling
	}
	if c.TTLCeiling < c.TTLFloor {
		return c, fmt.Errorf("dns: TTL ceiling %v below the floor %v", c.TTLCeiling, c.TTLFloor)
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.NegativeTTLCap <= 0 {
		c.NegativeTTLCap = DefaultNegativeTTLCap
	}
	if c.CacheSize <= 0 {
		c.CacheSize = DefaultCacheSize
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.WildcardNames <= 0 {
		c.WildcardNames = DefaultWildcardNames
	}
	if c.WildcardRate <= 0 {
		c.WildcardRate = DefaultWildcardRate
	}
	if c.WildcardBurst <= 0 {
		c.WildcardBurst = DefaultWildcardBurst
	}
	if c.Records == nil {
		c.Records = audit.Sinks(nil)
	}
	if c.Metrics == nil {
		c.Metrics = noMetrics{}
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c, nil
}

// ResolvConf is where the system's resolver configuration lives.
const ResolvConf = "/etc/resolv.conf"

// SystemUpstream returns the first nameserver of a resolv.conf file, as
// the C library would ask it; no file, or a file without one, means
// 127.0.0.1:53, as it does for the C library.
func SystemUpstream(path string) (netip.AddrPort, error) {
	localhost := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 53)
	cc, err := dns.ClientConfigFromFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return localhost, nil
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("dns: read %s: %w", path, err)
	}
	port := uint16(53)
	if p, err := strconv.ParseUint(cc.Port, 10, 16); err == nil && p != 0 {
		port = uint16(p)
	}
	for _, s := range cc.Servers {
		if a, err := netip.ParseAddr(s); err == nil {
			return netip.AddrPortFrom(a.Unmap(), port), nil
		}
	}
	return netip.AddrPortFrom(localhost.Addr(), port), nil
}

// ParseUpstream parses an upstream resolver as flags and the config file
// write it: ADDR:PORT, [ADDR6]:PORT, or an address alone for port 53.
func ParseUpstream(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	if a, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		return netip.AddrPortFrom(a.Unmap(), 53), nil
	}
	return netip.AddrPort{}, fmt.Errorf("dns upstream %q: want ADDR:PORT, [ADDR6]:PORT or an address", s)
}
