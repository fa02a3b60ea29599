package identity

import (
	"context"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// StaticConfig maps workloads to SPIFFE ID templates. A template may name
// {unit}, {uid}, {cgroup} (the path without its leading /) and {node}.
type StaticConfig struct {
	// Cgroups maps cgroup path patterns (path.Match syntax, per whole
	// path) to templates. A pattern matches the workload's cgroup or one
	// of its ancestors; the longest matching pattern wins.
	Cgroups map[string]string
	// Units maps systemd unit name patterns to templates.
	Units map[string]string
	// UIDs maps uids to templates; it applies when every process of the
	// workload runs under that uid.
	UIDs map[uint32]string
	// Node names the node in the default identity,
	// spiffe://<node>/workload<cgroup path>.
	Node string
}

// Check refuses patterns and templates that can never work.
func (c StaticConfig) Check() error {
	for p, tmpl := range c.Cgroups {
		if _, err := path.Match(p, "/"); err != nil || !strings.HasPrefix(p, "/") {
			return fmt.Errorf("identity.static.cgroups %q: want an absolute path pattern", p)
		}
		if err := checkTemplate(tmpl); err != nil {
			return fmt.Errorf("identity.static.cgroups[%s]: %w", p, err)
		}
	}
	for p, tmpl := range c.Units {
		if _, err := path.Match(p, "x"); err != nil || strings.Contains(p, "/") {
			return fmt.Errorf("identity.static.units %q: want a unit name pattern", p)
		}
		if err := checkTemplate(tmpl); err != nil {
			return fmt.Errorf("identity.static.units[%s]: %w", p, err)
		}
	}
	for uid, tmpl := range c.UIDs {
		if err := checkTemplate(tmpl); err != nil {
			return fmt.Errorf("identity.static.uids[%d]: %w", uid, err)
		}
	}
	return nil
}

// checkTemplate fills every placeholder with a harmless value and parses
// the result, so a template that can never make a SPIFFE ID is refused up
// front.
func checkTemplate(tmpl string) error {
	s := strings.NewReplacer("{unit}", "u", "{uid}", "1", "{cgroup}", "c", "{node}", "n").Replace(tmpl)
	if strings.ContainsAny(s, "{}") {
		return fmt.Errorf("template %q: unknown placeholder (want {unit}, {uid}, {cgroup}, {node})", tmpl)
	}
	if _, err := spiffeid.FromString(s); err != nil {
		return fmt.Errorf("template %q: %w", tmpl, err)
	}
	return nil
}

// StaticProvider is the static source: it needs nothing but the kernel's
// facts, and an identity changes only with bridled's config.
type StaticProvider struct {
	cfg   StaticConfig
	mount string
}

// NewStatic returns the static source for workloads below mount.
func NewStatic(cfg StaticConfig, mount string) *StaticProvider {
	return &StaticProvider{cfg: cfg, mount: mount}
}

// Identify maps the workload's facts.
func (s *StaticProvider) Identify(_ context.Context, w Workload) (Identity, error) {
	cgroup := w.Cgroup
	needUID := len(s.cfg.UIDs) > 0
	f := Facts{Cgroup: cgroup, Unit: UnitOf(cgroup)}
	if needUID {
		var err error
		if f, err = ReadFacts(s.mount, cgroup); err != nil {
			return Identity{}, err
		}
	}
	id, err := s.Map(f)
	if err != nil {
		return Identity{}, &UnavailableError{err}
	}
	return Identity{ID: id, Source: Static}, nil
}

// Known maps the workload by its cgroup alone (no /proc reads on the
// path of every record): the uid mapping applies to task starts.
func (s *StaticProvider) Known(cgroup string) Identity {
	id, err := s.Map(Facts{Cgroup: cgroup, Unit: UnitOf(cgroup)})
	if err != nil {
		return Identity{Source: None}
	}
	return Identity{ID: id, Source: Static}
}

// Map returns the SPIFFE ID of a workload with these facts: by cgroup
// pattern, else by unit, else by uid, else the node's default.
func (s *StaticProvider) Map(f Facts) (string, error) {
	if f.Unit == "" {
		f.Unit = UnitOf(f.Cgroup)
	}
	if tmpl, ok := s.byCgroup(f.Cgroup); ok {
		return s.fill(tmpl, f)
	}
	if f.Unit != "" {
		if tmpl, ok := longestMatch(s.cfg.Units, func(p string) bool {
			ok, _ := path.Match(p, f.Unit)
			return ok
		}); ok {
			return s.fill(tmpl, f)
		}
	}
	if f.HasUID {
		if tmpl, ok := s.cfg.UIDs[f.UID]; ok {
			return s.fill(tmpl, f)
		}
	}
	return "spiffe://" + s.cfg.Node + "/workload" + f.Cgroup, nil
}

func (s *StaticProvider) byCgroup(cgroup string) (string, bool) {
	return longestMatch(s.cfg.Cgroups, func(p string) bool {
		for c := cgroup; ; c = path.Dir(c) {
			if ok, _ := path.Match(p, c); ok {
				return true
			}
			if c == "/" {
				return false
			}
		}
	})
}

// longestMatch returns the template of the longest matching pattern; a
// tie goes to the pattern first in byte order, so the choice never
// depends on a map's order.
func longestMatch(m map[string]string, match func(pattern string) bool) (string, bool) {
	var best string
	found := false
	for _, p := range slices.Sorted(func(yield func(string) bool) {
		for p := range m {
			if !yield(p) {
				return
			}
		}
	}) {
		if match(p) && (!found || len(p) > len(best)) {
			best, found = p, true
		}
	}
	return m[best], found
}

func (s *StaticProvider) fill(tmpl string, f Facts) (string, error) {
	uid := ""
	if f.HasUID {
		uid = strconv.FormatUint(uint64(f.UID), 10)
	}
	for ph, v := range map[string]string{"{unit}": f.Unit, "{uid}": uid} {
		if strings.Contains(tmpl, ph) && v == "" {
			return "", fmt.Errorf("identity template %q names %s, which workload %s does not have", tmpl, ph, f.Cgroup)
		}
	}
	id := strings.NewReplacer("{unit}", f.Unit, "{uid}", uid,
		"{cgroup}", strings.TrimPrefix(f.Cgroup, "/"), "{node}", s.cfg.Node).Replace(tmpl)
	if _, err := spiffeid.FromString(id); err != nil {
		return "", fmt.Errorf("identity of workload %s from template %q: %w", f.Cgroup, tmpl, err)
	}
	return id, nil
}

// Release does nothing: a static identity needs no watch.
func (s *StaticProvider) Release(string) {}

// Adopt does nothing: the static mapping is bridled's config, and a
// restored task keeps the identity it was decided under.
func (s *StaticProvider) Adopt(string, Identity) {}

// Status reports the static source, which is never degraded.
func (s *StaticProvider) Status() Status { return Status{Source: Static} }

// Close does nothing.
func (s *StaticProvider) Close() {}
