// Package server is bridled, Bridle's node daemon: it confines every cgroup
// below the configured roots with the policy's baseline, serves the task API
// on a unix socket, keeps tasks across restarts, follows policy updates and
// turns the kernel's decisions into audit records and metrics.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/bridle-sh/bridle/daemon/config"
	"github.com/bridle-sh/bridle/daemon/metrics"
	"github.com/bridle-sh/bridle/daemon/node"
	"github.com/bridle-sh/bridle/daemon/server/api"
	"github.com/bridle-sh/bridle/daemon/store"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
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
	store   *store.Store
	audit   *auditLog
	metrics *metrics.Metrics

	roots []api.Root

	baselineMu       sync.Mutex // one baseline write at a time
	mu               sync.Mutex
	baselineRevision string
	baselineRules    int
	baselineErr      error
}

// Run starts bridled with cfg and serves until ctx ends. Each value on
// reload (SIGHUP) reloads the policy. On return the kernel keeps
// enforcing: nothing is unpinned, so the baseline and every task stay in
// force until the next bridled takes over.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger, reload <-chan os.Signal) error {
	d := &Daemon{cfg: cfg, log: log}
	if err := d.setup(ctx); err != nil {
		d.close()
		return err
	}
	defer d.close()
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
	if d.enf, err = loader.Load(loader.Options{PinDir: d.cfg.PinDir, WakeupBytes: loader.DefaultWakeupBytes}); err != nil {
		return err
	}
	f := d.enf.Features()
	d.log.Info("programs loaded", "pin_dir", d.cfg.PinDir, "kernel", f.Kernel, "exec_mode", f.ExecMode,
		"unix_hooks", f.UnixHooks, "socket_destroy", f.SocketDestroy.Method)
	d.metrics = metrics.New(metrics.Sources{
		Drops:       d.enf.Drops,
		ActiveTasks: func() int { return len(d.node.List()) },
	})
	d.audit.onLost = d.metrics.EventsLost
	d.audit.onError = func(err error) { d.log.Error("audit records are not being written", "err", err) }
	d.metrics.PolicyLoad(true)
	d.metrics.SetPolicyInfo(d.engine.Revision())
	d.node = node.New(node.Options{
		Kernel: d.enf, Engine: d.engine, Store: d.store,
		NodeName: d.cfg.NodeName, CgroupRoot: d.cgRoot, Roots: d.cfg.Roots,
		Identity: d.cfg.Identity, Records: d.audit.Write, Metrics: d.metrics,
		Log: d.log,
	})
	if err := d.writeBaseline(ctx); err != nil {
		return err
	}
	if err := d.attachRoots(); err != nil {
		return err
	}
	d.node.Restore(stored)
	return nil
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

// writeBaseline puts the policy's baseline in slot 0, which every workload
// without a task is bound to. When the revision in the kernel is the same
// (a restart), its rules are rewritten in place: workloads never see the
// slot empty. When the revision changed, the slot is cleared first so a
// baseline that shrank leaves nothing behind; for that moment workloads
// without a task are refused more, never allowed more.
func (d *Daemon) writeBaseline(ctx context.Context) error {
	d.baselineMu.Lock()
	defer d.baselineMu.Unlock()
	err := d.applyBaseline(ctx)
	d.mu.Lock()
	d.baselineErr = err
	d.mu.Unlock()
	return err
}

func (d *Daemon) applyBaseline(ctx context.Context) error {
	root := d.cfg.Roots[0]
	dec, err := d.engine.Baseline(ctx, engine.Input{
		Identity: d.cfg.Identity(root),
		Workload: engine.Workload{Cgroup: root},
	})
	if err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	rs, err := policy.Compile(dec.Envelope)
	if err != nil {
		return fmt.Errorf("baseline of policy %s: %w", dec.Revision, err)
	}
	if len(rs.Unix) > 0 && !d.enf.Features().UnixHooks {
		return fmt.Errorf("baseline of policy %s allows unix sockets, which this kernel cannot enforce: %s", dec.Revision, d.enf.Features().UnixReason)
	}
	inKernel, err := d.store.BaselineRevision()
	if err != nil {
		return err
	}
	if inKernel != dec.Revision {
		if err := d.enf.ClearSlot(loader.BaselineSlot); err != nil {
			return fmt.Errorf("baseline: %w", err)
		}
	}
	if err := d.enf.WriteRules(loader.BaselineSlot, rs); err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	if err := d.store.SetBaselineRevision(dec.Revision); err != nil {
		return err
	}
	d.mu.Lock()
	d.baselineRevision, d.baselineRules = dec.Revision, rs.Count()
	d.mu.Unlock()
	d.node.SetBaselineRevision(dec.Revision)
	d.log.Info("baseline in force", "revision", dec.Revision, "rules", rs.Count())
	return nil
}

// attachRoots binds every root to the baseline, then attaches the programs
// there. From then on a cgroup created below a root is confined from its
// first instruction: its processes find the root's binding, or nothing
// (refused), never an empty map.
func (d *Daemon) attachRoots() error {
	for _, r := range d.cfg.Roots {
		st := api.Root{Path: r}
		dir := filepath.Join(d.cgRoot, r)
		// Below MaxWorkloadLevel, or the root's subtree would not be found.
		err := loader.CheckWorkloadLevel(r)
		if err == nil {
			err = os.MkdirAll(dir, 0o755)
		}
		if err == nil {
			st.CgroupID, err = loader.CgroupID(dir)
		}
		if err == nil {
			err = d.enf.BindWorkload(st.CgroupID, loader.BaselineSlot, loader.WorkloadMode{})
		}
		if err == nil {
			err = d.enf.AttachCgroup(dir)
		}
		if err != nil {
			return fmt.Errorf("root %s: %w", r, err)
		}
		st.Attached = true
		d.roots = append(d.roots, st)
		d.node.RememberCgroup(st.CgroupID, r)
		d.log.Info("root confined", "root", r, "cgroup_id", st.CgroupID)
	}
	return nil
}

func (d *Daemon) serve(ctx context.Context, reload <-chan os.Signal) error {
	ln, err := listen(d.cfg.Socket)
	if err != nil {
		return err
	}
	events, err := d.enf.Events()
	if err != nil {
		ln.Close()
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { d.node.ReadEvents(events) })
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

	srv := &http.Server{
		Handler:           d.routes(),
		ConnContext:       connContext,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 2)
	go func() { served <- srv.Serve(ln) }()
	d.log.Info("serving the task API", "socket", d.cfg.Socket)

	var msrv *http.Server
	if d.cfg.MetricsListen != "" {
		mln, err := net.Listen("tcp", d.cfg.MetricsListen)
		if err != nil {
			_ = srv.Close()
			return fmt.Errorf("metrics_listen: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", d.metrics.Handler())
		msrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { served <- msrv.Serve(mln) }()
		d.log.Info("serving metrics", "address", mln.Addr().String())
	}

	select {
	case err = <-served:
	case <-ctx.Done():
		d.log.Info("stopping; enforcement stays in force")
	}
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = srv.Shutdown(sctx)
	if msrv != nil {
		_ = msrv.Shutdown(sctx)
	}
	scancel()
	cancel()
	_ = events.Flush()
	wg.Wait()
	_ = events.Close()
	_ = os.Remove(d.cfg.Socket)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// listen opens the API socket. Anyone may connect: who may do what is
// decided per call from the kernel's peer credentials.
func listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("api socket: %w", err)
	}
	// A socket file left by a killed daemon refuses connections; replace it.
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
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

// close releases this process's handles only: pins stay, so the kernel
// keeps enforcing.
func (d *Daemon) close() {
	if d.node != nil {
		d.node.Wait()
	}
	if d.enf != nil {
		_ = d.enf.Close()
	}
	if d.audit != nil {
		_ = d.audit.Close()
	}
}
