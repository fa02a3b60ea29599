package identity

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	delegatedv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
)

func TestStaticMapping(t *testing.T) {
	s := NewStatic(StaticConfig{
		Node: "n1",
		Cgroups: map[string]string{
			"/agents.slice":                   "spiffe://example.org/agent/any",
			"/agents.slice/coding-*.service":  "spiffe://example.org/agent/coding/{unit}",
			"/agents.slice/coding-x.service/": "spiffe://example.org/never", // path.Match never matches a trailing /
		},
		Units: map[string]string{"review-*.service": "spiffe://example.org/agent/review/{unit}"},
		UIDs:  map[uint32]string{1000: "spiffe://example.org/agent/uid/{uid}"},
	}, "")
	for _, c := range []struct {
		facts Facts
		want  string
	}{
		{Facts{Cgroup: "/agents.slice/coding-7.service"}, "spiffe://example.org/agent/coding/coding-7.service"},
		{Facts{Cgroup: "/agents.slice/coding-7.service/sub"}, "spiffe://example.org/agent/coding/coding-7.service"},
		{Facts{Cgroup: "/agents.slice/other.service"}, "spiffe://example.org/agent/any"},
		{Facts{Cgroup: "/x.slice/review-1.service", Unit: "review-1.service"}, "spiffe://example.org/agent/review/review-1.service"},
		{Facts{Cgroup: "/x.slice/w", UID: 1000, HasUID: true}, "spiffe://example.org/agent/uid/1000"},
		{Facts{Cgroup: "/x.slice/w", UID: 1001, HasUID: true}, "spiffe://n1/workload/x.slice/w"},
		{Facts{Cgroup: "/x.slice/w"}, "spiffe://n1/workload/x.slice/w"},
	} {
		got, err := s.Map(c.facts)
		if err != nil || got != c.want {
			t.Errorf("%+v: %q, %v; want %q", c.facts, got, err, c.want)
		}
	}
	// A unit name that cannot be a SPIFFE path is refused, not mangled.
	if _, err := s.Map(Facts{Cgroup: "/agents.slice/coding-a@b.service", Unit: "coding-a@b.service"}); err == nil {
		t.Error("an invalid SPIFFE ID from a template accepted")
	}
}

// The uid mapping reads the workload's processes from the kernel: all
// under one uid maps, mixed uids do not.
func TestStaticUIDFromKernel(t *testing.T) {
	mount, cg := testCgroup(t, "uid")
	s := NewStatic(StaticConfig{Node: "n", UIDs: map[uint32]string{4242: "spiffe://example.org/agent/uid/{uid}"}}, mount)
	id, err := s.Identify(context.Background(), Workload{Cgroup: cg})
	if err != nil || id.ID != "spiffe://n/workload"+cg || id.Source != Static {
		t.Fatalf("empty workload: %+v %v", id, err)
	}
	runIn(t, mount, cg, 4242)
	runIn(t, mount, cg, 4242)
	if id, err = s.Identify(context.Background(), Workload{Cgroup: cg}); err != nil || id.ID != "spiffe://example.org/agent/uid/4242" {
		t.Fatalf("uid 4242 workload: %+v %v", id, err)
	}
	runIn(t, mount, cg, 4243)
	if id, err = s.Identify(context.Background(), Workload{Cgroup: cg}); err != nil || id.ID != "spiffe://n/workload"+cg {
		t.Fatalf("mixed uids: %+v %v", id, err)
	}
}

func TestProcPinning(t *testing.T) {
	mount, cg := testCgroup(t, "pin")
	c := runIn(t, mount, cg, 4244)
	p, err := OpenProc(c.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	start, err := p.StartTime()
	if err != nil || start == 0 {
		t.Fatalf("start time %d, %v", start, err)
	}
	if got, err := p.Cgroup(); err != nil || got != cg {
		t.Fatalf("cgroup %q, %v", got, err)
	}
	if err := samePinned(p, start, cg); err != nil {
		t.Fatal(err)
	}
	_ = c.Process.Kill()
	_ = c.Wait()
	if p.Alive() {
		t.Fatal("a reaped process is alive")
	}
	// Reads through the pin fail rather than describe a later process.
	if _, err := p.StartTime(); err == nil {
		t.Fatal("start time read through the pin of a reaped process")
	}
	if err := samePinned(p, start, cg); err == nil {
		t.Fatal("a reaped process passed the check")
	}
}

func TestSelectorsFromFacts(t *testing.T) {
	got := Selectors(Facts{Cgroup: "/a.slice/b.service", Unit: "b.service", UID: 7, HasUID: true, HasProcess: true}, Workload{StartedBy: 9, HasStartedBy: true})
	var s []string
	for _, x := range got {
		s = append(s, x.Type+":"+x.Value)
	}
	if strings.Join(s, " ") != "bridle:cgroup:/a.slice/b.service bridle:unit:b.service bridle:uid:7" {
		t.Fatalf("selectors %v", s)
	}
	// A workload with no process yet is named by who asked for its task.
	got = Selectors(Facts{Cgroup: "/r/run-1"}, Workload{StartedBy: 1000, HasStartedBy: true})
	if len(got) != 2 || got[1].Value != "started-by-uid:1000" {
		t.Fatalf("selectors of an empty workload %v", got)
	}
}

func TestChooseOneIdentity(t *testing.T) {
	svid := func(path, hint string) *delegatedv1.X509SVIDWithKey {
		return &delegatedv1.X509SVIDWithKey{X509Svid: &types.X509SVID{Id: &types.SPIFFEID{TrustDomain: "example.org", Path: path}, Hint: hint}}
	}
	if id, err := Choose([]*delegatedv1.X509SVIDWithKey{svid("/a", "")}); err != nil || id != "spiffe://example.org/a" {
		t.Fatalf("one: %q %v", id, err)
	}
	if id, err := Choose([]*delegatedv1.X509SVIDWithKey{svid("/a", ""), svid("/b", PreferHint)}); err != nil || id != "spiffe://example.org/b" {
		t.Fatalf("hinted: %q %v", id, err)
	}
	for name, in := range map[string][]*delegatedv1.X509SVIDWithKey{
		"none":      nil,
		"two":       {svid("/a", ""), svid("/b", "")},
		"two hints": {svid("/a", PreferHint), svid("/b", PreferHint)},
	} {
		if id, err := Choose(in); err == nil || !IsUnavailable(err) {
			t.Errorf("%s: %q %v", name, id, err)
		}
	}
}

// A workload's processes may live in cgroups below its own (a unit with
// DelegateSubgroup=, or one that made its own children): they are the
// workload's all the same, confined with it. Its facts must count them,
// or it looks empty, loses its uid selector and is named instead by the
// uid of whoever asked for its task (bridle:started-by-uid).
func TestFactsCoverTheWorkloadsSubtree(t *testing.T) {
	mount, cg := testCgroup(t, "subtree")
	child := cg + "/sub"
	if err := os.Mkdir(filepath.Join(mount, child), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(filepath.Join(mount, child)) })
	runIn(t, mount, child, 4251)
	f, err := ReadFacts(mount, cg)
	if err != nil {
		t.Fatal(err)
	}
	if !f.HasProcess || !f.HasUID || f.UID != 4251 {
		t.Fatalf("facts of a workload whose process is in a child cgroup: %+v", f)
	}
	var s []string
	for _, x := range Selectors(f, Workload{Cgroup: cg, StartedBy: 1000, HasStartedBy: true}) {
		s = append(s, x.Value)
	}
	if got := strings.Join(s, " "); got != "cgroup:"+cg+" uid:4251" {
		t.Fatalf("selectors %q", got)
	}
	// A process of another uid deeper still makes the uids mixed.
	grandchild := child + "/deeper"
	if err := os.Mkdir(filepath.Join(mount, grandchild), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(filepath.Join(mount, grandchild)) })
	runIn(t, mount, grandchild, 4252)
	if f, err = ReadFacts(mount, cg); err != nil || !f.HasProcess || f.HasUID {
		t.Fatalf("facts with mixed uids in the subtree: %+v %v", f, err)
	}
}

// A workload that may make cgroups below its own (a unit with Delegate=)
// names them as it likes, .service included. Its unit is the one the
// host's systemd gave it, the shallowest unit in its path: a child named
// after another agent's unit must not make it that agent, neither through
// {unit} in the template of its own cgroup's pattern nor through the
// units map (nor, with SPIRE, through bridle:unit).
func TestUnitIsTheHostsNotOneAWorkloadNamed(t *testing.T) {
	if got := UnitOf("/agents.slice/coding-1.service/coding-2.service"); got != "coding-1.service" {
		t.Fatalf("unit of a child cgroup named like a unit: %q", got)
	}
	if got := UnitOf("/agents.slice/coding-1.service/payload/review-9.scope"); got != "coding-1.service" {
		t.Fatalf("unit of a deeper child named like a unit: %q", got)
	}
	s := NewStatic(StaticConfig{
		Node:    "n1",
		Cgroups: map[string]string{"/agents.slice/coding-*.service": "spiffe://example.org/agent/coding/{unit}"},
		Units:   map[string]string{"review-*.service": "spiffe://example.org/agent/review/{unit}"},
	}, "")
	for cg, want := range map[string]string{
		"/agents.slice/coding-1.service/coding-2.service": "spiffe://example.org/agent/coding/coding-1.service",
		"/other.slice/a.service/review-1.service":         "spiffe://n1/workload/other.slice/a.service/review-1.service",
	} {
		if got, err := s.Map(Facts{Cgroup: cg}); err != nil || got != want {
			t.Errorf("%s: %q, %v; want %q", cg, got, err, want)
		}
	}
}
