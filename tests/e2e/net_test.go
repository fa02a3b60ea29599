package e2e

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
)

func TestTCP(t *testing.T) {
	p4 := tcpListener(t, "tcp4", "127.0.0.1:0")
	p6 := tcpListener(t, "tcp6", "[::1]:0")
	other4 := tcpListener(t, "tcp4", "127.0.0.1:0")
	other6 := tcpListener(t, "tcp6", "[::1]:0")
	allow := []string{"--allow-connect", fmt.Sprintf("tcp:127.0.0.1:%d", p4), "--allow-connect", fmt.Sprintf("tcp:[::1]:%d", p6)}

	t.Run("ipv4 allowed", func(t *testing.T) {
		wantAllowed(t, probe(t, allow, "tcp", fmt.Sprintf("127.0.0.1:%d", p4)))
	})
	t.Run("ipv4 refused", func(t *testing.T) {
		rec := wantRefused(t, probe(t, allow, "tcp", fmt.Sprintf("127.0.0.1:%d", other4)), "connect", "tcp")
		if rec.Address != "127.0.0.1" || int(rec.Port) != other4 || rec.Reason != "port not allowed" {
			t.Fatalf("record %+v", rec)
		}
	})
	t.Run("ipv6 allowed", func(t *testing.T) {
		wantAllowed(t, probe(t, allow, "tcp", fmt.Sprintf("[::1]:%d", p6)))
	})
	t.Run("ipv6 refused", func(t *testing.T) {
		rec := wantRefused(t, probe(t, allow, "tcp", fmt.Sprintf("[::1]:%d", other6)), "connect", "tcp")
		if rec.Address != "::1" || int(rec.Port) != other6 {
			t.Fatalf("record %+v", rec)
		}
	})
	t.Run("loopback refused by default", func(t *testing.T) {
		wantRefused(t, probe(t, nil, "tcp", fmt.Sprintf("127.0.0.1:%d", p4)), "connect", "tcp")
	})
	t.Run("any protocol rule", func(t *testing.T) {
		wantAllowed(t, probe(t, []string{"--allow-connect", "any:127.0.0.0/8"}, "tcp", fmt.Sprintf("127.0.0.1:%d", p4)))
	})
}

// An IPv4-mapped IPv6 address is the IPv4 host: the IPv4 rules judge it,
// and an IPv6 rule cannot open a way to an IPv4 host.
func TestIPv4MappedIPv6(t *testing.T) {
	p := tcpListener(t, "tcp", "127.0.0.1:0") // dual-stack socket
	mapped := fmt.Sprintf("[::ffff:127.0.0.1]:%d", p)
	t.Run("allowed by the ipv4 rule", func(t *testing.T) {
		wantAllowed(t, probe(t, []string{"--allow-connect", fmt.Sprintf("tcp:127.0.0.1:%d", p)}, "tcp", mapped))
	})
	t.Run("refused without an ipv4 rule", func(t *testing.T) {
		rec := wantRefused(t, probe(t, []string{"--allow-connect", "tcp:[::]/0"}, "tcp", mapped), "connect", "tcp")
		if rec.Address != "127.0.0.1" {
			t.Fatalf("mapped address recorded as %q, want the IPv4 host", rec.Address)
		}
	})
	t.Run("udp refused", func(t *testing.T) {
		u := udpListener(t, "udp4", "127.0.0.1:0")
		wantRefused(t, probe(t, []string{"--allow-connect", "udp:[::]/0"}, "udp-sendto", fmt.Sprintf("[::ffff:127.0.0.1]:%d", u)), "sendmsg", "udp")
	})
}

func TestUDP(t *testing.T) {
	u4 := udpListener(t, "udp4", "127.0.0.1:0")
	u6 := udpListener(t, "udp6", "[::1]:0")
	other := udpListener(t, "udp4", "127.0.0.1:0")
	allow := []string{"--allow-connect", fmt.Sprintf("udp:127.0.0.1:%d", u4), "--allow-connect", fmt.Sprintf("udp:[::1]:%d", u6)}
	a4, a6, o := fmt.Sprintf("127.0.0.1:%d", u4), fmt.Sprintf("[::1]:%d", u6), fmt.Sprintf("127.0.0.1:%d", other)

	t.Run("connected allowed", func(t *testing.T) { wantAllowed(t, probe(t, allow, "udp-connect", a4)) })
	t.Run("connected refused", func(t *testing.T) { wantRefused(t, probe(t, allow, "udp-connect", o), "connect", "udp") })
	t.Run("sendto allowed", func(t *testing.T) { wantAllowed(t, probe(t, allow, "udp-sendto", a4)) })
	t.Run("sendto ipv6 allowed", func(t *testing.T) { wantAllowed(t, probe(t, allow, "udp-sendto", a6)) })
	t.Run("sendto refused", func(t *testing.T) {
		rec := wantRefused(t, probe(t, allow, "udp-sendto", o), "sendmsg", "udp")
		if int(rec.Port) != other {
			t.Fatalf("record %+v", rec)
		}
	})
	t.Run("sendto ipv6 refused", func(t *testing.T) {
		wantRefused(t, probe(t, allow, "udp-sendto", fmt.Sprintf("[::1]:%d", other)), "sendmsg", "udp")
	})
	t.Run("sendmmsg all allowed", func(t *testing.T) {
		r := probe(t, allow, "udp-sendmmsg", a4, a4)
		wantAllowed(t, r)
		if !strings.Contains(r.probeLine(), "sent=2") {
			t.Fatalf("line %q", r.probeLine())
		}
	})
	t.Run("sendmmsg second refused", func(t *testing.T) {
		r := probe(t, allow, "udp-sendmmsg", a4, o)
		wantRefused(t, r, "sendmsg", "udp")
		if !strings.Contains(r.probeLine(), "sent=1") {
			t.Fatalf("the allowed first datagram should have gone: %q", r.probeLine())
		}
	})
	t.Run("tcp rule does not allow udp", func(t *testing.T) {
		wantRefused(t, probe(t, []string{"--allow-connect", fmt.Sprintf("tcp:127.0.0.1:%d", other)}, "udp-sendto", o), "sendmsg", "udp")
	})
}

func TestTCPFastOpen(t *testing.T) {
	p := tcpListener(t, "tcp4", "127.0.0.1:0")
	other := tcpListener(t, "tcp4", "127.0.0.1:0")
	allow := []string{"--allow-connect", fmt.Sprintf("tcp:127.0.0.1:%d", p)}
	t.Run("allowed", func(t *testing.T) { wantAllowed(t, probe(t, allow, "tcp-fastopen", fmt.Sprintf("127.0.0.1:%d", p))) })
	t.Run("refused", func(t *testing.T) {
		wantRefused(t, probe(t, allow, "tcp-fastopen", fmt.Sprintf("127.0.0.1:%d", other)), "connect", "tcp")
	})
}

func TestIOURingConnect(t *testing.T) {
	p := tcpListener(t, "tcp4", "127.0.0.1:0")
	p6 := tcpListener(t, "tcp6", "[::1]:0")
	allow := []string{"--allow-connect", fmt.Sprintf("tcp:127.0.0.1:%d", p)}
	t.Run("allowed", func(t *testing.T) { wantAllowed(t, probe(t, allow, "iouring-connect", fmt.Sprintf("127.0.0.1:%d", p))) })
	t.Run("refused", func(t *testing.T) {
		wantRefused(t, probe(t, allow, "iouring-connect", fmt.Sprintf("[::1]:%d", p6)), "connect", "tcp")
	})
}

func TestICMP(t *testing.T) {
	allow := []string{"--allow-connect", "icmp:127.0.0.1", "--allow-connect", "icmp:[::1]"}
	t.Run("ping allowed", func(t *testing.T) { wantAllowed(t, probe(t, allow, "ping", "127.0.0.1")) })
	t.Run("ping ipv6 allowed", func(t *testing.T) { wantAllowed(t, probe(t, allow, "ping", "::1")) })
	// Kernels before 6.0 run no connect hook for ping sockets; there the
	// packet-level check refuses the first echo request instead.
	t.Run("ping refused", func(t *testing.T) {
		wantPingRefused(t, probe(t, nil, "ping", "127.0.0.1"))
	})
	t.Run("ping ipv6 refused", func(t *testing.T) {
		wantPingRefused(t, probe(t, nil, "ping", "::1"))
	})
	t.Run("unconnected ping refused", func(t *testing.T) {
		r := probe(t, []string{"--allow-connect", "icmp:127.0.0.2"}, "ping-sendto", "127.0.0.1")
		wantRefused(t, r, "sendmsg", "icmp")
	})
	t.Run("unconnected ping allowed", func(t *testing.T) {
		wantAllowed(t, probe(t, allow, "ping-sendto", "127.0.0.1"))
	})
	t.Run("tcp rule does not allow icmp", func(t *testing.T) {
		wantPingRefused(t, probe(t, []string{"--allow-connect", "tcp:127.0.0.1"}, "ping", "127.0.0.1"))
	})
}

// wantPingRefused accepts the refusal at connect (kernel 6.0+) or at the
// first echo request (older kernels), and wants it recorded. On older
// kernels an IPv6 echo dropped by the packet check is not reported to the
// sender as an error: the request never leaves, and no reply comes.
func wantPingRefused(t testing.TB, r result) {
	t.Helper()
	line := r.probeLine()
	switch {
	case r.status == 2 && strings.HasPrefix(line, "EPERM connect"):
		wantRecord(t, r, "deny", "connect", "icmp")
	case r.status == 2 && strings.HasPrefix(line, "EPERM send"):
		wantRecord(t, r, "deny", "sendmsg", "icmp")
	case r.status == 3 && line == "error ETIMEDOUT":
		wantRecord(t, r, "deny", "sendmsg", "icmp")
	default:
		t.Fatalf("want the echo refused at connect or send, got status %d line %q", r.status, line)
	}
}

func TestUnixSockets(t *testing.T) {
	if !features.UnixHooks {
		t.Skipf("kernel %s has no cgroup unix socket hooks (6.7+): %s", features.Kernel, features.UnixReason)
	}
	dir := t.TempDir()
	allowedPath := filepath.Join(dir, "allowed.sock")
	otherPath := filepath.Join(dir, "other.sock")
	dgramPath := filepath.Join(dir, "dgram.sock")
	for _, p := range []string{allowedPath, otherPath} {
		ln, err := net.Listen("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go acceptAndClose(ln)
	}
	pc, err := net.ListenPacket("unixgram", dgramPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	abstract := fmt.Sprintf("@bridle-e2e-%d", p0())
	var aln net.Listener
	inNetns(t, func() { // abstract names live in the network namespace
		aln, err = net.Listen("unix", abstract)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { aln.Close() })
	go acceptAndClose(aln)
	// The workload user must reach the socket files.
	chmodAll(t, dir)

	allow := []string{"--allow-unix", allowedPath, "--allow-unix", dgramPath, "--allow-unix", abstract}
	t.Run("path allowed", func(t *testing.T) { wantAllowed(t, probe(t, allow, "unix", allowedPath)) })
	t.Run("path refused", func(t *testing.T) {
		rec := wantRefused(t, probe(t, allow, "unix", otherPath), "connect", "unix")
		if rec.Path != otherPath {
			t.Fatalf("record path %q, want %q", rec.Path, otherPath)
		}
	})
	t.Run("symlink to refused path refused", func(t *testing.T) {
		link := filepath.Join(dir, "link.sock")
		if err := symlink(otherPath, link); err != nil {
			t.Fatal(err)
		}
		wantRefused(t, probe(t, allow, "unix", link), "connect", "unix")
	})
	t.Run("abstract allowed", func(t *testing.T) { wantAllowed(t, probe(t, allow, "unix", abstract)) })
	t.Run("abstract refused", func(t *testing.T) {
		rec := wantRefused(t, probe(t, allow, "unix", abstract+"-other"), "connect", "unix")
		if rec.Path != abstract+"-other" {
			t.Fatalf("record path %q", rec.Path)
		}
	})
	t.Run("datagram allowed", func(t *testing.T) { wantAllowed(t, probe(t, allow, "unix-dgram", dgramPath)) })
	t.Run("datagram refused", func(t *testing.T) {
		wantRefused(t, probe(t, []string{"--allow-unix", allowedPath}, "unix-dgram", dgramPath), "sendmsg", "unix")
	})
}

// Raw and packet sockets need CAP_NET_RAW, which a workload never has; the
// kernel refuses them before Bridle's hook could. The loader's tests prove
// the hook itself refuses them for a privileged process.
func TestRawSocketsRefused(t *testing.T) {
	for _, kind := range []string{"raw4", "raw6", "packet"} {
		t.Run(kind, func(t *testing.T) {
			for _, user := range []string{workloadUser, "root"} {
				// A root workload owns the root-owned probe: accepted
				// explicitly (see TestEscapeWritableExecRule).
				r := bridleRun(t, []string{"--user", user, "--allow-exec", probeBin, "--allow-writable-exec"}, probeBin, kind)
				if r.status != 2 || !strings.HasPrefix(r.probeLine(), "EPERM socket") {
					t.Fatalf("as %s: want EPERM socket, got status %d line %q", user, r.status, r.probeLine())
				}
			}
		})
	}
}
