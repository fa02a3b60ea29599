package dns

import (
	"sync"
	"time"
)

// budgets hold each task's budget of queries for names matched only by
// wildcard rules. Such a name can carry data out in its labels
// (secret.attacker.example under an allowed *.example), one query per
// chunk, and so can the mere choice among names already asked, repeated:
// every query that goes to the upstream costs one token of a bucket that
// refills at a steady rate, and a name not asked before also one from a
// total over the task's life. A query the cache answers leaves the host
// not at all and costs nothing.
type budgets struct {
	mu    sync.Mutex
	names int
	rate  float64
	burst int
	tasks map[budgetKey]*taskBudget
}

// budgetKey is a task, or for a workload without one, its cgroup.
type budgetKey struct {
	task     string
	workload string
}

type taskBudget struct {
	seen   map[string]struct{}
	tokens float64
	last   time.Time
	ends   time.Time // zero: none
}

func newBudgets(names int, rate float64, burst int) *budgets {
	return &budgets{names: names, rate: rate, burst: burst, tasks: make(map[budgetKey]*taskBudget)}
}

// take reports whether the task may send a query for name to the upstream
// now, and counts it.
func (b *budgets) take(k budgetKey, ends time.Time, name string, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.tasks[k]
	if t == nil {
		b.forgetEnded(now)
		t = &taskBudget{seen: make(map[string]struct{}), tokens: float64(b.burst), last: now, ends: ends}
		b.tasks[k] = t
	}
	_, seen := t.seen[name]
	if !seen && len(t.seen) >= b.names {
		return false
	}
	if now.After(t.last) {
		t.tokens = min(float64(b.burst), t.tokens+now.Sub(t.last).Seconds()*b.rate)
		t.last = now
	}
	if t.tokens < 1 {
		return false
	}
	t.tokens--
	t.seen[name] = struct{}{}
	return true
}

// forget drops a task's budget when it ends.
func (b *budgets) forget(task string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for k := range b.tasks {
		if k.task == task {
			delete(b.tasks, k)
		}
	}
}

// forgetEnded drops the budgets of tasks past their end, so the map does
// not grow with every task a long-running daemon saw even if nobody calls
// forget. Called with b.mu held, when a new task starts spending.
func (b *budgets) forgetEnded(now time.Time) {
	for k, t := range b.tasks {
		if !t.ends.IsZero() && now.After(t.ends) {
			delete(b.tasks, k)
		}
	}
}

// inFlight counts each task's queries waiting on the upstream.
type inFlight struct {
	mu sync.Mutex
	n  map[budgetKey]int
}

// acquire counts one more query of k, unless k has max already.
func (f *inFlight) acquire(k budgetKey, max int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == nil {
		f.n = map[budgetKey]int{}
	}
	if f.n[k] >= max {
		return false
	}
	f.n[k]++
	return true
}

func (f *inFlight) release(k budgetKey) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n[k]--; f.n[k] <= 0 {
		delete(f.n, k)
	}
}
