package loader

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/policy"
)

// The test runs its processes as root with CAP_NET_RAW, so the kernel's
// own checks let every one of these options through (an agent that kept
// the capability could do the same): each refusal here is Bridle's. The
// setsockopt program refuses the sticky options; ancillary data never
// passes through setsockopt, and the packet check drops what it builds.
func TestSourceRoutingRefusedForPrivilegedProcess(t *testing.T) {
	e := testEnforcer(t)
	if !e.Features().SockoptHook {
		t.Fatalf("setsockopt check not loaded on kernel %s: %s", e.Features().Kernel, e.Features().SockoptReason)
	}
	cg, id := testCgroup(t)
	if err := e.AttachCgroup(cg); err != nil {
		t.Fatal(err)
	}
	probe := probeBinary(t)
	rs, err := policy.Compile(policy.Envelope{
		Egress: []policy.EgressRule{
			{Protocol: policy.ProtoUDP, Prefix: mustPrefix(t, "127.0.0.2/32")},
			{Protocol: policy.ProtoUDP, Prefix: mustPrefix(t, "::1/128")},
		},
		Exec: []policy.ExecRule{{Path: probe}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.WriteRules(1, rs); err != nil {
		t.Fatal(err)
	}
	if err := e.BindWorkload(id, 1, WorkloadMode{}); err != nil {
		t.Fatal(err)
	}
	rd, err := e.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()

	cases := []struct {
		args   []string
		line   string     // the probe's refusal
		action bpf.Action // the event's action
		extra  string     // and its path or address
	}{
		{[]string{"srr4", "127.0.0.2:53", "127.0.0.3", "m"}, "EPERM setsockopt", "setsockopt", "IP_OPTIONS"},
		{[]string{"rthdr6", "[::1]:53", "::1", "m"}, "EPERM setsockopt", "setsockopt", "IPV6_RTHDR"},
		{[]string{"srr4-cmsg", "127.0.0.2:53", "127.0.0.3", "m"}, "EPERM sendmsg", "sendmsg", "127.0.0.3"},
		{[]string{"dstopts6-cmsg", "[::1]:53", "m"}, "EPERM sendmsg", "sendmsg", "::1"},
	}
	for _, c := range cases {
		t.Run(c.args[0], func(t *testing.T) {
			out, err := runIn(t, cg, probe, c.args...)
			if err == nil || !strings.Contains(out, c.line) {
				t.Fatalf("%v in a workload: %v %q, want %q", c.args, err, out, c.line)
			}
			ev := readUntil(t, rd, func(ev Event) bool { return ev.Action == c.action })
			got := ev.Path
			if c.action == "sendmsg" {
				got = ev.Addr.String()
			}
			if ev.Verdict != "deny" || got != c.extra || ev.Protocol != "udp" {
				t.Fatalf("event %+v, want a %s denial naming %s", ev, c.action, c.extra)
			}
			if c.action == "sendmsg" && (ev.Reason != "packet has routing or extension headers or IP options" || ev.Port != 53) {
				t.Fatalf("event %+v", ev)
			}
		})
	}
}

// Listen rules live in their slot and go with it.
func TestListenRulesClearedWithSlot(t *testing.T) {
	e := testEnforcer(t)
	rs, err := policy.Compile(policy.Envelope{Listen: []policy.ListenRule{{Protocol: policy.ProtoAny, Ports: []policy.PortRange{{First: 8080, Last: 8080}}}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, slot := range []uint32{2, 3} {
		if err := e.WriteRules(slot, rs); err != nil {
			t.Fatal(err)
		}
	}
	count := func(slot uint32) int {
		n := 0
		var k netBridleListenKey
		var v netBridlePorts
		it := e.net.BridleListen.Iterate()
		for it.Next(&k, &v) {
			if k.Slot == slot {
				n++
				if v.Count != 1 || v.Ranges[0].First != 8080 || v.Ranges[0].Last != 8080 {
					t.Fatalf("slot %d: %+v", slot, v)
				}
			}
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if count(2) != 2 {
		t.Fatalf("slot 2 has %d listen entries, want tcp and udp", count(2))
	}
	if err := e.ClearSlot(2); err != nil {
		t.Fatal(err)
	}
	if count(2) != 0 || count(3) != 2 {
		t.Fatalf("after clearing slot 2: %d entries left in it, %d in slot 3", count(2), count(3))
	}
	if err := e.ClearSlotsExcept(map[uint32]bool{}); err != nil {
		t.Fatal(err)
	}
	if count(3) != 0 {
		t.Fatal("a stale slot kept its listen entries")
	}
}

func mustPrefix(t testing.TB, s string) netip.Prefix {
	t.Helper()
	p, err := netip.ParsePrefix(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
