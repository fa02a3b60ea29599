package workload

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ShimArg is the hidden first argument that makes the bridle binary act as
// the launch shim (see Shim).
const ShimArg = "__bridle-exec"

// Credentials is who the workload runs as.
type Credentials struct {
	UID, GID uint32
	Groups   []uint32
	Name     string
}

// LookupUser resolves a user name or numeric id, with its groups.
func LookupUser(name string) (Credentials, error) {
	u, err := user.Lookup(name)
	if err != nil {
		var uerr error
		u, uerr = user.LookupId(name)
		if uerr != nil {
			return Credentials{}, fmt.Errorf("workload: unknown user %q", name)
		}
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	c := Credentials{UID: uint32(uid), GID: uint32(gid), Name: u.Username}
	gids, err := u.GroupIds()
	if err == nil {
		for _, g := range gids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				c.Groups = append(c.Groups, uint32(n))
			}
		}
	}
	return c, nil
}

// Command builds the process that becomes the workload: this binary run as
// the shim, which joins the cgroup, sheds privilege and execs path. The shim
// itself starts outside the cgroup, so only the target's exec is judged.
func Command(self string, cg Cgroup, creds Credentials, path string, argv []string) *exec.Cmd {
	groups := make([]string, len(creds.Groups))
	for i, g := range creds.Groups {
		groups[i] = strconv.FormatUint(uint64(g), 10)
	}
	args := []string{ShimArg, cg.Path,
		strconv.FormatUint(uint64(creds.UID), 10),
		strconv.FormatUint(uint64(creds.GID), 10),
		strings.Join(groups, ","), path, "--"}
	args = append(args, argv...)
	cmd := exec.Command(self, args...)
	cmd.Args[0] = argv[0]
	return cmd
}

// Shim runs in the child started by Command. It never returns on success:
// the process image becomes the workload's command.
func Shim(args []string) error {
	if len(args) < 7 || args[5] != "--" {
		return errors.New("workload: shim: bad arguments")
	}
	cgPath, path, argv := args[0], args[4], args[6:]
	uid, err1 := strconv.ParseUint(args[1], 10, 32)
	gid, err2 := strconv.ParseUint(args[2], 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("workload: shim: %w", err)
	}
	var groups []int
	if args[3] != "" {
		for _, g := range strings.Split(args[3], ",") {
			n, err := strconv.Atoi(g)
			if err != nil {
				return fmt.Errorf("workload: shim: group %q: %w", g, err)
			}
			groups = append(groups, n)
		}
	}

	// no_new_privs and the capability bounding set are per thread: set
	// them on the thread that calls execve.
	runtime.LockOSThread()

	// Join the cgroup first, while still privileged to write cgroup.procs.
	if err := os.WriteFile(filepath.Join(cgPath, "cgroup.procs"), []byte("0"), 0); err != nil {
		return fmt.Errorf("workload: join cgroup %s: %w", cgPath, err)
	}
	// no_new_privs: setuid binaries and file capabilities cannot raise the
	// workload's privilege again.
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("workload: set no_new_privs: %w", err)
	}
	if err := dropBoundingSet(); err != nil {
		return err
	}
	if err := unix.Setgroups(groups); err != nil {
		return fmt.Errorf("workload: setgroups: %w", err)
	}
	if err := unix.Setresgid(int(gid), int(gid), int(gid)); err != nil {
		return fmt.Errorf("workload: setgid %d: %w", gid, err)
	}
	if err := unix.Setresuid(int(uid), int(uid), int(uid)); err != nil {
		return fmt.Errorf("workload: setuid %d: %w", uid, err)
	}
	// A root workload keeps uid 0 but no capabilities at all.
	if err := clearCapabilities(); err != nil {
		return err
	}
	// Last: the filter refuses namespaces and foreign socket families
	// from here on, in this process and everything it execs.
	if err := Sandbox(); err != nil {
		return err
	}
	if err := unix.Exec(path, argv, os.Environ()); err != nil {
		return fmt.Errorf("workload: exec %s: %w", path, err)
	}
	return nil
}

func dropBoundingSet() error {
	for c := 0; c <= unix.CAP_LAST_CAP; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("workload: drop capability %d from bounding set: %w", c, err)
		}
	}
	// Ambient capabilities would survive exec for a non-root user.
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("workload: clear ambient capabilities: %w", err)
	}
	return nil
}

func clearCapabilities() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("workload: clear capabilities: %w", err)
	}
	return nil
}
