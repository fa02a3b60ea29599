// Package daemon is bridled, Bridle's node daemon: it confines every cgroup
// below the configured roots with the policy's baseline, serves the task API
// on a unix socket, keeps tasks across restarts, follows policy updates and
// turns the kernel's decisions into audit records and metrics.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/bridle-sh/bridle/daemon/api"
	"github.com/bridle-sh/bridle/daemon/approvals"
	"github.com/bridle-sh/bridle/daemon/approvalweb"
	"github.com/bridle-sh/bridle/daemon/config"
	"github.com/bridle-sh/bridle/daemon/dns"
	"github.com/bridle-sh/bridle/daemon/identity"
	"github.com/bridle-sh/bridle/daemon/metrics"
	"github.com/bridle-sh/bridle/daemon/node"
	"github.com/bridle-sh/bridle/daemon/pods"
	"github.com/bridle-sh/bridle/daemon/pods/nri"
	"github.com/bridle-sh/bridle/daemon/store"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy/engine"
)

// Daemon is one running bridled.
type Daemon struct {
	cfg    *config.Config
	log    *slog.Logger
	cgRoot string // cgroup v2 mount point

	engine  *engine.Engine
	watcher *engine.BundleWatcher // nil for a policy directory
	enf     *loader.Enforcer
	node    *node.Node
	dns     *dns.Server
	store   *store.Store
	audit   *auditLog
	metrics *metrics.Metrics
	// hardening is what the last checks found of the workloads' unit
	// settings.
	hardening *hardening

	roots []api.Root

	refusals *refusals // rate of recorded API refusals, per caller

	// svids prove bridled to TCP callers and check callers' SVIDs; zero
	// without spiffe.workload_api. closeSVIDs drops the Workload API.
	svids      SVIDSources
	closeSVIDs func()
	// workloadAPI is where svids come from; nil without
	// spiffe.workload_api.
	workloadAPI *workloadAPI

	baselineMu       sync.Mutex // one baseline write at a time
	mu               sync.Mutex
	baselineRevision string
	baselineRules    int
	baselineErr      error
	listeners        map[string]api.Listener // bridled's own listeners, by name

	// approvals owns step-up approval requests; nil: approval calls are
	// answered 503. approvalWeb serves its page on approvals.web_listen.
	approvals approvalsService
	// approvalsManager is approvals, to close.
	approvalsManager *approvals.Manager
	approvalWeb      *approvalweb.Server
	fdErr            error // the descriptor limit leaves too little headroom

	// pods confines the node's agent pods; nil unless
	// kubernetes.enabled. podIndex is its index, made before the node
	// (the identity source and the workload labels read it).
	pods     *pods.Watcher
	podIndex *pods.Index
}

// Run starts bridled with cfg and serves until ctx ends. Each value on
// reload (SIGHUP) reloads the policy. On return the kernel keeps
// enforcing: nothing is unpinned, so the baseline and every task stay in
// force until the next bridled takes over.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger, reload <-chan os.Signal) error {
	d := &Daemon{cfg: cfg, log: log, hardening: newHardening(), refusals: newRefusals(), listeners: map[string]api.Listener{}}
	if err := d.setup(ctx); err != nil {
		d.close()
		return err
	}
	defer d.close()
	// Every root is confined and every stored task restored: only now may
	// the service manager start the agent units ordered after bridled
	// (Type=notify). Before this, an agent unit could run unconfined.
	if _, err := sddaemon.SdNotify(false, sddaemon.SdNotifyReady); err != nil {
		d.log.Warn("could not tell the service manager bridled is ready", "err", err)
	}
	return d.serve(ctx, reload)
}

func (d *Daemon) setup(ctx context.Context) error {
	var err error
	if d.cgRoot, err = loader.CgroupRoot(); err != nil {
		return err
	}
	if d.audit, err = openAudit(d.cfg); err != nil {
		return err
	}
	// The Workload API's first answer is waited for (bounded); without
	// one bridled starts all the same, refuses SVID callers with the
	// reason and keeps asking.
	if addr := d.cfg.SPIFFE.WorkloadAPI; addr != "" {
		d.workloadAPI = openLate(ctx, addr, d.cfg.API.TCPListen != "", workloadAPITimeout, d.log)
		d.svids = SVIDSources{SVID: d.workloadAPI, X509Bundles: d.workloadAPI, JWTBundles: d.workloadAPI}
		d.closeSVIDs = d.workloadAPI.Close
		if d.workloadAPI.Degraded() == "" {
			d.log.Info("SVIDs and trust bundles from the Workload API", "address", addr)
		}
	}
	// The policy comes first: a daemon that cannot decide envelopes must
	// not touch the kernel's state at all.
	d.engine = engine.NewEngine(engine.WithLogger(d.log.With("component", "policy")),
		engine.WithOnChange(d.policyChanged))
	if err := d.loadPolicy(ctx); err != nil {
		return err
	}
	if d.store, err = store.Open(d.cfg.StateDir); err != nil {
		return err
	}
	stored, err := d.store.Load()
	if err != nil {
		return err
	}
	// The metrics read the enforcer and the node, which need the metrics:
	// made first, they read both once loaded.
	d.metrics = metrics.New(metrics.Sources{
		Drops:       func() (uint64, error) { return d.enf.Drops() },
		ActiveTasks: func() int { return len(d.node.List()) },
	})
	d.audit.onLost = d.metrics.EventsLost
	d.audit.onError = func(err error) { d.log.Error("audit records are not being written", "err", err) }
	d.metrics.PolicyLoad(true)
	d.metrics.SetPolicyInfo(d.engine.Revision())
	identities, err := d.identities()
	if err != nil {
		return err
	}
	var workloadLabels func(string) map[string]string
	if d.cfg.Kubernetes.Enabled {
		d.podIndex = pods.NewIndex()
		identities = pods.NewIdentities(identities, d.podIndex)
		workloadLabels = d.podIndex.Labels
	}
	d.node, d.enf, err = node.Load(d.cfg.PinDir, node.Options{
		Engine: d.engine, Store: d.store,
		NodeName: d.cfg.NodeName, CgroupRoot: d.cgRoot, Roots: d.cfg.Roots,
		Identities: identities, Records: d.audit.Write, Metrics: d.metrics,
		Log: d.log, WorkloadLabels: workloadLabels,
	})
	if err != nil {
		return err
	}
	f := d.enf.Features()
	d.log.Info("programs loaded", "pin_dir", d.cfg.PinDir, "kernel", f.Kernel, "exec_mode", f.ExecMode,
		"unix_hooks", f.UnixHooks, "listen_hooks", f.ListenHooks, "sockopt_hook", f.SockoptHook,
		"socket_destroy", f.SocketDestroy.Method)
	if err := d.writeBaseline(ctx); err != nil {
		return err
	}
	if err := d.startResolver(); err != nil {
		return err
	}
	if err := d.attachRoots(); err != nil {
		return err
	}
	d.node.Restore(stored)
	// After the restore: the grants a previous bridled left are ended,
	// on time, through the tasks they belong to.
	if err := d.startApprovals(ctx); err != nil {
		return err
	}
	// After the restore: a pod whose task was restored keeps it
	// (node.AdoptRoot).
	return d.startPods(ctx)
}

// podsSyncWait bounds how long bridled waits for the first pod list
// before it says it is ready; past it the watch goes on in the
// background and the status says the list is not in yet.
const podsSyncWait = 15 * time.Second

// startPods starts the pod watch (kubernetes.enabled): the agent pods of
// this node are confined as the watch sees them, and, through the
// runtime hook, before their containers run.
func (d *Daemon) startPods(ctx context.Context) error {
	k := d.cfg.Kubernetes
	if !k.Enabled {
		return nil
	}
	client, err := pods.NewClient(k.Kubeconfig)
	if err != nil {
		return err
	}
	sel, err := labels.Parse(k.AgentSelector)
	if err != nil {
		return fmt.Errorf("kubernetes.agent_selector: %w", err)
	}
	td, err := spiffeid.TrustDomainFromString(k.TrustDomain)
	if err != nil {
		return fmt.Errorf("kubernetes.trust_domain: %w", err)
	}
	d.pods = pods.New(pods.Options{
		Node: d.node, Client: client, NodeName: k.NodeName, Selector: sel, TrustDomain: td,
		Naming: pods.Naming{Systemd: k.CgroupDriver == config.CgroupDriverSystemd, CRIO: k.Runtime == config.RuntimeCRIO, Root: k.CgroupRoot},
		Index:  d.podIndex, Records: d.audit.Write, Log: d.log.With("component", "pods"),
		StateFile: filepath.Join(d.cfg.StateDir, "pods.json"), CgroupMount: d.cgRoot,
	})
	go func() {
		if err := d.pods.Run(ctx); err != nil && ctx.Err() == nil {
			d.log.Error("pod watch stopped", "err", err)
		}
	}()
	select {
	case <-d.pods.Synced():
	case <-time.After(podsSyncWait):
		d.log.Error("pods of this node not listed yet; going on, agent pods are confined once they are", "node", k.NodeName, "waited", podsSyncWait)
	case <-ctx.Done():
		return ctx.Err()
	}
	if k.NRISocket == "" {
		d.log.Warn("no runtime hook (kubernetes.nri_socket): agent containers may run briefly before binding")
		return nil
	}
	go nri.New(k.NRISocket, d.pods, d.log.With("component", "runtime-hook")).Run(ctx)
	return nil
}

// Pods is the pod watch, for the runtime hook; nil unless
// kubernetes.enabled.
func (d *Daemon) Pods() *pods.Watcher { return d.pods }

// startApprovals makes the approvals manager, the one owner of step-up
// requests and their grants, and hands it to the node and the API.
func (d *Daemon) startApprovals(ctx context.Context) error {
	a := d.cfg.Approvals
	m, err := approvals.New(approvals.Options{
		Kernel: d.node.Tasks(), Records: d.node.Record, Metrics: d.metrics,
		RequestTTL: a.RequestTTL, Cooldown: a.Cooldown,
		IsAdmin: func(by approvals.Approver) bool {
			if by.Auth != engine.AuthX509SVID && d.cfg.IsAdmin(by.UID, by.Groups) {
				return true
			}
			id, err := spiffeid.FromString(by.Identity)
			return err == nil && d.cfg.IsAdminIdentity(id)
		},
		IsWorkloadIdentity: func(id string) bool {
			return slices.ContainsFunc(d.node.List(), func(t node.Task) bool { return t.Identity == id })
		},
		Webhook:   approvals.Webhook{URL: a.Webhook.URL, Timeout: a.Webhook.Timeout, Retries: *a.Webhook.Retries},
		StateFile: filepath.Join(d.cfg.StateDir, "approvals.json"),
		Node:      d.cfg.NodeName, Log: d.log.With("component", "approvals"),
	})
	if err != nil {
		return fmt.Errorf("approvals: %w", err)
	}
	d.node.UseApprovals(m)
	d.node.RestoreApprovals(ctx)
	d.approvalsManager = m
	d.approvals = m
	return nil
}

// identities makes the configured identity source. A change it reports
// ends the workload's tasks, on a goroutine of its own: the node's end
// path calls back into the source.
func (d *Daemon) identities() (identity.Provider, error) {
	c := d.cfg.Identity
	if c.Source != string(identity.SPIRE) {
		return identity.NewStatic(d.cfg.StaticIdentity(), d.cgRoot), nil
	}
	p, err := identity.NewSPIRE(identity.SPIREConfig{
		AdminSocket: c.SPIRE.AdminSocket, Attest: identity.Attest(c.SPIRE.Attest),
		Hold: c.SPIRE.Hold, Timeout: c.SPIRE.Timeout, Mount: d.cgRoot,
	}, func(ch identity.Change) { go d.node.IdentityChanged(ch) }, d.log)
	if err != nil {
		return nil, err
	}
	d.log.Info("workload identities from SPIRE", "admin_socket", c.SPIRE.AdminSocket,
		"attest", c.SPIRE.Attest, "hold", c.SPIRE.Hold)
	return p, nil
}

// loadPolicy loads the configured policy once, synchronously: bridled does
// not start without a policy in force.
func (d *Daemon) loadPolicy(ctx context.Context) error {
	if d.cfg.PolicyDir != "" {
		return d.engine.LoadDir(ctx, d.cfg.PolicyDir)
	}
	b := d.cfg.PolicyBundle
	src := engine.BundleSource{
		URL: b.URL, Resource: b.Resource, TokenFile: b.TokenFile, CACertFile: b.CACertFile,
		MinDelay: b.PollMin, MaxDelay: b.PollMax,
	}
	if v := b.Verify; v != nil {
		key, err := os.ReadFile(v.KeyFile)
		if err != nil {
			return fmt.Errorf("policy_bundle.verify: %w", err)
		}
		src.Verify = &engine.BundleKey{ID: v.ID, Algorithm: v.Algorithm, Key: string(key)}
	}
	w, err := d.engine.WatchBundle(src)
	if err != nil {
		return err
	}
	if err := w.Fetch(ctx); err != nil {
		return err
	}
	if d.engine.Revision() == "" {
		return fmt.Errorf("policy: bundle service %s offered no bundle", b.URL)
	}
	d.watcher = w
	return nil
}

// reloadPolicy is SIGHUP: read the policy again. A policy that fails
// leaves the one in force in force, and says so in the log, the status and
// the metrics.
func (d *Daemon) reloadPolicy(ctx context.Context) {
	var err error
	if d.watcher != nil {
		err = d.watcher.Fetch(ctx)
	} else {
		err = d.engine.LoadDir(ctx, d.cfg.PolicyDir)
	}
	d.metrics.PolicyLoad(err == nil)
	if err != nil {
		d.log.Error("policy reload failed; the policy in force stays", "err", err, "revision", d.engine.Revision())
		return
	}
	d.log.Info("policy reloaded", "revision", d.engine.Revision())
}

// policyChanged runs after a new policy revision went into force: new
// tasks are decided by it from now on (tasks in force keep the envelope
// they were started with), and the baseline is rewritten from it.
func (d *Daemon) policyChanged(revision string) {
	if d.node == nil {
		return // the first load, before anything is in the kernel
	}
	d.metrics.SetPolicyInfo(revision)
	if err := d.writeBaseline(context.Background()); err != nil {
		d.log.Error("baseline of the new policy not applied; the previous baseline stays", "revision", revision, "err", err)
	}
}

// writeBaseline has the node put the policy's baseline in force (see
// node.SetBaseline), one write at a time, and keeps the outcome for the
// status.
func (d *Daemon) writeBaseline(ctx context.Context) error {
	d.baselineMu.Lock()
	defer d.baselineMu.Unlock()
	b, err := d.node.SetBaseline(ctx)
	d.mu.Lock()
	d.baselineErr = err
	if err == nil {
		d.baselineRevision, d.baselineRules = b.Revision, b.Rules
	}
	d.mu.Unlock()
	if err == nil {
		d.log.Info("baseline in force", "revision", b.Revision, "rules", b.Rules)
	}
	return err
}

// startResolver starts the resolver the workloads' DNS is steered to,
// before any root is confined, so that no workload's first query finds
// none. It lives as long as bridled; while bridled is away the kernel
// still steers queries to its address, where nothing answers: DNS fails
// closed.
func (d *Daemon) startResolver() error {
	c := d.cfg.DNS
	cfg := dns.Config{
		TTLFloor: c.TTLFloor, TTLCeiling: c.TTLCeiling, WildcardNames: c.WildcardNames, WildcardRate: c.WildcardRate,
		WildcardBurst: c.WildcardBurst, Metrics: d.metrics, Interface: c.Interface,
	}
	var err error
	if c.Upstream != "" {
		cfg.Upstream, err = dns.ParseUpstream(c.Upstream)
	} else {
		cfg.Upstream, err = dns.SystemUpstream(dns.ResolvConf)
	}
	if err != nil {
		return fmt.Errorf("dns: %w (set dns.upstream)", err)
	}
	if c.Listen4 != "" {
		cfg.Listen4 = netip.MustParseAddrPort(c.Listen4) // checked at load
	}
	if c.Listen6 != "" {
		cfg.Listen6 = netip.MustParseAddrPort(c.Listen6)
	}
	d.dns, err = d.node.StartResolver(context.Background(), cfg)
	var noSteering *node.NoSteeringError
	if errors.As(err, &noSteering) {
		// Closed, not open: the status says DEGRADED with the reason.
		d.log.Error("no resolver", "err", err)
		return nil
	}
	return err
}

// attachRoots has the node confine every root: bound to the baseline, then
// the programs attached (see node.ConfineRoot).
func (d *Daemon) attachRoots() error {
	for _, r := range d.cfg.Roots {
		id, err := d.node.ConfineRoot(r)
		if err != nil {
			return fmt.Errorf("root %s: %w", r, err)
		}
		d.roots = append(d.roots, api.Root{Path: r, CgroupID: id, Attached: true})
		d.log.Info("root confined", "root", r, "cgroup_id", id)
	}
	return nil
}

// HTTP timeouts of the task API: a caller must send its request headers
// within apiHeaderTimeout and the whole request within apiReadTimeout, and
// a connection idle between requests is closed after apiIdleTimeout, so an
// idle connection never holds a descriptor for long. Answers must be taken
// within apiWriteTimeout; an event stream outlives that, so each of its
// writes gets streamWriteTimeout instead.
const (
	apiHeaderTimeout   = 5 * time.Second
	apiReadTimeout     = 30 * time.Second
	apiWriteTimeout    = 30 * time.Second
	apiIdleTimeout     = 60 * time.Second
	streamWriteTimeout = 30 * time.Second
	// A listener that cannot bind is retried after 1 s, then up to every
	// listenRetryMax.
	listenRetryMax = 10 * time.Second
)

func (d *Daemon) serve(ctx context.Context, reload <-chan os.Signal) error {
	events, err := d.enf.Events()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { d.node.ReadEvents(events) })
	wg.Go(func() { d.runHardeningChecks(ctx) })
	if d.watcher != nil {
		d.watcher.OnFetch = func(err error) { d.metrics.PolicyLoad(err == nil) }
		wg.Go(func() { _ = d.watcher.Run(ctx) })
	}
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-reload:
				d.log.Info("reloading the policy (SIGHUP)")
				d.reloadPolicy(ctx)
			}
		}
	})
	if err := fitFDLimits(&d.cfg.APILimits, d.cfg.API.TCPListen != ""); err != nil {
		d.log.Error("descriptor headroom", "err", err)
		d.mu.Lock()
		d.fdErr = err
		d.mu.Unlock()
	}

	errLog := slog.NewLogLogger(d.log.Handler(), slog.LevelWarn)
	srv := d.apiServer(errLog)
	servers := []*http.Server{srv}
	wg.Go(func() {
		d.keepServing(ctx, srv, "api", d.cfg.Socket, func() (net.Listener, error) {
			ln, err := listen(d.cfg.Socket, d.log)
			if err != nil {
				return nil, err
			}
			return d.unixListener(ln), nil
		})
	})
	if addr := d.cfg.API.TCPListen; addr != "" {
		tsrv := d.apiServer(errLog)
		servers = append(servers, tsrv)
		wg.Go(func() {
			d.keepServing(ctx, tsrv, "api-tcp", addr, func() (net.Listener, error) {
				ln, err := net.Listen("tcp", addr)
				if err != nil {
					return nil, err
				}
				return d.tlsListener(ln), nil
			})
		})
	}
	// Connections closed over a listener's limit are logged once a minute.
	refusedLog := rate.NewLimiter(rate.Every(time.Minute), 1)
	if d.cfg.MetricsListen != "" {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", d.metrics.Handler())
		msrv := &http.Server{
			Handler: mux, ReadHeaderTimeout: apiHeaderTimeout, ReadTimeout: apiReadTimeout,
			WriteTimeout: apiWriteTimeout, IdleTimeout: apiIdleTimeout, MaxHeaderBytes: 16 << 10,
			ErrorLog: errLog,
		}
		servers = append(servers, msrv)
		wg.Go(func() {
			d.keepServing(ctx, msrv, "metrics", d.cfg.MetricsListen, func() (net.Listener, error) {
				ln, err := net.Listen("tcp", d.cfg.MetricsListen)
				if err != nil {
					return nil, err
				}
				return &countListener{Listener: ln, max: d.cfg.APILimits.MetricsConnections, refused: func() {
					if refusedLog.Allow() {
						d.log.Warn("metrics connection closed: over the limit (api_limits.metrics_connections)", "limit", d.cfg.APILimits.MetricsConnections)
					}
				}}, nil
			})
		})
	}

	if addr := d.cfg.Approvals.WebAddr(); addr != "" && d.approvals != nil {
		d.approvalWeb = approvalweb.New(d.approvals, approvalweb.Options{
			Log:     d.log.With("component", "approvals-web"),
			Refused: d.webAnswerRefused,
		})
		wsrv := &http.Server{
			// No server-wide write timeout: the page's event stream lasts
			// as long as the page; the handler sets one per write.
			Handler: d.approvalWeb.Handler(), ReadHeaderTimeout: apiHeaderTimeout, ReadTimeout: apiReadTimeout,
			IdleTimeout: apiIdleTimeout, MaxHeaderBytes: 16 << 10, ErrorLog: errLog,
		}
		servers = append(servers, wsrv)
		wg.Go(func() {
			d.keepServing(ctx, wsrv, approvalsWebListener, addr, func() (net.Listener, error) {
				ln, err := net.Listen("tcp", addr)
				if err != nil {
					return nil, err
				}
				return &countListener{Listener: ln, max: approvalsWebConnections, refused: func() {
					if refusedLog.Allow() {
						d.log.Warn("approvals page connection closed: over the limit", "limit", approvalsWebConnections)
					}
				}}, nil
			})
		})
	}

	<-ctx.Done()
	d.log.Info("stopping; enforcement stays in force")
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	for _, s := range servers {
		_ = s.Shutdown(sctx)
	}
	scancel()
	cancel()
	_ = events.Flush()
	wg.Wait()
	_ = events.Close()
	d.mu.Lock()
	bound := d.listeners["api"].Bound
	d.mu.Unlock()
	if bound {
		_ = os.Remove(d.cfg.Socket)
	}
	return nil
}

// keepServing serves srv on the listener bind returns until ctx ends. A
// listener that cannot bind (a workload or a local user may hold the
// metrics port; anything may go wrong with a socket path) never stops
// bridled: enforcement is in the kernel and goes on, the failure is
// logged, reported in the status (degraded) and the metric
// bridle_listener_up, and the bind is retried until it works. A listener
// that fails later is bound again the same way.
func (d *Daemon) keepServing(ctx context.Context, srv *http.Server, name, addr string, bind func() (net.Listener, error)) {
	delay := time.Second
	for ctx.Err() == nil {
		ln, err := bind()
		if err == nil {
			d.setListener(name, api.Listener{Name: name, Address: ln.Addr().String(), Bound: true})
			switch name {
			case "metrics":
				d.log.Info("serving metrics", "address", ln.Addr().String())
			case "api-tcp":
				d.log.Info("serving the task API over mutual TLS", "address", ln.Addr().String())
			case approvalsWebListener:
				d.log.Info("serving the approvals page (sign in with `bridle approvals web`)", "address", ln.Addr().String())
			default:
				d.log.Info("serving the task API", "socket", addr)
			}
			delay = time.Second
			err = srv.Serve(ln)
			if errors.Is(err, http.ErrServerClosed) || ctx.Err() != nil {
				return
			}
		}
		d.setListener(name, api.Listener{Name: name, Address: addr, Error: err.Error()})
		d.log.Error("listener not serving; enforcement goes on, binding again", "listener", name, "address", addr, "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, listenRetryMax)
	}
}

func (d *Daemon) setListener(name string, l api.Listener) {
	d.mu.Lock()
	d.listeners[name] = l
	d.mu.Unlock()
	d.metrics.ListenerUp(name, l.Bound)
}

// listen opens the API socket. Anyone may connect: who may do what is
// decided per call from the kernel's peer credentials.
func listen(path string, log *slog.Logger) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("api socket: %w", err)
	}
	if err := traversable(dir, log); err != nil {
		return nil, fmt.Errorf("api socket: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		// A socket file left by a killed daemon refuses connections;
		// replace it. One a live daemon answers on is that daemon's.
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("api socket %s: another process serves it", path)
		}
		_ = os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("api socket: %w", err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		ln.Close()
		return nil, fmt.Errorf("api socket: %w", err)
	}
	return ln, nil
}

// traversable makes sure callers can reach the socket: bridled's own
// runtime directory (/run/bridle) is made 0755 if something left it
// closed (older `bridle run`s created it 0700); for any other directory a
// closed one is only reported, as it may be closed on purpose.
func traversable(dir string, log *slog.Logger) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o011 == 0o011 {
		return nil
	}
	if dir == filepath.Dir(config.DefaultSocket) {
		log.Warn("making the API socket's directory traversable", "dir", dir, "mode", fi.Mode().Perm())
		return os.Chmod(dir, fi.Mode().Perm()|0o755)
	}
	log.Warn("the API socket's directory is closed to others: only callers that can traverse it can use the API", "dir", dir, "mode", fi.Mode().Perm())
	return nil
}

// close releases this process's handles only: pins stay, so the kernel
// keeps enforcing.
func (d *Daemon) close() {
	if d.dns != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = d.dns.Shutdown(ctx)
		cancel()
	}
	if d.approvalsManager != nil {
		d.approvalsManager.Close()
	}
	if d.node != nil {
		d.node.Identities().Close()
		d.node.Wait()
	}
	if d.enf != nil {
		_ = d.enf.Close()
	}
	if d.audit != nil {
		_ = d.audit.Close()
	}
	if d.closeSVIDs != nil {
		d.closeSVIDs()
	}
}
