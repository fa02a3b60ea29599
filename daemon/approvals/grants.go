package approvals

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
)

// grant is an approval in force. It is kept in the state file, so a
// restarted bridled ends it on time too (the kernel ends it by itself;
// bridled resets the connections opened under it and records the end).
type grant struct {
	Request    string        `json:"request"`
	Task       string        `json:"task"`
	CgroupID   uint64        `json:"cgroup_id"`
	Slot       uint32        `json:"slot"`
	Generation uint32        `json:"generation"`
	Target     policy.Target `json:"target"`
	// Names are what a dns target's grant lets the resolver forward and
	// learn; nothing is written to the kernel for them up front.
	Names []policy.NameRule `json:"names,omitempty"`
	Ends  time.Time         `json:"ends"`
	// For the grant_ended record after a restart.
	Workload string `json:"workload"`
	Identity string `json:"identity"`
	Intent   string `json:"intent"`
	Revision string `json:"policy_revision"`

	timer *time.Timer
}

func (g *grant) addrs() []loader.GrantedAddr {
	if g.Target.Action != policy.TargetConnect {
		return nil
	}
	a := loader.GrantedAddr{Protocol: g.Target.Protocol, Addr: g.Target.Addr.Unmap(), Expires: g.Ends}
	if g.Target.Protocol != policy.ProtoICMP {
		a.Ports = []policy.PortRange{{First: g.Target.Port, Last: g.Target.Port}}
	}
	return []loader.GrantedAddr{a}
}

func (g *grant) execs() []loader.GrantedExec {
	if g.Target.Action != policy.TargetExec {
		return nil
	}
	return []loader.GrantedExec{{Dev: g.Target.Dev, Ino: g.Target.Ino, Expires: g.Ends}}
}

// sameEntry reports whether two address grants share the kernel's entry:
// one per slot, protocol and address, whatever the ports.
func sameEntry(a, b *grant) bool {
	return a.Target.Action == policy.TargetConnect && b.Target.Action == policy.TargetConnect &&
		a.Slot == b.Slot && a.Generation == b.Generation &&
		a.Target.Protocol == b.Target.Protocol && a.Target.Addr.Unmap() == b.Target.Addr.Unmap()
}

// entryFor is the kernel entry of the address grants that share g's: the
// union of their ports, ending at the earliest of their ends. bridled
// rewrites it from the others when one ends; if bridled is dead by then,
// the others end early, never late. ok is false when none is left.
func (m *Manager) entryFor(g *grant, without string) (loader.GrantedAddr, bool) {
	e := g.addrs()[0]
	e.Ports, e.Expires = nil, time.Time{}
	found := false
	for id, o := range m.grants {
		if id == without || !sameEntry(g, o) {
			continue
		}
		a := o.addrs()[0]
		e.Ports = append(e.Ports, a.Ports...)
		if !found || a.Expires.Before(e.Expires) {
			e.Expires = a.Expires
		}
		found = true
	}
	return e, found
}

// writeGrant puts g, already among m.grants, into the task's kernel
// rules. A dns grant writes nothing: the resolver asks GrantedNames.
func (m *Manager) writeGrant(g *grant) error {
	t := m.tasks[g.Task]
	g.Workload, g.Identity, g.Intent, g.Revision = t.Workload, t.Identity, t.Intent, t.PolicyRevision
	switch g.Target.Action {
	case policy.TargetConnect:
		e, _ := m.entryFor(g, "")
		return m.opt.Kernel.GrantAddrs(g.Slot, g.Generation, []loader.GrantedAddr{e})
	case policy.TargetExec:
		return m.opt.Kernel.GrantExec(g.Slot, g.Generation, g.execs())
	}
	return nil
}

// endGrant ends a grant whose time is up: the kernel has stopped honouring
// it already; its entry is deleted and the connections opened under it
// reset.
func (m *Manager) endGrant(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	g, ok := m.grants[id]
	if !ok || m.closed {
		return
	}
	delete(m.grants, id)
	stats, err := m.revokeLocked(g)
	m.recordGrantEnd(g, "grant's time is up", stats, err)
	m.saveLocked()
}

// revokeLocked deletes a grant's kernel entry and resets the connections
// opened under it.
func (m *Manager) revokeLocked(g *grant) (loader.DestroyStats, error) {
	var stats loader.DestroyStats
	var errs []error
	switch g.Target.Action {
	case policy.TargetConnect:
		// Called with g out of m.grants: the entry holds what is left.
		if rest, ok := m.entryFor(g, g.Request); ok {
			if err := m.opt.Kernel.GrantAddrs(g.Slot, g.Generation, []loader.GrantedAddr{rest}); err != nil {
				errs = append(errs, fmt.Errorf("rewrite the address's other grants: %w", err))
			}
		} else if err := m.opt.Kernel.RevokeAddrs(g.Slot, g.Generation, g.addrs()); err != nil {
			errs = append(errs, fmt.Errorf("revoke: %w", err))
		}
		a := g.addrs()[0]
		s, err := m.opt.Kernel.AbortTo(g.Slot, g.Generation, a.Protocol, a.Addr, a.Ports)
		if err != nil {
			errs = append(errs, fmt.Errorf("reset connections: %w", err))
		}
		stats = s
	case policy.TargetExec:
		if err := m.opt.Kernel.RevokeExec(g.Slot, g.Generation, g.execs()); err != nil {
			errs = append(errs, fmt.Errorf("revoke: %w", err))
		}
	case policy.TargetDNS:
		// While a name grant lasts, the resolver cuts the life of what it
		// learns for the task to the grant's end (see node.grantedNames):
		// the addresses ending now are those learned under it. Their
		// kernel entries end by themselves; connections to them are reset.
		for _, a := range m.opt.Kernel.LearnedEndingAt(g.Slot, g.Generation, g.Ends) {
			s, err := m.opt.Kernel.AbortTo(g.Slot, g.Generation, a.Protocol, a.Addr, nil)
			if err != nil {
				errs = append(errs, fmt.Errorf("reset connections to %s: %w", a.Addr, err))
			}
			stats.TCP += s.TCP
			stats.UDP += s.UDP
		}
	}
	return stats, errors.Join(errs...)
}

func (m *Manager) recordGrantEnd(g *grant, why string, stats loader.DestroyStats, err error) {
	if n := stats.TCP + stats.UDP; n > 0 {
		why += fmt.Sprintf("; reset %d connection(s) opened under it (%d tcp, %d udp)", n, stats.TCP, stats.UDP)
	}
	if err != nil {
		why += "; " + err.Error()
		m.log.Warn("grant ended with errors", "request", g.Request, "task", g.Task, "err", err)
	}
	if m.opt.Records == nil {
		return
	}
	rec := audit.Record{
		Time: audit.Timestamp(m.opt.Now()), Node: m.opt.Node, Workload: g.Workload, Identity: g.Identity,
		Task: g.Task, Intent: g.Intent, Action: bpf.ActionGrantEnded, Verdict: bpf.VerdictAllow, Reason: why,
		Enforcement: bpf.EnforcementDaemon, PolicyRevision: g.Revision, Request: g.Request,
	}
	fillTarget(&rec, g.Target)
	m.opt.Records(rec)
}

// GrantedName is a name an approval lets a task resolve, until Ends.
type GrantedName struct {
	Rule policy.NameRule
	Ends time.Time
}

// GrantedNames returns the names approvals grant a task now: the resolver
// forwards them and learns their addresses, for no longer than Ends.
func (m *Manager) GrantedNames(task string) []GrantedName {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.opt.Now()
	var out []GrantedName
	for _, g := range m.grants {
		if g.Task != task || !g.Ends.After(now) {
			continue
		}
		for _, r := range g.Names {
			out = append(out, GrantedName{Rule: r, Ends: g.Ends})
		}
	}
	return out
}

// stateVersion is the state file's format.
const stateVersion = 1

type state struct {
	Version int      `json:"version"`
	Grants  []*grant `json:"grants"`
}

// saveLocked writes the grants in force to the state file: written whole
// to a temporary file and renamed, so a crash leaves the old or the new.
func (m *Manager) saveLocked() {
	if m.opt.StateFile == "" {
		return
	}
	st := state{Version: stateVersion, Grants: make([]*grant, 0, len(m.grants))}
	for _, g := range m.grants {
		st.Grants = append(st.Grants, g)
	}
	b, err := json.Marshal(st)
	if err == nil {
		tmp := m.opt.StateFile + ".tmp"
		if err = os.WriteFile(tmp, b, 0o600); err == nil {
			err = os.Rename(tmp, m.opt.StateFile)
		}
	}
	if err != nil {
		// The kernel still ends the grants on time; only a restarted
		// bridled's reset of their connections and its record are lost.
		m.log.Error("keep grants across restarts", "file", m.opt.StateFile, "err", err)
	}
}

// restore takes over the grants of a previous bridled: those whose time is
// up end now (the kernel ended them already), the others at their end.
// Their tasks are not known yet; a task that did not survive the restart
// had its slot cleared, grants included.
func (m *Manager) restore() error {
	if m.opt.StateFile == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(m.opt.StateFile), 0o700); err != nil {
		return fmt.Errorf("approvals: %w", err)
	}
	b, err := os.ReadFile(m.opt.StateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("approvals: read grants: %w", err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil || st.Version != stateVersion {
		// Unreadable grants still end in the kernel; starting without
		// them beats not starting.
		m.log.Error("grants of the previous run unreadable; the kernel still ends them on time", "file", m.opt.StateFile, "err", err, "version", st.Version)
		return nil
	}
	now := m.opt.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, g := range st.Grants {
		m.grants[g.Request] = g
		g.timer = time.AfterFunc(max(g.Ends.Sub(now), 0), func() { m.endGrant(g.Request) })
	}
	return nil
}
