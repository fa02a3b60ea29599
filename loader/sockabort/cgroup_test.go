package sockabort

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// Without CAP_DAC_READ_SEARCH (the systemd unit's and the DaemonSet's
// case) a cgroup is found by walking the hierarchy; the walk must name the
// same directory the file handle opens, and nothing for a removed cgroup.
func TestFindCgroupMatchesHandle(t *testing.T) {
	requireRoot(t)
	root := testCgroupRoot(t)
	dir, id := testCgroup(t)
	nested := subCgroup(t, dir, "nested")
	var st unix.Stat_t
	if err := unix.Stat(nested, &st); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path string
		id   uint64
	}{{dir, id}, {nested, st.Ino}} {
		byHandle, err := openCgroupByID(root, c.id)
		if err != nil {
			t.Fatal(err)
		}
		byWalk, ok := findCgroup(root, c.id)
		if !ok || byWalk != byHandle || byWalk != c.path {
			t.Fatalf("id %d: walk %q (%v), handle %q, want %q", c.id, byWalk, ok, byHandle, c.path)
		}
	}
	gone := filepath.Join(dir, "gone")
	if err := os.Mkdir(gone, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(gone, &st); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(gone); err != nil {
		t.Fatal(err)
	}
	if path, ok := findCgroup(root, st.Ino); ok {
		t.Fatalf("removed cgroup %d found at %s", st.Ino, path)
	}
}
