package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

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
