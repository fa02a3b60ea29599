package store

import (
	"os"
	"reflect"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/daemon/tasks"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
)

func TestSaveLoad(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.Load(); err != nil || len(got) != 0 {
		t.Fatalf("empty store: %v %v", got, err)
	}
	exp := time.Now().Add(time.Hour).UTC().Round(0)
	in := []tasks.Task{{ID: "t-1", Workload: "/a/w", CgroupID: 7, Slot: 3, Generation: 9, Expires: exp, PolicyRevision: "sha256:x"}}
	if err := s.Save(in); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load()
	if err != nil || len(got) != 1 || got[0].ID != "t-1" || got[0].Slot != 3 || !got[0].Expires.Equal(exp) || got[0].PolicyRevision != "sha256:x" {
		t.Fatalf("load: %+v %v", got, err)
	}
	if err := s.Save(nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Load(); len(got) != 0 {
		t.Fatalf("after clearing: %+v", got)
	}
	if rev, err := s.BaselineRevision(); err != nil || rev != "" {
		t.Fatalf("baseline revision before any: %q %v", rev, err)
	}
	if err := s.SetBaselineRevision("sha256:b"); err != nil {
		t.Fatal(err)
	}
	if rev, _ := s.BaselineRevision(); rev != "sha256:b" {
		t.Fatalf("baseline revision %q", rev)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Fatalf("temporary files left: %v", ents)
	}
	if err := os.WriteFile(s.Path(), []byte(`{"version":2}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(); err == nil {
		t.Fatal("unknown version accepted")
	}
}

// The file's format is a contract with the next daemon (and the previous
// one, after a downgrade): field for field as it always was, and a task's
// compiled rules never in it.
func TestFileFormat(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	started := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	rs := policy.RuleSet{}
	in := []tasks.Task{{
		ID: "t-1", Workload: "/a/w", CgroupID: 7, Identity: "spiffe://x/y", Intent: "fix",
		Labels: map[string]string{"k": "v"}, Slot: 3, Generation: 9, Started: started,
		Expires: started.Add(time.Hour), Rules: 2, Mode: loader.WorkloadMode{Audit: true},
		KeepUnix: []loader.UnixConn{{Inode: 5, Peer: 6}}, PolicyRevision: "sha256:x", Parent: "t-0",
		Grants: &rs,
	}}
	if err := s.Save(in); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "version": 1,
  "tasks": [
    {
      "id": "t-1",
      "workload": "/a/w",
      "cgroup_id": 7,
      "identity": "spiffe://x/y",
      "intent": "fix",
      "labels": {
        "k": "v"
      },
      "slot": 3,
      "generation": 9,
      "started": "2026-11-30T12:00:00Z",
      "expires": "2026-11-30T13:00:00Z",
      "rules": 2,
      "mode": {
        "Audit": true,
        "EmitAllow": false
      },
      "keep_unix": [
        {
          "inode": 5,
          "peer": 6
        }
      ],
      "policy_revision": "sha256:x",
      "parent": "t-0"
    }
  ]
}
`
	if string(got) != want {
		t.Fatalf("file:\n%s\nwant:\n%s", got, want)
	}
}

// A task's name rules are kept with its other rules, so that a sub-agent
// started after a restart is held within its parent's names too.
func TestRulesKeepNames(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rs, err := policy.Compile(policy.Envelope{Egress: []policy.EgressRule{
		{Protocol: policy.ProtoTCP, Host: "api.github.com", Ports: []policy.PortRange{{First: 443, Last: 443}}},
		{Protocol: policy.ProtoAny, Host: "*.githubusercontent.com"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SaveRules("t-1", rs); err != nil {
		t.Fatal(err)
	}
	got, err := s.LoadRules("t-1")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Names, rs.Names) || len(got.Names) != 4 {
		t.Fatalf("names after a round trip = %+v, want %+v", got.Names, rs.Names)
	}
	if p := got.PortsForName("raw.githubusercontent.com"); !p.ICMP || !p.Wildcard {
		t.Errorf("restored rules allow raw.githubusercontent.com %+v", p)
	}
}
