// Package server is bridled, Bridle's node daemon: it confines every cgroup
// below the configured roots with the policy's baseline, serves the task API
// on a unix socket, keeps tasks across restarts and turns the kernel's
// decisions into audit records.
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/bridle-sh/bridle/daemon/config"
	"github.com/bridle-sh/bridle/daemon/store"
	"github.com/bridle-sh/bridle/daemon/tasks"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
	"github.com/bridle-sh/bridle/policy/engine"
)

// Daemon is one running bridled.
type Daemon struct {
	cfg    *config.Config
	log    *slog.Logger
	cgRoot string // cgroup v2 mount point

	engine *engine.Engine
	enf    *loader.Enforcer
	tasks  *tasks.Manager
	store  *store.Store
	audit  *auditLog

	roots            []rootState
	baselineRevision string
	baselineRules    int

	mu        sync.Mutex
	revisions map[string]string // task id -> policy revision of its envelope
	paths     map[uint64]string // cgroup id -> path, for decision events
}

// rootState is one configured root as the daemon found it.
type rootState struct {
	Path     string `json:"path"`
	CgroupID uint64 `json:"cgroup_id"`
	Attached bool   `json:"attached"`
	Error    string `json:"error,omitempty"`
}

// Run starts bridled with cfg and serves until ctx ends. On return the
// kernel keeps enforcing: nothing is unpinned, so the baseline and every
// task stay in force until the next bridled takes over.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	d := &Daemon{cfg: cfg, log: log, revisions: map[string]string{}, paths: map[uint64]string{}}
	if err := d.setup(ctx); err != nil {
		d.close()
		return err
	}
	defer d.close()
	return d.serve(ctx)
}

func (d *Daemon) setup(ctx context.Context) error {
	var err error
	if d.cgRoot, err = loader.CgroupRoot(); err != nil {
		return err
	}
	// The policy comes first: a daemon that cannot decide envelopes must
	// not touch the kernel's state at all.
	d.engine = engine.NewEngine(engine.WithLogger(d.log.With("component", "policy")))
	if err := d.engine.LoadDir(ctx, d.cfg.PolicyDir); err != nil {
		return err
	}
	if d.audit, err = openAudit(d.cfg.AuditFile); err != nil {
		return err
	}
	if d.store, err = store.Open(d.cfg.StateDir); err != nil {
		return err
	}
	stored, err := d.store.Load()
	if err != nil {
		return err
	}
	if d.enf, err = loader.Load(loader.Options{PinDir: d.cfg.PinDir, WakeupBytes: 64 << 10}); err != nil {
		return err
	}
	f := d.enf.Features()
	d.log.Info("programs loaded", "pin_dir", d.cfg.PinDir, "kernel", f.Kernel, "exec_mode", f.ExecMode,
		"unix_hooks", f.UnixHooks, "socket_destroy", f.SocketDestroy.Method)
	if err := d.writeBaseline(ctx); err != nil {
		return err
	}
	d.tasks = tasks.NewManager(d.enf, d.taskEnded)
	if err := d.attachRoots(); err != nil {
		return err
	}
	d.restore(stored)
	return nil
}

// writeBaseline puts the policy's baseline in slot 0, which every workload
// without a task is bound to. When the revision in the kernel is the same
// (a restart), its rules are rewritten in place: workloads never see the
// slot empty. When the revision changed, the slot is cleared first so a
// baseline that shrank leaves nothing behind; for that moment workloads
// without a task are refused more, never allowed more.
func (d *Daemon) writeBaseline(ctx context.Context) error {
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
		return fmt.Errorf("baseline: %w", err)
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
	d.baselineRevision, d.baselineRules = dec.Revision, rs.Count()
	d.log.Info("baseline in force", "revision", dec.Revision, "rules", rs.Count())
	return nil
}

// attachRoots binds every root to the baseline, then attaches the programs
// there. From then on a cgroup created below a root is confined from its
// first instruction: its processes find the root's binding, or nothing
// (refused), never an empty map.
func (d *Daemon) attachRoots() error {
	for _, r := range d.cfg.Roots {
		st := rootState{Path: r}
		dir := filepath.Join(d.cgRoot, r)
		err := os.MkdirAll(dir, 0o755)
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
		d.mu.Lock()
		d.paths[st.CgroupID] = r
		d.mu.Unlock()
		d.log.Info("root confined", "root", r, "cgroup_id", st.CgroupID)
	}
	return nil
}

// restore takes over the tasks a previous bridled left in force. Their
// rules and bindings are still in the pinned maps; tasks whose workload is
// gone are cleared, tasks that expired while no daemon ran are revoked now.
func (d *Daemon) restore(stored []store.Entry) {
	for _, e := range stored {
		t := e.Task
		log := d.log.With("task", t.ID, "workload", t.Workload, "slot", t.Slot)
		id, err := loader.CgroupID(filepath.Join(d.cgRoot, t.Workload))
		if err != nil || id != t.CgroupID {
			log.Warn("workload of stored task is gone; clearing its slot", "err", err)
			_ = d.enf.UnbindWorkload(t.CgroupID)
			if err := d.enf.ClearSlot(t.Slot); err != nil {
				log.Error("clear slot", "err", err)
			}
			continue
		}
		if err := d.tasks.Adopt(t); err != nil {
			// Without the manager's bookkeeping the task cannot be
			// ended later: revoke it now rather than leave it over-granted.
			log.Error("cannot adopt stored task; revoking it", "err", err)
			if err := d.enf.BindWorkload(t.CgroupID, loader.BaselineSlot, t.Mode); err != nil {
				log.Error("revoke", "err", err)
			}
			continue
		}
		d.mu.Lock()
		d.revisions[t.ID] = e.PolicyRevision
		d.mu.Unlock()
		if !t.Expires.IsZero() && !time.Now().Before(t.Expires) {
			log.Info("task expired while bridled was down; revoking", "expired", t.Expires)
			if err := d.tasks.End(t.ID, "expired"); err != nil {
				log.Error("revoke expired task", "err", err)
			}
			continue
		}
		log.Info("task re-adopted", "expires", t.Expires)
	}
	_ = d.persist()
}

// persist writes the tasks in force to the store.
func (d *Daemon) persist() error {
	list := d.tasks.List()
	d.mu.Lock()
	entries := make([]store.Entry, 0, len(list))
	for _, t := range list {
		entries = append(entries, store.Entry{Task: t, PolicyRevision: d.revisions[t.ID]})
	}
	d.mu.Unlock()
	sort.Slice(entries, func(i, j int) bool { return entries[i].Started.Before(entries[j].Started) })
	if err := d.store.Save(entries); err != nil {
		d.log.Error("persist tasks", "err", err)
		return err
	}
	return nil
}

// taskEnded is told about every task that ends, by call or by expiry.
func (d *Daemon) taskEnded(e tasks.End) {
	log := d.log.With("task", e.Task.ID, "workload", e.Task.Workload, "reason", e.Reason,
		"sockets_tcp", e.Sockets.TCP, "sockets_udp", e.Sockets.UDP)
	if e.SocketsErr != nil {
		log.Warn("task ended; connections opened under it may still be open", "err", e.SocketsErr)
	} else {
		log.Info("task ended")
	}
	_ = d.persist()
	d.mu.Lock()
	delete(d.revisions, e.Task.ID)
	d.mu.Unlock()
}

func (d *Daemon) serve(ctx context.Context) error {
	ln, err := listen(d.cfg.Socket)
	if err != nil {
		return err
	}
	events, err := d.enf.Events()
	if err != nil {
		ln.Close()
		return err
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.readEvents(events)
	}()
	srv := &http.Server{
		Handler:           d.routes(),
		ConnContext:       connContext,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	d.log.Info("serving the task API", "socket", d.cfg.Socket)

	select {
	case err = <-served:
	case <-ctx.Done():
		d.log.Info("stopping; enforcement stays in force")
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = srv.Shutdown(sctx)
		cancel()
	}
	_ = events.Flush()
	_ = events.Close()
	wg.Wait()
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
	if d.enf != nil {
		_ = d.enf.Close()
	}
	if d.audit != nil {
		_ = d.audit.Close()
	}
}

// openAudit opens where records go: a file opened for appending, or stdout.
func openAudit(path string) (*auditLog, error) {
	if path == "" || path == "-" {
		return newAuditLog(nopCloser{os.Stdout}), nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return newAuditLog(f), nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }
