package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// The decoders below turn what a policy returned (JSON-shaped values: maps,
// slices, strings and json.Numbers) into an Envelope. They are strict on
// purpose: a key Bridle does not know is more likely a typo than a
// harmless extra, and a grant that is silently dropped or widened is worse
// than a task start that is refused with the reason.

// errSHA256Unsupported is returned for {sha256: DIGEST} exec entries. The
// kernel identifies a program by the (device, inode) of the file being
// executed, so a digest would have to be resolved to files by hashing every
// candidate on the host at task start, and a file rewritten in place after
// that would keep its identity and its grant. Refusing is more honest than
// pretending to pin content.
var errSHA256Unsupported = errors.New("{sha256: DIGEST} exec entries are not supported yet: the kernel identifies programs by device and inode, not content; name the program with {path} or {dir}")

// decodeEnvelope converts the value of the rule named rule (such as
// "data.bridle.envelope") into an Envelope and, when withTTL is set, the
// maximum TTL the policy allows (0 for none).
func DecodeEnvelope(v any, rule string, withTTL bool) (Envelope, time.Duration, error) {
	var env Envelope
	fail := func(format string, args ...any) (Envelope, time.Duration, error) {
		return Envelope{}, 0, fmt.Errorf("%s: %s", rule, fmt.Sprintf(format, args...))
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return fail("want an object {egress, exec, listen%s}, got %s", map[bool]string{true: ", ttl"}[withTTL], describe(v))
	}
	var maxTTL time.Duration
	for _, k := range sortedKeys(obj) {
		val := obj[k]
		switch {
		case k == "egress":
			items, ok := val.([]any)
			if !ok {
				return fail("egress: want an array or set of entries, got %s", describe(val))
			}
			for i, item := range items {
				r, unix, err := decodeEgress(item)
				if err != nil {
					return Envelope{}, 0, entryError(rule, fmt.Sprintf("egress[%d]", i), item, err)
				}
				if unix != "" {
					env.Unix = append(env.Unix, unix)
				} else {
					env.Egress = append(env.Egress, r)
				}
			}
		case k == "exec":
			items, ok := val.([]any)
			if !ok {
				return fail("exec: want an array or set of entries, got %s", describe(val))
			}
			for i, item := range items {
				r, err := decodeExec(item)
				if err != nil {
					return Envelope{}, 0, entryError(rule, fmt.Sprintf("exec[%d]", i), item, err)
				}
				env.Exec = append(env.Exec, r)
			}
		case k == "listen":
			items, ok := val.([]any)
			if !ok {
				return fail("listen: want an array or set of entries, got %s", describe(val))
			}
			for i, item := range items {
				r, err := decodeListen(item)
				if err != nil {
					return Envelope{}, 0, entryError(rule, fmt.Sprintf("listen[%d]", i), item, err)
				}
				env.Listen = append(env.Listen, r)
			}
		case k == "allow_writable_exec" && withTTL:
			b, ok := val.(bool)
			if !ok {
				return fail("allow_writable_exec: want true or false, got %s", describe(val))
			}
			env.AllowWritableExec = b
		case k == "ttl" && withTTL:
			d, err := decodeTTL(val)
			if err != nil {
				return fail("ttl %s: %v", compactJSON(val), err)
			}
			maxTTL = d
		case k == "ttl":
			return fail("a baseline has no ttl: it is what a workload gets while it has no task, for as long as it has none")
		default:
			want := "egress, exec, listen, ttl or allow_writable_exec"
			if !withTTL {
				want = "egress, exec or listen"
			}
			return fail("unknown key %q (want %s)", k, want)
		}
	}
	return env, maxTTL, nil
}

// EntryError is an entry of a policy's envelope that DecodeEnvelope
// refused. It keeps the entry, and the string within it that is wrong when
// one is, so that whoever holds the policy's source (the engine) can say
// where the policy wrote them.
type EntryError struct {
	Rule  string // the rule whose value held the entry: "data.bridle.envelope"
	Where string // the entry's place in that value: "egress[2]"
	Entry any    // the entry as the policy gave it
	Value string // the string in Entry the error is about; "" if none is
	Err   error
}

func (e *EntryError) Error() string {
	return fmt.Sprintf("%s: %s %s: %v", e.Rule, e.Where, compactJSON(e.Entry), e.Err)
}

func (e *EntryError) Unwrap() error { return e.Err }

// fieldError is an error about one key of an entry; its message leads with
// the key, as every message about an entry's field does.
type fieldError struct {
	key string
	err error
}

func (e *fieldError) Error() string {
	msg := e.err.Error()
	if strings.HasPrefix(msg, e.key+" ") { // ParseHostPattern's `host "x": ...`
		return msg
	}
	return e.key + ": " + msg
}
func (e *fieldError) Unwrap() error { return e.err }

func entryError(rule, where string, entry any, err error) *EntryError {
	ee := &EntryError{Rule: rule, Where: where, Entry: entry, Err: err}
	var fe *fieldError
	if obj, ok := entry.(map[string]any); ok && errors.As(err, &fe) {
		ee.Value, _ = obj[fe.key].(string)
	}
	return ee
}

// decodeEgress converts one egress entry. It returns either a network rule
// or, for {unix: PATH}, the socket path.
func decodeEgress(v any) (EgressRule, string, error) {
	obj, ok := v.(map[string]any)
	if !ok {
		return EgressRule{}, "", fmt.Errorf("want an object {protocol, cidr, ports}, {protocol, host, ports} or {unix}, got %s", describe(v))
	}
	if _, ok := obj["host"]; ok {
		return decodeHost(obj)
	}
	if u, ok := obj["unix"]; ok {
		if err := onlyKeys(obj, "unix"); err != nil {
			return EgressRule{}, "", fmt.Errorf("%w; a unix entry has only the key unix", err)
		}
		s, ok := u.(string)
		if !ok {
			return EgressRule{}, "", fmt.Errorf("unix: want a socket path string, got %s", describe(u))
		}
		p, err := checkUnix(s)
		if err != nil {
			return EgressRule{}, "", &fieldError{"unix", err}
		}
		return EgressRule{}, p, nil
	}
	if err := onlyKeys(obj, "protocol", "cidr", "ports"); err != nil {
		return EgressRule{}, "", fmt.Errorf("%w (want protocol, cidr, ports; protocol, host, ports; or unix)", err)
	}
	var r EgressRule
	var err error
	if r.Protocol, err = decodeProtocol(obj); err != nil {
		return EgressRule{}, "", err
	}
	cidr, ok := obj["cidr"].(string)
	if !ok {
		return EgressRule{}, "", fmt.Errorf("cidr: want an address or CIDR string such as \"192.0.2.0/24\" or \"2001:db8::/32\", got %s", describe(obj["cidr"]))
	}
	if r.Prefix, err = parseAddrOrPrefix(cidr, formCIDR); err != nil {
		if looksLikeName(cidr) && !strings.Contains(cidr, ":") {
			err = fmt.Errorf("%w; allow a name with {\"host\": %q}", err, cidr)
		}
		return EgressRule{}, "", &fieldError{"cidr", err}
	}
	if r.Ports, err = decodeEgressPorts(obj, r.Protocol); err != nil {
		return EgressRule{}, "", err
	}
	return r, "", nil
}

// decodeHost converts an egress entry {protocol, host, ports}: a name, or
// a wildcard over the names below a suffix, as ParseHostPattern takes it.
func decodeHost(obj map[string]any) (EgressRule, string, error) {
	if _, ok := obj["cidr"]; ok {
		return EgressRule{}, "", errors.New("host and cidr together: an entry names a host or an address prefix, not both; write two entries")
	}
	if err := onlyKeys(obj, "protocol", "host", "ports"); err != nil {
		return EgressRule{}, "", fmt.Errorf("%w (a host entry has protocol, host, ports)", err)
	}
	var r EgressRule
	var err error
	if r.Protocol, err = decodeProtocol(obj); err != nil {
		return EgressRule{}, "", err
	}
	host, ok := obj["host"].(string)
	if !ok {
		return EgressRule{}, "", fmt.Errorf("host: want a name string such as \"api.example.com\" or \"*.example.com\", got %s", describe(obj["host"]))
	}
	if _, err := netip.ParsePrefix(host); err == nil || isAddr(host) {
		return EgressRule{}, "", &fieldError{"host", fmt.Errorf("%q is an address, not a name; use cidr: {\"cidr\": %q}", host, host)}
	}
	if r.Host, err = ParseHostPattern(host); err != nil {
		return EgressRule{}, "", &fieldError{"host", err}
	}
	if r.Ports, err = decodeEgressPorts(obj, r.Protocol); err != nil {
		return EgressRule{}, "", err
	}
	return r, "", nil
}

func isAddr(s string) bool {
	_, err := netip.ParseAddr(s)
	return err == nil
}

// decodeProtocol reads the protocol of an egress entry.
func decodeProtocol(obj map[string]any) (Protocol, error) {
	proto, ok := obj["protocol"].(string)
	if !ok {
		return 0, fmt.Errorf("protocol: want one of \"tcp\", \"udp\", \"icmp\", \"any\", got %s", describe(obj["protocol"]))
	}
	p, err := parseProtocol(proto)
	if err != nil {
		return 0, fmt.Errorf("protocol: %w", err)
	}
	return p, nil
}

// decodeEgressPorts reads the optional ports of an egress entry; none
// means every port.
func decodeEgressPorts(obj map[string]any, proto Protocol) ([]PortRange, error) {
	ports, hasPorts := obj["ports"]
	if !hasPorts {
		return nil, nil
	}
	if proto == ProtoICMP {
		return nil, errors.New("ports: icmp has no ports")
	}
	return decodePorts(ports, "leave ports out to allow every port")
}

// decodePorts converts a non-empty list of port numbers and "N-M" strings.
// ifEmpty says what to write instead of an empty list.
func decodePorts(v any, ifEmpty string) ([]PortRange, error) {
	list, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("ports: want an array of port numbers and \"N-M\" strings, got %s", describe(v))
	}
	if len(list) == 0 {
		// An empty list could mean "no ports" or "every port"; neither
		// reading is safe to guess.
		return nil, fmt.Errorf("ports: empty list; %s", ifEmpty)
	}
	out := make([]PortRange, 0, len(list))
	for _, p := range list {
		var pr PortRange
		switch p := p.(type) {
		case json.Number:
			n, err := parsePort(p.String())
			if err != nil {
				return nil, fmt.Errorf("ports: %w", err)
			}
			pr = PortRange{n, n}
		case string:
			var err error
			if pr, err = parsePortRange(p); err != nil {
				return nil, fmt.Errorf("ports: %w", err)
			}
		default:
			return nil, fmt.Errorf("ports: want a port number or \"N-M\" string, got %s", describe(p))
		}
		out = append(out, pr)
	}
	return out, nil
}

// decodeListen converts one listen entry {protocol, ports}; both are
// required, since a listen rule for every port is rarely meant.
func decodeListen(v any) (ListenRule, error) {
	obj, ok := v.(map[string]any)
	if !ok {
		return ListenRule{}, fmt.Errorf("want an object {protocol, ports}, got %s", describe(v))
	}
	if err := onlyKeys(obj, "protocol", "ports"); err != nil {
		return ListenRule{}, fmt.Errorf("%w (want protocol, ports)", err)
	}
	proto, ok := obj["protocol"].(string)
	if !ok {
		return ListenRule{}, fmt.Errorf("protocol: want one of \"tcp\", \"udp\", \"any\", got %s", describe(obj["protocol"]))
	}
	var r ListenRule
	var err error
	if r.Protocol, err = parseListenProtocol(proto); err != nil {
		return ListenRule{}, fmt.Errorf("protocol: %w", err)
	}
	ports, ok := obj["ports"]
	if !ok {
		return ListenRule{}, errors.New("ports: required; list the ports, e.g. [8080] or [\"8000-8100\"]")
	}
	if r.Ports, err = decodePorts(ports, "list the ports to listen on, e.g. [8080]"); err != nil {
		return ListenRule{}, err
	}
	return r, nil
}

// decodeExec converts one exec entry.
func decodeExec(v any) (ExecRule, error) {
	obj, ok := v.(map[string]any)
	if !ok {
		return ExecRule{}, fmt.Errorf("want an object {path} or {dir}, got %s", describe(v))
	}
	if len(obj) != 1 {
		return ExecRule{}, fmt.Errorf("want exactly one of the keys path, dir, script, sha256; got %s", strings.Join(sortedKeys(obj), ", "))
	}
	k := sortedKeys(obj)[0]
	val := obj[k]
	s, isString := val.(string)
	switch k {
	case "sha256":
		return ExecRule{}, errSHA256Unsupported
	case "path", "dir", "script":
		if !isString {
			return ExecRule{}, fmt.Errorf("%s: want an absolute path string, got %s", k, describe(val))
		}
	default:
		return ExecRule{}, fmt.Errorf("unknown key %q (want path, dir, script or sha256)", k)
	}
	if k != "dir" && strings.HasSuffix(s, "/") {
		return ExecRule{}, fmt.Errorf("path %q ends in /; write {dir: %q} to allow the programs below a directory", s, s)
	}
	if k == "dir" && !strings.HasSuffix(s, "/") {
		s += "/" // checkExec reads the trailing slash as "directory"
	}
	r, err := checkExec(s)
	if err != nil {
		return ExecRule{}, &fieldError{k, err}
	}
	r.ScriptOnly = k == "script" // a file run only as a #! script
	return r, nil
}

// decodeTTL reads a TTL given as a whole number of seconds or as a duration
// string ("90m", "2h").
func decodeTTL(v any) (time.Duration, error) {
	var d time.Duration
	switch v := v.(type) {
	case json.Number:
		n, err := v.Int64()
		if err != nil || n <= 0 || n > int64(maxTTLSeconds) {
			return 0, fmt.Errorf("want a whole number of seconds from 1 to %d, or a duration string such as \"45m\"", maxTTLSeconds)
		}
		d = time.Duration(n) * time.Second
	case string:
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			return 0, fmt.Errorf("want a duration string such as \"45m\" or a number of seconds: %w", err)
		}
		if d <= 0 {
			return 0, errors.New("must be positive; leave ttl out for no maximum")
		}
	default:
		return 0, fmt.Errorf("want a number of seconds or a duration string, got %s", describe(v))
	}
	return d, nil
}

// maxTTLSeconds keeps a TTL in seconds within time.Duration.
const maxTTLSeconds = int64(1<<63-1) / int64(time.Second)

// decodeDeny converts the value of data.bridle.deny into its messages.
func DecodeDeny(v any) ([]string, error) {
	items, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("data.bridle.deny: want a set of message strings, got %s", describe(v))
	}
	msgs := make([]string, 0, len(items))
	for _, item := range items {
		s, ok := item.(string)
		if !ok {
			return nil, fmt.Errorf("data.bridle.deny: want message strings, got %s", compactJSON(item))
		}
		if s == "" {
			s = "(a deny rule gave an empty message)"
		}
		msgs = append(msgs, s)
	}
	return msgs, nil
}

func onlyKeys(obj map[string]any, allowed ...string) error {
	for _, k := range sortedKeys(obj) {
		if !slices.Contains(allowed, k) {
			return fmt.Errorf("unknown key %q", k)
		}
	}
	return nil
}

func sortedKeys(obj map[string]any) []string {
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// describe names the JSON type of v for error messages.
func describe(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case json.Number:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

// compactJSON renders v for an error message, so that the user can find the
// entry in the policy's output.
func compactJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}
