package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// writePolicy writes files (name -> content) into a new directory.
func writePolicy(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func mustLoad(t testing.TB, files map[string]string) *Engine {
	t.Helper()
	e := NewEngine()
	if err := e.LoadDir(context.Background(), writePolicy(t, files)); err != nil {
		t.Fatal(err)
	}
	return e
}

func taskInput(intent string, ttl time.Duration) Input {
	return Input{
		Identity: "spiffe://example.org/agent/coding/a",
		Workload: Workload{Cgroup: "/agents/w1"},
		Task:     &Task{ID: "t1", Intent: intent, TTL: ttl},
	}
}

const simplePolicy = `package bridle

envelope := {
	"egress": [{"protocol": "tcp", "cidr": "192.0.2.0/24", "ports": [443]}],
	"exec": [{"path": "/usr/bin/git"}],
	"ttl": "1h",
}

deny contains "no intent" if input.task.intent == ""
`

func TestEvaluate(t *testing.T) {
	e := mustLoad(t, map[string]string{"p.rego": simplePolicy})
	d, err := e.Evaluate(context.Background(), taskInput("fix", 0))
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(d.Envelope.Egress, d.Envelope.Exec); got != "[tcp:192.0.2.0/24:443] [/usr/bin/git]" {
		t.Errorf("envelope = %s", got)
	}
	if d.Revision == "" || d.Revision != e.Revision() {
		t.Errorf("decision revision %q, engine revision %q", d.Revision, e.Revision())
	}

	_, err = e.Evaluate(context.Background(), taskInput("", 0))
	var denied *DeniedError
	if !errors.As(err, &denied) || len(denied.Reasons) != 1 || denied.Reasons[0] != "no intent" || denied.Revision != e.Revision() {
		t.Fatalf("Evaluate without intent: %v, want a DeniedError saying \"no intent\"", err)
	}
	if !strings.Contains(err.Error(), "no intent") {
		t.Errorf("error %q does not give the reason", err)
	}

	if _, err := e.Evaluate(context.Background(), Input{Identity: "x"}); err == nil {
		t.Error("Evaluate without a task succeeded")
	}
}

func TestTTLIsCapped(t *testing.T) {
	e := mustLoad(t, map[string]string{"p.rego": simplePolicy})
	for req, want := range map[time.Duration]time.Duration{
		0:                time.Hour, // as long as allowed
		10 * time.Minute: 10 * time.Minute,
		time.Hour:        time.Hour,
		5 * time.Hour:    time.Hour,
	} {
		d, err := e.Evaluate(context.Background(), taskInput("fix", req))
		if err != nil {
			t.Fatal(err)
		}
		if d.Envelope.TTL != want || d.MaxTTL != time.Hour {
			t.Errorf("requested %v: TTL %v (max %v), want %v (max 1h)", req, d.Envelope.TTL, d.MaxTTL, want)
		}
	}

	// Without a maximum the request stands, and no request means no expiry.
	e = mustLoad(t, map[string]string{"p.rego": "package bridle\nenvelope := {\"egress\": []}\n"})
	for _, req := range []time.Duration{0, 3 * time.Hour} {
		d, err := e.Evaluate(context.Background(), taskInput("fix", req))
		if err != nil || d.Envelope.TTL != req || d.MaxTTL != 0 {
			t.Errorf("no maximum, requested %v: %+v, %v", req, d, err)
		}
	}
}

func TestTaskSeesItsInput(t *testing.T) {
	e := mustLoad(t, map[string]string{"p.rego": `package bridle

envelope := {"egress": [{"protocol": "tcp", "cidr": input.workload.labels.ip, "ports": [input.task.ttl]}]} if {
	input.identity == "spiffe://example.org/a"
	input.workload.cgroup == "/w"
	input.task.labels.x == "y"
	input.parent.id == "p"
	input.requester.uid == 1000
}
`})
	in := Input{
		Identity:  "spiffe://example.org/a",
		Workload:  Workload{Cgroup: "/w", Labels: map[string]string{"ip": "192.0.2.9"}},
		Task:      &Task{ID: "t", Intent: "i", Labels: map[string]string{"x": "y"}, TTL: 8080 * time.Second},
		Parent:    &Parent{ID: "p"},
		Requester: Requester{UID: 1000},
	}
	d, err := e.Evaluate(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(d.Envelope.Egress); got != "[tcp:192.0.2.9:8080]" {
		t.Errorf("envelope from input = %s", got)
	}
}

func TestBaseline(t *testing.T) {
	e := mustLoad(t, map[string]string{"p.rego": simplePolicy})
	d, err := e.Baseline(context.Background(), Input{Identity: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Envelope.Egress)+len(d.Envelope.Exec)+len(d.Envelope.Unix) != 0 || d.Envelope.TTL != 0 {
		t.Errorf("default baseline = %+v, want nothing", d.Envelope)
	}

	e = mustLoad(t, map[string]string{"p.rego": `package bridle

baseline := {"egress": [{"unix": "/run/bridle/hello.sock"}]} if input.workload.labels.tier == "dev"

deny contains "always" # the baseline is not a task: deny does not apply
`})
	d, err = e.Baseline(context.Background(), Input{Workload: Workload{Labels: map[string]string{"tier": "dev"}}, Task: &Task{ID: "ignored"}})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(d.Envelope.Unix) != "[/run/bridle/hello.sock]" {
		t.Errorf("baseline = %+v", d.Envelope)
	}
}

func TestNoPolicy(t *testing.T) {
	e := NewEngine()
	if _, err := e.Evaluate(context.Background(), taskInput("x", 0)); !errors.Is(err, ErrNoPolicy) {
		t.Errorf("Evaluate = %v, want ErrNoPolicy", err)
	}
	if _, err := e.Baseline(context.Background(), Input{}); !errors.Is(err, ErrNoPolicy) {
		t.Errorf("Baseline = %v, want ErrNoPolicy", err)
	}
	if e.Revision() != "" {
		t.Errorf("revision %q", e.Revision())
	}
}

// Every way a policy can be bad is refused at load with the file and line
// OPA reports, and the policy in force keeps deciding.
func TestBadPolicyKeepsThePolicyInForce(t *testing.T) {
	e := mustLoad(t, map[string]string{"p.rego": simplePolicy})
	good := e.Revision()

	tests := []struct {
		name  string
		files map[string]string
		want  []string
	}{
		{"parse error", map[string]string{"p.rego": "package bridle\n\nenvelope := {\n"}, []string{"p.rego:4", "rego_parse_error"}},
		{"v0 syntax", map[string]string{"p.rego": "package bridle\n\ndeny[msg] { msg := \"x\" }\n"}, []string{"p.rego:3", "rego_parse_error"}},
		{"unsafe variable", map[string]string{"p.rego": "package bridle\n\ndeny contains msg if x > 1\n"}, []string{"p.rego:3", "rego_unsafe_var_error"}},
		{"undefined function", map[string]string{"p.rego": "package bridle\n\nenvelope := nosuch(1)\n"}, []string{"p.rego:3", "rego_type_error", "nosuch"}},
		{"typo in input field", map[string]string{"p.rego": "package bridle\n\nenvelope := {} if input.task.intnet == \"x\"\n"},
			[]string{"p.rego:3", "rego_type_error", "undefined ref: input.task.intnet"}},
		{"input field of the wrong type", map[string]string{"p.rego": "package bridle\n\nenvelope := {} if input.task.ttl == \"1h\"\n"},
			[]string{"p.rego:3", "rego_type_error"}},
		{"network I/O", map[string]string{"p.rego": "package bridle\n\nenvelope := http.send({\"method\": \"get\", \"url\": \"http://192.0.2.1\"}).body\n"},
			[]string{"p.rego:3", "unsafe built-in function calls", "http.send"}},
		{"DNS lookup", map[string]string{"p.rego": "package bridle\n\nx := net.lookup_ip_addr(\"example.com\")\n"},
			[]string{"p.rego:3", "net.lookup_ip_addr"}},
		{"conflicting rules", map[string]string{"a.rego": "package bridle\n\nbaseline := {\"egress\": []}\n", "b.rego": "package bridle\n\nbaseline := {\"exec\": []}\n"},
			[]string{"eval_conflict_error", "data.bridle.baseline", "a.rego:3", "b.rego:3"}},
		{"no package bridle", map[string]string{"p.rego": "package brdle\n\nenvelope := {}\n"}, []string{"no module declares package bridle"}},
		{"empty directory", map[string]string{"README": "nothing here"}, []string{"no module declares package bridle"}},
		{"star inside a host", map[string]string{"p.rego": "package bridle\n\nenvelope := {\"egress\": [\n\t{\"protocol\": \"tcp\", \"host\": \"api.*.example.com\", \"ports\": [443]},\n]}\n"},
			[]string{"p.rego:4:", "data.bridle.envelope", "egress[0]", `host "api.*.example.com": '*' is allowed only as the first label`}},
		{"host built from a list", map[string]string{"p.rego": "package bridle\n\nhosts := [\n\t\"ok.example.com\",\n\t\"*x.example.com\",\n]\n\nenvelope := {\"egress\": [{\"protocol\": \"tcp\", \"host\": h} | some h in hosts]}\n"},
			[]string{"p.rego:5:", "egress[1]", "'*' is allowed only as the first label"}},
		{"address as host", map[string]string{"p.rego": "package bridle\n\nbaseline := {\"egress\": [{\"protocol\": \"tcp\", \"host\": \"192.0.2.1\"}]}\n"},
			[]string{"p.rego:3:", "data.bridle.baseline", "use cidr"}},
		{"host and cidr", map[string]string{"p.rego": "package bridle\n\nenvelope := {\"egress\": [{\"protocol\": \"tcp\", \"host\": \"a.example.com\", \"cidr\": \"192.0.2.1\"}]}\n"},
			[]string{"p.rego:3:", "host and cidr together"}},
		{"constant bad cidr", map[string]string{"p.rego": "package bridle\n\nbaseline := {\"egress\": [{\"protocol\": \"tcp\", \"cidr\": \"10.0.0.0/40\"}]}\n"},
			[]string{"p.rego:3:", "data.bridle.baseline", "egress[0]", "prefix length"}},
		{"approvable bad max_ttl", map[string]string{"p.rego": "package bridle\n\napprovable := {\"egress\": [\n\t{\"protocol\": \"tcp\", \"cidr\": \"192.0.2.0/24\", \"max_ttl\": \"ten minutes\"},\n]}\n"},
			[]string{"p.rego:4:", "data.bridle.approvable", "egress[0]", "max_ttl"}},
		{"approvable bad cidr", map[string]string{"p.rego": "package bridle\n\napprovable := {\"egress\": [{\"protocol\": \"tcp\", \"cidr\": \"10.0.0.0/40\", \"approvers\": {\"uids\": [1000]}}]}\n"},
			[]string{"p.rego:3:", "data.bridle.approvable", "egress[0]", "prefix length"}},
		{"approvers naming nobody", map[string]string{"p.rego": "package bridle\n\napprovable := {\"exec\": [{\"path\": \"/bin/sh\", \"approvers\": {}}]}\n"},
			[]string{"p.rego:3:", "data.bridle.approvable", "exec[0]", "names nobody"}},
		{"approvable unix socket", map[string]string{"p.rego": "package bridle\n\napprovable := {\"egress\": [{\"unix\": \"/run/x.sock\"}]}\n"},
			[]string{"data.bridle.approvable", "unix sockets cannot be approved"}},
		{"deny not strings", map[string]string{"p.rego": "package bridle\n\ndeny := true\n"}, []string{"data.bridle.deny", "want a set of message strings"}},
		{"bad data file", map[string]string{"p.rego": "package bridle\n", "data.json": "{nope"}, []string{"data.json"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := e.LoadDir(context.Background(), writePolicy(t, tt.files))
			if err == nil {
				t.Fatal("bad policy loaded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
			if !strings.Contains(err.Error(), "policy in force unchanged") {
				t.Errorf("error %q does not say the policy in force stays", err)
			}
			if e.Revision() != good {
				t.Fatalf("revision changed to %q", e.Revision())
			}
			st := e.Status()
			if st.LastError == nil || st.LastError.Error() != err.Error() || st.Revision != good {
				t.Errorf("status after failure = %+v", st)
			}
			if d, err := e.Evaluate(context.Background(), taskInput("fix", 0)); err != nil || len(d.Envelope.Egress) != 1 {
				t.Errorf("old policy no longer decides: %+v, %v", d, err)
			}
		})
	}

	if err := e.LoadDir(context.Background(), filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing directory loaded")
	}
	if st := e.Status(); st.Failures != uint64(len(tests))+1 {
		t.Errorf("failures = %d, want %d", st.Failures, len(tests)+1)
	}
	if err := e.LoadDir(context.Background(), writePolicy(t, map[string]string{"p.rego": simplePolicy + "\n"})); err != nil {
		t.Fatal(err)
	}
	if st := e.Status(); st.LastError != nil || st.Revision == good {
		t.Errorf("status after a good load = %+v", st)
	}
}

// Host entries become name rules, in the case the policy wrote them or
// not.
func TestEvaluateHost(t *testing.T) {
	e := mustLoad(t, map[string]string{"p.rego": `package bridle

envelope := {"egress": [
	{"protocol": "tcp", "host": "API.GitHub.com", "ports": [443]},
	{"protocol": "any", "host": "*.githubusercontent.com"},
]}
`})
	d, err := e.Evaluate(context.Background(), taskInput("fix", 0))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range d.Envelope.Egress {
		got = append(got, r.String())
	}
	want := []string{"tcp:api.github.com:443", "any:*.githubusercontent.com"}
	if !slices.Equal(got, want) {
		t.Errorf("egress = %q, want %q", got, want)
	}
}

// Entries that depend on the input can only be checked when they appear:
// then the task is refused with the entry named, never started with the
// entry dropped.
func TestBadEntryAtEvaluationRefusesTheTask(t *testing.T) {
	e := mustLoad(t, map[string]string{"p.rego": `package bridle

envelope := {"egress": [{"protocol": "tcp", "cidr": input.task.labels.dest}]}
`})
	in := taskInput("x", 0)
	in.Task.Labels = map[string]string{"dest": "192.0.2.0/24"}
	if _, err := e.Evaluate(context.Background(), in); err != nil {
		t.Fatal(err)
	}
	in.Task.Labels["dest"] = "api.example.com"
	_, err := e.Evaluate(context.Background(), in)
	if err == nil || !strings.Contains(err.Error(), `egress[0] {"cidr":"api.example.com","protocol":"tcp"}`) {
		t.Errorf("Evaluate = %v, want an error naming the entry", err)
	}
}

// A built-in's error would make a deny rule undefined, and so let the task
// through; the engine turns it into a refusal.
func TestBuiltinErrorRefuses(t *testing.T) {
	e := mustLoad(t, map[string]string{"p.rego": `package bridle

envelope := {"egress": []}

deny contains "outside the lab" if not net.cidr_contains("10.0.0.0/8", input.workload.labels.addr)
deny contains "not in the lab" if not net.cidr_contains("10.0.0.0/8", input.workload.labels.addr)
`})
	in := taskInput("x", 0)
	in.Workload.Labels = map[string]string{"addr": "10.1.2.3"}
	if _, err := e.Evaluate(context.Background(), in); err != nil {
		t.Fatal(err)
	}
	in.Workload.Labels["addr"] = "not an address"
	_, err := e.Evaluate(context.Background(), in)
	if err == nil || !strings.Contains(err.Error(), "net.cidr_contains") {
		t.Errorf("Evaluate with a failing built-in = %v, want an evaluation error", err)
	}
}

func TestTestFilesAreSkipped(t *testing.T) {
	e := mustLoad(t, map[string]string{
		"p.rego": simplePolicy,
		// Loaded, this would conflict with p.rego's envelope.
		"p_test.rego":         "package bridle\n\nenvelope := {\"egress\": []}\n\ntest_x if true\n",
		".git/hooks/x.rego":   "not rego at all",
		"sub/other_test.rego": "package bridle_test\n\nbroken {",
	})
	d, err := e.Evaluate(context.Background(), taskInput("fix", 0))
	if err != nil || len(d.Envelope.Egress) != 1 {
		t.Errorf("Evaluate = %+v, %v", d, err)
	}
}

func TestHiddenRootDirectory(t *testing.T) {
	dir := filepath.Join(writePolicy(t, map[string]string{".policy/p.rego": simplePolicy}), ".policy")
	if err := NewEngine().LoadDir(context.Background(), dir); err != nil {
		t.Error(err)
	}
	if err := NewEngine().LoadDir(context.Background(), dir+"/"); err != nil {
		t.Error(err)
	}
}

// A Kubernetes ConfigMap volume holds its files in a hidden, timestamped
// directory, and exposes each through a symlink.
func TestConfigMapLayout(t *testing.T) {
	dir := writePolicy(t, map[string]string{
		"..2026_01_02_03_04_05.1/p.rego":    simplePolicy,
		"..2026_01_02_03_04_05.1/data.json": `{"x": 1}`,
		"README.md":                         "not policy",
	})
	for old, new := range map[string]string{
		"..2026_01_02_03_04_05.1": "..data",
		"..data/p.rego":           "p.rego",
		"..data/data.json":        "data.json",
	} {
		if err := os.Symlink(old, filepath.Join(dir, new)); err != nil {
			t.Fatal(err)
		}
	}
	e := NewEngine()
	if err := e.LoadDir(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	if d, err := e.Evaluate(context.Background(), taskInput("fix", 0)); err != nil || len(d.Envelope.Egress) != 1 {
		t.Errorf("Evaluate = %+v, %v", d, err)
	}
}

// A projected volume with the policies below a subdirectory (items with
// path policies/NAME.rego): the policy directory is itself a link into the
// volume's hidden directory.
func TestProjectedVolumeLayout(t *testing.T) {
	vol := writePolicy(t, map[string]string{
		"..2026_01_02_03_04_05.1/policies/p.rego": simplePolicy,
		"..2026_01_02_03_04_05.1/bridled.yaml":    "socket: /run/bridle/bridle.sock",
	})
	for old, new := range map[string]string{
		"..2026_01_02_03_04_05.1": "..data",
		"..data/policies":         "policies",
		"..data/bridled.yaml":     "bridled.yaml",
	} {
		if err := os.Symlink(old, filepath.Join(vol, new)); err != nil {
			t.Fatal(err)
		}
	}
	e := NewEngine()
	if err := e.LoadDir(context.Background(), filepath.Join(vol, "policies")); err != nil {
		t.Fatal(err)
	}
	if d, err := e.Evaluate(context.Background(), taskInput("fix", 0)); err != nil || len(d.Envelope.Egress) != 1 {
		t.Errorf("Evaluate = %+v, %v", d, err)
	}
}

func TestDataFiles(t *testing.T) {
	e := mustLoad(t, map[string]string{
		"p.rego": `package bridle

envelope := {"egress": [{"protocol": "tcp", "cidr": c, "ports": [443]} | some c in data.sites.llm]}
`,
		"sites/data.json":    `{"llm": ["203.0.113.0/24"]}`,
		"sites/ignored.json": `{"llm": ["198.51.100.0/24"]}`,
	})
	d, err := e.Evaluate(context.Background(), taskInput("fix", 0))
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(d.Envelope.Egress); got != "[tcp:203.0.113.0/24:443]" {
		t.Errorf("envelope from data = %s", got)
	}

	y := mustLoad(t, map[string]string{
		"p.rego":          "package bridle\n\nenvelope := {\"exec\": [{\"dir\": d} | some d in data.tools.dirs]}\n",
		"tools/data.yaml": "dirs:\n  - /opt/tools\n",
	})
	if d, err := y.Evaluate(context.Background(), taskInput("fix", 0)); err != nil || fmt.Sprint(d.Envelope.Exec) != "[/opt/tools/]" {
		t.Errorf("envelope from YAML data = %+v, %v", d.Envelope, err)
	}
}

func TestDirRevision(t *testing.T) {
	files := map[string]string{"p.rego": simplePolicy, "sites/data.json": `{"a": 1}`}
	a, b := mustLoad(t, files), mustLoad(t, files)
	if !regexp.MustCompile(`^sha256:[0-9a-f]{64}$`).MatchString(a.Revision()) {
		t.Errorf("revision %q, want sha256:<64 hex digits>", a.Revision())
	}
	if a.Revision() != b.Revision() {
		t.Errorf("same files in two directories: revisions %q and %q", a.Revision(), b.Revision())
	}
	// Whitespace in JSON data is not content; a byte of Rego is.
	same := mustLoad(t, map[string]string{"p.rego": simplePolicy, "sites/data.json": `{ "a" : 1 }`})
	if same.Revision() != a.Revision() {
		t.Errorf("reformatted data changed the revision")
	}
	for name, files := range map[string]map[string]string{
		"rego":         {"p.rego": simplePolicy + " ", "sites/data.json": `{"a": 1}`},
		"data":         {"p.rego": simplePolicy, "sites/data.json": `{"a": 2}`},
		"data path":    {"p.rego": simplePolicy, "other/data.json": `{"a": 1}`},
		"file renamed": {"q.rego": simplePolicy, "sites/data.json": `{"a": 1}`},
	} {
		if r := mustLoad(t, files).Revision(); r == a.Revision() {
			t.Errorf("%s changed, revision did not", name)
		}
	}
}

func TestPrintGoesToTheLog(t *testing.T) {
	var buf strings.Builder
	var mu sync.Mutex
	e := NewEngine(WithLogger(newTestLogger(&buf, &mu)))
	dir := writePolicy(t, map[string]string{"p.rego": "package bridle\n\nenvelope := {} if {\n\tprint(\"intent is\", input.task.intent)\n}\n"})
	if err := e.LoadDir(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Evaluate(context.Background(), taskInput("fix the build", 0)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(buf.String(), "intent is fix the build") || !strings.Contains(buf.String(), "p.rego:4") {
		t.Errorf("log = %s", buf.String())
	}
}

// Evaluations running while policies are swapped see one policy or the
// other, whole, never a mix or an error. Run with -race.
func TestEvaluateDuringReload(t *testing.T) {
	pol := func(port int) map[string]string {
		return map[string]string{"p.rego": fmt.Sprintf(`package bridle

envelope := {"egress": [{"protocol": "tcp", "cidr": "192.0.2.0/24", "ports": [%d]}], "ttl": %d}
`, port, port)}
	}
	dirs := []string{writePolicy(t, pol(1000)), writePolicy(t, pol(2000))}
	e := NewEngine()
	if err := e.LoadDir(context.Background(), dirs[0]); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 2 {
		wg.Go(func() {
			for ctx.Err() == nil {
				d, err := e.Evaluate(ctx, taskInput("x", 0))
				if err != nil {
					if ctx.Err() == nil {
						errs <- err
					}
					return
				}
				if port := d.Envelope.Egress[0].Ports[0].First; time.Duration(port)*time.Second != d.MaxTTL {
					errs <- fmt.Errorf("mixed decision: port %d, ttl %v", port, d.MaxTTL)
					return
				}
			}
		})
	}
	for i := range 20 {
		if err := e.LoadDir(context.Background(), dirs[i%2]); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

type lockedWriter struct {
	w  *strings.Builder
	mu *sync.Mutex
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func newTestLogger(w *strings.Builder, mu *sync.Mutex) *slog.Logger {
	return slog.New(slog.NewTextHandler(lockedWriter{w, mu}, nil))
}

// An envelope can be assembled from partial rules spread over modules.
func TestEnvelopeInPieces(t *testing.T) {
	e := mustLoad(t, map[string]string{
		"a.rego": "package bridle\n\nenvelope.egress contains {\"protocol\": \"tcp\", \"cidr\": \"192.0.2.1\", \"ports\": [443]}\n",
		"b.rego": "package bridle\n\nenvelope.egress contains {\"unix\": \"/run/x.sock\"} if input.task.labels.x == \"y\"\n\nenvelope.ttl := 60\n",
		"c.rego": "package bridle\n\nenvelope.exec contains {\"path\": \"/usr/bin/git\"}\n",
	})
	in := taskInput("x", 0)
	in.Task.Labels = map[string]string{"x": "y"}
	d, err := e.Evaluate(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(d.Envelope.Egress, d.Envelope.Unix, d.Envelope.Exec, d.Envelope.TTL); got != "[tcp:192.0.2.1:443] [/run/x.sock] [/usr/bin/git] 1m0s" {
		t.Errorf("envelope = %s", got)
	}
}

func TestEvaluateHonoursDeadline(t *testing.T) {
	e := mustLoad(t, map[string]string{"p.rego": `package bridle

# About 10^8 evaluation steps: minutes, unless cancelled.
# It depends on the input so that the load-time check does not run it.
deny contains "slow" if {
	input.task.intent == "slow"
	r := numbers.range(1, 10000)
	count([x | some x in r; some y in r; x * y == -1]) == 0
}
`})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := e.Evaluate(ctx, taskInput("slow", 0))
	if err == nil {
		t.Fatal("a slow policy past its deadline gave a decision")
	}
	if !strings.Contains(err.Error(), "cancel") {
		t.Errorf("error %q does not say the evaluation was cancelled", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("Evaluate took %v past a 100ms deadline", time.Since(start))
	}
}

func TestEvaluateApprovable(t *testing.T) {
	e := mustLoad(t, map[string]string{"p.rego": `package bridle

envelope := {}

approvable := {
	"egress": [
		{"protocol": "tcp", "cidr": "192.0.2.0/24", "ports": [443], "max_ttl": "30m"},
		{"protocol": "tcp", "host": "*.github.com", "ports": [443], "approvers": {"uids": [1000], "identities": ["spiffe://example.org"]}},
	],
	"exec": [{"path": "/bin/sh", "max_ttl": "10m"}],
}
`})
	dec, err := e.Evaluate(context.Background(), taskInput("x", 0))
	if err != nil {
		t.Fatal(err)
	}
	got := dec.Approvable.Entries
	if len(got) != 3 {
		t.Fatalf("approvable %+v, want 3 entries", got)
	}
	if got[0].Egress == nil || got[0].Egress.Prefix.String() != "192.0.2.0/24" || got[0].MaxTTL != 30*time.Minute || got[0].Approvers != nil {
		t.Errorf("entry 0 %+v", got[0])
	}
	if got[1].Egress == nil || got[1].Egress.Host != "*.github.com" || got[1].Approvers == nil ||
		got[1].Approvers.UIDs[0] != 1000 || got[1].Approvers.Identities[0] != "spiffe://example.org" {
		t.Errorf("entry 1 %+v", got[1])
	}
	if got[2].Exec == nil || got[2].Exec.Path != "/bin/sh" || got[2].MaxTTL != 10*time.Minute {
		t.Errorf("entry 2 %+v", got[2])
	}
	// A policy without approvable: nothing may be asked for.
	e = mustLoad(t, map[string]string{"p.rego": simplePolicy})
	if dec, err := e.Evaluate(context.Background(), taskInput("x", 0)); err != nil || len(dec.Approvable.Entries) != 0 {
		t.Fatalf("approvable %+v, err %v; want none", dec.Approvable, err)
	}
}
