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
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/daemon/approvals"
	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/dns"
	"github.com/bridle-sh/bridle/daemon/identity"
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

// Kernel is what a node needs of the loaded BPF programs
// (*loader.Enforcer): what the task manager writes, and what the node reads
// and attaches itself.
type Kernel interface {
	tasks.Kernel
	Features() loader.Features
	// UnixConnections lists the unix connections a workload holds.
	UnixConnections(cgroupID uint64) ([]loader.UnixConn, error)
	// TakeSuppressed reads and forgets a task's suppressed event count.
	TakeSuppressed(cgroupID uint64, generation uint32) (uint64, error)
	// AttachCgroup attaches the programs to a cgroup and its subtree.
	AttachCgroup(path string) error
	// SetResolver steers the workloads' DNS to the resolver's addresses;
	// DNSPeer names the workload that sent a query to it.
	SetResolver(v4, v6 netip.AddrPort) error
	DNSPeer(proto policy.Protocol, src netip.AddrPort) (loader.DNSPeer, error)
	// ForgetCgroup lets go of the programs attached to a cgroup that is
	// no longer a root (a deleted pod's).
	ForgetCgroup(cgroupID uint64) error
}

// Options wires a Node.
type Options struct {
	Kernel Kernel
	// Engine decides envelopes. Without one, every task must bring its
	// envelope as Request.Grants.
	Engine *engine.Engine
	// Store keeps tasks across restarts; nil keeps them in memory only.
	Store      *store.Store
	NodeName   string
	CgroupRoot string   // the cgroup v2 mount point
	Roots      []string // cgroups below which baseline decisions are looked up by id
	// Identities says who each workload is; nil maps every workload to
	// the node's default static identity.
	Identities identity.Provider
	// Records receives every decision record: the kernel's verdicts, task
	// starts and ends, refused starts. Nil records nothing.
	Records func(audit.Record)
	Metrics *metrics.Metrics // nil: none
	Log     *slog.Logger
	// WorkloadLabels, if set, gives the labels of the workload a task is
	// decided for (input.workload.labels): those of the pod a cgroup
	// belongs to. Nil: none.
	WorkloadLabels func(cgroup string) map[string]string
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
	Grants *Grants
	// Parent is the task of the agent this task is a sub-agent of. The
	// task never gets more than the parent has, nor outlives it.
	Parent    string
	Mode      loader.WorkloadMode
	Requester engine.Requester
	// Identity overrides Options.Identities (for a standalone `bridle run
	// --identity`): its source is identity.Request.
	Identity string
	// RunAs are users the workload's processes will run as, besides those
	// of the processes in it at start: exec rules whose file one of them
	// can write are refused (see checkWritableExec).
	RunAs []policy.Principal
	// Pod names the Kubernetes pod the workload belongs to
	// ("NS/NAME/UID"), kept with the task so that a restarted bridled
	// knows which pod's deletion ends it; "" for other workloads.
	Pod string
}

// Task is a task in force, with the policy revision that decided it.
type Task = tasks.Task

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

// Node decides the tasks of one loaded enforcer; its task manager holds
// them and is the one writer of the kernel's state.
type Node struct {
	opt   Options
	log   *slog.Logger
	tasks *tasks.Manager
	// family orders ends against starts of sub-agents: a parent's end
	// sees every child started under it.
	family sync.Mutex

	mu       sync.Mutex
	baseline string            // revision of the baseline in force
	paths    map[uint64]string // cgroup id -> path, for baseline records
	// adopted are roots adopted after start (pods' cgroups), looked
	// through like Options.Roots for the records of their decisions.
	adopted map[string]uint64
	// confined are the roots bound with ConfineRoot, by id.
	confined map[uint64]bool
	subs     map[*Subscription]struct{}
	// suppressed is the kernel's running total of suppressed events last
	// reported per task (cgroup id and generation); see Enrich.
	suppressed map[budgetKey]uint32
	// names indexes the name rules of tasks in force, by slot
	// generation, for the resolver (a baseline has none).
	names    map[uint32]*policy.NameIndex
	resolver *dns.Server // nil until StartResolver
	// approvals opens requests from tasks' refusals; nil until
	// UseApprovals.
	approvals *approvals.Manager
}

type budgetKey struct {
	cgroupID   uint64
	generation uint32
}

// endedRetention is how long an ended task still names late events.
const endedRetention = tasks.EndedRetention

// New returns a node over an enforcer whose programs are loaded.
func New(opt Options) *Node {
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.Identities == nil {
		opt.Identities = identity.NewStatic(identity.StaticConfig{Node: opt.NodeName}, opt.CgroupRoot)
	}
	n := &Node{
		opt: opt, log: opt.Log,
		paths: map[uint64]string{}, subs: map[*Subscription]struct{}{}, adopted: map[string]uint64{}, confined: map[uint64]bool{},
		suppressed: map[budgetKey]uint32{}, names: map[uint32]*policy.NameIndex{},
	}
	n.tasks = tasks.NewManager(opt.Kernel, n.taskEnded)
	return n
}

// Load loads the BPF programs, pinned in pinDir (taking over those an
// earlier process pinned there), and returns a node over them: the one
// assembly of enforcer and node, for bridled and a standalone `bridle run`
// alike. opt.Kernel is set to the enforcer.
func Load(pinDir string, opt Options) (*Node, *loader.Enforcer, error) {
	enf, err := loader.Load(loader.Options{PinDir: pinDir, WakeupBytes: loader.DefaultWakeupBytes})
	if err != nil {
		return nil, nil, err
	}
	opt.Kernel = enf
	return New(opt), enf, nil
}

// Wait waits until the rules of every ended task are deleted from the
// kernel; call it before releasing the enforcer.
func (n *Node) Wait() { n.tasks.Wait() }

// StuckSlots is how many task slots could not be cleared; see
// tasks.Manager.StuckSlots.
func (n *Node) StuckSlots() int { return n.tasks.StuckSlots() }

// Baseline is the baseline in force: what workloads without a task may do.
type Baseline struct {
	Revision string // the policy revision it came from
	Rules    int    // kernel entries
}

// SetBaseline decides the policy's baseline for the first root's identity
// and puts it in the slot every workload without a task is bound to. When
// the revision in the kernel (as the store records it) is the same (a
// restart), its rules are rewritten in place: workloads never see the slot
// empty. When the revision changed, the slot is cleared first so a baseline
// that shrank leaves nothing behind; for that moment workloads without a
// task are refused more, never allowed more.
func (n *Node) SetBaseline(ctx context.Context) (Baseline, error) {
	if n.opt.Engine == nil {
		return Baseline{}, errors.New("baseline: no policy to decide it")
	}
	// The first root's identity; without configured roots (a node whose
	// roots are its pods), the cgroup v2 root's.
	root := "/"
	if len(n.opt.Roots) > 0 {
		root = n.opt.Roots[0]
	}
	dec, err := n.opt.Engine.Baseline(ctx, engine.Input{
		Identity: n.opt.Identities.Known(root).ID,
		Workload: engine.Workload{Cgroup: root},
	})
	if err != nil {
		return Baseline{}, fmt.Errorf("baseline: %w", err)
	}
	rs, err := policy.Compile(dec.Envelope)
	if err != nil {
		return Baseline{}, fmt.Errorf("baseline of policy %s: %w", dec.Revision, err)
	}
	if f := n.opt.Kernel.Features(); len(rs.Unix) > 0 && !f.UnixHooks {
		return Baseline{}, fmt.Errorf("baseline of policy %s allows unix sockets, which this kernel cannot enforce: %s", dec.Revision, f.UnixReason)
	}
	// Every workload without a task shares the baseline's kernel slot, so
	// an address one of them resolved would be reachable by all of them,
	// and one of them could spend the slot's learned entries for all.
	// Names are a task's.
	if len(rs.Names) > 0 {
		return Baseline{}, fmt.Errorf("baseline of policy %s names hosts (%s): names are allowed per task (learned addresses are a task's own); allow the baseline's destinations by cidr", dec.Revision, rs.Names[0].Pattern)
	}
	inKernel := ""
	if n.opt.Store != nil {
		if inKernel, err = n.opt.Store.BaselineRevision(); err != nil {
			return Baseline{}, err
		}
	}
	if err := n.tasks.SetBaseline(rs, inKernel != dec.Revision); err != nil {
		return Baseline{}, fmt.Errorf("baseline: %w", err)
	}
	if n.opt.Store != nil {
		if err := n.opt.Store.SetBaselineRevision(dec.Revision); err != nil {
			return Baseline{}, err
		}
	}
	n.mu.Lock()
	n.baseline = dec.Revision
	n.mu.Unlock()
	return Baseline{Revision: dec.Revision, Rules: rs.Count()}, nil
}

// ConfineRoot binds a root cgroup (a path below the cgroup v2 mount,
// created if missing) to the baseline, then attaches the programs there.
// From then on a cgroup created below the root is confined from its first
// instruction: its processes find the root's binding, or nothing
// (refused), never an empty map. It returns the root's cgroup id.
func (n *Node) ConfineRoot(rel string) (uint64, error) {
	dir := filepath.Join(n.opt.CgroupRoot, rel)
	// Below MaxWorkloadLevel, or the root's subtree would not be found.
	if err := loader.CheckWorkloadLevel(rel); err != nil {
		return 0, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	id, err := loader.CgroupID(dir)
	if err != nil {
		return id, err
	}
	if err := n.tasks.BindRoot(id); err != nil {
		return id, err
	}
	if err := n.opt.Kernel.AttachCgroup(dir); err != nil {
		return id, err
	}
	n.mu.Lock()
	n.confined[id] = true
	n.mu.Unlock()
	n.RememberCgroup(id, rel)
	return id, nil
}

// AdoptRoot confines a cgroup that something else made and owns (a
// Kubernetes pod's, which the kubelet creates and removes): like
// ConfineRoot, but the cgroup must exist (it is never created), and a
// task already bound to it (a pod-level task a previous bridled started,
// restored by Restore) keeps its binding instead of being put back on the
// baseline. Call it after Restore. It returns the cgroup's id.
func (n *Node) AdoptRoot(rel string) (uint64, error) {
	if err := loader.CheckWorkloadLevel(rel); err != nil {
		return 0, err
	}
	dir := filepath.Join(n.opt.CgroupRoot, rel)
	id, err := loader.CgroupID(dir)
	if err != nil {
		return 0, err
	}
	if !n.tasks.Governed(id) {
		if err := n.tasks.BindRoot(id); err != nil {
			return id, err
		}
	}
	if err := n.opt.Kernel.AttachCgroup(dir); err != nil {
		return id, err
	}
	n.mu.Lock()
	n.adopted[rel] = id
	n.mu.Unlock()
	n.RememberCgroup(id, rel)
	return id, nil
}

// DropRoot lets go of a root adopted with AdoptRoot whose cgroup is gone
// or going (its pod was deleted): its binding is deleted from the kernel
// and its programs' links unpinned. End its tasks first.
func (n *Node) DropRoot(rel string) error {
	n.mu.Lock()
	id, ok := n.adopted[rel]
	delete(n.adopted, rel)
	n.mu.Unlock()
	if !ok {
		return nil
	}
	return n.ForgetRoot(id)
}

// ForgetRoot deletes the binding of a root cgroup by id and unpins its
// programs' links: a pod's root a previous bridled adopted, whose pod was
// deleted while no bridled ran (its cgroup is gone, so it has no path).
// A cgroup that still has a task is left alone, and so is a root in
// force: the id comes from a previous bridled's state, maybe from before a
// reboot, after which the kernel numbers cgroups anew.
func (n *Node) ForgetRoot(id uint64) error {
	if n.tasks.Governed(id) {
		return fmt.Errorf("cgroup %d still has a task", id)
	}
	n.mu.Lock()
	inForce := n.confined[id]
	for _, a := range n.adopted {
		inForce = inForce || a == id
	}
	n.mu.Unlock()
	if inForce {
		return fmt.Errorf("cgroup %d is a root in force", id)
	}
	return errors.Join(n.opt.Kernel.UnbindWorkload(id), n.opt.Kernel.ForgetCgroup(id))
}

// AdoptedRoots returns the roots adopted with AdoptRoot, by path.
func (n *Node) AdoptedRoots() map[string]uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return maps.Clone(n.adopted)
}

func (n *Node) workloadLabels(cgroup string) map[string]string {
	if n.opt.WorkloadLabels == nil {
		return nil
	}
	return n.opt.WorkloadLabels(cgroup)
}

// Start decides and puts in force a task: the policy's envelope for the
// workload's identity and the request (capped by the request's grants and
// the parent's rules), compiled and written to the kernel, then recorded
// in the store. A task the store cannot record is undone.
func (n *Node) Start(ctx context.Context, req Request) (Task, error) {
	t, err := n.start(ctx, req)
	if err != nil {
		n.opt.Metrics.TaskStartFailed(failureKind(err))
		known := n.knownIdentity(req)
		n.record(audit.Record{
			Time: audit.Timestamp(time.Now()), Workload: req.Workload, Identity: known.ID,
			IdentitySource: known.Source, Intent: req.Intent, Action: bpf.ActionTaskStart, Verdict: bpf.VerdictDeny, Reason: err.Error(),
			Enforcement: bpf.EnforcementDaemon, PolicyRevision: n.policyRevision(),
		})
		return Task{}, err
	}
	n.opt.Metrics.TaskStarted()
	n.record(audit.Record{
		Time: audit.Timestamp(t.Started), Workload: t.Workload, Identity: t.Identity,
		IdentitySource: t.IdentitySource, Task: t.ID, Intent: t.Intent, Action: bpf.ActionTaskStart, Verdict: bpf.VerdictAllow,
		Reason:      fmt.Sprintf("%d kernel rules, expires %s%s", t.Rules, expiry(t.Expires), startedBy(req.Requester)),
		Enforcement: bpf.EnforcementDaemon, PolicyRevision: t.PolicyRevision,
	})
	n.log.Info("task started", "task", t.ID, "workload", t.Workload, "identity", t.Identity, "identity_source", t.IdentitySource,
		"intent", t.Intent, "rules", t.Rules, "expires", t.Expires, "revision", t.PolicyRevision,
		"parent", req.Parent, "by_uid", req.Requester.UID, "by_identity", req.Requester.Identity, "by_auth", req.Requester.Auth)
	return t, nil
}

// startedBy names who asked for a task, for its start record: the uid the
// kernel reported, and the SPIFFE ID the caller proved, if any.
func startedBy(r engine.Requester) string {
	switch r.Auth {
	case engine.AuthPeerCred:
		return fmt.Sprintf("; started by uid %d", r.UID)
	case engine.AuthJWTSVID:
		return fmt.Sprintf("; started by uid %d with identity %s (JWT-SVID)", r.UID, r.Identity)
	case engine.AuthX509SVID:
		return fmt.Sprintf("; started by identity %s (mTLS)", r.Identity)
	}
	return ""
}

func expiry(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}

// identify establishes the identity a task is decided under. Unless the
// request named it, the source follows the workload from then on;
// release ends that, and is called when the task ends (or fails to
// start).
func (n *Node) identify(ctx context.Context, req Request) (id identity.Identity, release func(), err error) {
	if req.Identity != "" {
		return identity.Identity{ID: req.Identity, Source: identity.Request}, func() {}, nil
	}
	id, err = n.opt.Identities.Identify(ctx, identity.Workload{
		Cgroup: req.Workload, StartedBy: req.Requester.UID, // A caller over TCP has no uid the kernel vouches for.
		HasStartedBy: req.Requester.Auth == engine.AuthPeerCred || req.Requester.Auth == engine.AuthJWTSVID,
	})
	if err != nil {
		return identity.Identity{}, nil, fmt.Errorf("identity of workload %s: %w", req.Workload, err)
	}
	return id, func() { n.opt.Identities.Release(req.Workload) }, nil
}

// knownIdentity is the identity a refused start is recorded under.
func (n *Node) knownIdentity(req Request) identity.Identity {
	if req.Identity != "" {
		return identity.Identity{ID: req.Identity, Source: identity.Request}
	}
	return n.opt.Identities.Known(req.Workload)
}

// Identities is the node's identity source.
func (n *Node) Identities() identity.Provider { return n.opt.Identities }

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
	ident, release, err := n.identify(ctx, req)
	if err != nil {
		return Task{}, err
	}
	started := false
	defer func() {
		if !started {
			release()
		}
	}()
	id := req.ID
	if id == "" {
		id = tasks.NewTaskID()
	}

	var parent *tasks.Task
	if req.Parent != "" {
		// Held until the child is registered, so that the parent cannot
		// end in between and leave the child behind.
		n.family.Lock()
		defer n.family.Unlock()
		p, ok := n.tasks.Get(req.Parent)
		if !ok || p.Grants == nil {
			return Task{}, badRequest("parent task %s is not in force", req.Parent)
		}
		if p.CgroupID == cgID {
			return Task{}, badRequest("a sub-agent runs in its own workload, not its parent's (%s)", p.Workload)
		}
		parent = &p
	}

	rs, ttl, revision, writableOK, approvable, err := n.decide(ctx, id, ident, req, parent)
	if err != nil {
		return Task{}, err
	}
	if parent != nil {
		if rs, err = policy.Intersect(rs, *parent.Grants); err != nil {
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

	// A sub-agent's grants end with its parent's, at the latest.
	var notAfter time.Time
	var parentID string
	if parent != nil {
		notAfter, parentID = parent.Expires, parent.ID
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
		Workload: req.Workload, CgroupID: cgID, Identity: ident.ID, IdentitySource: ident.Source, IdentitySelectors: ident.Selectors, Intent: req.Intent,
		Labels: req.Labels, TTL: ttl, Rules: rs, Mode: req.Mode, NotAfter: notAfter,
		KeepUnix: keepUnix, PolicyRevision: revision, Parent: parentID, Pod: req.Pod,
	})
	if err != nil {
		return Task{}, err
	}
	// From here the task's end releases the identity.
	started = true
	n.approvalsStarted(t, approvable)
	n.opt.Metrics.ObserveApply(time.Since(began))
	// SPIRE may have withdrawn or changed the identity since Identify
	// returned: its change was reported while the task was not in force
	// yet, so nothing ended it. Any change from now on finds the task.
	if ident.Source == identity.SPIRE {
		if now := n.opt.Identities.Known(req.Workload); now.ID != ident.ID || now.Source != ident.Source {
			if parent == nil {
				n.family.Lock()
				defer n.family.Unlock()
			}
			reason := fmt.Sprintf("identity %s withdrawn during the task's start (now %q)", ident.ID, now.ID)
			if _, err := n.end(id, reason); err != nil {
				n.log.Error("undo a task whose identity was withdrawn during its start", "task", id, "err", err)
			}
			return Task{}, &identity.UnavailableError{Err: fmt.Errorf("task %s not started: %s", id, reason)}
		}
	}
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
		// Undone with any sub-agent started under it meanwhile, under
		// the family lock (already held for a sub-agent's own start).
		if parent == nil {
			n.family.Lock()
			defer n.family.Unlock()
		}
		if _, endErr := n.end(id, "could not be persisted"); endErr != nil {
			n.log.Error("undo a task the store could not record", "task", id, "err", endErr)
		}
		return Task{}, fmt.Errorf("task %s not started: %w", id, err)
	}
	return t, nil
}

// decide computes a task's rules: the policy's envelope (or the request's
// grants when there is no policy), capped by the grants when both exist.
// writableOK says whether exec rules the workload can write are accepted:
// by the grants without a policy; with one, by the policy and the grants
// (when given) both.
//
// approvable is what the task may be asked for, cut for a sub-agent to
// what its parent covers; empty without a policy or an approvals manager.
func (n *Node) decide(ctx context.Context, id string, ident identity.Identity, req Request, parent *tasks.Task) (rs policy.RuleSet, ttl time.Duration, revision string, writableOK bool, approvable policy.CompiledApprovable, err error) {
	fail := func(err error) (policy.RuleSet, time.Duration, string, bool, policy.CompiledApprovable, error) {
		return policy.RuleSet{}, 0, "", false, policy.CompiledApprovable{}, err
	}
	if n.opt.Engine == nil {
		if req.Grants == nil {
			return fail(badRequest("no policy is loaded and the request names no grants"))
		}
		rs, err := req.Grants.Rules()
		if err != nil {
			return fail(&RequestError{err})
		}
		return rs, req.TTL, GrantsRevision, req.Grants.Envelope.AllowWritableExec, policy.CompiledApprovable{}, nil
	}
	in := engine.Input{
		Identity:       ident.ID,
		IdentitySource: string(ident.Source),
		Workload:       engine.Workload{Cgroup: req.Workload, Labels: n.workloadLabels(req.Workload)},
		Task:           &engine.Task{ID: id, Intent: req.Intent, Labels: req.Labels, TTL: req.TTL},
		Requester:      req.Requester,
	}
	if parent != nil {
		in.Parent = &engine.Parent{ID: parent.ID, Identity: parent.Identity, Intent: parent.Intent, Labels: parent.Labels}
	}
	began := time.Now()
	dec, err := n.opt.Engine.Evaluate(ctx, in)
	n.opt.Metrics.ObservePolicyEval(time.Since(began))
	if err != nil {
		return fail(err)
	}
	rs, err = policy.Compile(dec.Envelope)
	if err != nil {
		return fail(&EnvelopeError{fmt.Errorf("envelope of policy %s: %w", dec.Revision, err)})
	}
	if approvable, err = n.approvableFor(dec.Approvable, dec.Revision, parent); err != nil {
		return fail(&EnvelopeError{fmt.Errorf("approvable of policy %s: %w", dec.Revision, err)})
	}
	writableOK = dec.Envelope.AllowWritableExec
	if req.Grants != nil {
		g, err := req.Grants.Rules()
		if err != nil {
			return fail(&RequestError{err})
		}
		if rs, err = policy.Intersect(rs, g); err != nil {
			return fail(&EnvelopeError{fmt.Errorf("grants within policy %s: %w", dec.Revision, err)})
		}
		writableOK = writableOK && req.Grants.Envelope.AllowWritableExec
	}
	return rs, dec.Envelope.TTL, dec.Revision, writableOK, approvable, nil
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
	for _, child := range n.tasks.Children(id) {
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
	rev := e.Task.PolicyRevision
	if e.Task.IdentitySource != identity.Request {
		n.opt.Identities.Release(e.Task.Workload)
	}
	n.mu.Lock()
	delete(n.names, e.Task.Generation)
	resolver := n.resolver
	m := n.approvals
	n.mu.Unlock()
	if m != nil {
		m.TaskEnded(e.Task.ID)
	}
	if resolver != nil {
		resolver.TaskEnded(e.Task.ID)
	}
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
		Identity: e.Task.Identity, IdentitySource: e.Task.IdentitySource, Task: e.Task.ID, Intent: e.Task.Intent, Action: bpf.ActionTaskEnd,
		Verdict: bpf.VerdictAllow, Reason: reason, Enforcement: bpf.EnforcementDaemon, PolicyRevision: rev,
		Suppressed: suppressed,
	}
	n.record(rec)
	// Delivered before the workload counts as task-less (the manager's
	// Governed turns false once this returns), so a subscription cannot
	// end without it.
	n.deliver(e.Task.CgroupID, rec)
}

// Get returns a task in force.
func (n *Node) Get(id string) (Task, bool) { return n.tasks.Get(id) }

// List returns the tasks in force, oldest first.
func (n *Node) List() []Task { return n.tasks.List() }

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
