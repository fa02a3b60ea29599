package main

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// Name resolution through the workload's own stub resolver: Go's, which
// reads /etc/resolv.conf (or falls back to localhost:53) like any program.
// Bridle's hooks steer its queries to Bridle's resolver.

const resolveTimeout = 5 * time.Second

// lookup resolves name with Go's own resolver (never cgo), A and AAAA.
func lookup(name, network string) ([]netip.Addr, *outcome) {
	r := &net.Resolver{PreferGo: true}
	if network == "tcp" {
		r.Dial = func(ctx context.Context, _, addr string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	addrs, err := r.LookupNetIP(ctx, "ip", name)
	if err == nil {
		return addrs, nil
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
		o := outcome{"error NXDOMAIN", exitError}
		return nil, &o
	}
	o := failure("resolve", err)
	if strings.Contains(err.Error(), "operation not permitted") {
		o = outcome{"EPERM resolve", exitDenied}
	}
	return nil, &o
}

// actResolve NAME [udp|tcp]: prints the addresses, sorted as returned.
func actResolve(args []string) outcome {
	if len(args) < 1 || len(args) > 2 {
		return usage("resolve NAME [udp|tcp]")
	}
	network := "udp"
	if len(args) == 2 {
		network = args[1]
	}
	addrs, o := lookup(args[0], network)
	if o != nil {
		return *o
	}
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.String()
	}
	return ok(strings.Join(s, ","))
}

// actResolveTCP NAME:PORT [4|6|any] [AFTER]: resolves NAME, then connects
// over TCP to its first address of the family. With AFTER (a duration) it
// connects to that address once more after waiting, without resolving
// again, and reports that second connect.
func actResolveTCP(args []string) outcome {
	if len(args) < 1 || len(args) > 3 {
		return usage("resolve-tcp NAME:PORT [4|6|any] [AFTER]")
	}
	var again time.Duration
	if len(args) == 3 {
		d, err := time.ParseDuration(args[2])
		if err != nil {
			return usage("AFTER: %v", err)
		}
		again = d
	}
	name, port, found := strings.Cut(args[0], ":")
	if !found {
		return usage("resolve-tcp NAME:PORT")
	}
	addrs, o := lookup(name, "udp")
	if o != nil {
		return *o
	}
	for _, a := range addrs {
		if len(args) >= 2 && args[1] != "any" && (args[1] == "4") != a.Is4() {
			continue
		}
		ep, err := parseEndpoint(net.JoinHostPort(a.String(), port))
		if err != nil {
			return usage("%v", err)
		}
		fd, o := dialTCP(ep)
		if o != nil {
			return *o
		}
		unix.Close(fd)
		if again == 0 {
			return ok(a.String())
		}
		time.Sleep(again)
		if fd, o = dialTCP(ep); o != nil {
			return outcome{o.line + " again", o.code}
		}
		unix.Close(fd)
		return ok(a.String() + " again")
	}
	return outcome{"error no address of that family", exitError}
}

// actDNSQuery SERVER:PORT NAME TYPE [udp|tcp]: one query, sent as written
// (no search list, no retry), to see what a resolver answers. Prints the
// rcode, then the answer records' data.
func actDNSQuery(args []string) outcome {
	if len(args) < 3 || len(args) > 4 {
		return usage("dns-query SERVER:PORT NAME TYPE [udp|tcp]")
	}
	qtype, found := dns.StringToType[strings.ToUpper(args[2])]
	if !found {
		return usage("unknown record type %q", args[2])
	}
	c := &dns.Client{Net: "udp", Timeout: resolveTimeout}
	if len(args) == 4 {
		c.Net = args[3]
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(args[1]), qtype)
	in, _, err := c.Exchange(m, args[0])
	if err != nil {
		if strings.Contains(err.Error(), "operation not permitted") {
			return outcome{"EPERM " + c.Net, exitDenied}
		}
		return failure("query", err)
	}
	parts := []string{dns.RcodeToString[in.Rcode]}
	for _, rr := range in.Answer {
		parts = append(parts, strings.TrimPrefix(rr.String(), rr.Header().String()))
	}
	return ok(strings.Join(parts, " "))
}
