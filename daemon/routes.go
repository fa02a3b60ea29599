package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/daemon/api"
	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/config"
	"github.com/bridle-sh/bridle/daemon/identity"
	"github.com/bridle-sh/bridle/daemon/node"
	"github.com/bridle-sh/bridle/daemon/pods"
	"github.com/bridle-sh/bridle/daemon/tasks"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
	"github.com/bridle-sh/bridle/policy/engine"
)

func (d *Daemon) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST /v1/tasks", d.guard(needAdmin, d.startTask))
	mux.Handle("DELETE /v1/tasks/{id}", d.guard(needAdmin, d.endTask))
	mux.Handle("GET /v1/tasks", d.guard(needReader, d.listTasks))
	mux.Handle("GET /v1/events", d.guard(needAdmin, d.events))
	mux.Handle("GET /v1/status", d.guard(needReader, d.status))
	mux.Handle("GET /v1/approvals", d.guard(needReader, d.listApprovals))
	mux.Handle("GET /v1/approvals/watch", d.guard(needReader, d.watchApprovals))
	// Who may answer is the request's approvable entry's to say (its
	// approvers, by default the admins): the guard only turns workloads
	// and unproven callers away, and the manager decides.
	mux.Handle("POST /v1/approvals/{id}/approve", d.guard(needCaller, d.approve))
	mux.Handle("POST /v1/approvals/{id}/deny", d.guard(needCaller, d.deny))
	mux.Handle("POST /v1/approvals/web-link", d.guard(needAdmin, d.approvalsWebLink))
	return mux
}

// access is what a call needs of its caller.
type access int

const (
	// needReader: an admin, or a uid or gid of config readers. Tasks
	// carry intents, labels and identities; the status, the policy's
	// errors and the node's roots: not for every local user.
	needReader access = iota
	// needAdmin: root, or a uid or gid of config admins. Starting and
	// ending tasks, and event streams (which show what workloads do).
	needAdmin
	// needCaller: any caller that is not a workload; what it may do is
	// decided past the guard (an approval's approvers).
	needCaller
)

// guard admits a call by who the caller is (see callerOf and authorize):
// one guard for the unix socket and the TCP listener. A process inside a
// confined root is refused every call, reads included: a workload never
// starts, widens or ends a task, even its own, and learns nothing about
// other tasks.
func (d *Daemon) guard(need access, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := d.callerOf(r)
		var unauth *unauthenticatedError
		if errors.As(err, &unauth) {
			d.refuseUnauthenticated(w, r, c, unauth.reason)
			return
		}
		if reason := d.authorize(c, need); reason != "" {
			d.refuse(w, r, c, reason)
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, c)))
	})
}

// refuse answers 403, counts the refusal, and logs it and records it in
// the audit log unless the caller is over its rate of recorded refusals
// (then the connection is closed after the answer).
func (d *Daemon) refuse(w http.ResponseWriter, r *http.Request, c Caller, reason string) {
	call := r.Method + " " + r.URL.Path
	d.metrics.APIRefused()
	if !d.recordRefusal(c, call, reason) {
		w.Header().Set("Connection", "close")
	}
	writeError(w, http.StatusForbidden, errors.New(reason))
}

// refuseUnauthenticated answers 401 to a call whose proof of identity did
// not hold, with the reason, and counts and records it like any refusal.
func (d *Daemon) refuseUnauthenticated(w http.ResponseWriter, r *http.Request, c Caller, reason string) {
	call := r.Method + " " + r.URL.Path
	d.metrics.APIRefused()
	d.metrics.APIUnauthenticated(c.Auth)
	if !d.recordRefusal(c, call, reason) {
		w.Header().Set("Connection", "close")
	}
	if c.Auth == engine.AuthJWTSVID {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
	}
	writeError(w, http.StatusUnauthorized, errors.New(reason))
}

// recordRefusal logs a refused call or connection and writes its audit
// record, within the caller's rate (by uid, or by IP over TCP); it reports
// whether it did. The first record after a quiet spell says how many were
// left out.
func (d *Daemon) recordRefusal(c Caller, call, reason string) bool {
	key := c.refusalKey()
	ok, skipped := d.refusals.record(key)
	if !ok {
		d.metrics.APIRefusalUnrecorded()
		return false
	}
	if skipped > 0 {
		reason += fmt.Sprintf(" (%d earlier refusals of %s not recorded one by one: over %d a second)", skipped, key, refusalsPerSecond)
	}
	p := c.Peer
	rec := audit.Record{
		Time: audit.Timestamp(time.Now()), Node: d.cfg.NodeName,
		Action: bpf.ActionAPI, Path: call,
		Verdict: bpf.VerdictDeny, Reason: reason, Enforcement: bpf.EnforcementDaemon,
		PolicyRevision: d.engine.Revision(),
	}
	if c.overTCP() {
		d.log.Warn("api call refused", "call", call, "remote", c.Remote, "identity", c.Identity.String(), "reason", reason)
		if ap, err := netip.ParseAddrPort(c.Remote); err == nil {
			rec.Address, rec.Port = ap.Addr().Unmap().String(), ap.Port()
		}
	} else {
		d.log.Warn("api call refused", "call", call, "uid", p.UID, "gid", p.GID, "pid", p.PID, "cgroup", p.Cgroup, "auth", c.Auth, "identity", c.Identity.String(), "reason", reason)
		rec.Workload, rec.PID, rec.Comm = p.Cgroup, uint32(p.PID), p.Comm
		if _, in := d.cfg.RootOf(p.Cgroup); in || d.inAgentPod(p.Cgroup) {
			known := d.knownIdentity(p.Cgroup)
			rec.Identity, rec.IdentitySource = known.ID, known.Source
		}
	}
	if !c.Identity.IsZero() {
		rec.Identity = c.Identity.String() // what the caller proved
	}
	d.audit.Write(rec)
	return true
}

// knownIdentity is a workload's identity for a record, without waiting;
// before the node exists, the static mapping's.
func (d *Daemon) knownIdentity(cgroup string) identity.Identity {
	if d.node == nil {
		return identity.NewStatic(d.cfg.StaticIdentity(), d.cgRoot).Known(cgroup)
	}
	return d.node.Identities().Known(cgroup)
}

// connectionRefused is told about an API connection closed over a limit.
func (d *Daemon) connectionRefused(c Caller, reason string) {
	d.metrics.APIConnectionRefused()
	d.recordRefusal(c, "connect", reason)
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
		case errors.Is(err, tasks.ErrNoSlot), errors.Is(err, engine.ErrNoPolicy), identity.IsUnavailable(err):
			status = http.StatusServiceUnavailable
		}
		d.log.Warn("task start failed", "status", status, "err", err)
		writeError(w, status, err)
		return
	}
	// What Bridle cannot give a workload it did not launch, it checks
	// (a pod's settings are its spec's, not a unit's).
	if t.Pod == "" {
		d.hardening.request(t.Workload)
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
	cg, pod, err := d.workloadOf(r.Context(), req)
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
	var runAs []policy.Principal
	for _, u := range req.RunAs {
		runAs = append(runAs, policy.Principal{UID: u.UID, GIDs: u.GIDs})
	}
	t, err := d.node.Start(r.Context(), node.Request{
		Workload: cg, Intent: req.Intent, Labels: req.Labels, TTL: ttl,
		Grants: node.NewGrants(grants), Parent: req.Parent, Mode: mode, RunAs: runAs,
		Requester: callerFrom(r.Context()).Requester(), Pod: pod,
	})
	return wireTask(t), err
}

// wireTask is a task as the API reports it.
func wireTask(t node.Task) api.Task {
	w := api.Task{
		ID: t.ID, Workload: t.Workload, CgroupID: t.CgroupID, Identity: t.Identity, IdentitySource: t.IdentitySource,
		Intent: t.Intent, Labels: t.Labels, Slot: t.Slot, Generation: t.Generation,
		Started: t.Started, Expires: t.Expires, Rules: t.Rules,
		Mode:           api.Mode{Audit: t.Mode.Audit, EmitAllow: t.Mode.EmitAllow},
		PolicyRevision: t.PolicyRevision, Parent: t.Parent, Pod: t.Pod,
	}
	for _, c := range t.KeepUnix {
		w.KeepUnix = append(w.KeepUnix, api.UnixConn{Inode: c.Inode, Peer: c.Peer})
	}
	return w
}

// workloadOf resolves the workload a start request names: a cgroup below
// one of the roots (a root itself would grant the task to every workload
// in it), or an agent pod's cgroup or one of its containers'. pod is the
// task's pod link, "" for a workload of no pod.
func (d *Daemon) workloadOf(ctx context.Context, req api.StartRequest) (cg, pod string, err error) {
	named := 0
	for _, set := range []bool{req.Workload != "", req.PID != 0, req.Pod != ""} {
		if set {
			named++
		}
	}
	switch {
	case named > 1:
		return "", "", badRequest("name the workload by one of cgroup, pid and pod")
	case req.Pod != "":
		if d.pods == nil {
			return "", "", badRequest("pod %s: kubernetes is not enabled on this node", req.Pod)
		}
		t, err := d.pods.Resolve(ctx, req.Pod, d.cgRoot)
		if err != nil {
			return "", "", err
		}
		return t.Cgroup, t.Pod.Link(), nil
	case req.Workload != "":
		if cg, err = config.CgroupPath(req.Workload); err != nil {
			return "", "", badRequest("workload: %w", err)
		}
	case req.PID > 0:
		if cg, err = liveCgroup(req.PID); err != nil {
			return "", "", badRequest("pid %d: %w", req.PID, err)
		}
	default:
		return "", "", badRequest("no workload: pass a cgroup path, a pid or a pod")
	}
	if cg, err = d.checkWorkload(cg); err != nil {
		return "", "", err
	}
	if p, ok := d.agentPodOf(cg); ok {
		pod = p.Link()
	}
	return cg, pod, nil
}

// agentPodOf returns the confined agent pod a cgroup belongs to.
func (d *Daemon) agentPodOf(cg string) (pods.Pod, bool) {
	if d.podIndex == nil {
		return pods.Pod{}, false
	}
	p, ok := d.podIndex.ByCgroup(cg)
	return p, ok && p.Bound
}

func (d *Daemon) checkWorkload(cg string) (string, error) {
	if _, ok := d.agentPodOf(cg); ok {
		// A pod's own cgroup may have a task: it is the pod's workload.
		if _, err := os.Stat(filepath.Join(d.cgRoot, cg)); err != nil {
			return "", badRequest("workload %s: no such cgroup", cg)
		}
		return cg, nil
	}
	root, ok := d.cfg.RootOf(cg)
	if !ok {
		return "", badRequest("workload %s is not under a confined root (%v) nor an agent pod's", cg, d.cfg.Roots)
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
	t, err := d.node.End(id, "ended by "+callerFrom(r.Context()).String())
	switch {
	case errors.Is(err, node.ErrNoTask):
		writeError(w, http.StatusNotFound, fmt.Errorf("no task %s", id))
	case err != nil:
		d.log.Error("task end failed", "task", id, "err", err)
		writeError(w, http.StatusInternalServerError, err)
	default:
		writeJSON(w, http.StatusOK, wireTask(t))
	}
}

func (d *Daemon) listTasks(w http.ResponseWriter, _ *http.Request) {
	list := d.node.List()
	out := api.TaskList{Tasks: make([]api.Task, 0, len(list))}
	for _, t := range list {
		out.Tasks = append(out.Tasks, wireTask(t))
	}
	writeJSON(w, http.StatusOK, out)
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
	// The stream lasts as long as the workload, past the server's write
	// timeout; each write gets a deadline of its own instead, so a reader
	// that stops reading is cut off rather than holding the connection.
	rc := http.NewResponseController(w)
	write := func(line api.StreamLine, flush bool) error {
		_ = rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
		if err := json.NewEncoder(w).Encode(line); err != nil {
			return err
		}
		if flush {
			return rc.Flush()
		}
		return nil
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	_ = rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	if err := rc.Flush(); err != nil {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case rec, ok := <-sub.C:
			if !ok {
				_ = write(api.StreamLine{End: &api.StreamEnd{Lost: sub.Lost()}}, true)
				return
			}
			// Flush when the burst is over, not per record.
			if err := write(api.StreamLine{Record: &rec}, len(sub.C) == 0); err != nil {
				return
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
		Node:     d.cfg.NodeName,
		Features: f.Map(),
		Roots:    d.rootStates(),
		Policy: api.PolicyStatus{
			Revision: ps.Revision, Source: ps.Source, Loaded: ps.Loaded,
			BaselineRevision: baseRev, BaselineRules: baseRules, Failures: ps.Failures,
		},
		Tasks:     len(d.node.List()),
		AuditLost: d.audit.Lost(),
		Degraded:  []string{},
		Hardening: d.hardeningStatus(),
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
	} else if f.UnixShutdown.Method == loader.UnixShutdownNone {
		st.Degraded = append(st.Degraded, "unix connections survive the end of their task: "+f.UnixShutdown.Reason)
	}
	if !f.ListenHooks {
		st.Degraded = append(st.Degraded, "bind and listen not enforced (workloads may serve inbound connections): "+f.ListenReason)
	}
	if !f.SockoptHook {
		st.Degraded = append(st.Degraded, "source routing options not refused at setsockopt: "+f.SockoptReason)
	}
	if d.dns != nil {
		v4, v6 := d.dns.Addrs()
		s := d.dns.Stats()
		st.DNS = &api.DNSStatus{
			Upstream: d.dns.Upstream().String(), Allowed: s.Allowed, Denied: s.Denied,
			CacheHits: s.CacheHits, Forwarded: s.Forwarded, UpstreamFailures: s.UpstreamFailures,
		}
		if v4.IsValid() {
			st.DNS.Listen4 = v4.String()
		}
		if v6.IsValid() {
			st.DNS.Listen6 = v6.String()
		}
	} else {
		st.Degraded = append(st.Degraded, "DNS is not steered to Bridle's resolver (names in envelopes resolve nothing; port 53 is judged by the rules): "+f.DNSRedirectReason)
	}
	if d.workloadAPI != nil {
		if why := d.workloadAPI.Degraded(); why != "" {
			st.Degraded = append(st.Degraded, "callers with SVIDs are refused: "+why)
		}
	}
	if d.pods != nil {
		ps := d.pods.Status()
		st.Kubernetes = &api.KubernetesStatus{Node: ps.Node, Synced: ps.Synced, Watched: ps.Watched, Bound: ps.Bound, Hook: ps.Hook, Errors: ps.Errors}
		if !ps.Synced {
			st.Degraded = append(st.Degraded, fmt.Sprintf("pods of node %s not listed yet: agent pods are confined once they are", ps.Node))
		}
		if !ps.Hook {
			st.Degraded = append(st.Degraded, "agent containers may run briefly before binding (no runtime hook)")
		}
		st.Degraded = append(st.Degraded, ps.Errors...)
	}
	ids := d.node.Identities().Status()
	st.Identity = &ids
	if ids.Degraded != "" {
		st.Degraded = append(st.Degraded, fmt.Sprintf("identity source %s degraded since %s: %s", ids.Source, ids.Since.UTC().Format(time.RFC3339), ids.Degraded))
	}
	d.mu.Lock()
	for _, name := range []string{"api", "api-tcp", "metrics"} {
		l, ok := d.listeners[name]
		if !ok {
			continue
		}
		st.Listeners = append(st.Listeners, l)
		if !l.Bound {
			st.Degraded = append(st.Degraded, fmt.Sprintf("%s listener %s not bound (bridled keeps enforcing and binds it again): %s", name, l.Address, l.Error))
		}
	}
	if d.fdErr != nil {
		st.Degraded = append(st.Degraded, d.fdErr.Error())
	}
	d.mu.Unlock()
	// What bridled governs it did not launch: without the LSM guards
	// nothing of Bridle's refuses these to its workloads.
	if !f.FamilyGuard {
		st.Degraded = append(st.Degraded, "address families not restricted for adopted workloads: "+f.FamilyGuardReason)
	}
	if !f.UsernsGuard {
		st.Degraded = append(st.Degraded, "user namespaces not refused to adopted workloads: "+f.UsernsGuardReason)
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
