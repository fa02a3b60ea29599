// Package api holds the wire types of bridled's task API (HTTP/JSON on a
// unix socket, documented in docs/DAEMON.md) and a client for it, shared by
// the daemon and the CLI. It imports no policy engine, so the CLI stays
// small.
package api

import (
	"github.com/bridle-sh/bridle/daemon/identity"
	"time"

	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/policy"
)

// StartRequest is the body of POST /v1/tasks. Exactly one of Workload,
// PID and Pod names the workload.
type StartRequest struct {
	Workload string `json:"workload,omitempty"` // cgroup path below the cgroup v2 mount
	PID      int    `json:"pid,omitempty"`      // a process in the workload
	// Pod names an agent pod on this node, "NS/NAME" (the pod's cgroup)
	// or "NS/NAME/CONTAINER" (one container's cgroup).
	Pod    string            `json:"pod,omitempty"`
	Intent string            `json:"intent"`
	Labels map[string]string `json:"labels,omitempty"`
	TTL    string            `json:"ttl,omitempty"` // Go duration; "" asks for what the policy allows
	// Parent makes the task a sub-agent of a task in force: it gets at
	// most what the parent has and ends when the parent does.
	Parent string `json:"parent,omitempty"`
	// Grants, if set, caps the task: it gets only what both the policy
	// and the grants allow.
	Grants *Grants `json:"grants,omitempty"`
	// Mode is "enforce" (default) or "audit" (refusals recorded as
	// would-deny and let through; the daemon's config must allow it).
	Mode string `json:"mode,omitempty"`
	// LogAllowed records allowed decisions too.
	LogAllowed bool `json:"log_allowed,omitempty"`
	// RunAs names the users the workload's processes will run as, for a
	// workload started empty (bridle run starts its command after the
	// task): exec rules are checked against them, and against the users
	// of the processes already in the workload.
	RunAs []RunAs `json:"run_as,omitempty"`
}

// RunAs is a user a workload runs as: its uid and every group it holds.
type RunAs struct {
	UID  uint32   `json:"uid"`
	GIDs []uint32 `json:"gids,omitempty"`
}

// Grants are what a task may do at most, in `bridle run`'s flag syntax.
type Grants struct {
	Connect []string `json:"connect"` // PROTO:ADDR[:PORTS] or PROTO:NAME[:PORTS]
	Unix    []string `json:"unix"`    // PATH or @NAME
	Exec    []string `json:"exec"`    // PATH, DIR/ for the executables below it, script:PATH
	// AllowWritableExec (--allow-writable-exec) accepts exec rules whose
	// file the workload's user can write; a policy must accept them too.
	AllowWritableExec bool `json:"allow_writable_exec,omitempty"`
	// Listen is left out when empty, so that a daemon that predates it
	// (and refuses unknown fields) still takes requests that do not use it.
	Listen []string `json:"listen,omitempty"` // PROTO:PORTS
}

// Envelope parses g into the envelope it caps a task to; nil (no cap)
// stays nil. Errors name the flag a bad value belongs to.
func (g *Grants) Envelope() (*policy.Envelope, error) {
	if g == nil {
		return nil, nil
	}
	env, err := policy.ParseGrants(g.Connect, g.Unix, g.Exec)
	env.AllowWritableExec = g.AllowWritableExec
	if err != nil {
		return &env, err
	}
	env.Listen, err = policy.ParseListenGrants(g.Listen)
	return &env, err
}

// Task is a task as the API reports it, with the policy revision that
// decided its envelope.
type Task struct {
	ID       string `json:"id"`
	Workload string `json:"workload"` // cgroup path below the cgroup v2 mount
	CgroupID uint64 `json:"cgroup_id"`
	Identity string `json:"identity"`
	// IdentitySource is where Identity came from (static, spire, request).
	IdentitySource identity.Source   `json:"identity_source,omitempty"`
	Intent         string            `json:"intent"`
	Labels         map[string]string `json:"labels,omitempty"`
	Slot           uint32            `json:"slot"` // the kernel slot holding its rules
	Generation     uint32            `json:"generation"`
	Started        time.Time         `json:"started"`
	Expires        time.Time         `json:"expires,omitzero"` // zero: no expiry
	Rules          int               `json:"rules"`            // kernel entries in force
	Mode           Mode              `json:"mode"`
	// KeepUnix are the unix connections the workload held before the
	// task: they were not made under it and stay open at its end.
	KeepUnix       []UnixConn `json:"keep_unix,omitempty"`
	PolicyRevision string     `json:"policy_revision"`
	// Parent is the task this one is a sub-agent of, "" for none.
	Parent string `json:"parent,omitempty"`
	// Pod is the Kubernetes pod of the workload, "NS/NAME/UID"; "" for
	// other workloads.
	Pod string `json:"pod,omitempty"`
}

// Mode is how the kernel treats a task's decisions. Its fields are named
// as they always were on the wire, capitalised.
type Mode struct {
	Audit     bool // refusals recorded as would-deny and let through
	EmitAllow bool // allowed decisions recorded too
}

// UnixConn is a unix connection by its socket's inode and its peer's.
type UnixConn struct {
	Inode uint64 `json:"inode"`
	Peer  uint64 `json:"peer,omitempty"`
}

// TaskList is the body of GET /v1/tasks.
type TaskList struct {
	Tasks []Task `json:"tasks"`
}

// Error is the body of every error response.
type Error struct {
	Error   string   `json:"error"`
	Reasons []string `json:"reasons,omitempty"` // a policy's deny messages
}

// StreamLine is one line of GET /v1/events: a record, or the end of the
// stream.
type StreamLine struct {
	Record *audit.Record `json:"record,omitempty"`
	End    *StreamEnd    `json:"end,omitempty"`
}

// StreamEnd closes a complete event stream.
type StreamEnd struct {
	// Lost is how many records the stream could not carry because its
	// reader was too slow; they are in the audit log.
	Lost uint64 `json:"lost"`
}

// Status is the body of GET /v1/status.
type Status struct {
	Node      string         `json:"node"`
	Features  map[string]any `json:"features"`
	Roots     []Root         `json:"roots"`
	Policy    PolicyStatus   `json:"policy"`
	Tasks     int            `json:"tasks"`
	RingDrops uint64         `json:"ring_drops"`
	AuditLost uint64         `json:"audit_lost"`
	// Degraded lists what is not as it should be; empty when all is well.
	Degraded []string `json:"degraded"`
	// Hardening is what the last check found of each workload below the
	// roots that has processes: the unit settings they lack.
	Hardening []WorkloadHardening `json:"hardening"`
	// Listeners are bridled's own: the task API ("api") and, if
	// configured, "metrics".
	Listeners []Listener `json:"listeners,omitempty"`
	// DNS is bridled's resolver; absent when it does not run.
	DNS *DNSStatus `json:"dns,omitempty"`
	// Identity is the source of workload identities.
	Identity *identity.Status `json:"identity,omitempty"`
	// Kubernetes is the pod watch; absent when kubernetes is not enabled.
	Kubernetes *KubernetesStatus `json:"kubernetes,omitempty"`
}

// KubernetesStatus is what bridled knows of the agent pods of its node.
type KubernetesStatus struct {
	Node string `json:"node"`
	// Synced says whether the pod list has been read once.
	Synced bool `json:"synced"`
	// Watched is the number of agent pods on the node; Bound those whose
	// cgroup is confined.
	Watched int `json:"watched"`
	Bound   int `json:"bound"`
	// Hook says whether the runtime hook (NRI) is connected: without it
	// an agent pod is confined when the watch sees it, which may be after
	// its containers started.
	Hook bool `json:"hook"`
	// Errors are the agent pods that could not be confined, and why.
	Errors []string `json:"errors,omitempty"`
}

// DNSStatus is the resolver the workloads' DNS is steered to.
type DNSStatus struct {
	Listen4  string `json:"listen4,omitempty"` // ADDR:PORT, UDP and TCP
	Listen6  string `json:"listen6,omitempty"`
	Upstream string `json:"upstream"`
	// Queries answered, by verdict, since bridled started.
	Allowed          uint64 `json:"allowed"`
	Denied           uint64 `json:"denied"`
	CacheHits        uint64 `json:"cache_hits"`
	Forwarded        uint64 `json:"forwarded"`
	UpstreamFailures uint64 `json:"upstream_failures"`
}

// WorkloadHardening is one workload's processes checked for the unit
// settings an adopted workload needs (docs/DAEMON.md, agent units).
type WorkloadHardening struct {
	Workload  string `json:"workload"` // cgroup path below the cgroup v2 mount
	Processes int    `json:"processes"`
	// Missing are the settings (named as systemd names them) that at
	// least one process lacks; empty when none does.
	Missing []string  `json:"missing"`
	PIDs    []int     `json:"pids,omitempty"` // some of the processes lacking them
	Checked time.Time `json:"checked"`
	Errors  []string  `json:"errors,omitempty"` // processes that could not be read
}

// Listener is one of bridled's listeners: bound and serving, or not (and
// being bound again) with the reason.
type Listener struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	Bound   bool   `json:"bound"`
	Error   string `json:"error,omitempty"`
}

// Root is one configured cgroup root as the daemon found it.
type Root struct {
	Path     string `json:"path"`
	CgroupID uint64 `json:"cgroup_id"`
	Attached bool   `json:"attached"`
	Error    string `json:"error,omitempty"`
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
