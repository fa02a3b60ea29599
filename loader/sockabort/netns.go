package sockabort

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// workloadNetNS lists one namespace file per network namespace that a
// process of the targets is in, other than the caller's.
func workloadNetNS(targets []destroyTarget) []string {
	var self unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &self); err != nil {
		return nil
	}
	seen := map[uint64]bool{self.Ino: true}
	var out []string
	for _, t := range targets {
		walkCgroups(t.path, func(dir string, _ uint64) {
			b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
			if err != nil {
				return
			}
			for _, pid := range strings.Fields(string(b)) {
				p := "/proc/" + pid + "/ns/net"
				var st unix.Stat_t
				if unix.Stat(p, &st) != nil || seen[st.Ino] {
					continue
				}
				seen[st.Ino] = true
				out = append(out, p)
			}
		})
	}
	return out
}

// inNetNS runs fn in the network namespace at path ("" runs it here). The
// socket tables an iterator or a sock_diag socket sees are those of the
// namespace of the thread that creates it, so fn runs on a locked thread
// that enters the namespace and comes back. A thread that cannot come back
// stays locked, and Go retires it when the goroutine ends.
func inNetNS(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	target, err := os.Open(path)
	if err != nil {
		return err
	}
	defer target.Close()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			done <- err
			return
		}
		defer home.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("enter: %w", err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- errors.Join(ferr, fmt.Errorf("return to own network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		done <- ferr
	}()
	return <-done
}
