// Package node is the one place where tasks are decided and put in force
// on a machine: policy evaluation, compilation, the kernel write, the task
// store, and the decision records of the kernel's verdicts. bridled serves
// a Node over its API; `bridle run` without a daemon runs one in-process,
// so both follow the same path from request to enforcement.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/metrics"
	"github.com/bridle-sh/bridle/daemon/store"
	"github.com/bridle-sh/bridle/daemon/tasks"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
	"github.com/bridle-sh/bridle/policy/engine"
)

// GrantsRevision is the policy revision of a task whose envelope came from
// its request alone (`bridle run --allow-…` with no policy).
const GrantsRevision = "grants"

// Options wires a Node.
type Options struct {
	Kernel *loader.Enforcer
	// Engine decides envelopes. Without one, every task must bring its
	// envelope as Request.Grants.
	Engine *engine.Engine
	// Store keeps tasks across restarts; nil keeps them in memory only.
	Store      *store.Store
	NodeName   string
	CgroupRoot string   // the cgroup v2 mount point
	Roots      []string // cgroups below which baseline decisions are looked up by id
	// Identity maps a workload's cgroup to its SPIFFE ID.
	Identity func(cgroup string) string
	// Records receives every decision record: the kernel's verdicts, task
	// starts and ends, refused starts. Nil records nothing.
	Records func(audit.Record)
	Metrics *metrics.Metrics // nil: none
	Log     *slog.Logger
}

// Request asks for a task.
type Request struct {
	ID       string // "" for a fresh one
	Workload string // cgroup path below the cgroup v2 mount
	Intent   string
	Labels   map[string]string
	TTL      time.Duration // 0: as long as the policy allows
	// Grants caps the task to what it names: the task gets what both the
	// policy and Grants allow. Without an engine, Grants is the envelope.
	Grants *policy.Envelope
	// Parent is the task of the agent this task is a sub-agent of. The
	// task never gets more than the parent has, nor outlives it.
	Parent    string
	Mode      loader.WorkloadMode
	Requester engine.Requester
	// Identity overrides Options.Identity (for `bridle run --identity`).
	Identity string
	// RunAs are users the workload's processes will run as, besides those
	// of the processes in it at start: exec rules whose file one of them
	// can write are refused (see checkWritableExec).
	RunAs []policy.Principal
}

// Task is a task in force with the policy revision that decided it.
type Task = store.Entry

// RequestError is a request the node refuses as malformed or impossible
// (as opposed to refused by policy, an engine.DeniedError).
type RequestError struct{ Err error }

func (e *RequestError) Error() string { return e.Err.Error() }
func (e *RequestError) Unwrap() error { return e.Err }

// EnvelopeError is a policy's envelope that cannot be put in force (an
// exec path that does not exist on this node, too many port ranges): the
// policy's fault, not the request's.
type EnvelopeError struct{ Err error }

func (e *EnvelopeError) Error() string { return e.Err.Error() }
func (e *EnvelopeError) Unwrap() error { return e.Err }

func badRequest(format string, args ...any) error {
	return &RequestError{fmt.Errorf(format, args...)}
}

// Node keeps the tasks of one loaded enforcer.
type Node struct {
	opt   Options
	log   *slog.Logger
	tasks *tasks.Manager
	// family orders ends against starts of sub-agents: a parent's end
	// sees every child started under it.
	family sync.Mutex

	mu        sync.Mutex
	revisions map[string]string         // task id -> policy revision of its envelope
	rules     map[string]policy.RuleSet // task id -> rules in force, for sub-agents
	parents   map[string]string         // task id -> parent task id
	workloads map[uint64]string         // cgroup id -> task id, until its end is reported
	known     map[uint32]knownTask      // generation -> task in force or recently ended, for events
	baseline  string                    // revision of the baseline in force
	paths     map[uint64]string         // cgroup id -> path, for baseline records
	subs      map[*Subscription]struct{}
	// suppressed is the kernel's running total of suppressed events last
	// reported per task (cgroup id and generation); see Enrich.
	suppressed map[budgetKey]uint32
}

type budgetKey struct {
	cgroupID   uint64
	generation uint32
}

// knownTask names the task of a slot generation. It is kept for a while
// after the task ends, so that decisions it made just before, read from
// the ring afterwards, still name it.
type knownTask struct {
	task     tasks.Task
	revision string
	ended    time.Time // zero while in force
}

// endedRetention is how long an ended task still names late events.
const endedRetention = time.Minute

// New returns a node over an enforcer whose programs are loaded.
func New(opt Options) *Node {
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.Identity == nil {
		opt.Identity = func(string) string { return "" }
	}
	n := &Node{
		opt: opt, log: opt.Log,
		revisions: map[string]string{}, rules: map[string]policy.RuleSet{},
		parents: map[string]string{}, workloads: map[uint64]string{}, known: map[uint32]knownTask{},
		paths: map[uint64]string{}, subs: map[*Subscription]struct{}{},
		suppressed: map[budgetKey]uint32{},
	}
	n.tasks = tasks.NewManager(opt.Kernel, n.taskEnded)
	return n
}

// Wait waits until the rules of every ended task are deleted from the
// kernel; call it before releasing the enforcer.
func (n *Node) Wait() { n.tasks.Wait() }

// StuckSlots is how many task slots could not be cleared; see
// tasks.Manager.StuckSlots.
func (n *Node) StuckSlots() int { return n.tasks.StuckSlots() }

// Kernel returns the node's enforcer.
func (n *Node) Kernel() *loader.Enforcer { return n.opt.Kernel }

// SetBaselineRevision names the policy revision of the baseline in force,
// for the records of workloads without a task.
func (n *Node) SetBaselineRevision(rev string) {
	n.mu.Lock()
	n.baseline = rev
	n.mu.Unlock()
}

// Start decides and puts in force a task: the policy's envelope for the
// workload's identity and the request (capped by the request's grants and
// the parent's rules), compiled and written to the kernel, then recorded
// in the store. A task the store cannot record is undone.
func (n *Node) Start(ctx context.Context, req Request) (Task, error) {
	t, err := n.start(ctx, req)
	if err != nil {
		n.opt.Metrics.TaskStartFailed(failureKind(err))
		n.record(audit.Record{
			Time: audit.Timestamp(time.Now()), Workload: req.Workload, Identity: n.identity(req),
			Intent: req.Intent, Action: bpf.ActionTaskStart, Verdict: bpf.VerdictDeny, Reason: err.Error(),
			Enforcement: bpf.EnforcementDaemon, PolicyRevision: n.policyRevision(),
		})
		return Task{}, err
	}
	n.opt.Metrics.TaskStarted()
	n.record(audit.Record{
		Time: audit.Timestamp(t.Started), Workload: t.Workload, Identity: t.Identity, Task: t.ID,
		Intent: t.Intent, Action: bpf.ActionTaskStart, Verdict: bpf.VerdictAllow,
		Reason:      fmt.Sprintf("%d kernel rules, expires %s", t.Rules, expiry(t.Expires)),
		Enforcement: bpf.EnforcementDaemon, PolicyRevision: t.PolicyRevision,
	})
	n.log.Info("task started", "task", t.ID, "workload", t.Workload, "identity", t.Identity,
		"intent", t.Intent, "rules", t.Rules, "expires", t.Expires, "revision", t.PolicyRevision,
		"parent", req.Parent, "by_uid", req.Requester.UID)
	return t, nil
}

func expiry(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}

func (n *Node) identity(req Request) string {
	if req.Identity != "" {
		return req.Identity
	}
	return n.opt.Identity(req.Workload)
}

func (n *Node) policyRevision() string {
	if n.opt.Engine != nil {
		return n.opt.Engine.Revision()
	}
	return GrantsRevision
}

func (n *Node) start(ctx context.Context, req Request) (Task, error) {
	if req.TTL < 0 {
		return Task{}, badRequest("ttl %v: must not be negative", req.TTL)
	}
	cgID, err := loader.CgroupID(filepath.Join(n.opt.CgroupRoot, req.Workload))
	if err != nil {
		return Task{}, badRequest("workload %s: %w", req.Workload, err)
	}
	// A workload deeper than the programs look would leave the processes
	// of its subtree unconfined for exec: refused rather than half kept.
	if err := loader.CheckWorkloadLevel(req.Workload); err != nil {
		return Task{}, badRequest("workload: %w", err)
	}
	identity := n.identity(req)
	id := req.ID
	if id == "" {
		id = tasks.NewTaskID()
	}

	var parent *tasks.Task
	var parentRules policy.RuleSet
	if req.Parent != "" {
		// Held until the child is registered, so that the parent cannot
		// end in between and leave the child behind.
		n.family.Lock()
		defer n.family.Unlock()
		p, ok := n.tasks.Get(req.Parent)
		n.mu.Lock()
		rules, haveRules := n.rules[req.Parent]
		n.mu.Unlock()
		if !ok || !haveRules {
			return Task{}, badRequest("parent task %s is not in force", req.Parent)
		}
		if p.CgroupID == cgID {
			return Task{}, badRequest("a sub-agent runs in its own workload, not its parent's (%s)", p.Workload)
		}
		parent, parentRules = &p, rules
	}

	rs, ttl, revision, writableOK, err := n.decide(ctx, id, identity, req, parent)
	if err != nil {
		return Task{}, err
	}
	if parent != nil {
		if rs, err = policy.Intersect(rs, parentRules); err != nil {
			return Task{}, &EnvelopeError{fmt.Errorf("sub-agent of %s: %w", parent.ID, err)}
		}
		if !parent.Expires.IsZero() && !time.Now().Before(parent.Expires) {
			return Task{}, badRequest("parent task %s has expired", parent.ID)
		}
	}
	if !writableOK {
		if err := n.checkWritableExec(req, rs); err != nil {
			return Task{}, err
		}
	}
	if len(rs.Unix) > 0 && !n.opt.Kernel.Features().UnixHooks {
		return Task{}, badRequest("the envelope allows unix sockets, which this kernel cannot enforce: %s", n.opt.Kernel.Features().UnixReason)
	}

	// The revision and rules are known before the task exists, so its
	// first events already name the revision.
	n.mu.Lock()
	n.revisions[id], n.rules[id] = revision, rs
	n.workloads[cgID] = id
	if parent != nil {
		n.parents[id] = parent.ID
	}
	n.mu.Unlock()
	// A sub-agent's grants end with its parent's, at the latest.
	var notAfter time.Time
	if parent != nil {
		notAfter = parent.Expires
	}
	began := time.Now()
	// The unix connections the workload holds before its task were not
	// made under it: they stay open at its end (a unit's journal stream).
	keepUnix, err := n.opt.Kernel.UnixConnections(cgID)
	if err != nil {
		n.log.Warn("unix connections held before the task not all known; those missing end with the task",
			"workload", req.Workload, "err", err)
	}
	t, err := n.tasks.Start(id, tasks.StartRequest{
		Workload: req.Workload, CgroupID: cgID, Identity: identity, Intent: req.Intent,
		Labels: req.Labels, TTL: ttl, Rules: rs, Mode: req.Mode, NotAfter: notAfter,
		KeepUnix: keepUnix,
	})
	if err != nil {
		n.forget(id)
		n.mu.Lock()
		delete(n.workloads, cgID)
		n.mu.Unlock()
		return Task{}, err
	}
	n.opt.Metrics.ObserveApply(time.Since(began))
	n.mu.Lock()
	n.known[t.Generation] = knownTask{task: t, revision: revision}
	n.mu.Unlock()
	if n.opt.Store != nil {
		// Needed only if the task becomes a parent after a restart.
		// Without the file such a parent cannot have sub-agents (refused,
		// never widened), so a failure is not worth failing the start.
		if err := n.opt.Store.SaveRules(id, rs); err != nil {
			n.log.Warn("keep task rules", "task", id, "err", err)
		}
	}
	// A task the store does not hold would be forgotten by the next
	// daemon and outlive its revocation: undo it instead.
	if err := n.persist(); err != nil {
		_ = n.tasks.End(id, "could not be persisted")
		return Task{}, fmt.Errorf("task %s not started: %w", id, err)
	}
	return Task{Task: t, PolicyRevision: revision, Parent: n.parentOf(id)}, nil
}

// decide computes a task's rules: the policy's envelope (or the request's
// grants when there is no policy), capped by the grants when both exist.
// writableOK says whether exec rules the workload can write are accepted:
// by the grants without a policy; with one, by the policy and the grants
// (when given) both.
func (n *Node) decide(ctx context.Context, id, identity string, req Request, parent *tasks.Task) (rs policy.RuleSet, ttl time.Duration, revision string, writableOK bool, err error) {
	if n.opt.Engine == nil {
		if req.Grants == nil {
			return policy.RuleSet{}, 0, "", false, badRequest("no policy is loaded and the request names no grants")
		}
		rs, err := policy.Compile(*req.Grants)
		if err != nil {
			return policy.RuleSet{}, 0, "", false, &RequestError{err}
		}
		return rs, req.TTL, GrantsRevision, req.Grants.AllowWritableExec, nil
	}
	in := engine.Input{
		Identity:  identity,
		Workload:  engine.Workload{Cgroup: req.Workload},
		Task:      &engine.Task{ID: id, Intent: req.Intent, Labels: req.Labels, TTL: req.TTL},
		Requester: req.Requester,
	}
	if parent != nil {
		in.Parent = &engine.Parent{ID: parent.ID, Identity: parent.Identity, Intent: parent.Intent, Labels: parent.Labels}
	}
	began := time.Now()
	dec, err := n.opt.Engine.Evaluate(ctx, in)
	n.opt.Metrics.ObservePolicyEval(time.Since(began))
	if err != nil {
		return policy.RuleSet{}, 0, "", false, err
	}
	rs, err = policy.Compile(dec.Envelope)
	if err != nil {
		return policy.RuleSet{}, 0, "", false, &EnvelopeError{fmt.Errorf("envelope of policy %s: %w", dec.Revision, err)}
	}
	writableOK = dec.Envelope.AllowWritableExec
	if req.Grants != nil {
		g, err := policy.Compile(*req.Grants)
		if err != nil {
			return policy.RuleSet{}, 0, "", false, &RequestError{err}
		}
		if rs, err = policy.Intersect(rs, g); err != nil {
			return policy.RuleSet{}, 0, "", false, &EnvelopeError{fmt.Errorf("grants within policy %s: %w", dec.Revision, err)}
		}
		writableOK = writableOK && req.Grants.AllowWritableExec
	}
	return rs, dec.Envelope.TTL, dec.Revision, writableOK, nil
}

func failureKind(err error) string {
	var re *RequestError
	var denied *engine.DeniedError
	switch {
	case errors.As(err, &denied):
		return "denied"
	case errors.As(err, &re):
		return "invalid"
	case errors.Is(err, tasks.ErrWorkloadBusy):
		return "busy"
	case errors.Is(err, tasks.ErrNoSlot), errors.Is(err, engine.ErrNoPolicy):
		return "unavailable"
	}
	return "error"
}

func (n *Node) forget(id string) {
	n.mu.Lock()
	delete(n.revisions, id)
	delete(n.rules, id)
	delete(n.parents, id)
	n.mu.Unlock()
}

func (n *Node) parentOf(id string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.parents[id]
}

// End revokes a task and, first, every sub-agent task started under it:
// their grants are part of the parent's and end with them.
func (n *Node) End(id, reason string) (Task, error) {
	n.family.Lock()
	defer n.family.Unlock()
	return n.end(id, reason)
}

func (n *Node) end(id, reason string) (Task, error) {
	t, ok := n.Get(id)
	if !ok {
		return Task{}, fmt.Errorf("%w: %s", ErrNoTask, id)
	}
	for _, child := range n.children(id) {
		if _, err := n.end(child, "parent task "+id+" ended"); err != nil && !errors.Is(err, ErrNoTask) {
			n.log.Error("end sub-agent task", "task", child, "parent", id, "err", err)
		}
	}
	began := time.Now()
	if err := n.tasks.End(id, reason); err != nil {
		return Task{}, err
	}
	n.opt.Metrics.ObserveRevoke(time.Since(began))
	return t, nil
}

// ErrNoTask is returned for a task id not in force.
var ErrNoTask = errors.New("no such task")

func (n *Node) children(id string) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for child, p := range n.parents {
		if p == id {
			out = append(out, child)
		}
	}
	sort.Strings(out)
	return out
}

// taskEnded is told about every task that ends, by call or by expiry.
func (n *Node) taskEnded(e tasks.End) {
	log := n.log.With("task", e.Task.ID, "workload", e.Task.Workload, "reason", e.Reason,
		"sockets_tcp", e.Sockets.TCP, "sockets_udp", e.Sockets.UDP, "unix_shut", e.Unix.Shut,
		"unix_kept", e.Unix.Kept, "unix_internal", e.Unix.Internal, "unix_duration", e.Unix.Duration)
	switch {
	case e.SocketsErr != nil:
		log.Warn("task ended; connections opened under it may still be open", "err", e.SocketsErr, "unix_err", e.UnixErr)
	case e.UnixErr != nil:
		log.Warn("task ended; unix connections opened under it may still be open", "err", e.UnixErr)
	default:
		log.Info("task ended")
	}
	n.mu.Lock()
	rev := n.revisions[e.Task.ID]
	n.known[e.Task.Generation] = knownTask{task: e.Task, revision: rev, ended: time.Now()}
	for gen, kt := range n.known {
		if !kt.ended.IsZero() && time.Since(kt.ended) > endedRetention {
			delete(n.known, gen)
		}
	}
	n.mu.Unlock()
	n.forget(e.Task.ID)
	_ = n.persist()
	if n.opt.Store != nil {
		n.opt.Store.RemoveRules(e.Task.ID)
	}
	kind := metrics.EndedOnPurpose
	if e.Reason == bpf.TaskExpired {
		kind = metrics.EndedExpired
	}
	n.opt.Metrics.TaskEnded(kind)
	reason := e.Reason
	suppressed := n.finalSuppressed(e.Task.CgroupID, e.Task.Generation)
	if suppressed > 0 {
		reason += fmt.Sprintf("; %d more decisions suppressed (over the workload's event budget)", suppressed)
	}
	if n := e.Sockets.TCP + e.Sockets.UDP; n > 0 {
		reason += fmt.Sprintf("; aborted %d open connection(s) (%d tcp, %d udp)", n, e.Sockets.TCP, e.Sockets.UDP)
	}
	if e.SocketsErr != nil {
		reason += "; connections opened under the task may still be open: " + e.SocketsErr.Error()
	}
	if e.Unix.Shut > 0 {
		reason += fmt.Sprintf("; shut down %d unix connection(s)", e.Unix.Shut)
	}
	if e.UnixErr != nil {
		reason += "; unix connections opened under the task may still be open: " + e.UnixErr.Error()
	}
	rec := audit.Record{
		Time: audit.Timestamp(time.Now()), Node: n.opt.NodeName, Workload: e.Task.Workload,
		Identity: e.Task.Identity, Task: e.Task.ID, Intent: e.Task.Intent, Action: bpf.ActionTaskEnd,
		Verdict: bpf.VerdictAllow, Reason: reason, Enforcement: bpf.EnforcementDaemon, PolicyRevision: rev,
		Suppressed: suppressed,
	}
	n.record(rec)
	// Delivered before the workload counts as task-less, so a
	// subscription cannot end without it.
	n.deliver(e.Task.CgroupID, rec)
	n.mu.Lock()
	if n.workloads[e.Task.CgroupID] == e.Task.ID {
		delete(n.workloads, e.Task.CgroupID)
	}
	n.mu.Unlock()
}

// Get returns a task in force.
func (n *Node) Get(id string) (Task, bool) {
	t, ok := n.tasks.Get(id)
	if !ok {
		return Task{}, false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return Task{Task: t, PolicyRevision: n.revisions[id], Parent: n.parents[id]}, true
}

// List returns the tasks in force, oldest first.
func (n *Node) List() []Task {
	list := n.tasks.List()
	sort.Slice(list, func(i, j int) bool { return list[i].Started.Before(list[j].Started) })
	out := make([]Task, 0, len(list))
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, t := range list {
		out = append(out, Task{Task: t, PolicyRevision: n.revisions[t.ID], Parent: n.parents[t.ID]})
	}
	return out
}

// persist writes the tasks in force to the store.
func (n *Node) persist() error {
	if n.opt.Store == nil {
		return nil
	}
	list := n.List()
	if err := n.opt.Store.Save(list); err != nil {
		n.log.Error("persist tasks", "err", err)
		return err
	}
	return nil
}

func (n *Node) record(r audit.Record) {
	if n.opt.Records == nil {
		return
	}
	if r.Node == "" {
		r.Node = n.opt.NodeName
	}
	n.opt.Records(r)
}
