package dns

import (
	"sync/atomic"
	"time"

	"github.com/bridle-sh/bridle/bpf"
)

// Metrics is what the daemon's metrics learn from the resolver. Methods
// are called from the query's goroutine and must be quick.
type Metrics interface {
	// Query counts one answered query by verdict and reason (a word of
	// daemon/audit's DNS reasons, without any cause after it).
	Query(verdict bpf.Verdict, reason string)
	// CacheHit counts a query answered from the cache.
	CacheHit()
	// Forwarded counts one exchange with the upstream and how long it
	// took; err is its failure, if any.
	Forwarded(rtt time.Duration, err error)
}

type noMetrics struct{}

func (noMetrics) Query(bpf.Verdict, string)      {}
func (noMetrics) CacheHit()                      {}
func (noMetrics) Forwarded(time.Duration, error) {}

// Stats are the resolver's counters since it started.
type Stats struct {
	Allowed, Denied   uint64 // queries by verdict
	CacheHits         uint64
	Forwarded         uint64 // exchanges with the upstream
	UpstreamFailures  uint64
	UpstreamTotalTime time.Duration // sum of the exchanges' round trips
}

type counters struct {
	allowed, denied, cacheHits, forwarded, failures atomic.Uint64
	upstreamNanos                                   atomic.Int64
}

func (c *counters) stats() Stats {
	return Stats{
		Allowed: c.allowed.Load(), Denied: c.denied.Load(), CacheHits: c.cacheHits.Load(),
		Forwarded: c.forwarded.Load(), UpstreamFailures: c.failures.Load(),
		UpstreamTotalTime: time.Duration(c.upstreamNanos.Load()),
	}
}
