package main

import (
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Probes of the resolver's limits, as a workload trying to carry data out
// in DNS, or to wear the resolver down for other tasks, would use it.

// actDNSRepeat [tcp] SERVER:PORT COUNT NAME...: COUNT queries of type A,
// over UDP or TCP, cycling through the names (the choice of name is the
// data), each waiting for its answer. Prints how many answers of each
// rcode came back, sorted.
func actDNSRepeat(args []string) outcome {
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
	if len(args) > 0 && args[0] == "tcp" {
		c.Net, args = "tcp", args[1:]
	}
	if len(args) < 3 {
		return usage("dns-repeat [tcp] SERVER:PORT COUNT NAME...")
	}
	n, err := strconv.Atoi(args[1])
	if err != nil || n < 1 {
		return usage("COUNT: %q", args[1])
	}
	names := args[2:]
	counts := map[string]int{}
	for i := range n {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(names[i%len(names)]), dns.TypeA)
		in, _, err := c.Exchange(m, args[0])
		if err != nil {
			counts["error"]++
			continue
		}
		counts[dns.RcodeToString[in.Rcode]]++
	}
	var parts []string
	for k, v := range counts {
		parts = append(parts, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(parts)
	return ok(strings.Join(parts, " "))
}

// actDNSHoldTCP SERVER:PORT COUNT HOLD: opens COUNT TCP connections to
// SERVER (steered to Bridle's resolver when the port is 53), keeps them
// open for HOLD, sending nothing, then reports how many it opened.
func actDNSHoldTCP(args []string) outcome {
	if len(args) != 3 {
		return usage("dns-hold-tcp SERVER:PORT COUNT HOLD")
	}
	n, err := strconv.Atoi(args[1])
	if err != nil || n < 1 {
		return usage("COUNT: %q", args[1])
	}
	hold, err := time.ParseDuration(args[2])
	if err != nil {
		return usage("HOLD: %v", err)
	}
	var conns []net.Conn
	var last error
	for range n {
		c, err := net.DialTimeout("tcp", args[0], 2*time.Second)
		if err != nil {
			last = err
			break
		}
		conns = append(conns, c)
	}
	time.Sleep(hold)
	for _, c := range conns {
		c.Close()
	}
	if last != nil {
		return ok(fmt.Sprintf("%d (%v)", len(conns), last))
	}
	return ok(strconv.Itoa(len(conns)))
}
