package workload

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/loader/alive"
)

// What Bridle does not launch it cannot give a seccomp filter, namespaces or
// a user: an adopted workload (a systemd unit in an agents slice, a pod)
// has whatever its unit gave it. These are the unit settings that close the
// doors Bridle closes for what it launches (deploy/systemd's
// bridle-agent-hardening.conf sets them), each checked on every process of
// the workload from what the kernel shows of it in /proc:
const (
	// NoNewPrivileges: NoNewPrivs is 1 (no setuid or file-capability
	// gain on exec).
	NoNewPrivileges = "NoNewPrivileges"
	// SystemCallFilter: a seccomp filter is installed (Seccomp 2). Its
	// contents cannot be read from /proc: a filter that refuses nothing
	// passes too.
	SystemCallFilter = "SystemCallFilter"
	// CapabilityBoundingSet: no capability held or obtainable (CapEff,
	// CapPrm, CapAmb and CapBnd all empty).
	CapabilityBoundingSet = "CapabilityBoundingSet"
	// User: not running as uid 0 (real, effective, saved or filesystem),
	// which owns the cgroup files and most of the system's files even
	// without capabilities.
	User = "User"
	// PrivatePIDs: a PID namespace of its own, so no other process on
	// the host can be named (systemd 257+).
	PrivatePIDs = "PrivatePIDs"
	// ProtectProc: the /proc it sees hides the processes it cannot
	// ptrace (hidepid=invisible or ptraceable).
	ProtectProc = "ProtectProc"
	// ProcSubset: the /proc it sees holds the process directories only
	// (subset=pid).
	ProcSubset = "ProcSubset"
	// ProtectControlGroups: every cgroup file system it sees is mounted
	// read-only.
	ProtectControlGroups = "ProtectControlGroups"
	// RestrictNamespaces: evidence only. A process in a user namespace a
	// non-root user made shows the workload could create namespaces
	// (and, in them, mount over the paths its rules name); one made by
	// root (systemd's PrivateUsers=) is not counted. The setting itself is
	// a seccomp filter /proc does not show.
	RestrictNamespaces = "RestrictNamespaces"
)

// Settings are the checked settings, in the order they are reported.
var Settings = []string{
	NoNewPrivileges, SystemCallFilter, CapabilityBoundingSet, User, PrivatePIDs,
	ProtectProc, ProcSubset, ProtectControlGroups, RestrictNamespaces,
}

// Hardening is what one check of a workload found.
type Hardening struct {
	Workload  string    // cgroup path below the cgroup v2 mount
	Processes int       // processes checked
	Missing   []string  // settings at least one process lacks, in Settings order
	PIDs      []int     // up to maxPIDs processes that lack something
	Checked   time.Time // when
	Errors    []string  // processes that could not be read
}

const maxPIDs = 5

// Host is what a process is compared with: the host's namespaces, as the
// calling process (bridled, whose unit gives it neither PrivatePIDs nor
// PrivateUsers) has them. PID 1's are not always readable (a container's
// init of a parent namespace).
type Host struct {
	PIDNS, UserNS uint64
}

// HostNamespaces reads this process's PID and user namespaces.
func HostNamespaces() (Host, error) {
	var h Host
	var err error
	if h.PIDNS, err = nsInode("/proc/self/ns/pid"); err != nil {
		return h, fmt.Errorf("workload: host namespaces: %w", err)
	}
	if h.UserNS, err = nsInode("/proc/self/ns/user"); err != nil {
		return h, fmt.Errorf("workload: host namespaces: %w", err)
	}
	return h, nil
}

func nsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// CheckHardening checks every process of the cgroup subtree at dir (below
// the cgroup v2 mount root) and reports one Hardening per cgroup that holds
// processes. A process is read through /proc only while a pidfd holds it,
// and counted only if the pidfd shows it alive afterwards, so a PID reused
// in between is never reported under this workload.
func CheckHardening(root, dir string, host Host) []Hardening {
	var out []Hardening
	mounts := map[uint64][]string{} // mount namespace → settings its mounts lack
	now := time.Now().UTC()
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if err != nil || len(b) == 0 {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return nil
		}
		h := Hardening{Workload: "/" + rel, Checked: now, Missing: []string{}}
		lacking := map[string]bool{}
		for _, f := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(f)
			if err != nil {
				continue
			}
			missing, seen, err := checkProcess(pid, h.Workload, host, mounts)
			if err != nil {
				h.Errors = append(h.Errors, err.Error())
			}
			if !seen {
				continue
			}
			h.Processes++
			for _, m := range missing {
				lacking[m] = true
			}
			if len(missing) > 0 && len(h.PIDs) < maxPIDs {
				h.PIDs = append(h.PIDs, pid)
			}
		}
		for _, s := range Settings {
			if lacking[s] {
				h.Missing = append(h.Missing, s)
			}
		}
		if h.Processes > 0 || len(h.Errors) > 0 {
			out = append(out, h)
		}
		return nil
	})
	return out
}

// checkProcess reads one process's status, namespaces and mounts. seen is
// false when the process is gone, was a zombie, or is not in cgroup (its
// PID was reused by a process elsewhere).
func checkProcess(pid int, cgroup string, host Host, mounts map[uint64][]string) (missing []string, seen bool, err error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if err == unix.ESRCH {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("pid %d: pidfd_open: %w", pid, err)
	}
	defer unix.Close(pidfd)
	proc := fmt.Sprintf("/proc/%d", pid)
	if cg, err := procCgroup(proc + "/cgroup"); err != nil || cg != cgroup {
		return nil, false, nil
	}
	status, err := os.ReadFile(proc + "/status")
	if err != nil {
		return nil, false, nil
	}
	st := parseStatus(string(status))
	if st.zombie {
		return nil, false, nil
	}
	missing = st.missing()

	pidNS, pidErr := nsInode(proc + "/ns/pid")
	if pidErr == nil && pidNS == host.PIDNS {
		missing = append(missing, PrivatePIDs)
	}
	if owner, ok, err := userNSOwner(proc+"/ns/user", host.UserNS); err == nil && ok && owner != 0 {
		missing = append(missing, RestrictNamespaces)
	}
	mntNS, mntErr := nsInode(proc + "/ns/mnt")
	lack, cached := mounts[mntNS]
	if mntErr != nil || !cached {
		b, err := os.ReadFile(proc + "/mountinfo")
		if err != nil {
			return nil, false, nil
		}
		lack = mountsLack(string(b))
		if mntErr == nil {
			mounts[mntNS] = lack
		}
	}
	missing = append(missing, lack...)
	// What was read through /proc/PID described the pidfd's process only
	// if it is still alive: a PID is not reused before its process is
	// reaped.
	if !alive.Pidfd(pidfd) {
		return nil, false, nil
	}
	if pidErr != nil || mntErr != nil {
		return missing, true, fmt.Errorf("pid %d: namespaces: %w", pid, errors.Join(pidErr, mntErr))
	}
	return missing, true, nil
}

// procCgroup is the cgroup v2 path in a /proc/PID/cgroup file.
func procCgroup(file string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p, nil
		}
	}
	return "", errors.New("no cgroup v2 entry")
}

// nsGetOwnerUID is NS_GET_OWNER_UID (linux/nsfs.h): the uid, in the
// caller's user namespace, of whoever made a user namespace.
const nsGetOwnerUID = 0xb704

// userNSOwner returns the owner of the user namespace at path, and false
// when it is the host's.
func userNSOwner(path string, host uint64) (uint32, bool, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, false, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, false, err
	}
	if st.Ino == host {
		return 0, false, nil
	}
	uid, err := unix.IoctlGetUint32(fd, nsGetOwnerUID)
	if err != nil {
		return 0, false, err
	}
	return uid, true, nil
}

// procStatus is what /proc/PID/status says of a process's privileges.
type procStatus struct {
	noNewPrivs, seccomp bool
	caps                bool // any of CapEff, CapPrm, CapAmb, CapBnd not empty
	root                bool // any uid is 0
	zombie              bool
}

func parseStatus(s string) procStatus {
	var st procStatus
	for _, line := range strings.Split(s, "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		val = strings.TrimSpace(val)
		switch key {
		case "State":
			st.zombie = strings.HasPrefix(val, "Z")
		case "NoNewPrivs":
			st.noNewPrivs = val == "1"
		case "Seccomp":
			st.seccomp = val == "2"
		case "CapEff", "CapPrm", "CapAmb", "CapBnd":
			if n, err := strconv.ParseUint(val, 16, 64); err != nil || n != 0 {
				st.caps = true
			}
		case "Uid":
			st.root = slices.Contains(strings.Fields(val), "0")
		}
	}
	return st
}

func (st procStatus) missing() []string {
	var m []string
	if !st.noNewPrivs {
		m = append(m, NoNewPrivileges)
	}
	if !st.seccomp {
		m = append(m, SystemCallFilter)
	}
	if st.caps {
		m = append(m, CapabilityBoundingSet)
	}
	if st.root {
		m = append(m, User)
	}
	return m
}

// pressureFiles are cgroup v2's PSI files.
var pressureFiles = map[string]bool{"memory.pressure": true, "cpu.pressure": true, "io.pressure": true, "irq.pressure": true}

// mountsLack reads a /proc/PID/mountinfo: the settings its /proc and
// cgroup mounts show missing.
func mountsLack(mountinfo string) []string {
	var proc []string // super options of the /proc mount on top
	procFound := false
	// Whether the cgroup mount on top at each mount point is writable
	// (a later line is mounted over an earlier one at the same point):
	// ProtectControlGroups= leaves the tree read-only, whichever way
	// the runtime gets there.
	cgroupRW := map[string]bool{}
	for _, line := range strings.Split(mountinfo, "\n") {
		f := strings.Fields(line)
		sep := slices.Index(f, "-")
		if len(f) < 6 || sep < 6 || sep+3 > len(f) {
			continue
		}
		mountPoint, mountOpts, fsType := f[4], strings.Split(f[5], ","), f[sep+1]
		var superOpts []string
		if sep+3 < len(f) {
			superOpts = strings.Split(f[sep+3], ",")
		}
		switch {
		case fsType == "proc" && mountPoint == "/proc":
			// Later lines are mounted over earlier ones.
			proc, procFound = superOpts, true
		case (fsType == "cgroup2" || fsType == "cgroup") && pressureFiles[filepath.Base(f[3])]:
			// One pressure file bound writable over the read-only tree:
			// systemd's MemoryPressureWatch= does this for the unit's own
			// memory.pressure. Writing it only registers a PSI trigger;
			// it moves no process and changes no limit. (No cgroup can
			// be named so: the file exists in every parent.)
		case fsType == "cgroup2" || fsType == "cgroup":
			cgroupRW[mountPoint] = !slices.Contains(mountOpts, "ro")
		}
	}
	// No /proc at all shows nothing to hide.
	var m []string
	if procFound && !(slices.Contains(proc, "hidepid=invisible") || slices.Contains(proc, "hidepid=2") ||
		slices.Contains(proc, "hidepid=ptraceable") || slices.Contains(proc, "hidepid=4")) {
		m = append(m, ProtectProc)
	}
	if procFound && !slices.Contains(proc, "subset=pid") {
		m = append(m, ProcSubset)
	}
	for _, rw := range cgroupRW {
		if rw {
			m = append(m, ProtectControlGroups)
			break
		}
	}
	return m
}
