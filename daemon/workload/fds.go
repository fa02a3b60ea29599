package workload

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// CloseInheritedOnExec marks every descriptor from 3 up close-on-exec, so
// none reaches a program this process execs unless it is passed on by
// name. Whoever started bridle may have left descriptors open (a root
// script's lock or log file, a socket a CI runner made): handed down to
// the workload, a file would be written with the invoker's rights and a
// socket made outside the workload's cgroup would pass none of its hooks.
// sudo closes them; a direct call does not.
func CloseInheritedOnExec() error {
	err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("workload: mark inherited descriptors close-on-exec: %w", err)
	}
	// Before 5.11: one by one.
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("workload: list inherited descriptors: %w", err)
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < 3 {
			continue
		}
		unix.CloseOnExec(fd) // the directory's own descriptor included: harmless
	}
	return nil
}
