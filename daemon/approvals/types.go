// Package approvals owns step-up approval requests and the grants their
// answers put in force.
package approvals

import (
	"errors"
	"fmt"
	"time"
)

// Approver is who answers a request: a caller of the task API by its
// kernel credentials and proved SPIFFE ID, or a person signed in to the
// web page as the admin the sign-in link was made for.
type Approver struct {
	UID, GID uint32
	Groups   []uint32
	Identity string
	Auth     string
}

// Request is one refused action a human is asked about.
type Request struct {
	ID, Task, Workload, Identity, Intent string
	Action                               string
	Target                               string // "tcp 192.0.2.7:443", "api.example.test:443", "/usr/bin/git (dev:ino)"
	Protocol, Address                    string
	Port                                 uint16
	Name, Path                           string
	Dev, Ino                             uint64
	PID                                  uint32
	Comm, Reason, PolicyRevision         string
	Opened, Expires                      time.Time
	State                                string // pending, approved, denied, expired
	MaxTTL                               time.Duration
	Answer                               *Answer
}

// Answer is who answered a request, when, and how.
type Answer struct {
	By        string
	UID       *uint32
	Identity  string
	At        time.Time
	For       time.Duration
	Reason    string
	GrantEnds time.Time
}

var (
	// ErrNoRequest: no request has the id.
	ErrNoRequest = errors.New("no such approval request")
	// ErrNotPending: the request was answered or expired.
	ErrNotPending = errors.New("approval request is not pending")
)

// NotApproverError refuses an answer from someone the request's approvable
// entry does not name.
type NotApproverError struct {
	Request string
	By      string
}

func (e *NotApproverError) Error() string {
	return fmt.Sprintf("%s may not answer approval request %s", e.By, e.Request)
}
