package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/config"
	"github.com/bridle-sh/bridle/daemon/node"
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
	mux.Handle("GET /v1/events", d.guard(true, d.events))
	mux.Handle("GET /v1/status", d.guard(false, d.status))
	return mux
}

// guard admits a call by the caller's kernel-reported credentials. A
// process inside a confined root is refused every call, reads included: a
// workload never starts, widens or ends a task, even its own, and learns
// nothing about other tasks. Mutating calls (and event streams, which show
// what workloads do) need an admin: root, or a uid or gid the config
// names.
func (d *Daemon) guard(adminOnly bool, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := peerFrom(r.Context())
		var reason string
		switch root, inRoot := d.cfg.RootOf(p.Cgroup); {
		case p.Err != nil:
			reason = fmt.Sprintf("caller could not be identified: %v", p.Err)
		case inRoot:
			reason = fmt.Sprintf("caller is a workload (cgroup %s under root %s): workloads may not use the task API", p.Cgroup, root)
		case adminOnly && !d.cfg.IsAdmin(p.UID, p.Groups):
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
	d.metrics.APIRefused()
	rec := audit.Record{
		Time: audit.Timestamp(time.Now()), Node: d.cfg.NodeName, Workload: p.Cgroup,
		PID: uint32(p.PID), Comm: comm(p.PID), Action: "api", Path: call,
		Verdict: "deny", Reason: reason, Enforcement: "daemon",
		PolicyRevision: d.engine.Revision(),
	}
	if _, in := d.cfg.RootOf(p.Cgroup); in {
		rec.Identity = d.cfg.Identity(p.Cgroup)
	}
	d.audit.Write(rec)
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

func badRequest(format string, args ...any) error {
	return &node.RequestError{Err: fmt.Errorf(format, args...)}
}

func (d *Daemon) startTask(w http.ResponseWriter, r *http.Request) {
	t, err := d.start(r)
	if err != nil {
		status := http.StatusInternalServerError
		var re *node.RequestError
		var ee *node.EnvelopeError
		var denied *engine.DeniedError
		switch {
		case errors.As(err, &re):
			status = http.StatusBadRequest
		case errors.As(err, &ee):
			status = http.StatusUnprocessableEntity
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
	var mode loader.WorkloadMode
	switch req.Mode {
	case "", "enforce":
	case "audit":
		if !d.cfg.AllowAuditMode {
			return api.Task{}, badRequest("audit mode leaves a workload unconfined; this node's config does not allow it (allow_audit_mode)")
		}
		mode.Audit = true
	default:
		return api.Task{}, badRequest("mode %q: want enforce or audit", req.Mode)
	}
	mode.EmitAllow = req.LogAllowed
	grants, err := req.Grants.Envelope()
	if err != nil {
		return api.Task{}, badRequest("grants: %w", err)
	}
	p := peerFrom(r.Context())
	var runAs []policy.Principal
	for _, u := range req.RunAs {
		runAs = append(runAs, policy.Principal{UID: u.UID, GIDs: u.GIDs})
	}
	return d.node.Start(r.Context(), node.Request{
		Workload: cg, Intent: req.Intent, Labels: req.Labels, TTL: ttl,
		Grants: grants, Parent: req.Parent, Mode: mode, RunAs: runAs,
		Requester: engine.Requester{UID: p.UID, GID: p.GID},
	})
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
	return d.checkWorkload(cg)
}

func (d *Daemon) checkWorkload(cg string) (string, error) {
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
	p := peerFrom(r.Context())
	t, err := d.node.End(id, fmt.Sprintf("ended by uid %d", p.UID))
	switch {
	case errors.Is(err, node.ErrNoTask):
		writeError(w, http.StatusNotFound, fmt.Errorf("no task %s", id))
	case err != nil:
		d.log.Error("task end failed", "task", id, "err", err)
		writeError(w, http.StatusInternalServerError, err)
	default:
		writeJSON(w, http.StatusOK, t)
	}
}

func (d *Daemon) listTasks(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, api.TaskList{Tasks: d.node.List()})
}

// events streams a workload's decision records as JSON lines (see
// api.StreamLine) until the workload has neither a task nor a process
// left and every record is delivered; `bridle run` shows them as they
// happen.
func (d *Daemon) events(w http.ResponseWriter, r *http.Request) {
	cg, err := config.CgroupPath(r.URL.Query().Get("workload"))
	if err == nil {
		cg, err = d.checkWorkload(cg)
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	sub, err := d.node.Subscribe(cg)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	defer d.node.Unsubscribe(sub)
	flusher, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	if flusher != nil {
		flusher.Flush()
	}
	enc := json.NewEncoder(w)
	for {
		select {
		case <-r.Context().Done():
			return
		case rec, ok := <-sub.C:
			if !ok {
				_ = enc.Encode(api.StreamLine{End: &api.StreamEnd{Lost: sub.Lost()}})
				return
			}
			if err := enc.Encode(api.StreamLine{Record: &rec}); err != nil {
				return
			}
			// Flush when the burst is over, not per record.
			if len(sub.C) == 0 && flusher != nil {
				flusher.Flush()
			}
		}
	}
}

func (d *Daemon) status(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, d.Status())
}

// Status reports the daemon's state, and everything that is not as it
// should be in Degraded.
func (d *Daemon) Status() api.Status {
	f := d.enf.Features()
	ps := d.engine.Status()
	d.mu.Lock()
	baseRev, baseRules, baseErr := d.baselineRevision, d.baselineRules, d.baselineErr
	d.mu.Unlock()
	st := api.Status{
		Node: d.cfg.NodeName,
		Features: map[string]any{
			"kernel": f.Kernel, "exec_mode": f.ExecMode, "exec_mode_reason": f.ExecModeReason,
			"unix_hooks": f.UnixHooks, "unix_reason": f.UnixReason, "btf": f.BTF,
			"socket_destroy": f.SocketDestroy.Method, "socket_destroy_reason": f.SocketDestroy.Reason,
		},
		Roots: d.rootStates(),
		Policy: api.PolicyStatus{
			Revision: ps.Revision, Source: ps.Source, Loaded: ps.Loaded,
			BaselineRevision: baseRev, BaselineRules: baseRules, Failures: ps.Failures,
		},
		Tasks:     len(d.node.List()),
		AuditLost: d.audit.Lost(),
		Degraded:  []string{},
	}
	if ps.LastError != nil {
		st.Policy.LastError = ps.LastError.Error()
		st.Degraded = append(st.Degraded, "last policy load failed (the previous policy is in force): "+ps.LastError.Error())
	}
	if baseErr != nil {
		st.Degraded = append(st.Degraded, "baseline of the policy in force not applied: "+baseErr.Error())
	}
	drops, err := d.enf.Drops()
	if err != nil {
		st.Degraded = append(st.Degraded, "ring buffer drops unknown: "+err.Error())
	}
	st.RingDrops = drops
	if drops > 0 {
		st.Degraded = append(st.Degraded, fmt.Sprintf("%d decision events dropped (ring buffer full)", drops))
	}
	if st.AuditLost > 0 {
		st.Degraded = append(st.Degraded, fmt.Sprintf("%d decision records could not be written to the audit log", st.AuditLost))
	}
	for _, r := range st.Roots {
		if !r.Attached {
			st.Degraded = append(st.Degraded, fmt.Sprintf("root %s not confined: %s", r.Path, r.Error))
		}
	}
	if n := d.node.StuckSlots(); n > 0 {
		st.Degraded = append(st.Degraded, fmt.Sprintf("%d task slots could not be cleared after their tasks ended (kept out of use)", n))
	}
	if !f.UnixHooks {
		st.Degraded = append(st.Degraded, "unix sockets not enforced: "+f.UnixReason)
	}
	return st
}

// rootStates checks each root now: that its cgroup still exists with the
// id it was confined under, and that Bridle's programs are still attached
// to it (someone with root could detach them).
func (d *Daemon) rootStates() []api.Root {
	out := make([]api.Root, len(d.roots))
	for i, r := range d.roots {
		out[i] = r
		dir := filepath.Join(d.cgRoot, r.Path)
		id, err := loader.CgroupID(dir)
		switch {
		case err != nil:
			out[i].Attached, out[i].Error = false, err.Error()
		case id != r.CgroupID:
			out[i].Attached, out[i].Error = false, "the cgroup was removed and created again; restart bridled to confine it"
		default:
			if missing, err := d.enf.AttachedAt(dir); err != nil {
				out[i].Attached, out[i].Error = false, err.Error()
			} else if len(missing) > 0 {
				out[i].Attached, out[i].Error = false, fmt.Sprintf("programs not attached: %v", missing)
			}
		}
	}
	return out
}

// comm is a process's command name, for refusal records.
func comm(pid int32) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
