package audit

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// OpenFile opens path for appending decision records, creating it (mode
// 0600) if it does not exist, for a process running as root on behalf of
// someone who may not be: `sudo bridle run --audit audit.jsonl` names a
// file in a directory the workload's user often owns, and that user may
// have swapped the file for something else before root opens it.
//
// So nothing at path is followed or trusted:
//   - no symbolic link anywhere in the path (openat2 RESOLVE_NO_SYMLINKS,
//     which also refuses /proc magic links): a link to a root-owned shell
//     rc file would get root's records appended, and a record's comm is
//     whatever the workload set with PR_SET_NAME, "$(sh /tmp/x)" included;
//   - the file must be a regular file with a single link: a hard link made
//     to a file elsewhere (possible without owning it where
//     fs.protected_hardlinks is 0) is refused, and so is a FIFO or a
//     device (opened with O_NONBLOCK, so a FIFO cannot block the run
//     either).
//
// The file is created as root, mode 0600, and left so: handing it to the
// invoking user would, by default, hand it to the workload's user, who
// could then rewrite its own evidence while it runs.
func OpenFile(path string) (*os.File, error) {
	fd, err := unix.Openat2(unix.AT_FDCWD, path, &unix.OpenHow{
		Flags: unix.O_WRONLY | unix.O_APPEND | unix.O_CREAT | unix.O_NOFOLLOW |
			unix.O_NONBLOCK | unix.O_NOCTTY | unix.O_CLOEXEC,
		Mode:    0o600,
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	switch {
	case errors.Is(err, unix.ELOOP):
		return nil, fmt.Errorf("%s: the path goes through a symbolic link; bridle writes records as root and follows none (name the file by its real path, in a directory the workload cannot write)", path)
	case errors.Is(err, unix.ENXIO):
		return nil, fmt.Errorf("%s: a FIFO or socket, not a regular file", path)
	case errors.Is(err, unix.ENOSYS):
		return nil, fmt.Errorf("%s: opening without following links needs openat2 (Linux 5.6+): %w", path, err)
	case err != nil:
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		f.Close()
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		f.Close()
		return nil, fmt.Errorf("%s: not a regular file (mode %#o)", path, st.Mode&unix.S_IFMT)
	case st.Nlink != 1:
		f.Close()
		return nil, fmt.Errorf("%s: the file has %d hard links; bridle writes records as root and appends only to a file no other name reaches", path, st.Nlink)
	}
	return f, nil
}
