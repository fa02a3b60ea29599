package loader

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/policy"
)

// A grant lets the task reach its address on its ports until its expiry,
// which the kernel checks itself; an allow by it says so; a grant of
// another generation allows nothing; RevokeAddrs and ClearSlot end it.
func TestGrantedAddresses(t *testing.T) {
	e := testEnforcer(t)
	cg, id := dnsWorkload(t, e)
	if err := e.BindWorkload(id, 1, WorkloadMode{EmitAllow: true}); err != nil {
		t.Fatal(err)
	}
	port4 := acceptAll(t, "tcp4", "127.0.0.2:0")
	port6 := acceptAll(t, "tcp6", "[::1]:0")
	dst4 := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port4)
	dst6 := netip.AddrPortFrom(netip.IPv6Loopback(), port6)
	other4 := netip.AddrPortFrom(dst4.Addr(), port4+1)

	connect := func(dst netip.AddrPort, want bool) {
		t.Helper()
		out, err := runClient(t, cg, "connect", dst.String())
		if want && (err != nil || out != "ok") {
			t.Fatalf("connect %s: %v %q, want ok", dst, err, out)
		}
		if !want && (err == nil || !strings.Contains(out, "operation not permitted")) {
			t.Fatalf("connect %s: %v %q, want EPERM", dst, err, out)
		}
	}
	grants := func(expires time.Time) []GrantedAddr {
		return []GrantedAddr{
			{Protocol: policy.ProtoTCP, Addr: dst4.Addr(), Ports: []policy.PortRange{{First: port4, Last: port4}}, Expires: expires},
			{Protocol: policy.ProtoTCP, Addr: dst6.Addr(), Ports: []policy.PortRange{{First: port6, Last: port6}}, Expires: expires},
		}
	}
	grant := func(gen uint32, expires time.Time) {
		t.Helper()
		if err := e.GrantAddrs(1, gen, grants(expires)); err != nil {
			t.Fatal(err)
		}
	}
	rd, err := e.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()

	connect(dst4, false) // before the grant
	grant(1, time.Now().Add(1500*time.Millisecond))
	connect(dst4, true)
	ev := readUntil(t, rd, func(ev Event) bool {
		return ev.Action == bpf.ActionConnect && ev.Port == port4 && ev.Verdict == bpf.VerdictAllow
	})
	if ev.Reason != bpf.ReasonGrant {
		t.Fatalf("connect under a grant recorded with reason %q, want %q", ev.Reason, bpf.ReasonGrant)
	}
	connect(dst6, true)
	connect(other4, false) // a port the grant does not name
	if ev := readUntil(t, rd, func(ev Event) bool { return ev.Action == bpf.ActionConnect && ev.Port == other4.Port() }); ev.Reason != bpf.ReasonPort {
		t.Fatalf("refusal of a granted address's other port: %+v", ev)
	}

	// The kernel ends the grant at its expiry.
	time.Sleep(1600 * time.Millisecond)
	connect(dst4, false)
	connect(dst6, false)

	// A grant for another task of the slot allows nothing.
	grant(2, time.Now().Add(time.Hour))
	connect(dst4, false)
	// A grant without an expiry lasts as long as the task.
	grant(1, time.Time{})
	connect(dst4, true)

	// RevokeAddrs deletes a grant; a missing one is no error.
	gone := []GrantedAddr{{Protocol: policy.ProtoTCP, Addr: dst4.Addr()}}
	if err := e.RevokeAddrs(1, gone); err != nil {
		t.Fatal(err)
	}
	connect(dst4, false)
	connect(dst6, true)
	if err := e.RevokeAddrs(1, gone); err != nil {
		t.Fatalf("revoking what is gone: %v", err)
	}

	// Grants and learned addresses are separate: unlearning leaves the
	// grant, and a learned entry's expiry does not end it.
	if err := e.Unlearn(1, grants(time.Time{})); err != nil {
		t.Fatal(err)
	}
	connect(dst6, true)

	// ClearSlot and ClearSlotsExcept forget them.
	grant(1, time.Now().Add(time.Hour))
	if err := e.ClearSlot(1); err != nil {
		t.Fatal(err)
	}
	assertEmpty(t, e.net.BridleGrant4, e.net.BridleGrant6)
	grant(1, time.Now().Add(time.Hour))
	if err := e.ClearSlotsExcept(map[uint32]bool{2: true}); err != nil {
		t.Fatal(err)
	}
	assertEmpty(t, e.net.BridleGrant4, e.net.BridleGrant6)

	// What GrantAddrs refuses.
	now := time.Now().Add(time.Hour)
	for _, bad := range []GrantedAddr{
		{Protocol: policy.ProtoTCP, Addr: dst4.Addr(), Expires: now},                                                  // no ports
		{Protocol: policy.ProtoICMP, Addr: dst4.Addr(), Ports: []policy.PortRange{{First: 1, Last: 1}}, Expires: now}, // icmp ports
		{Protocol: policy.ProtoAny, Addr: dst4.Addr(), Ports: []policy.PortRange{{First: 1, Last: 1}}, Expires: now},  // not compiled
		{Protocol: policy.ProtoTCP, Ports: []policy.PortRange{{First: 1, Last: 1}}, Expires: now},                     // no address
	} {
		if err := e.GrantAddrs(1, 1, []GrantedAddr{bad}); err == nil {
			t.Errorf("GrantAddrs(%+v) accepted", bad)
		}
	}
	if err := e.GrantAddrs(MaxSlots, 1, grants(now)); err == nil {
		t.Error("GrantAddrs accepted a slot out of range")
	}
}

func assertEmpty(t *testing.T, ms ...*ebpf.Map) {
	t.Helper()
	for _, m := range ms {
		var k, v []byte
		if it := m.Iterate(); it.Next(&k, &v) {
			t.Fatalf("%s still holds an entry", m)
		}
	}
}

// A binary no rule allows runs while a grant for it lasts, in either exec
// mode: here kill mode, and LSM mode where the kernel runs BPF LSM (the
// kernel guests).
func TestGrantedExec(t *testing.T) {
	for _, mode := range []struct {
		name string
		opts Options
	}{{"kill", Options{ForceKillMode: true}}, {"default", Options{}}} {
		t.Run(mode.name, func(t *testing.T) {
			e := testEnforcerWith(t, mode.opts)
			t.Logf("exec mode %s", e.Features().ExecMode)
			if mode.name == "default" && e.Features().ExecMode != ExecModeLSM {
				t.Skipf("LSM mode not available here (%s); kill mode is tested above", e.Features().ExecModeReason)
			}
			testGrantedExec(t, e)
		})
	}
}

func testGrantedExec(t *testing.T, e *Enforcer) {
	cg, id := testCgroup(t)
	empty, err := policy.Compile(policy.Envelope{})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.WriteRules(1, empty); err != nil {
		t.Fatal(err)
	}
	if err := e.SetTask(1, time.Time{}, 1); err != nil {
		t.Fatal(err)
	}
	if err := e.BindWorkload(id, 1, WorkloadMode{EmitAllow: true}); err != nil {
		t.Fatal(err)
	}
	// The binary's kernel identity, as a rule for it would hold it.
	rs, err := policy.Compile(policy.Envelope{Exec: []policy.ExecRule{{Path: "/bin/true"}}})
	if err != nil || len(rs.Exec) != 1 {
		t.Fatalf("compile /bin/true: %v %+v", err, rs.Exec)
	}
	bin := rs.Exec[0]
	run := func(want bool) {
		t.Helper()
		out, err := runIn(t, cg, "/bin/true")
		if want && err != nil {
			t.Fatalf("/bin/true: %v %q, want it to run", err, out)
		}
		if !want && err == nil {
			t.Fatal("/bin/true ran, want it refused")
		}
	}
	grant := func(gen uint32, expires time.Time) {
		t.Helper()
		if err := e.GrantExec(1, gen, []GrantedExec{{Dev: bin.Dev, Ino: bin.Ino, Expires: expires}}); err != nil {
			t.Fatal(err)
		}
	}
	rd, err := e.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()

	run(false)
	grant(1, time.Now().Add(1500*time.Millisecond))
	run(true)
	ev := readUntil(t, rd, func(ev Event) bool {
		return ev.Action == bpf.ActionExec && ev.Ino == bin.Ino && ev.Verdict == bpf.VerdictAllow
	})
	if ev.Reason != bpf.ReasonGrant {
		t.Fatalf("exec under a grant recorded with reason %q, want %q", ev.Reason, bpf.ReasonGrant)
	}

	// The kernel ends it at its expiry.
	time.Sleep(1600 * time.Millisecond)
	run(false)

	// Another task's grant allows nothing; RevokeExec and ClearSlot end one.
	grant(2, time.Now().Add(time.Hour))
	run(false)
	grant(1, time.Now().Add(time.Hour))
	run(true)
	if err := e.RevokeExec(1, []GrantedExec{{Dev: bin.Dev, Ino: bin.Ino}}); err != nil {
		t.Fatal(err)
	}
	run(false)
	if err := e.RevokeExec(1, []GrantedExec{{Dev: bin.Dev, Ino: bin.Ino}}); err != nil {
		t.Fatalf("revoking what is gone: %v", err)
	}
	grant(1, time.Time{}) // as long as the task
	run(true)
	if err := e.ClearSlot(1); err != nil {
		t.Fatal(err)
	}
	assertEmpty(t, e.net.BridleExgrant)
	if err := e.GrantExec(1, 1, []GrantedExec{{Dev: bin.Dev}}); err == nil {
		t.Error("GrantExec accepted a binary without an inode")
	}
}

// AbortTo resets the connection the workload opened under a grant that
// ended, and leaves its connection to another destination open.
func TestAbortToGrantedPeer(t *testing.T) {
	e := testEnforcer(t)
	if f := e.Features().SocketDestroy; f.Method == "none" {
		t.Skipf("no way to destroy sockets here: %s", f.Reason)
	}
	cg, id := testCgroup(t)
	if err := e.AttachCgroup(cg); err != nil {
		t.Fatal(err)
	}
	probe := probeBinary(t)
	rs, err := policy.Compile(policy.Envelope{
		Egress: []policy.EgressRule{{Protocol: policy.ProtoTCP, Prefix: netip.MustParsePrefix("127.0.0.1/32")}},
		Exec:   []policy.ExecRule{{Path: probe}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.WriteRules(1, rs); err != nil {
		t.Fatal(err)
	}
	if err := e.SetTask(1, time.Time{}, 1); err != nil {
		t.Fatal(err)
	}
	if err := e.BindWorkload(id, 1, WorkloadMode{}); err != nil {
		t.Fatal(err)
	}
	granted := holdAll(t, "127.0.0.2:0")
	ruled := holdAll(t, "127.0.0.1:0")

	if out, err := runIn(t, cg, probe, "tcp", granted.String()); err == nil || !strings.Contains(out, "EPERM connect") {
		t.Fatalf("connect before the grant: %v %q", err, out)
	}
	ports := []policy.PortRange{{First: granted.Port(), Last: granted.Port()}}
	err = e.GrantAddrs(1, 1, []GrantedAddr{{Protocol: policy.ProtoTCP, Addr: granted.Addr(), Ports: ports,
		Expires: time.Now().Add(time.Second)}})
	if err != nil {
		t.Fatal(err)
	}
	underGrant := startHolder(t, cg, probe, "hold-tcp", granted.String(), "30")
	if l := <-underGrant; !strings.HasPrefix(l, "ok") {
		t.Fatalf("connect under the grant: %q", l)
	}
	underRule := startHolder(t, cg, probe, "hold-tcp", ruled.String(), "30")
	if l := <-underRule; !strings.HasPrefix(l, "ok") {
		t.Fatalf("connect under a rule: %q", l)
	}

	time.Sleep(1100 * time.Millisecond)
	if out, err := runIn(t, cg, probe, "tcp", granted.String()); err == nil || !strings.Contains(out, "EPERM connect") {
		t.Fatalf("connect after the grant ended: %v %q", err, out)
	}
	st, err := e.AbortTo(id, policy.ProtoTCP, granted.Addr(), ports)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d TCP aborted in %v", st.Method, st.TCP, st.Duration)
	if st.TCP != 1 || st.UDP != 0 || st.Failed != 0 {
		t.Errorf("stats %+v, want 1 TCP", st)
	}
	select {
	case l := <-underGrant:
		if l != "closed ECONNABORTED" {
			t.Errorf("connection opened under the grant: %q, want closed ECONNABORTED", l)
		}
	case <-time.After(2 * time.Second):
		t.Error("the connection opened under the grant stayed open")
	}
	select {
	case l := <-underRule:
		t.Errorf("the connection allowed by a rule ended: %q", l)
	case <-time.After(300 * time.Millisecond):
	}

	// ICMP holds no connection; other protocols are refused.
	if _, err := e.AbortTo(id, policy.ProtoICMP, granted.Addr(), nil); err != nil {
		t.Errorf("AbortTo icmp: %v", err)
	}
}

// holdAll listens on addr and keeps every connection it accepts open until
// the test ends, so a client's connection ends only when something else
// ends it.
func holdAll(t *testing.T, addr string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}
