package workload

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The workload's mount namespace: a private copy of the invoker's, where a
// fresh /proc shows the workload's own PID namespace only and the cgroup
// file systems are read-only. Each step is checked after it is made: a
// namespace that silently kept the host's /proc would leave every process
// of the workload's uid open to ptrace and /proc/PID/mem.

// mount is one line of /proc/self/mountinfo.
type mount struct {
	point   string
	fstype  string
	options []string // per-mount options: rw/ro, nosuid, nodev, ...
}

func mountinfo() ([]mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("workload: mountinfo: %w", err)
	}
	defer f.Close()
	var mounts []mount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw"
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, field := range fields {
			if field == "-" {
				sep = i
				break
			}
		}
		if sep < 6 || sep+1 >= len(fields) {
			continue
		}
		mounts = append(mounts, mount{
			point:   unescapeOctal(fields[4]),
			fstype:  fields[sep+1],
			options: strings.Split(fields[5], ","),
		})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("workload: mountinfo: %w", err)
	}
	return mounts, nil
}

// unescapeOctal undoes mountinfo's \ooo escapes (space, tab, newline, \).
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// privateProc runs in the new mount and PID namespaces (stage 1) before
// anything of the workload does. It detaches every proc mount the copy
// inherited, which name the host's processes, and mounts one for the new
// PID namespace on /proc.
func privateProc() error {
	// First, so that nothing below propagates to the invoker's namespace
	// (systemd makes / shared). An initramfs root (rootfs) takes this too.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("workload: make mounts private: %w", err)
	}
	// Everything mounted on /proc goes: the host's proc and what is
	// stacked on it (binfmt_misc, a second proc).
	if err := unmountAll("/proc"); err != nil {
		return fmt.Errorf("workload: unmount the host's /proc: %w", err)
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "hidepid=invisible"); err != nil {
		return fmt.Errorf("workload: mount a private /proc: %w", err)
	}
	// Other proc mounts (a chroot's, a container root's) name the host's
	// processes as well: detach them, deepest first.
	mounts, err := mountinfo()
	if err != nil {
		return err
	}
	var others []string
	for _, m := range mounts {
		if m.fstype == "proc" && m.point != "/proc" {
			others = append(others, m.point)
		}
	}
	sort.Slice(others, func(i, j int) bool { return len(others[i]) > len(others[j]) })
	for _, p := range others {
		// ENOENT: hidden below another mount, out of reach by path.
		if err := unmountAll(p); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("workload: unmount proc at %s: %w", p, err)
		}
	}
	// Check what the workload will see: no proc by any of those paths, and
	// on /proc the one of this PID namespace (in which this process is 1).
	for _, p := range others {
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err == nil && st.Type == unix.PROC_SUPER_MAGIC {
			return fmt.Errorf("workload: proc still mounted at %s", p)
		}
	}
	if self, err := os.Readlink("/proc/self"); err != nil || self != "1" {
		return fmt.Errorf("workload: /proc is not the workload's own (/proc/self is %q, %v)", self, err)
	}
	return nil
}

// unmountAll detaches every mount stacked on path. A path that is no
// mount point (any more) is done.
func unmountAll(path string) error {
	for range 64 {
		err := unix.Unmount(path, unix.MNT_DETACH)
		if errors.Is(err, unix.EINVAL) {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return fmt.Errorf("%s: more than 64 mounts stacked", path)
}

// readOnlyCgroups makes every cgroup file system read-only in this mount
// namespace (stage 2, once it has joined the workload's cgroup): a process
// that may write cgroup.procs by its uid still cannot move itself out.
func readOnlyCgroups() error {
	mounts, err := mountinfo()
	if err != nil {
		return err
	}
	var points []string
	for _, m := range mounts {
		if m.fstype != "cgroup2" && m.fstype != "cgroup" {
			continue
		}
		// A bind remount sets the per-mount flags: keep those it had.
		flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY)
		for _, o := range m.options {
			flags |= mountFlags[o]
		}
		if err := unix.Mount("", m.point, "", flags, ""); err != nil {
			return fmt.Errorf("workload: make %s read-only: %w", m.point, err)
		}
		points = append(points, m.point)
	}
	if len(points) == 0 {
		return errors.New("workload: no cgroup file system mounted")
	}
	for _, p := range points {
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err != nil || st.Flags&unix.ST_RDONLY == 0 {
			return fmt.Errorf("workload: %s is still writable (%v)", p, err)
		}
	}
	return nil
}

// mountFlags are the per-mount options a read-only remount keeps.
var mountFlags = map[string]uintptr{
	"nosuid":      unix.MS_NOSUID,
	"nodev":       unix.MS_NODEV,
	"noexec":      unix.MS_NOEXEC,
	"noatime":     unix.MS_NOATIME,
	"nodiratime":  unix.MS_NODIRATIME,
	"relatime":    unix.MS_RELATIME,
	"strictatime": unix.MS_STRICTATIME,
}
