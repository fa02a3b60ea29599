// Package hostcgroupns moves bridled into the host's cgroup namespace when
// it was started in another one.
//
// bridled counts cgroup levels from the cgroup v2 mount and reads the
// cgroups of other processes from /proc/PID/cgroup; both mean what the
// kernel means only in the host's cgroup namespace. containerd and CRI-O
// give an unprivileged container a cgroup namespace of its own on nodes
// whose only hierarchy is cgroup v2, and Kubernetes has no field to ask for
// the host's: so bridled, in such a container with the host's PID namespace,
// joins the namespace of PID 1 itself.
package hostcgroupns

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// initNS is the inode number of the initial cgroup namespace, fixed by the
// kernel (PROC_CGROUP_INIT_INO).
const initNS = 0xEFFFFFFB

// Enter returns at once when the process is in the initial cgroup
// namespace, or in PID 1's (a host service; a container without a namespace
// of its own). Otherwise it joins PID 1's and re-executes the program with
// the same arguments and environment, so it never returns on success: setns
// of a cgroup namespace changes only the calling thread, and an exec from
// that thread leaves the new program, all its threads to be, in the
// namespace joined. Moving needs CAP_SYS_ADMIN and PID 1's /proc (the
// host's PID namespace); without them Enter says so.
func Enter() error {
	return enter("/proc/1/ns/cgroup", "/proc/self/ns/cgroup")
}

func enter(target, self string) error {
	var st unix.Stat_t
	if err := unix.Stat(self, &st); err != nil {
		return fmt.Errorf("own cgroup namespace: %w", err)
	}
	if st.Ino == initNS {
		return nil
	}
	have, err := os.Readlink(self)
	if err != nil {
		return fmt.Errorf("own cgroup namespace: %w", err)
	}
	want, err := os.Readlink(target)
	if err != nil {
		return fmt.Errorf("in cgroup namespace %s, not the host's, and cannot join it: %w", have, err)
	}
	if want == have {
		return nil
	}
	fd, err := unix.Open(target, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", target, err)
	}
	defer unix.Close(fd)
	// The namespace is joined by this thread only, and the exec must come
	// from it. It stays locked: after an error it may be in a namespace the
	// others are not, and no other goroutine may run on it (the caller
	// exits).
	runtime.LockOSThread()
	if err := unix.Setns(fd, unix.CLONE_NEWCGROUP); err != nil {
		return fmt.Errorf("join the host cgroup namespace %s from %s: %w", want, have, err)
	}
	// /proc/self/exe: the very file running, even if its path was replaced.
	err = unix.Exec("/proc/self/exe", os.Args, os.Environ())
	return fmt.Errorf("re-execute in the host cgroup namespace: %w", err)
}
