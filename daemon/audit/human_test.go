package audit

import (
	"strings"
	"testing"

	"github.com/bridle-sh/bridle/bpf"
)

func TestLine(t *testing.T) {
	cases := []struct {
		name string
		rec  Record
		want string
	}{
		{"tcp v4", Record{Verdict: "deny", Action: "connect", Protocol: "tcp", Address: "10.1.2.3", Port: 443, Comm: "curl", PID: 7, Reason: "no rule allows it", Enforcement: "cgroup"},
			"denied connect tcp:10.1.2.3:443 by curl[7]: no rule allows it; allow with --allow-connect tcp:10.1.2.3:443"},
		{"udp v6", Record{Verdict: "would-deny", Action: "sendmsg", Protocol: "udp", Address: "2001:db8::53", Port: 53, Comm: "dig", PID: 8, Reason: "port not allowed"},
			"would deny sendmsg udp:[2001:db8::53]:53 by dig[8]: port not allowed; allow with --allow-connect udp:[2001:db8::53]:53"},
		{"icmp from the packet check", Record{Verdict: "deny", Action: "sendmsg", Protocol: "icmp", Address: "192.0.2.1", Reason: "no rule allows it"},
			"denied sendmsg icmp:192.0.2.1 by the workload (packet check): no rule allows it; allow with --allow-connect icmp:192.0.2.1"},
		{"unix", Record{Verdict: "deny", Action: "connect", Protocol: "unix", Path: "/run/docker.sock", Comm: "sh", PID: 9, Reason: "no rule allows it"},
			"denied connect unix:/run/docker.sock by sh[9]: no rule allows it; allow with --allow-unix /run/docker.sock"},
		{"exec killed", Record{Verdict: "deny", Action: "exec", Path: "/usr/bin/id", Comm: "id", PID: 10, Reason: "no rule allows it", Enforcement: "kill"},
			"denied exec /usr/bin/id by id[10]: no rule allows it (killed); allow with --allow-exec /usr/bin/id"},
		{"exec by descriptor", Record{Verdict: "deny", Action: "exec", Path: "/dev/fd/5", Comm: "x", PID: 11, Reason: "no rule allows it", Enforcement: "lsm"},
			"denied exec /dev/fd/5 by x[11]: no rule allows it; run by descriptor, so no path names it: allow the binary's file with --allow-exec"},
		{"raw socket", Record{Verdict: "deny", Action: "socket", Protocol: "raw", Comm: "ping", PID: 12, Reason: "socket type not allowed"},
			"denied socket raw socket by ping[12]: socket type not allowed; no flag allows this"},
		{"bind", Record{Verdict: "deny", Action: "bind", Protocol: "tcp", Address: "0.0.0.0", Port: 8080, Comm: "srv", PID: 13, Reason: "no rule allows it"},
			"denied bind tcp:0.0.0.0:8080 by srv[13]: no rule allows it; allow with --allow-listen tcp:8080"},
		{"accept", Record{Verdict: "deny", Action: "accept", Protocol: "tcp", Address: "2001:db8::7", Port: 40123, Reason: "port not allowed"},
			"denied accept tcp port 40123 from 2001:db8::7 by the workload (packet check): port not allowed; allow with --allow-listen tcp:40123"},
		{"setsockopt", Record{Verdict: "deny", Action: "setsockopt", Protocol: "udp", Path: "IPV6_RTHDR", Comm: "a", PID: 14, Reason: "option can send packets elsewhere"},
			"denied setsockopt IPV6_RTHDR on a udp socket by a[14]: option can send packets elsewhere; no flag allows this"},
		{"extension header", Record{Verdict: "deny", Action: "sendmsg", Protocol: "udp", Address: "fd99::3", Port: 53, Reason: string(bpf.ReasonExtHeader)},
			"denied sendmsg udp:[fd99::3]:53 by the workload (packet check): packet has routing or extension headers or IP options; no flag allows this"},
		{"address family", Record{Verdict: "deny", Action: "socket", Protocol: "other", Family: 40, Comm: "agent", PID: 13, Reason: "address family not allowed", Enforcement: "seccomp"},
			"denied socket AF_VSOCK by agent[13]: address family not allowed; no flag allows this"},
		{"unnamed address family", Record{Verdict: "would-deny", Action: "socket", Protocol: "other", Family: 46, Comm: "agent", PID: 13, Reason: "address family not allowed", Enforcement: "lsm"},
			"would deny socket family 46 by agent[13]: address family not allowed; no flag allows this"},
		{"namespace", Record{Verdict: "deny", Action: "namespace", Path: "user,mnt", Comm: "unshare", PID: 14, Reason: "namespaces not allowed", Enforcement: "seccomp"},
			"denied namespace user,mnt by unshare[14]: namespaces not allowed; no flag allows this"},
		{"dns name not allowed", Record{Verdict: "deny", Action: "dns", Protocol: "udp", Address: "8.8.8.8", Port: 53, Name: "evil.example", QueryType: "A", Reason: DNSNotAllowed, Enforcement: "resolver"},
			"denied dns A evil.example by the workload: name not allowed; allow with --allow-connect tcp:evil.example:PORT"},
		{"dns budget", Record{Verdict: "deny", Action: "dns", Protocol: "tcp", Name: "x1.cdn.example", QueryType: "AAAA", Reason: DNSBudget, Enforcement: "resolver"},
			"denied dns AAAA x1.cdn.example by the workload: wildcard name budget spent; allow with --allow-connect tcp:x1.cdn.example:PORT"},
		{"dns other type", Record{Verdict: "deny", Action: "dns", Protocol: "udp", Name: "api.example", QueryType: "TXT", Reason: DNSType, Enforcement: "resolver"},
			"denied dns TXT api.example by the workload: record type not forwarded; no flag allows this"},
		{"dns upstream", Record{Verdict: "deny", Action: "dns", Protocol: "udp", Name: "api.example", QueryType: "A", Reason: DNSUpstream + ": i/o timeout", Enforcement: "resolver"},
			"denied dns A api.example by the workload: upstream failure: i/o timeout"},
		{"dns name with control bytes", Record{Verdict: "deny", Action: "dns", Protocol: "udp", Name: "a\bb.example\x1b", QueryType: "A", Reason: DNSInvalid + ": bad label", Enforcement: "resolver"},
			`denied dns A a\x08b.example\x1b by the workload: invalid query: bad label; no flag allows this`},
		{"dns allowed", Record{Verdict: "allow", Action: "dns", Protocol: "udp", Name: "api.example", QueryType: "A", Answers: []string{"192.0.2.1"}, Reason: DNSAllowed, Enforcement: "resolver"},
			"allowed dns A api.example by the workload: allowed by rule"},
		{"allowed", Record{Verdict: "allow", Action: "connect", Protocol: "tcp", Address: "127.0.0.1", Port: 80, Comm: "c", PID: 1, Reason: "allowed by rule"},
			"allowed connect tcp:127.0.0.1:80 by c[1]: allowed by rule"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := c.rec.Line(); got != c.want {
				t.Errorf("got  %q\nwant %q", got, c.want)
			}
		})
	}
}

// A refusal that opened an approval request says how to answer it.
func TestLineNamesTheApprovalRequest(t *testing.T) {
	r := Record{Verdict: bpf.VerdictDeny, Action: bpf.ActionConnect, Protocol: bpf.ProtocolTCP, Address: "192.0.2.7", Port: 443,
		Comm: "curl", PID: 7, Reason: "no rule allows it", Request: "req-0123456789ab"}
	want := "approval request req-0123456789ab is pending: bridle approve req-0123456789ab --for DURATION (or bridle deny req-0123456789ab)"
	if got := r.Line(); !strings.Contains(got, want) {
		t.Fatalf("line %q", got)
	}
}
