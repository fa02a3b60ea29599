package policy

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// What may be asked for. A policy's data.bridle.approvable names, in the
// envelope's own syntax, what a task does not get but a person may grant
// it for a while: a refusal the kernel makes that one of these entries
// covers becomes a question to the entry's approvers, and anything no
// entry covers stays a plain refusal.

// Approvers are who may answer a request: a person by uid or group, or a
// caller by SPIFFE ID (or any ID of a trust domain, "spiffe://example.org").
type Approvers struct {
	UIDs, GIDs []uint32
	Identities []string
}

// ApprovableEntry is one thing a task may be granted: exactly one of Egress
// and Exec is set.
type ApprovableEntry struct {
	Egress *EgressRule
	Exec   *ExecRule
	// MaxTTL is the longest grant an answer may give; 0: until the task
	// ends (a grant never outlives its task).
	MaxTTL time.Duration
	// Approvers answer for this entry; nil: bridled's admins.
	Approvers *Approvers
}

// String renders the entry's rule in flag syntax.
func (e ApprovableEntry) String() string {
	switch {
	case e.Egress != nil:
		return e.Egress.String()
	case e.Exec != nil:
		return e.Exec.String()
	}
	return "(empty entry)"
}

// Approvable is what a task may be granted on request.
type Approvable struct {
	Entries []ApprovableEntry
}

// Target is what the kernel (or the resolver) refused, as a request names
// it.
type Target struct {
	Action string // "connect" (sendmsg too), "exec", "dns"
	// connect/sendmsg
	Protocol Protocol
	Addr     netip.Addr
	Port     uint16
	// dns: the name asked for, canonical
	Name string
	// exec: the file the kernel saw, and the name it was called by
	Dev, Ino uint64
	Path     string
}

// Target actions.
const (
	TargetConnect = "connect"
	TargetExec    = "exec"
	TargetDNS     = "dns"
)

// CompiledApprovable is an Approvable made ready to match refusals: each
// exec entry's files looked up on this host (by device and inode, as the
// kernel reports an exec), as Compile does for an envelope.
type CompiledApprovable struct {
	Entries []ApprovableEntry
	// files[i] are the files exec entry i covers; nil for egress entries.
	files []map[[2]uint64]FileID
}

// Empty reports whether nothing may be asked for.
func (c CompiledApprovable) Empty() bool { return len(c.Entries) == 0 }

// CompileApprovable checks a's entries and looks its programs up on this
// host. Programs must exist now, like an envelope's.
func CompileApprovable(a Approvable) (CompiledApprovable, error) {
	out := CompiledApprovable{Entries: slices.Clone(a.Entries), files: make([]map[[2]uint64]FileID, len(a.Entries))}
	for i, e := range a.Entries {
		if (e.Egress == nil) == (e.Exec == nil) {
			return CompiledApprovable{}, fmt.Errorf("policy: approvable entry %d: want exactly one of egress and exec", i)
		}
		if e.MaxTTL < 0 {
			return CompiledApprovable{}, fmt.Errorf("policy: approvable entry %d: negative max_ttl %v", i, e.MaxTTL)
		}
		if e.Egress != nil {
			if _, _, err := expandEgress(*e.Egress); err != nil {
				return CompiledApprovable{}, fmt.Errorf("policy: approvable entry %s: %w", e, err)
			}
			continue
		}
		if e.Exec.ScriptOnly {
			return CompiledApprovable{}, fmt.Errorf("policy: approvable entry %s: a grant cannot hold a file to #! scripts; name the interpreter", e)
		}
		ids, err := compileExec([]ExecRule{*e.Exec})
		if err != nil {
			return CompiledApprovable{}, fmt.Errorf("policy: approvable: %w", err)
		}
		m := make(map[[2]uint64]FileID, len(ids))
		for _, id := range ids {
			m[[2]uint64{id.Dev, id.Ino}] = id
		}
		out.files[i] = m
	}
	return out, nil
}

// Match returns the first entry that covers t. A connect is covered by an
// address entry whose protocol, prefix and ports hold it (a host entry
// never covers an address: which name led there is not known), a dns
// query by a host entry whose pattern matches the name, an exec by an
// entry whose files include the one the kernel saw.
func (c CompiledApprovable) Match(t Target) (entry int, ok bool) {
	for i, e := range c.Entries {
		switch {
		case t.Action == TargetConnect && e.Egress != nil && e.Egress.Host == "":
			if entryCovers(*e.Egress, t.Protocol) && e.Egress.Prefix.Contains(t.Addr.Unmap()) &&
				(t.Protocol == ProtoICMP || portsHold(e.Egress.Ports, t.Port)) {
				return i, true
			}
		case t.Action == TargetDNS && e.Egress != nil && e.Egress.Host != "":
			if (NameRule{Pattern: e.Egress.Host}).Matches(t.Name) {
				return i, true
			}
		case t.Action == TargetExec && e.Exec != nil:
			if _, ok := c.files[i][[2]uint64{t.Dev, t.Ino}]; ok {
				return i, true
			}
		}
	}
	return -1, false
}

// NameRules are the name rules an approved dns target under entry i
// grants: the name asked for, with the entry's protocol and ports.
func (c CompiledApprovable) NameRules(i int, name string) []NameRule {
	e := c.Entries[i]
	if e.Egress == nil || e.Egress.Host == "" {
		return nil
	}
	protos, ports, err := expandEgress(EgressRule{Protocol: e.Egress.Protocol, Ports: e.Egress.Ports})
	if err != nil {
		return nil
	}
	out := make([]NameRule, 0, len(protos))
	for _, p := range protos {
		pr := ports
		if p == ProtoICMP {
			pr = allPorts
		}
		out = append(out, NameRule{Protocol: p, Pattern: name, Ports: slices.Clone(pr)})
	}
	return out
}

// entryCovers reports whether an egress rule stands for protocol p (an
// "any" rule with ports stands for TCP and UDP only, as Compile reads it).
func entryCovers(r EgressRule, p Protocol) bool {
	protos, _, err := expandEgress(EgressRule{Protocol: r.Protocol, Ports: r.Ports})
	return err == nil && slices.Contains(protos, p)
}

func protoCovers(rule, p Protocol) bool {
	return rule == p || rule == ProtoAny && (p == ProtoTCP || p == ProtoUDP || p == ProtoICMP)
}

// portsHold reports whether the rule's port list (none: every port) holds
// port.
func portsHold(ports []PortRange, port uint16) bool {
	if len(ports) == 0 {
		return true
	}
	for _, pr := range ports {
		if pr.First <= port && port <= pr.Last {
			return true
		}
	}
	return false
}

// Within cuts a sub-agent's approvable set to what its parent could have
// had: an egress entry is kept only if it lies wholly inside what the
// parent's rules allow, or wholly inside one of the parent's approvable
// entries (then its max_ttl is capped by that entry's); an exec entry
// keeps the files the parent's rules or approvable entries hold. This is
// not the exact intersection for egress: an entry that is partly covered
// is dropped, not narrowed, so the child may be asked for less than the
// parent could, never more. The entry's approvers are the child's.
func (c CompiledApprovable) Within(parentRules RuleSet, parent CompiledApprovable) CompiledApprovable {
	var out CompiledApprovable
	for i, e := range c.Entries {
		switch {
		case e.Egress != nil:
			ttl, ok := egressWithin(*e.Egress, parentRules, parent)
			if !ok {
				continue
			}
			if ttl > 0 && (e.MaxTTL == 0 || e.MaxTTL > ttl) {
				e.MaxTTL = ttl
			}
			out.Entries = append(out.Entries, e)
			out.files = append(out.files, nil)
		case e.Exec != nil:
			kept := map[[2]uint64]FileID{}
			var ttl time.Duration
			for k, id := range c.files[i] {
				if slices.ContainsFunc(parentRules.Exec, func(p FileID) bool { return p.Dev == id.Dev && p.Ino == id.Ino && !p.ScriptOnly }) {
					kept[k] = id
					continue
				}
				for j, pe := range parent.Entries {
					if _, ok := parent.files[j][k]; ok && pe.Exec != nil {
						kept[k] = id
						ttl = minTTL(ttl, pe.MaxTTL)
						break
					}
				}
			}
			if len(kept) == 0 {
				continue
			}
			e.MaxTTL = minTTL(e.MaxTTL, ttl)
			out.Entries = append(out.Entries, e)
			out.files = append(out.files, kept)
		}
	}
	return out
}

// minTTL is the shorter of two limits, 0 being none.
func minTTL(a, b time.Duration) time.Duration {
	switch {
	case a == 0:
		return b
	case b == 0:
		return a
	}
	return min(a, b)
}

// egressWithin reports whether the parent's rules or one of its approvable
// entries hold all of r, and the max_ttl of the entry that does (0 for
// the rules, which last as long as the task).
func egressWithin(r EgressRule, rules RuleSet, parent CompiledApprovable) (time.Duration, bool) {
	protos, ports, err := expandEgress(EgressRule{Protocol: r.Protocol, Ports: r.Ports})
	if err != nil {
		return 0, false
	}
	inRules := true
	for _, p := range protos {
		pp := ports
		if p == ProtoICMP {
			pp = allPorts
		}
		if r.Host != "" {
			inRules = inRules && namesHold(rules.Names, p, r.Host, pp)
		} else {
			net := rules.Net4
			if r.Prefix.Addr().Is6() {
				net = rules.Net6
			}
			inRules = inRules && netHolds(net, p, r.Prefix, pp)
		}
	}
	if inRules {
		return 0, true
	}
	for _, pe := range parent.Entries {
		pr := pe.Egress
		if pr == nil || !protoCovers(pr.Protocol, r.Protocol) && pr.Protocol != r.Protocol {
			continue
		}
		if len(pr.Ports) > 0 && (len(r.Ports) == 0 || !portsInclude(normalizePorts(slices.Clone(pr.Ports)), normalizePorts(slices.Clone(r.Ports)))) {
			continue
		}
		switch {
		case r.Host != "" && pr.Host != "":
			if slices.Contains(coveringPatterns(r.Host), pr.Host) {
				return pe.MaxTTL, true
			}
		case r.Host == "" && pr.Host == "":
			if pr.Prefix.Bits() <= r.Prefix.Bits() && pr.Prefix.Contains(r.Prefix.Addr()) {
				return pe.MaxTTL, true
			}
		}
	}
	return 0, false
}

// netHolds reports whether every destination of proto in prefix on ports
// is allowed by the compiled entries net: the longest entry containing
// prefix, and every longer entry inside it (which the kernel picks for
// the addresses it holds), must each allow the ports.
func netHolds(net []NetRule, proto Protocol, prefix netip.Prefix, ports []PortRange) bool {
	var cover *NetRule
	for i, n := range net {
		if n.Protocol != proto {
			continue
		}
		switch {
		case n.Prefix.Bits() <= prefix.Bits() && n.Prefix.Contains(prefix.Addr()):
			if cover == nil || n.Prefix.Bits() > cover.Prefix.Bits() {
				cover = &net[i]
			}
		case n.Prefix.Bits() > prefix.Bits() && prefix.Contains(n.Prefix.Addr()):
			if !portsInclude(n.Ports, ports) {
				return false
			}
		}
	}
	return cover != nil && portsInclude(cover.Ports, ports)
}

// namesHold reports whether name rules allow every name of the pattern on
// ports: one rule of the protocol whose pattern covers it must.
func namesHold(names []NameRule, proto Protocol, pattern string, ports []PortRange) bool {
	covers := coveringPatterns(pattern)
	for _, n := range names {
		if n.Protocol == proto && slices.Contains(covers, n.Pattern) && portsInclude(normalizePorts(slices.Clone(n.Ports)), ports) {
			return true
		}
	}
	return false
}

// DecodeApprovable converts the value of data.bridle.approvable: an object
// {egress, exec} whose entries are the envelope's, each with optional
// max_ttl and approvers. Errors about an entry are *EntryError, so the
// engine can say where the policy wrote it.
func DecodeApprovable(v any, rule string) (Approvable, error) {
	var a Approvable
	fail := func(format string, args ...any) (Approvable, error) {
		return Approvable{}, fmt.Errorf("%s: %s", rule, fmt.Sprintf(format, args...))
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return fail("want an object {egress, exec}, got %s", describe(v))
	}
	for _, k := range sortedKeys(obj) {
		if k != "egress" && k != "exec" {
			return fail("unknown key %q (want egress or exec)", k)
		}
		items, ok := obj[k].([]any)
		if !ok {
			return fail("%s: want an array or set of entries, got %s", k, describe(obj[k]))
		}
		for i, item := range items {
			e, err := decodeApprovableEntry(k, item)
			if err != nil {
				return Approvable{}, entryError(rule, fmt.Sprintf("%s[%d]", k, i), item, err)
			}
			a.Entries = append(a.Entries, e)
		}
	}
	return a, nil
}

func decodeApprovableEntry(kind string, v any) (ApprovableEntry, error) {
	obj, ok := v.(map[string]any)
	if !ok {
		return ApprovableEntry{}, fmt.Errorf("want an object, got %s", describe(v))
	}
	// The rule is the entry without the approval's own keys, decoded as
	// the envelope decodes it.
	rule := maps.Clone(obj)
	delete(rule, "max_ttl")
	delete(rule, "approvers")
	var e ApprovableEntry
	if kind == "egress" {
		r, unix, err := decodeEgress(rule)
		if err != nil {
			return ApprovableEntry{}, err
		}
		if unix != "" {
			return ApprovableEntry{}, errors.New("unix sockets cannot be approved: a grant holds addresses and programs; allow the socket in the envelope")
		}
		e.Egress = &r
	} else {
		r, err := decodeExec(rule)
		if err != nil {
			return ApprovableEntry{}, err
		}
		if r.ScriptOnly {
			return ApprovableEntry{}, &fieldError{"script", errors.New("a grant cannot hold a file to #! scripts; make the interpreter approvable")}
		}
		e.Exec = &r
	}
	if ttl, ok := obj["max_ttl"]; ok {
		s, isString := ttl.(string)
		if !isString {
			return ApprovableEntry{}, fmt.Errorf("max_ttl: want a duration string such as \"30m\", got %s", describe(ttl))
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			return ApprovableEntry{}, &fieldError{"max_ttl", fmt.Errorf("want a duration string such as \"30m\": %w", err)}
		}
		if d <= 0 {
			return ApprovableEntry{}, &fieldError{"max_ttl", errors.New("must be positive; leave max_ttl out for grants up to the task's end")}
		}
		e.MaxTTL = d
	}
	if ap, ok := obj["approvers"]; ok {
		a, err := decodeApprovers(ap)
		if err != nil {
			return ApprovableEntry{}, err
		}
		e.Approvers = &a
	}
	return e, nil
}

// decodeApprovers converts {uids, gids, identities}; at least one must
// name someone, or the entry could never be answered.
func decodeApprovers(v any) (Approvers, error) {
	obj, ok := v.(map[string]any)
	if !ok {
		return Approvers{}, fmt.Errorf("approvers: want an object {uids, gids, identities}, got %s", describe(v))
	}
	if err := onlyKeys(obj, "uids", "gids", "identities"); err != nil {
		return Approvers{}, fmt.Errorf("approvers: %w (want uids, gids, identities)", err)
	}
	var a Approvers
	ids := func(key string) ([]uint32, error) {
		raw, ok := obj[key]
		if !ok {
			return nil, nil
		}
		list, ok := raw.([]any)
		if !ok {
			return nil, fmt.Errorf("approvers: %s: want an array of numbers, got %s", key, describe(raw))
		}
		out := make([]uint32, 0, len(list))
		for _, x := range list {
			n, err := decodeID(x)
			if err != nil {
				return nil, fmt.Errorf("approvers: %s: %w", key, err)
			}
			out = append(out, n)
		}
		return out, nil
	}
	var err error
	if a.UIDs, err = ids("uids"); err != nil {
		return Approvers{}, err
	}
	if a.GIDs, err = ids("gids"); err != nil {
		return Approvers{}, err
	}
	if raw, ok := obj["identities"]; ok {
		list, ok := raw.([]any)
		if !ok {
			return Approvers{}, fmt.Errorf("approvers: identities: want an array of SPIFFE IDs, got %s", describe(raw))
		}
		for _, x := range list {
			s, ok := x.(string)
			if !ok || !strings.HasPrefix(s, "spiffe://") || len(s) == len("spiffe://") {
				return Approvers{}, &fieldError{"approvers", fmt.Errorf("identities: want a SPIFFE ID or trust domain such as \"spiffe://example.org\", got %s", compactJSON(x))}
			}
			a.Identities = append(a.Identities, s)
		}
	}
	if len(a.UIDs)+len(a.GIDs)+len(a.Identities) == 0 {
		return Approvers{}, errors.New("approvers: names nobody; leave approvers out for bridled's admins")
	}
	return a, nil
}

func decodeID(v any) (uint32, error) {
	n, ok := v.(interface{ Int64() (int64, error) })
	if !ok {
		return 0, fmt.Errorf("want a number, got %s", describe(v))
	}
	i, err := n.Int64()
	if err != nil || i < 0 || i > 1<<32-1 {
		return 0, fmt.Errorf("want a whole number from 0 to %d, got %v", uint32(1<<32-1), v)
	}
	return uint32(i), nil
}

// Allows reports whether a answers for the person or caller: by uid, by
// one of its groups, or by SPIFFE ID, exactly or as a member of a trust
// domain the list names.
func (a Approvers) Allows(uid uint32, hasUID bool, gids []uint32, identity string) bool {
	if hasUID && slices.Contains(a.UIDs, uid) {
		return true
	}
	for _, g := range gids {
		if slices.Contains(a.GIDs, g) {
			return true
		}
	}
	if identity == "" {
		return false
	}
	for _, id := range a.Identities {
		if identity == id || isTrustDomain(id) && strings.HasPrefix(identity, id+"/") {
			return true
		}
	}
	return false
}

// isTrustDomain reports whether a SPIFFE ID names a whole trust domain
// (no path).
func isTrustDomain(id string) bool {
	return !strings.Contains(strings.TrimPrefix(id, "spiffe://"), "/")
}
