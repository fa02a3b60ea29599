package bench

import (
	"errors"
	"path/filepath"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/daemon/tasks"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
)

// lifecycleSizes are the envelope sizes of the task start and revocation
// benchmarks.
var lifecycleSizes = []int{10, 1000, 10_000}

// lifecycleEnvelope is n egress rules of which exactly one allows a UDP
// connect to udpTarget (a connect that needs no listener), plus the
// handful of programs an agent typically runs and a lifetime.
func lifecycleEnvelope(n int) policy.Envelope {
	env := envelope(n, policy.ProtoUDP, udpTarget)
	env.Exec = []policy.ExecRule{{Path: "/usr/bin/true"}, {Path: "/usr/bin/sh"}, {Path: "/usr/bin/env"}}
	env.TTL = time.Hour
	return env
}

// taskWorkload lays out cgroups as bridled does: a root bound to the
// baseline slot with the programs attached, and a workload cgroup below it
// that tasks are started on. The baseline slot of a private enforcer holds
// no rules, so outside a task the workload may connect nowhere. The process
// moves into the workload for the rest of the benchmark: the connects it
// measures are the workload's own.
func taskWorkload(b *testing.B, e *loader.Enforcer, tree *cgroupTree) tasks.StartRequest {
	b.Helper()
	root := tree.sub(b, "root")
	rootID, err := loader.CgroupID(root)
	if err != nil {
		b.Fatal(err)
	}
	if err := e.BindWorkload(rootID, loader.BaselineSlot, loader.WorkloadMode{}); err != nil {
		b.Fatal(err)
	}
	if err := e.AttachCgroup(root); err != nil {
		b.Fatal(err)
	}
	cg := tree.sub(b, filepath.Join("root", "w1"))
	id, err := loader.CgroupID(cg)
	if err != nil {
		b.Fatal(err)
	}
	inCgroup(b, tree.root, cg)
	return tasks.StartRequest{Workload: "/" + tree.rel(cg), CgroupID: id, Identity: "spiffe://bench.test/agent", Intent: "benchmark"}
}

// udpSocket creates a UDP socket, which the hooks judge by the cgroup the
// process is in now.
func udpSocket(b *testing.B) int {
	b.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	return fd
}

// mustRefuse checks that the workload, outside a task, may not connect to
// the target its envelopes allow: the measurements time the change from
// this refusal to an allowed connect and back.
func mustRefuse(b *testing.B, sa *unix.RawSockaddrInet4, when string) {
	b.Helper()
	fd := udpSocket(b)
	defer unix.Close(fd)
	if errno := connectRaw(fd, sa); errno != unix.EPERM {
		b.Fatalf("%s: connect to %s from the workload: got %v, want %v (the baseline must refuse it)", when, udpTarget, errnoText(errno), unix.EPERM)
	}
}

func errnoText(errno unix.Errno) string {
	if errno == 0 {
		return "allowed"
	}
	return errno.Error()
}

// BenchmarkTaskStart: from just before compiling an envelope until the
// workload's first connect to the destination the envelope allows
// succeeds. In between: policy.Compile, then tasks.Manager.Start (rules
// written into a free slot, the task's lifetime set, the workload bound
// to the slot), then connect() from the workload until it is allowed. The
// workload is refused that connect before every iteration (checked, not
// timed); ending the task between iterations is not timed either.
// retries/op counts connects refused after Start returned, which should be
// none: Start's map writes are in force when it returns.
func BenchmarkTaskStart(b *testing.B) {
	e := benchEnforcer(b)
	tree := newCgroupTree(b)
	req := taskWorkload(b, e, tree)
	m := tasks.NewManager(e, nil)
	envs := map[int]policy.Envelope{}
	for _, n := range lifecycleSizes {
		envs[n] = lifecycleEnvelope(n)
		compile(b, envs[n], n) // the envelope has the size it claims
	}
	sa := sockaddr4(udpTarget)
	mustRefuse(b, &sa, "before any task")

	interleave(b, lifecycleSizes, func(n int) string { return "rules=" + sizeName(n) }, func(b *testing.B, n int) {
		env := envs[n]
		retries := 0
		b.StopTimer()
		for i := 0; i < b.N; i++ {
			id := tasks.NewTaskID()
			fd := udpSocket(b)
			if errno := connectRaw(fd, &sa); errno != unix.EPERM {
				b.Fatalf("before task %d: connect to %s: got %v, want %v", i, udpTarget, errnoText(errno), unix.EPERM)
			}

			b.StartTimer()
			start := time.Now()
			rs, err := policy.Compile(env)
			if err != nil {
				b.Fatal(err)
			}
			r := req
			r.Rules, r.TTL = rs, env.TTL
			if _, err := m.Start(id, r); err != nil {
				b.Fatal(err)
			}
			for {
				errno := connectRaw(fd, &sa)
				if errno == 0 {
					break
				}
				if errno != unix.EPERM {
					b.Fatalf("connect to %s in task %s: %v", udpTarget, id, errno)
				}
				if time.Since(start) > 5*time.Second {
					b.Fatalf("connect to %s still refused 5 s after starting task %s with a %d-rule envelope that allows it", udpTarget, id, n)
				}
				retries++
			}
			b.StopTimer()

			if err := m.End(id, "benchmark"); err != nil {
				b.Fatal(err)
			}
			m.Wait() // the slot's rules are deleted in the background
			unix.Close(fd)
		}
		b.ReportMetric(float64(retries)/float64(b.N), "retries/op")
	})
}

// BenchmarkRevocation: from the call to tasks.Manager.End until the
// workload's next connect to a destination the ended task allowed is
// refused with EPERM. The connect is made as soon as End returns, on the
// socket that connected under the task moments before; a connect that
// still succeeds fails the benchmark. End rebinds the workload to the
// baseline and aborts the sockets it opened before it returns, so the time
// includes both: what a caller of End waits for before the task is gone.
// Deleting the task's rules happens after End returns and is not timed,
// nor are starting the task and checking that the workload connects under
// it. rebind-ns/op is the part of that time until End's first step,
// binding the workload back to the baseline, had returned: the instant
// from which the kernel refuses the workload's new connections.
// abort-ns/op is the part spent aborting the task's sockets.
// first-refused-ns/op is the revocation as a running agent meets it: a
// second thread of the workload connects in a loop throughout, and this
// is the time from the End call to its first refused connect.
func BenchmarkRevocation(b *testing.B) {
	e := benchEnforcer(b)
	tree := newCgroupTree(b)
	req := taskWorkload(b, e, tree)
	var ended tasks.End
	k := &rebindClock{Enforcer: e}
	m := tasks.NewManager(k, func(end tasks.End) { ended = end })
	sets := map[int]policy.RuleSet{}
	for _, n := range lifecycleSizes {
		sets[n] = compile(b, lifecycleEnvelope(n), n)
	}
	sa := sockaddr4(udpTarget)
	mustRefuse(b, &sa, "before any task")

	interleave(b, lifecycleSizes, func(n int) string { return "rules=" + sizeName(n) }, func(b *testing.B, n int) {
		aborted := 0
		var rebind, sockets, unixSweep, firstRefused time.Duration
		b.StopTimer()
		for i := 0; i < b.N; i++ {
			id := tasks.NewTaskID()
			r := req
			r.Rules, r.TTL = sets[n], time.Hour
			if _, err := m.Start(id, r); err != nil {
				b.Fatal(err)
			}
			fd := udpSocket(b)
			if errno := connectRaw(fd, &sa); errno != 0 {
				b.Fatalf("in task %s: connect to %s: %v, want allowed", id, udpTarget, errno)
			}

			// A second workload thread connects throughout, as an agent
			// would, and notes its first refusal.
			spin := udpSocket(b)
			refused := make(chan time.Time, 1)
			spinning := make(chan struct{})
			go func() {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				close(spinning)
				for {
					// Syscall, not RawSyscall: the runtime must be able
					// to stop this thread for a garbage collection.
					_, _, errno := unix.Syscall(unix.SYS_CONNECT, uintptr(spin), uintptr(unsafe.Pointer(&sa)), unix.SizeofSockaddrInet4)
					if errno == unix.EPERM {
						refused <- time.Now()
						return
					}
				}
			}()
			<-spinning

			k.rebound = time.Time{}
			b.StartTimer()
			called := time.Now()
			if err := m.End(id, "benchmark"); err != nil {
				b.Fatal(err)
			}
			errno := connectRaw(fd, &sa)
			b.StopTimer()
			firstRefused += (<-refused).Sub(called)
			unix.Close(spin)
			m.Wait() // the slot's rules are deleted in the background
			if k.rebound.IsZero() {
				b.Fatalf("End of task %s did not bind the workload back to the baseline", id)
			}
			rebind += k.rebound.Sub(called)

			if errno == 0 {
				b.Fatalf("task %s ended, yet the workload's next connect to %s was allowed", id, udpTarget)
			}
			if errno != unix.EPERM {
				b.Fatalf("after ending task %s: connect to %s: got %v, want %v", id, udpTarget, errno, unix.EPERM)
			}
			// End must have done its whole job, or the time is of less
			// work than a revocation does.
			var unsupported *loader.UnsupportedError
			switch err := ended.SocketsErr; {
			case ended.Task.ID != id:
				b.Fatalf("End of task %s did not report it ended", id)
			case errors.As(err, &unsupported):
				// This kernel cannot abort sockets; End does the rest.
			case err != nil:
				b.Fatalf("End of task %s: abort its sockets: %v", id, err)
			case ended.Sockets.UDP < 1:
				b.Fatalf("End of task %s aborted %d UDP sockets; the workload's connected socket was open", id, ended.Sockets.UDP)
			}
			aborted += ended.Sockets.UDP + ended.Sockets.TCP
			sockets += ended.Sockets.Duration
			unixSweep += ended.Unix.Duration
			unix.Close(fd)
		}
		b.ReportMetric(float64(aborted)/float64(b.N), "sockets-aborted/op")
		b.ReportMetric(float64(rebind.Nanoseconds())/float64(b.N), "rebind-ns/op")
		b.ReportMetric(float64(sockets.Nanoseconds())/float64(b.N), "abort-ns/op")
		b.ReportMetric(float64(unixSweep.Nanoseconds())/float64(b.N), "unix-ns/op")
		b.ReportMetric(float64(firstRefused.Nanoseconds())/float64(b.N), "first-refused-ns/op")
	})
}

// rebindClock is the enforcer as the task manager drives it, noting when a
// workload was last bound back to the baseline slot.
type rebindClock struct {
	*loader.Enforcer
	rebound time.Time
}

func (k *rebindClock) BindWorkload(cgroupID uint64, slot uint32, mode loader.WorkloadMode) error {
	err := k.Enforcer.BindWorkload(cgroupID, slot, mode)
	if slot == loader.BaselineSlot && err == nil {
		k.rebound = time.Now()
	}
	return err
}
