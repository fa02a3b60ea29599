// Command probe is Bridle's end-to-end test tool. The e2e tests run it inside
// a confined workload; each invocation attempts exactly one thing an agent
// might try (a connect, a datagram, an exec, a fork) and reports on one stdout
// line whether the kernel allowed it or refused it, so a test can assert on
// the enforcement without guessing from side effects.
//
// Contract (the e2e tests depend on it):
//
//	ok [detail]        exit 0  the operation succeeded
//	EPERM <detail>     exit 2  the kernel refused it (EPERM or EACCES)
//	error <errno|msg>  exit 3  any other failure
//	usage <msg>        exit 4  bad invocation
//
// Exec actions replace the process on success, so the exit status is the
// target's. Nothing is ever retried: a retry could hide a refusal.
package main

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Exit codes of the contract.
const (
	exitOK     = 0
	exitDenied = 2
	exitError  = 3
	exitUsage  = 4
)

// outcome is what one action observed: the single stdout line to print (empty
// when a child already printed it) and the exit status to leave with.
type outcome struct {
	line string
	code int
}

func ok(detail string) outcome {
	if detail == "" {
		return outcome{"ok", exitOK}
	}
	return outcome{"ok " + detail, exitOK}
}

func usage(format string, args ...any) outcome {
	return outcome{"usage " + fmt.Sprintf(format, args...), exitUsage}
}

// failure classifies an error from the system call named op. EPERM and EACCES
// are the two ways the kernel (a BPF cgroup program, an LSM hook, a sysctl)
// says no, so both become "EPERM"; the line names the call so a test can tell
// a refused socket() from a refused connect(), and says EACCES when it was
// that. Other errnos are reported by name only, e.g. "error ECONNREFUSED".
// The full error always goes to stderr for humans reading test logs.
func failure(op string, err error) outcome {
	fmt.Fprintf(os.Stderr, "probe: %s: %v\n", op, err)
	var errno unix.Errno
	if errors.As(err, &errno) {
		switch errno {
		case unix.EPERM:
			return outcome{"EPERM " + op, exitDenied}
		case unix.EACCES:
			return outcome{"EPERM " + op + " EACCES", exitDenied}
		}
		return outcome{"error " + errnoName(errno), exitError}
	}
	return outcome{"error " + err.Error(), exitError}
}

// errnoName gives the symbolic name (ECONNREFUSED) rather than the message,
// because tests match on it.
func errnoName(e unix.Errno) string {
	if n := unix.ErrnoName(e); n != "" {
		return n
	}
	return fmt.Sprintf("errno%d", int(e))
}

// action runs with the arguments after its name.
type action func(args []string) outcome

var actions map[string]action

func init() {
	// Filled in init because spawn and daemonize look actions up themselves.
	actions = map[string]action{
		"tcp":             actTCP,
		"tcp-every":       actTCPEvery,
		"tcp-fastopen":    actTCPFastOpen,
		"udp-connect":     actUDPConnect,
		"udp-sendto":      actUDPSendto,
		"udp-sendmmsg":    actUDPSendmmsg,
		"iouring-connect": actIOUringConnect,
		"ping":            func(a []string) outcome { return actPing(a, true) },
		"ping-sendto":     func(a []string) outcome { return actPing(a, false) },
		"unix":            actUnixStream,
		"unix-dgram":      actUnixDgram,
		"unix-raw":        actUnixRaw,
		"raw4":            actRaw4,
		"raw6":            actRaw6,
		"packet":          actPacket,
		"exec":            actExec,
		"execveat":        actExecveat,
		"exec-procfd":     actExecProcfd,
		"exec-memfd":      actExecMemfd,
		"spawn":           actSpawn,
		"daemonize":       actDaemonize,
		"sleep":           actSleep,
		"hold-tcp":        actHoldTCP,
		"hold-unix":       actHoldUnix,
		"harden":          actHarden,
		"userns":          actUserns,
		"udp-flood":       actUDPFlood,
		"after":           actAfter,
		"linger":          actLinger,
		"retry":           actRetry,
		"wait-file":       actWaitFile,
		"touch":           actTouch,
		"overwrite":       actOverwrite,
		"creds":           actCreds,
		"run-script":      actRunScript,
		"tiocsti":         actTIOCSTI,
		"ask":             actAsk,
		"winsize":         actWinsize,
		"victim":          actVictim,
		"ptrace-attach":   actPtrace(false),
		"ptrace-seize":    actPtrace(true),
		"vm-write":        actVMWrite,
		"mem-write":       actMemWrite,
		"pidfd-getfd":     actPidfdGetfd,
		"kill":            actKill,
		"cgroup-move":     actCgroupMove,
		"jobs":            actJobs,
		"rthdr6":          actRthdr6,
		"rthdr6-compat":   actRthdr6Compat,
		"rthdr6-cmsg":     actRthdr6Cmsg,
		"srr4":            actSrr4,
		"srr4-cmsg":       actSrr4Cmsg,
		"rr4-cmsg":        actRR4Cmsg,
		"dstopts6-cmsg":   actDstopts6Cmsg,
		"sockopt-pass":    actSockoptPassThrough,
		"tcp-listen":      actTCPListen,
		"udp-bind":        actUDPBind,
		"comm":            actComm,
		"seq":             actSeq,
		"connect-flood":   actConnectFlood,
		"listen-tcp":      actListenTCP,
		"http-get":        actHTTPGet,
		"unshare":         actUnshare,
		"clone-ns":        actCloneNS,
		"userns-bind":     actUsernsBind,
		"setns":           actSetns,
		"socket":          actSocket,
		"socketpair":      actSocketpair,
		"iouring-socket":  actIOUringSocket,
		"fd-connect":      actFDConnect,
		"fd-write":        actFDWrite,
		"reuse-inode":     actReuseInode,
		"resolve":         actResolve,
		"resolve-tcp":     actResolveTCP,
		"dns-query":       actDNSQuery,
		"dns-repeat":      actDNSRepeat,
		"dns-hold-tcp":    actDNSHoldTCP,
		// Internal steps of daemonize, not meant to be called by tests.
		"__daemon":       actDaemonIntermediate,
		"__report":       actReport,
		"__compat-check": actCompatCheck,
		"__bind-connect": actBindConnect,
	}
}

func main() {
	o := run(os.Args[1:])
	if o.line != "" {
		fmt.Println(o.line)
	}
	os.Exit(o.code)
}

func run(args []string) outcome {
	if len(args) == 0 {
		return usage("probe ACTION [ARGS...]; actions: %s", actionNames())
	}
	act, found := actions[args[0]]
	if !found {
		return usage("unknown action %q; actions: %s", args[0], actionNames())
	}
	return act(args[1:])
}

func actionNames() string {
	var names []string
	for n := range actions {
		if !strings.HasPrefix(n, "__") {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return strings.Join(names, " ")
}
