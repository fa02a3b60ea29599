package run

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// The run locks are private, but bridle's runtime directory above them also
// holds bridled's API socket: it must stay traversable, or admins who are
// not root cannot reach the socket. Earlier versions created it 0700.
func TestLockParentModes(t *testing.T) {
	old := syscall.Umask(0o077) // a strict umask must not close it either
	defer syscall.Umask(old)
	defer func(p string) { lockParent = p }(lockParent)
	for _, existing := range []os.FileMode{0, 0o700} {
		runtimeDir := filepath.Join(t.TempDir(), "bridle")
		if existing != 0 {
			if err := os.Mkdir(runtimeDir, existing); err != nil {
				t.Fatal(err)
			}
		}
		lockParent = filepath.Join(runtimeDir, "run")
		l, err := lockRun("t-000000000001")
		if err != nil {
			t.Fatal(err)
		}
		l.release()
		for dir, want := range map[string]os.FileMode{runtimeDir: 0o755, lockParent: 0o700} {
			fi, err := os.Stat(dir)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != want {
				t.Errorf("runtime dir existing with %v: %s is %v, want %v", existing, dir, fi.Mode().Perm(), want)
			}
		}
	}
}
