package node

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/loader"
)

// ReadEvents turns the kernel's decisions into records until the reader is
// flushed or closed, and hands each to the sinks: Options.Records, the
// metrics, the subscriptions of its workload, then extra in order (another
// consumer of decisions plugs in here).
func (n *Node) ReadEvents(r *loader.EventReader, extra ...audit.Sink) {
	sinks := n.sinks(extra...)
	r.OnIdle = n.idle
	for {
		ev, err := r.Read()
		if err != nil {
			if !errors.Is(err, loader.ErrFlushed) && !errors.Is(err, loader.ErrClosed) {
				n.log.Error("event reader stopped", "err", err)
			}
			n.closeAll()
			return
		}
		rec := n.Enrich(ev)
		n.refusedEvent(&rec, ev)
		sinks.Record(rec)
	}
}

// Enrich turns a kernel decision into a record: the task the slot
// generation names (in force, or ended moments ago), else, under the
// baseline, the cgroup of the process itself (an agent unit below a root,
// not the root) with that cgroup's identity.
func (n *Node) Enrich(ev loader.Event) audit.Record {
	rec := audit.Record{
		Time: audit.Timestamp(ev.Time), Node: n.opt.NodeName,
		PID: ev.PID, Comm: ev.Comm, Action: ev.Action, Protocol: ev.Protocol,
		Address: audit.Addr(ev.Addr), Port: ev.Port, Path: ev.Path, Family: ev.Family,
		Verdict: ev.Verdict, Reason: string(ev.Reason), Enforcement: ev.Enforcement,
		Suppressed: n.newlySuppressed(ev.BudgetCgroupID(), ev.Generation, ev.SuppressedTotal),
		CgroupID:   ev.CgroupID,
	}
	if ev.Slot != loader.BaselineSlot {
		if t, ok := n.tasks.ByGeneration(ev.Generation); ok {
			rec.Workload, rec.Identity, rec.Task, rec.Intent = t.Workload, t.Identity, t.ID, t.Intent
			rec.IdentitySource = t.IdentitySource
			rec.PolicyRevision = t.PolicyRevision
			return rec
		}
	}
	n.mu.Lock()
	rec.PolicyRevision = n.baseline
	n.mu.Unlock()
	rec.Workload = n.cgroupPath(ev.CgroupID)
	if ev.OriginCgroupID != 0 && ev.OriginCgroupID != ev.CgroupID {
		// Gone already (or not below a root): the bound cgroup still names
		// where the decision came from.
		if own := n.cgroupPath(ev.OriginCgroupID); own != "" {
			rec.Workload = own
		}
	}
	if rec.Workload != "" {
		known := n.opt.Identities.Known(rec.Workload)
		rec.Identity, rec.IdentitySource = known.ID, known.Source
	}
	return rec
}

// cgroupPath finds the path of a cgroup below the roots by its id (the
// directory's inode), remembering what it found. An id not found is
// remembered as "" for a while, so a flood of events from a cgroup that is
// gone does not walk the tree per event.
func (n *Node) cgroupPath(id uint64) string {
	n.mu.Lock()
	p, ok := n.paths[id]
	n.mu.Unlock()
	if ok {
		return p
	}
	found := ""
	roots := slices.Clone(n.opt.Roots)
	n.mu.Lock()
	for r := range n.adopted {
		roots = append(roots, r)
	}
	n.mu.Unlock()
	for _, r := range roots {
		base := filepath.Join(n.opt.CgroupRoot, r)
		_ = filepath.WalkDir(base, func(path string, de fs.DirEntry, err error) error {
			if err != nil {
				return filepath.SkipDir
			}
			if !de.IsDir() {
				return nil
			}
			if cid, err := loader.CgroupID(path); err == nil && cid == id {
				found = r + strings.TrimPrefix(path, base)
				return filepath.SkipAll
			}
			return nil
		})
		if found != "" {
			break
		}
	}
	n.RememberCgroup(id, found)
	if found == "" {
		time.AfterFunc(10*time.Second, func() {
			n.mu.Lock()
			if n.paths[id] == "" {
				delete(n.paths, id)
			}
			n.mu.Unlock()
		})
	}
	return found
}

// RememberCgroup names a cgroup id for the records of its decisions.
func (n *Node) RememberCgroup(id uint64, path string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.paths) > 4096 {
		clear(n.paths) // bounded; paths are found again on demand
	}
	n.paths[id] = path
}

// Subscription receives the records of one workload's decisions, for a
// client that runs the workload (`bridle run`) and shows them as they
// happen. It ends once the workload has neither a task nor a process left
// and every decision it made has been delivered.
type Subscription struct {
	C        <-chan audit.Record
	c        chan audit.Record
	cgroupID uint64
	dir      string // the workload's cgroup directory
	emptied  bool   // seen without processes at an earlier idle moment
	lost     atomic.Uint64
	closed   bool
}

// Lost is how many records the subscriber was too slow to take. They are
// still in the audit log; the subscription never slows the node down.
func (s *Subscription) Lost() uint64 { return s.lost.Load() }

// subscriptionBuffer is how many records wait for a slow subscriber before
// further ones are counted as lost.
const subscriptionBuffer = 8192

// Subscribe returns a subscription to the decisions of the workload in
// cgroup (a path below the cgroup v2 mount).
func (n *Node) Subscribe(cgroup string) (*Subscription, error) {
	dir := filepath.Join(n.opt.CgroupRoot, cgroup)
	id, err := loader.CgroupID(dir)
	if err != nil {
		return nil, badRequest("workload %s: %w", cgroup, err)
	}
	c := make(chan audit.Record, subscriptionBuffer)
	s := &Subscription{C: c, c: c, cgroupID: id, dir: dir}
	n.mu.Lock()
	n.subs[s] = struct{}{}
	n.mu.Unlock()
	return s, nil
}

// Unsubscribe ends a subscription early (its client went away).
func (n *Node) Unsubscribe(s *Subscription) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.closeLocked(s)
}

func (n *Node) closeLocked(s *Subscription) {
	if !s.closed {
		s.closed = true
		close(s.c)
		delete(n.subs, s)
	}
}

// deliverRecord is the subscriptions' sink: a kernel decision goes to the
// subscribers of the workload it names by cgroup id.
func (n *Node) deliverRecord(rec audit.Record) { n.deliver(rec.CgroupID, rec) }

func (n *Node) deliver(cgroupID uint64, rec audit.Record) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for s := range n.subs {
		if s.cgroupID != cgroupID {
			continue
		}
		select {
		case s.c <- rec:
		default:
			s.lost.Add(1)
		}
	}
}

// idle runs when the ring is found empty: every decision made before now
// has been delivered. A workload seen finished (no task, no process) at an
// earlier idle moment can have made no decision since, so its
// subscription is complete. The task is part of the test because a client
// subscribes after starting the task and before starting any process.
func (n *Node) idle() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for s := range n.subs {
		if s.emptied {
			n.closeLocked(s)
			continue
		}
		s.emptied = !n.tasks.Governed(s.cgroupID) && !populated(s.dir)
	}
}

// populated reports whether a cgroup has processes (in it or below it); a
// cgroup that is gone has none.
func populated(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if err != nil {
		return false
	}
	return !strings.Contains(string(b), "populated 0")
}

func (n *Node) closeAll() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for s := range n.subs {
		n.closeLocked(s)
	}
}

// maxSuppressedKeys bounds the running totals kept, like the kernel's map.
const maxSuppressedKeys = 65536

// newlySuppressed turns the kernel's running total of a task's suppressed
// events (modulo 2^32) into how many were left out since the last total
// reported. Events may be read out of order across CPUs, so a total behind
// the last one adds nothing: every suppressed event is reported once.
func (n *Node) newlySuppressed(cgroupID uint64, generation, total uint32) uint64 {
	if total == 0 {
		return 0
	}
	k := budgetKey{cgroupID, generation}
	n.mu.Lock()
	defer n.mu.Unlock()
	last, ok := n.suppressed[k]
	d := int32(total - last)
	if d <= 0 {
		return 0
	}
	if !ok && len(n.suppressed) >= maxSuppressedKeys {
		clear(n.suppressed)
	}
	n.suppressed[k] = total
	return uint64(d)
}

// finalSuppressed reads, at a task's end, what the kernel suppressed of the
// task's events that no event has reported yet (a workload that went quiet
// after its flood), and forgets the kernel's count. Events of the task
// still in the ring add nothing after this. The node's own total is kept a
// while, for those late events.
func (n *Node) finalSuppressed(cgroupID uint64, generation uint32) uint64 {
	total, err := n.opt.Kernel.TakeSuppressed(cgroupID, generation)
	if err != nil {
		n.log.Warn("read suppressed event count", "cgroup_id", cgroupID, "err", err)
		return 0
	}
	k := budgetKey{cgroupID, generation}
	n.mu.Lock()
	last := n.suppressed[k]
	n.suppressed[k] = uint32(total)
	n.mu.Unlock()
	time.AfterFunc(endedRetention, func() {
		n.mu.Lock()
		delete(n.suppressed, k)
		n.mu.Unlock()
	})
	d := int32(uint32(total) - last)
	if d <= 0 {
		return 0
	}
	return uint64(d)
}
