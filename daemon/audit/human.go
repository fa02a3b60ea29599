package audit

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Target names what the workload tried to reach or run, for people.
func (r Record) Target() string {
	switch {
	case r.Protocol == "unix":
		return "unix:" + r.Path
	case r.Action == "exec":
		return r.Path
	case r.Action == "socket":
		return r.Protocol + " socket"
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

// AllowFlag returns the `bridle run` flag that would have allowed the
// refused action, or "" when no flag can (raw and packet sockets).
func (r Record) AllowFlag() string {
	switch {
	case r.Action == "socket":
		return ""
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

// Line renders a decision as one line for a terminal.
func (r Record) Line() string {
	var b strings.Builder
	verb := map[string]string{"deny": "denied", "would-deny": "would deny", "allow": "allowed"}[r.Verdict]
	if verb == "" {
		verb = r.Verdict
	}
	who := fmt.Sprintf("%s[%d]", r.Comm, r.PID)
	if r.PID == 0 {
		who = "the workload (packet check)"
	}
	fmt.Fprintf(&b, "%s %s %s by %s: %s", verb, r.Action, r.Target(), who, r.Reason)
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
		} else if f := r.AllowFlag(); f != "" {
			b.WriteString("; allow with " + f)
		} else if r.Action == "socket" {
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

// scriptOnly reports a refused exec of a file allowed only as a #! script
// (the kernel's SCRIPT_ONLY reason).
func (r Record) scriptOnly() bool {
	return strings.Contains(r.Reason, "only as a #! script")
}
