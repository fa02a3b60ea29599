package sockabort

import (
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
)

// A grant's end resets only what was opened under it: the workload holds
// connections to the granted peer and to others; each call with a peer
// filter aborts those to that address, on those ports and transports, and
// leaves every other connection open. Both methods.
func TestDestroyToGrantedPeer(t *testing.T) {
	for _, method := range []DestroyMethod{DestroyIter, DestroyNetlink} {
		t.Run(string(method), func(t *testing.T) {
			requireRoot(t)
			d := destroyerFor(t, method)
			cg, id := testCgroup(t)
			probe := probeBinary(t)
			self, _ := os.Executable()
			helper := []string{"BRIDLE_DESTROY_HELPER=1"}

			granted := newTCPServer(t, "tcp4", "127.0.0.1:0")
			otherPort := newTCPServer(t, "tcp4", "127.0.0.1:0")
			v6 := newTCPServer(t, "tcp6", "[::1]:0")
			udp, err := net.ListenPacket("udp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer udp.Close()
			grantedAP := netip.MustParseAddrPort(granted.addr())
			udpAP := netip.MustParseAddrPort(udp.LocalAddr().String())

			toGranted := startIn(t, cg, "tcp4 to the granted peer", nil, probe, "hold-tcp", granted.addr(), "30")
			toOtherPort := startIn(t, cg, "tcp4 to another port", nil, probe, "hold-tcp", otherPort.addr(), "30")
			toV6 := startIn(t, cg, "tcp6", nil, probe, "hold-tcp", v6.addr(), "30")
			udpConn := startIn(t, cg, "udp4 connected", helper, self, "udp-connected", udpAP.String())

			loopback := netip.MustParseAddr("127.0.0.1")
			port := func(p uint16) []PortRange { return []PortRange{{First: p, Last: p}} }

			// TCP to the granted address and port only.
			st, err := d.Destroy(DestroyOptions{Peer: &Peer{TCP: true, Addr: loopback, Ports: port(grantedAP.Port())}}, id)
			if err != nil {
				t.Fatal(err)
			}
			if st.TCP != 1 || st.UDP != 0 || st.Failed != 0 {
				t.Errorf("tcp to %s: stats %+v, want 1 TCP", grantedAP, st)
			}
			if got := toGranted.next(t, 2*time.Second); got != "closed ECONNABORTED" {
				t.Errorf("%s: %q, want closed ECONNABORTED", toGranted.name, got)
			}
			for _, h := range []*holder{toOtherPort, toV6, udpConn} {
				if ok, l := h.quiet(200 * time.Millisecond); !ok {
					t.Errorf("%s ended: %q", h.name, l)
				}
			}

			// UDP to the same address: the connected socket, not the
			// TCP connection to another port of it.
			st, err = d.Destroy(DestroyOptions{Peer: &Peer{UDP: true, Addr: loopback, Ports: port(udpAP.Port())}}, id)
			if err != nil {
				t.Fatal(err)
			}
			if st.TCP != 0 || st.UDP != 1 {
				t.Errorf("udp to %s: stats %+v, want 1 UDP", udpAP, st)
			}
			if got := udpConn.next(t, 2*time.Second); got != "recv ECONNABORTED" {
				t.Errorf("%s: %q, want recv ECONNABORTED", udpConn.name, got)
			}

			// An IPv6 peer on any port and transport.
			st, err = d.Destroy(DestroyOptions{Peer: &Peer{Addr: netip.IPv6Loopback()}}, id)
			if err != nil {
				t.Fatal(err)
			}
			if st.TCP != 1 || st.UDP != 0 {
				t.Errorf("any to ::1: stats %+v, want 1 TCP", st)
			}
			if got := toV6.next(t, 2*time.Second); got != "closed ECONNABORTED" {
				t.Errorf("%s: %q, want closed ECONNABORTED", toV6.name, got)
			}
			if ok, l := toOtherPort.quiet(200 * time.Millisecond); !ok {
				t.Errorf("%s ended: %q", toOtherPort.name, l)
			}

			if _, err := d.Destroy(DestroyOptions{Peer: &Peer{TCP: true}}, id); err == nil {
				t.Error("a peer without an address was accepted")
			}
		})
	}
}

// The iterators' filter holds BRIDLE_DST_MAX_PORTS port ranges; more take
// more passes, each with its share.
func TestPeerFiltersSplitPorts(t *testing.T) {
	var ports []PortRange
	for i := range 20 {
		ports = append(ports, PortRange{First: uint16(1000 + i), Last: uint16(1000 + i)})
	}
	fs := peerFilters(&Peer{Addr: netip.MustParseAddr("192.0.2.7"), Ports: ports})
	if len(fs) != 2 || fs[0].Nports != 16 || fs[1].Nports != 4 || fs[1].Ports[3].First != 1019 {
		t.Fatalf("filters %+v", fs)
	}
	if want := netip.MustParseAddr("::ffff:192.0.2.7").As16(); fs[0].Addr != want || fs[0].Set != 1 {
		t.Fatalf("filter address %v, want %v", fs[0].Addr, want)
	}
	if fs := peerFilters(&Peer{Addr: netip.IPv6Loopback()}); len(fs) != 1 || fs[0].Nports != 0 {
		t.Fatalf("no ports: %+v", fs)
	}
}
