package bpf

import "strconv"

// The words of Bridle's decision records (docs/EVENTS.md): what was tried,
// what was decided, why, and by which mechanism. Each is a string type
// whose value is the word records carry, so a record's JSON is the word as
// it is and a record read back keeps even a word this build does not know.
// The kernel sends numbers: the tables below give the word of each value of
// the C enums in bpf/include/bridle.h (the loader's tests check them against
// the compiled objects), and a value missing from a table reads
// "unknown(N)".

// Verdict is what a check decided (enum bridle_verdict).
type Verdict string

const (
	VerdictAllow Verdict = "allow"
	VerdictDeny  Verdict = "deny"
	// VerdictWouldDeny is a refusal the policy asked for and audit mode
	// let through.
	VerdictWouldDeny Verdict = "would-deny"
)

var verdicts = [...]Verdict{1: VerdictAllow, 2: VerdictDeny, 3: VerdictWouldDeny}

// VerdictOf names a value of enum bridle_verdict.
func VerdictOf(code uint8) Verdict { return named(verdicts[:], code) }

// Action is what the workload tried (enum bridle_action), or what bridled
// itself did.
type Action string

// The kernel's actions.
const (
	ActionConnect    Action = "connect"
	ActionSendmsg    Action = "sendmsg"
	ActionExec       Action = "exec"
	ActionSocket     Action = "socket"
	ActionBind       Action = "bind"       // bind(2) to a port
	ActionAccept     Action = "accept"     // an inbound connection to a listening socket
	ActionSetsockopt Action = "setsockopt" // an option that changes where packets go
	ActionNamespace  Action = "namespace"  // creating namespaces
)

// Bridled's own actions: they have no value in the C enum.
const (
	ActionTaskStart  Action = "task_start"
	ActionTaskEnd    Action = "task_end"
	ActionAPI        Action = "api"        // a refused call to bridled's API
	ActionSuppressed Action = "suppressed" // records left out of the audit file
	// ActionDNS is a query to Bridle's resolver: one record per query.
	ActionDNS Action = "dns"
	// Step-up approvals: a refusal an approvable entry covers opens a
	// request; an answer grants or denies it; a grant ends.
	ActionApprovalRequest Action = "approval_request"
	ActionApprovalGranted Action = "approval_granted"
	ActionApprovalDenied  Action = "approval_denied"
	ActionApprovalExpired Action = "approval_expired"
	ActionGrantEnded      Action = "grant_ended"
)

var actions = [...]Action{
	1: ActionConnect, 2: ActionSendmsg, 3: ActionExec, 4: ActionSocket,
	5: ActionBind, 6: ActionAccept, 7: ActionSetsockopt, 8: ActionNamespace,
}

// ActionOf names a value of enum bridle_action.
func ActionOf(code uint8) Action { return named(actions[:], code) }

// KernelActions are the actions the kernel decides, in the C enum's order.
func KernelActions() []Action { return append([]Action(nil), actions[1:]...) }

// Protocol is the transport or socket kind of a decision (enum
// bridle_proto); exec and namespace decisions have none.
type Protocol string

const (
	ProtocolNone   Protocol = ""
	ProtocolTCP    Protocol = "tcp"
	ProtocolUDP    Protocol = "udp"
	ProtocolICMP   Protocol = "icmp"
	ProtocolUnix   Protocol = "unix"
	ProtocolRaw    Protocol = "raw"
	ProtocolPacket Protocol = "packet"
	ProtocolOther  Protocol = "other"
)

var protocols = [...]Protocol{
	1: ProtocolTCP, 2: ProtocolUDP, 3: ProtocolICMP, 4: ProtocolUnix,
	5: ProtocolRaw, 6: ProtocolPacket, 7: ProtocolOther,
}

// ProtocolOf names a value of enum bridle_proto; 0 is none.
func ProtocolOf(code uint8) Protocol {
	if code == 0 {
		return ProtocolNone
	}
	return named(protocols[:], code)
}

// Enforcement is the mechanism that carried a decision out (enum
// bridle_enforcement), or bridled's own.
type Enforcement string

// The kernel's mechanisms.
const (
	EnforcementCgroup Enforcement = "cgroup" // a cgroup hook refused the call
	EnforcementLSM    Enforcement = "lsm"    // a BPF LSM hook refused the call
	EnforcementKill   Enforcement = "kill"   // the new image was killed before it ran
)

// Mechanisms outside the kernel's hooks: they have no value in the C enum.
const (
	// EnforcementSeccomp is the launch filter of `bridle run`, whose
	// refusals its supervisor records.
	EnforcementSeccomp Enforcement = "seccomp"
	// EnforcementDaemon is bridled's own records: tasks, API refusals,
	// the audit file's accounting.
	EnforcementDaemon Enforcement = "daemon"
	// EnforcementResolver is Bridle's resolver (daemon/dns), which
	// answers the queries the kernel steers to it.
	EnforcementResolver Enforcement = "resolver"
)

var enforcements = [...]Enforcement{1: EnforcementCgroup, 2: EnforcementLSM, 3: EnforcementKill}

// EnforcementOf names a value of enum bridle_enforcement.
func EnforcementOf(code uint8) Enforcement { return named(enforcements[:], code) }

// Reason is why the kernel decided as it did (enum bridle_reason). Records
// carry it as their reason; bridled's own records give reasons of their
// own, in free text.
type Reason string

const (
	ReasonRule        Reason = "allowed by rule"
	ReasonNoRule      Reason = "no rule allows it"
	ReasonPort        Reason = "port not allowed"
	ReasonNoTask      Reason = "no active task"
	ReasonTaskExpired Reason = "task expired"
	ReasonSocketType  Reason = "socket type not allowed"
	ReasonProtocol    Reason = "protocol not allowed"
	ReasonSockopt     Reason = "option can send packets elsewhere"
	// ReasonExtHeader is a packet dropped for its routing or extension
	// headers or IP options; no rule allows those.
	ReasonExtHeader Reason = "packet has routing or extension headers or IP options"
	// ReasonScriptOnly is an exec of a file allowed only as a #! script,
	// which it is not now.
	ReasonScriptOnly Reason = "allowed only as a #! script, and it is not one now"
	ReasonFamily     Reason = "address family not allowed"
	ReasonNamespace  Reason = "namespaces not allowed"
	// ReasonGrant is an allow by a grant a person approved for the task
	// (a step-up approval), not by its rules.
	ReasonGrant Reason = "allowed by an approval"
)

var reasons = [...]Reason{
	1: ReasonRule, 2: ReasonNoRule, 3: ReasonPort, 4: ReasonNoTask, 5: ReasonTaskExpired,
	6: ReasonSocketType, 7: ReasonProtocol, 8: ReasonSockopt, 9: ReasonExtHeader,
	10: ReasonScriptOnly, 11: ReasonFamily, 12: ReasonNamespace, 13: ReasonGrant,
}

// ReasonOf names a value of enum bridle_reason.
func ReasonOf(code uint8) Reason { return named(reasons[:], code) }

// TaskExpired is why bridled ends a task whose lifetime ran out. It is
// the cause its task_end record's reason opens with; what became of the
// task's connections follows after "; ". (ReasonTaskExpired is the
// kernel's, for a decision refused after that moment.)
const TaskExpired = "expired"

// named looks a C enum value up in a table indexed by value.
func named[T ~string](table []T, code uint8) T {
	if int(code) < len(table) && table[code] != "" {
		return table[code]
	}
	return T("unknown(" + strconv.Itoa(int(code)) + ")")
}
