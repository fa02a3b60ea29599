package main

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The actions here give the e2e tests what a shell and coreutils would,
// so the same tests run in kernel-matrix guests that have neither.

// actAfter sleeps, then runs ACTION in this same process: an action taken
// after a task expired, without a new exec.
func actAfter(args []string) outcome {
	if len(args) < 2 {
		return usage("after SECONDS ACTION [ARGS...]")
	}
	if o := actSleep(args[:1]); o.code != exitOK {
		return o
	}
	return run(args[1:])
}

// actRetry runs an action every SECONDS for as long as it is refused
// (EPERM), and returns its first other outcome: an agent that waits for its
// task, then acts once (with hold-tcp: opens a connection and holds it).
func actRetry(args []string) outcome {
	if len(args) < 2 {
		return usage("retry SECONDS ACTION [ARGS...]")
	}
	secs, err := strconv.ParseFloat(args[0], 64)
	if err != nil || secs <= 0 {
		return usage("retry: bad SECONDS %q", args[0])
	}
	for {
		o := run(args[1:])
		if !strings.HasPrefix(o.line, "EPERM") {
			return o
		}
		time.Sleep(time.Duration(secs * float64(time.Second)))
	}
}

// actLinger runs an action, then stays SECONDS before it exits with the
// action's outcome: a workload that lives on after a refusal, as an agent
// does while a person answers.
func actLinger(args []string) outcome {
	if len(args) < 2 {
		return usage("linger SECONDS ACTION [ARGS...]")
	}
	o := run(args[1:])
	if s := actSleep(args[:1]); s.code != exitOK {
		return s
	}
	return o
}

// actWaitFile waits up to SECONDS for PATH to exist and prints its first
// line: the verdict a detached grandchild left behind.
func actWaitFile(args []string) outcome {
	if len(args) != 2 {
		return usage("wait-file PATH SECONDS")
	}
	secs, err := strconv.ParseFloat(args[1], 64)
	if err != nil {
		return usage("wait-file: bad SECONDS %q", args[1])
	}
	deadline := time.Now().Add(time.Duration(secs * float64(time.Second)))
	for {
		b, err := os.ReadFile(args[0])
		if err == nil {
			line, _, _ := strings.Cut(string(b), "\n")
			return outcome{line, exitOK}
		}
		if time.Now().After(deadline) {
			return outcome{"error ETIMEDOUT", exitError}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// actTouch creates PATH: evidence that a command ran.
func actTouch(args []string) outcome {
	if len(args) != 1 {
		return usage("touch PATH")
	}
	f, err := os.Create(args[0])
	if err != nil {
		return failure("open", err)
	}
	f.Close()
	return ok("")
}

// actCreds prints the credentials the process runs with, from
// /proc/self/status, one "Name: value" per line after the ok line.
func actCreds(args []string) outcome {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return failure("read", err)
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		for _, k := range []string{"Uid:", "Gid:", "CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:", "NoNewPrivs:"} {
			if strings.HasPrefix(l, k) {
				lines = append(lines, strings.Join(strings.Fields(l), " "))
			}
		}
	}
	return outcome{"ok\n" + strings.Join(lines, "\n"), exitOK}
}

// actRunScript makes the probe usable as a #! interpreter: the kernel runs
// "probe run-script SCRIPT", and it prints that it ran.
func actRunScript(args []string) outcome {
	if len(args) != 1 {
		return usage("run-script SCRIPT")
	}
	return ok(fmt.Sprintf("ran %s", args[0]))
}

// actComm sets the process's command name (PR_SET_NAME, what records show
// as comm) to NAME, control characters and all: the kernel keeps the first
// 15 bytes as they are.
func actComm(args []string) outcome {
	if len(args) != 1 {
		return usage("comm NAME")
	}
	if err := unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(unsafe.StringData(args[0]+"\x00"))), 0, 0, 0); err != nil {
		return failure("prctl", err)
	}
	return ok("")
}

// actSeq runs actions one after another in this same process, separated by
// "+" arguments: "seq comm NAME + tcp ADDR + exec PATH". Each prints its
// line; the status is the last action's (an exec that works replaces the
// process, so it belongs last).
func actSeq(args []string) outcome {
	// One OS thread for every step: "comm" names only the calling thread
	// (PR_SET_NAME), and a later step on another thread would act under
	// the process's old name.
	runtime.LockOSThread()
	var steps [][]string
	for {
		i := slices.Index(args, "+")
		if i < 0 {
			steps = append(steps, args)
			break
		}
		steps, args = append(steps, args[:i]), args[i+1:]
	}
	var last outcome
	for i, step := range steps {
		if len(step) == 0 {
			return usage("seq ACTION [ARGS...] [+ ACTION [ARGS...]]...")
		}
		last = run(step)
		if i < len(steps)-1 && last.line != "" {
			fmt.Println(last.line)
		}
	}
	return last
}

// actOverwrite writes the bytes of SRC over DST in place (same inode, as
// an agent rewriting its own script would), then reports ok.
func actOverwrite(args []string) outcome {
	if len(args) != 2 {
		return usage("overwrite SRC DST")
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		return failure("read", err)
	}
	f, err := os.OpenFile(args[1], os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return failure("open", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return failure("write", err)
	}
	if err := f.Close(); err != nil {
		return failure("close", err)
	}
	return ok("")
}
