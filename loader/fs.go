package loader

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/bpf"
)

// DefaultPinRoot is where Bridle pins its programs, links and maps.
const DefaultPinRoot = "/sys/fs/bpf/bridle"

// mountinfo lists the mount points of the given filesystem type.
func mountPoints(fstype string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("mountinfo: %w", err)
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw"
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(fields) || len(fields) < 5 {
			continue
		}
		if fields[sep+1] == fstype {
			points = append(points, unescapeMount(fields[4]))
		}
	}
	return points, sc.Err()
}

// unescapeMount undoes the octal escapes mountinfo uses for spaces and tabs.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// CgroupRoot returns the mount point of the cgroup v2 hierarchy, wherever
// the host mounted it (/sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified
// on hybrid ones).
func CgroupRoot() (string, error) {
	points, err := mountPoints("cgroup2")
	if err != nil {
		return "", err
	}
	if len(points) == 0 {
		return "", errors.New("cgroup v2 is not mounted: Bridle needs the unified hierarchy")
	}
	return points[0], nil
}

// CgroupID returns the id the kernel reports for a cgroup v2 directory
// (bpf_get_current_cgroup_id), which is the directory's inode number.
func CgroupID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	return st.Ino, nil
}

// MaxWorkloadLevel is the deepest cgroup level (the v2 root is level 0) at
// which a workload may be registered. The programs find a process's workload
// by looking up its cgroup and then its ancestors at levels 0 to
// bpf.MaxCgroupDepth-1, so a workload any deeper would govern only the
// processes directly in it, not its subtree.
const MaxWorkloadLevel = bpf.MaxCgroupDepth - 1

// CheckWorkloadLevel refuses a workload cgroup, given by its path below the
// cgroup v2 mount, that is deeper than the programs look.
func CheckWorkloadLevel(rel string) error {
	level := 0
	for _, part := range strings.Split(rel, "/") {
		if part != "" && part != "." {
			level++
		}
	}
	if level > MaxWorkloadLevel {
		return fmt.Errorf("cgroup %s is %d levels below the cgroup v2 root; Bridle finds workloads only at levels 1 to %d, so it cannot confine processes below this one: use a cgroup nearer the root", rel, level, MaxWorkloadLevel)
	}
	return nil
}

// ensureBPFFS mounts a BPF filesystem at /sys/fs/bpf when none is there, so
// pins have a home.
func ensureBPFFS(pinRoot string) error {
	points, err := mountPoints("bpf")
	if err != nil {
		return err
	}
	for _, p := range points {
		if pinRoot == p || strings.HasPrefix(pinRoot, p+"/") {
			return os.MkdirAll(pinRoot, 0o700)
		}
	}
	base := "/sys/fs/bpf"
	if !strings.HasPrefix(pinRoot, base+"/") {
		return fmt.Errorf("pin directory %s is not on a BPF filesystem", pinRoot)
	}
	if err := os.MkdirAll(base, 0o700); err != nil {
		return err
	}
	if err := unix.Mount("bpf", base, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", base, err)
	}
	return os.MkdirAll(pinRoot, 0o700)
}

// ensureSecurityFS mounts securityfs when absent so the active LSM list can
// be read.
func ensureSecurityFS() error {
	points, err := mountPoints("securityfs")
	if err != nil {
		return err
	}
	if len(points) > 0 {
		return nil
	}
	if err := unix.Mount("securityfs", "/sys/kernel/security", "securityfs", 0, ""); err != nil {
		return fmt.Errorf("mount securityfs: %w", err)
	}
	return nil
}

// pinPath joins a pin directory and an object name.
func pinPath(dir, name string) string { return filepath.Join(dir, name) }
