package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/bpf"
)

// Event is one kernel decision, decoded.
type Event struct {
	Time     time.Time
	CgroupID uint64 // the workload: the bound cgroup whose binding decided
	// OriginCgroupID is the cgroup of the process (or packet) itself:
	// CgroupID, or a cgroup below it (an agent unit below a root, under
	// the baseline).
	OriginCgroupID uint64
	PID            uint32
	Comm           string
	Slot           uint32
	Generation     uint32
	Action         bpf.Action
	Protocol       bpf.Protocol // none for exec and namespace
	Verdict        bpf.Verdict
	Reason         bpf.Reason
	Enforcement    bpf.Enforcement
	Addr           netip.Addr
	Port           uint16
	Path           string // unix socket name, the name an exec was called by, or a socket option (IPV6_RTHDR)
	Dev, Ino       uint64 // the binary of an exec
	Family         uint16 // the address family of a socket refused for it
	// SuppressedTotal is how many events of this budget (BudgetCgroupID
	// and Generation) the kernel has left out so far, over the
	// per-workload budget, modulo 2^32: the difference from the previous
	// event's is how many were left out in between.
	SuppressedTotal uint32
}

// BudgetCgroupID is the cgroup whose event budget SuppressedTotal counts:
// the workload's under a task, the process's own under the baseline (so
// that one agent without a task cannot use up the others' records).
func (ev Event) BudgetCgroupID() uint64 {
	if ev.Slot == BaselineSlot {
		return ev.OriginCgroupID
	}
	return ev.CgroupID
}

// sockoptNames names the socket options the setsockopt check refuses, by
// level (4: SOL_IP, 6: SOL_IPV6) and number, as <linux/in.h> and
// <linux/in6.h> spell them.
var sockoptNames = map[[2]uint16]string{
	{4, unix.IP_OPTIONS}:          "IP_OPTIONS",
	{4, unix.IP_IPSEC_POLICY}:     "IP_IPSEC_POLICY",
	{4, unix.IP_XFRM_POLICY}:      "IP_XFRM_POLICY",
	{6, unix.IPV6_2292HOPOPTS}:    "IPV6_2292HOPOPTS",
	{6, unix.IPV6_2292DSTOPTS}:    "IPV6_2292DSTOPTS",
	{6, unix.IPV6_2292RTHDR}:      "IPV6_2292RTHDR",
	{6, unix.IPV6_2292PKTOPTIONS}: "IPV6_2292PKTOPTIONS",
	{6, unix.IPV6_NEXTHOP}:        "IPV6_NEXTHOP",
	{6, unix.IPV6_IPSEC_POLICY}:   "IPV6_IPSEC_POLICY",
	{6, unix.IPV6_XFRM_POLICY}:    "IPV6_XFRM_POLICY",
	{6, unix.IPV6_HOPOPTS}:        "IPV6_HOPOPTS",
	{6, unix.IPV6_RTHDRDSTOPTS}:   "IPV6_RTHDRDSTOPTS",
	{6, unix.IPV6_RTHDR}:          "IPV6_RTHDR",
	{6, unix.IPV6_DSTOPTS}:        "IPV6_DSTOPTS",
}

func sockoptName(family uint8, name uint16) string {
	if s, ok := sockoptNames[[2]uint16{uint16(family), name}]; ok {
		return s
	}
	level := map[uint8]string{4: "SOL_IP", 6: "SOL_IPV6"}[family]
	return fmt.Sprintf("%s option %d", level, name)
}

// EventReader reads decision events from the kernel's ring buffer.
type EventReader struct {
	// OnIdle, if set, is called by Read each time it finds the ring empty.
	// Every event queued before that moment has then been returned, which
	// is how a consumer knows a finished workload's decisions are all in.
	OnIdle func()

	rd       *ringbuf.Reader
	bootBase time.Time // wall-clock time at CLOCK_BOOTTIME zero
	rec      ringbuf.Record
}

// pollInterval bounds how long an event waits when the kernel batched its
// wakeup.
const pollInterval = 50 * time.Millisecond

// Events opens a reader on the enforcer's ring buffer. Only one reader
// should consume a ring buffer at a time.
func (e *Enforcer) Events() (*EventReader, error) {
	rd, err := ringbuf.NewReader(e.net.BridleEvents)
	if err != nil {
		return nil, fmt.Errorf("open event reader: %w", err)
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		rd.Close()
		return nil, fmt.Errorf("read boot clock: %w", err)
	}
	return &EventReader{rd: rd, bootBase: time.Now().Add(-time.Duration(ts.Nano()))}, nil
}

// ErrClosed is returned by Read after Close.
var ErrClosed = ringbuf.ErrClosed

// Read blocks until the next event, or until Close (ErrClosed).
func (r *EventReader) Read() (Event, error) {
	for {
		r.rd.SetDeadline(time.Now().Add(pollInterval))
		err := r.rd.ReadInto(&r.rec)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if r.OnIdle != nil {
				r.OnIdle()
			}
			continue
		}
		if err != nil {
			return Event{}, err
		}
		return r.decode(r.rec.RawSample)
	}
}

// TryRead returns the next event already queued, or false when none is.
func (r *EventReader) TryRead() (Event, bool, error) {
	r.rd.SetDeadline(time.Now())
	err := r.rd.ReadInto(&r.rec)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return Event{}, false, nil
	}
	if err != nil {
		return Event{}, false, err
	}
	ev, err := r.decode(r.rec.RawSample)
	return ev, err == nil, err
}

// ErrFlushed is returned by Read once every event queued before Flush has
// been read.
var ErrFlushed = ringbuf.ErrFlushed

// Flush makes Read return the events queued now, then ErrFlushed: the way to
// drain the ring before shutting down without losing decisions.
func (r *EventReader) Flush() error { return r.rd.Flush() }

// Close unblocks Read and releases the reader.
func (r *EventReader) Close() error { return r.rd.Close() }

func (r *EventReader) decode(raw []byte) (Event, error) {
	// The record is the C struct as the kernel wrote it, in this host's
	// byte order: copy it over the generated Go twin. Reflection-based
	// decoding cost most of the reader's time per event.
	var k netBridleEvent
	size := int(unsafe.Sizeof(k))
	if len(raw) < size {
		return Event{}, fmt.Errorf("decode event: %d bytes, want %d", len(raw), size)
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&k)), size), raw)
	ev := Event{
		Time:           r.bootBase.Add(time.Duration(k.TimeNs)).UTC(),
		CgroupID:       k.CgroupId,
		OriginCgroupID: k.OriginCgroupId,
		PID:            k.Pid,
		Comm:           cString(k.Comm[:]),
		Slot:           k.Slot,
		Generation:     k.Generation,
		Action:         bpf.ActionOf(k.Action),
		Protocol:       bpf.ProtocolOf(k.Proto),
		Verdict:        bpf.VerdictOf(k.Verdict),
		Reason:         bpf.ReasonOf(k.Reason),
		Enforcement:    bpf.EnforcementOf(k.Enforcement),
		Path:           cString(k.Path[:]),
		Dev:            k.Dev,
		Ino:            k.Ino,

		SuppressedTotal: k.Suppressed,
	}
	switch {
	case k.Reason == uint8(netBridleReasonBRIDLE_REASON_FAMILY):
		// No address: the family field holds the refused AF_* number.
		ev.Family = uint16(k.Family)
	case k.Family == 4:
		ev.Addr = netip.AddrFrom4([4]byte(k.Addr[:4]))
		ev.Port = k.Port
	case k.Family == 6:
		ev.Addr = netip.AddrFrom16(k.Addr)
		ev.Port = k.Port
	}
	switch ev.Action {
	case bpf.ActionSocket:
		ev.Port = 0
	case bpf.ActionSetsockopt:
		// The program puts the option's level in family and its number
		// in port; the record names the option instead.
		ev.Path = sockoptName(k.Family, k.Port)
		ev.Addr, ev.Port = netip.Addr{}, 0
	}
	return ev, nil
}

func cString(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}
