package bench

import (
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
)

// taskEnvelope is the envelope of the task-start benchmarks: n egress rules
// and the handful of programs an agent typically runs.
func taskEnvelope(n int) policy.Envelope {
	env := envelope(n, policy.ProtoTCP, netip.MustParseAddrPort("192.0.2.1:443"))
	env.Exec = []policy.ExecRule{{Path: "/usr/bin/true"}, {Path: "/usr/bin/sh"}, {Path: "/usr/bin/env"}}
	env.TTL = time.Hour
	return env
}

var taskSizes = []int{10_000, 100_000}

// BenchmarkCompile: turning an envelope into the kernel's rule set, the
// pure-Go half of starting a task.
func BenchmarkCompile(b *testing.B) {
	envs := map[int]policy.Envelope{}
	for _, n := range taskSizes {
		envs[n] = taskEnvelope(n)
	}
	interleave(b, taskSizes, func(n int) string { return "rules=" + sizeName(n) }, func(b *testing.B, n int) {
		for b.Loop() {
			if _, err := policy.Compile(envs[n]); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkApply: putting a compiled envelope in force for a workload that
// is already attached: batch-write the rules into a slot no task used
// before, set the task's lifetime, and bind the cgroup to the slot. From
// the bind on, the workload's next connect is judged by the new rules.
// Clearing the slot between iterations is not timed.
func BenchmarkApply(b *testing.B) {
	e := benchEnforcer(b)
	tree := newCgroupTree(b)
	cg := tree.sub(b, "task")
	if err := e.AttachCgroup(cg); err != nil {
		b.Fatal(err)
	}
	id, err := loader.CgroupID(cg)
	if err != nil {
		b.Fatal(err)
	}
	sets := map[int]policy.RuleSet{}
	for _, n := range taskSizes {
		sets[n] = compile(b, taskEnvelope(n), n)
	}
	slot, gen := uint32(0), uint32(0)
	interleave(b, taskSizes, func(n int) string { return "rules=" + sizeName(n) }, func(b *testing.B, n int) {
		for i := 0; i < b.N; i++ {
			slot = slot%(loader.MaxSlots-1) + 1
			gen++
			if err := e.WriteRules(slot, sets[n]); err != nil {
				b.Fatal(err)
			}
			if err := e.SetTask(slot, time.Now().Add(time.Hour), gen); err != nil {
				b.Fatal(err)
			}
			if err := e.BindWorkload(id, slot, loader.WorkloadMode{}); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := e.UnbindWorkload(id); err != nil {
				b.Fatal(err)
			}
			if err := e.ClearSlot(slot); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
}

// BenchmarkExecCheck: kernel time of the exec program per exec, from the
// kernel's own BPF run-time accounting, for an allowed binary started
// inside a workload. The op is a whole fork+exec+wait of /usr/bin/true;
// the number that matters is the kernel-ns/exec metric. The program runs
// for every exec on the host, so execs by other processes during the
// measurement are counted too; runs/exec shows how many there were.
func BenchmarkExecCheck(b *testing.B) {
	e := benchEnforcer(b)
	tree := newCgroupTree(b)
	cg := tree.sub(b, "exec")
	rs := compile(b, policy.Envelope{
		Egress: fillerRules(10),
		Exec:   []policy.ExecRule{{Path: "/usr/bin/", Dir: true}},
	}, 10)
	workload(b, e, cg, 1, rs)
	fd, err := syscall.Open(cg, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { syscall.Close(fd) })
	stats, err := loader.EnableRunTimeStats()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stats.Close() })
	mode := string(e.Features().ExecMode)

	interleave(b, []string{mode}, func(m string) string { return m }, func(b *testing.B, _ string) {
		before := execStats(b, e)
		execs := 0
		for b.Loop() {
			execs++
			cmd := exec.Command("/usr/bin/true")
			cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
			if err := cmd.Run(); err != nil {
				b.Fatalf("allowed exec of /usr/bin/true in a workload: %v", err)
			}
		}
		after := execStats(b, e)
		runs := after.RunCount - before.RunCount
		if runs == 0 {
			b.Fatal("the exec program did not run: no kernel time to report")
		}
		b.ReportMetric(float64(after.RunTime-before.RunTime)/float64(runs), "kernel-ns/exec")
		b.ReportMetric(float64(runs)/float64(execs), "runs/exec")
	})
}

func execStats(b *testing.B, e *loader.Enforcer) loader.ProgramStats {
	b.Helper()
	all, err := e.ProgramStats()
	if err != nil {
		b.Fatal(err)
	}
	for _, s := range all {
		if strings.HasPrefix(s.Name, "bridle_exec") {
			return s
		}
	}
	b.Fatal("enforcer has no exec program")
	return loader.ProgramStats{}
}
