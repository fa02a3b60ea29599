package daemon

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/daemon/tasks"
	"github.com/bridle-sh/bridle/loader"
	"github.com/bridle-sh/bridle/policy"
)

// The API's task is its own type, but its JSON is the task's as the node
// keeps and stores it, field for field.
func TestWireTaskIsTheStoredTask(t *testing.T) {
	started := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	rs := policy.RuleSet{}
	for _, tk := range []tasks.Task{
		{ID: "t-min", Started: started},
		{
			ID: "t-1", Workload: "/a/w", CgroupID: 7, Identity: "spiffe://x/y", Intent: "fix",
			Labels: map[string]string{"k": "v"}, Slot: 3, Generation: 9, Started: started,
			Expires: started.Add(time.Hour), Rules: 2, Mode: loader.WorkloadMode{Audit: true, EmitAllow: true},
			KeepUnix: []loader.UnixConn{{Inode: 5, Peer: 6}, {Inode: 8}}, PolicyRevision: "sha256:x", Parent: "t-0",
			Grants: &rs,
		},
	} {
		want, err := json.Marshal(tk)
		if err != nil {
			t.Fatal(err)
		}
		got, err := json.Marshal(wireTask(tk))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("wire task\n%s\nwant\n%s", got, want)
		}
	}
}
