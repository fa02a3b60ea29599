package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/config"
	"github.com/bridle-sh/bridle/daemon/server/api"
	"github.com/bridle-sh/bridle/daemon/tasks"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
	"github.com/bridle-sh/bridle/policy/engine"
)

func (d *Daemon) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST /v1/tasks", d.guard(true, d.startTask))
	mux.Handle("DELETE /v1/tasks/{id}", d.guard(true, d.endTask))
	mux.Handle("GET /v1/tasks", d.guard(false, d.listTasks))
	mux.Handle("GET /v1/status", d.guard(false, d.status))
	return mux
}

// guard admits a call by the caller's kernel-reported credentials. A
// process inside a confined root is refused every call, reads included: a
// workload never starts, widens or ends a task, even its own, and learns
// nothing about other tasks. Mutating calls need an admin (root, or a uid
// or gid the config names).
func (d *Daemon) guard(mutating bool, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := peerFrom(r.Context())
		var reason string
		switch root, inRoot := d.cfg.RootOf(p.Cgroup); {
		case p.Err != nil:
			reason = fmt.Sprintf("caller could not be identified: %v", p.Err)
		case inRoot:
			reason = fmt.Sprintf("caller is a workload (cgroup %s under root %s): workloads may not use the task API", p.Cgroup, root)
		case mutating && !d.cfg.IsAdmin(p.UID, p.Groups):
			reason = fmt.Sprintf("uid %d is not an admin of this node", p.UID)
		}
		if reason != "" {
			d.refuse(w, r, p, reason)
			return
		}
		h(w, r)
	})
}

// refuse answers 403, logs the refusal and records it in the audit log.
func (d *Daemon) refuse(w http.ResponseWriter, r *http.Request, p Peer, reason string) {
	call := r.Method + " " + r.URL.Path
	d.log.Warn("api call refused", "call", call, "uid", p.UID, "gid", p.GID, "pid", p.PID, "cgroup", p.Cgroup, "reason", reason)
	rec := Record{
		Record: audit.Record{
			Time: audit.Timestamp(time.Now()), Node: d.cfg.NodeName, Workload: p.Cgroup,
			PID: uint32(p.PID), Comm: comm(p.PID), Action: "api", Path: call,
			Verdict: "deny", Reason: reason, Enforcement: "daemon",
		},
		PolicyRevision: d.engine.Revision(),
	}
	if _, in := d.cfg.RootOf(p.Cgroup); in {
		rec.Identity = d.cfg.Identity(p.Cgroup)
	}
	if err := d.audit.Write(rec); err != nil {
		d.log.Error("audit", "err", err)
	}
	writeError(w, http.StatusForbidden, errors.New(reason))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, err error) {
	body := api.Error{Error: err.Error()}
	var denied *engine.DeniedError
	if errors.As(err, &denied) {
		body.Reasons = denied.Reasons
	}
	writeJSON(w, status, body)
}

// apiError is an error with the HTTP status it answers with.
type apiError struct {
	status int
	err    error
}

func (e *apiError) Error() string { return e.err.Error() }
func (e *apiError) Unwrap() error { return e.err }

func badRequest(format string, args ...any) error {
	return &apiError{http.StatusBadRequest, fmt.Errorf(format, args...)}
}

func (d *Daemon) startTask(w http.ResponseWriter, r *http.Request) {
	t, err := d.start(r)
	if err != nil {
		status := http.StatusInternalServerError
		var ae *apiError
		var denied *engine.DeniedError
		switch {
		case errors.As(err, &ae):
			status = ae.status
		case errors.As(err, &denied):
			status = http.StatusForbidden
		case errors.Is(err, tasks.ErrWorkloadBusy):
			status = http.StatusConflict
		case errors.Is(err, tasks.ErrNoSlot), errors.Is(err, engine.ErrNoPolicy):
			status = http.StatusServiceUnavailable
		}
		d.log.Warn("task start failed", "status", status, "err", err)
		writeError(w, status, err)
		return
	}
	writeJSON(w, http.StatusCreated, t)
}

func (d *Daemon) start(r *http.Request) (api.Task, error) {
	var req api.StartRequest
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return api.Task{}, badRequest("request: %w", err)
	}
	cg, err := d.workloadOf(req)
	if err != nil {
		return api.Task{}, err
	}
	var ttl time.Duration
	if req.TTL != "" {
		if ttl, err = time.ParseDuration(req.TTL); err != nil || ttl < 0 {
			return api.Task{}, badRequest("ttl %q: want a positive duration like 30m", req.TTL)
		}
	}
	cgID, err := loader.CgroupID(filepath.Join(d.cgRoot, cg))
	if err != nil {
		return api.Task{}, badRequest("workload %s: %w", cg, err)
	}
	p := peerFrom(r.Context())
	id := tasks.NewTaskID()
	identity := d.cfg.Identity(cg)
	dec2, err := d.engine.Evaluate(r.Context(), engine.Input{
		Identity:  identity,
		Workload:  engine.Workload{Cgroup: cg},
		Task:      &engine.Task{ID: id, Intent: req.Intent, Labels: req.Labels, TTL: ttl},
		Requester: engine.Requester{UID: p.UID, GID: p.GID},
	})
	if err != nil {
		return api.Task{}, err
	}
	rs, err := policy.Compile(dec2.Envelope)
	if err != nil {
		return api.Task{}, &apiError{http.StatusUnprocessableEntity, fmt.Errorf("envelope of policy %s: %w", dec2.Revision, err)}
	}
	if len(rs.Unix) > 0 && !d.enf.Features().UnixHooks {
		return api.Task{}, &apiError{http.StatusUnprocessableEntity, fmt.Errorf("the envelope allows unix sockets, which this kernel cannot enforce: %s", d.enf.Features().UnixReason)}
	}
	// The revision is known before the task exists, so the first events
	// of the task already name it.
	d.mu.Lock()
	d.revisions[id] = dec2.Revision
	d.mu.Unlock()
	t, err := d.tasks.Start(id, tasks.StartRequest{
		Workload: cg, CgroupID: cgID, Identity: identity, Intent: req.Intent, Labels: req.Labels,
		TTL: dec2.Envelope.TTL, Rules: rs, Mode: loader.WorkloadMode{},
	})
	if err != nil {
		d.mu.Lock()
		delete(d.revisions, id)
		d.mu.Unlock()
		return api.Task{}, err
	}
	// A task the store does not hold would be forgotten by the next
	// daemon and outlive its revocation: undo it instead.
	if err := d.persist(); err != nil {
		_ = d.tasks.End(id, "could not be persisted")
		return api.Task{}, fmt.Errorf("task %s not started: %w", id, err)
	}
	d.log.Info("task started", "task", id, "workload", cg, "identity", identity, "intent", req.Intent,
		"rules", t.Rules, "expires", t.Expires, "revision", dec2.Revision, "by_uid", p.UID)
	return api.Task{Task: t, PolicyRevision: dec2.Revision}, nil
}

// workloadOf resolves the workload a start request names: a cgroup below
// one of the roots (a root itself would grant the task to every workload
// in it).
func (d *Daemon) workloadOf(req api.StartRequest) (string, error) {
	var cg string
	switch {
	case req.Workload != "" && req.PID != 0:
		return "", badRequest("name the workload by cgroup or by pid, not both")
	case req.Workload != "":
		var err error
		if cg, err = config.CgroupPath(req.Workload); err != nil {
			return "", badRequest("workload: %w", err)
		}
	case req.PID > 0:
		var err error
		if cg, err = procCgroup(req.PID); err != nil {
			return "", badRequest("pid %d: %w", req.PID, err)
		}
	default:
		return "", badRequest("no workload: pass a cgroup path or a pid")
	}
	root, ok := d.cfg.RootOf(cg)
	if !ok {
		return "", badRequest("workload %s is not under a confined root (%v)", cg, d.cfg.Roots)
	}
	if cg == root {
		return "", badRequest("workload %s is a root itself: a task governs one workload cgroup below a root", cg)
	}
	if _, err := os.Stat(filepath.Join(d.cgRoot, cg)); err != nil {
		return "", badRequest("workload %s: no such cgroup", cg)
	}
	return cg, nil
}

func (d *Daemon) endTask(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	t, ok := d.tasks.Get(id)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Errorf("no task %s", id))
		return
	}
	d.mu.Lock()
	rev := d.revisions[id]
	d.mu.Unlock()
	p := peerFrom(r.Context())
	if err := d.tasks.End(id, fmt.Sprintf("ended by uid %d", p.UID)); err != nil {
		d.log.Error("task end failed", "task", id, "err", err)
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	writeJSON(w, http.StatusOK, api.Task{Task: t, PolicyRevision: rev})
}

func (d *Daemon) listTasks(w http.ResponseWriter, _ *http.Request) {
	list := d.tasks.List()
	sort.Slice(list, func(i, j int) bool { return list[i].Started.Before(list[j].Started) })
	out := make([]api.Task, 0, len(list))
	d.mu.Lock()
	for _, t := range list {
		out = append(out, api.Task{Task: t, PolicyRevision: d.revisions[t.ID]})
	}
	d.mu.Unlock()
	writeJSON(w, http.StatusOK, api.TaskList{Tasks: out})
}

// Status is the body of GET /v1/status.
type Status struct {
	Node      string         `json:"node"`
	Features  map[string]any `json:"features"`
	Roots     []rootState    `json:"roots"`
	Policy    PolicyStatus   `json:"policy"`
	Tasks     int            `json:"tasks"`
	RingDrops uint64         `json:"ring_drops"`
	// Degraded lists what is not as it should be; empty when all is well.
	Degraded []string `json:"degraded"`
}

// PolicyStatus is the policy part of Status.
type PolicyStatus struct {
	Revision         string    `json:"revision"`
	Source           string    `json:"source"`
	Loaded           time.Time `json:"loaded,omitzero"`
	BaselineRevision string    `json:"baseline_revision"`
	BaselineRules    int       `json:"baseline_rules"`
	LastError        string    `json:"last_error,omitempty"`
	Failures         uint64    `json:"failures"`
}

func (d *Daemon) status(w http.ResponseWriter, _ *http.Request) {
	f := d.enf.Features()
	ps := d.engine.Status()
	st := Status{
		Node: d.cfg.NodeName,
		Features: map[string]any{
			"kernel": f.Kernel, "exec_mode": f.ExecMode, "exec_mode_reason": f.ExecModeReason,
			"unix_hooks": f.UnixHooks, "unix_reason": f.UnixReason, "btf": f.BTF,
			"socket_destroy": f.SocketDestroy.Method, "socket_destroy_reason": f.SocketDestroy.Reason,
		},
		Roots: d.roots,
		Policy: PolicyStatus{
			Revision: ps.Revision, Source: ps.Source, Loaded: ps.Loaded,
			BaselineRevision: d.baselineRevision, BaselineRules: d.baselineRules, Failures: ps.Failures,
		},
		Tasks:    len(d.tasks.List()),
		Degraded: []string{},
	}
	if ps.LastError != nil {
		st.Policy.LastError = ps.LastError.Error()
		st.Degraded = append(st.Degraded, "last policy load failed: "+ps.LastError.Error())
	}
	drops, err := d.enf.Drops()
	if err != nil {
		st.Degraded = append(st.Degraded, "ring buffer drops unknown: "+err.Error())
	}
	st.RingDrops = drops
	if drops > 0 {
		st.Degraded = append(st.Degraded, fmt.Sprintf("%d decision events dropped (ring buffer full)", drops))
	}
	for _, r := range d.roots {
		if !r.Attached {
			st.Degraded = append(st.Degraded, "root "+r.Path+" not attached")
		}
	}
	if !f.UnixHooks {
		st.Degraded = append(st.Degraded, "unix sockets not enforced: "+f.UnixReason)
	}
	writeJSON(w, http.StatusOK, st)
}
