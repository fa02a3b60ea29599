package e2e

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// greetingListener serves a unix socket at path that writes name to every
// connection: a client's read proves which socket it really reached.
func greetingListener(t testing.TB, path, name string) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte(name + "\n"))
			c.Close()
		}
	}()
}

// wantNamespaceRefused checks a namespace call was refused with EPERM and
// recorded as a namespace denial naming ns.
func wantNamespaceRefused(t testing.TB, r result, op, ns string) {
	t.Helper()
	if r.status != 2 || !strings.HasPrefix(r.probeLine(), "EPERM "+op) {
		t.Fatalf("want EPERM %s, got status %d line %q\n%s", op, r.status, r.probeLine(), r.stderr)
	}
	rec := wantRecord(t, r, "deny", "namespace", "")
	if !strings.Contains(rec.Path, ns) || rec.Reason != "namespaces not allowed" {
		t.Fatalf("namespace record names %q, reason %q; want %q and \"namespaces not allowed\"", rec.Path, rec.Reason, ns)
	}
}

// TestEscapeUserNamespaceBindMount: an agent allowed one unix socket makes a
// private user+mount namespace, bind-mounts another socket over the allowed
// path and connects to the allowed path. The unix hooks judge the path
// string, so before workloads were kept out of user namespaces this reached
// the other socket.
func TestEscapeUserNamespaceBindMount(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "x")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	allowed, forbidden := filepath.Join(dir, "allowed.sock"), filepath.Join(dir, "forbidden.sock")
	greetingListener(t, allowed, "allowed")
	greetingListener(t, forbidden, "forbidden")
	chmodAll(t, dir)

	var flags []string
	if features.UnixHooks {
		flags = []string{"--allow-unix", allowed}
	} else {
		// Without unix hooks nothing checks the path at all; what is left to
		// test is that the namespace cannot be made.
		t.Logf("kernel %s has no unix socket hooks (%s): checking the namespace refusal alone", features.Kernel, features.UnixReason)
	}
	t.Run("bind mount over the allowed path", func(t *testing.T) {
		r := probe(t, flags, "userns-bind", allowed, forbidden)
		if strings.Contains(r.probeLine(), "reached forbidden") {
			t.Fatalf("escaped: the workload reached the forbidden socket through the allowed path (%q)", r.probeLine())
		}
		wantNamespaceRefused(t, r, "unshare", "user")
	})
	if features.UnixHooks {
		t.Run("allowed path still reachable", func(t *testing.T) {
			wantAllowed(t, probe(t, flags, "unix", allowed))
		})
	}
	// The plain forms: `unshare -U` and clone(CLONE_NEWUSER).
	t.Run("unshare user", func(t *testing.T) {
		wantNamespaceRefused(t, probe(t, nil, "unshare", "user"), "unshare", "user")
	})
	t.Run("clone user", func(t *testing.T) {
		wantNamespaceRefused(t, probe(t, nil, "clone-ns", "user"), "clone", "user")
	})
	t.Run("clone user+net", func(t *testing.T) {
		wantNamespaceRefused(t, probe(t, nil, "clone-ns", "user,net"), "clone", "net")
	})
	// setns is refused whatever the target: without the filter, re-entering
	// one's own user namespace is EINVAL.
	t.Run("setns user", func(t *testing.T) {
		wantNamespaceRefused(t, probe(t, nil, "setns", "user"), "setns", "user")
	})
	// A process that needs none of it still forks and runs threads.
	t.Run("fork still works", func(t *testing.T) {
		wantAllowed(t, probe(t, nil, "spawn", "sleep", "0"))
	})
}

// TestEscapeVsock: sockets of address families no Bridle hook sees. AF_VSOCK
// reaches the hypervisor (or other VMs) without touching the network stack,
// so no connect hook judges it; before the family filter socket(AF_VSOCK)
// succeeded in a workload and nothing was recorded.
func TestEscapeVsock(t *testing.T) {
	for _, family := range []string{"vsock", "tipc", "alg", "xdp"} {
		t.Run(family, func(t *testing.T) {
			r := probe(t, nil, "socket", family)
			if r.status == 0 {
				t.Fatalf("escaped: socket(%s) created in a workload", family)
			}
			rec := wantRefused(t, r, "socket", "other")
			if rec.Family == 0 || rec.Reason != "address family not allowed" {
				t.Fatalf("record family %d reason %q, want the family number and \"address family not allowed\"", rec.Family, rec.Reason)
			}
		})
	}
	// io_uring makes sockets without socket(2): a launched workload has none.
	t.Run("io_uring vsock", func(t *testing.T) {
		r := probe(t, nil, "iouring-socket", "vsock")
		if r.status == 0 {
			t.Fatalf("escaped: an AF_VSOCK socket made through io_uring")
		}
		if r.probeLine() != "error ENOSYS" {
			t.Fatalf("io_uring in a workload: %q, want error ENOSYS", r.probeLine())
		}
	})
	t.Run("socketpair vsock", func(t *testing.T) {
		wantRefused(t, probe(t, nil, "socketpair", "vsock"), "socket", "other")
	})
	// The families a workload needs keep working: unix, IPv4, IPv6 (their
	// connects are judged by Bridle's hooks) and netlink (getaddrinfo, ip).
	for _, family := range []string{"unix", "inet", "inet6", "netlink"} {
		t.Run(family+" allowed", func(t *testing.T) {
			wantAllowed(t, probe(t, nil, "socket", family))
		})
	}
	t.Run("socketpair unix allowed", func(t *testing.T) {
		wantAllowed(t, probe(t, nil, "socketpair", "unix"))
	})
	// Through bridled the run's own supervisor records the refusal, with
	// the daemon's task and node.
	t.Run("through bridled", func(t *testing.T) {
		e := newDaemonEnv(t)
		e.start()
		r := e.runVia([]string{"--intent", "vsock via daemon"}, probeBin, "socket", "vsock")
		rec := wantRefused(t, r, "socket", "other")
		if rec.Task == "" || rec.Node != "e2e.test" || rec.Enforcement != "seccomp" || !strings.HasPrefix(rec.Workload, e.root+"/run-t-") {
			t.Fatalf("record of a run through bridled: %+v", rec)
		}
	})
	// Audit mode refuses nothing and records would-deny.
	t.Run("audit mode", func(t *testing.T) {
		r := probe(t, []string{"--mode", "audit"}, "socket", "vsock")
		if r.status == 2 {
			t.Fatalf("audit mode refused: %q", r.probeLine())
		}
		wantRecord(t, r, "would-deny", "socket", "other")
	})
}
