package run

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/bridle-sh/bridle/daemon/api"
	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/dns"
	"github.com/bridle-sh/bridle/daemon/node"
	"github.com/bridle-sh/bridle/daemon/workload"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
	"github.com/bridle-sh/bridle/policy/engine"
)

// host is where a run's task is decided and enforced: a node in this
// process (no daemon on the machine) or bridled's node over its API. The
// run does the same steps either way.
type host interface {
	// describe says where the run is enforced, for --verbose.
	describe() []string
	// newWorkload creates the run's cgroup, confined before it is returned.
	newWorkload(runID string) (workload.Cgroup, error)
	start(ctx context.Context, req taskRequest) (runTask, error)
	// end ends the task; a task already ended (expired) is not an error.
	end(id string) error
	// events streams the workload's records until it has no task and no
	// process left; wait then tells whether any were missed.
	events(ctx context.Context, cg workload.Cgroup) (records <-chan audit.Record, wait func() error, err error)
	// hasPolicy reports whether a policy decides the run's envelope.
	hasPolicy() bool
	// drops is how many decision events the kernel could not queue
	// during the run (ring buffer full).
	drops() uint64
	close()
}

// taskRequest is a run's task, in the terms both hosts take.
type taskRequest struct {
	ID       string
	Workload workload.Cgroup
	Intent   string
	TTL      time.Duration
	Grants   *api.Grants // nil: what the policy allows; bridled parses them itself
	// Compiled is Grants as parsed and compiled once, before anything
	// ran, for the embedded node.
	Compiled *node.Grants
	Identity string // embedded only; bridled maps identities itself
	Mode     loader.WorkloadMode
	RunAs    policy.Principal // who COMMAND runs as, for the exec rules' check
}

// runTask is what a run knows of its task, whichever host started it.
type runTask struct {
	ID, Workload, Identity, Intent, PolicyRevision string
	Rules                                          int // kernel entries in force
	Mode                                           loader.WorkloadMode
}

// embeddedHost runs a node in this process with its own pinned programs,
// attached to the run's cgroup alone.
type embeddedHost struct {
	runID   string
	engine  *engine.Engine // nil: the flags are the whole envelope
	enf     *loader.Enforcer
	node    *node.Node
	reader  *loader.EventReader
	readWG  sync.WaitGroup
	dns     DNSSettings
	dnsNote string // for describe
	cleanup []func()
}

func newEmbeddedHost(ctx context.Context, runID, policyPath string, dnsSettings DNSSettings) (*embeddedHost, error) {
	h := &embeddedHost{runID: runID, dns: dnsSettings}
	if policyPath != "" {
		h.engine = engine.NewEngine()
		if err := loadPolicy(ctx, h.engine, policyPath); err != nil {
			return nil, err
		}
	}
	// The lock first: from here on, concurrent runs' sweeps leave this
	// run's cgroup and pins alone.
	lock, err := lockRun(runID)
	if err != nil {
		return nil, err
	}
	h.defer_(lock.release)
	sweepStale()
	return h, nil
}

// loadPolicy loads --policy: a directory of Rego files or a bundle tarball.
func loadPolicy(ctx context.Context, e *engine.Engine, path string) error {
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return e.LoadDir(ctx, path)
	}
	return e.LoadBundleFile(ctx, path)
}

func (h *embeddedHost) defer_(f func()) { h.cleanup = append(h.cleanup, f) }

func (h *embeddedHost) describe() []string {
	f := h.enf.Features()
	out := []string{
		"enforced by this process (no bridled running)",
		fmt.Sprintf("kernel %s", f.Kernel),
		fmt.Sprintf("exec enforcement: %s (%s)", f.ExecMode, f.ExecModeReason),
	}
	if f.UnixHooks {
		out = append(out, "unix sockets: enforced by path")
	} else {
		out = append(out, fmt.Sprintf("unix sockets: NOT enforced (%s)", f.UnixReason))
	}
	if f.ListenHooks {
		out = append(out, "bind/listen: enforced")
	} else {
		out = append(out, fmt.Sprintf("bind/listen: NOT enforced (%s)", f.ListenReason))
	}
	if f.SockoptHook {
		out = append(out, "source routing options: refused at setsockopt and in packets")
	} else {
		out = append(out, fmt.Sprintf("source routing options: not refused at setsockopt (%s)", f.SockoptReason))
	}
	ns, fam := f.GuardLines()
	out = append(out, "namespaces: "+ns, "socket families: "+fam)
	out = append(out, "BTF: "+f.BTF,
		fmt.Sprintf("open connections at task end: %s (%s)", f.SocketDestroy.Method, f.SocketDestroy.Reason),
		fmt.Sprintf("unix connections at task end: %s (%s)", f.UnixShutdown.Method, f.UnixShutdown.Reason),
		h.dnsNote,
		"pinned at "+h.enf.PinDir())
	if h.engine != nil {
		st := h.engine.Status()
		out = append(out, fmt.Sprintf("policy %s from %s", st.Revision, st.Source))
	}
	return out
}

func (h *embeddedHost) newWorkload(runID string) (workload.Cgroup, error) {
	root, err := loader.CgroupRoot()
	if err != nil {
		return workload.Cgroup{}, err
	}
	cg, err := workload.Create(root, cgroupParent, "run-"+runID)
	if err != nil {
		return cg, err
	}
	h.defer_(func() { _ = cg.Remove() })
	hostname, _ := os.Hostname()
	h.node, h.enf, err = node.Load(filepath.Join(pinParent, runID), node.Options{
		Engine: h.engine, NodeName: hostname, CgroupRoot: root, Roots: []string{cg.Rel()},
	})
	if err != nil {
		return cg, err
	}
	h.defer_(func() {
		_ = h.enf.Unpin()
		_ = h.enf.Close()
	})
	h.defer_(h.node.Wait)
	// The resolver first: from the workload's first instruction its DNS
	// is steered there.
	upstream := h.dns.Upstream
	if !upstream.IsValid() {
		if upstream, err = dns.SystemUpstream(dns.ResolvConf); err != nil {
			return cg, fmt.Errorf("%w (name an upstream resolver with --dns-upstream)", err)
		}
	}
	resolver, err := h.node.StartResolver(context.Background(), dns.Config{Upstream: upstream, TTLFloor: h.dns.TTLFloor})
	var noSteering *node.NoSteeringError
	switch {
	case errors.As(err, &noSteering):
		h.dnsNote = "DNS: not steered to a resolver (" + noSteering.Reason + "); port 53 is judged by the flags, and names resolve nothing"
	case err != nil:
		return cg, err
	default:
		v4, v6 := resolver.Addrs()
		h.dnsNote = fmt.Sprintf("DNS: steered to this process's resolver (%s, %s), forwarding allowed names to %s", v4, v6, upstream)
		h.defer_(func() { _ = resolver.Shutdown(context.Background()) })
	}
	// Nothing is bound yet: until the task is, the cgroup's processes
	// (there are none) would be refused everything.
	if err := h.enf.AttachCgroup(cg.Path); err != nil {
		return cg, err
	}
	if h.reader, err = h.enf.Events(); err != nil {
		return cg, err
	}
	h.readWG.Go(func() { h.node.ReadEvents(h.reader) })
	h.defer_(func() {
		_ = h.reader.Flush()
		h.readWG.Wait()
		_ = h.reader.Close()
	})
	return cg, nil
}

func (h *embeddedHost) start(ctx context.Context, req taskRequest) (runTask, error) {
	t, err := h.node.Start(ctx, node.Request{
		ID: req.ID, Workload: req.Workload.Rel(), Intent: req.Intent, TTL: req.TTL,
		Grants: req.Compiled, Mode: req.Mode, Identity: req.Identity,
		RunAs: []policy.Principal{req.RunAs},
	})
	return runTask{
		ID: t.ID, Workload: t.Workload, Identity: t.Identity, Intent: t.Intent,
		PolicyRevision: t.PolicyRevision, Rules: t.Rules, Mode: t.Mode,
	}, err
}

func (h *embeddedHost) end(id string) error {
	_, err := h.node.End(id, "command exited")
	if errors.Is(err, node.ErrNoTask) {
		return nil
	}
	return err
}

func (h *embeddedHost) events(_ context.Context, cg workload.Cgroup) (<-chan audit.Record, func() error, error) {
	sub, err := h.node.Subscribe(cg.Rel())
	if err != nil {
		return nil, nil, err
	}
	return sub.C, func() error {
		if n := sub.Lost(); n > 0 {
			return fmt.Errorf("%d decision record(s) not shown (the reader fell behind)", n)
		}
		return nil
	}, nil
}

func (h *embeddedHost) hasPolicy() bool { return h.engine != nil }

func (h *embeddedHost) drops() uint64 {
	n, _ := h.enf.Drops()
	return n
}

func (h *embeddedHost) close() {
	for i := len(h.cleanup) - 1; i >= 0; i-- {
		h.cleanup[i]()
	}
}

// remoteHost hands the run to bridled: the workload is created below one of
// the daemon's roots (so it is confined by the node's baseline from its
// first instruction) and the node's policy decides the task.
type remoteHost struct {
	client *api.Client
	status api.Status
	root   string
	cg     workload.Cgroup
}

func newRemoteHost(client *api.Client, st api.Status) (*remoteHost, error) {
	for _, r := range st.Roots {
		if r.Attached {
			return &remoteHost{client: client, status: st, root: r.Path}, nil
		}
	}
	return nil, fmt.Errorf("bridled at %s confines no root cgroup; see bridle status", client.Socket())
}

func (h *remoteHost) describe() []string {
	out := []string{
		fmt.Sprintf("enforced by bridled at %s (node %s)", h.client.Socket(), h.status.Node),
		fmt.Sprintf("policy %s from %s", h.status.Policy.Revision, h.status.Policy.Source),
	}
	for k, v := range h.status.Features {
		out = append(out, fmt.Sprintf("%s: %v", k, v))
	}
	for _, d := range h.status.Degraded {
		out = append(out, "DEGRADED: "+d)
	}
	return out
}

func (h *remoteHost) newWorkload(runID string) (workload.Cgroup, error) {
	root, err := loader.CgroupRoot()
	if err != nil {
		return workload.Cgroup{}, err
	}
	h.cg, err = workload.Create(root, h.root, "run-"+runID)
	return h.cg, err
}

func (h *remoteHost) start(ctx context.Context, req taskRequest) (runTask, error) {
	mode := ""
	if req.Mode.Audit {
		mode = "audit"
	}
	r := api.StartRequest{
		Workload: req.Workload.Rel(), Intent: req.Intent, Grants: req.Grants,
		Mode: mode, LogAllowed: req.Mode.EmitAllow,
		RunAs: []api.RunAs{{UID: req.RunAs.UID, GIDs: req.RunAs.GIDs}},
	}
	if req.TTL > 0 {
		r.TTL = req.TTL.String()
	}
	t, err := h.client.StartTask(ctx, r)
	return runTask{
		ID: t.ID, Workload: t.Workload, Identity: t.Identity, Intent: t.Intent,
		PolicyRevision: t.PolicyRevision, Rules: t.Rules,
		Mode: loader.WorkloadMode{Audit: t.Mode.Audit, EmitAllow: t.Mode.EmitAllow},
	}, err
}

func (h *remoteHost) end(id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := h.client.EndTask(ctx, id)
	var se *api.StatusError
	if errors.As(err, &se) && se.Code == http.StatusNotFound {
		return nil // expired meanwhile
	}
	return err
}

func (h *remoteHost) events(ctx context.Context, cg workload.Cgroup) (<-chan audit.Record, func() error, error) {
	return h.client.Events(ctx, cg.Rel())
}

func (h *remoteHost) hasPolicy() bool { return true }

// drops is the node's drop count since the run began: the ring is the
// node's, so drops during the run may belong to other workloads too.
func (h *remoteHost) drops() uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := h.client.Probe(ctx)
	if err != nil || st.RingDrops < h.status.RingDrops {
		return 0
	}
	return st.RingDrops - h.status.RingDrops
}

func (h *remoteHost) close() {
	if h.cg.Path != "" {
		_ = h.cg.Remove()
	}
}

// pickHost finds bridled on socket, or runs without it. A daemon that is
// running is always used (unless standalone is asked for): the node's
// policy governs every workload on it.
func pickHost(ctx context.Context, spec RunSpec, runID string) (host, error) {
	if !spec.Standalone {
		client := api.NewClient(spec.Socket)
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := client.Probe(pctx)
		cancel()
		switch {
		case err == nil:
			if spec.Policy != "" {
				return nil, fmt.Errorf("--policy: bridled runs on this node (%s) and its policy decides; pass --standalone to run with your own policy outside it", spec.Socket)
			}
			if spec.Identity != "" {
				return nil, fmt.Errorf("--identity: bridled runs on this node (%s) and maps identities itself; pass --standalone to name one", spec.Socket)
			}
			if spec.DNS != (DNSSettings{}) {
				return nil, fmt.Errorf("--dns-upstream, --dns-ttl-floor: bridled runs on this node (%s) and resolves for its workloads (its config's dns settings); pass --standalone to resolve in this process", spec.Socket)
			}
			return newRemoteHost(client, st)
		case !errors.Is(err, api.ErrNotRunning):
			return nil, fmt.Errorf("bridled at %s: %w (pass --standalone to run without it)", spec.Socket, err)
		}
		slog.Debug("no daemon; running standalone", "err", err)
	}
	return newEmbeddedHost(ctx, runID, spec.Policy, spec.DNS)
}
