package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A workload that can listen opens an inbound channel: whoever connects to
// it talks to the agent through a connection no egress rule judged, and a
// port it holds is a port the service that owns it cannot have.

// requireListenHooks skips, with the reason, on a kernel that took no bind
// and inbound connection programs (bridle status says so too).
func requireListenHooks(t *testing.T) {
	t.Helper()
	if nh := netHooks(t); !nh.ListenHooks {
		t.Skipf("kernel %s has no bind/listen control: %s", features.Kernel, nh.ListenReason)
	}
}

// freePort returns a port nothing in the test namespace listens on now.
func freePort(t testing.TB, network string) int {
	t.Helper()
	var port int
	inNetns(t, func() {
		switch network {
		case "udp4", "udp6":
			pc, err := net.ListenPacket(network, map[string]string{"udp4": "127.0.0.1:0", "udp6": "[::1]:0"}[network])
			if err != nil {
				t.Fatal(err)
			}
			port = pc.LocalAddr().(*net.UDPAddr).Port
			pc.Close()
		default:
			ln, err := net.Listen(network, map[string]string{"tcp4": "127.0.0.1:0", "tcp6": "[::1]:0"}[network])
			if err != nil {
				t.Fatal(err)
			}
			port = ln.Addr().(*net.TCPAddr).Port
			ln.Close()
		}
	})
	return port
}

// listening is a `probe tcp-listen` running in a workload, and what a
// client outside the workload got when it connected.
type listening struct {
	r         result
	port      int  // where the workload listened; 0 if it never did
	connected bool // the outside client's connection was accepted
}

// listenAndConnect runs `probe tcp-listen ADDR` in a workload with flags
// and, once it listens, connects to it from the test, outside the
// workload. A listener that never comes up (its bind was refused) is no
// error: the result says so.
func listenAndConnect(t *testing.T, flags []string, addr string) listening {
	t.Helper()
	dir := t.TempDir()
	chmodAll(t, dir)
	if err := os.Chmod(dir, 0o777); err != nil { // the workload user writes the port file
		t.Fatal(err)
	}
	portFile := filepath.Join(dir, "port")
	done := make(chan result, 1)
	go func() { done <- probe(t, flags, "tcp-listen", addr, portFile, "4") }()

	var l listening
	// Generous: a run starts in well under a second here, but takes
	// seconds in an emulated kernel guest on a busy machine.
	deadline := time.After(60 * time.Second)
	for l.port == 0 {
		select {
		case r := <-done:
			l.r = r
			return l // ended without listening
		case <-deadline:
			t.Fatal("the workload neither listened nor ended")
		case <-time.After(20 * time.Millisecond):
		}
		if b, err := os.ReadFile(portFile); err == nil {
			l.port, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
	}
	host := "127.0.0.1"
	if strings.HasPrefix(addr, "[") {
		host = "::1"
	}
	inNetns(t, func() {
		// A refused SYN is dropped, not answered: the dial times out.
		c, err := net.DialTimeout("tcp", net.JoinHostPort(host, strconv.Itoa(l.port)), 1500*time.Millisecond)
		if err == nil {
			l.connected = true
			c.Close()
		} else {
			t.Logf("connect from outside the workload: %v", err)
		}
	})
	select {
	case l.r = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the workload did not end")
	}
	return l
}

// A workload binds a port and serves a client outside it.
func TestEscapeBindListen(t *testing.T) {
	requireListenHooks(t)
	for _, network := range []string{"tcp4", "tcp6"} {
		t.Run(network, func(t *testing.T) {
			port := freePort(t, network)
			addr := fmt.Sprintf("127.0.0.1:%d", port)
			if network == "tcp6" {
				addr = fmt.Sprintf("[::1]:%d", port)
			}
			l := listenAndConnect(t, nil, addr)
			if l.connected {
				t.Fatalf("a client outside the workload connected to the workload's listener on port %d", port)
			}
			rec := wantRefused(t, l.r, "bind", "tcp")
			if int(rec.Port) != port || rec.Reason != "no rule allows it" {
				t.Fatalf("record %+v", rec)
			}
			if want := fmt.Sprintf("allow with --allow-listen tcp:%d", port); !strings.Contains(l.r.stderr, want) {
				t.Fatalf("the denial line should suggest %q:\n%s", want, l.r.stderr)
			}
		})
	}
}

// listen(2) on a socket that was never bound takes an ephemeral port
// without calling bind(2): the connection attempt is what is refused.
func TestEscapeListenAutobind(t *testing.T) {
	requireListenHooks(t)
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(addr, func(t *testing.T) {
			l := listenAndConnect(t, nil, addr)
			if l.port == 0 {
				t.Fatalf("the workload could not listen at all: %q", l.r.probeLine())
			}
			if l.connected || l.r.probeLine() == "ok accepted" {
				t.Fatalf("a client outside the workload connected to the workload's ephemeral port %d", l.port)
			}
			rec := wantRecord(t, l.r, "deny", "accept", "tcp")
			if int(rec.Port) != l.port {
				t.Fatalf("record %+v, want port %d", rec, l.port)
			}
			if want := fmt.Sprintf("allow with --allow-listen tcp:%d", l.port); !strings.Contains(l.r.stderr, want) {
				t.Fatalf("the denial line should suggest %q:\n%s", want, l.r.stderr)
			}
		})
	}
}

func TestAllowListen(t *testing.T) {
	requireListenHooks(t)
	t.Run("tcp", func(t *testing.T) {
		port := freePort(t, "tcp4")
		l := listenAndConnect(t, []string{"--allow-listen", fmt.Sprintf("tcp:%d", port)}, fmt.Sprintf("127.0.0.1:%d", port))
		if !l.connected || l.r.probeLine() != "ok accepted" {
			t.Fatalf("allowed listener: connected %v, workload said %q", l.connected, l.r.probeLine())
		}
	})
	t.Run("tcp6 range", func(t *testing.T) {
		port := freePort(t, "tcp6")
		l := listenAndConnect(t, []string{"--allow-listen", fmt.Sprintf("tcp:1,%d-%d", port-1, port+1)}, fmt.Sprintf("[::1]:%d", port))
		if !l.connected || l.r.probeLine() != "ok accepted" {
			t.Fatalf("allowed listener: connected %v, workload said %q", l.connected, l.r.probeLine())
		}
	})
	t.Run("udp", func(t *testing.T) {
		port := freePort(t, "udp4")
		wantAllowed(t, probe(t, []string{"--allow-listen", fmt.Sprintf("udp:%d", port)}, "udp-bind", fmt.Sprintf("127.0.0.1:%d", port)))
		wantRefused(t, probe(t, []string{"--allow-listen", fmt.Sprintf("tcp:%d", port)}, "udp-bind", fmt.Sprintf("127.0.0.1:%d", port)), "bind", "udp")
	})
	t.Run("any", func(t *testing.T) {
		port := freePort(t, "udp6")
		wantAllowed(t, probe(t, []string{"--allow-listen", fmt.Sprintf("any:%d", port)}, "udp-bind", fmt.Sprintf("[::1]:%d", port)))
	})
	t.Run("an ephemeral port stays a client's", func(t *testing.T) {
		wantAllowed(t, probe(t, nil, "udp-bind", "127.0.0.1:0"))
	})
	t.Run("bad flags", func(t *testing.T) {
		for _, bad := range []string{"tcp", "tcp:", "icmp:80", "tcp:0", "tcp:80-70", "sctp:80", "tcp:127.0.0.1:80"} {
			r := bridleRun(t, []string{"--allow-listen", bad}, "/bin/true")
			if r.status != 2 || !strings.Contains(r.stderr, "--allow-listen") {
				t.Errorf("--allow-listen %q: status %d, stderr %q; want status 2 naming the flag", bad, r.status, r.stderr)
			}
		}
	})
}

// A port a service on the host needs (here one the test pretends is
// bridled's metrics listener, down for a restart) cannot be taken by a
// workload granted some other port.
func TestEscapeListenSquat(t *testing.T) {
	requireListenHooks(t)
	metrics := freePort(t, "tcp4")
	grant := []string{"--allow-listen", fmt.Sprintf("tcp:%d", metrics+1)}
	t.Run("tcp", func(t *testing.T) {
		l := listenAndConnect(t, grant, fmt.Sprintf("127.0.0.1:%d", metrics))
		rec := wantRefused(t, l.r, "bind", "tcp")
		if int(rec.Port) != metrics || rec.Reason != "port not allowed" {
			t.Fatalf("record %+v", rec)
		}
	})
	t.Run("udp", func(t *testing.T) {
		wantRefused(t, probe(t, grant, "udp-bind", fmt.Sprintf("0.0.0.0:%d", metrics)), "bind", "udp")
	})
	// The service comes back and gets its port.
	ln := listenInNetns(t, "tcp4", fmt.Sprintf("127.0.0.1:%d", metrics))
	ln.Close()
}

// Listen grants follow the same caps as the others: a policy's listen
// entries are capped by --allow-listen, which cannot widen them, and the
// flag reaches bridled through its API.
func TestListenGrantsCapPolicy(t *testing.T) {
	requireListenHooks(t)
	p1, p2 := freePort(t, "udp4"), freePort(t, "udp4")
	dir := t.TempDir()
	pol := fmt.Sprintf(`package bridle

envelope := {
	"exec": [{"path": %q}],
	"listen": [{"protocol": "udp", "ports": [%d, %d]}],
}
`, probeBin, p1, p2)
	if err := os.WriteFile(filepath.Join(dir, "listen.rego"), []byte(pol), 0o644); err != nil {
		t.Fatal(err)
	}
	policy := []string{"--standalone", "--policy", dir, "--intent", "serve"}
	bind := func(port int) []string { return []string{"udp-bind", fmt.Sprintf("127.0.0.1:%d", port)} }
	t.Run("the policy allows", func(t *testing.T) {
		wantAllowed(t, bridleRun(t, policy, append([]string{probeBin}, bind(p1)...)...))
	})
	t.Run("flags narrow", func(t *testing.T) {
		flags := append(policy, "--allow-exec", probeBin, "--allow-listen", fmt.Sprintf("udp:%d", p2))
		wantRefused(t, bridleRun(t, flags, append([]string{probeBin}, bind(p1)...)...), "bind", "udp")
		wantAllowed(t, bridleRun(t, flags, append([]string{probeBin}, bind(p2)...)...))
	})
	t.Run("through bridled flags cannot widen", func(t *testing.T) {
		e := newDaemonEnv(t)
		e.start()
		r := e.runVia([]string{"--intent", "serve", "--allow-exec", probeBin, "--allow-listen", fmt.Sprintf("udp:%d", p1)}, append([]string{probeBin}, bind(p1)...)...)
		rec := wantRefused(t, r, "bind", "udp")
		if rec.Task == "" {
			t.Fatalf("refusal outside the run's task: %+v", rec)
		}
	})
}
