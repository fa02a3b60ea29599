// Package run is `bridle run`: one command, as one workload with one task,
// enforced by bridled when it runs on the machine and by a node in this
// process otherwise (no other setup).
package run

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/daemon/api"
	"github.com/bridle-sh/bridle/daemon/audit"
	"github.com/bridle-sh/bridle/daemon/node"
	"github.com/bridle-sh/bridle/daemon/tasks"
	"github.com/bridle-sh/bridle/daemon/workload"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
)

// RunSpec is one `bridle run`.
type RunSpec struct {
	Command []string // COMMAND and its arguments
	// Grants are the --allow-* flags: what the task may do besides
	// running COMMAND. Without a policy they are the whole envelope; with
	// one (bridled's, or --policy) they cap it, and nil leaves it as the
	// policy says.
	Grants   *api.Grants
	TTL      time.Duration
	User     string // who COMMAND runs as; "root" only when asked for
	Audit    bool   // --mode audit: record refusals, refuse nothing
	LogAllow bool   // emit allowed decisions too
	Identity string // SPIFFE ID; a default names the user
	Intent   string
	Policy   string // --policy: a Rego directory or bundle; "" for none
	// Socket is where bridled is looked for; Standalone runs without it
	// even if it is there.
	Socket     string
	Standalone bool
	Records    io.Writer // decision records as JSON lines; nil for none
	Out        io.Writer // what a person reads: denials as they happen, summary
	Verbose    bool
	Self       string // the bridle binary, started as the launch shim
	// AllowWritableExec (--allow-writable-exec) accepts exec rules whose
	// file the workload's user can write.
	AllowWritableExec bool
	// DNS configures the resolver of a standalone run.
	DNS DNSSettings
}

// DNSSettings are a standalone run's resolver settings; zero values take
// the defaults (the first nameserver of /etc/resolv.conf; dns's floor).
type DNSSettings struct {
	Upstream netip.AddrPort // --dns-upstream
	TTLFloor time.Duration  // --dns-ttl-floor
}

// pinParent is where standalone runs pin their programs and maps, one
// directory per run; cgroupParent likewise for their cgroups.
const (
	pinParent    = loader.DefaultPinRoot + "/run"
	cgroupParent = workload.StandaloneParent
)

// Run runs spec.Command confined and returns its exit status (128+N when a
// signal N ended it). Signals on sigs are passed on to the command.
func Run(ctx context.Context, spec RunSpec, sigs <-chan os.Signal) (int, error) {
	r, err := prepare(spec)
	if err != nil {
		return 0, err
	}
	if r.stdio, err = workload.OpenStdio(os.Stdin, os.Stdout, os.Stderr, r.creds); err != nil {
		return 0, err
	}
	// Whatever happens, the invoker's terminal is left as it was found.
	defer r.stdio.Close()
	r.spec.Out = r.stdio.Writer(r.spec.Out)
	if r.host, err = pickHost(ctx, spec, r.runID); err != nil {
		return 0, err
	}
	defer r.host.close()
	// Under a policy (bridled's, or --policy) with no flags, the policy
	// alone decides what the run may do.
	if spec.Grants == nil && r.host.hasPolicy() {
		r.grants, r.compiled = nil, nil
	}
	if err := r.enforce(ctx); err != nil {
		return 0, err
	}
	return r.run(ctx, sigs)
}

type runner struct {
	spec     RunSpec
	runID    string
	identity string
	path     string // resolved COMMAND
	creds    workload.Credentials
	grants   *api.Grants
	compiled *node.Grants // grants, parsed and compiled once
	host     host
	stdio    *workload.Stdio

	cg      workload.Cgroup
	task    runTask
	records <-chan audit.Record
	wait    func() error
	stats   *summary
	writer  *audit.Writer
	// sinks take each record of the workload, the kernel's and the
	// seccomp supervisor's alike: the summary, the terminal, --audit.
	sinks  audit.Sinks
	shown  sync.WaitGroup
	ending atomic.Bool // the run is ending its own task

	// sup answers the workload's seccomp refusals and records them.
	sup      *workload.Supervisor
	refusals refusalLimit
}

func prepare(spec RunSpec) (*runner, error) {
	if len(spec.Command) == 0 {
		return nil, errors.New("no command given: bridle run [flags] -- COMMAND [ARG...]")
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("bridle run needs root to load BPF programs (try sudo)")
	}
	r := &runner{spec: spec, stats: newSummary(), runID: tasks.NewTaskID()}
	r.registerSinks()

	var err error
	if r.path, err = exec.LookPath(spec.Command[0]); err != nil {
		return nil, fmt.Errorf("command %q: %w", spec.Command[0], err)
	}
	if r.path, err = filepath.Abs(r.path); err != nil {
		return nil, err
	}
	if r.creds, err = ResolveUser(spec.User); err != nil {
		return nil, err
	}
	if r.identity, err = resolveIdentity(spec.Identity, r.creds.Name); err != nil {
		return nil, err
	}
	// The flags plus COMMAND itself are what the run may do (at most);
	// checked here, before anything runs, with the flag in the message.
	g := api.Grants{}
	if spec.Grants != nil {
		g = *spec.Grants
	}
	g.Exec = append(slices.Clone(g.Exec), execStrings(commandExecRules(r.path))...)
	g.AllowWritableExec = spec.AllowWritableExec
	env, err := g.Envelope()
	if err != nil {
		return nil, err
	}
	r.compiled = node.NewGrants(env)
	if _, err := r.compiled.Rules(); err != nil {
		return nil, err
	}
	r.grants = &g
	return r, nil
}

func execStrings(rules []policy.ExecRule) []string {
	out := make([]string, len(rules))
	for i, rule := range rules {
		out[i] = rule.String()
	}
	return out
}

// ResolveUser picks who COMMAND runs as: the named user, else the user sudo
// was called by. Never uid 0, whatever the name: an agent running as root
// owns root's files and could undo its own confinement from outside the
// kernel's hooks.
func ResolveUser(name string) (workload.Credentials, error) {
	if name == "" {
		name = os.Getenv("SUDO_USER")
		if name == "" || name == "root" {
			return workload.Credentials{}, errors.New("no user to run as: pass --user USER, an unprivileged user (bridle run never runs a command as root)")
		}
	}
	creds, err := workload.LookupUser(name)
	if err != nil {
		return creds, err
	}
	if creds.UID == 0 {
		return creds, fmt.Errorf("--user %s: %w", name, workload.ErrRootWorkload)
	}
	return creds, nil
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

// enforce puts the task in force before anything runs, and starts showing
// the workload's decisions.
func (r *runner) enforce(ctx context.Context) error {
	var err error
	if r.cg, err = r.host.newWorkload(r.runID); err != nil {
		return err
	}
	r.task, err = r.host.start(ctx, taskRequest{
		ID: r.runID, Workload: r.cg, Intent: r.spec.Intent, TTL: r.spec.TTL,
		Grants: r.grants, Compiled: r.compiled, Identity: r.identity,
		Mode:  loader.WorkloadMode{Audit: r.spec.Audit, EmitAllow: r.spec.LogAllow},
		RunAs: policy.Principal{UID: r.creds.UID, GIDs: append([]uint32{r.creds.GID}, r.creds.Groups...)},
	})
	if err != nil {
		return err
	}
	if r.spec.Verbose {
		for _, line := range r.host.describe() {
			r.say("%s", line)
		}
		r.say("task %s, workload %s, %d kernel rules, identity %s, policy %s",
			r.task.ID, r.task.Workload, r.task.Rules, r.task.Identity, r.task.PolicyRevision)
		fmt.Fprintf(r.spec.Out, "bridle: workload: %s; %s\n", r.stdio.Describe(), workload.Namespaces)
	}
	if r.records, r.wait, err = r.host.events(ctx, r.cg); err != nil {
		_ = r.host.end(r.task.ID)
		return err
	}
	r.shown.Go(r.show)
	return nil
}

func (r *runner) run(ctx context.Context, sigs <-chan os.Signal) (int, error) {
	var err error
	if r.sup, err = workload.NewSupervisor(); err != nil {
		r.finish()
		return 0, err
	}
	proc, err := workload.Start(workload.Spec{
		Self: r.spec.Self, Cgroup: r.cg, Creds: r.creds, Path: r.path, Argv: r.spec.Command, Stdio: r.stdio,
		Supervisor: r.sup,
	})
	if err != nil {
		r.finish()
		return 0, fmt.Errorf("start %s: %w", r.path, err)
	}
	r.sup.Started()
	r.sup.Serve(r.task.Mode.Audit, r.seccompRefusal)

	waitErr := make(chan error, 1)
	go func() { waitErr <- proc.Wait() }()

wait:
	for {
		select {
		case err = <-waitErr:
			break wait
		case s := <-sigs:
			_ = proc.Signal(s)
		case <-ctx.Done():
			_ = proc.Signal(syscall.SIGTERM)
			ctx = context.Background()
		}
	}
	// The workload's last output shown and the terminal restored before
	// bridle's own last words.
	r.stdio.Close()
	status, err := exitStatus(err)
	if err != nil {
		r.finish()
		return 0, err
	}
	if n := proc.Leftovers(); n > 0 {
		fmt.Fprintf(r.spec.Out, "bridle: ended %d process(es) the command left in its workload\n", n)
	}
	drops := r.finish()
	r.stats.print(r.spec.Out, r.spec.Command[0], status, drops)
	return status, nil
}

// finish ends what COMMAND left running and the task (in that order: the
// leftovers are the task's to the end), then waits until every decision of
// the workload has been shown. It returns the ring's drop count when it is
// known.
func (r *runner) finish() uint64 {
	if pids, _ := r.cg.Procs(); len(pids) > 0 {
		r.say("ending %d process(es) the command left in its workload", len(pids))
		if err := r.cg.Kill(5 * time.Second); err != nil {
			r.say("%v", err)
		}
	}
	r.stopSupervisor()
	r.ending.Store(true)
	if err := r.host.end(r.task.ID); err != nil {
		r.say("%v", err)
	}
	done := make(chan struct{})
	go func() { r.shown.Wait(); close(done) }()
	select {
	case <-done:
		if err := r.wait(); err != nil {
			r.say("%v", err)
		}
	case <-time.After(10 * time.Second):
		r.say("decisions still arriving after 10s; the summary may be incomplete")
	}
	return r.host.drops()
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

// registerSinks sets where the run's records go, in order: the summary,
// the terminal, and --audit when asked for.
func (r *runner) registerSinks() {
	r.sinks = audit.Sinks{r.stats, audit.SinkFunc(r.print)}
	if r.spec.Records != nil {
		r.writer = audit.NewWriter(r.spec.Records)
		r.sinks = append(r.sinks, audit.SinkFunc(r.write))
	}
}

// show hands each record of the workload's stream to the run's sinks.
func (r *runner) show() {
	for rec := range r.records {
		r.sinks.Record(rec)
	}
}

// print shows each refusal as it happens, and the task's end when it is
// news: the run's own end is not; an expiry, or an end by someone else,
// is.
func (r *runner) print(rec audit.Record) {
	if rec.Action == bpf.ActionTaskEnd {
		if rec.TaskExpired() || !r.ending.Load() {
			r.say("task %s ended: %s", rec.Task, rec.Reason)
		}
		return
	}
	if rec.Verdict != bpf.VerdictAllow {
		r.say("%s", rec.Line())
	}
}

// write writes a record to --audit. A task's end is written only when it
// counts decisions the kernel suppressed: it is their only record.
func (r *runner) write(rec audit.Record) {
	if rec.Action == bpf.ActionTaskEnd && rec.Suppressed == 0 {
		return
	}
	if err := r.writer.Write(rec); err != nil {
		r.say("%v", err)
	}
}

// say prints one "bridle: " line for the person who ran the command. The
// whole line is escaped (audit.Printable): records, task fields and errors
// carry text a workload chose, and a newline or terminal sequence in it
// must not forge a line of bridle's or drive the terminal.
func (r *runner) say(format string, args ...any) {
	fmt.Fprintf(r.spec.Out, "bridle: %s\n", audit.Printable(fmt.Sprintf(format, args...)))
}
