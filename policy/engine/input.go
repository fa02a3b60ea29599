package engine

import (
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
)

// Input is what a policy sees as `input` when it decides an envelope. The
// JSON field names are the contract: policies are written against them, and
// docs/POLICY.md lists them. Fields a caller leaves empty still appear (as
// "" or {}), so a policy can test them without guarding every reference;
// Task and Parent are left out altogether when there is none.
type Input struct {
	// Identity is the workload's SPIFFE ID, as attested or mapped by the
	// daemon, never as claimed by the agent.
	Identity string `json:"identity"`
	// IdentitySource is where Identity came from: "static" (bridled's
	// config), "spire" (attested by a SPIRE agent) or "request" (named by
	// a standalone run's caller).
	IdentitySource string   `json:"identity_source"`
	Workload       Workload `json:"workload"`
	// Task is the task being started; nil when the baseline is evaluated.
	Task *Task `json:"task,omitempty"`
	// Parent is the task of the agent that asked for this one, for
	// sub-agents; nil for a top-level task.
	Parent    *Parent   `json:"parent,omitempty"`
	Requester Requester `json:"requester"`
}

// Workload describes the process tree the task runs in.
type Workload struct {
	Cgroup string            `json:"cgroup"` // cgroup v2 path below the mount point, e.g. "/bridle.run/w1"
	Labels map[string]string `json:"labels"` // set by whoever created or adopted the workload
}

// Task is a task start request as the policy sees it.
type Task struct {
	ID     string            `json:"id"`
	Intent string            `json:"intent"` // what the task is for, in the requester's words
	Labels map[string]string `json:"labels"`
	// TTL is the lifetime the requester asked for; 0 asks for as long as
	// the policy allows. In JSON it is a number of seconds, which Rego
	// compares without parsing.
	TTL time.Duration `json:"ttl"`
}

// Parent is the task a sub-agent's task was started from.
type Parent struct {
	ID       string            `json:"id"`
	Identity string            `json:"identity"`
	Intent   string            `json:"intent"`
	Labels   map[string]string `json:"labels"`
}

// Requester is who asked for the task, as the daemon established it: from
// the caller's socket credentials, and from the SVID it proved its SPIFFE
// ID with, if any.
type Requester struct {
	// UID and GID are the caller's kernel credentials on the unix socket.
	// A caller over TCP (Auth "x509-svid") has none: both are NoUID.
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
	// Identity is the SPIFFE ID the caller proved with a JWT-SVID or an
	// X.509-SVID, "" for a caller known by its credentials alone.
	Identity string `json:"identity"`
	// Auth is how the caller was identified: AuthPeerCred, AuthJWTSVID or
	// AuthX509SVID.
	Auth string `json:"auth"`
}

// How a requester was identified (Requester.Auth).
const (
	AuthPeerCred = "peercred"  // kernel credentials on the unix socket
	AuthJWTSVID  = "jwt-svid"  // a JWT-SVID on the unix socket (uid and gid are the socket's)
	AuthX509SVID = "x509-svid" // an X.509-SVID over mutual TLS (no uid or gid)
)

// NoUID is the uid and gid of a requester that has none (a caller over
// TCP): (uid_t)-1, which no Linux process can hold, so that no policy
// mistakes such a caller for root.
const NoUID = ^uint32(0)

// MarshalJSON writes in with empty label maps as {} rather than null, so a
// policy's `input.task.labels[k]` lookups and count() calls work on every
// input.
func (in Input) MarshalJSON() ([]byte, error) {
	type plain Input
	p := plain(in)
	p.Workload.Labels = nonNil(p.Workload.Labels)
	if p.Parent != nil {
		parent := *p.Parent
		parent.Labels = nonNil(parent.Labels)
		p.Parent = &parent
	}
	return json.Marshal(p)
}

// MarshalJSON writes t with its TTL in seconds.
func (t Task) MarshalJSON() ([]byte, error) {
	if t.TTL < 0 {
		return nil, fmt.Errorf("policy: task %q has a negative TTL %v", t.ID, t.TTL)
	}
	t.Labels = nonNil(t.Labels)
	type plain Task
	return json.Marshal(struct {
		plain
		TTL json.Number `json:"ttl"`
	}{plain(t), json.Number(strconv.FormatFloat(t.TTL.Seconds(), 'f', -1, 64))})
}

// UnmarshalJSON reads t with its TTL in seconds, so that an input document
// saved from a decision (or written by hand to try a policy) reads back.
func (t *Task) UnmarshalJSON(b []byte) error {
	type plain Task
	var v struct {
		plain
		TTL *float64 `json:"ttl"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*t = Task(v.plain)
	t.TTL = 0
	if v.TTL != nil {
		s := *v.TTL
		if s < 0 || math.IsNaN(s) || s > math.MaxInt64/float64(time.Second) {
			return errors.New("policy: task ttl must be a number of seconds from 0 to 292 years")
		}
		t.TTL = time.Duration(s * float64(time.Second))
	}
	if t.Labels == nil {
		t.Labels = map[string]string{}
	}
	return nil
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// inputSchema is the JSON schema of Input. The compiler type-checks every
// policy against it, so a reference to a field that does not exist
// (input.task.intnet) or a comparison of the wrong type (input.task.ttl ==
// "1h") is refused with its file and line when the policy is loaded, instead
// of quietly never matching at task start. It is a file of its own so that
// `opa check --schema policy/input.schema.json` applies the same check in CI.
//
//go:embed input.schema.json
var inputSchema []byte
