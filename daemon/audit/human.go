package audit

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/bridle-sh/bridle/bpf"
)

// Target names what the workload tried to reach or run, for people. Names
// the workload chose (paths) are escaped with Printable.
func (r Record) Target() string {
	return Printable(r.target())
}

func (r Record) target() string {
	switch {
	case r.Action == bpf.ActionDNS:
		return r.QueryType + " " + r.Name
	case r.Protocol == bpf.ProtocolUnix:
		return "unix:" + r.Path
	case r.Action == bpf.ActionExec:
		return r.Path
	case r.Action == bpf.ActionNamespace:
		return r.Path // the kinds asked for: "user,mnt"
	case r.Action == bpf.ActionSocket && r.Family != 0:
		return FamilyName(r.Family)
	case r.Action == bpf.ActionSocket:
		return string(r.Protocol) + " socket"
	case r.Action == bpf.ActionSetsockopt:
		return r.Path + " on a " + string(r.Protocol) + " socket"
	case r.Action == bpf.ActionAccept:
		return string(r.Protocol) + " port " + strconv.Itoa(int(r.Port)) + " from " + r.Address
	case r.Address != "":
		return string(r.Protocol) + ":" + hostPort(r.Address, r.Port, r.Protocol)
	}
	return string(r.Protocol)
}

func hostPort(addr string, port uint16, proto bpf.Protocol) string {
	a, err := netip.ParseAddr(addr)
	s := addr
	if err == nil && a.Is6() {
		s = "[" + addr + "]"
	}
	if proto == bpf.ProtocolICMP {
		return s
	}
	return s + ":" + strconv.Itoa(int(port))
}

// AllowFlag returns the `bridle run` flag that would have allowed the
// refused action, or "" when no flag can (raw and packet sockets, socket
// options and packets that send traffic elsewhere than their address). It
// is for people: a path is escaped with Printable.
func (r Record) AllowFlag() string {
	return Printable(r.allowFlag())
}

func (r Record) allowFlag() string {
	switch {
	case r.noFlag():
		return ""
	case r.Action == bpf.ActionDNS:
		// A name's port is not in the query; an exact name also lifts
		// the wildcard budget, which counts only wildcard-matched names.
		if r.Reason != DNSNotAllowed && r.Reason != DNSBudget || r.Name == "" {
			return ""
		}
		return "--allow-connect tcp:" + r.Name + ":PORT"
	case r.Action == bpf.ActionBind || r.Action == bpf.ActionAccept:
		if r.Protocol != bpf.ProtocolTCP && r.Protocol != bpf.ProtocolUDP {
			return ""
		}
		return "--allow-listen " + string(r.Protocol) + ":" + strconv.Itoa(int(r.Port))
	case r.Protocol == bpf.ProtocolUnix:
		return "--allow-unix " + r.Path
	case r.Action == bpf.ActionExec && r.scriptOnly():
		return "" // allowed as a script already; no flag makes it a program
	case r.Action == bpf.ActionExec:
		if !fileOnDisk(r.Path) {
			return "" // a memfd or a descriptor: no path names it
		}
		return "--allow-exec " + r.Path
	case r.Address != "" && (r.Protocol == bpf.ProtocolTCP || r.Protocol == bpf.ProtocolUDP || r.Protocol == bpf.ProtocolICMP):
		return "--allow-connect " + string(r.Protocol) + ":" + hostPort(r.Address, r.Port, r.Protocol)
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
	verb, ok := verbs[r.Verdict]
	if !ok {
		verb = string(r.Verdict)
	}
	who := fmt.Sprintf("%s[%d]", r.Comm, r.PID)
	switch {
	case r.Action == bpf.ActionDNS:
		who = "the workload"
	case r.PID == 0:
		who = "the workload (packet check)"
	}
	fmt.Fprintf(&b, "%s %s %s by %s: %s", verb, r.Action, r.target(), who, r.Reason)
	if r.Enforcement == bpf.EnforcementKill && r.Verdict == bpf.VerdictDeny {
		b.WriteString(" (killed)")
	}
	if r.Suppressed > 0 {
		fmt.Fprintf(&b, " (%d more suppressed before it: over the workload's event budget)", r.Suppressed)
	}
	if r.Verdict != bpf.VerdictAllow {
		if r.Action == bpf.ActionExec && r.scriptOnly() {
			// The file is allowed, as a script; what ran was not one.
			b.WriteString("; the workload can rewrite this file, so it may run only as a script, never as a program")
		} else if f := r.allowFlag(); f != "" {
			b.WriteString("; allow with " + f)
		} else if r.noFlag() {
			b.WriteString("; no flag allows this")
		} else if r.Action == bpf.ActionExec {
			b.WriteString("; run by descriptor, so no path names it: allow the binary's file with --allow-exec")
		}
		if r.Request != "" {
			// The policy lets the task ask for this: a person can
			// answer while the workload waits or retries.
			fmt.Fprintf(&b, "; approval request %s is pending: bridle approve %s --for DURATION (or bridle deny %s)", r.Request, r.Request, r.Request)
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
	return bpf.Reason(r.Reason) == bpf.ReasonScriptOnly
}

// noFlag reports a refusal of what no flag can allow: raw and packet
// sockets, other address families, namespaces, socket options and packets
// that send traffic elsewhere than their address.
func (r Record) noFlag() bool {
	switch r.Action {
	case bpf.ActionSocket, bpf.ActionSetsockopt, bpf.ActionNamespace:
		return true
	case bpf.ActionDNS:
		cause, _, _ := strings.Cut(r.Reason, ": ")
		return cause == DNSType || cause == DNSInvalid || cause == DNSUnattributed
	}
	return bpf.Reason(r.Reason) == bpf.ReasonExtHeader
}

// verbs name verdicts in a sentence.
var verbs = map[bpf.Verdict]string{
	bpf.VerdictDeny: "denied", bpf.VerdictWouldDeny: "would deny", bpf.VerdictAllow: "allowed",
}
