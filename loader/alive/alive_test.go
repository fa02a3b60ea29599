package alive

import (
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// A process of another user is alive to a caller without CAP_KILL; an
// exited one is not.
func TestAlive(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: starts a process as nobody and drops CAP_KILL")
	}
	cmd := exec.Command("sleep", "30")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if !Pidfd(fd) {
		t.Fatal("a running process is not alive")
	}
	// As the DaemonSet runs bridled, without CAP_KILL: capabilities are
	// per thread, so one locked thread drops it and dies with its
	// goroutine.
	done := make(chan bool)
	go func() {
		lockAndDropKill(t)
		done <- Pidfd(fd)
	}()
	if !<-done {
		t.Fatal("a running process of another user is not alive to a caller without CAP_KILL")
	}
	cmd.Process.Kill()
	cmd.Wait()
	if Pidfd(fd) {
		t.Fatal("an exited process is alive")
	}
}

// lockAndDropKill drops CAP_KILL from the calling thread's effective set
// and leaves the thread locked, so that it dies with its goroutine.
func lockAndDropKill(t *testing.T) {
	runtime.LockOSThread()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		t.Error(err)
		return
	}
	data[0].Effective &^= 1 << unix.CAP_KILL
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		t.Error(err)
	}
}
