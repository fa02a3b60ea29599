package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// actHarden gives itself some of the restrictions an agent unit's settings
// give (as systemd would before starting the unit's program), then execs
// PROG: --nnp sets no_new_privs (NoNewPrivileges=), --seccomp installs a
// filter that allows everything (SystemCallFilter=, whose contents /proc
// does not show), --no-caps empties the capability bounding set
// (CapabilityBoundingSet=), --uid N runs as user and group N (User=). On
// success nothing is printed: PROG's output follows.
func actHarden(args []string) outcome {
	sep := -1
	for i, a := range args {
		if a == "--" {
			sep = i
			break
		}
	}
	if sep < 0 || sep == len(args)-1 {
		return usage("harden [--nnp] [--seccomp] [--no-caps] [--uid N] -- PROG [ARG...]")
	}
	var nnp, seccomp, noCaps bool
	uid := -1
	for i := 0; i < sep; i++ {
		switch args[i] {
		case "--nnp":
			nnp = true
		case "--seccomp":
			seccomp = true
		case "--no-caps":
			noCaps = true
		case "--uid":
			if i+1 >= sep {
				return usage("harden: --uid needs a number")
			}
			n, err := strconv.Atoi(args[i+1])
			if err != nil {
				return usage("harden: bad uid %q", args[i+1])
			}
			uid = n
			i++
		default:
			return usage("harden: unknown option %q", args[i])
		}
	}
	// no_new_privs, the bounding set and seccomp filters belong to a
	// thread: set them on the one that execs.
	runtime.LockOSThread()
	if noCaps {
		b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
		if err != nil {
			return failure("cap_last_cap", err)
		}
		last, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		for c := 0; c <= last; c++ {
			if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
				return failure("prctl PR_CAPBSET_DROP", err)
			}
		}
		if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
			return failure("prctl PR_CAP_AMBIENT", err)
		}
	}
	if uid >= 0 {
		// Changing to a non-zero uid also empties the permitted and
		// effective sets. Go applies these to every thread.
		if err := syscall.Setgroups(nil); err != nil {
			return failure("setgroups", err)
		}
		if err := syscall.Setgid(uid); err != nil {
			return failure("setgid", err)
		}
		if err := syscall.Setuid(uid); err != nil {
			return failure("setuid", err)
		}
	}
	if nnp {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return failure("prctl PR_SET_NO_NEW_PRIVS", err)
		}
	}
	if seccomp {
		allow := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW}}
		prog := unix.SockFprog{Len: 1, Filter: &allow[0]}
		if err := unix.Prctl(unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(&prog)), 0, 0); err != nil {
			return failure("prctl PR_SET_SECCOMP", err)
		}
	}
	prog := args[sep+1]
	if err := unix.Exec(prog, args[sep+1:], os.Environ()); err != nil {
		return failure("exec", err)
	}
	return outcome{}
}

// actUserns runs `probe ACTION ARG...` in a new user namespace (the first
// step of mounting over a path a rule names) and waits for it. It prints
// "ok userns" once the child runs.
func actUserns(args []string) outcome {
	if len(args) == 0 {
		return usage("userns ACTION [ARG...]")
	}
	self, err := os.Executable()
	if err != nil {
		return failure("executable", err)
	}
	c := exec.Command(self, args...)
	c.Stdout, c.Stderr = os.Stdout, os.Stderr
	c.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER}
	if err := c.Start(); err != nil {
		return failure("clone CLONE_NEWUSER", err)
	}
	fmt.Println("ok userns")
	_ = c.Wait()
	return outcome{}
}
