package policy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Envelope is everything one task may do. Anything it does not name is
// refused by the kernel.
type Envelope struct {
	Egress []EgressRule  // network destinations
	Unix   []string      // unix socket paths; "@name" for abstract names
	Exec   []ExecRule    // programs the task may run
	Listen []ListenRule  // ports the task may bind and accept connections on
	TTL    time.Duration // how long the task's grants live; 0 means no expiry
	// AllowWritableExec accepts exec rules whose file the workload's
	// user can write. Such a rule allows whatever the workload writes
	// into the file, so it is refused unless asked for here.
	AllowWritableExec bool
}

// Protocol is an IP protocol, numbered as IANA numbers it so the value can
// go into a BPF map key unchanged.
type Protocol uint8

// The protocols a rule can name. ProtoAny is not an IANA number: it is
// shorthand for TCP, UDP and ICMP, expanded by [Compile].
const (
	ProtoICMP Protocol = 1
	ProtoTCP  Protocol = 6
	ProtoUDP  Protocol = 17
	ProtoAny  Protocol = 255
)

// String returns the name the --allow-connect flag uses for p.
func (p Protocol) String() string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMP:
		return "icmp"
	case ProtoAny:
		return "any"
	}
	return "proto(" + strconv.Itoa(int(p)) + ")"
}

// EgressRule allows connections (and datagrams) to one address prefix, or
// to the addresses a name resolves to.
type EgressRule struct {
	Protocol Protocol
	Prefix   netip.Prefix // masked; IPv4-mapped IPv6 prefixes are stored as IPv4
	// Host, when set instead of Prefix, is a name or "*.suffix" wildcard
	// as ParseHostPattern returns it.
	Host  string
	Ports []PortRange // empty means all ports
}

// String renders r in --allow-connect syntax, so a denial can tell the user
// the exact flag that would have allowed it. A rule naming a host renders
// the host where the address stands.
func (r EgressRule) String() string {
	dest := r.Host
	if dest == "" {
		dest = formatPrefix(r.Prefix)
	}
	s := r.Protocol.String() + ":" + dest
	if len(r.Ports) > 0 {
		s += ":" + formatPorts(r.Ports)
	}
	return s
}

// ListenRule allows binding ports of one transport and accepting the
// connections that reach them. Without one a workload can still bind port
// 0 (an ephemeral port, as clients do) but takes no inbound connection.
type ListenRule struct {
	Protocol Protocol    // ProtoTCP, ProtoUDP, or ProtoAny for both
	Ports    []PortRange // never empty
}

// String renders r in --allow-listen syntax.
func (r ListenRule) String() string {
	return r.Protocol.String() + ":" + formatPorts(r.Ports)
}

// PortRange is an inclusive range of ports.
type PortRange struct{ First, Last uint16 }

// String renders pr as "N" or "N-M".
func (pr PortRange) String() string {
	if pr.First == pr.Last {
		return strconv.Itoa(int(pr.First))
	}
	return strconv.Itoa(int(pr.First)) + "-" + strconv.Itoa(int(pr.Last))
}

// ExecRule allows running one executable, or, with Dir set, every executable
// regular file anywhere below the directory Path.
type ExecRule struct {
	Path string
	Dir  bool
	// ScriptOnly allows the file only as a #! script: the kernel refuses
	// to run it when its first bytes are anything else (an ELF binary
	// written over it), and its interpreter needs a rule of its own.
	ScriptOnly bool
}

// ScriptPrefix marks an --allow-exec value as a script-only rule.
const ScriptPrefix = "script:"

// String renders r in --allow-exec syntax: a directory keeps its trailing
// slash, which is what marks it as one on the command line.
func (r ExecRule) String() string {
	s := r.Path
	if r.Dir && !strings.HasSuffix(r.Path, "/") {
		s += "/"
	}
	if r.ScriptOnly {
		s = ScriptPrefix + s
	}
	return s
}

// formatPrefix writes a single address without its length and brackets IPv6,
// matching what ParseConnect accepts.
func formatPrefix(p netip.Prefix) string {
	if !p.IsValid() {
		return "invalid"
	}
	a := p.Addr()
	full := p.Bits() == a.BitLen()
	if a.Is4() {
		if full {
			return a.String()
		}
		return p.String()
	}
	s := "[" + a.String() + "]"
	if !full {
		s += "/" + strconv.Itoa(p.Bits())
	}
	return s
}

func formatPorts(ports []PortRange) string {
	var b strings.Builder
	for i, pr := range ports {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(pr.String())
	}
	return b.String()
}

// String identifies the file for people: its path and the kernel's view of
// its device and inode.
func (id FileID) String() string {
	return fmt.Sprintf("%s (dev %d:%d ino %d)", id.Path, id.Dev>>20, id.Dev&(1<<20-1), id.Ino)
}
