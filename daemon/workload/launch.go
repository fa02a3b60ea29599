package workload

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ShimArg is the hidden first argument that makes the bridle binary act as
// the launch shim (see Shim).
const ShimArg = "__bridle-exec"

// Credentials is who the workload runs as.
type Credentials struct {
	UID, GID uint32
	Groups   []uint32
	Name     string
}

// LookupUser resolves a user name or numeric id, with its groups.
func LookupUser(name string) (Credentials, error) {
	u, err := user.Lookup(name)
	if err != nil {
		var uerr error
		u, uerr = user.LookupId(name)
		if uerr != nil {
			return Credentials{}, fmt.Errorf("workload: unknown user %q", name)
		}
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	c := Credentials{UID: uint32(uid), GID: uint32(gid), Name: u.Username}
	gids, err := u.GroupIds()
	if err == nil {
		for _, g := range gids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				c.Groups = append(c.Groups, uint32(n))
			}
		}
	}
	return c, nil
}

// InitArg is the hidden first argument that makes the bridle binary act as
// the init of the workload's PID namespace (stage 1, see Init).
const InitArg = "__bridle-init"

// ErrRootWorkload refuses uid 0 as the workload's user. Without any
// capability, uid 0 still owns every root-owned file on the host (e.g.
// /etc/cron.d) and the cgroup.procs files it could move itself out with:
// no confinement of Bridle's holds it.
var ErrRootWorkload = errors.New("a workload may not run as uid 0: without capabilities it still owns root's files (/etc/cron.d, ...) and its own cgroup membership, which no confinement holds; pass --user with an unprivileged user")

// Spec is one workload process to launch.
type Spec struct {
	Self   string // the bridle binary, run again as stage 1 and stage 2
	Cgroup Cgroup
	Creds  Credentials
	Path   string   // COMMAND, resolved
	Argv   []string // COMMAND's arguments, argv[0] included
	Stdio  *Stdio
	// Supervisor, if set, receives the seccomp filter's listener from the
	// shim and records what the filter refuses (see Sandbox).
	Supervisor *Supervisor
}

// Namespaces and Isolation say what every workload Start launches is kept
// from, for -v and bridle status.
const (
	Namespaces = "own PID, mount and IPC namespaces: a private /proc, no process outside it addressable, " +
		"cgroup file systems read-only"
	Isolation = "own session (a pty of its own when interactive); " + Namespaces + "; uid 0 refused"
)

// CheckIsolation tells whether this kernel has the namespaces every
// workload is started in; without them bridle run refuses to start one.
func CheckIsolation() error {
	for _, ns := range []string{"pid", "mnt", "ipc"} {
		if _, err := os.Stat("/proc/self/ns/" + ns); err != nil {
			return fmt.Errorf("no %s namespaces on this kernel (%w): bridle run cannot start a workload", ns, err)
		}
	}
	return nil
}

// Process is a launched workload: stage 1, the init of the workload's PID
// namespace, which runs COMMAND and exits with its status.
type Process struct {
	cmd   *exec.Cmd
	ctl   *os.File // control channel to stage 1 (see Init)
	stdio *Stdio
	done  chan struct{} // stage 1 closed the control channel
	left  int           // processes still in the namespace when COMMAND exited
	fail  string        // why stage 1 could not run COMMAND
}

// Start launches the workload in three stages, all this binary until the
// last exec:
//
//  1. bridle-init, started here in new PID, mount and IPC namespaces and
//     its own session (with the workload's pty as its controlling
//     terminal), mounts a private /proc, starts stage 2 and stays the
//     namespace's init: it reaps, passes signals on to COMMAND and exits
//     with COMMAND's status, which ends every process left in the
//     namespace. It stays root and outside the workload's cgroup: its own
//     exec and stage 2's are not the workload's to be judged, and the
//     workload (another uid, no capabilities) can neither trace nor signal
//     it.
//  2. The shim (Shim) joins the workload's cgroup, makes the cgroup file
//     systems read-only, sheds every privilege and execs COMMAND: the one
//     exec inside the workload, judged by the exec check like any other.
func Start(s Spec) (*Process, error) {
	if s.Creds.UID == 0 {
		return nil, ErrRootWorkload
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("workload: control channel: %w", err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "bridle-init control"), os.NewFile(uintptr(fds[1]), "bridle-init control")
	defer theirs.Close()

	mode := "-"
	if s.Stdio.console != nil {
		mode = "tty"
	}
	args := append([]string{InitArg, mode, s.Argv[0]}, shimArgs(s)...)
	cmd := exec.Command(s.Self, args...)
	cmd.Args[0] = "bridle-init"
	cmd.Stdin, cmd.Stdout, cmd.Stderr = s.Stdio.files[0], s.Stdio.files[1], s.Stdio.files[2]
	cmd.ExtraFiles = []*os.File{theirs} // fd 3
	if s.Supervisor != nil {
		s.Supervisor.Attach(cmd) // fd 4, named in the environment for the shim
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: unix.CLONE_NEWPID | unix.CLONE_NEWNS | unix.CLONE_NEWIPC,
		// Never the invoker's session: no way back to its terminal.
		Setsid: true,
	}
	if c := s.Stdio.console; c != nil {
		cmd.SysProcAttr.Setctty, cmd.SysProcAttr.Ctty = true, c.ctty
	}
	if err := s.Stdio.beforeStart(); err != nil {
		ours.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		ours.Close()
		s.Stdio.Close()
		return nil, fmt.Errorf("workload: start: %w", err)
	}
	p := &Process{cmd: cmd, ctl: ours, stdio: s.Stdio, done: make(chan struct{})}
	go p.control()
	if err := s.Stdio.afterStart(); err != nil {
		_ = cmd.Process.Kill()
		_ = p.Wait()
		return nil, err
	}
	return p, nil
}

func shimArgs(s Spec) []string {
	groups := make([]string, len(s.Creds.Groups))
	for i, g := range s.Creds.Groups {
		groups[i] = strconv.FormatUint(uint64(g), 10)
	}
	args := []string{ShimArg, s.Cgroup.Path,
		strconv.FormatUint(uint64(s.Creds.UID), 10),
		strconv.FormatUint(uint64(s.Creds.GID), 10),
		strings.Join(groups, ","), s.Path, "--"}
	return append(args, s.Argv...)
}

// control follows stage 1's messages: "stop SIGNUM" when COMMAND was
// stopped (Ctrl-Z), answered with "cont" once bridle is continued;
// "left N" when COMMAND exited; "fail REASON" when it could not run.
func (p *Process) control() {
	defer close(p.done)
	buf := make([]byte, 4096)
	for {
		n, err := p.ctl.Read(buf)
		if n == 0 || err != nil {
			return
		}
		verb, arg, _ := strings.Cut(string(buf[:n]), " ")
		switch verb {
		case "stop":
			if p.stdio.console != nil {
				p.stdio.suspend()
			}
			_, _ = p.ctl.Write([]byte("cont"))
		case "left":
			p.left, _ = strconv.Atoi(arg)
		case "fail":
			p.fail = arg
		}
	}
}

// Signal passes sig on to COMMAND (through stage 1).
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Wait waits for COMMAND's end. Its error is exec.Cmd.Wait's, whose exit
// status is COMMAND's (128+N when signal N ended it), or why COMMAND could
// not be run at all.
func (p *Process) Wait() error {
	err := p.cmd.Wait()
	select {
	case <-p.done:
	case <-time.After(2 * time.Second):
	}
	p.ctl.Close()
	if p.fail != "" {
		return errors.New(p.fail)
	}
	return err
}

// Leftovers is how many processes COMMAND left running in its namespace;
// they ended with it.
func (p *Process) Leftovers() int { return p.left }

// Shim is stage 2, started by stage 1 inside the workload's namespaces. It
// never returns on success: the process image becomes the workload's
// command.
func Shim(args []string) error {
	if len(args) < 7 || args[5] != "--" {
		return errors.New("workload: shim: bad arguments")
	}
	cgPath, path, argv := args[0], args[4], args[6:]
	uid, err1 := strconv.ParseUint(args[1], 10, 32)
	gid, err2 := strconv.ParseUint(args[2], 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("workload: shim: %w", err)
	}
	var groups []int
	if args[3] != "" {
		for _, g := range strings.Split(args[3], ",") {
			n, err := strconv.Atoi(g)
			if err != nil {
				return fmt.Errorf("workload: shim: group %q: %w", g, err)
			}
			groups = append(groups, n)
		}
	}

	// no_new_privs and the capability bounding set are per thread: set
	// them on the thread that calls execve.
	runtime.LockOSThread()

	if uid == 0 {
		return ErrRootWorkload
	}

	// Join the cgroup first, while still privileged to write cgroup.procs.
	// This exec's image (bridle) ran outside it: the exec into COMMAND is
	// the first the workload's rules judge.
	if err := os.WriteFile(filepath.Join(cgPath, "cgroup.procs"), []byte("0"), 0); err != nil {
		return fmt.Errorf("workload: join cgroup %s: %w", cgPath, err)
	}
	// Then no way back out through the file system, whatever the uid may
	// write: this mount namespace is the workload's alone.
	if err := readOnlyCgroups(); err != nil {
		return err
	}
	// no_new_privs: setuid binaries and file capabilities cannot raise the
	// workload's privilege again.
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("workload: set no_new_privs: %w", err)
	}
	if err := dropBoundingSet(); err != nil {
		return err
	}
	if err := unix.Setgroups(groups); err != nil {
		return fmt.Errorf("workload: setgroups: %w", err)
	}
	if err := unix.Setresgid(int(gid), int(gid), int(gid)); err != nil {
		return fmt.Errorf("workload: setgid %d: %w", gid, err)
	}
	if err := unix.Setresuid(int(uid), int(uid), int(uid)); err != nil {
		return fmt.Errorf("workload: setuid %d: %w", uid, err)
	}
	// Nothing of the permitted or effective sets survives either.
	if err := clearCapabilities(); err != nil {
		return err
	}
	// The seccomp filter is installed here, and nowhere else: after the
	// last step that needs privilege, right before the exec it confines.
	if err := Sandbox(); err != nil {
		return err
	}
	// COMMAND starts with stdin, stdout and stderr only.
	if err := CloseInheritedOnExec(); err != nil {
		return err
	}
	if err := unix.Exec(path, argv, os.Environ()); err != nil {
		return fmt.Errorf("workload: exec %s: %w", path, err)
	}
	return nil
}

func dropBoundingSet() error {
	for c := 0; c <= unix.CAP_LAST_CAP; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("workload: drop capability %d from bounding set: %w", c, err)
		}
	}
	// Ambient capabilities would survive exec for a non-root user.
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("workload: clear ambient capabilities: %w", err)
	}
	return nil
}

func clearCapabilities() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("workload: clear capabilities: %w", err)
	}
	return nil
}
