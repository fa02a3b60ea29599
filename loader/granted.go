package loader

import "time"

// Grants are what a person approved for a task (daemon/approvals): entries
// with an expiry the BPF programs check themselves, so a grant ends on
// time whether or not bridled is alive. An address grant has the value
// layout of a learned DNS entry.
type (
	// GrantedAddr is one granted destination: protocol, address, ports
	// (none for ICMP) and when the grant ends.
	GrantedAddr = LearnedAddr
	// GrantedExec is one granted program, as the kernel identifies it
	// at exec time.
	GrantedExec struct {
		Dev, Ino uint64
		Expires  time.Time
	}
)
