package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/bridle-sh/bridle/bpf"
)

// MaxUnixPath is the longest unix socket path, in bytes, a rule may name:
// sun_path holds bpf.UnixPathMax (108) bytes, and a pathname needs its
// terminating NUL while an abstract name needs its leading one. For "@name"
// the limit applies to name.
const MaxUnixPath = bpf.UnixPathMax - 1

const connectForm = "want PROTO:ADDR[:PORTS] or PROTO:NAME[:PORTS], e.g. tcp:10.0.0.0/8:443, udp:[2001:db8::1]:53, icmp:192.0.2.7, tcp:api.example.com:443 or tcp:*.example.com:443"

// ParseConnect parses the value of --allow-connect PROTO:ADDR[:PORTS] or
// PROTO:NAME[:PORTS].
//
// PROTO is tcp, udp, icmp or any. ADDR is an IPv4 address or CIDR, or an
// IPv6 address or CIDR in brackets ("[2001:db8::]/32"); host bits are
// masked off. An IPv4-mapped IPv6 address or prefix becomes its IPv4
// equivalent, because the kernel side judges mapped destinations by the
// IPv4 rules. NAME is a host name or a "*.suffix" wildcard, checked as a
// policy's host is (ParseHostPattern); it allows the addresses Bridle's
// resolver learns for the name. An unbracketed value with anything but
// digits and dots (and no '/' or '%') is a name. PORTS is a comma list of
// N or N-M; without it every port is allowed. icmp takes no ports.
func ParseConnect(s string) (EgressRule, error) {
	fail := func(format string, args ...any) (EgressRule, error) {
		return EgressRule{}, fmt.Errorf("policy: bad connect rule %q: %s (%s)", s, fmt.Sprintf(format, args...), connectForm)
	}
	protoStr, rest, ok := strings.Cut(s, ":")
	if !ok {
		return fail("no address")
	}
	var r EgressRule
	var err error
	if r.Protocol, err = parseProtocol(protoStr); err != nil {
		return fail("%v", err)
	}

	var addrStr, portStr string
	hasPorts := false
	if strings.HasPrefix(rest, "[") {
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			return fail("missing ']' after IPv6 address")
		}
		addrStr = rest[1:end]
		after := rest[end+1:]
		if lenStr, ok := strings.CutPrefix(after, "/"); ok {
			lenStr, portStr, hasPorts = strings.Cut(lenStr, ":")
			addrStr += "/" + lenStr
		} else if portStr, hasPorts = strings.CutPrefix(after, ":"); !hasPorts && after != "" {
			return fail("unexpected %q after ']'", after)
		}
		if addrStr == "" || addrStr[0] == '/' {
			return fail("empty address in brackets")
		}
	} else {
		addrStr, portStr, hasPorts = strings.Cut(rest, ":")
		if strings.Contains(portStr, ":") {
			return fail("IPv6 addresses must be in brackets, e.g. [2001:db8::1] or [2001:db8::]/32")
		}
	}
	if addrStr == "" {
		return fail("empty address")
	}
	switch {
	case strings.HasPrefix(rest, "["):
		if r.Prefix, err = parseAddrOrPrefix(addrStr, formFlagV6); err != nil {
			return fail("%v", err)
		}
	case looksLikeName(addrStr):
		if r.Host, err = ParseHostPattern(addrStr); err != nil {
			return fail("%v", err)
		}
	default:
		if r.Prefix, err = parseAddrOrPrefix(addrStr, formFlagV4); err != nil {
			return fail("%v", err)
		}
	}

	if hasPorts {
		if r.Protocol == ProtoICMP {
			return fail("icmp has no ports")
		}
		if portStr == "" {
			return fail("empty port list after ':'")
		}
		r.Ports, err = parsePorts(portStr)
		if err != nil {
			return fail("%v", err)
		}
	}
	return r, nil
}

// looksLikeName tells an unbracketed flag destination that is meant as a
// name from one meant as an IPv4 address or prefix: an address has only
// digits and dots, a prefix a '/', a zoned address a '%'. A mistyped
// address ("10.0.0.256") is then explained as an address, and a name that
// is all digits would be read as an address by resolvers anyway.
func looksLikeName(s string) bool {
	return !strings.ContainsAny(s, "/%") && strings.Trim(s, "0123456789.") != ""
}

// parseProtocol parses the protocol name of a connect flag or of a policy's
// egress entry; both spell protocols the same way.
func parseProtocol(s string) (Protocol, error) {
	switch s {
	case "tcp":
		return ProtoTCP, nil
	case "udp":
		return ProtoUDP, nil
	case "icmp":
		return ProtoICMP, nil
	case "any":
		return ProtoAny, nil
	case "":
		return 0, errors.New("empty protocol")
	}
	return 0, fmt.Errorf("unknown protocol %q, want tcp, udp, icmp or any", s)
}

// addrForm says where an address was written, which decides the families
// it may be in and how a mistake is explained.
type addrForm int

const (
	// formFlagV4 is an unbracketed flag address: IPv4 only, so that a port
	// can never be mistaken for part of an address.
	formFlagV4 addrForm = iota
	// formFlagV6 is a bracketed flag address: IPv6 only.
	formFlagV6
	// formCIDR is a policy's cidr field: either family, never bracketed,
	// since a JSON value cannot run into a port.
	formCIDR
)

// parseAddrOrPrefix parses "ADDR" or "ADDR/BITS" written in form.
func parseAddrOrPrefix(s string, form addrForm) (netip.Prefix, error) {
	addrStr, bitsStr, hasBits := strings.Cut(s, "/")
	if strings.Contains(addrStr, "%") {
		return netip.Prefix{}, fmt.Errorf("address %q has a zone; zones are not allowed", addrStr)
	}
	addr, err := netip.ParseAddr(addrStr)
	if err != nil {
		switch form {
		case formFlagV6:
			return netip.Prefix{}, fmt.Errorf("%q is not an IPv6 address", addrStr)
		case formFlagV4:
			return netip.Prefix{}, fmt.Errorf("%q is not an IPv4 address (IPv6 goes in brackets)", addrStr)
		}
		return netip.Prefix{}, fmt.Errorf("%q is not an IPv4 or IPv6 address", addrStr)
	}
	if form == formFlagV6 && !addr.Is6() {
		return netip.Prefix{}, fmt.Errorf("%q in brackets is not IPv6; write IPv4 without brackets", addrStr)
	}
	bits := addr.BitLen()
	if hasBits {
		n, err := strconv.ParseUint(bitsStr, 10, 8)
		if err != nil || int(n) > addr.BitLen() {
			return netip.Prefix{}, fmt.Errorf("prefix length %q out of range 0-%d", bitsStr, addr.BitLen())
		}
		bits = int(n)
	}
	return canonicalPrefix(netip.PrefixFrom(addr, bits))
}

// canonicalPrefix masks p and rewrites IPv4-mapped IPv6 prefixes as IPv4.
// The kernel side looks a mapped destination up among the IPv4 rules, so a
// mapped rule left in IPv6 form would never match anything.
func canonicalPrefix(p netip.Prefix) (netip.Prefix, error) {
	if !p.IsValid() {
		return netip.Prefix{}, errors.New("invalid prefix")
	}
	a := p.Addr()
	if a.Is4In6() {
		if p.Bits() < 96 {
			return netip.Prefix{}, fmt.Errorf("IPv4-mapped prefix %s is shorter than /96 and so covers more than the mapped range", p)
		}
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

func parsePorts(s string) ([]PortRange, error) {
	parts := strings.Split(s, ",")
	ports := make([]PortRange, 0, len(parts))
	for _, part := range parts {
		pr, err := parsePortRange(part)
		if err != nil {
			return nil, err
		}
		ports = append(ports, pr)
	}
	return ports, nil
}

// parsePortRange parses one "N" or "N-M" entry of a port list.
func parsePortRange(part string) (PortRange, error) {
	if part == "" {
		return PortRange{}, errors.New("empty entry in port list")
	}
	firstStr, lastStr, isRange := strings.Cut(part, "-")
	first, err := parsePort(firstStr)
	if err != nil {
		return PortRange{}, err
	}
	last := first
	if isRange {
		if last, err = parsePort(lastStr); err != nil {
			return PortRange{}, err
		}
		if first > last {
			return PortRange{}, fmt.Errorf("port range %q runs backwards", part)
		}
	}
	return PortRange{first, last}, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("port %q is not a number from 1 to 65535", s)
	}
	return uint16(n), nil
}

// ParseUnix parses the value of --allow-unix PATH: an absolute socket path,
// which is cleaned, or "@name" for a socket in the abstract namespace, which
// is kept byte for byte.
func ParseUnix(s string) (string, error) {
	p, err := checkUnix(s)
	if err != nil {
		return "", fmt.Errorf("policy: bad unix socket %q: %w", s, err)
	}
	return p, nil
}

// checkUnix is ParseUnix without the framing, so that a policy's unix
// entries are judged by the same rules and explained in their own terms.
func checkUnix(s string) (string, error) {
	if name, ok := strings.CutPrefix(s, "@"); ok {
		if name == "" {
			return "", errors.New("empty abstract name (want /absolute/path or @name)")
		}
		if len(name) > MaxUnixPath {
			return "", fmt.Errorf("abstract name is %d bytes, the kernel allows %d", len(name), MaxUnixPath)
		}
		return s, nil
	}
	if s == "" {
		return "", errors.New("empty path (want /absolute/path or @name)")
	}
	if strings.IndexByte(s, 0) >= 0 {
		return "", errors.New("path contains a NUL byte")
	}
	if !filepath.IsAbs(s) {
		return "", errors.New("path is relative; the kernel compares the path the process passes to connect(), " +
			"which depends on its working directory, so only absolute paths (or @name for abstract sockets) can be allowed")
	}
	p := filepath.Clean(s)
	if len(p) > MaxUnixPath {
		return "", fmt.Errorf("path is %d bytes, the kernel allows %d", len(p), MaxUnixPath)
	}
	return p, nil
}

// ParseExec parses the value of --allow-exec PATH. PATH must be absolute; a
// trailing slash makes it a directory rule covering every executable below;
// "script:PATH" allows PATH only as a #! script.
func ParseExec(s string) (ExecRule, error) {
	path, script := strings.CutPrefix(s, ScriptPrefix)
	r, err := checkExec(path)
	if err != nil {
		return ExecRule{}, fmt.Errorf("policy: bad exec rule %q: %w", s, err)
	}
	r.ScriptOnly = script
	return r, nil
}

// checkExec is ParseExec without the framing; see checkUnix.
func checkExec(s string) (ExecRule, error) {
	if s == "" {
		return ExecRule{}, errors.New("empty path (want /path/to/program or /path/to/dir/)")
	}
	if strings.IndexByte(s, 0) >= 0 {
		return ExecRule{}, errors.New("path contains a NUL byte")
	}
	if !filepath.IsAbs(s) {
		return ExecRule{}, errors.New("path must be absolute (want /path/to/program or /path/to/dir/)")
	}
	return ExecRule{Path: filepath.Clean(s), Dir: strings.HasSuffix(s, "/")}, nil
}

const listenForm = "want PROTO:PORTS, e.g. tcp:8080 or udp:5353,6000-6010"

// ParseListen parses the value of --allow-listen PROTO:PORTS: PROTO is tcp,
// udp or any (both); PORTS is a comma list of N or N-M, as in
// --allow-connect. A listen rule names no address: it is about the ports a
// workload may take on this host, whatever address it binds.
func ParseListen(s string) (ListenRule, error) {
	fail := func(format string, args ...any) (ListenRule, error) {
		return ListenRule{}, fmt.Errorf("policy: bad listen rule %q: %s (%s)", s, fmt.Sprintf(format, args...), listenForm)
	}
	protoStr, portStr, ok := strings.Cut(s, ":")
	if !ok {
		return fail("no ports")
	}
	var r ListenRule
	var err error
	if r.Protocol, err = parseListenProtocol(protoStr); err != nil {
		return fail("%v", err)
	}
	if portStr == "" {
		return fail("empty port list after ':'")
	}
	if strings.Contains(portStr, ":") {
		return fail("a listen rule has no address, only ports")
	}
	if r.Ports, err = parsePorts(portStr); err != nil {
		return fail("%v", err)
	}
	return r, nil
}

// parseListenProtocol parses the protocol of a listen flag or of a
// policy's listen entry: tcp, udp or any. icmp has no ports.
func parseListenProtocol(s string) (Protocol, error) {
	switch s {
	case "tcp":
		return ProtoTCP, nil
	case "udp":
		return ProtoUDP, nil
	case "any":
		return ProtoAny, nil
	case "":
		return 0, errors.New("empty protocol")
	case "icmp":
		return 0, errors.New("icmp has no ports to listen on; want tcp, udp or any")
	}
	return 0, fmt.Errorf("unknown protocol %q, want tcp, udp or any", s)
}

// ParseListenGrants parses --allow-listen values; errors name the flag.
func ParseListenGrants(listen []string) ([]ListenRule, error) {
	var out []ListenRule
	for _, s := range listen {
		r, err := ParseListen(s)
		if err != nil {
			return nil, fmt.Errorf("--allow-listen: %w", err)
		}
		out = append(out, r)
	}
	return out, nil
}

// ParseGrants parses grants written as `bridle run` flags (--allow-connect,
// --allow-unix, --allow-exec values) into an envelope with no TTL. Errors
// name the flag the bad value belongs to.
func ParseGrants(connect, unixPaths, exec []string) (Envelope, error) {
	var env Envelope
	for _, s := range connect {
		r, err := ParseConnect(s)
		if err != nil {
			return Envelope{}, fmt.Errorf("--allow-connect: %w", err)
		}
		env.Egress = append(env.Egress, r)
	}
	for _, s := range unixPaths {
		p, err := ParseUnix(s)
		if err != nil {
			return Envelope{}, fmt.Errorf("--allow-unix: %w", err)
		}
		env.Unix = append(env.Unix, p)
	}
	for _, s := range exec {
		r, err := ParseExec(s)
		if err != nil {
			return Envelope{}, fmt.Errorf("--allow-exec: %w", err)
		}
		env.Exec = append(env.Exec, r)
	}
	return env, nil
}
