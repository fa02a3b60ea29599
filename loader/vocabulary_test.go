package loader

import (
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/bridle-sh/bridle/bpf"
)

// Every value of the C enums, as compiled into the net object, has the word
// bpf's tables give it, and every word a table holds names a value there:
// an enum value added, removed or renumbered in bridle.h fails here until
// the Go side follows.
func TestVocabularyMatchesCEnums(t *testing.T) {
	spec, err := loadNet()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		enum  string
		name  func(uint8) string
		words map[string]string // C name -> word
	}{
		{"bridle_verdict", func(v uint8) string { return string(bpf.VerdictOf(v)) }, map[string]string{
			"BRIDLE_VERDICT_ALLOW":      string(bpf.VerdictAllow),
			"BRIDLE_VERDICT_DENY":       string(bpf.VerdictDeny),
			"BRIDLE_VERDICT_WOULD_DENY": string(bpf.VerdictWouldDeny),
		}},
		{"bridle_action", func(v uint8) string { return string(bpf.ActionOf(v)) }, map[string]string{
			"BRIDLE_ACTION_CONNECT":    string(bpf.ActionConnect),
			"BRIDLE_ACTION_SENDMSG":    string(bpf.ActionSendmsg),
			"BRIDLE_ACTION_EXEC":       string(bpf.ActionExec),
			"BRIDLE_ACTION_SOCKET":     string(bpf.ActionSocket),
			"BRIDLE_ACTION_BIND":       string(bpf.ActionBind),
			"BRIDLE_ACTION_ACCEPT":     string(bpf.ActionAccept),
			"BRIDLE_ACTION_SETSOCKOPT": string(bpf.ActionSetsockopt),
			"BRIDLE_ACTION_NAMESPACE":  string(bpf.ActionNamespace),
		}},
		{"bridle_proto", func(v uint8) string { return string(bpf.ProtocolOf(v)) }, map[string]string{
			"BRIDLE_PROTO_TCP":    string(bpf.ProtocolTCP),
			"BRIDLE_PROTO_UDP":    string(bpf.ProtocolUDP),
			"BRIDLE_PROTO_ICMP":   string(bpf.ProtocolICMP),
			"BRIDLE_PROTO_UNIX":   string(bpf.ProtocolUnix),
			"BRIDLE_PROTO_RAW":    string(bpf.ProtocolRaw),
			"BRIDLE_PROTO_PACKET": string(bpf.ProtocolPacket),
			"BRIDLE_PROTO_OTHER":  string(bpf.ProtocolOther),
		}},
		{"bridle_reason", func(v uint8) string { return string(bpf.ReasonOf(v)) }, map[string]string{
			"BRIDLE_REASON_RULE":         string(bpf.ReasonRule),
			"BRIDLE_REASON_NO_RULE":      string(bpf.ReasonNoRule),
			"BRIDLE_REASON_PORT":         string(bpf.ReasonPort),
			"BRIDLE_REASON_NO_TASK":      string(bpf.ReasonNoTask),
			"BRIDLE_REASON_TASK_EXPIRED": string(bpf.ReasonTaskExpired),
			"BRIDLE_REASON_SOCKET_TYPE":  string(bpf.ReasonSocketType),
			"BRIDLE_REASON_PROTOCOL":     string(bpf.ReasonProtocol),
			"BRIDLE_REASON_SOCKOPT":      string(bpf.ReasonSockopt),
			"BRIDLE_REASON_EXT_HEADER":   string(bpf.ReasonExtHeader),
			"BRIDLE_REASON_SCRIPT_ONLY":  string(bpf.ReasonScriptOnly),
			"BRIDLE_REASON_FAMILY":       string(bpf.ReasonFamily),
			"BRIDLE_REASON_NAMESPACE":    string(bpf.ReasonNamespace),
			"BRIDLE_REASON_GRANT":        string(bpf.ReasonGrant),
		}},
		{"bridle_enforcement", func(v uint8) string { return string(bpf.EnforcementOf(v)) }, map[string]string{
			"BRIDLE_ENFORCEMENT_CGROUP": string(bpf.EnforcementCgroup),
			"BRIDLE_ENFORCEMENT_LSM":    string(bpf.EnforcementLSM),
			"BRIDLE_ENFORCEMENT_KILL":   string(bpf.EnforcementKill),
		}},
	} {
		t.Run(c.enum, func(t *testing.T) {
			var enum *btf.Enum
			if err := spec.Types.TypeByName(c.enum, &enum); err != nil {
				t.Fatalf("enum %s in the net object: %v", c.enum, err)
			}
			seen := map[string]bool{}
			for _, v := range enum.Values {
				want, ok := c.words[v.Name]
				if !ok {
					t.Errorf("%s = %d has no word in package bpf", v.Name, v.Value)
					continue
				}
				seen[v.Name] = true
				if v.Value > 255 {
					t.Errorf("%s = %d does not fit the event's byte", v.Name, v.Value)
					continue
				}
				if got := c.name(uint8(v.Value)); got != want {
					t.Errorf("%s = %d: bpf names the value %q, want %q", v.Name, v.Value, got, want)
				}
			}
			for name := range c.words {
				if !seen[name] {
					t.Errorf("%s: no such value in enum %s", name, c.enum)
				}
			}
		})
	}
	// Values outside the enums stay visible as numbers.
	if got := bpf.VerdictOf(200); got != "unknown(200)" {
		t.Errorf("VerdictOf(200) = %q", got)
	}
	if got := bpf.ProtocolOf(0); got != bpf.ProtocolNone {
		t.Errorf("ProtocolOf(0) = %q, want none", got)
	}
}
