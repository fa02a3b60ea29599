package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// Actions of the second adversarial review (see tests/e2e/escape_review_test.go).

// actFDConnect connects descriptor FD, which the workload did not make (it
// inherited it), to ADDR:PORT and sends a line: "ok" when it got through.
func actFDConnect(args []string) outcome {
	if len(args) != 2 {
		return usage("fd-connect FD ADDR:PORT")
	}
	fd, err := strconv.Atoi(args[0])
	if err != nil {
		return usage("fd-connect: bad FD %q", args[0])
	}
	ep, err := parseEndpoint(args[1])
	if err != nil {
		return usage("%v", err)
	}
	if err := unix.Connect(fd, ep.sockaddr()); err != nil {
		return failure("connect", err)
	}
	if _, err := unix.Write(fd, payload); err != nil {
		return failure("write", err)
	}
	return ok("")
}

// actFDWrite writes TEXT to descriptor FD, which the workload inherited.
func actFDWrite(args []string) outcome {
	if len(args) != 2 {
		return usage("fd-write FD TEXT")
	}
	fd, err := strconv.Atoi(args[0])
	if err != nil {
		return usage("fd-write: bad FD %q", args[0])
	}
	if _, err := unix.Write(fd, []byte(args[1])); err != nil {
		return failure("write", err)
	}
	return ok("")
}

// actReuseInode unlinks TARGET (a file an exec rule allows, in a directory
// the workload may write), creates files in that directory until one gets
// TARGET's freed inode number, fills it with PAYLOAD's bytes and execs it
// with ARGS. "error inode-not-reused" when the file system did not reuse it.
func actReuseInode(args []string) outcome {
	if len(args) < 2 {
		return usage("reuse-inode TARGET PAYLOAD [ARGS...]")
	}
	target, payloadPath := args[0], args[1]
	var st unix.Stat_t
	if err := unix.Stat(target, &st); err != nil {
		return failure("stat", err)
	}
	body, err := os.ReadFile(payloadPath)
	if err != nil {
		return failure("read", err)
	}
	if err := unix.Unlink(target); err != nil {
		return failure("unlink", err)
	}
	dir := filepath.Dir(target)
	for i := 0; i < 20000; i++ {
		p := filepath.Join(dir, fmt.Sprintf("reuse-%d", i))
		fd, err := unix.Open(p, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o755)
		if err != nil {
			return failure("create", err)
		}
		var fst unix.Stat_t
		if err := unix.Fstat(fd, &fst); err != nil {
			unix.Close(fd)
			return failure("fstat", err)
		}
		if fst.Ino != st.Ino || fst.Dev != st.Dev {
			unix.Close(fd)
			continue
		}
		if _, err := unix.Write(fd, body); err != nil {
			unix.Close(fd)
			return failure("write", err)
		}
		unix.Close(fd)
		fmt.Fprintf(os.Stderr, "probe: inode %d reused by %s after %d files\n", st.Ino, p, i+1)
		argv := append([]string{p}, args[2:]...)
		return failure("execve", unix.Exec(p, argv, os.Environ()))
	}
	return outcome{"error inode-not-reused", exitError}
}
