package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Intersect returns the rule set that allows exactly what both a and b
// allow. It is how grants narrow: a sub-agent's task, or a task whose
// requester asked for less than its envelope, must get no more than the
// wider grant and the narrower request each allow, even where neither is
// a subset of the other (a /8 on any port against a /24 on 443 yields the
// /24 on 443).
//
// For Net4 and Net6, "allows" is what the kernel does with a destination
// (protocol, address, port): it finds the longest prefix of that protocol
// containing the address and consults only that entry's ports; no entry
// means refused. The result allows a destination iff a and b both do. Names
// are intersected pattern by pattern, per protocol (see intersectNames):
// the result's PortsForName of any name is what both a and b give it. An
// address prefix never grants a name, nor a name an address prefix. Listen
// ports are intersected per transport. Unix socket names are intersected
// as exact strings, executables by (Dev, Ino),
// keeping a's Path and a's order, so passing the wider grant as a keeps the
// names its events already use.
//
// a and b must have the shape [Compile] gives them: valid, masked prefixes
// of the right family, one entry per (protocol, prefix), sorted and merged
// port lists, and the port-union property (an entry's ports include those
// of every shorter prefix of the same protocol that contains it). The
// result is only right for inputs the kernel reads the way this function
// does, so anything else is an error rather than a guess. Entry order does
// not matter. The result has the same shape, with entries sorted as
// Compile sorts them; intersecting a compiled set with itself returns it
// unchanged.
//
// Intersecting two valid rule sets can still fail: where the port lists of
// a and b interleave, a prefix may need almost as many ranges as the two
// lists have together, and past MaxPortRanges the kernel cannot hold them.
func Intersect(a, b RuleSet) (RuleSet, error) {
	var (
		out RuleSet
		err error
	)
	if out.Net4, err = intersectNet(a.Net4, b.Net4, false); err != nil {
		return RuleSet{}, err
	}
	if out.Net6, err = intersectNet(a.Net6, b.Net6, true); err != nil {
		return RuleSet{}, err
	}
	if out.Names, err = intersectNames(a.Names, b.Names); err != nil {
		return RuleSet{}, err
	}
	out.Unix = intersectUnix(a.Unix, b.Unix)
	out.Exec = intersectExec(a.Exec, b.Exec)
	if out.Listen, err = intersectListen(a.Listen, b.Listen); err != nil {
		return RuleSet{}, err
	}
	return out, nil
}

// intersectListen keeps, per transport, the ports both a and b allow.
// Each input must have the shape Compile gives it: one entry per
// transport with a sorted, merged port list.
func intersectListen(a, b []ListenRule) ([]ListenRule, error) {
	byProto := func(rules []ListenRule, which string) (map[Protocol][]PortRange, error) {
		m := map[Protocol][]PortRange{}
		for _, r := range rules {
			if _, dup := m[r.Protocol]; dup {
				return nil, fmt.Errorf("policy: intersect: %s rule set: listen %s appears more than once", which, r.Protocol)
			}
			for i, pr := range r.Ports {
				if pr.First > pr.Last || i > 0 && int(pr.First) <= int(r.Ports[i-1].Last)+1 {
					return nil, fmt.Errorf("policy: intersect: %s rule set: listen port list %s is not sorted and merged", which, formatPorts(r.Ports))
				}
			}
			m[r.Protocol] = r.Ports
		}
		return m, nil
	}
	ma, err := byProto(a, "first")
	if err != nil {
		return nil, err
	}
	mb, err := byProto(b, "second")
	if err != nil {
		return nil, err
	}
	var out []ListenRule
	for _, proto := range []Protocol{ProtoTCP, ProtoUDP} {
		ports := appendIntersection(nil, ma[proto], mb[proto])
		if len(ports) == 0 {
			continue
		}
		if len(ports) > MaxPortRanges {
			return nil, fmt.Errorf("policy: intersect: listening on %s needs %d port ranges to allow what both rule sets allow; the kernel holds at most %d",
				proto, len(ports), MaxPortRanges)
		}
		out = append(out, ListenRule{Protocol: proto, Ports: ports})
	}
	return out, nil
}

// candidate is one (protocol, prefix) that is an entry of a, of b or of
// both, with the ports each of them gives it.
type candidate struct {
	proto          Protocol
	prefix         netip.Prefix
	portsA, portsB []PortRange
	inA, inB       bool
}

// intersectNet intersects one address family of two rule sets.
//
// Only the prefixes of a and b, the candidates, can be where the answer of
// either input changes, so they are the only entries the result needs. For
// a candidate p, the entry the kernel picks in a for any destination whose
// longest containing candidate is p is the longest entry of a containing p,
// and likewise in b; p's ports in the result are the intersection of those
// two entries' ports.
//
// Sorted by protocol, address and length, every candidate comes after the
// candidates containing it and before its own sub-prefixes, the order
// foldPrefixes relies on. A walk in that order keeps, for each input, a
// stack of its entries that contain the current candidate, whose top is
// the longest of them; so the whole intersection is one sort and a linear
// walk, however deep the nesting.
//
// An entry whose intersection is empty is dropped, because any shorter
// candidate q containing p has ports(q) ⊆ ports(p) = ∅: q's longest
// containing entry in a also contains p, so by port-union its ports are
// included in those of p's longest containing entry in a, and the same
// holds in b. That monotonicity also gives the result the port-union
// property.
func intersectNet(a, b []NetRule, v6 bool) ([]NetRule, error) {
	if len(a) == 0 || len(b) == 0 {
		// Every destination is refused by one side; checking the other
		// side's shape would only turn a correct empty answer into an
		// error.
		return nil, nil
	}
	family := "IPv4"
	if v6 {
		family = "IPv6"
	}
	cands := make([]candidate, 0, len(a)+len(b))
	for i, r := range a {
		if err := checkNetRule(r, v6); err != nil {
			return nil, fmt.Errorf("policy: intersect: first rule set: %s entry %d: %w", family, i, err)
		}
		cands = append(cands, candidate{proto: r.Protocol, prefix: r.Prefix, portsA: r.Ports, inA: true})
	}
	for i, r := range b {
		if err := checkNetRule(r, v6); err != nil {
			return nil, fmt.Errorf("policy: intersect: second rule set: %s entry %d: %w", family, i, err)
		}
		cands = append(cands, candidate{proto: r.Protocol, prefix: r.Prefix, portsB: r.Ports, inB: true})
	}
	// Entries of a sort before equal entries of b, so that duplicates
	// within one input can be told from a prefix both inputs have.
	slices.SortFunc(cands, func(x, y candidate) int {
		return cmp.Or(cmp.Compare(x.proto, y.proto), x.prefix.Addr().Compare(y.prefix.Addr()),
			cmp.Compare(x.prefix.Bits(), y.prefix.Bits()), cmp.Compare(btoi(x.inB), btoi(y.inB)))
	})
	merged := cands[:0]
	for _, c := range cands {
		if n := len(merged); n > 0 && merged[n-1].proto == c.proto && merged[n-1].prefix == c.prefix {
			last := &merged[n-1]
			switch {
			case c.inA: // after another entry of a
				return nil, fmt.Errorf("policy: intersect: first rule set: %s %s appears more than once", c.proto, c.prefix)
			case last.inB:
				return nil, fmt.Errorf("policy: intersect: second rule set: %s %s appears more than once", c.proto, c.prefix)
			}
			last.inB, last.portsB = true, c.portsB
			continue
		}
		merged = append(merged, c)
	}

	out := make([]NetRule, 0, min(len(a), len(b)))
	// All port lists share one backing array, as in foldPrefixes.
	arena := make([]PortRange, 0, cap(out))
	// The entries of a and of b that contain the current prefix, shortest
	// first.
	var stackA, stackB []NetRule
	for _, c := range merged {
		stackA = popUntilContains(stackA, c)
		stackB = popUntilContains(stackB, c)
		if c.inA {
			if err := checkPortUnion(stackA, c, c.portsA); err != nil {
				return nil, fmt.Errorf("policy: intersect: first rule set: %w", err)
			}
			stackA = append(stackA, NetRule{c.proto, c.prefix, c.portsA})
		}
		if c.inB {
			if err := checkPortUnion(stackB, c, c.portsB); err != nil {
				return nil, fmt.Errorf("policy: intersect: second rule set: %w", err)
			}
			stackB = append(stackB, NetRule{c.proto, c.prefix, c.portsB})
		}
		if len(stackA) == 0 || len(stackB) == 0 {
			continue
		}
		start := len(arena)
		arena = appendIntersection(arena, stackA[len(stackA)-1].Ports, stackB[len(stackB)-1].Ports)
		n := len(arena) - start
		if n == 0 {
			continue
		}
		if n > MaxPortRanges {
			return nil, fmt.Errorf("policy: intersect: %s %s needs %d port ranges to allow what both rule sets allow; the kernel holds at most %d per prefix",
				c.proto, c.prefix, n, MaxPortRanges)
		}
		out = append(out, NetRule{Protocol: c.proto, Prefix: c.prefix, Ports: arena[start:len(arena):len(arena)]})
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// popUntilContains drops the entries of stack that do not strictly contain
// c. The stack is a chain of nested prefixes, so those are all on top.
func popUntilContains(stack []NetRule, c candidate) []NetRule {
	for len(stack) > 0 {
		top := stack[len(stack)-1]
		if top.Protocol == c.proto && top.Prefix.Bits() < c.prefix.Bits() && top.Prefix.Contains(c.prefix.Addr()) {
			break
		}
		stack = stack[:len(stack)-1]
	}
	return stack
}

// checkPortUnion checks that ports, those of the entry c, include the ports
// of the longest entry of the same input that contains c, the top of
// stack. Port-union is transitive, so checking that one entry checks them
// all.
func checkPortUnion(stack []NetRule, c candidate, ports []PortRange) error {
	if len(stack) == 0 {
		return nil
	}
	parent := stack[len(stack)-1]
	if !portsInclude(ports, parent.Ports) {
		return fmt.Errorf("%s %s lacks ports %s of %s, which contains it: not a compiled rule set",
			c.proto, c.prefix, formatPorts(parent.Ports), parent.Prefix)
	}
	return nil
}

// checkNetRule checks one input entry for what intersectNet relies on.
func checkNetRule(r NetRule, v6 bool) error {
	p := r.Prefix
	switch {
	case !p.IsValid():
		return fmt.Errorf("%s: invalid prefix", r.Protocol)
	case p.Addr().Is4() == v6 || p.Addr().Is4In6():
		return fmt.Errorf("%s %s: wrong address family", r.Protocol, p)
	case p != p.Masked():
		return fmt.Errorf("%s %s: prefix has bits set past its length", r.Protocol, p)
	}
	for i, pr := range r.Ports {
		if pr.First > pr.Last || i > 0 && int(pr.First) <= int(r.Ports[i-1].Last)+1 {
			return fmt.Errorf("%s %s: port list %s is not sorted and merged", r.Protocol, p, formatPorts(r.Ports))
		}
	}
	return nil
}

// appendIntersection appends the intersection of the normalized lists a
// and b to dst. The result is normalized too: two of its ranges could only
// touch if a port and the next one were both in a and in b, and then they
// would lie in one range of each and so in one range of the result.
func appendIntersection(dst, a, b []PortRange) []PortRange {
	for len(a) > 0 && len(b) > 0 {
		lo, hi := max(a[0].First, b[0].First), min(a[0].Last, b[0].Last)
		if lo <= hi {
			dst = append(dst, PortRange{lo, hi})
		}
		// Drop whichever range ends first; the other may still overlap
		// the next range of this list.
		if a[0].Last < b[0].Last {
			a = a[1:]
		} else {
			b = b[1:]
		}
	}
	return dst
}

// portsInclude reports whether the normalized list sup covers every port
// of the normalized list sub.
func portsInclude(sup, sub []PortRange) bool {
	for _, pr := range sub {
		// Ranges of sup are merged, so one of them must hold all of pr.
		for len(sup) > 0 && sup[0].Last < pr.First {
			sup = sup[1:]
		}
		if len(sup) == 0 || sup[0].First > pr.First || sup[0].Last < pr.Last {
			return false
		}
	}
	return true
}

// intersectUnix returns the names in both a and b, sorted and unique as
// Compile returns them. Names are compared as they are: both sides come
// from ParseUnix, which already put them in one spelling.
func intersectUnix(a, b []string) []string {
	if len(a) == 0 || len(b) == 0 {
		return nil
	}
	inB := make(map[string]bool, len(b))
	for _, s := range b {
		inB[s] = true
	}
	var out []string
	for _, s := range a {
		if inB[s] {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// intersectExec returns the executables in both a and b in a's order,
// each once. The kernel only compares (Dev, Ino); the Path kept is a's, the
// name the wider grant used, so events read the same as the parent's.
func intersectExec(a, b []FileID) []FileID {
	if len(a) == 0 || len(b) == 0 {
		return nil
	}
	// scriptOnly[k]: whether b allows the file only as a script.
	scriptOnly := make(map[[2]uint64]bool, len(b))
	for _, id := range b {
		k := [2]uint64{id.Dev, id.Ino}
		if so, ok := scriptOnly[k]; ok {
			scriptOnly[k] = so && id.ScriptOnly
		} else {
			scriptOnly[k] = id.ScriptOnly
		}
	}
	var out []FileID
	for _, id := range a {
		k := [2]uint64{id.Dev, id.Ino}
		if so, ok := scriptOnly[k]; ok {
			// Allowed by both: only as a script if either says so.
			id.ScriptOnly = id.ScriptOnly || so
			out = append(out, id)
			delete(scriptOnly, k) // keep the first of duplicates only
		}
	}
	return out
}

// nameKey identifies a name rule.
type nameKey struct {
	proto   Protocol
	pattern string
}

// intersectNames intersects the name rules of two rule sets.
//
// A rule set allows a name the union of the ports of its rules that match
// the name (PortsForName), so the intersection of two sets' answers is the
// union, over every pair of a rule of a and a rule of b that both match
// the name, of the pair's common ports. Two patterns match a common name
// only when one covers the other ("*.a.com" covers "x.a.com" and
// "*.b.a.com"; a pattern covers itself), and then the names they share are
// exactly the narrower pattern's. So the result is, for each such pair, the
// narrower pattern with the ports both rules give, merged per (protocol,
// pattern). The pairs are found by looking each pattern's covering
// patterns up in the other side: itself and a wildcard over each of its
// proper ancestors, a handful of map lookups per rule rather than a
// comparison of every rule with every other.
//
// Any list of valid rules is accepted, since PortsForName reads any list
// the same way; the result has the shape Compile gives (sorted, unique,
// within MaxNames and MaxPortRanges) or is an error.
func intersectNames(a, b []NameRule) ([]NameRule, error) {
	if len(a) == 0 || len(b) == 0 {
		return nil, nil
	}
	ma, err := indexNames(a, "first")
	if err != nil {
		return nil, err
	}
	mb, err := indexNames(b, "second")
	if err != nil {
		return nil, err
	}
	var out []NameRule
	pair := func(narrow nameKey, pa, pb []PortRange) {
		if ports := appendIntersection(nil, pa, pb); len(ports) > 0 {
			out = append(out, NameRule{Protocol: narrow.proto, Pattern: narrow.pattern, Ports: ports})
		}
	}
	for k, pa := range ma {
		for _, cover := range coveringPatterns(k.pattern) {
			if pb, ok := mb[nameKey{k.proto, cover}]; ok {
				pair(k, pa, pb)
			}
		}
	}
	for k, pb := range mb {
		// Equal patterns were paired above; here a's pattern must be
		// strictly wider.
		for _, cover := range coveringPatterns(k.pattern)[1:] {
			if pa, ok := ma[nameKey{k.proto, cover}]; ok {
				pair(k, pa, pb)
			}
		}
	}
	out, err = foldNames(out)
	if err != nil {
		return nil, fmt.Errorf("policy: intersect: %w", err)
	}
	return out, nil
}

// indexNames checks rules and maps each (protocol, pattern) to the union
// of its ports.
func indexNames(rules []NameRule, which string) (map[nameKey][]PortRange, error) {
	m := make(map[nameKey][]PortRange, len(rules))
	for i, r := range rules {
		switch r.Protocol {
		case ProtoTCP, ProtoUDP, ProtoICMP:
		default:
			return nil, fmt.Errorf("policy: intersect: %s rule set: name entry %d: protocol %s: not a compiled rule set", which, i, r.Protocol)
		}
		if p, err := ParseHostPattern(r.Pattern); err != nil || p != r.Pattern {
			return nil, fmt.Errorf("policy: intersect: %s rule set: name entry %d: pattern %q is not canonical", which, i, r.Pattern)
		}
		if len(r.Ports) == 0 {
			return nil, fmt.Errorf("policy: intersect: %s rule set: %s %s has no ports", which, r.Protocol, r.Pattern)
		}
		for _, pr := range r.Ports {
			if pr.First > pr.Last {
				return nil, fmt.Errorf("policy: intersect: %s rule set: %s %s: port range %d-%d runs backwards", which, r.Protocol, r.Pattern, pr.First, pr.Last)
			}
		}
		k := nameKey{r.Protocol, r.Pattern}
		m[k] = normalizePorts(append(m[k], r.Ports...))
	}
	return m, nil
}

// coveringPatterns returns the patterns whose names include all those of
// the canonical pattern p: p first, then "*.S" for each proper ancestor S
// of the name p stands on ("x.a.com" and "*.x.a.com" both give "*.a.com"
// and "*.com"; a wildcard never covers its own suffix).
func coveringPatterns(p string) []string {
	base := strings.TrimPrefix(p, "*.")
	out := []string{p}
	for {
		dot := strings.IndexByte(base, '.')
		if dot < 0 {
			return out
		}
		base = base[dot+1:]
		out = append(out, "*."+base)
	}
}
