package sockabort

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// checkCgroupRoot makes sure the cgroup v2 mount shows the whole hierarchy
// (its root is the root cgroup, id 1), so depths counted from it are the
// kernel's levels. A mount of a subtree (a cgroup namespace) would not be.
func checkCgroupRoot(root string) error {
	// A cgroup's id is its directory's inode number.
	var st unix.Stat_t
	if err := unix.Stat(root, &st); err != nil {
		return fmt.Errorf("cgroup %s: %w", root, err)
	}
	if st.Ino != 1 {
		return fmt.Errorf("cgroup v2 mount %s shows a subtree (root id %d, want 1): cgroup levels unknown", root, st.Ino)
	}
	return nil
}

// fileIDKernfs is the file handle type of kernfs (cgroupfs): the handle is
// the 64-bit node id, which is the cgroup id.
const fileIDKernfs = 0xfe

// cgroupPathByID returns the path of the cgroup with the given id below the
// cgroup v2 mount at root. It opens the cgroup through a file handle where
// the kernel allows that (CAP_DAC_READ_SEARCH, which neither the systemd
// unit nor the DaemonSet grants bridled: it opens any file on the host by
// handle), and otherwise looks for the directory of that inode.
func cgroupPathByID(root string, id uint64) (string, error) {
	path, err := openCgroupByID(root, id)
	if !errors.Is(err, unix.EPERM) {
		return path, err
	}
	if path, ok := findCgroup(root, id); ok {
		return path, nil
	}
	return "", fmt.Errorf("no such cgroup: id %d is not below %s", id, root)
}

// openCgroupByID opens a cgroup by id through a file handle.
func openCgroupByID(root string, id uint64) (string, error) {
	mnt, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("open %s: %w", root, err)
	}
	defer unix.Close(mnt)
	h := unix.NewFileHandle(fileIDKernfs, binary.NativeEndian.AppendUint64(nil, id))
	fd, err := unix.OpenByHandleAt(mnt, h, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		if errors.Is(err, unix.ESTALE) || errors.Is(err, unix.ENOENT) {
			return "", fmt.Errorf("no such cgroup: %w", err)
		}
		return "", fmt.Errorf("open by id: %w", err)
	}
	defer unix.Close(fd)
	path, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return "", err
	}
	if strings.HasSuffix(path, " (deleted)") {
		return "", errors.New("cgroup removed")
	}
	return path, nil
}

// findCgroup walks the hierarchy below dir for the cgroup whose directory
// has inode id (a cgroup's id), stopping at the first match.
func findCgroup(dir string, id uint64) (string, bool) {
	var st unix.Stat_t
	if unix.Stat(dir, &st) != nil {
		return "", false
	}
	if st.Ino == id {
		return dir, true
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", false
	}
	for _, ent := range entries {
		if !ent.IsDir() {
			continue
		}
		if path, ok := findCgroup(filepath.Join(dir, ent.Name()), id); ok {
			return path, true
		}
	}
	return "", false
}

// walkCgroups calls fn for a cgroup directory and every cgroup below it.
func walkCgroups(path string, fn func(dir string, ino uint64)) {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return
	}
	fn(path, st.Ino)
	entries, err := os.ReadDir(path)
	if err != nil {
		return
	}
	for _, ent := range entries {
		if ent.IsDir() {
			walkCgroups(filepath.Join(path, ent.Name()), fn)
		}
	}
}

// descendantIDs lists the target cgroups and every cgroup below them.
func descendantIDs(targets []destroyTarget) []uint64 {
	seen := map[uint64]bool{}
	var ids []uint64
	for _, t := range targets {
		walkCgroups(t.path, func(_ string, ino uint64) {
			if !seen[ino] {
				seen[ino] = true
				ids = append(ids, ino)
			}
		})
	}
	return ids
}
