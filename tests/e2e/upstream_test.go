package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The DNS tests' world, inside the test network namespace: addresses on its
// loopback that names resolve to, servers listening on them, and a real
// upstream resolver (dnsmasq) with a zone and a log of every query it got.
const (
	upstreamPort = 10053
	servicePort  = 8443
)

var (
	apiV4   = netip.MustParseAddr("10.53.0.10")
	apiV6   = netip.MustParseAddr("fd53::10")
	otherV4 = netip.MustParseAddr("10.53.0.11") // other.test, never allowed
	cdnV4   = netip.MustParseAddr("10.53.0.12") // alias.test -> cdn.test
	// big.test has so many addresses that its answer does not fit a
	// UDP message (Go's resolver offers 1232 bytes): the client must retry over TCP.
	bigCount = 100
)

// upstream is a dnsmasq answering from a hosts file, logging queries.
type upstream struct {
	addr netip.AddrPort
	log  string
}

// startUpstream starts dnsmasq in the test namespace with the zone above,
// and puts the zone's addresses on the namespace's loopback.
func startUpstream(t *testing.T) *upstream {
	t.Helper()
	bin, err := exec.LookPath("dnsmasq")
	if err != nil {
		// The kernel guests carry the host's at its own path.
		if bin, err = exec.LookPath("/usr/sbin/dnsmasq"); err != nil {
			t.Fatalf("the DNS tests need dnsmasq (Debian package dnsmasq-base; .ci/run installs it, and make test-kernels copies it into the guests): %v", err)
		}
	}
	dir := t.TempDir()
	hosts := []string{
		apiV4.String() + " api.test",
		apiV6.String() + " api.test",
		otherV4.String() + " other.test",
		cdnV4.String() + " cdn.test",
		"10.53.0.13 short.test",
	}
	for i := 1; i <= bigCount; i++ {
		hosts = append(hosts, fmt.Sprintf("10.53.1.%d big.test", i))
	}
	hostsFile := filepath.Join(dir, "hosts")
	if err := os.WriteFile(hostsFile, []byte(strings.Join(hosts, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	u := &upstream{addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), upstreamPort), log: filepath.Join(dir, "queries.log")}
	args := []string{"--net=" + netnsPath, "--", bin,
		"--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--no-poll", "--user=root", "--pid-file=",
		"--bind-interfaces", "--listen-address=127.0.0.1", fmt.Sprintf("--port=%d", upstreamPort),
		"--addn-hosts=" + hostsFile, "--local-ttl=1", "--cname=alias.test,cdn.test",
		`--txt-record=api.test,"not for agents"`, "--log-queries=extra", "--log-facility=" + u.log,
	}
	cmd := exec.Command("nsenter", args...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(u.log)
			t.Logf("dnsmasq output:\n%s\nquery log:\n%s", out.String(), b)
		}
	})
	addLoopbackAddrs(t)
	// Up when it answers on TCP.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var up bool
		inNetns(t, func() {
			c, err := net.DialTimeout("tcp", u.addr.String(), time.Second)
			if err == nil {
				c.Close()
				up = true
			}
		})
		if up {
			return u
		}
		if time.Now().After(deadline) {
			t.Fatalf("dnsmasq did not come up:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// addLoopbackAddrs gives the namespace's loopback the zone's addresses.
func addLoopbackAddrs(t *testing.T) {
	t.Helper()
	for _, a := range []string{apiV4.String() + "/32", otherV4.String() + "/32", cdnV4.String() + "/32", "10.53.0.13/32", apiV6.String() + "/128"} {
		out, err := exec.Command("nsenter", "--net="+netnsPath, "--", "ip", "addr", "replace", a, "dev", "lo").CombinedOutput()
		if err != nil {
			t.Fatalf("ip addr replace %s dev lo: %v %s", a, err, out)
		}
	}
}

// queried reports whether the upstream's log shows a query of qtype for
// name.
func (u *upstream) queried(t *testing.T, qtype, name string) bool {
	t.Helper()
	b, err := os.ReadFile(u.log)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(b), " query["+qtype+"] "+name+" from ")
}
