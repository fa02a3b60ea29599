package loader

import (
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ProgramStats is the kernel's own account of one of Bridle's programs: how
// often it ran and how much CPU time it used. This is how Bridle's cost per
// check is measured without instrumenting the programs themselves.
type ProgramStats struct {
	Name     string // the program's C function name, e.g. bridle_exec_kill
	RunCount uint64
	RunTime  time.Duration
	// Misses counts runs the kernel skipped because another BPF program
	// was already running on the CPU; non-zero means checks were skipped.
	Misses uint64
}

// PerRun is the mean kernel time of one run, or 0 before the first run.
func (s ProgramStats) PerRun() time.Duration {
	if s.RunCount == 0 {
		return 0
	}
	return s.RunTime / time.Duration(s.RunCount)
}

// EnableRunTimeStats turns on the kernel's per-program run time accounting
// (BPF_STATS_RUN_TIME) until the returned Closer is closed. It is off by
// default because it adds two clock reads to every program run, so it is
// meant for benchmarks and diagnosis, not for leaving on. The setting is
// host-wide and counted: it stays on while any holder keeps it open.
func EnableRunTimeStats() (io.Closer, error) {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enable BPF run time stats: %w", err)
	}
	return c, nil
}

// ProgramStats returns the run count and run time of every program this
// enforcer loaded, sorted by name. Counters only advance while run time
// stats are enabled (EnableRunTimeStats); they are cumulative, so callers
// measure an interval by subtracting two snapshots.
func (e *Enforcer) ProgramStats() ([]ProgramStats, error) {
	progs := map[string]*ebpf.Program{}
	collectPrograms(reflect.ValueOf(&e.net), progs)
	if e.unix != nil {
		collectPrograms(reflect.ValueOf(e.unix), progs)
	}
	if e.listen != nil {
		collectPrograms(reflect.ValueOf(e.listen), progs)
	}
	if e.sockopt != nil {
		collectPrograms(reflect.ValueOf(e.sockopt), progs)
	}
	if e.exec != nil {
		collectPrograms(reflect.ValueOf(e.exec), progs)
	}
	out := make([]ProgramStats, 0, len(progs))
	for name, p := range progs {
		st, err := p.Stats()
		if err != nil {
			return nil, fmt.Errorf("program %s: stats: %w", name, err)
		}
		out = append(out, ProgramStats{Name: name, RunCount: st.RunCount, RunTime: st.Runtime, Misses: st.RecursionMisses})
	}
	slices.SortFunc(out, func(a, b ProgramStats) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// collectPrograms finds the programs in a bpf2go objects struct by its
// `ebpf` tags, so programs added to the C sources are reported without
// this file having to list them.
func collectPrograms(v reflect.Value, into map[string]*ebpf.Program) {
	for v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
		if v.IsNil() {
			return
		}
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return
	}
	progType := reflect.TypeFor[*ebpf.Program]()
	for i := 0; i < v.NumField(); i++ {
		f, ft := v.Field(i), v.Type().Field(i)
		if ft.Anonymous {
			collectPrograms(f.Addr(), into)
			continue
		}
		name := ft.Tag.Get("ebpf")
		if ft.Type != progType || name == "" || f.IsNil() {
			continue
		}
		// Fields of the generated structs are exported, so reading them
		// through reflection needs no unsafe access.
		into[name] = f.Interface().(*ebpf.Program)
	}
}
