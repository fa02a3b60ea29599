package workload

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// forwarded are the signals stage 1 passes on to COMMAND: those bridle
// passes on, and SIGHUP from the pty when bridle's end of it closes. As
// the init of its PID namespace it gets none it has no handler for.
var forwarded = []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT,
	syscall.SIGUSR1, syscall.SIGUSR2}

// Init is stage 1 (see Start): the init of the workload's PID namespace.
// It returns the process's exit status: COMMAND's, or 126 when COMMAND
// could not be run, the reason then sent to bridle (or printed when bridle
// is gone).
func Init(args []string) int {
	// fd 3 is bridle's control channel; COMMAND must not inherit it.
	ctl := os.NewFile(3, "bridle control")
	syscall.CloseOnExec(3)
	status, err := runInit(args, ctl)
	if err != nil {
		if _, werr := ctl.Write([]byte("fail " + err.Error())); werr != nil {
			fmt.Fprintln(os.Stderr, "bridle:", err)
		}
		return 126
	}
	return status
}

// runInit takes "MODE ARGV0 SHIM-ARGS...": MODE "tty" when the workload's
// stdio is its own pty, "-" otherwise.
func runInit(args []string, ctl *os.File) (int, error) {
	if len(args) < 3 || args[2] != ShimArg {
		return 0, errors.New("workload: init: bad arguments")
	}
	tty := args[0] == "tty"
	if os.Getpid() != 1 {
		return 0, fmt.Errorf("workload: init is pid %d, not the init of a new PID namespace", os.Getpid())
	}
	if err := privateProc(); err != nil {
		return 0, err
	}
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, forwarded...)

	files, err := shimFiles()
	if err != nil {
		return 0, err
	}
	attr := &os.ProcAttr{Files: files, Sys: &syscall.SysProcAttr{}}
	if tty {
		// COMMAND's process group is the pty's foreground: the line
		// discipline sends Ctrl-C, Ctrl-\ and Ctrl-Z to it, and not to
		// this process. For Foreground, Ctty is a descriptor of this one.
		for fd := 0; fd <= 2; fd++ {
			if term.IsTerminal(fd) {
				attr.Sys.Foreground, attr.Sys.Ctty = true, fd
				break
			}
		}
		if !attr.Sys.Foreground {
			return 0, errors.New("workload: init: the workload's pty is not on its stdio")
		}
	}
	// /proc/self/exe: this very binary, whatever its path is called.
	cmd, err := os.StartProcess("/proc/self/exe", args[1:], attr)
	if err != nil {
		return 0, fmt.Errorf("workload: start the shim: %w", err)
	}
	// The shim holds its own copy of the supervisor's socket now; this
	// init keeps none, so bridle sees the socket close if the shim dies
	// before handing its listener over.
	for _, f := range files[3:] {
		if f != nil {
			_ = f.Close()
		}
	}

	exits := make(chan exited, 16)
	go reap(exits, tty)
	conts := make(chan struct{}, 1)
	go func() {
		buf := make([]byte, 64)
		for {
			// EOF when bridle is gone: the workload goes on, confined by the
			// kernel, and this init with it.
			n, err := ctl.Read(buf)
			if n == 0 || err != nil {
				return
			}
			if string(buf[:n]) == "cont" {
				conts <- struct{}{}
			}
		}
	}()
	for {
		select {
		case sig := <-signals:
			_ = cmd.Signal(sig)
		case <-conts:
			// The whole job, as a shell's fg does; COMMAND alone if it left
			// its process group.
			if unix.Kill(-cmd.Pid, unix.SIGCONT) != nil {
				_ = cmd.Signal(syscall.SIGCONT)
			}
		case e := <-exits:
			if e.pid != cmd.Pid {
				continue // an orphan reparented to this init, reaped
			}
			if e.status.Stopped() {
				_, _ = ctl.Write([]byte("stop " + strconv.Itoa(int(e.status.StopSignal()))))
				continue
			}
			status := e.status.ExitStatus()
			if e.status.Signaled() {
				status = 128 + int(e.status.Signal())
			}
			// The kernel ends whatever is left in the namespace when its
			// init exits; bridle tells the user how many there were.
			_, _ = ctl.Write([]byte("left " + strconv.Itoa(leftovers())))
			return status, nil
		}
	}
}

// shimFiles are the descriptors the shim inherits: stdio and, when bridle
// supervises the seccomp filter, the descriptor SupervisorEnv names, at the
// same number. The control channel (fd 3) is never passed on.
func shimFiles() ([]*os.File, error) {
	files := []*os.File{os.Stdin, os.Stdout, os.Stderr}
	text, ok := os.LookupEnv(SupervisorEnv)
	if !ok {
		return files, nil
	}
	fd, err := strconv.Atoi(text)
	if err != nil || fd <= 3 || fd > 64 {
		return nil, fmt.Errorf("workload: init: %s=%q: not a descriptor bridle passes", SupervisorEnv, text)
	}
	// Not inherited by anything this init starts but the shim.
	syscall.CloseOnExec(fd)
	for len(files) < fd {
		files = append(files, nil)
	}
	return append(files, os.NewFile(uintptr(fd), "seccomp supervisor")), nil
}

type exited struct {
	pid    int
	status unix.WaitStatus
}

// reap waits for every child of this init: COMMAND and the orphans the
// namespace reparents here. With stops, COMMAND's Ctrl-Z is reported too.
func reap(exits chan<- exited, stops bool) {
	opts := 0
	if stops {
		opts = unix.WUNTRACED
	}
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, opts, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return
		}
		exits <- exited{pid, ws}
	}
}

// leftovers counts the processes in the namespace besides this init,
// after reaping those that already exited.
func leftovers() int {
	for {
		var ws unix.WaitStatus
		if pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil); pid <= 0 || err != nil {
			break
		}
	}
	entries, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid != 1 {
			n++
		}
	}
	return n
}
