// Package identity says who a workload is: its SPIFFE ID and where that
// came from. bridled's config chooses one source: a static map (the
// default, no dependencies) or a SPIRE agent's Delegated Identity API.
// Every decision Bridle makes is about this identity: the policy sees it,
// every record carries it, and a task ends when it changes.
package identity

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Source names where an identity came from.
type Source string

const (
	// Static: bridled's config mapped the workload's cgroup, unit or uid.
	Static Source = "static"
	// SPIRE: a SPIRE agent attested the workload.
	SPIRE Source = "spire"
	// Request: the task's request named it (standalone `bridle run
	// --identity`, where the caller is the only authority there is).
	Request Source = "request"
	// None: no source vouches for the workload (it has no task, and SPIRE
	// has not attested it). Its records carry no ID.
	None Source = "none"
)

// Identity is a workload's SPIFFE ID and its source.
type Identity struct {
	ID     string `json:"id"`
	Source Source `json:"source"`
	// Selectors are those bridled attested to SPIRE for the workload
	// ("type:value"), kept with its task so that a restarted bridled asks
	// about it the same way; none for other sources and for pid mode.
	Selectors []string `json:"selectors,omitempty"`
}

// Provider maps workloads to identities.
type Provider interface {
	// Identify returns the identity under which a task for the workload
	// is decided. It may wait, within ctx, for an attestation. From then
	// on the provider watches the workload until Release and reports a
	// change to the callback it was made with.
	Identify(ctx context.Context, w Workload) (Identity, error)
	// Known returns the workload's identity without waiting, for the
	// records of its kernel verdicts; None when no source vouches for it.
	Known(cgroup string) Identity
	// Release ends the watch of a workload whose task ended.
	Release(cgroup string)
	// Adopt follows a workload whose task a previous bridled started under
	// last, as if Identify had returned it.
	Adopt(cgroup string, last Identity)
	// Status says how the source is doing, for `bridle status`.
	Status() Status
	// Close stops every watch.
	Close()
}

// Workload is a workload whose task is being started.
type Workload struct {
	Cgroup string // path below the cgroup v2 mount
	// StartedBy is the uid of the caller asking for the task, as the
	// kernel reported it on the task API's socket; valid when
	// HasStartedBy. It names a workload that has no process yet: `bridle
	// run` starts its command after the task.
	StartedBy    uint32
	HasStartedBy bool
}

// Change reports that a watched workload's identity changed. To.ID is ""
// when the workload has no identity any more (its SPIRE entry was deleted,
// or SPIRE was unreachable longer than the hold time).
type Change struct {
	Cgroup   string
	From, To Identity
	Reason   string
}

// OnChange is told of every change. It runs on the provider's goroutine
// and must not call back into the provider synchronously.
type OnChange func(Change)

// Status is a provider's state.
type Status struct {
	Source Source `json:"source"`
	// Degraded is why the source cannot attest now ("" when it can).
	Degraded string `json:"degraded,omitempty"`
	// Since is when the source became degraded.
	Since time.Time `json:"since,omitzero"`
	// Watched is the number of workloads whose identity is followed.
	Watched int `json:"watched"`
	// Endpoint is where the source is asked (SPIRE's admin socket).
	Endpoint string `json:"endpoint,omitempty"`
}

// UnavailableError is an identity the source cannot give now (SPIRE
// unreachable, no entry matches, several entries match): the task is
// refused and the workload stays under the baseline.
type UnavailableError struct{ Err error }

func (e *UnavailableError) Error() string { return e.Err.Error() }
func (e *UnavailableError) Unwrap() error { return e.Err }

func unavailable(format string, args ...any) error {
	return &UnavailableError{fmt.Errorf(format, args...)}
}

// IsUnavailable reports whether err is an UnavailableError.
func IsUnavailable(err error) bool {
	var u *UnavailableError
	return errors.As(err, &u)
}
