package policy

import (
	"cmp"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/bpf"
)

// MaxPortRanges is how many port ranges one prefix entry in the kernel can
// hold.
const MaxPortRanges = bpf.MaxPortRanges

// allPorts is the port list of an entry that allows every port. Port 0 is
// included so that nothing addressed to the prefix is refused for its port.
var allPorts = []PortRange{{0, 65535}}

// RuleSet is an envelope in the shape the kernel looks rules up in. The
// loader writes it into BPF maps as it is.
type RuleSet struct {
	Net4 []NetRule // IPv4 prefixes
	Net6 []NetRule // IPv6 prefixes, never IPv4-mapped ones
	Unix []string  // socket paths, "@name" for abstract sockets
	Exec []FileID  // executables, unique by (Dev, Ino)
	// Listen holds at most one entry per transport, TCP first then UDP,
	// with sorted, merged ports (at most MaxPortRanges): the ports the
	// task may bind and accept connections on.
	Listen []ListenRule
	// Names are the name rules, sorted and unique by (Protocol, Pattern),
	// ProtoAny expanded. They take no kernel entries up front: the
	// resolver writes an address for the task each time it answers a
	// query for a matching name (see PortsForName).
	Names []NameRule
}

// Count returns how many kernel map entries r needs up front. Names need
// none: each address the resolver learns for one takes an entry then.
func (r RuleSet) Count() int {
	return len(r.Net4) + len(r.Net6) + len(r.Unix) + len(r.Exec) + len(r.Listen)
}

// NetRule is one LPM-trie entry. The kernel finds the longest prefix that
// matches a destination and then consults only that entry's ports, so Ports
// already includes the ports of every shorter prefix of the same protocol
// that contains Prefix.
type NetRule struct {
	// Protocol is ProtoTCP, ProtoUDP or ProtoICMP. In Net6, ProtoICMP
	// stands for ICMPv6.
	Protocol Protocol
	Prefix   netip.Prefix
	// Ports is sorted, merged and non-overlapping, at most MaxPortRanges
	// long; {0, 65535} means every port, and is all an ICMP entry has.
	Ports []PortRange
}

// String renders n in --allow-connect syntax, leaving out the port list of
// an entry that allows every port.
func (n NetRule) String() string {
	r := EgressRule{Protocol: n.Protocol, Prefix: n.Prefix}
	if !slices.Equal(n.Ports, allPorts) {
		r.Ports = n.Ports
	}
	return r.String()
}

// FileID identifies an executable the way the kernel sees it at exec time,
// so that copies are told apart and renames, hard links and symlinks are
// not.
type FileID struct {
	// Dev is the device in the kernel's internal dev_t encoding,
	// major<<20 | minor, which is what BPF programs read from the inode's
	// super block; stat(2) encodes it differently.
	Dev  uint64
	Ino  uint64
	Path string // the name it was found under, for people reading events
	// ScriptOnly: the kernel runs the file only while it is a #! script
	// (see ExecRule.ScriptOnly).
	ScriptOnly bool
}

// Compile turns env into the rule set the kernel enforces. Executables are
// looked up on this host's filesystem now, so env's exec rules must name
// files that exist.
func Compile(env Envelope) (RuleSet, error) {
	var rs RuleSet
	if env.TTL < 0 {
		return rs, fmt.Errorf("policy: negative TTL %v", env.TTL)
	}
	var err error
	if rs.Net4, rs.Net6, err = compileEgress(env.Egress); err != nil {
		return RuleSet{}, err
	}
	if rs.Names, err = compileNames(env.Egress); err != nil {
		return RuleSet{}, err
	}
	if rs.Unix, err = compileUnix(env.Unix); err != nil {
		return RuleSet{}, err
	}
	if rs.Exec, err = compileExec(env.Exec); err != nil {
		return RuleSet{}, err
	}
	if rs.Listen, err = compileListen(env.Listen); err != nil {
		return RuleSet{}, err
	}
	return rs, nil
}

// compileListen merges the listen rules into one port list per transport;
// ProtoAny counts for both.
func compileListen(rules []ListenRule) ([]ListenRule, error) {
	var tcp, udp []PortRange
	for _, r := range rules {
		if len(r.Ports) == 0 {
			return nil, fmt.Errorf("policy: listen rule %s: no ports", r)
		}
		for _, pr := range r.Ports {
			if pr.First == 0 || pr.First > pr.Last {
				return nil, fmt.Errorf("policy: listen rule %s: port range %d-%d is not within 1-65535 or runs backwards", r, pr.First, pr.Last)
			}
		}
		switch r.Protocol {
		case ProtoTCP:
			tcp = append(tcp, r.Ports...)
		case ProtoUDP:
			udp = append(udp, r.Ports...)
		case ProtoAny:
			tcp = append(tcp, r.Ports...)
			udp = append(udp, r.Ports...)
		default:
			return nil, fmt.Errorf("policy: listen rule %s: want tcp, udp or any", r)
		}
	}
	var out []ListenRule
	for _, l := range []ListenRule{{ProtoTCP, tcp}, {ProtoUDP, udp}} {
		if len(l.Ports) == 0 {
			continue
		}
		l.Ports = normalizePorts(l.Ports)
		if len(l.Ports) > MaxPortRanges {
			return nil, fmt.Errorf("policy: listen rules for %s need %d port ranges; the kernel holds at most %d per transport",
				l.Protocol, len(l.Ports), MaxPortRanges)
		}
		out = append(out, l)
	}
	return out, nil
}

// netEntry is one (protocol, prefix) grant before prefixes are merged.
// hi, lo and bits order entries so that every prefix comes after the
// prefixes that contain it and before its own sub-prefixes.
type netEntry struct {
	proto  Protocol
	bits   uint8
	hi, lo uint64
	prefix netip.Prefix
	ports  []PortRange // sorted and merged
}

// compileEgress compiles the rules that name addresses; compileNames takes
// those that name hosts.
func compileEgress(rules []EgressRule) (net4, net6 []NetRule, err error) {
	var n4, n6 int
	for _, r := range rules {
		if r.Host != "" {
			continue
		}
		n := 1
		if r.Protocol == ProtoAny {
			n = 3
		}
		if r.Prefix.Addr().Is4() || r.Prefix.Addr().Is4In6() {
			n4 += n
		} else {
			n6 += n
		}
	}
	v4, v6 := make([]netEntry, 0, n4), make([]netEntry, 0, n6)
	for _, r := range rules {
		if r.Host != "" {
			continue
		}
		p, err := canonicalPrefix(r.Prefix)
		if err != nil {
			return nil, nil, fmt.Errorf("policy: egress rule %s: %w", r, err)
		}
		protos, ports, err := expandEgress(r)
		if err != nil {
			return nil, nil, err
		}
		for _, proto := range protos {
			e := netEntry{proto: proto, bits: uint8(p.Bits()), prefix: p, ports: ports}
			if proto == ProtoICMP {
				e.ports = allPorts
			}
			if p.Addr().Is4() {
				a := p.Addr().As4()
				e.lo = uint64(a[0])<<24 | uint64(a[1])<<16 | uint64(a[2])<<8 | uint64(a[3])
				v4 = append(v4, e)
			} else {
				a := p.Addr().As16()
				for i := range 8 {
					e.hi = e.hi<<8 | uint64(a[i])
					e.lo = e.lo<<8 | uint64(a[8+i])
				}
				v6 = append(v6, e)
			}
		}
	}
	if net4, err = foldPrefixes(v4); err != nil {
		return nil, nil, err
	}
	if net6, err = foldPrefixes(v6); err != nil {
		return nil, nil, err
	}
	return net4, net6, nil
}

// expandEgress returns the protocols an egress rule stands for and its
// ports, sorted and merged (allPorts for none). The caller gives ICMP
// allPorts whatever the rule says.
func expandEgress(r EgressRule) ([]Protocol, []PortRange, error) {
	for _, pr := range r.Ports {
		if pr.First > pr.Last {
			return nil, nil, fmt.Errorf("policy: egress rule %s: port range %d-%d runs backwards", r, pr.First, pr.Last)
		}
	}
	ports := allPorts
	if len(r.Ports) > 0 {
		ports = normalizePorts(r.Ports)
	}
	switch r.Protocol {
	case ProtoTCP, ProtoUDP:
		return []Protocol{r.Protocol}, ports, nil
	case ProtoICMP:
		if len(r.Ports) > 0 {
			return nil, nil, fmt.Errorf("policy: egress rule %s: icmp has no ports", r)
		}
		return []Protocol{ProtoICMP}, ports, nil
	case ProtoAny:
		// Ports mean nothing to ICMP. A rule limited to some ports
		// therefore covers only TCP and UDP: widening it to every ICMP
		// message would open a channel the user did not ask for.
		if len(r.Ports) > 0 {
			return []Protocol{ProtoTCP, ProtoUDP}, ports, nil
		}
		return []Protocol{ProtoTCP, ProtoUDP, ProtoICMP}, ports, nil
	}
	return nil, nil, fmt.Errorf("policy: egress rule %s: unknown protocol %d", r, uint8(r.Protocol))
}

// MaxNames is how many names (distinct patterns, whatever their
// protocols) one rule set may hold. An agent needs tens of names, not
// thousands: a list that long is better said with a wildcard or a CIDR.
// The resolver checks each query through a NameIndex, whose cost does not
// grow with the list (BenchmarkNameIndex: about 0.2 µs at this limit, on
// every protocol; the plain scan of PortsForName takes 18 µs there).
const MaxNames = 1024

// compileNames compiles the rules that name hosts into one NameRule per
// (protocol, pattern), protocols expanded as compileEgress expands them.
func compileNames(rules []EgressRule) ([]NameRule, error) {
	var out []NameRule
	for _, r := range rules {
		if r.Host == "" {
			continue
		}
		if r.Prefix.IsValid() {
			return nil, fmt.Errorf("policy: egress rule %s: names both a host and the prefix %s; a rule names one or the other", r, formatPrefix(r.Prefix))
		}
		pattern, err := ParseHostPattern(r.Host)
		if err != nil {
			return nil, fmt.Errorf("policy: egress rule %s: %w", r, err)
		}
		protos, ports, err := expandEgress(r)
		if err != nil {
			return nil, err
		}
		for _, proto := range protos {
			nr := NameRule{Protocol: proto, Pattern: pattern, Ports: ports}
			if proto == ProtoICMP {
				nr.Ports = allPorts
			}
			out = append(out, nr)
		}
	}
	return foldNames(out)
}

// foldNames sorts name rules by (protocol, pattern) and merges the ports
// of equal ones into fresh, normalized lists, which it checks against the
// limits: MaxNames patterns, and MaxPortRanges per rule, since each
// address learned for a name becomes one kernel entry with its ports.
func foldNames(rules []NameRule) ([]NameRule, error) {
	if len(rules) == 0 {
		return nil, nil
	}
	slices.SortFunc(rules, func(a, b NameRule) int {
		return cmp.Or(cmp.Compare(a.Protocol, b.Protocol), strings.Compare(a.Pattern, b.Pattern))
	})
	out := make([]NameRule, 0, len(rules))
	patterns := make(map[string]struct{}, len(rules))
	for i := 0; i < len(rules); {
		r := rules[i]
		ports := slices.Clone(r.Ports)
		j := i + 1
		for ; j < len(rules) && rules[j].Protocol == r.Protocol && rules[j].Pattern == r.Pattern; j++ {
			ports = append(ports, rules[j].Ports...)
		}
		i = j
		r.Ports = normalizePorts(ports)
		if len(r.Ports) > MaxPortRanges {
			return nil, fmt.Errorf("policy: %s %s needs %d port ranges; the kernel holds at most %d per learned address",
				r.Protocol, r.Pattern, len(r.Ports), MaxPortRanges)
		}
		patterns[r.Pattern] = struct{}{}
		out = append(out, r)
	}
	if len(patterns) > MaxNames {
		return nil, fmt.Errorf("policy: %d names; a rule set holds at most %d (a wildcard or a CIDR covers many)", len(patterns), MaxNames)
	}
	return out, nil
}

// foldPrefixes merges duplicate prefixes and gives every prefix the ports
// of all prefixes that contain it. Sorted by address and then length, the
// prefixes containing an entry are exactly those left on a stack of
// enclosing prefixes when the walk reaches it, and the top of that stack
// already carries the ports of all the others, so one merge per entry
// suffices.
func foldPrefixes(entries []netEntry) ([]NetRule, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	slices.SortFunc(entries, func(a, b netEntry) int {
		return cmp.Or(cmp.Compare(a.proto, b.proto), cmp.Compare(a.hi, b.hi), cmp.Compare(a.lo, b.lo), cmp.Compare(a.bits, b.bits))
	})
	out := make([]NetRule, 0, len(entries))
	// All port lists live in one backing array; each rule gets a
	// capacity-limited window so appending to one cannot clobber another.
	arena := make([]PortRange, 0, len(entries))
	var (
		stack   []int // indexes into out
		scratch []PortRange
	)
	for i := 0; i < len(entries); {
		e := entries[i]
		own := e.ports
		j := i + 1
		if j < len(entries) && sameKey(entries[j], e) {
			scratch = append(scratch[:0], e.ports...)
			for ; j < len(entries) && sameKey(entries[j], e); j++ {
				scratch = append(scratch, entries[j].ports...)
			}
			own = normalizePorts(scratch)
		}
		i = j

		for len(stack) > 0 {
			top := out[stack[len(stack)-1]]
			if top.Protocol == e.proto && top.Prefix.Bits() < int(e.bits) && top.Prefix.Contains(e.prefix.Addr()) {
				break
			}
			stack = stack[:len(stack)-1]
		}
		var inherited []PortRange
		if len(stack) > 0 {
			inherited = out[stack[len(stack)-1]].Ports
		}
		start := len(arena)
		arena = appendUnion(arena, own, inherited)
		if n := len(arena) - start; n > MaxPortRanges {
			return nil, fmt.Errorf("policy: %s %s needs %d port ranges, counting those of the prefixes that contain it; the kernel holds at most %d per prefix",
				e.proto, e.prefix, n, MaxPortRanges)
		}
		out = append(out, NetRule{Protocol: e.proto, Prefix: e.prefix, Ports: arena[start:len(arena):len(arena)]})
		stack = append(stack, len(out)-1)
	}
	return out, nil
}

func sameKey(a, b netEntry) bool {
	return a.proto == b.proto && a.hi == b.hi && a.lo == b.lo && a.bits == b.bits
}

// normalizePorts returns ports sorted with overlapping and adjacent ranges
// joined. The ranges must not run backwards.
// A list that is already normalized, as most are, is returned as it is.
func normalizePorts(ports []PortRange) []PortRange {
	normal := true
	for i := 1; i < len(ports) && normal; i++ {
		normal = int(ports[i].First) > int(ports[i-1].Last)+1
	}
	if normal {
		return ports
	}
	s := slices.Clone(ports)
	slices.SortFunc(s, func(a, b PortRange) int { return cmp.Compare(a.First, b.First) })
	out := s[:0]
	for _, pr := range s {
		if n := len(out); n > 0 && int(pr.First) <= int(out[n-1].Last)+1 {
			out[n-1].Last = max(out[n-1].Last, pr.Last)
			continue
		}
		out = append(out, pr)
	}
	return slices.Clip(out)
}

// appendUnion appends the union of the normalized lists a and b to dst,
// itself normalized.
func appendUnion(dst, a, b []PortRange) []PortRange {
	start := len(dst)
	for len(a) > 0 || len(b) > 0 {
		var next PortRange
		if len(b) == 0 || (len(a) > 0 && a[0].First <= b[0].First) {
			next, a = a[0], a[1:]
		} else {
			next, b = b[0], b[1:]
		}
		if n := len(dst); n > start && int(next.First) <= int(dst[n-1].Last)+1 {
			dst[n-1].Last = max(dst[n-1].Last, next.Last)
			continue
		}
		dst = append(dst, next)
	}
	return dst
}

func compileUnix(paths []string) ([]string, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	out := make([]string, 0, len(paths))
	for _, p := range paths {
		clean, err := ParseUnix(p)
		if err != nil {
			return nil, err
		}
		out = append(out, clean)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

func compileExec(rules []ExecRule) ([]FileID, error) {
	var out []FileID
	seen := make(map[[2]uint64]int) // index in out
	add := func(id FileID) {
		k := [2]uint64{id.Dev, id.Ino}
		i, ok := seen[k]
		if !ok {
			seen[k] = len(out)
			out = append(out, id)
			return
		}
		// Rules add up: a file any rule allows without condition is
		// allowed without condition.
		out[i].ScriptOnly = out[i].ScriptOnly && id.ScriptOnly
	}
	for _, r := range rules {
		if !filepath.IsAbs(r.Path) {
			return nil, fmt.Errorf("policy: exec rule %q: path must be absolute", r)
		}
		if r.Dir {
			walkAdd := func(id FileID) { id.ScriptOnly = r.ScriptOnly; add(id) }
			if err := walkExecutables(r.Path, walkAdd); err != nil {
				return nil, err
			}
			continue
		}
		id, mode, err := statFile(r.Path)
		if err != nil {
			return nil, fmt.Errorf("policy: exec rule %q: %w", r, err)
		}
		if mode&unix.S_IFMT != unix.S_IFREG {
			return nil, fmt.Errorf("policy: exec rule %q: not a regular file (end a directory with / to allow what is in it)", r)
		}
		if mode&0o111 == 0 {
			return nil, fmt.Errorf("policy: exec rule %q: file is not executable", r)
		}
		id.ScriptOnly = r.ScriptOnly
		add(id)
	}
	return out, nil
}

// walkExecutables calls add for every executable regular file below dir.
// Directory symlinks are not followed, so a rule cannot reach outside the
// tree it names through one, but a file symlink counts as the file it points
// to: running it runs that file. Entries that cannot be read are skipped;
// only a missing or unreadable dir is an error.
func walkExecutables(dir string, add func(FileID)) error {
	_, mode, err := statFile(dir)
	if err != nil {
		return fmt.Errorf("policy: exec rule %q: %w", dir+"/", err)
	}
	if mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("policy: exec rule %q: not a directory", dir+"/")
	}
	// The named directory itself may be a symlink (/bin on merged-/usr
	// systems); a trailing slash makes the walk start at its target while
	// the paths it reports keep the name the user wrote.
	root := dir
	if fi, err := os.Lstat(dir); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		root = strings.TrimSuffix(dir, "/") + "/"
	}
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == root {
				return fmt.Errorf("policy: exec rule %q: %w", dir+"/", err)
			}
			return nil
		}
		t := d.Type()
		if !t.IsRegular() && t&fs.ModeSymlink == 0 {
			return nil
		}
		id, mode, err := statFile(path)
		if err != nil || mode&unix.S_IFMT != unix.S_IFREG || mode&0o111 == 0 {
			return nil
		}
		add(id)
		return nil
	})
}

// FileIDOf returns the identity the kernel will see when path, or the file a
// symlink at path leads to, is executed. path must lead to a regular file.
func FileIDOf(path string) (FileID, error) {
	id, mode, err := statFile(path)
	if err != nil {
		return FileID{}, fmt.Errorf("policy: %w", err)
	}
	if mode&unix.S_IFMT != unix.S_IFREG {
		return FileID{}, fmt.Errorf("policy: %s: not a regular file", path)
	}
	return id, nil
}

func statFile(path string) (FileID, uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return FileID{}, 0, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	return FileID{Dev: kernelDev(uint64(st.Dev)), Ino: st.Ino, Path: path}, st.Mode, nil
}

// kernelDev converts a dev_t as stat(2) reports it into the encoding the
// kernel keeps in struct super_block, which is what BPF programs compare.
func kernelDev(dev uint64) uint64 {
	return uint64(unix.Major(dev))<<20 | uint64(unix.Minor(dev))
}
