package policy

import (
	"errors"
	"fmt"
	"strings"
)

// Names in rules. A task that may reach a name may reach the addresses
// Bridle's resolver learns for it while the task runs: the resolver
// forwards a query only for a name some NameRule of the querying task
// matches, and writes each address of the answer into that task's kernel
// rules, with the rule's ports, for as long as the answer lives.

// MaxNameLen is the longest name in presentation form, without the
// trailing dot (RFC 1035: 255 octets on the wire).
const MaxNameLen = 253

// MaxLabelLen is the longest label (RFC 1035).
const MaxLabelLen = 63

// NameRule allows the addresses a matching name resolves to.
type NameRule struct {
	// Protocol is ProtoTCP, ProtoUDP or ProtoICMP once compiled; a
	// policy or flag may say ProtoAny.
	Protocol Protocol
	// Pattern is a name ("api.github.com") or a wildcard
	// ("*.githubusercontent.com": any name below the suffix, not the
	// suffix itself), in lower case without a trailing dot.
	Pattern string
	// Ports is sorted and merged once compiled; {0, 65535} is every port
	// and is all an ICMP rule has.
	Ports []PortRange
}

// Wildcard reports whether r matches the names below a suffix.
func (r NameRule) Wildcard() bool { return strings.HasPrefix(r.Pattern, "*.") }

// Matches reports whether r covers name, which must be canonical (see
// CanonicalName).
func (r NameRule) Matches(name string) bool {
	if suffix, ok := strings.CutPrefix(r.Pattern, "*"); ok {
		return len(name) > len(suffix) && strings.HasSuffix(name, suffix)
	}
	return name == r.Pattern
}

// NamePorts is what the name rules of a task allow for one name.
type NamePorts struct {
	TCP, UDP []PortRange // sorted and merged; nil: none
	ICMP     bool
	// Wildcard: only wildcard rules matched the name. Such queries are
	// the ones an agent can use to carry data out in the name itself,
	// so the resolver holds them to a budget.
	Wildcard bool
}

// Allowed reports whether p allows anything at all.
func (p NamePorts) Allowed() bool { return len(p.TCP) > 0 || len(p.UDP) > 0 || p.ICMP }

// PortsForName returns what rs's name rules allow for name, which must be
// canonical. It scans the rules; a caller asking often builds a NameIndex.
func (rs RuleSet) PortsForName(name string) NamePorts {
	var m nameMatch
	for _, r := range rs.Names {
		if r.Matches(name) {
			m.add(r)
		}
	}
	return m.ports()
}

// NameIndex answers PortsForName in time that grows with the name's labels,
// not with the number of rules: exact names from a map, wildcards from the
// name's suffixes.
type NameIndex struct {
	exact map[string][]NameRule // by pattern
	below map[string][]NameRule // by ".suffix" of "*.suffix"
}

// NewNameIndex indexes rules (compiled, as RuleSet.Names holds them).
func NewNameIndex(rules []NameRule) *NameIndex {
	x := &NameIndex{exact: map[string][]NameRule{}, below: map[string][]NameRule{}}
	for _, r := range rules {
		if r.Wildcard() {
			suffix := r.Pattern[1:]
			x.below[suffix] = append(x.below[suffix], r)
		} else {
			x.exact[r.Pattern] = append(x.exact[r.Pattern], r)
		}
	}
	return x
}

// PortsForName is RuleSet.PortsForName over the indexed rules. A nil
// index allows nothing.
func (x *NameIndex) PortsForName(name string) NamePorts {
	var m nameMatch
	if x == nil {
		return m.ports()
	}
	for _, r := range x.exact[name] {
		m.add(r)
	}
	// Every ".suffix" with at least one byte before it: the wildcards
	// that cover name, and never the suffix itself.
	for i := 1; i < len(name); i++ {
		if name[i] == '.' {
			for _, r := range x.below[name[i:]] {
				m.add(r)
			}
		}
	}
	return m.ports()
}

// nameMatch gathers the rules that match one name.
type nameMatch struct {
	p     NamePorts
	exact bool
}

func (m *nameMatch) add(r NameRule) {
	if !r.Wildcard() {
		m.exact = true
	}
	switch r.Protocol {
	case ProtoTCP:
		m.p.TCP = append(m.p.TCP, r.Ports...)
	case ProtoUDP:
		m.p.UDP = append(m.p.UDP, r.Ports...)
	case ProtoICMP:
		m.p.ICMP = true
	}
}

func (m *nameMatch) ports() NamePorts {
	p := m.p
	if len(p.TCP) > 0 {
		p.TCP = normalizePorts(p.TCP)
	}
	if len(p.UDP) > 0 {
		p.UDP = normalizePorts(p.UDP)
	}
	p.Wildcard = p.Allowed() && !m.exact
	return p
}

// CanonicalName returns name as rules compare it: lower case, without one
// trailing dot. It refuses what no rule could match: an empty name, one
// over the RFC 1035 limits, an empty label, or bytes outside letters,
// digits, '-' and '_'.
func CanonicalName(name string) (string, error) {
	name = strings.TrimSuffix(name, ".")
	if name == "" {
		return "", errors.New("empty name")
	}
	if len(name) > MaxNameLen {
		return "", fmt.Errorf("name is %d bytes long; the limit is %d", len(name), MaxNameLen)
	}
	b := []byte(name)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	name = string(b)
	for label := range strings.SplitSeq(name, ".") {
		if err := checkLabel(label); err != nil {
			return "", err
		}
	}
	return name, nil
}

func checkLabel(label string) error {
	if label == "" {
		return errors.New("empty label")
	}
	if len(label) > MaxLabelLen {
		return fmt.Errorf("label %.20q... is %d bytes long; the limit is %d", label, len(label), MaxLabelLen)
	}
	for _, c := range []byte(label) {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("label %q has %q: names in rules are letters, digits, '-' and '_' (write internationalized names in their xn-- form)", label, c)
		}
	}
	return nil
}

// ParseHostPattern checks a name or wildcard as a rule writes it and
// returns it canonical. A '*' is allowed only as the whole first label,
// followed by at least two labels ("*.example.com", not "*.com"): a
// wildcard over a top-level domain would allow most of the internet by
// name.
func ParseHostPattern(s string) (string, error) {
	rest, wild := strings.CutPrefix(s, "*.")
	if strings.Contains(rest, "*") {
		return "", fmt.Errorf("host %q: '*' is allowed only as the first label, as in *.example.com", s)
	}
	if strings.HasSuffix(rest, ".") {
		return "", fmt.Errorf("host %q: write the name without a trailing dot", s)
	}
	name, err := CanonicalName(rest)
	if err != nil {
		return "", fmt.Errorf("host %q: %w", s, err)
	}
	// Resolvers read a name whose last label is all digits ("10.0.0.1",
	// but also inet_aton's "10.1" or "0x7f.1") as an address and never
	// ask DNS for it, so such a rule could only mislead: an address is
	// allowed by address.
	if last := name[strings.LastIndexByte(name, '.')+1:]; strings.Trim(last, "0123456789") == "" {
		return "", fmt.Errorf("host %q is an address, not a name (its last label is all digits); allow addresses by address", s)
	}
	if !strings.Contains(name, ".") && wild {
		return "", fmt.Errorf("host %q: a wildcard needs a suffix of two labels or more", s)
	}
	// A wildcard matches only names longer than "x." plus its suffix; a
	// suffix with no room below it within MaxNameLen would match nothing.
	if wild && len(name) > MaxNameLen-2 {
		return "", fmt.Errorf("host %q: the suffix is %d bytes long; names below it would pass the %d-byte limit", s, len(name), MaxNameLen)
	}
	if wild {
		return "*." + name, nil
	}
	return name, nil
}
