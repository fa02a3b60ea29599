package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The ring buffer benchmark batches wakeups exactly as production does.
const benchWakeupBytes = DefaultWakeupBytes

// Ring buffer benchmark settings, from the environment so that one `go test`
// command can run this package's benchmarks and tests/bench's together
// (test flags go to every package's binary).
var (
	// Events offered in the paced run: 40 times what the ring holds, so
	// its slack cannot hide a slow reader.
	ringEvents = envInt("BRIDLE_BENCH_RING_EVENTS", 3_000_000)
	// Events per second offered in the paced run: 5% above the 500k/s
	// floor, so that the edges of a run (reader start, final drain)
	// cannot decide the verdict.
	ringRate = envInt("BRIDLE_BENCH_RING_RATE", 525_000)
	// How long the flood run keeps the ring overfull.
	ringFlood = time.Duration(envInt("BRIDLE_BENCH_RING_FLOOD_MS", 3000)) * time.Millisecond
	// Rounds of paced and flood runs, interleaved. Each round takes about
	// ten seconds, so fewer than the other benchmarks' rounds.
	ringRounds = envInt("BRIDLE_BENCH_RING_ROUNDS", 3)
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// benchPinRoot keeps benchmark pins apart from the product's and the tests'.
var benchPinRoot = filepath.Join(DefaultPinRoot, "bench")

// benchEnforcer loads a private enforcer, configured as bridled configures
// its own, and removes every pin it made when the benchmark ends.
func benchEnforcer(b *testing.B) *Enforcer {
	b.Helper()
	requireRoot(b)
	// The pid in the name lets tests/bench sweep pins of runs killed
	// before their cleanup.
	dir := filepath.Join(benchPinRoot, fmt.Sprintf("%s-%d-%d", sanitize(b.Name()), os.Getpid(), time.Now().UnixNano()))
	e, err := Load(Options{PinDir: dir, WakeupBytes: benchWakeupBytes})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		e.Close()
		if err := e.Unpin(); err != nil {
			b.Error(err)
		}
		// The shared directory goes with the last run using it; while
		// another run still has pins there, rmdir fails, harmlessly.
		_ = unix.Rmdir(benchPinRoot)
	})
	return e
}

// ringProducer is the test-only program that emits events into the
// enforcer's own ring buffer through Bridle's event helpers.
type ringProducer struct {
	objs ringbenchObjects
}

// loadRingProducer loads bpf/bench/ringbench.c against the enforcer's maps:
// the producer writes to the very ring buffer and drop counter that the
// enforcement programs use and that EventReader and Drops read.
func loadRingProducer(tb testing.TB, e *Enforcer) *ringProducer {
	tb.Helper()
	spec, err := loadRingbench()
	if err != nil {
		tb.Fatal(err)
	}
	if err := setWakeup(spec, benchWakeupBytes); err != nil {
		tb.Fatal(err)
	}
	shared := map[string]*ebpf.Map{
		"bridle_cgroups": e.net.BridleCgroups,
		"bridle_tasks":   e.net.BridleTasks,
		"bridle_net4":    e.net.BridleNet4,
		"bridle_net6":    e.net.BridleNet6,
		"bridle_exec":    e.net.BridleExec,
		"bridle_unix":    e.net.BridleUnix,
		"bridle_listen":  e.net.BridleListen,
		"bridle_events":  e.net.BridleEvents,
		"bridle_drops":   e.net.BridleDrops,
		"bridle_budgets": e.net.BridleBudgets,
	}
	opts := replacementsFor(spec, &ebpf.CollectionOptions{MapReplacements: shared})
	for name := range spec.Maps {
		if _, ok := opts.MapReplacements[name]; !ok && name[0] != '.' {
			tb.Fatalf("ring producer declares map %s that the enforcer does not share", name)
		}
	}
	p := &ringProducer{}
	if err := spec.LoadAndAssign(&p.objs, &opts); err != nil {
		tb.Fatalf("load ring producer: %s", verifierError(err))
	}
	tb.Cleanup(func() { p.objs.Close() })
	return p
}

// emit asks the kernel for n events and returns how many the program
// attempted (reserved or counted as dropped).
func (p *ringProducer) emit(n uint32) (uint32, error) {
	args := struct{ Count, Pad uint32 }{Count: n}
	ret, err := p.objs.BridleRingbench.Run(&ebpf.RunOptions{Context: args})
	if err != nil {
		return 0, fmt.Errorf("run ring producer: %w", err)
	}
	return ret, nil
}

// pinToCPU binds the calling goroutine's thread to one CPU, so producer and
// reader each have a core as they would on a busy node. The goroutine must
// stay locked until it exits, so the runtime discards the thread instead of
// reusing it with a narrowed affinity. With a single CPU both share it.
func pinToCPU(cpu int) error {
	runtime.LockOSThread()
	if cpu >= runtime.NumCPU() {
		return nil
	}
	var set unix.CPUSet
	set.Set(cpu)
	return unix.SchedSetaffinity(0, &set)
}

// ringRun is the outcome of one producer/consumer run.
type ringRun struct {
	produced, consumed, dropped uint64
	elapsed                     time.Duration
}

// runRing offers total events at rate per second on CPU 0, or with rate 0
// floods the ring for the given duration as fast as the kernel can make
// events, while loader.EventReader consumes them on CPU 1; then it drains
// the ring. Every event offered must end up read or counted as dropped.
func runRing(e *Enforcer, p *ringProducer, total, rate int, flood time.Duration) (ringRun, error) {
	const batch = 1024 // events per BPF_PROG_TEST_RUN call
	rd, err := e.Events()
	if err != nil {
		return ringRun{}, err
	}
	defer rd.Close()
	drops0, err := e.Drops()
	if err != nil {
		return ringRun{}, err
	}

	var (
		wg       sync.WaitGroup
		consumed uint64
		readErr  error
		lastRead time.Time
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := pinToCPU(1); err != nil {
			readErr = err
			return
		}
		for {
			_, err := rd.Read()
			if errors.Is(err, ErrFlushed) {
				lastRead = time.Now()
				return
			}
			if err != nil {
				readErr = err
				return
			}
			consumed++
		}
	}()

	var run ringRun
	var prodErr error
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := pinToCPU(0); err != nil {
			prodErr = err
			return
		}
		for {
			want := uint64(batch)
			if rate > 0 {
				if run.produced >= uint64(total) {
					return
				}
				want = min(want, uint64(total)-run.produced)
				due := start.Add(time.Duration(float64(run.produced) / float64(rate) * float64(time.Second)))
				if d := time.Until(due); d > 0 {
					time.Sleep(d)
				}
			} else if time.Since(start) >= flood {
				return
			}
			n, err := p.emit(uint32(want))
			if err == nil && n == 0 {
				err = errors.New("ring producer made no events")
			}
			if err != nil {
				prodErr = err
				return
			}
			run.produced += uint64(n)
		}
	}()
	<-done
	if prodErr != nil {
		rd.Close()
		wg.Wait()
		return run, prodErr
	}
	// Everything produced is now either in the ring or counted; Flush
	// makes the reader return what is queued and then stop.
	if err := rd.Flush(); err != nil {
		return run, err
	}
	wg.Wait()
	if readErr != nil {
		return run, readErr
	}
	drops1, err := e.Drops()
	if err != nil {
		return run, err
	}
	run.consumed = consumed
	run.dropped = drops1 - drops0
	run.elapsed = lastRead.Sub(start)
	return run, nil
}

// BenchmarkRingBuffer measures the decision-event path end to end: the
// kernel side reserves, fills and submits struct bridle_event records with
// Bridle's helpers and batched wakeups; the Go side reads and decodes them
// with EventReader. One benchmark op is one whole run; the numbers that
// matter are the custom metrics.
//
//   - paced: BRIDLE_BENCH_RING_EVENTS events offered at
//     BRIDLE_BENCH_RING_RATE per second. The floor is met when every
//     event is read, none dropped, and the reader kept up with the pace.
//   - flood: for BRIDLE_BENCH_RING_FLOOD_MS, events offered as fast as the kernel
//     makes them, so the ring stays overfull. The reader's rate here is its
//     ceiling, and the drops must be counted: produced == consumed +
//     dropped, nothing lost silently.
func BenchmarkRingBuffer(b *testing.B) {
	e := benchEnforcer(b)
	p := loadRingProducer(b, e)
	modes := []struct {
		name string
		rate int
	}{{"paced", ringRate}, {"flood", 0}}
	for r := range ringRounds {
		mode := modes[r%2]
		b.Run(mode.name, func(b *testing.B) { benchRing(b, e, p, mode.rate) })
		mode = modes[(r+1)%2]
		b.Run(mode.name, func(b *testing.B) { benchRing(b, e, p, mode.rate) })
	}
}

func benchRing(b *testing.B, e *Enforcer, p *ringProducer, rate int) {
	var run ringRun
	for range b.N {
		var err error
		run, err = runRing(e, p, ringEvents, rate, ringFlood)
		if err != nil {
			b.Fatal(err)
		}
	}
	lost := int64(run.produced) - int64(run.consumed) - int64(run.dropped)
	b.ReportMetric(float64(run.produced), "produced")
	b.ReportMetric(float64(run.consumed), "consumed")
	b.ReportMetric(float64(run.dropped), "dropped")
	b.ReportMetric(float64(lost), "lost")
	b.ReportMetric(float64(run.consumed)/run.elapsed.Seconds(), "events/s")
	if rate > 0 {
		b.ReportMetric(float64(rate), "offered/s")
	}
	if lost != 0 {
		b.Errorf("%d events neither read nor counted as dropped", lost)
	}
}
