package identity

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/bridle-sh/bridle/loader"
)

// testCgroup makes a real cgroup below the cgroup v2 mount and returns the
// mount and the cgroup's path below it.
func testCgroup(t *testing.T, name string) (mount, cgroup string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("cgroups and other uids need root")
	}
	mount, err := loader.CgroupRoot()
	if err != nil {
		t.Fatal(err)
	}
	cgroup = "/bridle-identity-test/" + name
	dir := filepath.Join(mount, cgroup)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = os.Remove(dir)
		_ = os.Remove(filepath.Dir(dir))
	})
	return mount, cgroup
}

// runIn starts a sleeping process in the cgroup as uid, killed at cleanup.
func runIn(t *testing.T, mount, cgroup string, uid uint32) *exec.Cmd {
	t.Helper()
	fd, err := syscall.Open(filepath.Join(mount, cgroup), syscall.O_DIRECTORY|syscall.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	c := exec.Command("sleep", "600")
	c.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd,
		Credential: &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Process.Kill(); _ = c.Wait() })
	return c
}
