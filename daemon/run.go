// Package daemon is Bridle's node agent. Run is the embedded engine behind
// `bridle run`: one command, as one workload with one task, on this machine,
// with no other setup.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/tasks"
	"github.com/bridle-sh/bridle/daemon/workload"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
)

// RunSpec is one `bridle run`.
type RunSpec struct {
	Command  []string        // COMMAND and its arguments
	Envelope policy.Envelope // what the task may do besides running COMMAND
	User     string          // who COMMAND runs as; "root" only when asked for
	Audit    bool            // --mode audit: record refusals, refuse nothing
	LogAllow bool            // emit allowed decisions too
	Identity string          // SPIFFE ID; a default names the user
	Intent   string
	Records  io.Writer // decision records as JSON lines; nil for none
	Out      io.Writer // what a person reads: denials as they happen, summary
	Verbose  bool
	Self     string // the bridle binary, started as the launch shim
}

// pinParent is where standalone runs pin their programs and maps, one
// directory per task; cgroupParent likewise for their cgroups.
const (
	pinParent    = loader.DefaultPinRoot + "/run"
	cgroupParent = "bridle.run"
)

// Run runs spec.Command confined and returns its exit status (128+N when a
// signal N ended it). Signals on sigs are passed on to the command.
func Run(ctx context.Context, spec RunSpec, sigs <-chan os.Signal) (int, error) {
	r, err := prepare(spec)
	if err != nil {
		return 0, err
	}
	defer r.cleanup()
	if err := r.enforce(); err != nil {
		return 0, err
	}
	return r.run(ctx, sigs)
}

type runner struct {
	spec     RunSpec
	taskID   string
	identity string
	node     string
	path     string // resolved COMMAND
	creds    workload.Credentials
	rules    policy.RuleSet
	tasks    *tasks.Manager

	cg       workload.Cgroup
	cgID     uint64
	enf      *loader.Enforcer
	events   *loader.EventReader
	stats    *summary
	records  *audit.Writer
	eventsWG sync.WaitGroup
	cleanups []func()
}

func prepare(spec RunSpec) (*runner, error) {
	if len(spec.Command) == 0 {
		return nil, errors.New("no command given: bridle run [flags] -- COMMAND [ARG...]")
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("bridle run needs root to load BPF programs (try sudo)")
	}
	r := &runner{spec: spec, stats: newSummary()}
	r.taskID = tasks.NewTaskID()
	r.node, _ = os.Hostname()
	if spec.Records != nil {
		r.records = audit.NewWriter(spec.Records)
	}

	var err error
	if r.path, err = exec.LookPath(spec.Command[0]); err != nil {
		return nil, fmt.Errorf("command %q: %w", spec.Command[0], err)
	}
	if r.path, err = filepath.Abs(r.path); err != nil {
		return nil, err
	}
	if r.creds, err = resolveUser(spec.User); err != nil {
		return nil, err
	}
	if r.identity, err = resolveIdentity(spec.Identity, r.creds.Name); err != nil {
		return nil, err
	}

	env := spec.Envelope
	env.Exec = append(append([]policy.ExecRule(nil), env.Exec...), commandExecRules(r.path)...)
	if r.rules, err = policy.Compile(env); err != nil {
		return nil, err
	}
	return r, nil
}

// resolveUser picks who COMMAND runs as: the named user, else the user sudo
// was called by. Root needs asking for by name: an agent running as root
// could undo its own confinement from outside the kernel's hooks.
func resolveUser(name string) (workload.Credentials, error) {
	if name == "" {
		name = os.Getenv("SUDO_USER")
		if name == "" || name == "root" {
			return workload.Credentials{}, errors.New("no user to run as: pass --user USER (--user root to run the command as root, without capabilities)")
		}
	}
	return workload.LookupUser(name)
}

func resolveIdentity(id, user string) (string, error) {
	if id == "" {
		id = "spiffe://bridle.local/run/" + user
	}
	parsed, err := spiffeid.FromString(id)
	if err != nil {
		return "", fmt.Errorf("--identity %q: %w", id, err)
	}
	return parsed.String(), nil
}

// enforce puts the task's rules in the kernel before anything runs.
func (r *runner) enforce() error {
	// The lock first: from here on, concurrent runs' sweeps leave this
	// run's cgroup and pins alone.
	lock, err := lockRun(r.taskID)
	if err != nil {
		return err
	}
	r.defer_(lock.release)
	sweepStale()
	root, err := loader.CgroupRoot()
	if err != nil {
		return err
	}
	if r.cg, err = workload.Create(root, cgroupParent, "run-"+r.taskID); err != nil {
		return err
	}
	r.defer_(func() { _ = r.cg.Remove() })
	if r.cgID, err = loader.CgroupID(r.cg.Path); err != nil {
		return err
	}

	r.enf, err = loader.Load(loader.Options{PinDir: filepath.Join(pinParent, r.taskID), WakeupBytes: loader.DefaultWakeupBytes})
	if err != nil {
		return err
	}
	r.defer_(func() {
		_ = r.enf.Unpin()
		_ = r.enf.Close()
	})
	if r.spec.Verbose {
		r.printFeatures()
	}
	if len(r.rules.Unix) > 0 && !r.enf.Features().UnixHooks {
		return fmt.Errorf("--allow-unix needs unix socket hooks: %s", r.enf.Features().UnixReason)
	}
	r.tasks = tasks.NewManager(r.enf, r.taskEnded)
	_, err = r.tasks.Start(r.taskID, tasks.StartRequest{
		Workload: r.cg.Rel(),
		CgroupID: r.cgID,
		Identity: r.identity,
		Intent:   r.spec.Intent,
		TTL:      r.spec.Envelope.TTL,
		Rules:    r.rules,
		Mode:     loader.WorkloadMode{Audit: r.spec.Audit, EmitAllow: r.spec.LogAllow},
	})
	if err != nil {
		return err
	}
	if err := r.enf.AttachCgroup(r.cg.Path); err != nil {
		return err
	}
	if r.events, err = r.enf.Events(); err != nil {
		return err
	}
	r.eventsWG.Add(1)
	go r.readEvents()
	return nil
}

func (r *runner) defer_(f func()) { r.cleanups = append(r.cleanups, f) }

func (r *runner) cleanup() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

func (r *runner) printFeatures() {
	f := r.enf.Features()
	out := r.spec.Out
	fmt.Fprintf(out, "bridle: kernel %s\n", f.Kernel)
	fmt.Fprintf(out, "bridle: exec enforcement: %s (%s)\n", f.ExecMode, f.ExecModeReason)
	if f.UnixHooks {
		fmt.Fprintf(out, "bridle: unix sockets: enforced by path\n")
	} else {
		fmt.Fprintf(out, "bridle: unix sockets: NOT enforced (%s)\n", f.UnixReason)
	}
	fmt.Fprintf(out, "bridle: BTF: %s\n", f.BTF)
	fmt.Fprintf(out, "bridle: open connections at task end: %s (%s)\n", f.SocketDestroy.Method, f.SocketDestroy.Reason)
	fmt.Fprintf(out, "bridle: pinned at %s\n", r.enf.PinDir())
	fmt.Fprintf(out, "bridle: task %s, workload %s, %d kernel rules, identity %s\n", r.taskID, r.cg.Rel(), r.rules.Count(), r.identity)
}

func (r *runner) run(ctx context.Context, sigs <-chan os.Signal) (int, error) {
	cmd := workload.Command(r.spec.Self, r.cg, r.creds, r.path, r.spec.Command)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", r.path, err)
	}

	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()

	var err error
wait:
	for {
		select {
		case err = <-waitErr:
			break wait
		case s := <-sigs:
			_ = cmd.Process.Signal(s)
		case <-ctx.Done():
			_ = cmd.Process.Signal(syscall.SIGTERM)
			ctx = context.Background()
		}
	}
	status, err := exitStatus(err)
	if err != nil {
		return 0, err
	}
	r.finish(status)
	return status, nil
}

// taskEnded reports how a task ended: on expiry while the command runs, or
// when the command exits.
func (r *runner) taskEnded(e tasks.End) {
	if e.Reason == "expired" {
		fmt.Fprintf(r.spec.Out, "bridle: task %s expired: its grants are revoked\n", e.Task.ID)
	}
	if n := e.Sockets.TCP + e.Sockets.UDP; n > 0 {
		fmt.Fprintf(r.spec.Out, "bridle: aborted %d open connection(s) of the task (%d tcp, %d udp)\n", n, e.Sockets.TCP, e.Sockets.UDP)
	}
	// When the command has exited, its workload is about to be emptied,
	// which closes everything; only a live workload needs the warning.
	if e.SocketsErr != nil && e.Reason == "expired" {
		fmt.Fprintf(r.spec.Out, "bridle: WARNING: connections opened under the task may still be open: %v\n", e.SocketsErr)
	}
}

func exitStatus(err error) (int, error) {
	if err == nil {
		return 0, nil
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return 0, err
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	if !ok {
		return ee.ExitCode(), nil
	}
	if ws.Signaled() {
		return 128 + int(ws.Signal()), nil
	}
	return ws.ExitStatus(), nil
}

// finish ends what COMMAND left running (the task is over), collects the
// last decisions and prints the summary.
func (r *runner) finish(status int) {
	if _, active := r.tasks.Get(r.taskID); active {
		if err := r.tasks.End(r.taskID, "command exited"); err != nil {
			fmt.Fprintf(r.spec.Out, "bridle: %v\n", err)
		}
	}
	if pids, _ := r.cg.Procs(); len(pids) > 0 {
		fmt.Fprintf(r.spec.Out, "bridle: ending %d process(es) the command left in its workload\n", len(pids))
		if err := r.cg.Kill(5 * time.Second); err != nil {
			fmt.Fprintf(r.spec.Out, "bridle: %v\n", err)
		}
	}
	_ = r.events.Flush()
	r.eventsWG.Wait()
	_ = r.events.Close()
	drops, err := r.enf.Drops()
	if err != nil {
		fmt.Fprintf(r.spec.Out, "bridle: %v\n", err)
	}
	r.stats.print(r.spec.Out, r.spec.Command[0], status, drops)
}

func (r *runner) readEvents() {
	defer r.eventsWG.Done()
	for {
		ev, err := r.events.Read()
		if err != nil {
			if !errors.Is(err, loader.ErrFlushed) && !errors.Is(err, loader.ErrClosed) {
				fmt.Fprintf(r.spec.Out, "bridle: event reader: %v\n", err)
			}
			return
		}
		rec := r.record(ev)
		r.stats.add(rec)
		if rec.Verdict != "allow" {
			fmt.Fprintf(r.spec.Out, "bridle: %s\n", rec.Line())
		}
		if r.records != nil {
			if err := r.records.Write(rec); err != nil {
				fmt.Fprintf(r.spec.Out, "bridle: %v\n", err)
			}
		}
	}
}

func (r *runner) record(ev loader.Event) audit.Record {
	return audit.Record{
		Time:        audit.Timestamp(ev.Time),
		Node:        r.node,
		Workload:    r.cg.Rel(),
		Identity:    r.identity,
		Task:        r.taskID,
		Intent:      r.spec.Intent,
		PID:         ev.PID,
		Comm:        ev.Comm,
		Action:      ev.Action,
		Protocol:    ev.Protocol,
		Address:     audit.Addr(ev.Addr),
		Port:        ev.Port,
		Path:        ev.Path,
		Verdict:     ev.Verdict,
		Reason:      ev.Reason,
		Enforcement: ev.Enforcement,
	}
}
