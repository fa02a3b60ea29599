package run

import (
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/bridle-sh/bridle/bpf"
	"github.com/bridle-sh/bridle/daemon/audit"
)

// summary counts a run's decisions for the report printed at exit.
type summary struct {
	mu       sync.Mutex
	verdicts map[bpf.Verdict]int
	refused  map[string]*refusal // by target
	// suppressed counts decisions the kernel left out over the workload's
	// event budget: known from the records that follow them and the
	// task's end.
	suppressed uint64
}

type refusal struct {
	target, flag string
	count        int
}

func newSummary() *summary {
	return &summary{verdicts: map[bpf.Verdict]int{}, refused: map[string]*refusal{}}
}

// Record counts a decision, and the decisions a record (a decision's, or
// the task's end) says were left out before it.
func (s *summary) Record(r audit.Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.suppressed += r.Suppressed
	if r.Action == bpf.ActionTaskEnd {
		return
	}
	s.verdicts[r.Verdict]++
	if r.Verdict == bpf.VerdictAllow {
		return
	}
	key := string(r.Action) + " " + r.Target()
	ref, ok := s.refused[key]
	if !ok {
		ref = &refusal{target: key, flag: r.AllowFlag()}
		s.refused[key] = ref
	}
	ref.count++
}

// maxListed bounds the refusals listed by name in the summary.
const maxListed = 10

func (s *summary) print(w io.Writer, command string, status int, drops uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Every line is escaped (audit.Printable): targets are paths and names
	// the workload chose, and a newline in one must not forge a line.
	head := fmt.Sprintf("bridle: %s exited with status %d; %d denied, %d would-deny, %d allowed (logged)",
		command, status, s.verdicts[bpf.VerdictDeny], s.verdicts[bpf.VerdictWouldDeny], s.verdicts[bpf.VerdictAllow])
	if s.suppressed > 0 {
		head += fmt.Sprintf("; %d more suppressed (over the workload's event budget: counted, not recorded one by one)", s.suppressed)
	}
	if drops > 0 {
		head += fmt.Sprintf("; %d EVENTS LOST (ring buffer full)", drops)
	}
	fmt.Fprintln(w, audit.Printable(head))
	list := make([]*refusal, 0, len(s.refused))
	for _, r := range s.refused {
		list = append(list, r)
	}
	sort.Slice(list, func(i, j int) bool {
		if list[i].count != list[j].count {
			return list[i].count > list[j].count
		}
		return list[i].target < list[j].target
	})
	for i, r := range list {
		if i == maxListed {
			fmt.Fprintf(w, "bridle:   ... and %d more\n", len(list)-maxListed)
			break
		}
		line := fmt.Sprintf("bridle:   %dx %s", r.count, r.target)
		if r.flag != "" {
			line += "  (" + r.flag + ")"
		}
		fmt.Fprintln(w, audit.Printable(line))
	}
}
