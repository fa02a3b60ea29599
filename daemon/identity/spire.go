package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	delegatedv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// Attest is how bridled asks SPIRE about a workload.
type Attest string

const (
	// BySelectors: bridled derives the workload's selectors from the
	// kernel itself (type "bridle": cgroup, unit, uid) and SPIRE matches
	// entries registered with them. No PID is involved.
	BySelectors Attest = "selectors"
	// ByPID: SPIRE's own workload attestors (unix, systemd, k8s…) attest
	// one process of the workload, which bridled pins for the call.
	ByPID Attest = "pid"
)

// SelectorType is the type of the selectors bridled attests itself.
const SelectorType = "bridle"

// PreferHint is the SPIRE entry hint that picks one SVID when several
// entries match a workload.
const PreferHint = "bridle"

// SPIREConfig configures the SPIRE source.
type SPIREConfig struct {
	AdminSocket string // the agent's admin socket (Delegated Identity API)
	Attest      Attest
	// Hold is how long a workload keeps its last identity while SPIRE is
	// unreachable; after it, the identity is lost and its task ends.
	Hold time.Duration
	// Timeout bounds the wait for a workload's first answer.
	Timeout time.Duration
	Mount   string // the cgroup v2 mount point
}

// SPIREProvider asks a SPIRE agent for workloads' identities over its
// Delegated Identity API, bridled being one of the agent's authorised
// delegates, and follows each watched workload's identity as SPIRE's
// entries change.
type SPIREProvider struct {
	cfg      SPIREConfig
	conn     *grpc.ClientConn
	client   delegatedv1.DelegatedIdentityClient
	onChange OnChange
	log      *slog.Logger

	mu      sync.Mutex
	watches map[string]*watch
	// down is when the agent was last found unreachable by any watch,
	// and why; zero once a call succeeds again.
	downSince time.Time
	downErr   string
}

// beforeAsk runs between pinning a process and asking SPIRE about its PID;
// tests reuse the PID there.
var beforeAsk func(pid int)

// NewSPIRE returns the SPIRE source. It connects lazily: an agent that is
// down at start makes the source degraded, not bridled fail.
func NewSPIRE(cfg SPIREConfig, onChange OnChange, log *slog.Logger) (*SPIREProvider, error) {
	if cfg.Attest == "" {
		cfg.Attest = BySelectors
	}
	conn, err := grpc.NewClient("unix:"+cfg.AdminSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("spire admin socket %s: %w", cfg.AdminSocket, err)
	}
	return &SPIREProvider{
		cfg: cfg, conn: conn, client: delegatedv1.NewDelegatedIdentityClient(conn),
		onChange: onChange, log: log, watches: map[string]*watch{},
	}, nil
}

// watch follows one workload's identity.
type watch struct {
	cgroup   string
	workload Workload
	// selectors are those of the first subscription, kept for every later
	// one: the same workload is asked about the same way, whatever
	// processes come and go.
	selectors []*types.Selector
	cancel    context.CancelFunc
	first     chan struct{} // closed at the first outcome

	mu       sync.Mutex
	identity Identity // zero until SPIRE named one
	err      error    // why there is none, when there is none
	// downSince is when this watch lost SPIRE; zero while connected.
	downSince time.Time
	// refs counts the tasks that rely on the watch (under the provider's
	// lock): the last Release ends it.
	refs int
}

func (w *watch) get() (Identity, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.identity, w.err
}

// Identify starts following the workload, if it is not followed yet, and
// waits for its first answer.
func (p *SPIREProvider) Identify(ctx context.Context, wl Workload) (Identity, error) {
	cgroup := wl.Cgroup
	w := p.watchOf(wl, Identity{})

	timeout := p.cfg.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	select {
	case <-w.first:
	case <-time.After(timeout):
		p.drop(w)
		return Identity{}, unavailable("no answer from SPIRE (%s) for workload %s within %v", p.cfg.AdminSocket, cgroup, timeout)
	case <-ctx.Done():
		p.drop(w)
		return Identity{}, ctx.Err()
	}
	id, err := w.get()
	if err != nil || id.ID == "" {
		p.drop(w)
		if err == nil {
			err = unavailable("SPIRE names no identity for workload %s", cgroup)
		}
		return Identity{}, err
	}
	return id, nil
}

// Adopt follows a workload whose task a previous bridled started under
// last: the identity is kept while SPIRE confirms it, and for the hold
// time while SPIRE cannot be reached; if SPIRE names another identity, or
// none, the change is reported as for any watched workload.
func (p *SPIREProvider) Adopt(cgroup string, last Identity) {
	p.watchOf(Workload{Cgroup: cgroup}, last)
}

// watchOf returns the workload's watch, started if need be, with one more
// reference.
func (p *SPIREProvider) watchOf(wl Workload, last Identity) *watch {
	p.mu.Lock()
	defer p.mu.Unlock()
	cgroup := wl.Cgroup
	w, ok := p.watches[cgroup]
	if !ok {
		wctx, cancel := context.WithCancel(context.Background())
		w = &watch{cgroup: cgroup, workload: wl, cancel: cancel, first: make(chan struct{}), identity: last,
			selectors: parseSelectors(last.Selectors)}
		p.watches[cgroup] = w
		go p.follow(wctx, w)
	}
	w.refs++
	return w
}

// drop takes back the reference of a start that got no identity.
func (p *SPIREProvider) drop(w *watch) {
	p.Release(w.cgroup)
}

// Known returns a watched workload's identity.
func (p *SPIREProvider) Known(cgroup string) Identity {
	p.mu.Lock()
	w, ok := p.watches[cgroup]
	p.mu.Unlock()
	if ok {
		if id, _ := w.get(); id.ID != "" {
			return id
		}
	}
	return Identity{Source: None}
}

// Release drops one reference to a workload's watch, and stops following
// the workload with the last.
func (p *SPIREProvider) Release(cgroup string) {
	p.mu.Lock()
	w, ok := p.watches[cgroup]
	if ok {
		w.refs--
		if w.refs > 0 {
			ok = false
		} else {
			delete(p.watches, cgroup)
		}
	}
	p.mu.Unlock()
	if ok {
		w.cancel()
	}
}

// Status reports whether SPIRE answers.
func (p *SPIREProvider) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := Status{Source: SPIRE, Watched: len(p.watches), Endpoint: p.cfg.AdminSocket}
	if !p.downSince.IsZero() {
		s.Degraded = fmt.Sprintf("%s; workloads keep their last identity for %v, then fall to the baseline", p.downErr, p.cfg.Hold)
		s.Since = p.downSince
	}
	return s
}

// Close stops every watch and the connection.
func (p *SPIREProvider) Close() {
	p.mu.Lock()
	ws := p.watches
	p.watches = map[string]*watch{}
	p.mu.Unlock()
	for _, w := range ws {
		w.cancel()
	}
	p.conn.Close()
}

func (p *SPIREProvider) reachable(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case err == nil:
		p.downSince, p.downErr = time.Time{}, ""
	case p.downSince.IsZero():
		p.downSince, p.downErr = time.Now(), err.Error()
	default:
		p.downErr = err.Error()
	}
}

// follow keeps a subscription for the workload open, resubscribing after
// a failure or when the pinned process exits, until the watch ends.
func (p *SPIREProvider) follow(ctx context.Context, w *watch) {
	backoff := 200 * time.Millisecond
	once := sync.OnceFunc(func() { close(w.first) })
	defer once()
	for ctx.Err() == nil {
		err := p.subscribe(ctx, w, once)
		if ctx.Err() != nil {
			return
		}
		var noProc *noProcessError
		switch {
		case errors.As(err, &noProc):
			// Nothing runs in the workload: nothing to attest, and
			// nothing that could act under the last identity. Look
			// again shortly.
			w.mu.Lock()
			if w.identity.ID == "" {
				w.err = err
			}
			w.mu.Unlock()
			once()
		case err != nil && !errors.Is(err, errProcessExited):
			p.reachable(err)
			p.lost(w, err)
			once()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// lost handles a failed subscription: the identity is kept for the hold
// time, then given up.
func (p *SPIREProvider) lost(w *watch, err error) {
	w.mu.Lock()
	now := time.Now()
	if w.downSince.IsZero() {
		w.downSince = now
	}
	from := w.identity
	expired := from.ID != "" && now.Sub(w.downSince) >= p.cfg.Hold
	if from.ID == "" {
		w.err = unavailable("%v", err)
	}
	if expired {
		w.identity = Identity{}
		w.err = unavailable("SPIRE unreachable for more than %v (hold): %v", p.cfg.Hold, err)
	}
	w.mu.Unlock()
	if expired {
		p.log.Warn("workload identity given up: SPIRE unreachable longer than the hold time",
			"workload", w.cgroup, "identity", from.ID, "hold", p.cfg.Hold, "err", err)
		p.onChange(Change{Cgroup: w.cgroup, From: from, Reason: fmt.Sprintf("SPIRE unreachable for more than %v (hold): %v", p.cfg.Hold, err)})
	}
}

// explain says what a failed call to the agent means for an operator.
func explain(err error) error {
	switch status.Code(err) {
	case codes.PermissionDenied:
		return fmt.Errorf("the SPIRE agent does not take bridled as a delegate (no registration entry for bridled yet, or its SPIFFE ID is not in the agent's authorized_delegates): %w", err)
	case codes.Unavailable:
		return fmt.Errorf("SPIRE agent unreachable: %w", err)
	}
	return fmt.Errorf("SPIRE agent: %w", err)
}

var errProcessExited = errors.New("the attested process exited")

type noProcessError struct{ cgroup string }

func (e *noProcessError) Error() string {
	return fmt.Sprintf("workload %s has no process for SPIRE to attest", e.cgroup)
}

// subscribe runs one subscription until it fails or ctx ends.
func (p *SPIREProvider) subscribe(ctx context.Context, w *watch, first func()) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// A hung agent (stopped, deadlocked) neither answers nor closes the
	// stream: without the probe the hold would never start.
	go p.probe(ctx, cancel)
	req := &delegatedv1.SubscribeToX509SVIDsRequest{}
	var proc *Proc
	var started uint64
	if p.cfg.Attest == ByPID {
		var err error
		if proc, started, err = p.pin(w.cgroup); err != nil {
			return err
		}
		defer proc.Close()
		req.Pid = int32(proc.PID)
		if beforeAsk != nil {
			beforeAsk(proc.PID)
		}
	} else {
		if w.selectors == nil {
			f, err := ReadFacts(p.cfg.Mount, w.cgroup)
			if err != nil {
				return &noProcessError{w.cgroup}
			}
			w.selectors = Selectors(f, w.workload)
		}
		req.Selectors = w.selectors
	}
	stream, err := p.client.SubscribeToX509SVIDs(ctx, req)
	if err != nil {
		return explain(err)
	}
	checked := false
	for {
		resp, err := stream.Recv()
		if err != nil {
			if proc != nil && !proc.Alive() {
				return errProcessExited
			}
			if cause := context.Cause(ctx); ctx.Err() != nil && !errors.Is(cause, context.Canceled) {
				return cause // the probe found the agent unresponsive
			}
			return explain(err)
		}
		if proc != nil && !checked {
			// SPIRE attested whatever held the PID when it looked. The
			// answer is the workload's only if the pinned process is
			// still alive now, after the answer: then no other process
			// can have held that PID in between.
			if err := samePinned(proc, started, w.cgroup); err != nil {
				p.log.Warn("SPIRE's answer for a PID discarded", "workload", w.cgroup, "pid", proc.PID, "reason", err)
				return errProcessExited
			}
			checked = true
			go closeOnExit(ctx, proc, func() { cancel(nil) })
		}
		p.reachable(nil)
		p.answer(w, resp)
		first()
	}
}

// pin picks and pins a process of the workload running with its own
// credentials, in cgroup.procs order.
func (p *SPIREProvider) pin(cgroup string) (*Proc, uint64, error) {
	// The workload is its cgroup and every cgroup below it (see
	// ReadFacts): a process in a child cgroup is one of its processes.
	cgroups, err := subtree(p.cfg.Mount, cgroup)
	if err != nil {
		return nil, 0, &noProcessError{cgroup}
	}
	var pids []int
	for _, cg := range cgroups {
		if ps, err := Procs(p.cfg.Mount, cg); err == nil {
			pids = append(pids, ps...)
		}
	}
	for _, pid := range pids {
		proc, err := OpenProc(pid)
		if err != nil {
			continue
		}
		start, err := proc.StartTime()
		if err == nil {
			// A process running a setuid or setgid program would be
			// attested as that program's owner: never asked about.
			if err = proc.Unprivileged(); err == nil {
				var cg string
				if cg, err = proc.Cgroup(); err == nil && within(cg, cgroup) {
					return proc, start, nil
				}
			}
		}
		proc.Close()
	}
	return nil, 0, &noProcessError{cgroup}
}

// samePinned checks that the pinned process is alive, unchanged and still
// in the workload.
func samePinned(proc *Proc, started uint64, cgroup string) error {
	if !proc.Alive() {
		return errors.New("process exited before the answer was read")
	}
	if st, err := proc.StartTime(); err != nil || st != started {
		return fmt.Errorf("process start time changed or unreadable (%v)", err)
	}
	if cg, err := proc.Cgroup(); err != nil || !within(cg, cgroup) {
		return fmt.Errorf("process left the workload (now %q, %v)", cg, err)
	}
	// It may have executed a setuid program since it was pinned, before
	// SPIRE looked.
	if err := proc.Unprivileged(); err != nil {
		return fmt.Errorf("process %w", err)
	}
	return nil
}

// closeOnExit ends the subscription when the pinned process exits: its
// PID may then be reused, and SPIRE would go on answering for it.
func closeOnExit(ctx context.Context, proc *Proc, cancel func()) {
	for ctx.Err() == nil {
		if !proc.Alive() {
			cancel()
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// probeTimeout bounds the agent's answer to a liveness probe.
const probeTimeout = 5 * time.Second

// probe checks, while a subscription is open, that the agent still
// answers: a subscription to the trust bundles, whose first message the
// agent sends at once from its cache. One that gets no answer within
// probeTimeout ends the subscription with fail, as an unreachable agent:
// the hold starts, and it is bounded.
func (p *SPIREProvider) probe(ctx context.Context, fail context.CancelCauseFunc) {
	every := min(max(p.cfg.Hold/4, time.Second), 30*time.Second)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		stream, err := p.client.SubscribeToX509Bundles(pctx, &delegatedv1.SubscribeToX509BundlesRequest{})
		if err == nil {
			_, err = stream.Recv()
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			fail(fmt.Errorf("SPIRE agent unresponsive: no answer to a liveness probe within %v: %w", probeTimeout, err))
			return
		}
	}
}

// answer applies one of SPIRE's answers to the watch.
func (p *SPIREProvider) answer(w *watch, resp *delegatedv1.SubscribeToX509SVIDsResponse) {
	id, err := Choose(resp.GetX509Svids())
	// The private keys came with the answer; bridled needs none of them.
	for _, s := range resp.GetX509Svids() {
		clear(s.X509SvidKey)
	}
	w.mu.Lock()
	from := w.identity
	w.downSince = time.Time{}
	if err != nil {
		w.identity, w.err = Identity{}, err
	} else {
		w.identity, w.err = Identity{ID: id, Source: SPIRE, Selectors: selectorStrings(w.selectors)}, nil
	}
	to := w.identity
	w.mu.Unlock()
	if from.ID != "" && from.ID != to.ID {
		reason := fmt.Sprintf("SPIRE now names %s", to.ID)
		if to.ID == "" {
			reason = fmt.Sprintf("SPIRE no longer names an identity: %v", err)
		}
		p.log.Info("workload identity changed", "workload", w.cgroup, "from", from.ID, "to", to.ID)
		p.onChange(Change{Cgroup: w.cgroup, From: from, To: to, Reason: reason})
	}
}

// Choose picks the workload's identity among the SVIDs SPIRE issued it:
// the only one, or else the only one whose entry has the hint "bridle".
// Anything else is ambiguous and names no identity: guessing would let
// the order of SPIRE's entries decide what an agent may do.
func Choose(svids []*delegatedv1.X509SVIDWithKey) (string, error) {
	var ids, hinted []string
	for _, s := range svids {
		id := spiffeID(s.GetX509Svid().GetId())
		if id == "" || slices.Contains(ids, id) {
			continue
		}
		ids = append(ids, id)
		if s.GetX509Svid().GetHint() == PreferHint {
			hinted = append(hinted, id)
		}
	}
	switch {
	case len(ids) == 1:
		return ids[0], nil
	case len(hinted) == 1:
		return hinted[0], nil
	case len(ids) == 0:
		return "", unavailable("no SPIRE entry matches the workload")
	default:
		slices.Sort(ids)
		return "", unavailable("%d SPIRE entries match the workload (%s) and not exactly one has the hint %q", len(ids), strings.Join(ids, ", "), PreferHint)
	}
}

func spiffeID(id *types.SPIFFEID) string {
	if id == nil || id.TrustDomain == "" {
		return ""
	}
	return "spiffe://" + id.TrustDomain + id.Path
}

func selectorStrings(sel []*types.Selector) []string {
	var out []string
	for _, s := range sel {
		out = append(out, s.Type+":"+s.Value)
	}
	return out
}

// parseSelectors reads selectors kept with a task; nil when there are
// none (then they are read from the kernel again).
func parseSelectors(ss []string) []*types.Selector {
	var out []*types.Selector
	for _, s := range ss {
		if typ, value, ok := strings.Cut(s, ":"); ok && typ != "" && value != "" {
			out = append(out, &types.Selector{Type: typ, Value: value})
		}
	}
	return out
}

// Selectors are the selectors bridled attests for a workload: its cgroup,
// its systemd unit and the uid all its processes run as, each read from
// the kernel, and for a workload without a process yet the uid of the
// caller who asked for its task (as the kernel reported it on the API
// socket). SPIRE trusts a delegate's selectors as attested, so they are
// never taken from anything the workload or the caller says.
func Selectors(f Facts, wl Workload) []*types.Selector {
	sel := []*types.Selector{{Type: SelectorType, Value: "cgroup:" + f.Cgroup}}
	if f.Unit != "" {
		sel = append(sel, &types.Selector{Type: SelectorType, Value: "unit:" + f.Unit})
	}
	if f.HasUID {
		sel = append(sel, &types.Selector{Type: SelectorType, Value: "uid:" + strconv.FormatUint(uint64(f.UID), 10)})
	} else if wl.HasStartedBy && !f.HasProcess {
		sel = append(sel, &types.Selector{Type: SelectorType, Value: "started-by-uid:" + strconv.FormatUint(uint64(wl.StartedBy), 10)})
	}
	return sel
}
