// Package alive answers whether a process pinned by a pidfd still runs.
package alive

import (
	"errors"

	"golang.org/x/sys/unix"
)

// Pidfd reports whether the process of pidfd has not exited: signal 0 finds
// it. EPERM means it exists but the caller may not signal it — a process of
// another user when bridled runs without CAP_KILL (the DaemonSet's
// capability list has none) — and counts as alive; only ESRCH (exited) or
// a bad descriptor does not.
func Pidfd(pidfd int) bool {
	err := unix.PidfdSendSignal(pidfd, 0, nil, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}
