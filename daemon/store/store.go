// Package store persists the daemon's tasks, so that a restarted bridled
// knows which slots hold which task and when each one expires. The kernel
// keeps enforcing while the daemon is down; the store is what lets the new
// daemon take over those tasks rather than guess.
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/bridle-sh/bridle/daemon/tasks"
	"github.com/bridle-sh/bridle/policy"
)

// version of the file format; a file with another version is refused.
const version = 1

// file holds the tasks with the policy revision that decided each one's
// envelope (its decision events carry that revision after a restart too)
// and its parent; their compiled rules are kept apart (SaveRules).
type file struct {
	Version int          `json:"version"`
	Tasks   []tasks.Task `json:"tasks"`
}

// Store is one JSON file of tasks.
type Store struct {
	mu   sync.Mutex
	path string
}

// Open returns the store at dir/tasks.json, creating dir if missing.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	return &Store{path: filepath.Join(dir, "tasks.json")}, nil
}

// Path is the store's file.
func (s *Store) Path() string { return s.path }

// Load returns the stored tasks; none when the file does not exist yet.
func (s *Store) Load() ([]tasks.Task, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	var f file
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("store: %s: %w", s.path, err)
	}
	if f.Version != version {
		return nil, fmt.Errorf("store: %s: version %d, want %d", s.path, f.Version, version)
	}
	return f.Tasks, nil
}

// Save replaces the stored tasks.
func (s *Store) Save(ts []tasks.Task) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ts == nil {
		ts = []tasks.Task{}
	}
	b, err := json.MarshalIndent(file{Version: version, Tasks: ts}, "", "  ")
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return writeAtomic(s.path, append(b, '\n'))
}

// SaveRules keeps a task's compiled rules, so that a sub-agent started
// after a restart is still held within them. One file per task keeps
// tasks.json small however large the envelopes are.
func (s *Store) SaveRules(id string, rs policy.RuleSet) error {
	b, err := json.Marshal(rs)
	if err != nil {
		return fmt.Errorf("store: rules of %s: %w", id, err)
	}
	if err := os.MkdirAll(s.rulesDir(), 0o700); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	// Not synced: losing the file in a crash only keeps the task from
	// having sub-agents, and syncing megabytes would stall the task
	// store's own synced writes behind it.
	return replaceFile(s.rulesPath(id), b, false)
}

// LoadRules returns the rules SaveRules kept for a task.
func (s *Store) LoadRules(id string) (policy.RuleSet, error) {
	var rs policy.RuleSet
	b, err := os.ReadFile(s.rulesPath(id))
	if err != nil {
		return rs, fmt.Errorf("store: rules of %s: %w", id, err)
	}
	if err := json.Unmarshal(b, &rs); err != nil {
		return rs, fmt.Errorf("store: rules of %s: %w", id, err)
	}
	return rs, nil
}

// RemoveRules deletes the kept rules of a task that ended.
func (s *Store) RemoveRules(id string) {
	_ = os.Remove(s.rulesPath(id))
}

// RemoveRulesExcept deletes the kept rules of every task not in keep.
func (s *Store) RemoveRulesExcept(keep map[string]bool) {
	des, _ := os.ReadDir(s.rulesDir())
	for _, de := range des {
		id := strings.TrimSuffix(de.Name(), ".json")
		if !keep[id] {
			_ = os.Remove(filepath.Join(s.rulesDir(), de.Name()))
		}
	}
}

func (s *Store) rulesDir() string { return filepath.Join(filepath.Dir(s.path), "rules") }

func (s *Store) rulesPath(id string) string {
	return filepath.Join(s.rulesDir(), filepath.Base(id)+".json")
}

// BaselineRevision returns the policy revision whose baseline the last
// daemon wrote into the kernel, "" if none is recorded.
func (s *Store) BaselineRevision() (string, error) {
	b, err := os.ReadFile(s.baselinePath())
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("store: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// SetBaselineRevision records the revision of the baseline in the kernel.
func (s *Store) SetBaselineRevision(rev string) error {
	return writeAtomic(s.baselinePath(), []byte(rev+"\n"))
}

func (s *Store) baselinePath() string {
	return filepath.Join(filepath.Dir(s.path), "baseline.rev")
}

// writeAtomic replaces a file whole: a temporary file is written, synced,
// renamed over the old one and the directory synced, so after a crash the
// file holds either the old content or the new, never a mix.
func writeAtomic(path string, b []byte) error { return replaceFile(path, b, true) }

// replaceFile replaces a file whole by renaming a temporary file over it;
// with sync, the file and the directory are synced too.
func replaceFile(path string, b []byte, sync bool) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("store: write: %w", err)
	}
	if sync {
		if err := tmp.Sync(); err != nil {
			tmp.Close()
			return fmt.Errorf("store: sync: %w", err)
		}
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if !sync {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("store: sync %s: %w", dir, err)
	}
	return nil
}
