package main

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"time"

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

// actResolveTCP NAME:PORT [4|6]: resolves NAME, then connects over TCP to
// its first address of the family (any family without one).
func actResolveTCP(args []string) outcome {
	if len(args) < 1 || len(args) > 2 {
		return usage("resolve-tcp NAME:PORT [4|6]")
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
		if len(args) == 2 && (args[1] == "4") != a.Is4() {
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
		return ok(a.String())
	}
	return outcome{"error no address of that family", exitError}
}
