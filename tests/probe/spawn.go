package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The process actions check that Bridle's confinement follows a workload's
// descendants: a forked child, and a double-forked daemon in a new session
// that is no longer anyone's child in the workload.

// self is the probe's own binary, resolved through /proc/self/exe, so
// children run the very same file whatever the caller's PATH or cwd.
func self() (string, error) {
	return os.Executable()
}

// childStatus turns a finished child into the contract's exit status and,
// when a signal killed it, the "killed SIGNAME" line.
func childStatus(ps *os.ProcessState) (line string, code int) {
	if ws, isWS := ps.Sys().(syscall.WaitStatus); isWS && ws.Signaled() {
		sig := unix.Signal(ws.Signal())
		return "killed " + unix.SignalName(sig), 128 + int(sig)
	}
	return "", ps.ExitCode()
}

// startFailure reports a failure to fork/exec the probe itself.
func startFailure(err error) outcome {
	return failure("fork/exec", err)
}

// actSpawn runs "probe ACTION ARGS..." as a child sharing our stdout, so the
// child's line and status pass through unchanged.
func actSpawn(args []string) outcome {
	if len(args) == 0 {
		return usage("spawn ACTION [ARGS...]")
	}
	exe, err := self()
	if err != nil {
		return failure("executable", err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return startFailure(err)
	}
	_ = cmd.Wait() // the status is in ProcessState either way
	line, code := childStatus(cmd.ProcessState)
	return outcome{line, code}
}

// actDaemonize does the classic double fork: an intermediate probe
// (__daemon) calls setsid, starts the grandchild (__report) and exits at
// once, so the grandchild is reparented away from this process. The
// grandchild runs ACTION and writes its result to RESULTFILE, which the test
// polls.
func actDaemonize(args []string) outcome {
	if len(args) < 2 {
		return usage("daemonize RESULTFILE ACTION [ARGS...]")
	}
	exe, err := self()
	if err != nil {
		return failure("executable", err)
	}
	var out bytes.Buffer
	cmd := exec.Command(exe, append([]string{"__daemon"}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	if err := cmd.Start(); err != nil {
		return startFailure(err)
	}
	_ = cmd.Wait()
	line, code := childStatus(cmd.ProcessState)
	if line != "" {
		return outcome{line, code}
	}
	got := strings.TrimSpace(out.String())
	if code == 0 && got == "ok" {
		return ok("daemonized")
	}
	// The intermediate could not start the grandchild: pass its report on.
	return outcome{got, code}
}

// actDaemonIntermediate is the middle process of daemonize.
func actDaemonIntermediate(args []string) outcome {
	if len(args) < 2 {
		return usage("__daemon RESULTFILE ACTION [ARGS...]")
	}
	if _, err := unix.Setsid(); err != nil {
		return failure("setsid", err)
	}
	exe, err := self()
	if err != nil {
		return failure("executable", err)
	}
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return failure("open", err)
	}
	defer devnull.Close()
	// The grandchild must not hold our stdout: the top-level probe reads it
	// to EOF, and the test reads the top-level's.
	cmd := exec.Command(exe, append([]string{"__report"}, args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
	if err := cmd.Start(); err != nil {
		return startFailure(err)
	}
	// Exit without waiting: that is what orphans the grandchild.
	return ok("")
}

// actReport runs "probe ACTION ARGS..." as its child and writes
// "<stdout>\n<status>\n" to RESULTFILE atomically (temp file, then rename),
// where status is the exit code or "killed SIGNAME". For one-line actions the
// file is exactly the action's line followed by its status.
func actReport(args []string) outcome {
	if len(args) < 2 {
		return usage("__report RESULTFILE ACTION [ARGS...]")
	}
	resultFile, rest := args[0], args[1:]
	var result string
	exe, err := self()
	if err == nil {
		var out bytes.Buffer
		cmd := exec.Command(exe, rest...)
		cmd.Stdout = &out
		if err = cmd.Start(); err == nil {
			_ = cmd.Wait()
			line, code := childStatus(cmd.ProcessState)
			status := line
			if status == "" {
				status = strconv.Itoa(code)
			}
			result = strings.TrimRight(out.String(), "\n") + "\n" + status + "\n"
		}
	}
	if err != nil {
		o := startFailure(err)
		result = o.line + "\n" + strconv.Itoa(o.code) + "\n"
	}
	tmp := fmt.Sprintf("%s.tmp.%d", resultFile, os.Getpid())
	if err := os.WriteFile(tmp, []byte(result), 0o644); err != nil {
		return failure("write", err)
	}
	if err := os.Rename(tmp, resultFile); err != nil {
		return failure("rename", err)
	}
	return ok("")
}

// actSleep keeps a workload alive for SECONDS (fractions allowed).
func actSleep(args []string) outcome {
	if len(args) != 1 {
		return usage("sleep SECONDS")
	}
	secs, err := strconv.ParseFloat(args[0], 64)
	if err != nil || secs < 0 {
		return usage("sleep: bad SECONDS %q", args[0])
	}
	time.Sleep(time.Duration(secs * float64(time.Second)))
	return ok("")
}
