// Package api holds the wire types of bridled's task API (HTTP/JSON on a
// unix socket, documented in docs/DAEMON.md), shared by the daemon and the
// CLI. It imports no policy engine, so the CLI stays small.
package api

import "github.com/bridle-sh/bridle/daemon/store"

// StartRequest is the body of POST /v1/tasks. Exactly one of Workload and
// PID names the workload.
type StartRequest struct {
	Workload string            `json:"workload,omitempty"` // cgroup path below the cgroup v2 mount
	PID      int               `json:"pid,omitempty"`      // a process in the workload
	Intent   string            `json:"intent"`
	Labels   map[string]string `json:"labels,omitempty"`
	TTL      string            `json:"ttl,omitempty"` // Go duration; "" asks for what the policy allows
}

// Task is a task as the API reports it, with the policy revision that
// decided its envelope.
type Task = store.Entry

// TaskList is the body of GET /v1/tasks.
type TaskList struct {
	Tasks []Task `json:"tasks"`
}

// Error is the body of every error response.
type Error struct {
	Error   string   `json:"error"`
	Reasons []string `json:"reasons,omitempty"` // a policy's deny messages
}
