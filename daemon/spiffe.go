package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// workloadAPITimeout bounds bridled's wait, at start, for the Workload API's
// first answer: a SPIRE agent that is up answers within a second or two;
// one that is not (or that has no entry for bridled) would otherwise hold
// the start for ever.
const workloadAPITimeout = 30 * time.Second

// openWorkloadAPI connects to the Workload API at addr and waits, at most
// timeout, for the trust bundles (X.509 and JWT) and, when needSVID,
// bridled's own X.509-SVID. The sources then follow the Workload API's
// updates (rotations, new bundles) until closed.
func openWorkloadAPI(ctx context.Context, addr string, needSVID bool, timeout time.Duration) (SVIDSources, func(), error) {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client, err := workloadapi.New(wctx, workloadapi.WithAddr(addr))
	if err != nil {
		return SVIDSources{}, nil, fmt.Errorf("spiffe.workload_api %s: %w", addr, err)
	}
	var closers []func() error
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			_ = closers[i]()
		}
	}
	closers = append(closers, client.Close)
	explain := func(what string, err error) error {
		closeAll()
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("spiffe.workload_api %s: no %s within %v: is the SPIRE agent running, and is there a registration entry for bridled (its uid, e.g. selector unix:uid:0)?", addr, what, timeout)
		}
		return fmt.Errorf("spiffe.workload_api %s: %s: %w", addr, what, err)
	}
	bundles, err := workloadapi.NewBundleSource(wctx, workloadapi.WithClient(client))
	if err != nil {
		return SVIDSources{}, nil, explain("trust bundles", err)
	}
	closers = append(closers, bundles.Close)
	src := SVIDSources{X509Bundles: bundles, JWTBundles: bundles}
	if needSVID {
		svid, err := workloadapi.NewX509Source(wctx, workloadapi.WithClient(client))
		if err != nil {
			return SVIDSources{}, nil, explain("X.509-SVID for bridled", err)
		}
		closers = append(closers, svid.Close)
		src.SVID = svid
	}
	return src, closeAll, nil
}

// workloadAPI holds the Workload API's sources, which may arrive after
// bridled started: a SPIRE agent that is down while bridled restarts must
// not keep bridled, and with it every task's end and every new task, down.
// Until the sources arrive, SVID callers are refused with the reason (401,
// or a failed handshake) and the status says DEGRADED; callers known by
// their socket credentials are not affected.
type workloadAPI struct {
	addr     string
	needSVID bool
	log      interface{ Warn(string, ...any) }

	mu     sync.RWMutex
	src    SVIDSources
	err    error // why there are no sources yet
	closer func()
	stop   context.CancelFunc
}

// openLate waits, at most timeout, for the Workload API's first answer as
// openWorkloadAPI does, and without one keeps trying in the background.
func openLate(ctx context.Context, addr string, needSVID bool, timeout time.Duration, log interface{ Warn(string, ...any) }) *workloadAPI {
	w := &workloadAPI{addr: addr, needSVID: needSVID, log: log}
	bg, stop := context.WithCancel(context.Background())
	w.stop = stop
	if w.try(ctx, timeout) {
		return w
	}
	go func() {
		for {
			select {
			case <-bg.Done():
				return
			case <-time.After(5 * time.Second):
			}
			if w.try(bg, timeout) {
				return
			}
		}
	}()
	return w
}

func (w *workloadAPI) try(ctx context.Context, timeout time.Duration) bool {
	src, closer, err := openWorkloadAPI(ctx, w.addr, w.needSVID, timeout)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		if w.err == nil || w.err.Error() != err.Error() {
			w.log.Warn("no SVIDs or trust bundles from the Workload API yet; SVID callers are refused until they come", "err", err)
		}
		w.err = err
		return false
	}
	w.src, w.closer, w.err = src, closer, nil
	return true
}

// Degraded says why there are no sources, "" when there are.
func (w *workloadAPI) Degraded() string {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.err == nil {
		return ""
	}
	return w.err.Error()
}

func (w *workloadAPI) sources() (SVIDSources, error) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.err != nil {
		return SVIDSources{}, fmt.Errorf("no trust bundles or SVID from the Workload API yet: %w", w.err)
	}
	return w.src, nil
}

// GetX509SVID is bridled's own X.509-SVID (x509svid.Source).
func (w *workloadAPI) GetX509SVID() (*x509svid.SVID, error) {
	s, err := w.sources()
	if err != nil {
		return nil, err
	}
	if s.SVID == nil {
		return nil, errors.New("no X.509-SVID for bridled was asked for")
	}
	return s.SVID.GetX509SVID()
}

// GetX509BundleForTrustDomain is x509bundle.Source.
func (w *workloadAPI) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s, err := w.sources()
	if err != nil {
		return nil, err
	}
	return s.X509Bundles.GetX509BundleForTrustDomain(td)
}

// GetJWTBundleForTrustDomain is jwtbundle.Source.
func (w *workloadAPI) GetJWTBundleForTrustDomain(td spiffeid.TrustDomain) (*jwtbundle.Bundle, error) {
	s, err := w.sources()
	if err != nil {
		return nil, err
	}
	return s.JWTBundles.GetJWTBundleForTrustDomain(td)
}

// Close stops the retries and drops the sources.
func (w *workloadAPI) Close() {
	w.stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closer != nil {
		w.closer()
		w.closer = nil
	}
}
