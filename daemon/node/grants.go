package node

import (
	"sync"

	"github.com/bridle-sh/bridle/policy"
)

// Grants are a request's grants (what a task may do at most), parsed at the
// edge (api.Grants.Envelope) and compiled here once, however often they are
// checked: `bridle run` checks them before anything runs, and its task
// start uses the same compilation.
type Grants struct {
	Envelope policy.Envelope

	once  sync.Once
	rules policy.RuleSet
	err   error
}

// NewGrants wraps a parsed envelope; nil (no grants) stays nil.
func NewGrants(env *policy.Envelope) *Grants {
	if env == nil {
		return nil
	}
	return &Grants{Envelope: *env}
}

// Rules compiles the grants, the first time it is called only.
func (g *Grants) Rules() (policy.RuleSet, error) {
	g.once.Do(func() { g.rules, g.err = policy.Compile(g.Envelope) })
	return g.rules, g.err
}
