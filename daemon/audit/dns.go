package audit

import "github.com/bridle-sh/bridle/bpf"

// The reasons of the resolver's records (action "dns"). The resolver
// (daemon/dns) gives these words; the human line reads them to suggest a
// flag. Reasons that carry a cause append it after ": ".
const (
	// DNSAllowed is a name the task's rules allow: the query was
	// answered from the upstream or the cache.
	DNSAllowed = string(bpf.ReasonRule)
	// DNSNotAllowed is a name no rule of the task matches: answered
	// NXDOMAIN locally, never forwarded.
	DNSNotAllowed = "name not allowed"
	// DNSBudget is a name only wildcard rules match, asked for after the
	// task spent its budget of such names.
	DNSBudget = "wildcard name budget spent"
	// DNSType is a record type the resolver answers empty (anything but
	// A, AAAA and CNAME).
	DNSType = "record type not forwarded"
	// DNSInvalid is a query no rule could ever match: not one question
	// of class IN, or a name that is not a valid host name.
	DNSInvalid = "invalid query"
	// DNSUnattributed is a query the kernel did not steer here from a
	// confined workload: refused, never forwarded.
	DNSUnattributed = "unattributed"
	// DNSNoTask is a workload with neither a task nor a baseline.
	DNSNoTask = "no task or baseline governs the workload"
	// DNSInFlight is a query refused because the task already has as
	// many waiting on the upstream as it may.
	DNSInFlight = "too many queries in flight"
	// DNSUpstream is a failed exchange with the upstream resolver.
	DNSUpstream = "upstream failure"
	// DNSKernel is an answer whose addresses the kernel did not take:
	// answered SERVFAIL, since the workload could not reach them.
	DNSKernel = "learned entries not written"
)
