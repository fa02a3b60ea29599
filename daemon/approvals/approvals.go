// Package approvals turns refusals into questions and answers into grants.
// A task whose policy names what may be asked for (data.bridle.approvable)
// has each refusal an approvable entry covers opened as a request; a
// person allowed to answer approves it for a while, which writes a grant
// with an end into the task's kernel rules, or denies it, which keeps the
// same question from being asked again for a cooldown. The Manager is the
// one owner of requests and grants: it ends unanswered requests, ends
// grants on time (revoking them and resetting the connections opened
// under them), and ends everything of a task when the task ends.
//
// Nothing waits in the kernel: the refusal that opens a request is a
// refusal, and the workload's retry after the answer is what succeeds.
package approvals

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/metrics"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
	"github.com/bridle-sh/bridle/policy/engine"
)

// Kernel writes grants into a task's kernel rules: the task manager, the
// one writer of kernel state, which refuses writes for a task (slot and
// generation) no longer in force.
type Kernel interface {
	GrantAddrs(slot, generation uint32, addrs []loader.GrantedAddr) error
	RevokeAddrs(slot, generation uint32, addrs []loader.GrantedAddr) error
	GrantExec(slot, generation uint32, g []loader.GrantedExec) error
	RevokeExec(slot, generation uint32, g []loader.GrantedExec) error
	// AbortTo resets the task's workload's open sockets whose peer is
	// addr on one of ports (all ports when none). Every call names the
	// task by slot and generation: a slot whose task ended may be
	// another task's by now, and is left alone.
	AbortTo(slot, generation uint32, proto policy.Protocol, addr netip.Addr, ports []policy.PortRange) (loader.DestroyStats, error)
	// LearnedEndingAt lists the addresses the task learned from the
	// resolver whose life ends at t: a name grant's, cut to its end.
	LearnedEndingAt(slot, generation uint32, t time.Time) []loader.LearnedAddr
}

// Approver is who answers: a local user by the kernel's credentials, or a
// caller by the SPIFFE ID it proved. Auth is how (engine.AuthPeerCred,
// AuthJWTSVID, AuthX509SVID, or "web" for the page's signed-in admin).
type Approver struct {
	UID, GID uint32
	Groups   []uint32
	Identity string
	Auth     string // how the approver was identified: engine.AuthPeerCred, AuthJWTSVID, AuthX509SVID
	// Via is "web" for an answer given on the approvals page, by the
	// person its sign-in link was made for; "" for the API.
	Via string
}

// hasUID reports whether the kernel vouches for UID: not over mutual TLS.
func (a Approver) hasUID() bool { return a.Auth != engine.AuthX509SVID }

// String names the approver in records.
func (a Approver) String() string {
	var s string
	switch {
	case !a.hasUID():
		s = a.Identity
	case a.Identity != "":
		s = fmt.Sprintf("uid %d (%s)", a.UID, a.Identity)
	default:
		s = fmt.Sprintf("uid %d", a.UID)
	}
	if a.Via == "web" {
		s += " on the approvals page"
	}
	return s
}

// Request states.
const (
	Pending  = "pending"
	Approved = "approved"
	Denied   = "denied"
	Expired  = "expired"
)

// Request is a refusal put to a person.
type Request struct {
	ID       string `json:"id"`
	Task     string `json:"task"`
	Workload string `json:"workload"`
	Identity string `json:"identity"`
	Intent   string `json:"intent"`
	Action   string `json:"action"` // connect, exec, dns
	// Target says what was refused, for people: "tcp 192.0.2.7:443",
	// "api.example.test", "/usr/bin/git (dev 8:1 ino 1234)".
	Target         string        `json:"target"`
	Protocol       string        `json:"protocol,omitempty"`
	Address        string        `json:"address,omitempty"`
	Port           uint16        `json:"port,omitempty"`
	Name           string        `json:"name,omitempty"`
	Path           string        `json:"path,omitempty"`
	Dev            uint64        `json:"dev,omitempty"`
	Ino            uint64        `json:"ino,omitempty"`
	PID            uint32        `json:"pid,omitempty"`
	Comm           string        `json:"comm,omitempty"`
	Reason         string        `json:"reason"`
	PolicyRevision string        `json:"policy_revision"`
	Opened         time.Time     `json:"opened"`
	Expires        time.Time     `json:"expires"`
	State          string        `json:"state"`
	MaxTTL         time.Duration `json:"max_ttl"` // 0: up to the task's end
	Answer         *Answer       `json:"answer,omitempty"`
}

// Answer is who answered a request, how, and for how long.
type Answer struct {
	By        string        `json:"by"`
	UID       *uint32       `json:"uid,omitempty"`
	Identity  string        `json:"identity,omitempty"`
	At        time.Time     `json:"at"`
	For       time.Duration `json:"for,omitempty"` // an approval's length
	Reason    string        `json:"reason,omitempty"`
	GrantEnds time.Time     `json:"grant_ends,omitzero"`
}

// Errors of Approve and Deny.
var (
	ErrNoRequest  = errors.New("no such approval request")
	ErrNotPending = errors.New("approval request is not pending")
)

// NotApproverError is an answer from someone the request's entry does not
// name (or, when it names nobody, who is not an admin).
type NotApproverError struct {
	Request string
	By      string
}

func (e *NotApproverError) Error() string {
	return fmt.Sprintf("%s may not answer approval request %s", e.By, e.Request)
}

// Task is what the manager needs of a task in force to open its requests
// and write its grants.
type Task struct {
	ID, Workload, Identity, Intent, PolicyRevision string
	CgroupID                                       uint64
	Slot, Generation                               uint32
	Ends                                           time.Time // zero: none
	Approvable                                     policy.CompiledApprovable
}

// Options configure a Manager.
type Options struct {
	Kernel Kernel
	// RequestTTL is how long a request waits for an answer; Cooldown how
	// long a denial keeps the same task from asking for the same target.
	RequestTTL, Cooldown time.Duration
	// MaxPending bounds each task's pending requests, so a workload
	// cannot flood its approvers; past it refusals open nothing (counted
	// as dropped). Default 32.
	MaxPending int
	// History is how many answered or expired requests List keeps.
	// Default 256.
	History int
	// IsAdmin answers for entries that name no approvers.
	IsAdmin func(Approver) bool
	// IsWorkloadIdentity reports whether an ID is a workload's (of any
	// task in force, with approvable entries or not): such a caller
	// answers no request, whatever an entry's approvers say.
	IsWorkloadIdentity func(id string) bool
	// Records receives the approval records; nil records nothing.
	Records func(audit.Record)
	Metrics *metrics.Metrics
	Webhook Webhook
	// StateFile keeps the grants in force across restarts; "" keeps none.
	StateFile string
	Node      string
	Log       *slog.Logger
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

// Defaults.
const (
	DefaultRequestTTL = 10 * time.Minute
	DefaultCooldown   = 5 * time.Minute
	DefaultMaxPending = 32
	DefaultHistory    = 256
)

// Manager owns requests and grants.
type Manager struct {
	opt  Options
	log  *slog.Logger
	hook *webhook

	mu       sync.Mutex
	tasks    map[string]*Task
	requests map[string]*request // by id, pending and recent
	order    []string            // ids, oldest first
	pending  map[string]string   // task+target key -> id of the pending request
	perTask  map[string]int      // task -> pending count
	cooldown map[string]time.Time
	grants   map[string]*grant // by request id
	subs     map[chan Request]struct{}
	closed   bool
}

// request is a Request with what the manager keeps beside it.
type request struct {
	Request
	key    string
	entry  int
	target policy.Target
	timer  *time.Timer
}

// New returns a manager, with the grants a previous bridled wrote to
// StateFile taken over: each ends on time as if nothing had happened.
func New(opt Options) (*Manager, error) {
	if opt.Kernel == nil {
		return nil, errors.New("approvals: no kernel")
	}
	if opt.RequestTTL <= 0 {
		opt.RequestTTL = DefaultRequestTTL
	}
	if opt.Cooldown <= 0 {
		opt.Cooldown = DefaultCooldown
	}
	if opt.MaxPending <= 0 {
		opt.MaxPending = DefaultMaxPending
	}
	if opt.History <= 0 {
		opt.History = DefaultHistory
	}
	if opt.IsAdmin == nil {
		opt.IsAdmin = func(Approver) bool { return false }
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{
		opt: opt, log: opt.Log,
		tasks: map[string]*Task{}, requests: map[string]*request{}, pending: map[string]string{},
		perTask: map[string]int{}, cooldown: map[string]time.Time{}, grants: map[string]*grant{},
		subs: map[chan Request]struct{}{},
	}
	m.hook = newWebhook(opt.Webhook, opt.Metrics, opt.Log)
	if err := m.restore(); err != nil {
		return nil, err
	}
	return m, nil
}

// Close stops the webhook's deliveries and the timers of pending
// requests. Grants keep their timers only in the kernel (and the state
// file, for the next bridled).
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	for _, r := range m.requests {
		if r.timer != nil {
			r.timer.Stop()
		}
	}
	for _, g := range m.grants {
		g.timer.Stop()
	}
	for c := range m.subs {
		close(c)
		delete(m.subs, c)
	}
	m.mu.Unlock()
	m.hook.close()
}

// TaskStarted makes a task's refusals questions, when its policy names
// anything that may be asked for.
func (m *Manager) TaskStarted(t Task) {
	if t.Approvable.Empty() {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.tasks[t.ID] = &t
}

// Approvable reports the approvable set of a task in force, for a
// sub-agent's to be cut to.
func (m *Manager) Approvable(task string) (policy.CompiledApprovable, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.tasks[task]
	if !ok {
		return policy.CompiledApprovable{}, false
	}
	return t.Approvable, true
}

// TaskEnded ends what a task had: its pending requests expire and its
// grants end. The task's end already cleared its kernel slot and reset
// its connections, so nothing is written to the kernel here.
func (m *Manager) TaskEnded(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.tasks, id)
	for _, rid := range slices.Clone(m.order) {
		r := m.requests[rid]
		if r.Task == id && r.State == Pending {
			m.expireLocked(r, "task ended")
		}
	}
	var ended bool
	for rid, g := range m.grants {
		if g.Task == id {
			g.timer.Stop()
			delete(m.grants, rid)
			m.recordGrantEnd(g, "task ended", loader.DestroyStats{}, nil)
			ended = true
		}
	}
	for k := range m.cooldown {
		if taskOfKey(k) == id {
			delete(m.cooldown, k)
		}
	}
	if ended {
		m.saveLocked()
	}
}

// Refused is told about a refusal of a task (a kernel decision or the
// resolver's) and, when the task's approvable entries cover its target,
// opens a request, or finds the pending one, and names it in rec.Request.
// A denied target in its cooldown, a task with too many pending requests
// (the refusal is counted as dropped) and a target no entry covers open
// nothing.
func (m *Manager) Refused(rec *audit.Record, target policy.Target) {
	if rec.Task == "" {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.tasks[rec.Task]
	if !ok || m.closed {
		return
	}
	entry, ok := t.Approvable.Match(target)
	if !ok {
		return
	}
	key := requestKey(t.ID, target)
	if id, ok := m.pending[key]; ok {
		rec.Request = id
		return
	}
	now := m.opt.Now()
	if until, ok := m.cooldown[key]; ok {
		if now.Before(until) {
			return
		}
		delete(m.cooldown, key)
	}
	if m.perTask[t.ID] >= m.opt.MaxPending {
		m.opt.Metrics.ApprovalRequest("dropped")
		m.log.Warn("approval request not opened: the task has too many pending", "task", t.ID, "target", describeTarget(target), "pending", m.perTask[t.ID])
		return
	}
	r := &request{key: key, entry: entry, target: target, Request: Request{
		ID: newID(), Task: t.ID, Workload: t.Workload, Identity: t.Identity, Intent: t.Intent,
		Action: target.Action, Target: describeTarget(target),
		PID: rec.PID, Comm: rec.Comm, Reason: rec.Reason, PolicyRevision: t.PolicyRevision,
		Opened: now, Expires: now.Add(m.opt.RequestTTL), State: Pending,
		MaxTTL: t.Approvable.Entries[entry].MaxTTL,
	}}
	switch target.Action {
	case policy.TargetConnect:
		r.Protocol, r.Address, r.Port = target.Protocol.String(), target.Addr.Unmap().String(), target.Port
	case policy.TargetDNS:
		r.Name = target.Name
	case policy.TargetExec:
		r.Path, r.Dev, r.Ino = target.Path, target.Dev, target.Ino
	}
	if !t.Ends.IsZero() && t.Ends.Before(r.Expires) {
		r.Expires = t.Ends
	}
	r.timer = time.AfterFunc(r.Expires.Sub(now), func() { m.expire(r.ID) })
	m.requests[r.ID] = r
	m.order = append(m.order, r.ID)
	m.pending[key] = r.ID
	m.perTask[t.ID]++
	rec.Request = r.ID
	m.opt.Metrics.ApprovalRequest("opened")
	m.gaugeLocked()
	m.record(r, bpf.ActionApprovalRequest, bpf.VerdictDeny, "request opened: "+rec.Reason)
	m.publishLocked(r.Request)
	m.trimLocked()
	m.hook.send(r.Request)
}

// expire ends a request nobody answered in time.
func (m *Manager) expire(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r, ok := m.requests[id]; ok && r.State == Pending && !m.closed {
		m.expireLocked(r, "unanswered for "+r.Expires.Sub(r.Opened).String())
	}
}

func (m *Manager) expireLocked(r *request, why string) {
	m.closeLocked(r, Expired)
	m.opt.Metrics.ApprovalRequest("expired")
	m.record(r, bpf.ActionApprovalExpired, bpf.VerdictDeny, why)
	m.publishLocked(r.Request)
}

// closeLocked takes a pending request out of the pending set.
func (m *Manager) closeLocked(r *request, state string) {
	r.State = state
	if r.timer != nil {
		r.timer.Stop()
	}
	delete(m.pending, r.key)
	if m.perTask[r.Task]--; m.perTask[r.Task] <= 0 {
		delete(m.perTask, r.Task)
	}
	m.gaugeLocked()
}

func (m *Manager) gaugeLocked() { m.opt.Metrics.ApprovalsPending(len(m.pending)) }

// trimLocked forgets the oldest answered requests past History.
func (m *Manager) trimLocked() {
	done := 0
	for _, id := range m.order {
		if m.requests[id].State != Pending {
			done++
		}
	}
	for i := 0; done > m.opt.History && i < len(m.order); {
		id := m.order[i]
		if m.requests[id].State == Pending {
			i++
			continue
		}
		delete(m.requests, id)
		m.order = slices.Delete(m.order, i, i+1)
		done--
	}
}

// List returns the pending requests and the recent history, newest first.
func (m *Manager) List() []Request {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Request, 0, len(m.order))
	for i := len(m.order) - 1; i >= 0; i-- {
		out = append(out, m.requests[m.order[i]].Request)
	}
	return out
}

// Get returns one request.
func (m *Manager) Get(id string) (Request, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.requests[id]
	if !ok {
		return Request{}, false
	}
	return r.Request, true
}

// subscriptionBuffer is how many changes wait for a slow subscriber; past
// it, changes are dropped for that subscriber (List has the state).
const subscriptionBuffer = 256

// Subscribe returns every change of a request from now on (opened,
// answered, expired), and a function that ends the subscription.
func (m *Manager) Subscribe() (<-chan Request, func()) {
	c := make(chan Request, subscriptionBuffer)
	m.mu.Lock()
	if m.closed {
		close(c)
		m.mu.Unlock()
		return c, func() {}
	}
	m.subs[c] = struct{}{}
	m.mu.Unlock()
	return c, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if _, ok := m.subs[c]; ok {
			delete(m.subs, c)
			close(c)
		}
	}
}

func (m *Manager) publishLocked(r Request) {
	for c := range m.subs {
		select {
		case c <- r:
		default:
			m.log.Warn("approvals subscriber too slow; a change was dropped", "request", r.ID)
		}
	}
}

// Approve grants a pending request for d, capped by its entry's max_ttl
// and the task's end; d of 0 asks for as long as they allow. The grant is
// in the kernel when Approve returns.
func (m *Manager) Approve(id string, by Approver, d time.Duration) (Request, error) {
	if d < 0 {
		return Request{}, fmt.Errorf("approvals: negative duration %v", d)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	r, t, err := m.answerable(id, by)
	if err != nil {
		return Request{}, err
	}
	now := m.opt.Now()
	// The latest a grant may end: the entry's max_ttl and the task's end.
	var limit time.Time
	if r.MaxTTL > 0 {
		limit = now.Add(r.MaxTTL)
	}
	if !t.Ends.IsZero() && (limit.IsZero() || t.Ends.Before(limit)) {
		limit = t.Ends
	}
	ends := now.Add(d)
	switch {
	case d == 0 && limit.IsZero():
		return Request{}, errors.New("approvals: the task has no end and the entry no max_ttl: approve for a duration")
	case d == 0, limit.Before(ends) && !limit.IsZero():
		ends = limit
	}
	if !ends.After(now) {
		return Request{}, fmt.Errorf("approvals: request %s: %w (its task ends now)", id, ErrNotPending)
	}
	g := &grant{Request: r.ID, Task: t.ID, CgroupID: t.CgroupID, Slot: t.Slot, Generation: t.Generation,
		Target: r.target, Ends: ends}
	if r.target.Action == policy.TargetDNS {
		g.Names = t.Approvable.NameRules(r.entry, r.target.Name)
	}
	// Among the grants first: the kernel's entry for an address is
	// written from every grant that shares it.
	m.grants[r.ID] = g
	if err := m.writeGrant(g); err != nil {
		delete(m.grants, r.ID)
		return Request{}, fmt.Errorf("approvals: grant %s: %w", id, err)
	}
	m.closeLocked(r, Approved)
	r.Answer = answerOf(by, now)
	r.Answer.For, r.Answer.GrantEnds = ends.Sub(now), ends
	g.timer = time.AfterFunc(ends.Sub(now), func() { m.endGrant(g.Request) })
	m.saveLocked()
	m.opt.Metrics.ApprovalAnswered("approved", now.Sub(r.Opened))
	m.record(r, bpf.ActionApprovalGranted, bpf.VerdictAllow,
		fmt.Sprintf("approved by %s for %s, until %s", by, ends.Sub(now).Round(time.Second), ends.UTC().Format(time.RFC3339)))
	m.publishLocked(r.Request)
	return r.Request, nil
}

// Deny refuses a pending request; the same target of the same task opens
// no request again for the cooldown.
func (m *Manager) Deny(id string, by Approver, reason string) (Request, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, _, err := m.answerable(id, by)
	if err != nil {
		return Request{}, err
	}
	now := m.opt.Now()
	m.closeLocked(r, Denied)
	m.cooldown[r.key] = now.Add(m.opt.Cooldown)
	r.Answer = answerOf(by, now)
	r.Answer.Reason = reason
	m.opt.Metrics.ApprovalAnswered("denied", now.Sub(r.Opened))
	why := "denied by " + by.String()
	if reason != "" {
		why += ": " + reason
	}
	m.record(r, bpf.ActionApprovalDenied, bpf.VerdictDeny, why)
	m.publishLocked(r.Request)
	return r.Request, nil
}

// answerable finds a pending request of a task in force and checks by may
// answer it. A refused answer is recorded. The workload itself never gets
// here: the API refuses its calls before any handler runs.
func (m *Manager) answerable(id string, by Approver) (*request, *Task, error) {
	r, ok := m.requests[id]
	if !ok {
		return nil, nil, fmt.Errorf("approvals: %w: %s", ErrNoRequest, id)
	}
	if r.State != Pending {
		return nil, nil, fmt.Errorf("approvals: request %s is %s: %w", id, r.State, ErrNotPending)
	}
	t, ok := m.tasks[r.Task]
	if !ok {
		return nil, nil, fmt.Errorf("approvals: request %s: task %s ended: %w", id, r.Task, ErrNotPending)
	}
	entry := t.Approvable.Entries[r.entry]
	allowed := false
	switch {
	case m.workloadIdentityLocked(by.Identity):
		// A task's workload, by the SPIFFE ID it runs under: over mutual
		// TLS no cgroup says the caller is a workload, and approvers
		// naming a trust domain would include it.
	case entry.Approvers != nil:
		var gids []uint32
		if by.hasUID() { // over mutual TLS no gid is the kernel's either
			gids = append([]uint32{by.GID}, by.Groups...)
		}
		allowed = entry.Approvers.Allows(by.UID, by.hasUID(), gids, by.Identity)
	default:
		allowed = m.opt.IsAdmin(by)
	}
	if !allowed {
		err := &NotApproverError{Request: id, By: by.String()}
		m.record(r, bpf.ActionAPI, bpf.VerdictDeny, err.Error())
		return nil, nil, err
	}
	return r, t, nil
}

// workloadIdentityLocked reports whether id is the identity of a task's
// workload the manager knows: such a caller answers no request.
func (m *Manager) workloadIdentityLocked(id string) bool {
	if id == "" {
		return false
	}
	for _, t := range m.tasks {
		if t.Identity == id {
			return true
		}
	}
	return m.opt.IsWorkloadIdentity != nil && m.opt.IsWorkloadIdentity(id)
}

func answerOf(by Approver, at time.Time) *Answer {
	a := &Answer{By: by.String(), Identity: by.Identity, At: at}
	if by.hasUID() {
		uid := by.UID
		a.UID = &uid
	}
	return a
}

// record writes an approval record of r.
func (m *Manager) record(r *request, action bpf.Action, verdict bpf.Verdict, reason string) {
	if m.opt.Records == nil {
		return
	}
	rec := audit.Record{
		Time: audit.Timestamp(m.opt.Now()), Node: m.opt.Node, Workload: r.Workload, Identity: r.Identity,
		Task: r.Task, Intent: r.Intent, PID: r.PID, Comm: r.Comm, Action: action, Verdict: verdict,
		Reason: reason, Enforcement: bpf.EnforcementDaemon, PolicyRevision: r.PolicyRevision, Request: r.ID,
	}
	fillTarget(&rec, r.target)
	m.opt.Records(rec)
}

func fillTarget(rec *audit.Record, t policy.Target) {
	switch t.Action {
	case policy.TargetConnect:
		rec.Protocol, rec.Address, rec.Port = bpf.Protocol(t.Protocol.String()), audit.Addr(t.Addr), t.Port
	case policy.TargetDNS:
		rec.Name = t.Name
	case policy.TargetExec:
		rec.Path = t.Path
	}
}

// requestKey identifies a task's target, for deduplication and cooldown.
func requestKey(task string, t policy.Target) string {
	switch t.Action {
	case policy.TargetConnect:
		return task + "\x00connect\x00" + t.Protocol.String() + "\x00" + netip.AddrPortFrom(t.Addr.Unmap(), t.Port).String()
	case policy.TargetDNS:
		return task + "\x00dns\x00" + t.Name
	}
	return task + "\x00exec\x00" + fmt.Sprintf("%d:%d", t.Dev, t.Ino)
}

func taskOfKey(k string) string {
	for i := range len(k) {
		if k[i] == 0 {
			return k[:i]
		}
	}
	return k
}

// describeTarget renders a target for people.
func describeTarget(t policy.Target) string {
	switch t.Action {
	case policy.TargetConnect:
		if t.Protocol == policy.ProtoICMP {
			return "icmp " + t.Addr.Unmap().String()
		}
		return t.Protocol.String() + " " + netip.AddrPortFrom(t.Addr.Unmap(), t.Port).String()
	case policy.TargetDNS:
		return t.Name
	}
	return policy.FileID{Path: t.Path, Dev: t.Dev, Ino: t.Ino}.String()
}

// newID returns a request id: short enough to type, random enough not to
// be guessed or collide.
func newID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "req-" + hex.EncodeToString(b[:])
}

// MarshalJSON writes the durations as Go durations ("30m0s"), as the task
// API does, so the webhook's body reads like the API's.
func (r Request) MarshalJSON() ([]byte, error) {
	type plain Request
	maxTTL := ""
	if r.MaxTTL > 0 {
		maxTTL = r.MaxTTL.String()
	}
	return json.Marshal(struct {
		plain
		MaxTTL string `json:"max_ttl"`
	}{plain(r), maxTTL})
}

// MarshalJSON writes For as a Go duration.
func (a Answer) MarshalJSON() ([]byte, error) {
	type plain Answer
	f := ""
	if a.For > 0 {
		f = a.For.String()
	}
	return json.Marshal(struct {
		plain
		For string `json:"for,omitempty"`
	}{plain(a), f})
}
