package audit

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Target names what the workload tried to reach or run, for people. Names
// the workload chose (paths) are escaped with Printable.
func (r Record) Target() string {
	return Printable(r.target())
}

func (r Record) target() string {
	switch {
	case r.Protocol == "unix":
		return "unix:" + r.Path
	case r.Action == "exec":
		return r.Path
	case r.Action == "namespace":
		return r.Path // the kinds asked for: "user,mnt"
	case r.Action == "socket" && r.Family != 0:
		return FamilyName(r.Family)
	case r.Action == "socket":
		return r.Protocol + " socket"
	case r.Action == "setsockopt":
		return r.Path + " on a " + r.Protocol + " socket"
	case r.Action == "accept":
		return r.Protocol + " port " + strconv.Itoa(int(r.Port)) + " from " + r.Address
	case r.Address != "":
		return r.Protocol + ":" + hostPort(r.Address, r.Port, r.Protocol)
	}
	return r.Protocol
}

func hostPort(addr string, port uint16, proto string) string {
	a, err := netip.ParseAddr(addr)
	s := addr
	if err == nil && a.Is6() {
		s = "[" + addr + "]"
	}
	if proto == "icmp" {
		return s
	}
	return s + ":" + strconv.Itoa(int(port))
}

// ReasonExtHeader is the reason of a packet dropped for its extension
// headers or IP options; no rule allows those.
const ReasonExtHeader = "packet has routing or extension headers or IP options"

// AllowFlag returns the `bridle run` flag that would have allowed the
// refused action, or "" when no flag can (raw and packet sockets, socket
// options and packets that send traffic elsewhere than their address). It
// is for people: a path is escaped with Printable.
func (r Record) AllowFlag() string {
	return Printable(r.allowFlag())
}

func (r Record) allowFlag() string {
	switch {
	case r.Action == "socket", r.Action == "setsockopt", r.Action == "namespace", r.Reason == ReasonExtHeader:
		return ""
	case r.Action == "bind" || r.Action == "accept":
		if r.Protocol != "tcp" && r.Protocol != "udp" {
			return ""
		}
		return "--allow-listen " + r.Protocol + ":" + strconv.Itoa(int(r.Port))
	case r.Protocol == "unix":
		return "--allow-unix " + r.Path
	case r.Action == "exec" && r.scriptOnly():
		return "" // allowed as a script already; no flag makes it a program
	case r.Action == "exec":
		if !fileOnDisk(r.Path) {
			return "" // a memfd or a descriptor: no path names it
		}
		return "--allow-exec " + r.Path
	case r.Address != "" && (r.Protocol == "tcp" || r.Protocol == "udp" || r.Protocol == "icmp"):
		return "--allow-connect " + r.Protocol + ":" + hostPort(r.Address, r.Port, r.Protocol)
	}
	return ""
}

// Line renders a decision as one line for a terminal. Everything in it
// that a workload chose (its comm, paths, and whatever reached the reason)
// is escaped with Printable: the line is always exactly one line, with no
// control characters.
func (r Record) Line() string {
	return Printable(r.line())
}

func (r Record) line() string {
	var b strings.Builder
	verb := map[string]string{"deny": "denied", "would-deny": "would deny", "allow": "allowed"}[r.Verdict]
	if verb == "" {
		verb = r.Verdict
	}
	who := fmt.Sprintf("%s[%d]", r.Comm, r.PID)
	if r.PID == 0 {
		who = "the workload (packet check)"
	}
	fmt.Fprintf(&b, "%s %s %s by %s: %s", verb, r.Action, r.target(), who, r.Reason)
	if r.Enforcement == "kill" && r.Verdict == "deny" {
		b.WriteString(" (killed)")
	}
	if r.Suppressed > 0 {
		fmt.Fprintf(&b, " (%d more suppressed before it: over the workload's event budget)", r.Suppressed)
	}
	if r.Verdict != "allow" {
		if r.Action == "exec" && r.scriptOnly() {
			// The file is allowed, as a script; what ran was not one.
			b.WriteString("; the workload can rewrite this file, so it may run only as a script, never as a program")
		} else if f := r.allowFlag(); f != "" {
			b.WriteString("; allow with " + f)
		} else if r.Action == "socket" || r.Action == "setsockopt" || r.Action == "namespace" || r.Reason == ReasonExtHeader {
			b.WriteString("; no flag allows this")
		} else if r.Action == "exec" {
			b.WriteString("; run by descriptor, so no path names it: allow the binary's file with --allow-exec")
		}
	}
	return b.String()
}

// fileOnDisk reports whether an exec name is a path a flag can allow, rather
// than a descriptor (/dev/fd/N, /proc/self/fd/N) or a relative name.
func fileOnDisk(p string) bool {
	return strings.HasPrefix(p, "/") && !strings.HasPrefix(p, "/dev/fd/") && !strings.HasPrefix(p, "/proc/")
}

// familyNames names the address families a workload is most likely to try;
// others are shown by number.
var familyNames = map[uint16]string{
	1: "AF_UNIX", 2: "AF_INET", 3: "AF_AX25", 4: "AF_IPX", 5: "AF_APPLETALK", 9: "AF_X25",
	10: "AF_INET6", 15: "AF_KEY", 16: "AF_NETLINK", 17: "AF_PACKET", 21: "AF_RDS", 24: "AF_PPPOX",
	29: "AF_CAN", 30: "AF_TIPC", 31: "AF_BLUETOOTH", 38: "AF_ALG", 39: "AF_NFC", 40: "AF_VSOCK",
	41: "AF_KCM", 42: "AF_QIPCRTR", 43: "AF_SMC", 44: "AF_XDP", 45: "AF_MCTP",
}

// FamilyName names an address family for people: "AF_VSOCK", or
// "family 46" for one without a name here.
func FamilyName(f uint16) string {
	if n, ok := familyNames[f]; ok {
		return n
	}
	return "family " + strconv.Itoa(int(f))
}

// scriptOnly reports a refused exec of a file allowed only as a #! script
// (the kernel's SCRIPT_ONLY reason).
func (r Record) scriptOnly() bool {
	return strings.Contains(r.Reason, "only as a #! script")
}
