package workload

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// Stdio is the workload's standard input, output and error. Those of the
// invoker that are not terminals (pipes, files) are passed on as they are.
// Those that are get a pty of the workload's own instead, which bridle
// relays to the invoker's terminal, as sudo's use_pty and systemd-run --pty
// do: a workload holding the invoker's terminal could type into it
// (TIOCSTI) and have the invoker's shell run that after bridle exits.
type Stdio struct {
	files    [3]*os.File // the workload's fds 0, 1 and 2
	*console             // nil when none of the invoker's is a terminal
}

// console is the relay between the invoker's terminal and the workload's
// pty.
type console struct {
	master, slave *os.File
	in            *os.File // the invoker's terminal to read from: stdin, or nil when it is no terminal
	out           *os.File // the invoker's terminal the workload's output goes to
	sizeFrom      *os.File // the invoker's terminal whose window size the pty takes
	ctty          int      // the workload's fd that is its pty

	raw    atomic.Bool // the invoker's terminal is in raw mode
	mu     sync.Mutex
	saved  *term.State // its settings before raw mode
	closed bool        // the relay is over: raw mode never again
	wake   [2]int      // a pipe that stops the input relay
	winch  chan os.Signal
	inDone chan struct{}
	// winchDone is closed when the window size follower has stopped.
	winchDone chan struct{}
	output    chan struct{} // closed when the workload's end of the pty is closed everywhere
	once      sync.Once
}

// OpenStdio prepares the workload's stdio from the invoker's. A pty, when
// one is needed, belongs to the workload's user, as after a login, so that
// programs reopening their terminal by name (ttyname) can.
func OpenStdio(stdin, stdout, stderr *os.File, owner Credentials) (*Stdio, error) {
	s := &Stdio{files: [3]*os.File{stdin, stdout, stderr}}
	var terminals []int
	for i, f := range s.files {
		if f != nil && term.IsTerminal(int(f.Fd())) {
			terminals = append(terminals, i)
		}
	}
	if len(terminals) == 0 {
		return s, nil
	}
	master, slave, err := openPty()
	if err != nil {
		return nil, fmt.Errorf("workload: open a pty for the workload: %w", err)
	}
	c := &console{master: master, slave: slave, ctty: terminals[0], sizeFrom: s.files[terminals[0]],
		wake: [2]int{-1, -1}}
	for _, i := range terminals {
		s.files[i] = slave
	}
	if terminals[0] == 0 {
		c.in = stdin
	}
	// Output goes to the terminal the invoker reads: stdout, else stderr,
	// else the input terminal itself (only the echo of what is typed).
	for _, i := range []int{1, 2, 0} {
		if isIn(i, terminals) {
			c.out = []*os.File{stdin, stdout, stderr}[i]
			break
		}
	}
	// The pty starts as the invoker's terminal is: its settings (erase
	// character, UTF-8 input) and size.
	if tio, err := unix.IoctlGetTermios(int(c.sizeFrom.Fd()), unix.TCGETS); err == nil {
		_ = unix.IoctlSetTermios(int(slave.Fd()), unix.TCSETS, tio)
	}
	c.resize()
	if err := slave.Chown(int(owner.UID), -1); err != nil {
		c.closeFiles()
		return nil, fmt.Errorf("workload: give the pty to %s: %w", owner.Name, err)
	}
	s.console = c
	return s, nil
}

// openPty opens a pty pair whose master end bridle reads and writes
// through Go's poller: a read waiting for the workload's output then ends
// when the master is closed. (pty.Open hands the master over in blocking
// mode, and a blocked read would outlive Close.)
func openPty() (master, slave *os.File, err error) {
	m, slave, err := pty.Open()
	if err != nil {
		return nil, nil, err
	}
	defer m.Close()
	fd, err := unix.FcntlInt(m.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err == nil {
		err = unix.SetNonblock(fd, true)
	}
	if err != nil {
		slave.Close()
		return nil, nil, err
	}
	return os.NewFile(uintptr(fd), m.Name()), slave, nil
}

func isIn(i int, list []int) bool {
	for _, v := range list {
		if v == i {
			return true
		}
	}
	return false
}

// Describe says how the workload's terminal is set up, for -v.
func (s *Stdio) Describe() string {
	if s.console == nil {
		return "own session, no terminal"
	}
	return "own session and own pty, relayed by bridle"
}

// Writer wraps w, where bridle prints for a person, so that its lines stay
// lines while the invoker's terminal is in raw mode (no output processing:
// "\n" no longer returns the carriage).
func (s *Stdio) Writer(w io.Writer) io.Writer {
	if s.console == nil {
		return w
	}
	if f, isFile := w.(*os.File); !isFile || !term.IsTerminal(int(f.Fd())) {
		return w
	}
	return crlfWriter{w: w, raw: &s.raw}
}

type crlfWriter struct {
	w   io.Writer
	raw *atomic.Bool
}

func (c crlfWriter) Write(p []byte) (int, error) {
	if !c.raw.Load() {
		return c.w.Write(p)
	}
	if _, err := c.w.Write(bytes.ReplaceAll(p, []byte("\n"), []byte("\r\n"))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// beforeStart puts the invoker's terminal in raw mode: from here on every
// key, Ctrl-C and Ctrl-Z included, goes to the workload's pty, whose line
// discipline turns them into input and signals for the workload.
func (s *Stdio) beforeStart() error {
	if s.console == nil || s.in == nil {
		return nil
	}
	return s.makeRaw()
}

// afterStart starts relaying once the workload holds its end of the pty.
func (s *Stdio) afterStart() error {
	c := s.console
	if c == nil {
		return nil
	}
	// The workload has its own copy: the master reads EOF (EIO) once the
	// workload's last process holding it has exited.
	c.slave.Close()
	c.output = make(chan struct{})
	go c.relayOutput()
	c.winch = make(chan os.Signal, 1)
	c.winchDone = make(chan struct{})
	signal.Notify(c.winch, syscall.SIGWINCH)
	go func() {
		defer close(c.winchDone)
		for range c.winch {
			c.resize()
		}
	}()
	if c.in == nil {
		return nil
	}
	if err := unix.Pipe2(c.wake[:], unix.O_CLOEXEC); err != nil {
		return fmt.Errorf("workload: terminal relay: %w", err)
	}
	c.inDone = make(chan struct{})
	go c.relayInput()
	return nil
}

// Close ends the relay once the workload has exited: what it wrote is
// shown, and the invoker's terminal is as it was before. Safe to call more
// than once and on every path, started or not.
func (s *Stdio) Close() {
	if s == nil || s.console == nil {
		return
	}
	c := s.console
	c.once.Do(func() {
		if c.output != nil {
			// Its last output, unless someone outside kept the workload's
			// end of the pty open.
			select {
			case <-c.output:
			case <-time.After(2 * time.Second):
			}
		}
		if c.winch != nil {
			signal.Stop(c.winch)
			close(c.winch)
			<-c.winchDone
		}
		if c.inDone != nil {
			_, _ = unix.Write(c.wake[1], []byte{0})
			select {
			case <-c.inDone:
			case <-time.After(time.Second): // blocked writing to the pty: Close below ends that
			}
		}
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		c.flushReplies()
		c.restore()
		c.closeFiles()
	})
}

func (c *console) closeFiles() {
	c.master.Close()
	c.slave.Close()
	for _, fd := range c.wake {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

func (c *console) makeRaw() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	st, err := term.MakeRaw(int(c.in.Fd()))
	if err != nil {
		return fmt.Errorf("workload: put the terminal in raw mode: %w", err)
	}
	c.saved = st
	c.raw.Store(true)
	return nil
}

// flushReplies drops what the invoker's terminal sent after the relay
// stopped reading: a workload that ends with a query sequence (cursor
// position, device attributes) gets its answer typed into the shell that
// ran bridle otherwise. Answers come within a few milliseconds; the wait
// is paid once, at exit, and only when the terminal was relayed.
func (c *console) flushReplies() {
	if !c.raw.Load() {
		return
	}
	time.Sleep(50 * time.Millisecond)
	_ = unix.IoctlSetInt(int(c.in.Fd()), unix.TCFLSH, unix.TCIFLUSH)
}

// restore gives the invoker's terminal its settings back.
func (c *console) restore() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.saved == nil {
		return
	}
	c.raw.Store(false)
	_ = term.Restore(int(c.in.Fd()), c.saved)
	c.saved = nil
}

// resize gives the pty the invoker's terminal's window size; the kernel
// tells the workload's foreground process group (SIGWINCH).
func (c *console) resize() {
	ws, err := unix.IoctlGetWinsize(int(c.sizeFrom.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		return
	}
	// Through the poller's own hold on the master: never Fd(), which
	// would turn it back to blocking mode.
	if rc, err := c.master.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _ = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, ws) })
	}
}

// suspend is Ctrl-Z: the workload's command has stopped, so bridle gives
// the terminal back and stops itself, and the invoker's shell takes over.
// It returns when bridle is continued (fg); the caller then continues the
// command. Where no job control can continue bridle (an orphaned process
// group) the kernel discards the stop and the command goes on at once.
func (c *console) suspend() {
	c.restore()
	// Sent to this thread, the stop takes it before it returns from the
	// call: nothing below runs until bridle is continued. (Sent to the
	// process, another thread may take it while this one goes on.)
	runtime.LockOSThread()
	_ = unix.Tgkill(os.Getpid(), unix.Gettid(), unix.SIGTSTP)
	runtime.UnlockOSThread()
	if c.in != nil {
		// In the background (bg) this stops bridle again (SIGTTOU) until it
		// is in the foreground, as for any program using the terminal.
		_ = c.makeRaw()
	}
	c.resize()
}

// relayOutput copies what the workload writes to its pty to the invoker's
// terminal until the workload's end is closed everywhere. A terminal that
// fails (hung up) no longer gets it, but the pty is still drained so the
// workload never blocks writing.
func (c *console) relayOutput() {
	defer close(c.output)
	var w io.Writer = c.out
	buf := make([]byte, 32*1024)
	for {
		n, err := c.master.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				w = io.Discard
			}
		}
		if err != nil {
			return
		}
	}
}

// relayInput copies what is typed to the workload's pty. It reads only
// when input is there (poll), so that once the relay stops, nothing the
// invoker types afterwards is taken from their shell.
func (c *console) relayInput() {
	defer close(c.inDone)
	in := int(c.in.Fd())
	buf := make([]byte, 4096)
	for {
		fds := []unix.PollFd{{Fd: int32(in), Events: unix.POLLIN}, {Fd: int32(c.wake[0]), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		if fds[1].Revents != 0 {
			return
		}
		if fds[0].Revents == 0 {
			continue
		}
		n, err := unix.Read(in, buf)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		if n <= 0 || err != nil {
			return // the invoker's terminal hung up; bridle gets SIGHUP
		}
		if _, err := c.master.Write(buf[:n]); err != nil {
			return
		}
	}
}
