package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The escape actions are what a hostile agent tries against what lies
// outside its workload: the terminal it was started from, processes of its
// own uid that Bridle does not confine, its cgroup membership. Each reports
// whether the kernel let it through.

// actTIOCSTI pushes "echo pwned\n" into the input of the terminal behind
// fd 0, 1, 2 and /dev/tty, as if typed there: on a shared terminal the
// invoker's shell reads it after the workload exits. One "NAME verdict"
// line per target follows the ok line, then the process's controlling
// terminal (tty_nr of /proc/self/stat) and session.
func actTIOCSTI(args []string) outcome {
	if len(args) != 0 {
		return usage("tiocsti")
	}
	lines := []string{"ok"}
	push := func(name string, fd int) {
		for _, c := range []byte("echo pwned\n") {
			if err := unix.IoctlSetPointerInt(fd, unix.TIOCSTI, int(c)); err != nil {
				lines = append(lines, name+" "+failure("ioctl", err).line)
				return
			}
		}
		lines = append(lines, name+" ok")
	}
	for fd := 0; fd <= 2; fd++ {
		push(fmt.Sprintf("fd%d", fd), fd)
	}
	if tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0); err != nil {
		lines = append(lines, "/dev/tty "+failure("open", err).line)
	} else {
		push("/dev/tty", int(tty.Fd()))
		tty.Close()
	}
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return failure("read", err)
	}
	// pid (comm) state ppid pgrp session tty_nr ...; comm may hold spaces.
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	lines = append(lines, "session "+f[3], "tty_nr "+f[4])
	return outcome{strings.Join(lines, "\n"), exitOK}
}

// actAsk is an interactive command: it asks a question on stdout, reads
// one line from stdin and answers "hello LINE", then exits with CODE. At
// end of input it prints "eof" and exits 5.
func actAsk(args []string) outcome {
	if len(args) != 1 {
		return usage("ask CODE")
	}
	code, err := strconv.Atoi(args[0])
	if err != nil {
		return usage("ask: bad CODE %q", args[0])
	}
	fmt.Print("name? ")
	line, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if line == "" && err != nil {
		return outcome{"\neof", 5}
	}
	return outcome{"\nhello " + strings.TrimRight(line, "\r\n"), code}
}

// actWinsize prints the terminal's size as "size ROWS COLS", waits up to
// SECONDS for SIGWINCH and prints the new size.
func actWinsize(args []string) outcome {
	if len(args) != 1 {
		return usage("winsize SECONDS")
	}
	secs, err := strconv.ParseFloat(args[0], 64)
	if err != nil {
		return usage("winsize: bad SECONDS %q", args[0])
	}
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	size := func() string {
		ws, err := unix.IoctlGetWinsize(1, unix.TIOCGWINSZ)
		if err != nil {
			return failure("ioctl", err).line
		}
		return fmt.Sprintf("size %d %d", ws.Row, ws.Col)
	}
	fmt.Println(size())
	select {
	case <-winch:
		return outcome{size(), exitOK}
	case <-time.After(time.Duration(secs * float64(time.Second))):
		return outcome{"error ETIMEDOUT", exitError}
	}
}

// marker is the victim's memory that an attacker tries to overwrite. An
// array, so it lives in writable data at a fixed address.
var marker = [8]byte{'i', 'n', 't', 'a', 'c', 't'}

// actVictim plays an unconfined process of the workload's uid: it prints
// "ok ADDR" (the address of its marker), waits for its stdin to close and
// prints the marker as it is then.
func actVictim(args []string) outcome {
	if len(args) != 0 {
		return usage("victim")
	}
	fmt.Printf("ok %#x\n", uintptr(unsafe.Pointer(&marker[0])))
	_, _ = bufio.NewReader(os.Stdin).ReadString(0)
	return outcome{strings.TrimRight(string(marker[:]), "\x00"), exitOK}
}

func pidArg(s string) (int, bool) {
	pid, err := strconv.Atoi(s)
	return pid, err == nil && pid > 0
}

// actPtrace attaches to PID (PTRACE_ATTACH, or PTRACE_SEIZE with seize),
// then detaches.
func actPtrace(seize bool) action {
	return func(args []string) outcome {
		pid, good := pidArg(strings.Join(args, " "))
		if !good {
			return usage("ptrace-attach|ptrace-seize PID")
		}
		// The tracer is a thread: attach, wait and detach from the same one.
		runtime.LockOSThread()
		if seize {
			if err := unix.PtraceSeize(pid); err != nil {
				return failure("ptrace", err)
			}
			_ = unix.PtraceInterrupt(pid)
		} else if err := unix.PtraceAttach(pid); err != nil {
			return failure("ptrace", err)
		}
		var ws unix.WaitStatus
		_, _ = unix.Wait4(pid, &ws, unix.WALL, nil)
		_ = unix.PtraceDetach(pid)
		return ok("attached")
	}
}

// actVMWrite writes "PWNED" at ADDR in PID's memory with process_vm_writev.
func actVMWrite(args []string) outcome {
	pid, addr, o := pidAddr("vm-write", args)
	if pid == 0 {
		return o
	}
	data := []byte("PWNED")
	local := []unix.Iovec{{Base: &data[0], Len: uint64(len(data))}}
	remote := []unix.RemoteIovec{{Base: addr, Len: len(data)}}
	if _, err := unix.ProcessVMWritev(pid, local, remote, 0); err != nil {
		return failure("process_vm_writev", err)
	}
	return ok("written")
}

// actMemWrite writes "PWNED" at ADDR through /proc/PID/mem.
func actMemWrite(args []string) outcome {
	pid, addr, o := pidAddr("mem-write", args)
	if pid == 0 {
		return o
	}
	f, err := os.OpenFile(fmt.Sprintf("/proc/%d/mem", pid), os.O_RDWR, 0)
	if err != nil {
		return failure("open", err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("PWNED"), int64(addr)); err != nil {
		return failure("pwrite", err)
	}
	return ok("written")
}

func pidAddr(name string, args []string) (int, uintptr, outcome) {
	if len(args) == 2 {
		pid, good := pidArg(args[0])
		addr, err := strconv.ParseUint(args[1], 0, 64)
		if good && err == nil {
			return pid, uintptr(addr), outcome{}
		}
	}
	return 0, 0, usage("%s PID ADDR", name)
}

// actPidfdGetfd takes a copy of PID's fd 1 with pidfd_open + pidfd_getfd.
func actPidfdGetfd(args []string) outcome {
	pid, good := pidArg(strings.Join(args, " "))
	if !good {
		return usage("pidfd-getfd PID")
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return failure("pidfd_open", err)
	}
	defer unix.Close(pidfd)
	fd, err := unix.PidfdGetfd(pidfd, 1, 0)
	if err != nil {
		return failure("pidfd_getfd", err)
	}
	unix.Close(fd)
	return ok("got fd")
}

// actKill sends signal SIGNUM (0: only checks) to PID.
func actKill(args []string) outcome {
	if len(args) != 2 {
		return usage("kill PID SIGNUM")
	}
	pid, good := pidArg(args[0])
	sig, err := strconv.Atoi(args[1])
	if !good || err != nil {
		return usage("kill PID SIGNUM")
	}
	if err := unix.Kill(pid, unix.Signal(sig)); err != nil {
		return failure("kill", err)
	}
	return ok("signalled")
}

// actCgroupMove tries to move this process into another cgroup: it writes
// its cgroup (from /proc/self/cgroup) to DIR/ready, waits for DIR/go to
// name the target cgroup directory, and writes its pid into that cgroup's
// cgroup.procs. After the verdict line it prints the cgroup it is in.
func actCgroupMove(args []string) outcome {
	if len(args) != 1 {
		return usage("cgroup-move DIR")
	}
	dir := args[0]
	own := func() string {
		b, _ := os.ReadFile("/proc/self/cgroup")
		for _, l := range strings.Split(string(b), "\n") {
			if rest, found := strings.CutPrefix(l, "0::"); found {
				return rest
			}
		}
		return ""
	}
	if err := os.WriteFile(filepath.Join(dir, "ready"), []byte(own()), 0o644); err != nil {
		return failure("write", err)
	}
	var target []byte
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var err error
		// The test writes the file after creating it: an empty read is
		// one made in between.
		if target, err = os.ReadFile(filepath.Join(dir, "go")); err == nil && len(strings.TrimSpace(string(target))) > 0 {
			break
		}
		if time.Now().After(deadline) {
			return outcome{"error ETIMEDOUT", exitError}
		}
	}
	procs := filepath.Join(strings.TrimSpace(string(target)), "cgroup.procs")
	o := ok("moved")
	if f, err := os.OpenFile(procs, os.O_WRONLY, 0); err != nil {
		o = failure("open", err)
	} else {
		if _, err := f.WriteString("0"); err != nil {
			o = failure("write", err)
		}
		f.Close()
	}
	o.line += "\ncgroup " + own()
	return o
}

// actJobs is a job-control shell with one job, for tests of what a
// workload's terminal does on Ctrl-Z. Started as a session leader with its
// terminal on fd 0, it runs COMMAND in its own process group in the
// foreground. When the job stops it takes the terminal back, writes
// "stopped SIGNAME" to fd 3 and waits for SIGUSR1 ("fg"): then it gives the
// terminal back to the job and continues it. It exits with the job's status.
func actJobs(args []string) outcome {
	if len(args) == 0 {
		return usage("jobs COMMAND [ARG...]")
	}
	// As shells do: setting the foreground from the background is allowed
	// when SIGTTOU is ignored.
	signal.Ignore(syscall.SIGTTOU)
	fg := make(chan os.Signal, 1)
	signal.Notify(fg, syscall.SIGUSR1)
	report := os.NewFile(3, "report")
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Foreground: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		return startFailure(err)
	}
	pid := cmd.Process.Pid
	for {
		var ws unix.WaitStatus
		if _, err := unix.Wait4(pid, &ws, unix.WUNTRACED, nil); err == unix.EINTR {
			continue
		} else if err != nil {
			return failure("wait4", err)
		}
		switch {
		case ws.Stopped():
			_ = unix.IoctlSetPointerInt(0, unix.TIOCSPGRP, unix.Getpgrp())
			fmt.Fprintf(report, "stopped %s\n", unix.SignalName(ws.StopSignal()))
			<-fg
			_ = unix.IoctlSetPointerInt(0, unix.TIOCSPGRP, pid)
			_ = unix.Kill(-pid, unix.SIGCONT)
		case ws.Signaled():
			return outcome{"", 128 + int(ws.Signal())}
		default:
			return outcome{"", ws.ExitStatus()}
		}
	}
}
