package identity

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/bridle-sh/bridle/loader/alive"
)

// Facts are what the kernel says of a workload, and all a source may map
// from: nothing a workload can claim about itself.
type Facts struct {
	Cgroup string // path below the cgroup v2 mount
	// Unit is the systemd unit the cgroup belongs to (the shallowest path
	// component naming a .service or .scope); "" when none.
	Unit string
	// UID is the real uid of every process in the workload; HasUID is
	// false when it has none, or they differ.
	UID    uint32
	HasUID bool
	// HasProcess says whether the workload had a process when read.
	HasProcess bool
}

// UnitOf returns the systemd unit of a cgroup path: its shallowest
// component ending in .service or .scope. The host's systemd never puts a
// unit's cgroup below another unit's; anything named like a unit deeper
// down was named by what runs in the unit (a delegated subtree, a user's
// manager), which must not choose the unit it is known by.
func UnitOf(cgroup string) string {
	for _, c := range strings.Split(cgroup, "/") {
		if strings.HasSuffix(c, ".service") || strings.HasSuffix(c, ".scope") {
			return c
		}
	}
	return ""
}

// ReadFacts reads a workload's facts below the cgroup v2 mount. The
// workload is its cgroup and every cgroup below it: processes there are
// confined with it (a unit with DelegateSubgroup=, or children the
// workload made), so they are its processes too. Counting only those of
// the top cgroup would let a workload look empty, lose its uid and be
// named by whoever asked for its task instead.
func ReadFacts(mount, cgroup string) (Facts, error) {
	f := Facts{Cgroup: cgroup, Unit: UnitOf(cgroup)}
	cgroups, err := subtree(mount, cgroup)
	if err != nil {
		return f, err
	}
	first := true
	for _, cg := range cgroups {
		pids, err := Procs(mount, cg)
		if err != nil {
			if cg == cgroup {
				return f, err
			}
			continue // removed meanwhile
		}
		for _, pid := range pids {
			p, err := OpenProc(pid)
			if err != nil {
				continue // gone meanwhile
			}
			uid, inside, err := p.uidIn(cgroup)
			p.Close()
			if err != nil || !inside {
				continue
			}
			f.HasProcess = true
			switch {
			case first:
				f.UID, f.HasUID, first = uid, true, false
			case uid != f.UID:
				f.HasUID = false
				return f, nil
			}
		}
	}
	return f, nil
}

// subtree lists a cgroup and every cgroup below it.
func subtree(mount, cgroup string) ([]string, error) {
	top := filepath.Join(mount, cgroup)
	var cgroups []string
	err := filepath.WalkDir(top, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == top {
				return err
			}
			return nil // a cgroup removed meanwhile
		}
		if !d.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(top, path)
		if err != nil {
			return err
		}
		cgroups = append(cgroups, filepath.Join(cgroup, rel))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("workload %s: %w", cgroup, err)
	}
	return cgroups, nil
}

// within reports whether cgroup path cg is cgroup or below it.
func within(cg, cgroup string) bool {
	return cg == cgroup || strings.HasPrefix(cg, strings.TrimSuffix(cgroup, "/")+"/")
}

// Procs lists the processes of a cgroup.
func Procs(mount, cgroup string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(mount, cgroup, "cgroup.procs"))
	if err != nil {
		return nil, fmt.Errorf("workload %s: %w", cgroup, err)
	}
	var pids []int
	for _, l := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(l); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// Proc is one process, pinned: reads through it fail once the process has
// exited, so they can never describe another process that reused its PID.
type Proc struct {
	PID   int
	dir   int // /proc/PID, opened as a directory
	pidfd int
}

// OpenProc pins process pid.
func OpenProc(pid int) (*Proc, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd of %d: %w", pid, err)
	}
	dir, err := unix.Open("/proc/"+strconv.Itoa(pid), unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(pidfd)
		return nil, fmt.Errorf("/proc/%d: %w", pid, err)
	}
	p := &Proc{PID: pid, dir: dir, pidfd: pidfd}
	// The pidfd came first: if the /proc directory is still that process,
	// it is alive now, after both were opened.
	if !p.Alive() {
		p.Close()
		return nil, fmt.Errorf("process %d exited", pid)
	}
	return p, nil
}

// Close releases the pins.
func (p *Proc) Close() {
	unix.Close(p.dir)
	unix.Close(p.pidfd)
}

// Alive reports whether the pinned process has not exited.
func (p *Proc) Alive() bool {
	return alive.Pidfd(p.pidfd)
}

// Exited is a descriptor that polls readable once the process exits.
func (p *Proc) Exited() int { return p.pidfd }

func (p *Proc) read(name string) ([]byte, error) {
	fd, err := unix.Openat(p.dir, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	var b bytes.Buffer
	_, err = b.ReadFrom(f)
	return b.Bytes(), err
}

// Cgroup returns the process's cgroup v2 path.
func (p *Proc) Cgroup() (string, error) {
	b, err := p.read("cgroup")
	if err != nil {
		return "", err
	}
	s := bufio.NewScanner(bytes.NewReader(b))
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "0::"); ok {
			return rest, nil
		}
	}
	return "", errors.New("no cgroup v2 line")
}

// StartTime returns the process's start time in clock ticks since boot
// (field 22 of /proc/PID/stat), which tells one process from a later one
// with the same PID.
func (p *Proc) StartTime() (uint64, error) {
	b, err := p.read("stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: the
	// fields that follow start after its last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 20 {
		return 0, errors.New("malformed stat")
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// Unprivileged reports whether the process runs with the credentials it
// was given, not more: its real, effective, saved and filesystem uids are
// one uid, and likewise its gids. A process running a setuid or setgid
// program has an effective uid or gid that is not its own; SPIRE's unix
// attestor selects by the effective ones, so such a process must never be
// attested for its workload.
func (p *Proc) Unprivileged() error {
	b, err := p.read("status")
	if err != nil {
		return err
	}
	seen := 0
	for _, l := range strings.Split(string(b), "\n") {
		name, rest, ok := strings.Cut(l, ":")
		if !ok || (name != "Uid" && name != "Gid") {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 4 {
			return fmt.Errorf("malformed %s line %q", name, l)
		}
		for _, v := range f[1:] {
			if v != f[0] {
				return fmt.Errorf("runs with %ss %s (real, effective, saved, filesystem): a setuid or setgid program", strings.ToLower(name), strings.Join(f, " "))
			}
		}
		seen++
	}
	if seen != 2 {
		return errors.New("no Uid or Gid line in status")
	}
	return nil
}

// uidIn returns the process's real uid and whether it is in the workload
// of cgroup (the cgroup or one below it).
func (p *Proc) uidIn(cgroup string) (uint32, bool, error) {
	cg, err := p.Cgroup()
	if err != nil {
		return 0, false, err
	}
	b, err := p.read("status")
	if err != nil {
		return 0, false, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "Uid:"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			uid, err := strconv.ParseUint(f[0], 10, 32)
			if err != nil {
				return 0, false, err
			}
			return uint32(uid), within(cg, cgroup), nil
		}
	}
	return 0, false, errors.New("no Uid line in status")
}
