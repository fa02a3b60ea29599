package store

import (
	"os"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/daemon/tasks"
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
