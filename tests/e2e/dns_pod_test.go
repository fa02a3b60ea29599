package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/tests/netnstest"
)

// A workload in a network namespace of its own, as a pod is: a veth from
// the test namespace (the node, where bridled runs) to the pod's
// namespace, whose default routes go to the node's end. The kernel hooks
// run in the pod's namespace and steer its DNS to the resolver's address,
// which bridled put on the node's lo (dns.interface): the pod reaches it
// through its route, and what the answer taught is the pod's to connect
// to, on the node.

var (
	podDNSV4 = netip.MustParseAddrPort("169.254.20.10:53")
	podDNSV6 = netip.MustParseAddrPort("[fd00:b41d::53]:53")
)

// newPodNetns creates the pod's namespace, joined to the test namespace,
// and returns its path.
func newPodNetns(t *testing.T) string {
	t.Helper()
	pod := netnstest.New(t)
	netnstest.ConnectPod(t, netnsPath, pod)
	return pod
}

// probeInPod runs the probe born in cgroup cg, in the namespace at ns.
func (e *daemonEnv) probeInPod(cg, ns string, args ...string) string {
	e.t.Helper()
	fd := e.cgroupFD(cg)
	defer syscall.Close(fd)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, probeBin, args...)
	c.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	var out, errOut bytes.Buffer
	c.Stdout, c.Stderr = &out, &errOut
	// The child is forked from this thread and keeps its namespace.
	netnstest.Do(e.t, ns, func() { _ = c.Run() })
	line, _, _ := strings.Cut(out.String(), "\n")
	e.t.Logf("probe %v in %s (pod): %q %s", args, cg, line, errOut.String())
	return line
}

func TestDNSDaemonPodNetns(t *testing.T) {
	u := startUpstream(t)
	tcpListener(t, "tcp4", netip.AddrPortFrom(apiV4, servicePort).String())
	tcpListener(t, "tcp6", netip.AddrPortFrom(apiV6, servicePort).String())
	pod := newPodNetns(t)
	e := newDaemonEnv(t)
	e.inNetns = true
	if err := os.WriteFile(filepath.Join(e.dir, "policy", "test.rego"), []byte(dnsPolicy()), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(e.config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = fmt.Fprintf(f, "dns:\n  upstream: %s\n  interface: lo\n  listen4: %s\n  listen6: \"%s\"\n", u.addr, podDNSV4, podDNSV6)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	e.start()
	wa, wb := e.workload("a"), e.workload("b")
	e.startTask(wa)
	e.startTask(wb)

	t.Run("a pod resolves through the resolver on the node and connects to the answer", func(t *testing.T) {
		if got := e.probeInPod(wa, pod, "resolve-tcp", "api.test:8443", "4"); got != "ok "+apiV4.String() {
			t.Fatalf("IPv4: %q, want ok %s", got, apiV4)
		}
		if got := e.probeInPod(wa, pod, "resolve", "api.test", "tcp"); !strings.HasPrefix(got, "ok ") {
			t.Errorf("over TCP: %q", got)
		}
		if got := e.probeInPod(wa, pod, "resolve", "other.test"); got != "error NXDOMAIN" {
			t.Errorf("a name the task lacks: %q, want error NXDOMAIN", got)
		}
	})

	t.Run("an IPv6 server is steered to the IPv6 resolver", func(t *testing.T) {
		// No route leads to 2001:db8::53 beyond the node: only the
		// steering answers.
		if got := e.probeInPod(wa, pod, "dns-query", "[2001:db8::53]:53", "api.test", "AAAA"); got != "ok NOERROR "+apiV6.String() {
			t.Fatalf("%q, want ok NOERROR %s", got, apiV6)
		}
		if got := e.probeInPod(wa, pod, "tcp", netip.AddrPortFrom(apiV6, servicePort).String()); got != "ok" {
			t.Errorf("the learned IPv6 address: %q", got)
		}
	})

	t.Run("the answer is the asking pod's task's alone", func(t *testing.T) {
		if got := e.probeInPod(wb, pod, "tcp", netip.AddrPortFrom(apiV4, servicePort).String()); got != "EPERM connect" {
			t.Errorf("task b reached task a's answer: %q", got)
		}
	})

	t.Run("the record names the pod's task and the server it asked", func(t *testing.T) {
		rec := e.waitAudit(func(r map[string]any) bool {
			return r["action"] == "dns" && r["name"] == "api.test" && r["address"] == "2001:db8::53"
		})
		if rec["verdict"] != "allow" || rec["task"] == nil {
			t.Errorf("record %v", rec)
		}
	})

	t.Run("with bridled stopped the address stays and DNS fails closed", func(t *testing.T) {
		e.stop(syscall.SIGTERM)
		if !netnstest.HasAddr(t, netnstest.Handle(t, netnsPath), "lo", podDNSV4.Addr()) {
			t.Errorf("after bridled stopped, %s left lo", podDNSV4.Addr())
		}
		if got := e.probeInPod(wa, pod, "resolve", "cdn.test"); strings.HasPrefix(got, "ok") {
			t.Errorf("with bridled stopped, a query was answered: %q", got)
		}
	})
}
