// Package audit turns kernel decisions into Bridle's decision records: JSON
// lines with stable field names for programs, and one readable line per
// decision for people.
package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/daemon/identity"
)

// Record is one decision event. The JSON field names are a contract users
// script against (docs/EVENTS.md); add fields, never rename them.
type Record struct {
	Time     string `json:"time"`     // RFC 3339, UTC
	Node     string `json:"node"`     // host name
	Workload string `json:"workload"` // cgroup path below the cgroup v2 root
	Identity string `json:"identity"` // SPIFFE ID
	// IdentitySource is where Identity came from: static, spire,
	// request, or none (no source vouches for the workload).
	IdentitySource identity.Source `json:"identity_source,omitempty"`
	Task           string          `json:"task"`
	Intent         string          `json:"intent"`
	PID            uint32          `json:"pid"`
	Comm           string          `json:"comm"`
	Action         bpf.Action      `json:"action"`   // connect | sendmsg | exec | socket | bind | accept | setsockopt | namespace; bridled: task_start | task_end | api | suppressed | dns
	Protocol       bpf.Protocol    `json:"protocol"` // tcp | udp | icmp | unix | raw | packet | other
	Address        string          `json:"address"`  // IP address, "" when none
	Port           uint16          `json:"port"`
	Path           string          `json:"path"` // binary or unix socket
	// Family is the address family (AF_*) of a socket refused for its
	// family; absent otherwise.
	Family  uint16      `json:"family,omitempty"`
	Verdict bpf.Verdict `json:"verdict"` // allow | deny | would-deny
	// Reason is the kernel's (a bpf.Reason) or, on bridled's own records,
	// free text.
	Reason      string          `json:"reason"`
	Enforcement bpf.Enforcement `json:"enforcement"` // cgroup | lsm | kill | seccomp | daemon | resolver
	// PolicyRevision names the policy that decided: the revision of the
	// task's envelope, or of the baseline for a workload without a task.
	PolicyRevision string `json:"policy_revision"`
	// Suppressed is how many decisions of the same workload were left out
	// before this record: by the kernel, past the workload's event budget
	// (on a decision or on its task's task_end), or by bridled's audit
	// file, past the workload's share of the file (on a "suppressed"
	// record).
	Suppressed uint64 `json:"suppressed"`

	// Name, QueryType and Answers describe a query to Bridle's resolver
	// (action "dns"): the name asked for (canonical when it is a valid
	// name), the record type ("A", "AAAA", "TXT", "TYPE65"), and the
	// addresses the answer gave for the name, which became the task's
	// learned entries. Absent on other records.
	Name      string   `json:"name,omitempty"`
	QueryType string   `json:"qtype,omitempty"`
	Answers   []string `json:"answers,omitempty"`

	// Request is the approval request id: on the refusal that opened or
	// matched a pending request, and on the approval records
	// (approval_request, approval_granted, approval_denied,
	// approval_expired, grant_ended) of that request.
	Request string `json:"request,omitempty"`

	// CgroupID is the workload's cgroup id (its directory's inode), for
	// routing a kernel decision to the workload's subscribers inside the
	// process that read it. It is not part of the record: never written,
	// zero in a record read back.
	CgroupID uint64 `json:"-"`
}

// TaskExpired reports a task_end record of a task whose lifetime ran out:
// its reason's cause, before any "; " detail, is bpf.TaskExpired.
func (r Record) TaskExpired() bool {
	cause, _, _ := strings.Cut(r.Reason, "; ")
	return r.Action == bpf.ActionTaskEnd && cause == bpf.TaskExpired
}

// Addr formats an address for a record: empty for none.
func Addr(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// Timestamp formats t as records carry it.
func Timestamp(t time.Time) string {
	return t.UTC().Format(time.RFC3339Nano)
}

// Encoder turns records into JSON lines: the one encoding of every writer
// of records (Writer, bridled's audit file). It reuses one buffer and is
// not safe for concurrent use.
type Encoder struct {
	buf bytes.Buffer
	enc *json.Encoder
}

// Line encodes r as one JSON line, newline included. The bytes are valid
// until the next call.
func (e *Encoder) Line(r Record) ([]byte, error) {
	if e.enc == nil {
		e.enc = json.NewEncoder(&e.buf)
	}
	e.buf.Reset()
	if err := e.enc.Encode(r); err != nil {
		return nil, fmt.Errorf("audit: encode record: %w", err)
	}
	return e.buf.Bytes(), nil
}

// Writer writes records as JSON lines. It is safe for concurrent use.
type Writer struct {
	mu  sync.Mutex
	enc Encoder
	w   io.Writer
}

// NewWriter writes JSON lines to w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: w}
}

// Write appends one record.
func (w *Writer) Write(r Record) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	b, err := w.enc.Line(r)
	if err != nil {
		return err
	}
	if _, err := w.w.Write(b); err != nil {
		return fmt.Errorf("audit: write record: %w", err)
	}
	return nil
}
