package policy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"
)

// Principal is a user a workload's processes run as: a uid and every group
// it holds (primary and supplementary).
type Principal struct {
	UID  uint32
	GIDs []uint32
}

// Writer says who can rewrite an executable, and how.
type Writer struct {
	Path string
	Why  string // e.g. "owned by uid 1000", "writable by group 100"
}

// WritableExec returns the files among rs.Exec that one of who could
// rewrite in place. An exec rule names an inode; whoever can write the inode
// can make it any program, so such a rule allows everything. Script-only
// files are left out: the kernel runs them only as #! scripts, which is
// what their interpreter's own rule allows anyway.
//
// With who empty (the workload's users are not known), a file counts as
// writable unless only root can write it.
func WritableExec(rs RuleSet, who []Principal) ([]Writer, error) {
	var out []Writer
	for _, id := range rs.Exec {
		if id.ScriptOnly {
			continue
		}
		why, err := writableFile(id, who)
		if err != nil {
			return nil, err
		}
		if why != "" {
			out = append(out, Writer{Path: id.Path, Why: why})
		}
	}
	return out, nil
}

// WritableBy says why one of who could write the file at path (following
// symlinks, as exec does), or "" when none can. It goes by the file's owner,
// mode and POSIX ACL, as the kernel's permission check does for a process
// without capabilities (Bridle's workloads have none):
//   - the owner can always write: it may chmod the file first;
//   - otherwise a named-user ACL entry, then the owning group and named-group
//     entries, then "other", each limited by the ACL mask.
//
// It cannot see what the permission bits do not say: a read-only mount or
// the immutable attribute make a file safer than reported, never less safe.
func WritableBy(path string, who []Principal) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", fmt.Errorf("policy: exec rule %s: %w", path, err)
	}
	acl, err := readACL(func(buf []byte) (int, error) { return unix.Getxattr(path, aclAccessXattr, buf) })
	if err != nil {
		return "", fmt.Errorf("policy: exec rule %s: %w", path, err)
	}
	return writable(path, st, acl, who)
}

// writableFile is WritableBy for the file a rule was compiled from. The file
// is opened once, its identity held against the rule's, and its owner, mode
// and ACL read from that open file: a name pointed at another file after the
// rule was made (a symlink or rename swapped in a directory the workload's
// user can write) is refused, and never judged in the rule's file's place.
func writableFile(id FileID, who []Principal) (string, error) {
	f, err := os.OpenFile(id.Path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("policy: exec rule %s: %w", id.Path, err)
	}
	defer f.Close()
	fd := int(f.Fd())
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return "", fmt.Errorf("policy: exec rule %s: %w", id.Path, err)
	}
	if err := sameFile(id, st); err != nil {
		return "", err
	}
	acl, err := readACL(func(buf []byte) (int, error) { return unix.Fgetxattr(fd, aclAccessXattr, buf) })
	if err != nil {
		return "", fmt.Errorf("policy: exec rule %s: %w", id.Path, err)
	}
	return writable(id.Path, st, acl, who)
}

// sameFile refuses a file that is no longer the one the rule names.
func sameFile(id FileID, st unix.Stat_t) error {
	if kernelDev(uint64(st.Dev)) != id.Dev || st.Ino != id.Ino {
		return fmt.Errorf("policy: exec rule %s: the name leads to another file than when the rule was made (inode %d, now %d); refused", id.Path, id.Ino, st.Ino)
	}
	return nil
}

// writable judges a file's owner, mode and ACL, then its directory.
func writable(path string, st unix.Stat_t, acl []aclEntry, who []Principal) (string, error) {
	if len(who) == 0 {
		if why := writableByAnyoneButRoot(st, acl); why != "" {
			return why, nil
		}
	} else {
		for _, p := range who {
			if why := writableByPrincipal(st, acl, p); why != "" {
				return why, nil
			}
		}
	}
	return removableBy(path, st, who)
}

// removableBy says why one of who could remove the file at path from its
// directory, or "" when none can. A rule names an inode by its number, and
// once the file's last name is gone the file system may give that number
// to the next file created (ext4 and XFS do): the workload would remove
// the file, create files until one has the number, and write any program
// into it. Removing a name takes write permission on the directory and,
// in a sticky directory (/tmp), owning the file or the directory. One name
// that stays is enough: the inode lives while any name does.
func removableBy(path string, file unix.Stat_t, who []Principal) (string, error) {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", fmt.Errorf("policy: exec rule %s: %w", path, err)
	}
	dir := filepath.Dir(real)
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return "", fmt.Errorf("policy: exec rule %s: directory: %w", path, err)
	}
	// The directory judged must hold a name of the file judged: the name
	// is looked at after the directory, so a swap in between is seen.
	var named unix.Stat_t
	if err := unix.Lstat(real, &named); err != nil {
		return "", fmt.Errorf("policy: exec rule %s: %w", path, err)
	}
	if named.Dev != file.Dev || named.Ino != file.Ino {
		return "", fmt.Errorf("policy: exec rule %s: the name leads to another file than the one checked; refused", path)
	}
	acl, err := readACL(func(buf []byte) (int, error) { return unix.Getxattr(dir, aclAccessXattr, buf) })
	if err != nil {
		return "", fmt.Errorf("policy: exec rule %s: directory: %w", path, err)
	}
	sticky := st.Mode&unix.S_ISVTX != 0
	removable := func(why string) string {
		return fmt.Sprintf("its directory %s is %s, so the file can be removed and its inode number given to a new file", dir, why)
	}
	if len(who) == 0 {
		why := writableByAnyoneButRoot(st, acl)
		if why == "" || (sticky && st.Uid == 0 && file.Uid == 0) {
			return "", nil
		}
		return removable(why), nil
	}
	for _, p := range who {
		why := writableByPrincipal(st, acl, p)
		if why == "" || (sticky && st.Uid != p.UID && file.Uid != p.UID) {
			continue
		}
		return removable(why), nil
	}
	return "", nil
}

// aclEntry is one entry of a POSIX access ACL (system.posix_acl_access).
type aclEntry struct {
	tag  uint16
	perm uint16
	id   uint32
}

// Tags and the write bit of the kernel's ACL xattr format
// (include/uapi/linux/posix_acl_xattr.h, posix_acl.h).
const (
	aclUserObj  = 0x01
	aclUser     = 0x02
	aclGroupObj = 0x04
	aclGroup    = 0x08
	aclMask     = 0x10
	aclOther    = 0x20
	aclWrite    = 0x02
	aclVersion  = 2
)

// readACL returns the file's access ACL, or nil when it has none (or the
// filesystem keeps none): then the mode bits are the whole answer.
// aclAccessXattr holds a file's POSIX access ACL.
const aclAccessXattr = "system.posix_acl_access"

// readACL reads an access ACL through get (getxattr by path or fd).
func readACL(get func(buf []byte) (int, error)) ([]aclEntry, error) {
	buf := make([]byte, 4+8*32)
	for {
		n, err := get(buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if errors.Is(err, unix.ENODATA) || errors.Is(err, unix.EOPNOTSUPP) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read ACL: %w", err)
		}
		b := buf[:n]
		if len(b) < 4 || binary.LittleEndian.Uint32(b) != aclVersion || (len(b)-4)%8 != 0 {
			return nil, errors.New("read ACL: unknown format")
		}
		var out []aclEntry
		for b = b[4:]; len(b) > 0; b = b[8:] {
			out = append(out, aclEntry{
				tag: binary.LittleEndian.Uint16(b), perm: binary.LittleEndian.Uint16(b[2:]),
				id: binary.LittleEndian.Uint32(b[4:]),
			})
		}
		return out, nil
	}
}

// groupClass is what the owning group, named users and named groups get: the
// ACL mask limits them; without an ACL it is the group bits.
func groupClassMask(acl []aclEntry) uint16 {
	for _, e := range acl {
		if e.tag == aclMask {
			return e.perm
		}
	}
	return 7 // no mask entry: entries are not limited
}

func writableByPrincipal(st unix.Stat_t, acl []aclEntry, p Principal) string {
	if p.UID == st.Uid {
		return fmt.Sprintf("owned by uid %d, which may chmod it", st.Uid)
	}
	if acl == nil {
		switch {
		case slices.Contains(p.GIDs, st.Gid) && st.Mode&unix.S_IWGRP != 0:
			return fmt.Sprintf("writable by its group %d, which uid %d is in", st.Gid, p.UID)
		case !slices.Contains(p.GIDs, st.Gid) && st.Mode&unix.S_IWOTH != 0:
			return "writable by anyone"
		}
		return ""
	}
	mask := groupClassMask(acl)
	for _, e := range acl {
		if e.tag == aclUser && e.id == p.UID {
			if e.perm&mask&aclWrite != 0 {
				return fmt.Sprintf("an ACL entry lets uid %d write it", p.UID)
			}
			return ""
		}
	}
	inGroupClass := false
	for _, e := range acl {
		gid := e.id
		if e.tag == aclGroupObj {
			gid = st.Gid
		} else if e.tag != aclGroup {
			continue
		}
		if slices.Contains(p.GIDs, gid) {
			inGroupClass = true
			if e.perm&mask&aclWrite != 0 {
				return fmt.Sprintf("an ACL entry lets group %d write it, which uid %d is in", gid, p.UID)
			}
		}
	}
	if inGroupClass {
		return ""
	}
	for _, e := range acl {
		if e.tag == aclOther && e.perm&aclWrite != 0 {
			return "writable by anyone"
		}
	}
	return ""
}

func writableByAnyoneButRoot(st unix.Stat_t, acl []aclEntry) string {
	if st.Uid != 0 {
		return fmt.Sprintf("owned by uid %d, which may chmod it", st.Uid)
	}
	if acl == nil {
		switch {
		case st.Mode&unix.S_IWGRP != 0:
			return fmt.Sprintf("writable by its group %d", st.Gid)
		case st.Mode&unix.S_IWOTH != 0:
			return "writable by anyone"
		}
		return ""
	}
	mask := groupClassMask(acl)
	for _, e := range acl {
		switch {
		case e.tag == aclUser && e.id != 0 && e.perm&mask&aclWrite != 0:
			return fmt.Sprintf("an ACL entry lets uid %d write it", e.id)
		case e.tag == aclGroupObj && e.perm&mask&aclWrite != 0:
			return fmt.Sprintf("an ACL entry lets group %d write it", st.Gid)
		case e.tag == aclGroup && e.perm&mask&aclWrite != 0:
			return fmt.Sprintf("an ACL entry lets group %d write it", e.id)
		case e.tag == aclOther && e.perm&aclWrite != 0:
			return "writable by anyone"
		}
	}
	return ""
}
