// Package audit turns kernel decisions into Bridle's decision records: JSON
// lines with stable field names for programs, and one readable line per
// decision for people.
package audit

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"time"
)

// Record is one decision event. The JSON field names are a contract users
// script against (docs/EVENTS.md); add fields, never rename them.
type Record struct {
	Time     string `json:"time"`     // RFC 3339, UTC
	Node     string `json:"node"`     // host name
	Workload string `json:"workload"` // cgroup path below the cgroup v2 root
	Identity string `json:"identity"` // SPIFFE ID
	Task     string `json:"task"`
	Intent   string `json:"intent"`
	PID      uint32 `json:"pid"`
	Comm     string `json:"comm"`
	Action   string `json:"action"`   // connect | sendmsg | exec | socket | bind | accept | setsockopt | namespace; bridled: task_start | task_end | api | suppressed
	Protocol string `json:"protocol"` // tcp | udp | icmp | unix | raw | packet | other
	Address  string `json:"address"`  // IP address, "" when none
	Port     uint16 `json:"port"`
	Path     string `json:"path"` // binary or unix socket
	// Family is the address family (AF_*) of a socket refused for its
	// family; absent otherwise.
	Family      uint16 `json:"family,omitempty"`
	Verdict     string `json:"verdict"` // allow | deny | would-deny
	Reason      string `json:"reason"`
	Enforcement string `json:"enforcement"` // cgroup | lsm | kill | seccomp | daemon
	// PolicyRevision names the policy that decided: the revision of the
	// task's envelope, or of the baseline for a workload without a task.
	PolicyRevision string `json:"policy_revision"`
	// Suppressed is how many decisions of the same workload were left out
	// before this record: by the kernel, past the workload's event budget
	// (on a decision or on its task's task_end), or by bridled's audit
	// file, past the workload's share of the file (on a "suppressed"
	// record).
	Suppressed uint64 `json:"suppressed"`
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

// Writer writes records as JSON lines. It is safe for concurrent use.
type Writer struct {
	mu  sync.Mutex
	enc *json.Encoder
	w   io.Writer
}

// NewWriter writes JSON lines to w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{enc: json.NewEncoder(w), w: w}
}

// Write appends one record.
func (w *Writer) Write(r Record) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.enc.Encode(r); err != nil {
		return fmt.Errorf("audit: write record: %w", err)
	}
	return nil
}
