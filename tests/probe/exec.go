package main

import (
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The exec actions try the different ways a process can run a program that
// Bridle's exec policy must all see: a plain execve, execveat on an open fd,
// the /proc/self/fd alias, and an anonymous memfd copy that has no path at
// all. On success the probe is replaced and the target's status is the
// result; only a failed exec reaches the return statements.

func execArgs(args []string, name string) (path string, argv []string, o *outcome) {
	if len(args) == 0 {
		u := usage("%s PATH [ARGS...]", name)
		return "", nil, &u
	}
	return args[0], args, nil
}

// actExec: execve(PATH, [PATH, ARGS...], environ).
func actExec(args []string) outcome {
	path, argv, u := execArgs(args, "exec")
	if u != nil {
		return *u
	}
	return failure("execve", unix.Exec(path, argv, os.Environ()))
}

// actExecveat: open the file, then execveat(fd, "", ..., AT_EMPTY_PATH).
func actExecveat(args []string) outcome {
	path, argv, u := execArgs(args, "execveat")
	if u != nil {
		return *u
	}
	fd, err := unix.Open(path, unix.O_RDONLY, 0)
	if err != nil {
		return failure("open", err)
	}
	return failure("execveat", execveat(fd, argv))
}

// actExecProcfd: open the file, then execve("/proc/self/fd/N"). The fd is
// left open across exec (no O_CLOEXEC) so a script target could still be
// read by its interpreter through the same path.
func actExecProcfd(args []string) outcome {
	path, argv, u := execArgs(args, "exec-procfd")
	if u != nil {
		return *u
	}
	fd, err := unix.Open(path, unix.O_RDONLY, 0)
	if err != nil {
		return failure("open", err)
	}
	return failure("execve", unix.Exec(fmt.Sprintf("/proc/self/fd/%d", fd), argv, os.Environ()))
}

// actExecMemfd: copy the program into a memfd and fexecve it, the classic
// fileless execution trick.
func actExecMemfd(args []string) outcome {
	path, argv, u := execArgs(args, "exec-memfd")
	if u != nil {
		return *u
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return failure("read", err)
	}
	// MFD_EXEC states the intent explicitly, which kernels with
	// vm.memfd_noexec=1 require; kernels before 6.3 do not know the flag
	// and say EINVAL, so fall back to no flags there.
	fd, err := unix.MemfdCreate("bridle-probe", unix.MFD_EXEC)
	if err == unix.EINVAL {
		fd, err = unix.MemfdCreate("bridle-probe", 0)
	}
	if err != nil {
		return failure("memfd_create", err)
	}
	for len(data) > 0 {
		n, err := unix.Write(fd, data)
		if err != nil {
			return failure("write", err)
		}
		data = data[n:]
	}
	return failure("execveat", execveat(fd, argv))
}

// cStrings builds a NULL-terminated char *[] for the kernel.
func cStrings(ss []string) ([]*byte, error) {
	ptrs := make([]*byte, len(ss)+1)
	for i, s := range ss {
		p, err := unix.BytePtrFromString(s)
		if err != nil {
			return nil, err
		}
		ptrs[i] = p
	}
	return ptrs, nil
}

// execveat calls execveat(fd, "", argv, environ, AT_EMPTY_PATH); x/sys has no
// wrapper. It only returns on failure.
func execveat(fd int, argv []string) error {
	argvp, err := cStrings(argv)
	if err != nil {
		return err
	}
	envp, err := cStrings(os.Environ())
	if err != nil {
		return err
	}
	empty, err := unix.BytePtrFromString("")
	if err != nil {
		return err
	}
	runtime.LockOSThread()
	_, _, e := unix.Syscall6(unix.SYS_EXECVEAT, uintptr(fd),
		uintptr(unsafe.Pointer(empty)),
		uintptr(unsafe.Pointer(&argvp[0])),
		uintptr(unsafe.Pointer(&envp[0])),
		unix.AT_EMPTY_PATH, 0)
	runtime.UnlockOSThread()
	return e
}
