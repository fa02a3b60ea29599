// Package engine evaluates Bridle's Rego policies (OPA v1) into task
// envelopes. It is the only package that imports OPA.
//
// Policy is evaluated once per task start, not per connection: the kernel's
// maps hold the result, so they are the cache of every decision OPA made.
// The Rego contract (input, data.bridle.envelope, data.bridle.baseline,
// data.bridle.deny) is described in docs/POLICY.md; policies load from a
// directory ([Engine.LoadDir]), a bundle file ([Engine.LoadBundleFile]) or an
// OPA bundle service ([Engine.WatchBundle]).
package engine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bridle-sh/bridle/policy"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/loader/filter"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/topdown/print"
	"github.com/open-policy-agent/opa/v1/util"
)

// The documents a policy defines, relative to data.
const (
	envelopeQuery = "data.bridle.envelope"
	baselineQuery = "data.bridle.baseline"
	denyQuery     = "data.bridle.deny"
	// approvableQuery is what a task may be granted on request.
	approvableQuery = "data.bridle.approvable"
)

// ErrNoPolicy is returned by evaluations while no policy has been loaded.
var ErrNoPolicy = errors.New("policy: no policy loaded")

// DeniedError is returned when a policy's deny rules refuse a task.
type DeniedError struct {
	Reasons  []string // the deny messages, in the policy's (sorted) order
	Revision string   // the policy revision that refused
}

func (e *DeniedError) Error() string {
	return fmt.Sprintf("policy: task refused by policy %s: %s", e.Revision, strings.Join(e.Reasons, "; "))
}

// Decision is the outcome of evaluating a policy for a task or a baseline.
type Decision struct {
	// policy.Envelope is what the task may do, ready for policy.Compile. Its TTL is the
	// task's lifetime: the requested TTL capped by MaxTTL (0: no expiry).
	Envelope policy.Envelope
	// MaxTTL is the longest lifetime the policy allows; 0 when it sets no
	// maximum.
	MaxTTL time.Duration
	// Revision identifies the policy that decided, for the decision
	// events of everything the envelope then allows or refuses.
	Revision string
	// Approvable is what the task may be granted on request; empty when
	// the policy defines no data.bridle.approvable (and for a baseline).
	Approvable policy.Approvable
}

// Status describes the policy in force and the most recent failed load.
type Status struct {
	Revision string    // "" while no policy is loaded
	Source   string    // where the policy in force came from
	Loaded   time.Time // when it went into force
	// LastError is the most recent load that failed, nil once a later
	// load succeeds. A failed load never replaces the policy in force.
	LastError   error
	LastErrorAt time.Time
	Failures    uint64 // failed loads since the engine was made
}

// Engine evaluates Rego policies into envelopes. Loads compile and prepare a
// policy once; evaluations, which may run concurrently with each other and
// with loads, use whichever policy was in force when they began. A load
// that fails for any reason leaves the policy in force untouched.
type Engine struct {
	cur    atomic.Pointer[prepared]
	log    *slog.Logger
	loadMu sync.Mutex // one load at a time, so Status stays consistent
	// onChange is told about each new revision in force; see WithOnChange.
	onChange func(revision string)

	statusMu sync.Mutex
	lastErr  error
	lastAt   time.Time
	failures uint64
}

// prepared is one policy revision, compiled and ready to evaluate. It is
// never modified after it is made, so swapping the pointer swaps the policy
// and its revision together.
type prepared struct {
	revision string
	source   string
	loaded   time.Time
	envelope rego.PreparedEvalQuery
	baseline rego.PreparedEvalQuery
	deny     rego.PreparedEvalQuery
	approv   rego.PreparedEvalQuery
	// modules are the policy's parsed modules, sorted by path, where a
	// refused envelope entry is looked up to say where it was written.
	modules []*ast.Module
}

// Option configures an Engine.
type Option func(*Engine)

// WithOnChange sets a function called after a load puts a policy with a
// new revision in force (not after a reload of the same revision), so the
// caller can rewrite what it derived from the old one.
func WithOnChange(f func(revision string)) Option {
	return func(e *Engine) { e.onChange = f }
}

// WithLogger sets where the engine logs loads, failures and the output of
// print() calls in policies. The default discards everything.
func WithLogger(l *slog.Logger) Option {
	return func(e *Engine) { e.log = l }
}

// NewEngine returns an engine with no policy loaded: until a load succeeds,
// every evaluation fails with ErrNoPolicy.
func NewEngine(opts ...Option) *Engine {
	e := &Engine{log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(e)
	}
	return e
}

// Revision returns the revision of the policy in force, "" if none.
func (e *Engine) Revision() string {
	if p := e.cur.Load(); p != nil {
		return p.revision
	}
	return ""
}

// Status reports the policy in force and the last failed load.
func (e *Engine) Status() Status {
	var s Status
	if p := e.cur.Load(); p != nil {
		s.Revision, s.Source, s.Loaded = p.revision, p.source, p.loaded
	}
	e.statusMu.Lock()
	s.LastError, s.LastErrorAt, s.Failures = e.lastErr, e.lastAt, e.failures
	e.statusMu.Unlock()
	return s
}

// LoadDir loads the policy in dir: every *.rego file below it except
// *_test.rego, and data.json or data.yaml files, which are placed in data
// by their directory as in an OPA bundle (a .manifest is honoured too). The
// revision is "sha256:" and a hash of what was loaded, so the same files
// give the same revision on every host.
func (e *Engine) LoadDir(ctx context.Context, dir string) error {
	source := "dir:" + dir
	fi, err := os.Stat(dir)
	if err == nil && !fi.IsDir() {
		err = fmt.Errorf("%s is not a directory", dir)
	}
	if err != nil {
		return e.failed(source, err)
	}
	// The directory itself may be a link too (a projected volume's
	// subdirectory is one, into the volume's hidden directory of the
	// moment): the walk starts where it leads, which is also where files
	// of one load all come from.
	root, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return e.failed(source, err)
	}
	// Symlinks are followed because policy directories are often mounted
	// that way (a ConfigMap's files are links into a hidden directory).
	loader := bundle.NewDirectoryLoader(root).WithFilter(skipNonPolicy(root)).WithFollowSymlinks(true)
	b, err := bundle.NewCustomReader(loader).
		WithRegoVersion(ast.RegoV1).
		WithBaseDir(root). // errors name files as root/file.rego
		WithSkipBundleVerification(true).
		Read()
	if err != nil {
		return e.failed(source, err)
	}
	return e.activate(ctx, source, &b, contentRevision(&b))
}

// LoadBundleFile loads a bundle tarball, as written by `opa build`. Its
// revision is the manifest's revision, or a content hash if it has none.
func (e *Engine) LoadBundleFile(ctx context.Context, path string) error {
	source := "bundle:" + path
	f, err := os.Open(path)
	if err != nil {
		return e.failed(source, err)
	}
	defer f.Close()
	b, err := bundle.NewCustomReader(bundle.NewTarballLoaderWithBaseURL(f, path)).
		WithRegoVersion(ast.RegoV1).
		WithSkipBundleVerification(true).
		Read()
	if err != nil {
		return e.failed(source, err)
	}
	return e.activate(ctx, source, &b, bundleRevision(&b))
}

// skipNonPolicy keeps what a policy directory holds for the engine: Rego
// modules other than tests (which `opa test` runs, and which may define
// rules in package bridle), data.json and data.yaml files, and a .manifest.
// Anything else is never read, and hidden directories below root (.git, or
// the ..2026_... directories of a Kubernetes ConfigMap volume, whose files
// are reached through their symlinks instead) are not entered.
func skipNonPolicy(root string) filter.LoaderFilter {
	root = filepath.Clean(root)
	return func(path string, info fs.FileInfo, _ int) bool {
		name := info.Name()
		if info.IsDir() {
			return strings.HasPrefix(name, ".") && filepath.Clean(path) != root
		}
		switch {
		case strings.HasSuffix(name, "_test.rego"):
			return true
		case strings.HasSuffix(name, ".rego"), name == "data.json", name == "data.yaml", name == "data.yml", name == ".manifest":
			return false
		}
		return true
	}
}

// failed records a failed load and returns its error, framed with where the
// policy came from. OPA's own messages, which carry file:line, are kept as
// they are.
func (e *Engine) failed(source string, err error) error {
	err = fmt.Errorf("policy: %s rejected (policy in force unchanged): %w", source, err)
	e.statusMu.Lock()
	e.lastErr, e.lastAt = err, time.Now()
	e.failures++
	e.statusMu.Unlock()
	e.log.Error("policy load failed", "source", source, "err", err, "revision_in_force", e.Revision())
	return err
}

// unsafeBuiltins are built-in functions a Bridle policy may not call. They
// do network I/O: a task start would wait on (and be steered by) the
// network from inside the node agent, and an envelope would no longer be a
// function of the policy revision and the input alone. Name-based egress
// belongs to the DNS proxy, not to a lookup at task start.
var unsafeBuiltins = map[string]struct{}{
	ast.HTTPSend.Name:        {},
	ast.NetLookupIPAddr.Name: {},
}

// activate compiles b, checks it, prepares its queries and, only if all of
// that succeeded, puts it in force.
func (e *Engine) activate(ctx context.Context, source string, b *bundle.Bundle, revision string) error {
	changed, err := e.swap(ctx, source, b, revision)
	if err != nil {
		return err
	}
	if changed && e.onChange != nil {
		e.onChange(revision)
	}
	return nil
}

// swap puts b in force if it prepares, and reports whether the revision in
// force changed.
func (e *Engine) swap(ctx context.Context, source string, b *bundle.Bundle, revision string) (bool, error) {
	e.loadMu.Lock()
	defer e.loadMu.Unlock()
	p, err := e.prepare(ctx, source, b, revision)
	if err != nil {
		return false, e.failed(source, err)
	}
	old := e.cur.Swap(p)
	e.statusMu.Lock()
	e.lastErr = nil
	e.statusMu.Unlock()
	from := ""
	if old != nil {
		from = old.revision
	}
	e.log.Info("policy loaded", "source", source, "revision", revision, "previous", from)
	return from != revision, nil
}

func (e *Engine) prepare(ctx context.Context, source string, b *bundle.Bundle, revision string) (*prepared, error) {
	if b.Type() == bundle.DeltaBundleType {
		return nil, errors.New("delta bundles are not supported; serve snapshot bundles")
	}
	if len(b.WasmModules) > 0 || len(b.PlanModules) > 0 {
		return nil, errors.New("bundles with Wasm or plan modules are not supported; Bridle evaluates Rego")
	}
	modules := make(map[string]*ast.Module, len(b.Modules))
	var hasBridle bool
	for _, mf := range b.Modules {
		if v := mf.Parsed.RegoVersion(); v != ast.RegoV1 {
			return nil, fmt.Errorf("%s: written for Rego %s; Bridle takes Rego v1 only (drop rego_version from the bundle manifest)", mf.Path, v)
		}
		if _, dup := modules[mf.Path]; dup {
			return nil, fmt.Errorf("%s: module appears twice", mf.Path)
		}
		modules[mf.Path] = mf.Parsed
		if mf.Parsed.Package.Path.HasPrefix(ast.MustParseRef("data.bridle")) {
			hasBridle = true
		}
	}
	if !hasBridle {
		// An empty or misnamed policy would quietly refuse every task and
		// allow nothing; say so at load instead.
		return nil, errors.New("no module declares package bridle (or a package below it); a Bridle policy defines data.bridle.envelope, data.bridle.baseline and data.bridle.deny")
	}

	var schema any
	if err := util.UnmarshalJSON(inputSchema, &schema); err != nil {
		return nil, fmt.Errorf("input schema: %w", err)
	}
	schemas := ast.NewSchemaSet()
	schemas.Put(ast.SchemaRootRef, schema)

	compiler := ast.NewCompiler().
		WithDefaultRegoVersion(ast.RegoV1).
		WithSchemas(schemas).
		WithUnsafeBuiltins(unsafeBuiltins).
		WithEnablePrintStatements(true)
	compiler.Compile(modules)
	if compiler.Failed() {
		return nil, compiler.Errors
	}

	// Data is kept as AST values, so an evaluation that reads a large
	// document (a list of thousands of destinations) does not convert it
	// from Go values each time.
	store := inmem.NewFromObjectWithOpts(b.Data, inmem.OptReturnASTValuesOnRead(true))
	hook := printHook{log: e.log, revision: revision}
	prep := func(query string) (rego.PreparedEvalQuery, error) {
		return rego.New(
			rego.Query(query),
			rego.Compiler(compiler),
			rego.Store(store),
			rego.UnsafeBuiltins(unsafeBuiltins),
			// A built-in that fails (a malformed CIDR handed to
			// net.cidr_contains, say) makes its expression undefined by
			// default, which in a deny rule would let a task through.
			// Strict errors turn it into a failed evaluation instead,
			// and a failed evaluation refuses the task.
			rego.StrictBuiltinErrors(true),
			rego.EnablePrintStatements(true),
			rego.PrintHook(hook),
		).PrepareForEval(ctx)
	}
	p := &prepared{revision: revision, source: source, loaded: time.Now()}
	for _, path := range slices.Sorted(maps.Keys(modules)) {
		p.modules = append(p.modules, modules[path])
	}
	var err error
	if p.envelope, err = prep(envelopeQuery); err != nil {
		return nil, err
	}
	if p.baseline, err = prep(baselineQuery); err != nil {
		return nil, err
	}
	if p.deny, err = prep(denyQuery); err != nil {
		return nil, err
	}
	if p.approv, err = prep(approvableQuery); err != nil {
		return nil, err
	}

	// Whatever a policy yields without looking at its input is checked
	// now, so that a constant mistake (a bad CIDR, a bad host, a
	// rule conflict) is refused at load, with the policy in force kept,
	// rather than at the first task start. Parts that depend on the input
	// are checked at each evaluation, where a bad entry refuses the task.
	empty := ast.NewObject()
	if _, err := p.evalDeny(ctx, empty); err != nil {
		return nil, err
	}
	if _, _, err := p.evalEnvelope(ctx, p.envelope, envelopeQuery, empty, true); err != nil {
		return nil, err
	}
	if _, _, err := p.evalEnvelope(ctx, p.baseline, baselineQuery, empty, false); err != nil {
		return nil, err
	}
	if _, err := p.evalApprovable(ctx, empty); err != nil {
		return nil, err
	}
	return p, nil
}

// Evaluate decides the envelope of the task in in.Task. It returns a
// *DeniedError when the policy's deny rules refuse the task, and another
// error when the policy fails or yields something that is not an envelope;
// either way the task must not start.
func (e *Engine) Evaluate(ctx context.Context, in Input) (Decision, error) {
	if in.Task == nil {
		return Decision{}, errors.New("policy: Evaluate needs a task; use Baseline for a workload without one")
	}
	p := e.cur.Load()
	if p == nil {
		return Decision{}, ErrNoPolicy
	}
	input, err := inputValue(in)
	if err != nil {
		return Decision{}, err
	}
	reasons, err := p.evalDeny(ctx, input)
	if err != nil {
		return Decision{}, p.evalError(err)
	}
	if len(reasons) > 0 {
		return Decision{}, &DeniedError{Reasons: reasons, Revision: p.revision}
	}
	env, maxTTL, err := p.evalEnvelope(ctx, p.envelope, envelopeQuery, input, true)
	if err != nil {
		return Decision{}, p.evalError(err)
	}
	env.TTL = in.Task.TTL
	if maxTTL > 0 && (env.TTL == 0 || env.TTL > maxTTL) {
		env.TTL = maxTTL
	}
	approvable, err := p.evalApprovable(ctx, input)
	if err != nil {
		return Decision{}, p.evalError(err)
	}
	return Decision{Envelope: env, MaxTTL: maxTTL, Revision: p.revision, Approvable: approvable}, nil
}

// Baseline decides the envelope of a workload that has no task: what the
// policy's data.bridle.baseline allows, or nothing if it defines none.
// in.Task and in.Parent are ignored.
func (e *Engine) Baseline(ctx context.Context, in Input) (Decision, error) {
	p := e.cur.Load()
	if p == nil {
		return Decision{}, ErrNoPolicy
	}
	in.Task, in.Parent = nil, nil
	input, err := inputValue(in)
	if err != nil {
		return Decision{}, err
	}
	env, _, err := p.evalEnvelope(ctx, p.baseline, baselineQuery, input, false)
	if err != nil {
		return Decision{}, p.evalError(err)
	}
	return Decision{Envelope: env, Revision: p.revision}, nil
}

// inputValue converts in into the value OPA evaluates against, once per
// evaluation rather than once per query.
func inputValue(in Input) (ast.Value, error) {
	b, err := json.Marshal(in)
	if err != nil {
		return nil, fmt.Errorf("policy: input: %w", err)
	}
	v, err := ast.ValueFromReader(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("policy: input: %w", err)
	}
	return v, nil
}

// evalError frames an evaluation failure with the revision that failed, so
// the message leads to the policy text that produced it.
func (p *prepared) evalError(err error) error {
	return fmt.Errorf("policy %s: %w", p.revision, err)
}

// eval runs one prepared query and returns its value, or nil when the
// document is undefined.
func (p *prepared) eval(ctx context.Context, q rego.PreparedEvalQuery, name string, input ast.Value) (any, error) {
	rs, err := q.Eval(ctx, rego.EvalParsedInput(input))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	switch len(rs) {
	case 0:
		return nil, nil
	case 1:
		if len(rs[0].Expressions) == 1 {
			return rs[0].Expressions[0].Value, nil
		}
	}
	return nil, fmt.Errorf("%s: %d results, want one", name, len(rs))
}

func (p *prepared) evalDeny(ctx context.Context, input ast.Value) ([]string, error) {
	v, err := p.eval(ctx, p.deny, denyQuery, input)
	if err != nil || v == nil {
		return nil, err
	}
	return policy.DecodeDeny(v)
}

func (p *prepared) evalEnvelope(ctx context.Context, q rego.PreparedEvalQuery, name string, input ast.Value, withTTL bool) (policy.Envelope, time.Duration, error) {
	v, err := p.eval(ctx, q, name, input)
	if err != nil || v == nil {
		return policy.Envelope{}, 0, err
	}
	env, maxTTL, err := policy.DecodeEnvelope(v, name, withTTL)
	if err != nil {
		return policy.Envelope{}, 0, p.locate(err)
	}
	return env, maxTTL, nil
}

// evalApprovable decides what the task may be granted on request; an
// entry the policy got wrong refuses the task, with where it was written,
// as an envelope's does.
func (p *prepared) evalApprovable(ctx context.Context, input ast.Value) (policy.Approvable, error) {
	v, err := p.eval(ctx, p.approv, approvableQuery, input)
	if err != nil || v == nil {
		return policy.Approvable{}, err
	}
	a, err := policy.DecodeApprovable(v, approvableQuery)
	if err != nil {
		return policy.Approvable{}, p.locate(err)
	}
	return a, nil
}

// locate leads the error of a refused envelope entry with the file:line
// where the policy wrote it: of a literal equal to the whole entry, or
// else of the string within it the error is about. An entry built from
// the input, from data files or by string functions has no such literal;
// its error stays as it is, naming the rule and the entry.
func (p *prepared) locate(err error) error {
	var ee *policy.EntryError
	if !errors.As(err, &ee) {
		return err
	}
	var targets []ast.Value
	if v, verr := ast.InterfaceToValue(ee.Entry); verr == nil {
		targets = append(targets, v)
	}
	if ee.Value != "" {
		targets = append(targets, ast.String(ee.Value))
	}
	for _, target := range targets {
		if loc := p.find(target); loc != nil {
			return fmt.Errorf("%s: %w", loc, err)
		}
	}
	return err
}

// find returns the location of the first term of the policy's modules
// equal to v, nil if none is.
func (p *prepared) find(v ast.Value) *ast.Location {
	var loc *ast.Location
	for _, m := range p.modules {
		ast.WalkTerms(m, func(t *ast.Term) bool {
			if loc != nil {
				return true
			}
			if t.Location != nil && t.Value.Compare(v) == 0 {
				loc = t.Location
				return true
			}
			return false
		})
		if loc != nil {
			return loc
		}
	}
	return nil
}

// printHook sends the output of print() calls in a policy to the log, with
// where the call is, so a policy author can trace a decision on a live node.
type printHook struct {
	log      *slog.Logger
	revision string
}

func (h printHook) Print(pc print.Context, msg string) error {
	loc := ""
	if pc.Location != nil {
		loc = pc.Location.String()
	}
	h.log.Info("policy print", "at", loc, "revision", h.revision, "msg", msg)
	return nil
}

// contentRevision hashes the modules (path and bytes) and the data of b.
// Every field is length-prefixed so that no two different policies hash
// the same input. The full digest is kept: the revision is how an auditor
// ties a decision to the reviewed policy, and a shortened one could be
// matched by a policy crafted for the purpose.
func contentRevision(b *bundle.Bundle) string {
	h := sha256.New()
	field := func(p []byte) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write(p)
	}
	mods := slices.Clone(b.Modules)
	slices.SortFunc(mods, func(a, b bundle.ModuleFile) int { return strings.Compare(a.Path, b.Path) })
	for _, m := range mods {
		// Hash the path as the bundle names it, without the directory
		// it was loaded from, so the revision does not depend on where
		// the files sit on this host.
		field([]byte("module"))
		field([]byte(filepath.ToSlash(m.RelativePath)))
		field(m.Raw)
	}
	data, _ := json.Marshal(b.Data) // map keys sorted: canonical for equal data
	field([]byte("data"))
	field(data)
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// bundleRevision is the revision a bundle's manifest declares, which is
// what its publisher (a CI job, a control plane) knows it by, or its
// content hash when it declares none.
func bundleRevision(b *bundle.Bundle) string {
	if r := b.Manifest.Revision; r != "" {
		return r
	}
	return contentRevision(b)
}
